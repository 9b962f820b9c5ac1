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
use platform::store::{EventStore, Metadata, StoreError};
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
    let mut m = Metadata::new();
    m.insert("correlation_id".into(), Uuid::new_v4().to_string());
    m.insert("actor".into(), "billing-report".into());
    m
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
    let mut summary = Summary::default();
    for id in store.aggregate_ids("usage", "").await? {
        let Some(key) = UsageKey::from_aggregate_id(&id) else {
            continue;
        };
        summary.ledgers += 1;
        let usage = store.load_fresh::<Usage>(&id).await?;
        let Some(ledger) = usage.state.state() else {
            continue;
        };
        if ledger.plan == Plan::Free {
            continue;
        }
        summary.paid_ledgers += 1;
        let consumed = ledger.consumed_units();
        let period = ledger.period;
        let user = key.user_id.to_string();
        let line = |outcome, units, reason: Option<String>| Line {
            user_id: key.user_id.as_uuid(),
            period_start: period.start,
            outcome,
            units,
            reason,
        };
        let begin = SubscriptionCommand::BeginReport(BeginReport {
            user_id: key.user_id,
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
                None => continue,
            },
            Err(e @ (SubscriptionError::NoCustomer | SubscriptionError::ReportTooOld { .. })) => {
                summary
                    .lines
                    .push(line("flagged", consumed, Some(e.to_string())));
                continue;
            }
            Err(e) => {
                summary.lines.push(line("failed", 0, Some(e.to_string())));
                continue;
            }
        };
        summary.stripe_calls += 1;
        if let Err(e) = api.meter_event(event_name, &range).await {
            summary
                .lines
                .push(line("failed", range.units(), Some(e.to_string())));
            continue;
        }
        let finish = SubscriptionCommand::FinishReport(FinishReport {
            user_id: key.user_id,
            period_start: period.start,
            to_unit: range.to_unit,
        });
        // Refusals cannot happen here (a finish is a no-op when already finished).
        let _ = store
            .execute::<Subscription>(&user, finish, &meta())
            .await?;
        summary.units_sent += range.units();
        summary.lines.push(line("sent", range.units(), None));
    }
    Ok(summary)
}
