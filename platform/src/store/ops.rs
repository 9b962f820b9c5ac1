//! What the roles ask of the store besides commands: the ordered log, checkpoints, stored
//! idempotent responses, and the process manager's pending reservations.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{
    EventStore, StoreError,
    log::{LiveJob, Progress},
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
