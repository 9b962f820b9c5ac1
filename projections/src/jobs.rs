//! Projection `jobs`: the latest view of each job, every visible change (for SSE replay),
//! and each user's last change position (for notices).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use domain::job::JobEvent;
use platform::{
    notice::{JobChange, Notice},
    store::reader::RecordedEvent,
};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ProjectionError;

/// The tables this projection owns.
pub const TABLES: &[&str] = &["job_views", "job_changes", "job_streams"];

#[derive(Debug, Clone, sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    user_id: Uuid,
    task_type: String,
    status: String,
    attempts: i32,
    correlation_id: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    result: Option<Value>,
    error: Option<String>,
    position: i64,
}

/// Applies `events` to the tables named with `suffix`; returns one notice per user.
///
/// # Errors
/// Database errors, or an event that does not decode.
pub async fn apply(
    conn: &mut PgConnection,
    events: &[RecordedEvent],
    suffix: &str,
) -> Result<Vec<Notice>, ProjectionError> {
    let mut decoded = Vec::new();
    for e in events.iter().filter(|e| e.aggregate_type == "job") {
        let event: JobEvent = serde_json::from_value(e.payload.clone()).map_err(|source| {
            ProjectionError::Decode {
                position: e.position,
                source,
            }
        })?;
        let id = Uuid::parse_str(&e.aggregate_id).map_err(|_| ProjectionError::BadId {
            position: e.position,
        })?;
        decoded.push((e, id, event));
    }
    if decoded.is_empty() {
        return Ok(vec![]);
    }
    let mut rows = load_rows(conn, &decoded, suffix).await?;
    let mut changes: Vec<(Uuid, JobChange)> = Vec::new();
    for (e, id, event) in &decoded {
        if let Some(change) = evolve(&mut rows, e, *id, event) {
            changes.push(change);
        }
    }
    write_rows(conn, rows.values(), suffix).await?;
    write_changes(conn, &changes, suffix).await?;
    streams(conn, changes, suffix).await
}

/// The rows of jobs touched by the batch that already exist.
async fn load_rows(
    conn: &mut PgConnection,
    decoded: &[(&RecordedEvent, Uuid, JobEvent)],
    suffix: &str,
) -> Result<HashMap<Uuid, JobRow>, sqlx::Error> {
    let existing: Vec<Uuid> = decoded
        .iter()
        .filter(|(_, _, ev)| !matches!(ev, JobEvent::JobSubmitted(_)))
        .map(|(_, id, _)| *id)
        .collect();
    if existing.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<JobRow> = sqlx::query_as(&format!(
        "SELECT id, user_id, task_type, status, attempts, correlation_id, created_at, updated_at, \
                result, error, position FROM job_views{suffix} WHERE id = ANY($1)"
    ))
    .bind(&existing)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r)).collect())
}

/// Applies one event to its job's row; returns the visible change, if any.
fn evolve(
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
                created_at: s.submitted_at,
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
            }
            JobEvent::JobRetryScheduled(_) => row.status = "retrying".into(),
            JobEvent::JobDeadLettered(d) => {
                row.status = "failed".into();
                row.error = Some(d.error.as_str().to_owned());
            }
            JobEvent::JobCanceled(_) => row.status = "canceled".into(),
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
        },
    ))
}

async fn write_rows<'a>(
    conn: &mut PgConnection,
    rows: impl Iterator<Item = &'a JobRow>,
    suffix: &str,
) -> Result<(), sqlx::Error> {
    let rows: Vec<&JobRow> = rows.collect();
    let col = |f: fn(&JobRow) -> String| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let users: Vec<Uuid> = rows.iter().map(|r| r.user_id).collect();
    let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
    let created: Vec<DateTime<Utc>> = rows.iter().map(|r| r.created_at).collect();
    let updated: Vec<DateTime<Utc>> = rows.iter().map(|r| r.updated_at).collect();
    let results: Vec<Option<String>> = rows
        .iter()
        .map(|r| r.result.as_ref().map(Value::to_string))
        .collect();
    let errors: Vec<Option<String>> = rows.iter().map(|r| r.error.clone()).collect();
    let positions: Vec<i64> = rows.iter().map(|r| r.position).collect();
    sqlx::query(&format!(
        "INSERT INTO job_views{suffix} (id, user_id, task_type, status, attempts, correlation_id, \
                created_at, updated_at, result, error, position) \
         SELECT i, u, t, s, a, c, ca, ua, r::jsonb, e, p FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], \
                $4::text[], $5::int4[], $6::text[], $7::timestamptz[], $8::timestamptz[], $9::text[], \
                $10::text[], $11::int8[]) AS x(i, u, t, s, a, c, ca, ua, r, e, p) \
         ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, attempts = EXCLUDED.attempts, \
                updated_at = EXCLUDED.updated_at, result = EXCLUDED.result, error = EXCLUDED.error, \
                position = EXCLUDED.position"
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
         SELECT * FROM UNNEST($1::int8[], $2::uuid[], $3::uuid[], $4::text[], $5::int4[], $6::timestamptz[]) \
         ON CONFLICT DO NOTHING"
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
