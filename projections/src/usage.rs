//! Projection `usage`: reserved, consumed and released units per user and billing period.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::usage::UsageEvent;
use eventstore::reader::RecordedEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ProjectionError;

/// The tables this projection owns.
pub const TABLES: &[&str] = &["usage_periods"];

/// What a batch changes in one period.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    pub(crate) period_end: Option<DateTime<Utc>>,
    pub(crate) plan: Option<String>,
    pub(crate) limit: Option<Option<i64>>,
    pub(crate) reserved: i64,
    pub(crate) consumed: i64,
    pub(crate) released: i64,
    pub(crate) chain_head: Option<String>,
    pub(crate) closed: bool,
    pub(crate) position: i64,
}

/// The deltas of `events` per (user, period start).
///
/// # Errors
/// An event that does not decode.
pub(crate) fn deltas(
    events: &[RecordedEvent],
) -> Result<BTreeMap<(Uuid, DateTime<Utc>), Delta>, ProjectionError> {
    let mut deltas: BTreeMap<(Uuid, DateTime<Utc>), Delta> = BTreeMap::new();
    for e in events.iter().filter(|e| e.aggregate_type == "usage") {
        let event: UsageEvent = e.decode().map_err(|source| ProjectionError::Decode {
            position: e.position,
            source,
        })?;
        let (user, start) = key_of(&e.aggregate_id).ok_or(ProjectionError::BadId {
            position: e.position,
        })?;
        let d = deltas.entry((user, start)).or_default();
        d.position = e.position;
        match event {
            UsageEvent::UnitReserved(r) => {
                d.reserved += 1;
                d.period_end = Some(r.period.end);
                d.plan = Some(r.plan.as_str().to_owned());
                d.limit = Some(r.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX)));
            }
            UsageEvent::UnitConsumed(c) => {
                d.reserved -= 1;
                d.consumed += 1;
                d.chain_head = Some(c.hash);
            }
            UsageEvent::UnitReleased(_) => {
                d.reserved -= 1;
                d.released += 1;
            }
            UsageEvent::PeriodClosed(_) => d.closed = true,
        }
    }
    for (outcome, n) in [
        (
            "reserved",
            deltas
                .values()
                .map(|d| d.reserved + d.consumed + d.released)
                .sum::<i64>(),
        ),
        ("committed", deltas.values().map(|d| d.consumed).sum()),
        ("released", deltas.values().map(|d| d.released).sum()),
    ] {
        metrics::counter!("runledger_usage_units_total", "outcome" => outcome)
            .increment(u64::try_from(n).unwrap_or(0));
    }
    Ok(deltas)
}

/// Applies `events` to `usage_periods{suffix}`.
///
/// # Errors
/// Database errors, or an event that does not decode.
pub async fn apply(
    conn: &mut PgConnection,
    events: &[RecordedEvent],
    suffix: &str,
) -> Result<(), ProjectionError> {
    for ((user, start), d) in deltas(events)? {
        sqlx::query(&format!(
            "INSERT INTO usage_periods{suffix} AS u (user_id, period_start, period_end, plan, unit_limit, \
                    reserved, consumed, released, chain_head, closed, position) \
             VALUES ($1, $2, COALESCE($3, $2), COALESCE($4, 'FREE'), $5, $6, $7, $8, \
                    COALESCE($9, repeat('0', 64)), $10, $11) \
             ON CONFLICT (user_id, period_start) DO UPDATE SET \
                period_end = COALESCE($3, u.period_end), plan = COALESCE($4, u.plan), \
                unit_limit = CASE WHEN $12 THEN $5 ELSE u.unit_limit END, \
                reserved = u.reserved + $6, consumed = u.consumed + $7, released = u.released + $8, \
                chain_head = COALESCE($9, u.chain_head), closed = u.closed OR $10, position = $11"
        ))
        .bind(user)
        .bind(start)
        .bind(d.period_end)
        .bind(d.plan)
        .bind(d.limit.flatten())
        .bind(d.reserved)
        .bind(d.consumed)
        .bind(d.released)
        .bind(d.chain_head)
        .bind(d.closed)
        .bind(d.position)
        .bind(d.limit.is_some())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// `<user uuid>:<RFC 3339 start>` back into its parts.
fn key_of(aggregate_id: &str) -> Option<(Uuid, DateTime<Utc>)> {
    let (user, start) = aggregate_id.split_once(':')?;
    Some((Uuid::parse_str(user).ok()?, start.parse().ok()?))
}
