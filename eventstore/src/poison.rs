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

/// An event as its consumer reads it: decoded once, here.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A job's event, with its id.
    Job(JobId, JobEvent),
    /// A usage ledger's event.
    Usage(UsageEvent),
    /// A subscription's event.
    Subscription(SubscriptionEvent),
    /// An aggregate type no consumer reads.
    Other,
}

/// `e` decoded into its aggregate's events, or why it cannot be: a payload that does not
/// decode, or a job id of the wrong shape.
pub fn decode(e: &RecordedEvent) -> Result<Decoded, String> {
    let decoded = match e.aggregate_type.as_str() {
        "job" => {
            let id = JobId::parse(&e.aggregate_id)
                .map_err(|_| format!("malformed job id {:?}", e.aggregate_id))?;
            e.decode().map(|j| Decoded::Job(id, j))
        }
        "usage" => e.decode().map(Decoded::Usage),
        "subscription" => e.decode().map(Decoded::Subscription),
        _ => Ok(Decoded::Other),
    };
    decoded.map_err(|err| err.to_string())
}

/// Why a consumer cannot read `e`, if it cannot.
pub fn unreadable(e: &RecordedEvent) -> Option<String> {
    decode(e).err()
}

/// Events a consumer can read, each with its decoded event.
pub type Readable = Vec<(RecordedEvent, Decoded)>;

/// Events a consumer cannot read, each with why.
pub type Poison = Vec<(RecordedEvent, String)>;

/// Decodes a batch for `consumer`: what it can read, each with its decoded event, and the
/// poison, logged and counted here; the caller parks it.
pub fn split(consumer: &str, events: Vec<RecordedEvent>) -> (Readable, Poison) {
    let mut good = Vec::with_capacity(events.len());
    let mut poison = Vec::new();
    for e in events {
        match decode(&e) {
            Ok(d) => good.push((e, d)),
            Err(error) => {
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

/// As [`split`], keeping only the events (for consumers that decode their own way).
pub fn split_raw(consumer: &str, events: Vec<RecordedEvent>) -> (Vec<RecordedEvent>, Poison) {
    let (good, poison) = split(consumer, events);
    (good.into_iter().map(|(e, _)| e).collect(), poison)
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
