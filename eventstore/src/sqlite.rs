//! The embedded event store (`runledger dev`): the same tables and contract on SQLite.
//! SQLite runs one write transaction at a time and the writer takes the write lock with its
//! first insert, so positions (`INTEGER PRIMARY KEY AUTOINCREMENT`) are drawn in commit
//! order: no lock of our own is needed for the global order. A batch with a refused unit is
//! redone without it, so each unit stays all-or-nothing.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Sqlite as Driver, SqlitePool, Transaction};
use uuid::Uuid;

use super::{
    log::{EventLog, LiveJob, Progress, Rows},
    poison::Parked,
    reader::RecordedEvent,
    writer::{CommitError, Failed, Queued, WriteUnit},
};

/// The event log on a SQLite pool.
pub struct Sqlite(pub SqlitePool);

#[async_trait]
impl EventLog for Sqlite {
    async fn load_rows(&self, aggregate_type: &str, id: &str) -> Result<Rows, sqlx::Error> {
        load_rows(&self.0, aggregate_type, id).await
    }

    async fn commit_batch(&self, batch: Vec<Queued>, failed: &mut Failed) {
        commit_batch(&self.0, batch, failed).await;
    }

    async fn read_from(
        &self,
        position: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
        ))
        .bind(position)
        .bind(limit)
        .fetch_all(&self.0)
        .await?;
        rows.into_iter().map(recorded).collect()
    }

    async fn events_of(
        &self,
        aggregate_type: &str,
        id: &str,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2 \
             ORDER BY sequence"
        ))
        .bind(aggregate_type)
        .bind(id)
        .fetch_all(&self.0)
        .await?;
        rows.into_iter().map(recorded).collect()
    }

    async fn payloads_of(
        &self,
        aggregate_type: &str,
        id: &str,
        event_type: &str,
        (part, parts): (i64, i64),
    ) -> Result<Vec<(i64, String, Option<String>)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT position, event_type, CASE WHEN event_type = ?3 THEN payload END \
               FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2 \
                AND sequence % ?5 = ?4 ORDER BY sequence",
        )
        .bind(aggregate_type)
        .bind(id)
        .bind(event_type)
        .bind(part)
        .bind(parts.max(1))
        .fetch_all(&self.0)
        .await
    }

    async fn aggregate_ids(
        &self,
        aggregate_type: &str,
        prefix: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT aggregate_id FROM events WHERE aggregate_type = ?1 AND aggregate_id >= ?2 \
               AND (?3 IS NULL OR aggregate_id < ?3) AND sequence = 1 ORDER BY aggregate_id",
        )
        .bind(aggregate_type)
        .bind(prefix)
        .bind(super::log::prefix_end(prefix))
        .fetch_all(&self.0)
        .await?;
        Ok(super::log::prefixed(rows, prefix))
    }

    async fn head(&self) -> Result<i64, sqlx::Error> {
        let (p,): (Option<i64>,) = sqlx::query_as("SELECT max(position) FROM events")
            .fetch_one(&self.0)
            .await?;
        Ok(p.unwrap_or(0))
    }

    async fn checkpoint(&self, name: &str) -> Result<i64, sqlx::Error> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT position FROM checkpoints WHERE name = ?1")
                .bind(name)
                .fetch_optional(&self.0)
                .await?;
        Ok(row.map_or(0, |(p,)| p))
    }

    async fn save_progress(
        &self,
        name: &str,
        position: i64,
        progress: Progress,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.0.begin().await?;
        for (job, usage, at) in &progress.reserved {
            sqlx::query(
                "INSERT OR IGNORE INTO pending_reservations (job_id, usage_id, reserved_at) \
                 VALUES (?1, ?2, ?3)",
            )
            .bind(job.to_string())
            .bind(usage)
            .bind(at.timestamp_micros())
            .execute(&mut *tx)
            .await?;
        }
        for job in &progress.settled {
            sqlx::query("DELETE FROM pending_reservations WHERE job_id = ?1")
                .bind(job.to_string())
                .execute(&mut *tx)
                .await?;
        }
        for l in &progress.live {
            sqlx::query(
                "INSERT INTO live_jobs (job_id, status, attempt, since) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, \
                 attempt = excluded.attempt, since = excluded.since",
            )
            .bind(l.job_id.to_string())
            .bind(&l.status)
            .bind(l.attempt)
            .bind(l.since.timestamp_micros())
            .execute(&mut *tx)
            .await?;
        }
        for job in &progress.ended {
            sqlx::query("DELETE FROM live_jobs WHERE job_id = ?1")
                .bind(job.to_string())
                .execute(&mut *tx)
                .await?;
        }
        let advanced = sqlx::query(
            "INSERT INTO checkpoints (name, position) VALUES (?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position \
             WHERE checkpoints.position <= excluded.position",
        )
        .bind(name)
        .bind(position)
        .execute(&mut *tx)
        .await?;
        if advanced.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn park(
        &self,
        consumer: &str,
        poison: &[(RecordedEvent, String)],
    ) -> Result<(), sqlx::Error> {
        let now = Utc::now().timestamp_micros();
        for (e, error) in poison {
            sqlx::query(
                "INSERT INTO parked_events (consumer, position, event_id, aggregate_type, \
                   aggregate_id, event_type, error, parked_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (consumer, position) DO UPDATE SET error = excluded.error, retry = 0",
            )
            .bind(consumer)
            .bind(e.position)
            .bind(e.event_id.simple().to_string())
            .bind(&e.aggregate_type)
            .bind(&e.aggregate_id)
            .bind(&e.event_type)
            .bind(error)
            .bind(now)
            .execute(&self.0)
            .await?;
        }
        Ok(())
    }

    async fn parked(&self, consumer: Option<&str>) -> Result<Vec<Parked>, sqlx::Error> {
        type Row = (
            String,
            i64,
            String,
            String,
            String,
            String,
            String,
            i64,
            bool,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT consumer, position, event_id, aggregate_type, aggregate_id, event_type, \
                    error, parked_at, retry \
               FROM parked_events WHERE ?1 IS NULL OR consumer = ?1 \
              ORDER BY position, consumer",
        )
        .bind(consumer)
        .fetch_all(&self.0)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Parked {
                consumer: r.0,
                position: r.1,
                event_id: Uuid::parse_str(&r.2).unwrap_or_default(),
                aggregate_type: r.3,
                aggregate_id: r.4,
                event_type: r.5,
                error: r.6,
                parked_at: DateTime::from_timestamp_micros(r.7).unwrap_or_default(),
                retry: r.8,
            })
            .collect())
    }

    async fn ask_retry(&self, consumer: Option<&str>) -> Result<u64, sqlx::Error> {
        let done =
            sqlx::query("UPDATE parked_events SET retry = 1 WHERE ?1 IS NULL OR consumer = ?1")
                .bind(consumer)
                .execute(&self.0)
                .await?;
        Ok(done.rows_affected())
    }

    async fn retries(&self, consumer: &str) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM events WHERE position IN \
               (SELECT position FROM parked_events WHERE consumer = ?1 AND retry = 1) \
             ORDER BY position"
        ))
        .bind(consumer)
        .fetch_all(&self.0)
        .await?;
        rows.into_iter().map(recorded).collect()
    }

    async fn unpark(&self, consumer: &str, positions: &[i64]) -> Result<(), sqlx::Error> {
        for p in positions {
            sqlx::query("DELETE FROM parked_events WHERE consumer = ?1 AND position = ?2")
                .bind(consumer)
                .bind(p)
                .execute(&self.0)
                .await?;
        }
        Ok(())
    }

    async fn live_before(
        &self,
        statuses: &[&str],
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<LiveJob>, sqlx::Error> {
        let mut out = Vec::new();
        for status in statuses {
            let rows: Vec<(String, String, i32, i64)> = sqlx::query_as(
                "SELECT job_id, status, attempt, since FROM live_jobs \
                 WHERE status = ?1 AND since < ?2 ORDER BY since LIMIT ?3",
            )
            .bind(status)
            .bind(cutoff.timestamp_micros())
            .bind(limit)
            .fetch_all(&self.0)
            .await?;
            for (job, status, attempt, since) in rows {
                let (Ok(job_id), Some(since)) = (
                    Uuid::parse_str(&job),
                    DateTime::from_timestamp_micros(since),
                ) else {
                    continue;
                };
                out.push(LiveJob {
                    job_id,
                    status,
                    attempt,
                    since,
                });
            }
        }
        out.sort_by_key(|l| l.since);
        out.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(out)
    }

    async fn stored_response(
        &self,
        user: Uuid,
        key: &str,
    ) -> Result<Option<(String, i16, Value)>, sqlx::Error> {
        let row: Option<(String, i64, String)> = sqlx::query_as(
            "SELECT request_hash, status, body FROM idempotency_keys WHERE user_id = ?1 AND key = ?2",
        )
        .bind(user.to_string())
        .bind(key)
        .fetch_optional(&self.0)
        .await?;
        Ok(row.map(|(h, s, b)| {
            (
                h,
                i16::try_from(s).unwrap_or(500),
                serde_json::from_str(&b).unwrap_or(Value::Null),
            )
        }))
    }

    async fn pending_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT job_id, usage_id FROM pending_reservations WHERE reserved_at < ?1 \
             ORDER BY reserved_at LIMIT ?2",
        )
        .bind(cutoff.timestamp_micros())
        .bind(limit)
        .fetch_all(&self.0)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(j, u)| Some((Uuid::parse_str(&j).ok()?, u)))
            .collect())
    }

    async fn drop_pending(&self, job: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM pending_reservations WHERE job_id = ?1")
            .bind(job.to_string())
            .execute(&self.0)
            .await?;
        Ok(())
    }

    async fn exists(&self, aggregate_type: &str, id: &str) -> Result<bool, sqlx::Error> {
        let (found,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2)",
        )
        .bind(aggregate_type)
        .bind(id)
        .fetch_one(&self.0)
        .await?;
        Ok(found)
    }

    async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.0).await.map(drop)
    }
}

/// The snapshot and the later events of one aggregate, as stored.
async fn load_rows(pool: &SqlitePool, aggregate_type: &str, id: &str) -> Result<Rows, sqlx::Error> {
    let snapshot: Option<(i64, String)> = sqlx::query_as(
        "SELECT last_sequence, payload FROM snapshots WHERE aggregate_type = ?1 AND aggregate_id = ?2",
    )
    .bind(aggregate_type)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let after = snapshot.as_ref().map_or(0, |(s, _)| *s);
    let rows = sqlx::query_as(
        "SELECT sequence, payload FROM events \
         WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND sequence > ?3 ORDER BY sequence",
    )
    .bind(aggregate_type)
    .bind(id)
    .bind(after)
    .fetch_all(pool)
    .await?;
    Ok((snapshot, rows))
}

/// Commits `batch` in one transaction. A refused unit (conflict, duplicate key) is rare in
/// one process: the transaction is then rolled back and redone without it, which spares every
/// unit a savepoint's three round trips to the database thread.
async fn commit_batch(pool: &SqlitePool, mut batch: Vec<Queued>, failed: &mut Failed) {
    loop {
        // SQLite writes a batch's units one after the other, so a chain needs no split.
        failed.cascade(&mut batch);
        if batch.is_empty() {
            return;
        }
        let units: Vec<&WriteUnit> = batch.iter().map(|q| &q.unit).collect();
        match try_commit(pool, &units).await {
            Ok(None) => {
                super::writer::answer_committed(batch);
                return;
            }
            Ok(Some((index, refusal))) => {
                metrics::counter!("runledger_command_conflicts_total").increment(1);
                let q = batch.remove(index);
                failed.insert(q.ticket);
                let _ = q.reply.send(Err(refusal));
            }
            Err(e) => {
                // SQLite answers COMMIT itself: an error means it rolled back.
                super::writer::fail_all(
                    super::writer::Failure::before_commit(&e),
                    &e,
                    batch,
                    failed,
                );
                return;
            }
        }
    }
}

/// Commits every unit, or nothing and the first refused unit.
async fn try_commit(
    pool: &SqlitePool,
    units: &[&WriteUnit],
) -> Result<Option<(usize, CommitError)>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let result = try_commit_on(&mut conn, units).await;
    if result.is_err() {
        // A connection whose write failed (a full disk, say) may be left inside a
        // transaction SQLite already rolled back, holding the write lock or taking later
        // writes into a transaction never committed: it is closed, never reused.
        conn.close_on_drop();
    }
    result
}

async fn try_commit_on(
    conn: &mut sqlx::pool::PoolConnection<Driver>,
    units: &[&WriteUnit],
) -> Result<Option<(usize, CommitError)>, sqlx::Error> {
    // The first write takes SQLite's write lock, held to commit.
    let mut tx = sqlx::Connection::begin(&mut **conn).await?;
    for (i, unit) in units.iter().enumerate() {
        if let Some(refusal) = write_unit(&mut tx, unit).await? {
            tx.rollback().await?;
            return Ok(Some((i, refusal)));
        }
    }
    tx.commit().await?;
    Ok(None)
}

async fn write_unit(
    tx: &mut Transaction<'_, Driver>,
    unit: &WriteUnit,
) -> Result<Option<CommitError>, sqlx::Error> {
    if let Some(r) = &unit.idempotency {
        let done = sqlx::query(
            "INSERT OR IGNORE INTO idempotency_keys (user_id, key, request_hash, status, body) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(r.user_id.to_string())
        .bind(&r.key)
        .bind(&r.request_hash)
        .bind(i64::from(r.status))
        .bind(r.body.to_string())
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(Some(CommitError::DuplicateKey));
        }
    }
    for a in &unit.appends {
        for (n, e) in a.events.iter().enumerate() {
            let done = sqlx::query(
                "INSERT OR IGNORE INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                        event_version, payload, metadata, event_id, recorded_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .bind(a.aggregate_type)
            .bind(&a.aggregate_id)
            .bind(a.expected_sequence + 1 + n as i64)
            .bind(&e.event_type)
            .bind(&e.event_version)
            .bind(&e.payload)
            .bind(&e.metadata)
            .bind(Uuid::new_v4().to_string())
            .bind(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() == 0 {
                return Ok(Some(CommitError::Conflict));
            }
        }
    }
    for s in &unit.snapshots {
        sqlx::query(
            "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload) \
             VALUES (?1, ?2, ?3, ?3, ?4) \
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET \
                last_sequence = excluded.last_sequence, current_snapshot = excluded.current_snapshot, \
                payload = excluded.payload \
             WHERE snapshots.last_sequence < excluded.last_sequence",
        )
        .bind(s.aggregate_type)
        .bind(&s.aggregate_id)
        .bind(s.last_sequence)
        .bind(&s.payload)
        .execute(&mut **tx)
        .await?;
    }
    for g in &unit.guards {
        // Units are written one after the other: an earlier unit's append is seen here.
        // After the unit's writes: a read first would take a shared lock that SQLite may
        // refuse to upgrade to the write lock (SQLITE_BUSY) while another connection writes.
        let (last,): (i64,) = sqlx::query_as(
            "SELECT coalesce(max(sequence), 0) FROM events \
              WHERE aggregate_type = ?1 AND aggregate_id = ?2",
        )
        .bind(g.aggregate_type)
        .bind(&g.aggregate_id)
        .fetch_one(&mut **tx)
        .await?;
        if last != g.sequence {
            return Ok(Some(CommitError::Stale));
        }
    }
    Ok(None)
}

type Row = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    String,
    String,
    String,
    String,
);

const COLUMNS: &str = "position, event_id, recorded_at, aggregate_type, aggregate_id, sequence, \
                       event_type, event_version, payload, metadata";

fn recorded(r: Row) -> Result<RecordedEvent, sqlx::Error> {
    let bad = |what: &str| sqlx::Error::Decode(format!("stored event {what} is malformed").into());
    Ok(RecordedEvent {
        position: r.0,
        event_id: Uuid::parse_str(&r.1).map_err(|_| bad("id"))?,
        recorded_at: r
            .2
            .parse::<DateTime<Utc>>()
            .map_err(|_| bad("recorded_at"))?,
        aggregate_type: r.3,
        aggregate_id: r.4,
        sequence: r.5,
        event_type: r.6,
        event_version: r.7,
        payload: r.8,
        metadata: r.9,
    })
}
