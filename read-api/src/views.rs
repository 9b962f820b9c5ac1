//! The read models behind the handlers: Postgres tables, or the in-memory tables of the
//! embedded default. Handlers do not know which.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use platform::{
    notice::JobChange,
    views::{JobView, MemoryViews, SubscriptionView, UsageView},
};
use sqlx::PgPool;
use uuid::Uuid;

/// Where the read models are.
#[derive(Clone)]
pub enum Views {
    /// The projection tables in Postgres.
    Postgres(PgPool),
    /// In-memory tables kept by the projections in this process.
    Memory(Arc<MemoryViews>),
}

const JOB_COLUMNS: &str = "id, user_id, task_type, status, attempts, correlation_id, created_at, \
                           updated_at, result, error, position";
const USAGE_COLUMNS: &str =
    "period_start, period_end, plan, unit_limit, reserved, consumed, released, chain_head, closed";

impl Views {
    /// One of `user`'s jobs.
    pub async fn job(&self, user: Uuid, id: Uuid) -> Result<Option<JobView>, sqlx::Error> {
        match self {
            Self::Postgres(p) => {
                sqlx::query_as(&format!(
                    "SELECT {JOB_COLUMNS} FROM job_views WHERE id = $1 AND user_id = $2"
                ))
                .bind(id)
                .bind(user)
                .fetch_optional(p)
                .await
            }
            Self::Memory(m) => Ok(m.job(user, id)),
        }
    }

    /// Up to `limit` of `user`'s jobs, newest first, strictly before `cursor`.
    pub async fn jobs(
        &self,
        user: Uuid,
        status: Option<&str>,
        cursor: Option<(DateTime<Utc>, Uuid)>,
        limit: usize,
    ) -> Result<Vec<JobView>, sqlx::Error> {
        match self {
            Self::Postgres(p) => {
                sqlx::query_as(&format!(
                    "SELECT {JOB_COLUMNS} FROM job_views WHERE user_id = $1 \
                       AND ($2::text IS NULL OR status = $2) \
                       AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
                     ORDER BY created_at DESC, id DESC LIMIT $5"
                ))
                .bind(user)
                .bind(status)
                .bind(cursor.map(|(t, _)| t))
                .bind(cursor.map(|(_, id)| id))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(p)
                .await
            }
            Self::Memory(m) => Ok(m.jobs(user, status, cursor, limit)),
        }
    }

    /// `user`'s usage in the period starting at `start`.
    pub async fn usage(
        &self,
        user: Uuid,
        start: DateTime<Utc>,
    ) -> Result<Option<UsageView>, sqlx::Error> {
        match self {
            Self::Postgres(p) => sqlx::query_as(&format!(
                "SELECT {USAGE_COLUMNS} FROM usage_periods WHERE user_id = $1 AND period_start = $2"
            ))
            .bind(user)
            .bind(start)
            .fetch_optional(p)
            .await,
            Self::Memory(m) => Ok(m.usage(user, start)),
        }
    }

    /// `user`'s periods with usage, newest first.
    pub async fn usage_history(
        &self,
        user: Uuid,
        limit: usize,
    ) -> Result<Vec<UsageView>, sqlx::Error> {
        match self {
            Self::Postgres(p) => {
                sqlx::query_as(&format!(
                    "SELECT {USAGE_COLUMNS} FROM usage_periods WHERE user_id = $1 \
                     ORDER BY period_start DESC LIMIT $2"
                ))
                .bind(user)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(p)
                .await
            }
            Self::Memory(m) => Ok(m.usage_history(user, limit)),
        }
    }

    /// `user`'s subscription.
    pub async fn subscription(&self, user: Uuid) -> Result<Option<SubscriptionView>, sqlx::Error> {
        match self {
            Self::Postgres(p) => {
                sqlx::query_as(
                    "SELECT plan, status, period_start, period_end FROM subscription_views \
                     WHERE user_id = $1",
                )
                .bind(user)
                .fetch_optional(p)
                .await
            }
            Self::Memory(m) => Ok(m.subscription(user)),
        }
    }

    /// `user`'s last change position (0: none).
    pub async fn stream_position(&self, user: Uuid) -> Result<i64, sqlx::Error> {
        match self {
            Self::Postgres(p) => Ok(sqlx::query_as::<_, (i64,)>(
                "SELECT last_position FROM job_streams WHERE user_id = $1",
            )
            .bind(user)
            .fetch_optional(p)
            .await?
            .map_or(0, |(p,)| p)),
            Self::Memory(m) => Ok(m.stream_position(user)),
        }
    }

    /// Up to `limit` of `user`'s changes after `position`, in order.
    pub async fn changes_after(
        &self,
        user: Uuid,
        position: i64,
        limit: usize,
    ) -> Result<Vec<JobChange>, sqlx::Error> {
        match self {
            Self::Postgres(p) => {
                let rows: Vec<(i64, Uuid, String, i32, DateTime<Utc>)> = sqlx::query_as(
                    "SELECT position, job_id, status, attempts, updated_at FROM job_changes \
                      WHERE user_id = $1 AND position > $2 ORDER BY position LIMIT $3",
                )
                .bind(user)
                .bind(position)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(p)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(position, id, status, attempts, updated_at)| JobChange {
                        position,
                        id,
                        status,
                        attempts,
                        updated_at,
                    })
                    .collect())
            }
            Self::Memory(m) => Ok(m.changes_after(user, position, limit)),
        }
    }
}
