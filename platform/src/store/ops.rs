//! What the roles ask of the store besides commands, for either backend: the ordered log,
//! checkpoints, stored idempotent responses, and the process manager's pending reservations.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{Db, EventStore, reader, reader::RecordedEvent, sqlite};

/// A reservation the process manager has seen, and the ledger it is in.
pub type Pending = (Uuid, String, DateTime<Utc>);

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
        match &self.db {
            Db::Postgres(p) => reader::read_from(p, position, limit).await,
            Db::Sqlite(p) => sqlite::read_from(p, position, limit).await,
        }
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
        match &self.db {
            Db::Postgres(p) => reader::events_of(p, aggregate_type, id).await,
            Db::Sqlite(p) => sqlite::events_of(p, aggregate_type, id).await,
        }
    }

    /// The highest position committed (0 when empty).
    ///
    /// # Errors
    /// Database errors.
    pub async fn head(&self) -> Result<i64, sqlx::Error> {
        match &self.db {
            Db::Postgres(p) => reader::head(p).await,
            Db::Sqlite(p) => sqlite::head(p).await,
        }
    }

    /// A reader's checkpoint (0 when it never ran).
    ///
    /// # Errors
    /// Database errors.
    pub async fn checkpoint(&self, name: &str) -> Result<i64, sqlx::Error> {
        match &self.db {
            Db::Postgres(p) => reader::checkpoint(p, name).await,
            Db::Sqlite(p) => sqlite::checkpoint(p, name).await,
        }
    }

    /// Stores a reader's checkpoint on its own.
    ///
    /// # Errors
    /// Database errors.
    pub async fn save_checkpoint(&self, name: &str, position: i64) -> Result<(), sqlx::Error> {
        self.save_progress(name, position, vec![], vec![]).await
    }

    /// Whether the database answers.
    ///
    /// # Errors
    /// When it does not.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match &self.db {
            Db::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
            Db::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
        }
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
        match &self.db {
            Db::Postgres(p) => {
                sqlx::query_as(
                    "SELECT request_hash, status, body::jsonb FROM idempotency_keys \
                     WHERE user_id = $1 AND key = $2",
                )
                .bind(user)
                .bind(key)
                .fetch_optional(p)
                .await
            }
            Db::Sqlite(p) => sqlite::stored_response(p, user, key).await,
        }
    }

    /// Saves checkpoint `name` together with reservations `added` (not yet settled) and
    /// `settled` (no longer pending), in one transaction.
    ///
    /// # Errors
    /// Database errors; nothing is saved.
    pub async fn save_progress(
        &self,
        name: &str,
        position: i64,
        added: Vec<Pending>,
        settled: Vec<Uuid>,
    ) -> Result<(), sqlx::Error> {
        match &self.db {
            Db::Postgres(p) => {
                let mut tx = p.begin().await?;
                // Redone after a lost commit, what led here is a no-op: no need to wait for
                // the WAL flush.
                sqlx::query("SET LOCAL synchronous_commit = off")
                    .execute(&mut *tx)
                    .await?;
                if !added.is_empty() {
                    let jobs: Vec<Uuid> = added.iter().map(|(j, _, _)| *j).collect();
                    let usages: Vec<&str> = added.iter().map(|(_, u, _)| u.as_str()).collect();
                    let ats: Vec<DateTime<Utc>> = added.iter().map(|(_, _, a)| *a).collect();
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
                reader::save_checkpoint(&mut *tx, name, position).await?;
                tx.commit().await
            }
            Db::Sqlite(p) => {
                let mut tx = p.begin().await?;
                for (job, usage, at) in &added {
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
                for job in &settled {
                    sqlx::query("DELETE FROM pending_reservations WHERE job_id = ?1")
                        .bind(job.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                sqlite::save_checkpoint(&mut tx, name, position).await?;
                tx.commit().await
            }
        }
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
        match &self.db {
            Db::Postgres(p) => {
                sqlx::query_as(
                    "SELECT job_id, usage_id FROM pending_reservations WHERE reserved_at < $1 \
                     ORDER BY reserved_at LIMIT $2",
                )
                .bind(cutoff)
                .bind(limit)
                .fetch_all(p)
                .await
            }
            Db::Sqlite(p) => {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT job_id, usage_id FROM pending_reservations WHERE reserved_at < ?1 \
                     ORDER BY reserved_at LIMIT ?2",
                )
                .bind(cutoff.timestamp_micros())
                .bind(limit)
                .fetch_all(p)
                .await?;
                Ok(rows
                    .into_iter()
                    .filter_map(|(j, u)| Some((Uuid::parse_str(&j).ok()?, u)))
                    .collect())
            }
        }
    }

    /// Takes one reservation off the pending list.
    ///
    /// # Errors
    /// Database errors.
    pub async fn drop_pending(&self, job: Uuid) -> Result<(), sqlx::Error> {
        match &self.db {
            Db::Postgres(p) => sqlx::query("DELETE FROM pending_reservations WHERE job_id = $1")
                .bind(job)
                .execute(p)
                .await?
                .rows_affected(),
            Db::Sqlite(p) => sqlx::query("DELETE FROM pending_reservations WHERE job_id = ?1")
                .bind(job.to_string())
                .execute(p)
                .await?
                .rows_affected(),
        };
        Ok(())
    }

    /// Whether the aggregate has any event.
    ///
    /// # Errors
    /// Database errors.
    pub async fn exists(&self, aggregate_type: &str, id: &str) -> Result<bool, sqlx::Error> {
        let (found,): (bool,) = match &self.db {
            Db::Postgres(p) => {
                sqlx::query_as(
                    "SELECT EXISTS (SELECT 1 FROM events WHERE aggregate_type = $1 AND aggregate_id = $2)",
                )
                .bind(aggregate_type)
                .bind(id)
                .fetch_one(p)
                .await?
            }
            Db::Sqlite(p) => {
                sqlx::query_as(
                    "SELECT EXISTS (SELECT 1 FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2)",
                )
                .bind(aggregate_type)
                .bind(id)
                .fetch_one(p)
                .await?
            }
        };
        Ok(found)
    }
}
