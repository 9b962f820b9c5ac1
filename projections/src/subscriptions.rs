//! Projection `subscriptions`: each user's paid subscription, if any.

use domain::subscription::{SubscriptionEvent, SubscriptionStatus};
use eventstore::reader::RecordedEvent;
use sqlx::PgConnection;

use crate::ProjectionError;

/// The tables this projection owns.
pub const TABLES: &[&str] = &["subscription_views", "stripe_customers"];

pub(crate) fn status(s: SubscriptionStatus) -> &'static str {
    match s {
        SubscriptionStatus::Active => "active",
        SubscriptionStatus::PastDue => "past_due",
        SubscriptionStatus::Ended => "ended",
    }
}

/// Applies `events` to `subscription_views{suffix}`.
///
/// # Errors
/// Database errors, or an event that does not decode.
pub async fn apply(
    conn: &mut PgConnection,
    events: &[RecordedEvent],
    suffix: &str,
) -> Result<(), ProjectionError> {
    for e in events.iter().filter(|e| e.aggregate_type == "subscription") {
        let event: SubscriptionEvent = e.decode().map_err(|source| ProjectionError::Decode {
            position: e.position,
            source,
        })?;
        match event {
            SubscriptionEvent::SubscriptionChanged(c) => {
                // A subscription made outside checkout still names its customer.
                sqlx::query(&format!(
                    "INSERT INTO stripe_customers{suffix} (user_id, customer_id, position) \
                     VALUES ($1, $2, $3) ON CONFLICT (user_id) DO NOTHING"
                ))
                .bind(c.user_id.as_uuid())
                .bind(c.customer_id.as_str().to_owned())
                .bind(e.position)
                .execute(&mut *conn)
                .await?;
                sqlx::query(&format!(
                "INSERT INTO subscription_views{suffix} (user_id, plan, status, period_start, period_end, \
                        customer_id, subscription_id, position) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (user_id) DO UPDATE SET plan = $2, status = $3, period_start = $4, \
                        period_end = $5, customer_id = $6, subscription_id = $7, position = $8"
            ))
            .bind(c.user_id.as_uuid())
            .bind(c.plan.as_str())
            .bind(status(c.status))
            .bind(c.period.start)
            .bind(c.period.end)
            .bind(c.customer_id.as_str().to_owned())
            .bind(c.subscription_id.as_str().to_owned())
            .bind(e.position)
            .execute(&mut *conn)
            .await?
            }
            SubscriptionEvent::SubscriptionEnded(x) => sqlx::query(&format!(
                "UPDATE subscription_views{suffix} SET status = 'ended', position = $2 WHERE user_id = $1"
            ))
            .bind(x.user_id.as_uuid())
            .bind(e.position)
            .execute(&mut *conn)
            .await?,
            SubscriptionEvent::InvoicePaid(p) => sqlx::query(&format!(
                "UPDATE subscription_views{suffix} SET status = 'active', \
                        period_start = GREATEST(period_start, $2), \
                        period_end = CASE WHEN $2 >= period_start THEN $3 ELSE period_end END, position = $4 \
                 WHERE user_id = $1 AND status <> 'ended'"
            ))
            .bind(p.user_id.as_uuid())
            .bind(p.period.start)
            .bind(p.period.end)
            .bind(e.position)
            .execute(&mut *conn)
            .await?,
            SubscriptionEvent::PaymentFailed(f) => sqlx::query(&format!(
                "UPDATE subscription_views{suffix} SET status = 'past_due', position = $2 \
                 WHERE user_id = $1 AND status <> 'ended'"
            ))
            .bind(f.user_id.as_uuid())
            .bind(e.position)
            .execute(&mut *conn)
            .await?,
            SubscriptionEvent::CustomerLinked(l) => sqlx::query(&format!(
                "INSERT INTO stripe_customers{suffix} (user_id, customer_id, position) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET customer_id = $2, position = $3"
            ))
            .bind(l.user_id.as_uuid())
            .bind(l.customer_id.as_str().to_owned())
            .bind(e.position)
            .execute(&mut *conn)
            .await?,
            SubscriptionEvent::StripeEventSkipped(_)
            | SubscriptionEvent::UsageReportBegun(_)
            | SubscriptionEvent::UsageReported(_) => continue,
        };
    }
    Ok(())
}
