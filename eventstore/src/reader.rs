//! The ordered reader: every committed event, once, in global position order.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres, Transaction};
use uuid::Uuid;

pub use crate::meta::Meta;

/// An event as recorded, with its place in the global order.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RecordedEvent {
    /// Global position: commit order, strictly increasing, with possible holes.
    pub position: i64,
    /// Unique id (the relay's `Nats-Msg-Id`).
    pub event_id: Uuid,
    /// When it was appended.
    pub recorded_at: DateTime<Utc>,
    /// `job`, `usage` or `subscription`.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// Its sequence within the aggregate.
    pub sequence: i64,
    /// The event type.
    pub event_type: String,
    /// The version of its shape.
    pub event_version: String,
    /// The payload as stored (JSON text), decoded by [`RecordedEvent::decode`].
    pub payload: String,
    /// The metadata as stored (a JSON object's text), read by [`RecordedEvent::meta`]: kept
    /// as text, as most followers of most events never look inside it.
    pub metadata: String,
}

/// An event as stored, to be written out as JSON (the relay's message, the audit export's
/// line): its payload inline, exactly as stored.
#[derive(Debug, serde::Serialize)]
pub struct Stored<'a> {
    position: i64,
    event_id: Uuid,
    recorded_at: DateTime<Utc>,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    sequence: i64,
    event_type: &'a str,
    event_version: &'a str,
    /// `None` (written as null) if the stored text were not JSON.
    pub payload: Option<&'a RawValue>,
    metadata: Option<&'a RawValue>,
}

impl RecordedEvent {
    /// The event as stored, for writing out as JSON.
    pub fn stored(&self) -> Stored<'_> {
        Stored {
            position: self.position,
            event_id: self.event_id,
            recorded_at: self.recorded_at,
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: self.sequence,
            event_type: &self.event_type,
            event_version: &self.event_version,
            payload: serde_json::from_str(&self.payload).ok(),
            metadata: serde_json::from_str(&self.metadata).ok(),
        }
    }

    /// What its metadata names.
    pub fn meta(&self) -> Meta<'_> {
        Meta::of(&self.metadata)
    }

    /// The payload as a typed event.
    ///
    /// # Errors
    /// When it does not decode into `T`.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.payload)
    }
}

/// Up to `limit` events after `position`, in order, never past the horizon: every event
/// returned is below any event committed later, so a reader that goes on from the last one
/// returned skips nothing (ADR 0015, ADR 0024).
///
/// # Errors
/// Database errors.
pub async fn read_from(
    pool: &PgPool,
    position: i64,
    limit: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    // One connection for the horizon's queries and the reads: the pool pings every
    // connection given back, a round trip per release (sqlx 0.8).
    read_from_conn(&mut *pool.acquire().await?, position, limit).await
}

/// As [`read_from`], on a connection the caller holds (a follower's own transaction: one
/// connection per batch, not two).
///
/// # Errors
/// Database errors.
pub async fn read_from_conn(
    conn: &mut PgConnection,
    position: i64,
    limit: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    // Positions are drawn once each: when every position from `position + 1` to `k` is
    // committed, nothing can commit at or below `k` any more, and no probe of the writers
    // in flight is needed (ADR 0024). Only a hole right after `position` asks for one.
    let mut read = read_after(conn, position, limit, i64::MAX).await?;
    let run = contiguous(position, &read);
    if run > 0 || read.is_empty() {
        read.truncate(run);
        return Ok(read);
    }
    let safe = horizon(conn).await?;
    if safe <= position {
        return Ok(vec![]);
    }
    read_after(conn, position, limit, safe).await
}

/// How many of `read` (in position order) follow `position` without a hole.
fn contiguous(position: i64, read: &[RecordedEvent]) -> usize {
    read.iter()
        .zip(position + 1..)
        .take_while(|(e, p)| e.position == *p)
        .count()
}

/// Up to `limit` committed events after `position`, at or below `until`.
async fn read_after(
    conn: &mut PgConnection,
    position: i64,
    limit: i64,
    until: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    // The metadata as stored (json, read as its text): a cast to jsonb parsed and rendered
    // it again in Postgres for every reader of every event.
    sqlx::query_as(
        "SELECT position, event_id, recorded_at, aggregate_type, aggregate_id, sequence, \
                event_type, event_version, payload::text AS payload, metadata::text AS metadata \
           FROM events WHERE position > $1 AND position <= $3 ORDER BY position LIMIT $2",
    )
    .bind(position)
    .bind(limit)
    .bind(until)
    .fetch_all(&mut *conn)
    .await
}

/// How long a reader waits for the writers in flight before it returns what is safe so far
/// (nothing new): a writer is at most one commit away unless something holds it.
const HORIZON_WAIT: Duration = Duration::from_millis(250);

/// The highest position below which nothing can still commit: the last position drawn, once
/// the transactions that held the position lock when it was read have ended. Writers are
/// never made to wait; the reader waits for them (about one commit), polling every
/// millisecond. 0 when they outlast [`HORIZON_WAIT`]: the caller reads again later.
async fn horizon(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    let (drawn, writers): (i64, Vec<String>) =
        sqlx::query_as("SELECT drawn, writers FROM events_horizon()")
            .fetch_one(&mut *conn)
            .await?;
    if writers.is_empty() {
        return Ok(drawn);
    }
    let deadline = Instant::now() + HORIZON_WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let (left,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM unnest(events_position_writers()) AS w WHERE w = ANY($1))",
        )
        .bind(&writers)
        .fetch_one(&mut *conn)
        .await?;
        if !left {
            return Ok(drawn);
        }
        if Instant::now() >= deadline {
            return Ok(0);
        }
    }
}

/// A transaction whose commit does not wait for the WAL flush, begun in one round trip: for
/// writes that are redone when a crash loses them (a follower's rows with its checkpoint).
///
/// # Errors
/// Database errors.
pub async fn begin_unflushed(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin_with("BEGIN; SET LOCAL synchronous_commit = off")
        .await
}

/// Every event of one aggregate, in sequence order.
///
/// # Errors
/// Database errors.
pub async fn events_of(
    pool: &PgPool,
    aggregate_type: &str,
    id: &str,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT position, event_id, recorded_at, aggregate_type, aggregate_id, sequence, \
                event_type, event_version, payload::text AS payload, metadata::text AS metadata \
           FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
    )
    .bind(aggregate_type)
    .bind(id)
    .fetch_all(pool)
    .await
}

/// The highest position committed so far (0 when empty).
///
/// # Errors
/// Database errors.
pub async fn head(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let (p,): (Option<i64>,) = sqlx::query_as("SELECT max(position) FROM events")
        .fetch_one(pool)
        .await?;
    Ok(p.unwrap_or(0))
}

/// A reader's stored checkpoint (0 when it never ran).
///
/// # Errors
/// Database errors.
pub async fn checkpoint<'e>(db: impl PgExecutor<'e>, name: &str) -> Result<i64, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT position FROM checkpoints WHERE name = $1")
        .bind(name)
        .fetch_optional(db)
        .await?;
    Ok(row.map_or(0, |(p,)| p))
}

/// The stored checkpoints among `names`, as (name, position); a reader that never ran is
/// absent.
///
/// # Errors
/// Database errors.
pub async fn checkpoints<'e>(
    db: impl PgExecutor<'e>,
    names: &[&str],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT name, position FROM checkpoints WHERE name = ANY($1)")
        .bind(names)
        .fetch_all(db)
        .await
}

/// Moves checkpoint `name` forward to `position`; `false` (and nothing changed) when it is
/// already past it: another instance of the reader got further, and this one is stale.
///
/// # Errors
/// Database errors.
pub async fn advance_checkpoint<'e>(
    db: impl PgExecutor<'e>,
    name: &str,
    position: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO checkpoints (name, position) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now() \
         WHERE checkpoints.position <= EXCLUDED.position",
    )
    .bind(name)
    .bind(position)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Stores the checkpoints of `names` at `position` in one statement; call it in the
/// transaction that applied the events.
///
/// # Errors
/// Database errors.
pub async fn save_checkpoints<'e>(
    db: impl PgExecutor<'e>,
    names: &[&str],
    position: i64,
) -> Result<(), sqlx::Error> {
    if names.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO checkpoints (name, position) SELECT n, $2 FROM unnest($1::text[]) AS n \
         ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
    )
    .bind(names)
    .bind(position)
    .execute(db)
    .await?;
    Ok(())
}

/// Stores a reader's checkpoint; call it in the transaction that applied the events.
///
/// # Errors
/// Database errors.
pub async fn save_checkpoint<'e>(
    db: impl PgExecutor<'e>,
    name: &str,
    position: i64,
) -> Result<(), sqlx::Error> {
    save_checkpoints(db, &[name], position).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(positions: &[i64]) -> Vec<RecordedEvent> {
        positions
            .iter()
            .map(|&position| RecordedEvent {
                position,
                event_id: Uuid::nil(),
                recorded_at: DateTime::<Utc>::MIN_UTC,
                aggregate_type: String::new(),
                aggregate_id: String::new(),
                sequence: 1,
                event_type: String::new(),
                event_version: String::new(),
                payload: String::new(),
                metadata: String::new(),
            })
            .collect()
    }

    #[test]
    fn a_run_stops_at_the_first_hole() {
        assert_eq!(contiguous(4, &at(&[5, 6, 7, 9, 10])), 3);
        assert_eq!(contiguous(4, &at(&[5, 6, 7])), 3);
        assert_eq!(contiguous(0, &at(&[1])), 1);
    }

    #[test]
    fn a_hole_right_after_the_checkpoint_gives_no_run() {
        assert_eq!(contiguous(4, &at(&[6, 7])), 0);
        assert_eq!(contiguous(4, &at(&[])), 0);
    }
}
