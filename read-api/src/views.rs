//! The read-model seam: the queries the handlers make, with two adapters behind it: the
//! projection tables in Postgres, and the in-memory tables of the embedded default.
//! Handlers do not know which.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use platform::{
    notice::JobChange,
    views::{JobView, MemoryViews, SubscriptionView, UsageView},
};
use sqlx::PgPool;
use uuid::Uuid;

/// The read models the handlers query.
#[async_trait]
pub trait ReadModels: Send + Sync + 'static {
    /// One of `user`'s jobs.
    async fn job(&self, user: Uuid, id: Uuid) -> Result<Option<JobView>, sqlx::Error>;
    /// Up to `limit` of `user`'s jobs with `status`, newest first, strictly before `cursor`.
    async fn jobs(
        &self,
        user: Uuid,
        status: Option<&str>,
        cursor: Option<(DateTime<Utc>, Uuid)>,
        limit: usize,
    ) -> Result<Vec<JobView>, sqlx::Error>;
    /// How many of `user`'s jobs have `status`, counting only those strictly before
    /// `before` (by creation) when given.
    async fn count(
        &self,
        user: Uuid,
        status: &str,
        before: Option<(DateTime<Utc>, Uuid)>,
    ) -> Result<i64, sqlx::Error>;
    /// `user`'s usage in the period starting at `start`.
    async fn usage(
        &self,
        user: Uuid,
        start: DateTime<Utc>,
    ) -> Result<Option<UsageView>, sqlx::Error>;
    /// `user`'s periods with usage, newest first.
    async fn usage_history(&self, user: Uuid, limit: usize) -> Result<Vec<UsageView>, sqlx::Error>;
    /// `user`'s subscription.
    async fn subscription(&self, user: Uuid) -> Result<Option<SubscriptionView>, sqlx::Error>;
    /// `user`'s Stripe customer, linked at checkout.
    async fn customer(&self, user: Uuid) -> Result<Option<String>, sqlx::Error>;
    /// `user`'s last change position (0: none).
    async fn stream_position(&self, user: Uuid) -> Result<i64, sqlx::Error>;
    /// Up to `limit` of `user`'s changes after `position`, in order.
    async fn changes_after(
        &self,
        user: Uuid,
        position: i64,
        limit: usize,
    ) -> Result<Vec<JobChange>, sqlx::Error>;
    /// Changes at or below this position may have been dropped by retention.
    async fn trimmed_through(&self) -> Result<i64, sqlx::Error>;
}

/// The projection tables in Postgres.
pub struct PgViews(pub PgPool);

const JOB_COLUMNS: &str = "id, user_id, task_type, status, attempts, correlation_id, created_at, \
                           updated_at, result, error, position";
const USAGE_COLUMNS: &str =
    "period_start, period_end, plan, unit_limit, reserved, consumed, released, chain_head, closed";

#[async_trait]
impl ReadModels for PgViews {
    async fn trimmed_through(&self) -> Result<i64, sqlx::Error> {
        eventstore::reader::checkpoint(&self.0, "job_changes_trimmed").await
    }

    async fn job(&self, user: Uuid, id: Uuid) -> Result<Option<JobView>, sqlx::Error> {
        let p = &self.0;
        sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM job_views WHERE id = $1 AND user_id = $2"
        ))
        .bind(id)
        .bind(user)
        .fetch_optional(p)
        .await
    }

    async fn jobs(
        &self,
        user: Uuid,
        status: Option<&str>,
        cursor: Option<(DateTime<Utc>, Uuid)>,
        limit: usize,
    ) -> Result<Vec<JobView>, sqlx::Error> {
        let p = &self.0;
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

    async fn count(
        &self,
        user: Uuid,
        status: &str,
        before: Option<(DateTime<Utc>, Uuid)>,
    ) -> Result<i64, sqlx::Error> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM job_views WHERE user_id = $1 AND status = $2 \
                   AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))",
        )
        .bind(user)
        .bind(status)
        .bind(before.map(|(t, _)| t))
        .bind(before.map(|(_, id)| id))
        .fetch_one(&self.0)
        .await?;
        Ok(n)
    }

    async fn usage(
        &self,
        user: Uuid,
        start: DateTime<Utc>,
    ) -> Result<Option<UsageView>, sqlx::Error> {
        let p = &self.0;
        sqlx::query_as(&format!(
            "SELECT {USAGE_COLUMNS} FROM usage_periods WHERE user_id = $1 AND period_start = $2"
        ))
        .bind(user)
        .bind(start)
        .fetch_optional(p)
        .await
    }

    async fn usage_history(&self, user: Uuid, limit: usize) -> Result<Vec<UsageView>, sqlx::Error> {
        let p = &self.0;
        sqlx::query_as(&format!(
            "SELECT {USAGE_COLUMNS} FROM usage_periods WHERE user_id = $1 \
                 ORDER BY period_start DESC LIMIT $2"
        ))
        .bind(user)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(p)
        .await
    }

    async fn subscription(&self, user: Uuid) -> Result<Option<SubscriptionView>, sqlx::Error> {
        let p = &self.0;
        sqlx::query_as(
            "SELECT plan, status, period_start, period_end FROM subscription_views \
                 WHERE user_id = $1",
        )
        .bind(user)
        .fetch_optional(p)
        .await
    }

    async fn customer(&self, user: Uuid) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_as::<_, (String,)>(
            "SELECT customer_id FROM stripe_customers WHERE user_id = $1",
        )
        .bind(user)
        .fetch_optional(&self.0)
        .await
        .map(|r| r.map(|(c,)| c))
    }

    async fn stream_position(&self, user: Uuid) -> Result<i64, sqlx::Error> {
        let p = &self.0;
        Ok(
            sqlx::query_as::<_, (i64,)>("SELECT last_position FROM job_streams WHERE user_id = $1")
                .bind(user)
                .fetch_optional(p)
                .await?
                .map_or(0, |(p,)| p),
        )
    }

    async fn changes_after(
        &self,
        user: Uuid,
        position: i64,
        limit: usize,
    ) -> Result<Vec<JobChange>, sqlx::Error> {
        let p = &self.0;
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
                traceparent: None,
                correlation_id: None,
            })
            .collect())
    }
}

#[async_trait]
impl ReadModels for MemoryViews {
    async fn trimmed_through(&self) -> Result<i64, sqlx::Error> {
        Ok(MemoryViews::trimmed_through(self))
    }

    async fn job(&self, user: Uuid, id: Uuid) -> Result<Option<JobView>, sqlx::Error> {
        Ok(MemoryViews::job(self, user, id))
    }

    async fn jobs(
        &self,
        user: Uuid,
        status: Option<&str>,
        cursor: Option<(DateTime<Utc>, Uuid)>,
        limit: usize,
    ) -> Result<Vec<JobView>, sqlx::Error> {
        Ok(MemoryViews::jobs(self, user, status, cursor, limit))
    }

    async fn count(
        &self,
        user: Uuid,
        status: &str,
        before: Option<(DateTime<Utc>, Uuid)>,
    ) -> Result<i64, sqlx::Error> {
        Ok(MemoryViews::count(self, user, status, before))
    }

    async fn usage(
        &self,
        user: Uuid,
        start: DateTime<Utc>,
    ) -> Result<Option<UsageView>, sqlx::Error> {
        Ok(MemoryViews::usage(self, user, start))
    }

    async fn usage_history(&self, user: Uuid, limit: usize) -> Result<Vec<UsageView>, sqlx::Error> {
        Ok(MemoryViews::usage_history(self, user, limit))
    }

    async fn subscription(&self, user: Uuid) -> Result<Option<SubscriptionView>, sqlx::Error> {
        Ok(MemoryViews::subscription(self, user))
    }

    async fn customer(&self, user: Uuid) -> Result<Option<String>, sqlx::Error> {
        Ok(MemoryViews::customer(self, user))
    }

    async fn stream_position(&self, user: Uuid) -> Result<i64, sqlx::Error> {
        Ok(MemoryViews::stream_position(self, user))
    }

    async fn changes_after(
        &self,
        user: Uuid,
        position: i64,
        limit: usize,
    ) -> Result<Vec<JobChange>, sqlx::Error> {
        Ok(MemoryViews::changes_after(self, user, position, limit))
    }
}
