//! `runledger billing report`: each paid ledger's consumed units not reported yet, sent to
//! Stripe as meter events. The range is recorded as begun before the call and as reported
//! after it (on the user's Subscription aggregate); a crash, a retry or a second reporter
//! resends a begun range with its identifier, which Stripe records once.

use chrono::{DateTime, Utc};
use domain::{
    plan::Plan,
    report::{BeginReport, FinishReport, ReportRange},
    subscription::{Subscription, SubscriptionCommand, SubscriptionError},
    usage::{Usage, UsageKey},
};
use eventstore::{EventStore, Metadata, StoreError};
use futures::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use super::stripe::Api;

/// One ledger's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// The user.
    pub user_id: Uuid,
    /// The ledger's period start.
    pub period_start: DateTime<Utc>,
    /// `sent`, `flagged` (outside Stripe's window, or no customer) or `failed` (retried
    /// next run).
    pub outcome: &'static str,
    /// Units in the range, when one was sent or is pending.
    pub units: u64,
    /// Why, for `flagged` and `failed`.
    pub reason: Option<String>,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Ledgers looked at.
    pub ledgers: usize,
    /// Ledgers of paid plans.
    pub paid_ledgers: usize,
    /// Units sent in this run.
    pub units_sent: u64,
    /// Meter-event calls made.
    pub stripe_calls: u64,
    /// Every ledger that was sent, flagged or failed.
    pub lines: Vec<Line>,
}

impl Summary {
    /// Whether some range could not be sent (the exit code of the command).
    pub fn has_failures(&self) -> bool {
        self.lines.iter().any(|l| l.outcome != "sent")
    }
}

fn meta() -> Metadata {
    super::metadata("billing-report")
}

/// Reports every paid ledger's unreported units at `now`.
///
/// # Errors
/// Only the store's; a Stripe failure is a `failed` line, retried on the next run.
pub async fn run(
    store: &EventStore,
    api: &Api,
    event_name: &str,
    now: DateTime<Utc>,
) -> Result<Summary, StoreError> {
    let ids = store.aggregate_ids("usage", "").await?;
    // A few ledgers at once: Stripe's latency, not our CPU, bounds a run (Stripe allows
    // 25 requests/s in test mode, 100 live).
    let ledgers: Vec<Result<Summary, StoreError>> = futures::stream::iter(ids)
        .map(|id| ledger(store, api, event_name, id, now))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut summary = Summary::default();
    for one in ledgers {
        let one = one?;
        summary.ledgers += one.ledgers;
        summary.paid_ledgers += one.paid_ledgers;
        summary.units_sent += one.units_sent;
        summary.stripe_calls += one.stripe_calls;
        summary.lines.extend(one.lines);
    }
    summary.lines.sort_by_key(|l| (l.user_id, l.period_start));
    Ok(summary)
}

/// Ledgers reported at once.
const CONCURRENCY: usize = 8;

/// One ledger's report.
async fn ledger(
    store: &EventStore,
    api: &Api,
    event_name: &str,
    id: String,
    now: DateTime<Utc>,
) -> Result<Summary, StoreError> {
    let mut summary = Summary::default();
    let Some(key) = UsageKey::from_aggregate_id(&id) else {
        return Ok(summary);
    };
    summary.ledgers = 1;
    let usage = store.load_fresh::<Usage>(&id).await?;
    let Some(ledger) = usage.state.state() else {
        return Ok(summary);
    };
    if ledger.plan == Plan::Free {
        return Ok(summary);
    }
    summary.paid_ledgers = 1;
    let consumed = ledger.consumed_units();
    let period = ledger.period;
    let line = |outcome, units, reason: Option<String>| Line {
        user_id: key.user_id.as_uuid(),
        period_start: period.start,
        outcome,
        units,
        reason,
    };
    // A range begun by an earlier run goes first; then what was consumed since.
    for _ in 0..MAX_RANGES_PER_RUN {
        match one_range(store, api, event_name, key.user_id, period, consumed, now).await? {
            Outcome::Nothing => break,
            Outcome::Sent(units) => {
                summary.stripe_calls += 1;
                summary.units_sent += units;
                summary.lines.push(line("sent", units, None));
            }
            Outcome::Flagged(reason) => {
                summary.lines.push(line("flagged", consumed, Some(reason)));
                break;
            }
            Outcome::Failed(units, reason, called) => {
                summary.stripe_calls += u64::from(called);
                summary.lines.push(line("failed", units, Some(reason)));
                break;
            }
        }
    }
    Ok(summary)
}

/// A begun range and the new one after it: two per ledger per run at most.
const MAX_RANGES_PER_RUN: usize = 2;

enum Outcome {
    Nothing,
    Sent(u64),
    Flagged(String),
    /// Units, why, whether Stripe was called.
    Failed(u64, String, bool),
}

/// Begins (or takes up) one range of the ledger, sends it, records it.
async fn one_range(
    store: &EventStore,
    api: &Api,
    event_name: &str,
    user_id: domain::ids::UserId,
    period: domain::period::BillingPeriod,
    consumed: u64,
    now: DateTime<Utc>,
) -> Result<Outcome, StoreError> {
    let user = user_id.to_string();
    let begin = SubscriptionCommand::BeginReport(BeginReport {
        user_id,
        period,
        consumed,
        now,
    });
    let begun = store
        .execute_checked::<Subscription, Option<ReportRange>>(
            &user,
            begin,
            |_| meta(),
            |_| Ok(()),
            |s| s.pending_report(period.start).cloned(),
        )
        .await?;
    let range = match begun {
        Ok(done) => match done.view {
            Some(r) => r,
            None => return Ok(Outcome::Nothing),
        },
        Err(e @ (SubscriptionError::NoCustomer | SubscriptionError::ReportTooOld { .. })) => {
            return Ok(Outcome::Flagged(e.to_string()));
        }
        Err(e) => return Ok(Outcome::Failed(0, e.to_string(), false)),
    };
    if let Err(e) = api.meter_event(event_name, &range).await {
        return Ok(Outcome::Failed(range.units(), e.to_string(), true));
    }
    let finish = SubscriptionCommand::FinishReport(FinishReport {
        user_id,
        period_start: period.start,
        to_unit: range.to_unit,
    });
    // No refusal is possible: finishing a finished range is a no-op.
    let _ = store
        .execute::<Subscription>(&user, finish, &meta())
        .await?;
    Ok(Outcome::Sent(range.units()))
}
