//! Projection `jobs`: the latest view of each job, every visible change (for SSE replay),
//! and each user's last change position (for notices).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, SubsecRound, Utc};
use domain::job::JobEvent;
use eventstore::reader::RecordedEvent;
use platform::{
    notice::{JobChange, Notice},
    views::JobView as JobRow,
};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ProjectionError;

/// The tables this projection owns.
pub const TABLES: &[&str] = &["job_views", "job_changes", "job_streams"];

/// Job rows held in memory between batches. A live batch flushes at its end; a rebuild
/// keeps up to [`BUFFER_MAX`] rows, so most jobs are written once, with their final state,
/// instead of once per event.
#[derive(Default)]
pub struct Buffer {
    rows: HashMap<Uuid, JobRow>,
    stored: HashSet<Uuid>,
}

/// Rows a rebuild holds before writing them out.
pub const BUFFER_MAX: usize = 500_000;

/// Job rows as this process last stored them, kept between live batches so that a job's
/// next event needs no read of its row (a read per batch was ~15% of Postgres's statement
/// time in a drain). Valid only while no other process has written the table since: the
/// runner keeps it for the batch whose checkpoint is the one it last saved ([`Warm::valid_at`])
/// and clears it otherwise, or when a batch fails.
#[derive(Default)]
pub struct Warm {
    rows: HashMap<Uuid, JobRow>,
    /// Rows written by the batch in progress, kept once it commits.
    written: Vec<JobRow>,
    /// The checkpoint the rows are as of (`None`: nothing is known).
    through: Option<i64>,
}

/// Rows kept at most; past it the memory starts over (a read costs one query per batch).
const WARM_MAX: usize = 100_000;

impl Warm {
    /// Keeps the rows only if `checkpoint` (read under the batch's lock) is the one this
    /// process saved with them.
    pub fn valid_at(&mut self, checkpoint: i64) {
        if self.through != Some(checkpoint) {
            self.clear();
        }
    }

    /// The batch committed at `checkpoint`: its rows are as stored. A job that has ended
    /// is let go: few jobs have an event after that.
    pub fn committed(&mut self, checkpoint: i64) {
        if self.rows.len() + self.written.len() > WARM_MAX {
            self.rows.clear();
        }
        for row in self.written.drain(..) {
            if matches!(row.status.as_str(), "completed" | "failed" | "canceled") {
                self.rows.remove(&row.id);
            } else {
                self.rows.insert(row.id, row);
            }
        }
        self.through = Some(checkpoint);
    }

    /// Forgets everything: the batch failed, or another process wrote the table.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.written.clear();
        self.through = None;
    }
}

impl Buffer {
    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Applies `events` to the tables named with `suffix`; returns one notice per user.
///
/// # Errors
/// Database errors, or an event that does not decode.
pub async fn apply(
    conn: &mut PgConnection,
    events: &[RecordedEvent],
    suffix: &str,
    mut warm: Option<&mut Warm>,
) -> Result<Vec<Notice>, ProjectionError> {
    let mut buffer = Buffer::default();
    if let Some(w) = warm.as_deref_mut() {
        // The rows this batch's events need and this process knows, as stored.
        for e in events.iter().filter(|e| e.aggregate_type == "job") {
            if let Ok(id) = Uuid::parse_str(&e.aggregate_id)
                && let Some(row) = w.rows.remove(&id)
            {
                buffer.stored.insert(id);
                buffer.rows.insert(id, row);
            }
        }
    }
    let notices = apply_buffered(conn, events, suffix, &mut buffer).await?;
    let rows = flush(conn, &mut buffer, suffix).await?;
    if let Some(w) = warm {
        w.written.extend(rows);
    }
    Ok(notices)
}

/// As [`apply`], leaving the job rows in `buffer`; changes and stream positions are written.
///
/// # Errors
/// Database errors, or an event that does not decode.
pub async fn apply_buffered(
    conn: &mut PgConnection,
    events: &[RecordedEvent],
    suffix: &str,
    buffer: &mut Buffer,
) -> Result<Vec<Notice>, ProjectionError> {
    let decoded: Vec<(_, _, JobEvent)> = crate::decode(events, "job")?;
    if decoded.is_empty() {
        return Ok(vec![]);
    }
    let missing: Vec<Uuid> = decoded
        .iter()
        .filter(|(_, id, ev)| {
            !matches!(ev, JobEvent::JobSubmitted(_)) && !buffer.rows.contains_key(id)
        })
        .map(|(_, id, _)| *id)
        .collect();
    for row in load_rows(conn, &missing, suffix).await? {
        buffer.stored.insert(row.id);
        buffer.rows.insert(row.id, row);
    }
    let mut changes: Vec<(Uuid, JobChange)> = Vec::new();
    for (e, id, event) in &decoded {
        if let Some(change) = evolve(&mut buffer.rows, e, *id, event) {
            changes.push(change);
        }
    }
    write_changes(conn, &changes, suffix).await?;
    streams(conn, changes, suffix).await
}

/// Writes the held rows: inserts for new jobs, updates for stored ones; returns them.
///
/// # Errors
/// Database errors.
pub async fn flush(
    conn: &mut PgConnection,
    buffer: &mut Buffer,
    suffix: &str,
) -> Result<Vec<JobRow>, ProjectionError> {
    let (old, new): (Vec<&JobRow>, Vec<&JobRow>) = buffer
        .rows
        .values()
        .partition(|r| buffer.stored.contains(&r.id));
    insert_rows(conn, &new, suffix).await?;
    update_rows(conn, &old, suffix).await?;
    buffer.stored.clear();
    Ok(buffer.rows.drain().map(|(_, row)| row).collect())
}

/// The stored rows of `ids`.
async fn load_rows(
    conn: &mut PgConnection,
    ids: &[Uuid],
    suffix: &str,
) -> Result<Vec<JobRow>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    sqlx::query_as(&format!(
        "SELECT id, user_id, task_type, status, attempts, correlation_id, created_at, updated_at, \
                result, error, position FROM job_views{suffix} WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// Applies one event to its job's row; returns the visible change, if any.
pub(crate) fn evolve(
    rows: &mut HashMap<Uuid, JobRow>,
    e: &RecordedEvent,
    id: Uuid,
    event: &JobEvent,
) -> Option<(Uuid, JobChange)> {
    if let JobEvent::JobSubmitted(s) = event {
        rows.insert(
            id,
            JobRow {
                id,
                user_id: s.user_id.as_uuid(),
                task_type: s.task_type.to_string(),
                status: s.status.as_str().to_owned(),
                attempts: 0,
                correlation_id: s.correlation_id.to_string(),
                // Microseconds, as Postgres keeps them: cursors carry microseconds too.
                created_at: s.submitted_at.trunc_subsecs(6),
                updated_at: e.recorded_at,
                result: None,
                error: None,
                position: e.position,
            },
        );
    } else {
        let row = rows.get_mut(&id)?;
        match event {
            JobEvent::JobSubmitted(_) | JobEvent::JobHeartbeat(_) => return None,
            JobEvent::JobFailed(f) => {
                // Not a change of its own: the retry or dead letter that follows is.
                row.error = Some(f.error.as_str().to_owned());
                return None;
            }
            JobEvent::JobStarted(s) => {
                row.status = "running".into();
                row.attempts = i32::try_from(s.attempt.get()).unwrap_or(i32::MAX);
            }
            JobEvent::JobCompleted(c) => {
                row.status = "completed".into();
                row.result = Some(c.result.clone());
                let took = (e.recorded_at - row.created_at)
                    .to_std()
                    .unwrap_or_default();
                metrics::histogram!("runledger_job_latency_seconds", "task_type" => row.task_type.clone())
                    .record(took.as_secs_f64());
                ended(&row.task_type, "completed");
            }
            JobEvent::JobRetryScheduled(_) => {
                row.status = "retrying".into();
                metrics::counter!("runledger_job_retries_total", "task_type" => row.task_type.clone())
                    .increment(1);
            }
            JobEvent::JobDeadLettered(d) => {
                row.status = "failed".into();
                row.error = Some(d.error.as_str().to_owned());
                metrics::counter!("runledger_dead_letters_total", "task_type" => row.task_type.clone())
                    .increment(1);
                ended(&row.task_type, "failed");
            }
            JobEvent::JobCanceled(_) => {
                row.status = "canceled".into();
                ended(&row.task_type, "canceled");
            }
        }
        row.updated_at = e.recorded_at;
        row.position = e.position;
    }
    let row = rows.get(&id)?;
    Some((
        row.user_id,
        JobChange {
            position: e.position,
            id,
            status: row.status.clone(),
            attempts: row.attempts,
            updated_at: row.updated_at,
            traceparent: None,
            correlation_id: None,
        },
    ))
}

/// Counts a job's end in `runledger_jobs_ended_total{task_type, status}`.
fn ended(task_type: &str, status: &'static str) {
    metrics::counter!("runledger_jobs_ended_total", "task_type" => task_type.to_owned(), "status" => status)
        .increment(1);
}

/// New jobs: each is submitted once, and each batch is applied once.
async fn insert_rows(
    conn: &mut PgConnection,
    rows: &[&JobRow],
    suffix: &str,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&JobRow) -> String| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let users: Vec<Uuid> = rows.iter().map(|r| r.user_id).collect();
    let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
    let created: Vec<DateTime<Utc>> = rows.iter().map(|r| r.created_at).collect();
    let (updated, results, errors, positions) = mutable_columns(rows);
    sqlx::query(&format!(
        "INSERT INTO job_views{suffix} (id, user_id, task_type, status, attempts, correlation_id, \
                created_at, updated_at, result, error, position) \
         SELECT i, u, t, s, a, c, ca, ua, r::jsonb, e, p FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], \
                $4::text[], $5::int4[], $6::text[], $7::timestamptz[], $8::timestamptz[], $9::text[], \
                $10::text[], $11::int8[]) AS x(i, u, t, s, a, c, ca, ua, r, e, p)"
    ))
    .bind(&ids)
    .bind(&users)
    .bind(col(|r| r.task_type.clone()))
    .bind(col(|r| r.status.clone()))
    .bind(&attempts)
    .bind(col(|r| r.correlation_id.clone()))
    .bind(&created)
    .bind(&updated)
    .bind(&results)
    .bind(&errors)
    .bind(&positions)
    .execute(conn)
    .await?;
    Ok(())
}

type Mutable = (
    Vec<DateTime<Utc>>,
    Vec<Option<String>>,
    Vec<Option<String>>,
    Vec<i64>,
);

fn mutable_columns(rows: &[&JobRow]) -> Mutable {
    (
        rows.iter().map(|r| r.updated_at).collect(),
        rows.iter()
            .map(|r| r.result.as_ref().map(Value::to_string))
            .collect(),
        rows.iter().map(|r| r.error.clone()).collect(),
        rows.iter().map(|r| r.position).collect(),
    )
}

/// Jobs that existed before the batch.
async fn update_rows(
    conn: &mut PgConnection,
    rows: &[&JobRow],
    suffix: &str,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
    let (updated, results, errors, positions) = mutable_columns(rows);
    sqlx::query(&format!(
        "UPDATE job_views{suffix} AS v SET status = x.s, attempts = x.a, updated_at = x.ua, \
                result = x.r::jsonb, error = x.e, position = x.p \
           FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::timestamptz[], $5::text[], $6::text[], \
                $7::int8[]) AS x(i, s, a, ua, r, e, p) \
          WHERE v.id = x.i"
    ))
    .bind(&ids)
    .bind(&statuses)
    .bind(&attempts)
    .bind(&updated)
    .bind(&results)
    .bind(&errors)
    .bind(&positions)
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_changes(
    conn: &mut PgConnection,
    changes: &[(Uuid, JobChange)],
    suffix: &str,
) -> Result<(), sqlx::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let positions: Vec<i64> = changes.iter().map(|(_, c)| c.position).collect();
    let users: Vec<Uuid> = changes.iter().map(|(u, _)| *u).collect();
    let jobs: Vec<Uuid> = changes.iter().map(|(_, c)| c.id).collect();
    let statuses: Vec<&str> = changes.iter().map(|(_, c)| c.status.as_str()).collect();
    let attempts: Vec<i32> = changes.iter().map(|(_, c)| c.attempts).collect();
    let updated: Vec<DateTime<Utc>> = changes.iter().map(|(_, c)| c.updated_at).collect();
    sqlx::query(&format!(
        "INSERT INTO job_changes{suffix} (position, user_id, job_id, status, attempts, updated_at) \
         SELECT * FROM UNNEST($1::int8[], $2::uuid[], $3::uuid[], $4::text[], $5::int4[], $6::timestamptz[])"
    ))
    .bind(&positions)
    .bind(&users)
    .bind(&jobs)
    .bind(&statuses)
    .bind(&attempts)
    .bind(&updated)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves each user's last position on and returns the notices, each naming the previous one.
async fn streams(
    conn: &mut PgConnection,
    changes: Vec<(Uuid, JobChange)>,
    suffix: &str,
) -> Result<Vec<Notice>, ProjectionError> {
    let mut by_user: BTreeMap<Uuid, Vec<JobChange>> = BTreeMap::new();
    for (u, c) in changes {
        by_user.entry(u).or_default().push(c);
    }
    if by_user.is_empty() {
        return Ok(vec![]);
    }
    let users: Vec<Uuid> = by_user.keys().copied().collect();
    let prev: HashMap<Uuid, i64> = sqlx::query_as::<_, (Uuid, i64)>(&format!(
        "SELECT user_id, last_position FROM job_streams{suffix} WHERE user_id = ANY($1)"
    ))
    .bind(&users)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let lasts: Vec<i64> = by_user
        .values()
        .map(|cs| cs.last().map_or(0, |c| c.position))
        .collect();
    sqlx::query(&format!(
        "INSERT INTO job_streams{suffix} (user_id, last_position) \
         SELECT * FROM UNNEST($1::uuid[], $2::int8[]) \
         ON CONFLICT (user_id) DO UPDATE SET last_position = EXCLUDED.last_position"
    ))
    .bind(&users)
    .bind(&lasts)
    .execute(conn)
    .await?;
    Ok(by_user
        .into_iter()
        .map(|(user_id, changes)| Notice {
            user_id,
            prev: prev.get(&user_id).copied().unwrap_or(0),
            changes,
        })
        .collect())
}

/// The checkpoint that records how far retention has dropped `job_changes`.
pub const TRIMMED: &str = "job_changes_trimmed";

/// Drops the changes older than `keep` from `job_changes`, under the projection's lock, and
/// moves the [`TRIMMED`] mark; returns how many rows went.
///
/// # Errors
/// Database errors; nothing is dropped.
pub async fn trim(pool: &sqlx::PgPool, keep: std::time::Duration) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(crate::Projection::Jobs.lock_key())
        .execute(&mut *tx)
        .await?;
    let cutoff = Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    let (cut,): (Option<i64>,) =
        sqlx::query_as("SELECT max(position) FROM job_changes WHERE updated_at < $1")
            .bind(cutoff)
            .fetch_one(&mut *tx)
            .await?;
    let Some(cut) = cut else {
        tx.rollback().await?;
        return Ok(0);
    };
    let gone = sqlx::query("DELETE FROM job_changes WHERE position <= $1")
        .bind(cut)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let before = eventstore::reader::checkpoint(&mut *tx, TRIMMED).await?;
    eventstore::reader::save_checkpoint(&mut *tx, TRIMMED, before.max(cut)).await?;
    tx.commit().await?;
    Ok(gone)
}

/// Trims `job_changes` to `keep` every minute until `shutdown`.
pub async fn trim_every(
    pool: sqlx::PgPool,
    keep: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    while !shutdown.is_cancelled() {
        match trim(&pool, keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(message = "Trimmed the SSE replay log.", rows = n),
            Err(e) => tracing::warn!(message = "Trimming the SSE replay log failed.", error = %e),
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
        }
    }
}
