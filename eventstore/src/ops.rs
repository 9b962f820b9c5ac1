//! What the roles ask of the store besides commands: the ordered log, checkpoints, stored
//! idempotent responses, and the process manager's pending reservations.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{
    EventStore, StoreError,
    log::{LiveJob, Progress},
    poison::{Decoded, Parked},
    reader::RecordedEvent,
};

impl EventStore {
    /// Up to `limit` events after `position`, in global order.
    ///
    /// # Errors
    /// Database errors.
    pub async fn read_from(
        &self,
        position: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        self.log.read_from(position, limit).await
    }

    /// Every event of one aggregate, in its order (audits).
    ///
    /// # Errors
    /// Database errors.
    pub async fn events_of(
        &self,
        aggregate_type: &str,
        id: &str,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        self.log.events_of(aggregate_type, id).await
    }

    /// `(position, event_type, payload)` of one aggregate's events, in order, the payload
    /// only for events of `event_type`, read over two connections at once (each taking
    /// every other sequence) and merged back into order.
    ///
    /// # Errors
    /// Database errors.
    pub async fn payloads_of(
        &self,
        aggregate_type: &str,
        id: &str,
        event_type: &str,
    ) -> Result<Vec<(i64, String, Option<String>)>, sqlx::Error> {
        let (even, odd) = tokio::join!(
            self.log.payloads_of(aggregate_type, id, event_type, (0, 2)),
            self.log.payloads_of(aggregate_type, id, event_type, (1, 2)),
        );
        let (even, odd) = (even?, odd?);
        // Positions grow with sequence within an aggregate: merge by position.
        let mut merged = Vec::with_capacity(even.len() + odd.len());
        let (mut a, mut b) = (even.into_iter().peekable(), odd.into_iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 <= y.0 => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, _) => b.next(),
            };
            match next {
                Some(row) => merged.push(row),
                None => break,
            }
        }
        Ok(merged)
    }

    /// The ids of the aggregates of `aggregate_type` that start with `prefix`, from the log.
    ///
    /// # Errors
    /// Database errors.
    pub async fn aggregate_ids(
        &self,
        aggregate_type: &str,
        prefix: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        self.log.aggregate_ids(aggregate_type, prefix).await
    }

    /// The highest position committed (0 when empty).
    ///
    /// # Errors
    /// Database errors.
    pub async fn head(&self) -> Result<i64, sqlx::Error> {
        self.log.head().await
    }

    /// A reader's checkpoint (0 when it never ran).
    ///
    /// # Errors
    /// Database errors.
    pub async fn checkpoint(&self, name: &str) -> Result<i64, sqlx::Error> {
        self.log.checkpoint(name).await
    }

    /// Moves a reader's checkpoint forward on its own.
    ///
    /// # Errors
    /// Database errors; [`StoreError::Fenced`] when another instance of the reader got
    /// further.
    pub async fn save_checkpoint(&self, name: &str, position: i64) -> Result<(), StoreError> {
        self.save_progress(name, position, Progress::default())
            .await
    }

    /// Whether the database answers.
    ///
    /// # Errors
    /// When it does not.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        self.log.ping().await
    }

    /// The response kept for `(user, key)`: request hash, status, body.
    ///
    /// # Errors
    /// Database errors.
    pub async fn stored_response(
        &self,
        user: Uuid,
        key: &str,
    ) -> Result<Option<(String, i16, Value)>, sqlx::Error> {
        self.log.stored_response(user, key).await
    }

    /// Saves checkpoint `name` together with the reservations and live jobs of `progress`,
    /// in one transaction. Checkpoints only move forward: a stale instance of a reader (a
    /// former leader that has not noticed yet) saves nothing.
    ///
    /// # Errors
    /// Database errors, or [`StoreError::Fenced`]; nothing is saved.
    pub async fn save_progress(
        &self,
        name: &str,
        position: i64,
        progress: Progress,
    ) -> Result<(), StoreError> {
        if self.log.save_progress(name, position, progress).await? {
            Ok(())
        } else {
            Err(StoreError::Fenced(name.to_owned()))
        }
    }

    /// Parks `poison` for `consumer`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn park(
        &self,
        consumer: &str,
        poison: &[(RecordedEvent, String)],
    ) -> Result<(), sqlx::Error> {
        if poison.is_empty() {
            return Ok(());
        }
        self.log.park(consumer, poison).await
    }

    /// The parked events, of `consumer` or of all.
    ///
    /// # Errors
    /// Database errors.
    pub async fn parked(&self, consumer: Option<&str>) -> Result<Vec<Parked>, sqlx::Error> {
        self.log.parked(consumer).await
    }

    /// Asks for another try at the parked events of `consumer` (or all); how many.
    ///
    /// # Errors
    /// Database errors.
    pub async fn ask_retry(&self, consumer: Option<&str>) -> Result<u64, sqlx::Error> {
        self.log.ask_retry(consumer).await
    }

    /// Takes the events at `positions` off `consumer`'s parked list.
    ///
    /// # Errors
    /// Database errors.
    pub async fn unpark_all(&self, consumer: &str, positions: &[i64]) -> Result<(), sqlx::Error> {
        if positions.is_empty() {
            return Ok(());
        }
        self.log.unpark(consumer, positions).await
    }

    /// Another try at `consumer`'s parked events with a retry asked for: returns those it
    /// can read now (taken off the list: the caller processes them), and parks the others
    /// again with their current error.
    ///
    /// # Errors
    /// Database errors.
    pub async fn take_retries(
        &self,
        consumer: &str,
    ) -> Result<Vec<(RecordedEvent, Decoded)>, sqlx::Error> {
        let asked = self.log.retries(consumer).await?;
        if asked.is_empty() {
            return Ok(vec![]);
        }
        let (good, still) = super::poison::split(consumer, asked);
        self.log.park(consumer, &still).await?;
        let positions: Vec<i64> = good.iter().map(|(e, _)| e.position).collect();
        self.log.unpark(consumer, &positions).await?;
        Ok(good)
    }

    /// Up to `limit` live jobs in one of `statuses` whose latest event is older than
    /// `cutoff`, oldest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn live_before(
        &self,
        statuses: &[&str],
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<LiveJob>, sqlx::Error> {
        self.log.live_before(statuses, cutoff, limit).await
    }

    /// Up to `limit` reservations pending since before `cutoff`, oldest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn pending_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
        self.log.pending_before(cutoff, limit).await
    }

    /// Takes one reservation off the pending list.
    ///
    /// # Errors
    /// Database errors.
    pub async fn drop_pending(&self, job: Uuid) -> Result<(), sqlx::Error> {
        self.log.drop_pending(job).await
    }

    /// Whether the aggregate has any event.
    ///
    /// # Errors
    /// Database errors.
    pub async fn exists(&self, aggregate_type: &str, id: &str) -> Result<bool, sqlx::Error> {
        self.log.exists(aggregate_type, id).await
    }
}
