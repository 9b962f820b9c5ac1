//! The production event log on Postgres: postgres-es's tables with the global-order trigger
//! (ADR 0002); the group commit itself is in `writer`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    log::{EventLog, LiveJob, Progress, Rows},
    poison::{self, Parked},
    reader::{self, RecordedEvent},
    writer::{self, Failed, Queued},
};

/// The event log on a Postgres pool.
pub struct Postgres(pub PgPool);

#[async_trait]
impl EventLog for Postgres {
    fn postgres(&self) -> Option<&PgPool> {
        Some(&self.0)
    }

    async fn load_rows(&self, aggregate_type: &str, id: &str) -> Result<Rows, sqlx::Error> {
        // One round trip: the snapshot (kind 0), then the events after it (kind 1). Every
        // submission loads its user's subscription this way.
        let rows: Vec<(i16, i64, String)> = sqlx::query_as(
            "WITH s AS (SELECT last_sequence, payload::text AS payload FROM snapshots \
                         WHERE aggregate_type = $1 AND aggregate_id = $2) \
             SELECT 0::int2, last_sequence, payload FROM s \
             UNION ALL \
             SELECT 1::int2, sequence, payload::text FROM events \
              WHERE aggregate_type = $1 AND aggregate_id = $2 \
                AND sequence > coalesce((SELECT last_sequence FROM s), 0) \
             ORDER BY 1, 2",
        )
        .bind(aggregate_type)
        .bind(id)
        .fetch_all(&self.0)
        .await?;
        let mut snapshot = None;
        let mut events = Vec::with_capacity(rows.len());
        for (kind, seq, payload) in rows {
            if kind == 0 {
                snapshot = Some((seq, payload));
            } else {
                events.push((seq, payload));
            }
        }
        Ok((snapshot, events))
    }

    async fn commit_batch(&self, batch: Vec<Queued>, failed: &mut Failed) {
        writer::commit_batch(&self.0, batch, failed).await;
    }

    async fn read_from(
        &self,
        position: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        reader::read_from(&self.0, position, limit).await
    }

    async fn events_of(
        &self,
        aggregate_type: &str,
        id: &str,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        reader::events_of(&self.0, aggregate_type, id).await
    }

    async fn payloads_of(
        &self,
        aggregate_type: &str,
        id: &str,
        event_type: &str,
        (part, parts): (i64, i64),
    ) -> Result<Vec<(i64, String, Option<String>)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT position, event_type, CASE WHEN event_type = $3 THEN payload::text END \
               FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 \
                AND sequence % $5 = $4 ORDER BY sequence",
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
        // A range on the primary key (aggregate_type, aggregate_id, sequence), whatever the
        // collation; the first event of each aggregate stands for it.
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT aggregate_id FROM events WHERE aggregate_type = $1 AND aggregate_id >= $2 \
               AND ($3::text IS NULL OR aggregate_id < $3) AND sequence = 1 ORDER BY aggregate_id",
        )
        .bind(aggregate_type)
        .bind(prefix)
        .bind(super::log::prefix_end(prefix))
        .fetch_all(&self.0)
        .await?;
        Ok(super::log::prefixed(rows, prefix))
    }

    async fn head(&self) -> Result<i64, sqlx::Error> {
        reader::head(&self.0).await
    }

    async fn checkpoint(&self, name: &str) -> Result<i64, sqlx::Error> {
        reader::checkpoint(&self.0, name).await
    }

    async fn save_progress(
        &self,
        name: &str,
        position: i64,
        progress: Progress,
    ) -> Result<bool, sqlx::Error> {
        let Progress {
            reserved,
            settled,
            live,
            ended,
        } = progress;
        if reserved.is_empty() && settled.is_empty() && live.is_empty() && ended.is_empty() {
            // The checkpoint alone: one statement, not a transaction of four.
            return reader::advance_checkpoint(&self.0, name, position).await;
        }
        // Redone after a lost commit, what led here is a no-op: no need to wait for the WAL
        // flush.
        let mut tx = reader::begin_unflushed(&self.0).await?;
        if !reserved.is_empty() {
            let jobs: Vec<Uuid> = reserved.iter().map(|(j, _, _)| *j).collect();
            let usages: Vec<&str> = reserved.iter().map(|(_, u, _)| u.as_str()).collect();
            let ats: Vec<DateTime<Utc>> = reserved.iter().map(|(_, _, a)| *a).collect();
            sqlx::query(
                "INSERT INTO pending_reservations (job_id, usage_id, reserved_at) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&jobs)
            .bind(&usages)
            .bind(&ats)
            .execute(&mut *tx)
            .await?;
        }
        if !settled.is_empty() {
            sqlx::query(
                "DELETE FROM pending_reservations p USING UNNEST($1::uuid[]) AS g(id) \
                 WHERE p.job_id = g.id",
            )
            .bind(&settled)
            .execute(&mut *tx)
            .await?;
        }
        if !live.is_empty() {
            let jobs: Vec<Uuid> = live.iter().map(|l| l.job_id).collect();
            let statuses: Vec<&str> = live.iter().map(|l| l.status.as_str()).collect();
            let attempts: Vec<i32> = live.iter().map(|l| l.attempt).collect();
            let since: Vec<DateTime<Utc>> = live.iter().map(|l| l.since).collect();
            sqlx::query(
                "INSERT INTO live_jobs (job_id, status, attempt, since) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::timestamptz[]) \
                 ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, \
                 attempt = excluded.attempt, since = excluded.since",
            )
            .bind(&jobs)
            .bind(&statuses)
            .bind(&attempts)
            .bind(&since)
            .execute(&mut *tx)
            .await?;
        }
        if !ended.is_empty() {
            sqlx::query(
                "DELETE FROM live_jobs l USING UNNEST($1::uuid[]) AS g(id) WHERE l.job_id = g.id",
            )
            .bind(&ended)
            .execute(&mut *tx)
            .await?;
        }
        if !reader::advance_checkpoint(&mut *tx, name, position).await? {
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
        poison::park_pg(&self.0, consumer, poison).await
    }

    async fn parked(&self, consumer: Option<&str>) -> Result<Vec<Parked>, sqlx::Error> {
        type Row = (
            String,
            i64,
            Uuid,
            String,
            String,
            String,
            String,
            DateTime<Utc>,
            bool,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT consumer, position, event_id, aggregate_type, aggregate_id, event_type, \
                    error, parked_at, retry \
               FROM parked_events WHERE $1::text IS NULL OR consumer = $1 \
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
                event_id: r.2,
                aggregate_type: r.3,
                aggregate_id: r.4,
                event_type: r.5,
                error: r.6,
                parked_at: r.7,
                retry: r.8,
            })
            .collect())
    }

    async fn ask_retry(&self, consumer: Option<&str>) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE parked_events SET retry = true WHERE $1::text IS NULL OR consumer = $1",
        )
        .bind(consumer)
        .execute(&self.0)
        .await?;
        Ok(done.rows_affected())
    }

    async fn retries(&self, consumer: &str) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        sqlx::query_as(
            "SELECT e.position, e.event_id, e.recorded_at, e.aggregate_type, e.aggregate_id, \
                    e.sequence, e.event_type, e.event_version, e.payload::text AS payload, \
                    e.metadata::text AS metadata \
               FROM parked_events p JOIN events e ON e.position = p.position \
              WHERE p.consumer = $1 AND p.retry ORDER BY e.position",
        )
        .bind(consumer)
        .fetch_all(&self.0)
        .await
    }

    async fn unpark(&self, consumer: &str, positions: &[i64]) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM parked_events WHERE consumer = $1 AND position = ANY($2)")
            .bind(consumer)
            .bind(positions)
            .execute(&self.0)
            .await?;
        Ok(())
    }

    async fn live_before(
        &self,
        statuses: &[&str],
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<LiveJob>, sqlx::Error> {
        let rows: Vec<(Uuid, String, i32, DateTime<Utc>)> = sqlx::query_as(
            "SELECT job_id, status, attempt, since FROM live_jobs \
             WHERE status = ANY($1) AND since < $2 ORDER BY since LIMIT $3",
        )
        .bind(statuses)
        .bind(cutoff)
        .bind(limit)
        .fetch_all(&self.0)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(job_id, status, attempt, since)| LiveJob {
                job_id,
                status,
                attempt,
                since,
            })
            .collect())
    }

    async fn stored_response(
        &self,
        user: Uuid,
        key: &str,
    ) -> Result<Option<(String, i16, Value)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT request_hash, status, body::jsonb FROM idempotency_keys \
             WHERE user_id = $1 AND key = $2",
        )
        .bind(user)
        .bind(key)
        .fetch_optional(&self.0)
        .await
    }

    async fn pending_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT job_id, usage_id FROM pending_reservations WHERE reserved_at < $1 \
             ORDER BY reserved_at LIMIT $2",
        )
        .bind(cutoff)
        .bind(limit)
        .fetch_all(&self.0)
        .await
    }

    async fn drop_pending(&self, job: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM pending_reservations WHERE job_id = $1")
            .bind(job)
            .execute(&self.0)
            .await?;
        Ok(())
    }

    async fn exists(&self, aggregate_type: &str, id: &str) -> Result<bool, sqlx::Error> {
        let (found,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM events WHERE aggregate_type = $1 AND aggregate_id = $2)",
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
