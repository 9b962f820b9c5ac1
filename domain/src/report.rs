//! Usage reported to Stripe as meter events, recorded on the user's Subscription aggregate
//! before and after the call: a range of units is begun (its identifier fixed), sent, then
//! finished. A retry or a second reporter resends the begun range with the same identifier,
//! which Stripe records once, so no unit is billed twice or skipped.

use chrono::{DateTime, Duration, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    ids::{StripeObjectId, UserId},
    period::BillingPeriod,
};

/// How far back Stripe accepts a meter event's timestamp.
pub const METER_WINDOW: Duration = Duration::days(35);

/// Report a ledger's consumed units not reported yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BeginReport {
    /// The user.
    pub user_id: UserId,
    /// The ledger's period.
    pub period: BillingPeriod,
    /// Units consumed in it, as replayed from its ledger.
    pub consumed: u64,
    /// Now.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub now: DateTime<Utc>,
}

/// The begun range reached Stripe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FinishReport {
    /// The user.
    pub user_id: UserId,
    /// The ledger's period start.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub period_start: DateTime<Utc>,
    /// The range's last unit.
    pub to_unit: u64,
}

/// A range of units to send as one meter event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReportRange {
    /// The ledger's period.
    pub period: BillingPeriod,
    /// The customer billed.
    pub customer_id: StripeObjectId,
    /// First unit (1-based) of the range.
    pub from_unit: u64,
    /// Last unit of the range.
    pub to_unit: u64,
    /// Stripe's idempotency identifier: user, period and range.
    pub identifier: String,
    /// The meter event's time: inside the period, never in the future.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub timestamp: DateTime<Utc>,
}

impl ReportRange {
    /// Units in the range.
    pub fn units(&self) -> u64 {
        self.to_unit + 1 - self.from_unit
    }
}

/// A range of units is about to be sent to Stripe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageReportBegun {
    /// The user.
    pub user_id: UserId,
    /// The range.
    pub range: ReportRange,
}

/// Stripe accepted a begun range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageReported {
    /// The user.
    pub user_id: UserId,
    /// The ledger's period start.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub period_start: DateTime<Utc>,
    /// First unit of the range.
    pub from_unit: u64,
    /// Last unit of the range.
    pub to_unit: u64,
}

/// The identifier of a meter event: the same range always yields the same one (≤ 100 chars).
pub fn identifier(user: UserId, period_start: DateTime<Utc>, from: u64, to: u64) -> String {
    format!("rl-{user}-{}-{from}-{to}", period_start.timestamp())
}

/// `at` rounded down to its minute.
fn floor_minute(at: DateTime<Utc>) -> DateTime<Utc> {
    at - Duration::seconds(at.timestamp().rem_euclid(60))
        - Duration::nanoseconds(i64::from(at.timestamp_subsec_nanos()))
}

/// `at` rounded up to a whole minute.
fn ceil_minute(at: DateTime<Utc>) -> DateTime<Utc> {
    let down = floor_minute(at);
    if down == at {
        at
    } else {
        down + Duration::minutes(1)
    }
}

/// The minute-aligned window `[start, end)` that holds every meter event of `period` and
/// none of a neighbouring period's: what reconciliation asks Stripe to sum (its summaries
/// take whole minutes only).
pub fn summary_window(period: &BillingPeriod) -> (DateTime<Utc>, DateTime<Utc>) {
    (ceil_minute(period.start), ceil_minute(period.end))
}

/// The meter event's time for a report at `now`: a whole minute inside the period's
/// [`summary_window`], the period's last whole minute once it is over. `None` when that is
/// older than Stripe's window: the range is flagged, not sent.
pub fn timestamp(period: &BillingPeriod, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let (lo, hi) = summary_window(period);
    let t = floor_minute(now).min(hi - Duration::minutes(1)).max(lo);
    (t >= now - METER_WINDOW).then_some(t)
}
