//! Poison events: an event a consumer cannot decode is parked (recorded with its error,
//! counted, logged) and skipped, instead of halting that consumer for every user. An
//! operator lists them (`runledger events parked`) and, once a fixed build can read them,
//! asks for another try (`runledger events retry`).

use chrono::{DateTime, Utc};
use domain::{ids::JobId, job::JobEvent, subscription::SubscriptionEvent, usage::UsageEvent};
use sqlx::PgExecutor;
use uuid::Uuid;

use super::reader::RecordedEvent;

/// A parked event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Parked {
    /// Who skipped it: `process-manager`, `dispatcher`, or a projection's name.
    pub consumer: String,
    /// Its global position.
    pub position: i64,
    /// Its id.
    pub event_id: Uuid,
    /// Its aggregate type.
    pub aggregate_type: String,
    /// Its aggregate id.
    pub aggregate_id: String,
    /// Its event type.
    pub event_type: String,
    /// Why it could not be read.
    pub error: String,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
    /// Whether another try was asked for.
    pub retry: bool,
}

/// Why a consumer cannot read `e`, if it cannot: a payload that does not decode into its
/// aggregate's events, or a job id of the wrong shape.
pub fn unreadable(e: &RecordedEvent) -> Option<String> {
    let decoded = match e.aggregate_type.as_str() {
        "job" => {
            if JobId::parse(&e.aggregate_id).is_err() {
                return Some(format!("malformed job id {:?}", e.aggregate_id));
            }
            e.decode::<JobEvent>().map(drop)
        }
        "usage" => e.decode::<UsageEvent>().map(drop),
        "subscription" => e.decode::<SubscriptionEvent>().map(drop),
        _ => Ok(()),
    };
    decoded.err().map(|err| err.to_string())
}

/// Splits a batch into what `consumer` can read and the poison, which is logged and
/// counted here; the caller parks it.
pub fn split(
    consumer: &str,
    events: Vec<RecordedEvent>,
) -> (Vec<RecordedEvent>, Vec<(RecordedEvent, String)>) {
    let mut good = Vec::with_capacity(events.len());
    let mut poison = Vec::new();
    for e in events {
        match unreadable(&e) {
            None => good.push(e),
            Some(error) => {
                tracing::error!(
                    message = "Parked an event that cannot be read; going on without it.",
                    consumer,
                    position = e.position,
                    aggregate_type = %e.aggregate_type,
                    event_type = %e.event_type,
                    error = %error,
                );
                metrics::counter!("runledger_events_parked_total", "consumer" => consumer.to_owned())
                    .increment(1);
                poison.push((e, error));
            }
        }
    }
    (good, poison)
}

/// Parks `poison` for `consumer` on Postgres (in the caller's transaction, so with its
/// checkpoint).
///
/// # Errors
/// Database errors.
pub async fn park_pg<'e>(
    db: impl PgExecutor<'e>,
    consumer: &str,
    poison: &[(RecordedEvent, String)],
) -> Result<(), sqlx::Error> {
    if poison.is_empty() {
        return Ok(());
    }
    let positions: Vec<i64> = poison.iter().map(|(e, _)| e.position).collect();
    let ids: Vec<Uuid> = poison.iter().map(|(e, _)| e.event_id).collect();
    let types: Vec<&str> = poison
        .iter()
        .map(|(e, _)| e.aggregate_type.as_str())
        .collect();
    let aggs: Vec<&str> = poison
        .iter()
        .map(|(e, _)| e.aggregate_id.as_str())
        .collect();
    let kinds: Vec<&str> = poison.iter().map(|(e, _)| e.event_type.as_str()).collect();
    let errors: Vec<&str> = poison.iter().map(|(_, m)| m.as_str()).collect();
    sqlx::query(
        "INSERT INTO parked_events \
           (consumer, position, event_id, aggregate_type, aggregate_id, event_type, error) \
         SELECT $1, * FROM UNNEST($2::int8[], $3::uuid[], $4::text[], $5::text[], $6::text[], \
                                  $7::text[]) \
         ON CONFLICT (consumer, position) DO UPDATE SET error = EXCLUDED.error, retry = false",
    )
    .bind(consumer)
    .bind(&positions)
    .bind(&ids)
    .bind(&types)
    .bind(&aggs)
    .bind(&kinds)
    .bind(&errors)
    .execute(db)
    .await?;
    Ok(())
}
