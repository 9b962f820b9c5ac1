//! The storage seam of the event store: what [`super::EventStore`] asks of a database. Two
//! adapters stand behind it: Postgres (postgres-es's tables, the production store) and
//! SQLite (sqlite-es's tables, the embedded default of `runledger dev`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    poison::Parked,
    reader::RecordedEvent,
    writer::{Failed, Queued},
};

/// A reservation the process manager has seen: job, ledger, when.
pub type Pending = (Uuid, String, DateTime<Utc>);

/// A job not yet over, as the process manager last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveJob {
    /// The job.
    pub job_id: Uuid,
    /// `scheduled`, `queued`, `running` or `retrying`.
    pub status: String,
    /// Its current attempt.
    pub attempt: i32,
    /// The time of its latest event (for a running job, its start or latest heartbeat).
    pub since: DateTime<Utc>,
}

/// What a follower of the log saves with its checkpoint, in one transaction.
#[derive(Debug, Default)]
pub struct Progress {
    /// Reservations seen, not yet settled.
    pub reserved: Vec<Pending>,
    /// Reservations no longer pending.
    pub settled: Vec<Uuid>,
    /// Jobs whose latest event leaves them live.
    pub live: Vec<LiveJob>,
    /// Jobs now over.
    pub ended: Vec<Uuid>,
}

/// The first string after every string that starts with `prefix` (the upper bound of an
/// index range scan): `prefix` with its last character stepped up.
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(u32::from(last) + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The ids of rows from an `aggregate_ids` range scan that really start with `prefix`.
pub fn prefixed(rows: Vec<(String,)>, prefix: &str) -> Vec<String> {
    rows.into_iter()
        .map(|(id,)| id)
        .filter(|id| id.starts_with(prefix))
        .collect()
}

/// An aggregate's stored snapshot (sequence, JSON) and later events (sequence, JSON).
pub type Rows = (Option<(i64, String)>, Vec<(i64, String)>);

/// A database that keeps the event log with its global order.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// The Postgres pool, when the log is on Postgres (leader election, projection tables).
    fn postgres(&self) -> Option<&PgPool> {
        None
    }

    /// One aggregate's snapshot and the events after it.
    async fn load_rows(&self, aggregate_type: &str, id: &str) -> Result<Rows, sqlx::Error>;

    /// Commits a batch of write units, answering each on its reply channel: all of a unit or
    /// none of it; positions drawn in commit order. A unit built on one in `failed` (or on
    /// one of the batch that fails) fails too, and the tickets of every unit that did not
    /// commit are added to `failed`.
    async fn commit_batch(&self, batch: Vec<Queued>, failed: &mut Failed);

    /// Up to `limit` events after `position`, in global order.
    async fn read_from(&self, position: i64, limit: i64)
    -> Result<Vec<RecordedEvent>, sqlx::Error>;

    /// Every event of one aggregate, in sequence order.
    async fn events_of(
        &self,
        aggregate_type: &str,
        id: &str,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error>;

    /// `(position, event_type, payload)` of one aggregate's events in order, the payload
    /// only for events of `event_type`: what an audit replay reads (it verifies each unit
    /// and counts the rest by type), so a million-event ledger is read in a fraction of the
    /// time. `(part, parts)`: only the events whose `sequence % parts == part`, so several
    /// connections can read one long aggregate at once.
    async fn payloads_of(
        &self,
        aggregate_type: &str,
        id: &str,
        event_type: &str,
        part: (i64, i64),
    ) -> Result<Vec<(i64, String, Option<String>)>, sqlx::Error>;

    /// The ids of the aggregates of `aggregate_type` that start with `prefix` and have
    /// events, in order: found in the log itself, never in a projection.
    async fn aggregate_ids(
        &self,
        aggregate_type: &str,
        prefix: &str,
    ) -> Result<Vec<String>, sqlx::Error>;

    /// The highest position committed (0 when empty).
    async fn head(&self) -> Result<i64, sqlx::Error>;

    /// A reader's checkpoint (0 when it never ran).
    async fn checkpoint(&self, name: &str) -> Result<i64, sqlx::Error>;

    /// Checkpoint `name` with the reservations and live jobs of `progress`, in one
    /// transaction; `false`, with nothing saved, when the checkpoint is already past
    /// `position` (a stale instance of the reader: it must not move it back).
    async fn save_progress(
        &self,
        name: &str,
        position: i64,
        progress: Progress,
    ) -> Result<bool, sqlx::Error>;

    /// Up to `limit` live jobs in one of `statuses` whose latest event is older than
    /// `cutoff`, oldest first.
    async fn live_before(
        &self,
        statuses: &[&str],
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<LiveJob>, sqlx::Error>;

    /// The response kept for `(user, key)`: request hash, status, body.
    async fn stored_response(
        &self,
        user: Uuid,
        key: &str,
    ) -> Result<Option<(String, i16, Value)>, sqlx::Error>;

    /// Up to `limit` reservations pending since before `cutoff`, oldest first.
    async fn pending_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, String)>, sqlx::Error>;

    /// Takes one reservation off the pending list.
    async fn drop_pending(&self, job: Uuid) -> Result<(), sqlx::Error>;

    /// Parks `poison` for `consumer` (again: the error is updated, the retry request
    /// cleared).
    async fn park(
        &self,
        consumer: &str,
        poison: &[(RecordedEvent, String)],
    ) -> Result<(), sqlx::Error>;

    /// The parked events, of `consumer` or of all, in position order.
    async fn parked(&self, consumer: Option<&str>) -> Result<Vec<Parked>, sqlx::Error>;

    /// Asks for another try at the parked events of `consumer` (or all); how many.
    async fn ask_retry(&self, consumer: Option<&str>) -> Result<u64, sqlx::Error>;

    /// The events parked for `consumer` with a retry asked for, in position order.
    async fn retries(&self, consumer: &str) -> Result<Vec<RecordedEvent>, sqlx::Error>;

    /// Takes the events at `positions` off `consumer`'s parked list.
    async fn unpark(&self, consumer: &str, positions: &[i64]) -> Result<(), sqlx::Error>;

    /// Whether the aggregate has any event.
    async fn exists(&self, aggregate_type: &str, id: &str) -> Result<bool, sqlx::Error>;

    /// Whether the database answers.
    async fn ping(&self) -> Result<(), sqlx::Error>;
}
