//! The Subscription aggregate: a user's plan and billing periods, driven by Stripe webhooks.
//! Each Stripe event id is applied at most once; events older than the last applied
//! subscription change are recorded as skipped, so out-of-order delivery cannot regress.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    event::{Decider, event_enum},
    ids::{StripeEventId, StripeObjectId, UserId},
    period::BillingPeriod,
    plan::Plan,
    report::{self, BeginReport, FinishReport, ReportRange, UsageReportBegun, UsageReported},
};

/// A Stripe subscription's status, reduced to what decides the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// `active` or `trialing`: the plan applies.
    Active,
    /// `past_due`: a payment failed; the plan applies while Stripe retries.
    PastDue,
    /// `canceled`, `unpaid`, `incomplete_expired` or deleted: back to FREE.
    Ended,
}

/// What a Stripe webhook event says, parsed by the command side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum StripeChange {
    /// `customer.subscription.created` or `.updated`.
    SubscriptionChanged {
        /// The customer.
        customer_id: StripeObjectId,
        /// The subscription.
        subscription_id: StripeObjectId,
        /// The plan its price maps to.
        plan: Plan,
        /// Its status.
        status: SubscriptionStatus,
        /// Its current period.
        period: BillingPeriod,
    },
    /// `customer.subscription.deleted`.
    SubscriptionDeleted {
        /// The subscription.
        subscription_id: StripeObjectId,
    },
    /// `invoice.paid`.
    InvoicePaid {
        /// The invoice.
        invoice_id: StripeObjectId,
        /// The subscription period the invoice pays for.
        period: BillingPeriod,
    },
    /// `invoice.payment_failed`.
    InvoicePaymentFailed {
        /// The invoice.
        invoice_id: StripeObjectId,
    },
}

/// Apply one Stripe event to the user's subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApplyStripeEvent {
    /// The user the Stripe customer belongs to.
    pub user_id: UserId,
    /// Stripe's event id.
    pub event_id: StripeEventId,
    /// Stripe's `created` time of the event.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub created: DateTime<Utc>,
    /// What it says.
    pub change: StripeChange,
    /// When it was received.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub now: DateTime<Utc>,
}

/// Every command of the Subscription aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[allow(missing_docs)]
pub enum SubscriptionCommand {
    ApplyStripeEvent(ApplyStripeEvent),
    LinkCustomer(LinkCustomer),
    BeginReport(BeginReport),
    FinishReport(FinishReport),
}

/// Link the user to their Stripe customer (created at checkout, or named by
/// `checkout.session.completed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LinkCustomer {
    /// The user.
    pub user_id: UserId,
    /// The customer.
    pub customer_id: StripeObjectId,
}

/// The user's Stripe customer is known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerLinked {
    /// The user.
    pub user_id: UserId,
    /// The customer.
    pub customer_id: StripeObjectId,
}

/// The subscription's plan, status or period changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubscriptionChanged {
    /// The user.
    pub user_id: UserId,
    /// The Stripe event applied.
    pub stripe_event_id: StripeEventId,
    /// Stripe's time of that event.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub stripe_created: DateTime<Utc>,
    /// The customer.
    pub customer_id: StripeObjectId,
    /// The subscription.
    pub subscription_id: StripeObjectId,
    /// The plan.
    pub plan: Plan,
    /// Its status.
    pub status: SubscriptionStatus,
    /// Its current period.
    pub period: BillingPeriod,
}

/// The subscription was deleted: the user is on FREE again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubscriptionEnded {
    /// The user.
    pub user_id: UserId,
    /// The Stripe event applied.
    pub stripe_event_id: StripeEventId,
    /// Stripe's time of that event.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub stripe_created: DateTime<Utc>,
    /// The subscription.
    pub subscription_id: StripeObjectId,
}

/// An invoice was paid: the subscription is active for `period`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InvoicePaid {
    /// The user.
    pub user_id: UserId,
    /// The Stripe event applied.
    pub stripe_event_id: StripeEventId,
    /// The invoice.
    pub invoice_id: StripeObjectId,
    /// The period paid for.
    pub period: BillingPeriod,
}

/// A payment failed: the subscription is past due.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentFailed {
    /// The user.
    pub user_id: UserId,
    /// The Stripe event applied.
    pub stripe_event_id: StripeEventId,
    /// The invoice.
    pub invoice_id: StripeObjectId,
}

/// A Stripe event was received and deliberately not applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StripeEventSkipped {
    /// The user.
    pub user_id: UserId,
    /// The Stripe event.
    pub stripe_event_id: StripeEventId,
    /// Why.
    pub reason: SkipReason,
}

/// Why a Stripe event changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Older than the subscription change already applied.
    Stale,
    /// About a subscription other than the user's current one.
    OtherSubscription,
    /// An invoice event for a user with no subscription.
    NoSubscription,
}

event_enum!(
    /// Every event of the Subscription aggregate.
    SubscriptionEvent {
        SubscriptionChanged,
        SubscriptionEnded,
        InvoicePaid,
        PaymentFailed,
        StripeEventSkipped,
        CustomerLinked,
        UsageReportBegun,
        UsageReported,
    }
);

/// Why the Subscription aggregate refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubscriptionError {
    /// This Stripe event id was already applied; the webhook acknowledges it and does nothing.
    #[error("stripe event {0} already applied")]
    DuplicateStripeEvent(StripeEventId),
    /// The event names another user than this subscription's.
    #[error("the event belongs to another user")]
    WrongUser,
    /// The user is linked to another Stripe customer already.
    #[error("the user is linked to another Stripe customer")]
    OtherCustomer,
    /// Usage cannot be reported: the user has no Stripe customer.
    #[error("the user has no Stripe customer")]
    NoCustomer,
    /// The period ended longer ago than Stripe accepts meter events for.
    #[error("the period ended {period_end}, outside Stripe's 35-day window")]
    ReportTooOld {
        /// The period's end.
        period_end: DateTime<Utc>,
    },
}

/// The paid subscription of a user, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaidSubscription {
    /// The customer.
    pub customer_id: StripeObjectId,
    /// The subscription.
    pub subscription_id: StripeObjectId,
    /// The plan.
    pub plan: Plan,
    /// Its status.
    pub status: SubscriptionStatus,
    /// Its current period.
    pub period: BillingPeriod,
    /// Stripe's time of the last applied change.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub changed_at: DateTime<Utc>,
}

/// The Subscription aggregate; its default is a user on FREE.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    user_id: Option<UserId>,
    paid: Option<PaidSubscription>,
    applied: BTreeSet<StripeEventId>,
    #[serde(default)]
    customer_id: Option<StripeObjectId>,
    /// Units reported to Stripe, by ledger period start.
    #[serde(default)]
    reported: BTreeMap<DateTime<Utc>, u64>,
    /// Ranges begun and not yet known to have reached Stripe, by ledger period start.
    #[serde(default)]
    pending: BTreeMap<DateTime<Utc>, ReportRange>,
}

impl Subscription {
    /// The paid subscription, if any (also when ended, for its ids).
    pub fn paid(&self) -> Option<&PaidSubscription> {
        self.paid.as_ref()
    }

    /// The user's Stripe customer: linked at checkout, or the paid subscription's.
    pub fn customer_id(&self) -> Option<&StripeObjectId> {
        self.customer_id
            .as_ref()
            .or(self.paid.as_ref().map(|p| &p.customer_id))
    }

    /// Units of the ledger starting at `period_start` that reached Stripe.
    pub fn reported(&self, period_start: DateTime<Utc>) -> u64 {
        self.reported.get(&period_start).copied().unwrap_or(0)
    }

    /// The range begun for that ledger and not yet finished.
    pub fn pending_report(&self, period_start: DateTime<Utc>) -> Option<&ReportRange> {
        self.pending.get(&period_start)
    }

    /// The plan in force at `at`: a paid plan while active or past due, else FREE.
    pub fn plan_at(&self, _at: DateTime<Utc>) -> Plan {
        match &self.paid {
            Some(p) if p.status != SubscriptionStatus::Ended => p.plan,
            _ => Plan::Free,
        }
    }

    /// The billing period that contains `at`: Stripe's period (rolled forward while a
    /// renewal is on its way) on a paid plan, the UTC calendar month otherwise.
    pub fn period_at(&self, at: DateTime<Utc>) -> BillingPeriod {
        match &self.paid {
            Some(p) if p.status != SubscriptionStatus::Ended && at >= p.period.start => {
                p.period.rolled_forward_to(at)
            }
            _ => BillingPeriod::calendar_month(at),
        }
    }

    fn skipped(c: &ApplyStripeEvent, reason: SkipReason) -> Vec<SubscriptionEvent> {
        vec![
            StripeEventSkipped {
                user_id: c.user_id,
                stripe_event_id: c.event_id.clone(),
                reason,
            }
            .into(),
        ]
    }
}

impl Subscription {
    fn apply_stripe(
        &self,
        c: ApplyStripeEvent,
    ) -> Result<Vec<SubscriptionEvent>, SubscriptionError> {
        if self.user_id.is_some_and(|u| u != c.user_id) {
            return Err(SubscriptionError::WrongUser);
        }
        if self.applied.contains(&c.event_id) {
            return Err(SubscriptionError::DuplicateStripeEvent(c.event_id));
        }
        let stale = self.paid.as_ref().is_some_and(|p| c.created < p.changed_at);
        let current_sub = self.paid.as_ref().map(|p| &p.subscription_id);
        let events = match c.change.clone() {
            StripeChange::SubscriptionChanged { .. } | StripeChange::SubscriptionDeleted { .. }
                if stale =>
            {
                Self::skipped(&c, SkipReason::Stale)
            }
            StripeChange::SubscriptionChanged {
                customer_id,
                subscription_id,
                plan,
                status,
                period,
            } => vec![
                SubscriptionChanged {
                    user_id: c.user_id,
                    stripe_event_id: c.event_id,
                    stripe_created: c.created,
                    customer_id,
                    subscription_id,
                    plan,
                    status,
                    period,
                }
                .into(),
            ],
            StripeChange::SubscriptionDeleted { subscription_id } => {
                if current_sub != Some(&subscription_id) {
                    Self::skipped(&c, SkipReason::OtherSubscription)
                } else {
                    vec![
                        SubscriptionEnded {
                            user_id: c.user_id,
                            stripe_event_id: c.event_id,
                            stripe_created: c.created,
                            subscription_id,
                        }
                        .into(),
                    ]
                }
            }
            StripeChange::InvoicePaid { invoice_id, period } => match &self.paid {
                None => Self::skipped(&c, SkipReason::NoSubscription),
                Some(_) => vec![
                    InvoicePaid {
                        user_id: c.user_id,
                        stripe_event_id: c.event_id,
                        invoice_id,
                        period,
                    }
                    .into(),
                ],
            },
            StripeChange::InvoicePaymentFailed { invoice_id } => match &self.paid {
                None => Self::skipped(&c, SkipReason::NoSubscription),
                Some(_) => vec![
                    PaymentFailed {
                        user_id: c.user_id,
                        stripe_event_id: c.event_id,
                        invoice_id,
                    }
                    .into(),
                ],
            },
        };
        Ok(events)
    }

    fn link(&self, c: LinkCustomer) -> Result<Vec<SubscriptionEvent>, SubscriptionError> {
        if self.user_id.is_some_and(|u| u != c.user_id) {
            return Err(SubscriptionError::WrongUser);
        }
        match &self.customer_id {
            Some(id) if *id == c.customer_id => Ok(vec![]),
            Some(_) => Err(SubscriptionError::OtherCustomer),
            None => Ok(vec![
                CustomerLinked {
                    user_id: c.user_id,
                    customer_id: c.customer_id,
                }
                .into(),
            ]),
        }
    }

    /// A begun range is resent as it is (same identifier); otherwise the units consumed
    /// since the last report become a new range.
    fn begin_report(&self, c: BeginReport) -> Result<Vec<SubscriptionEvent>, SubscriptionError> {
        if self.user_id.is_some_and(|u| u != c.user_id) {
            return Err(SubscriptionError::WrongUser);
        }
        let start = c.period.start;
        if self.pending.contains_key(&start) {
            return Ok(vec![]);
        }
        let reported = self.reported(start);
        if c.consumed <= reported {
            return Ok(vec![]);
        }
        let customer_id = self
            .customer_id()
            .ok_or(SubscriptionError::NoCustomer)?
            .clone();
        let timestamp =
            report::timestamp(&c.period, c.now).ok_or(SubscriptionError::ReportTooOld {
                period_end: c.period.end,
            })?;
        let (from_unit, to_unit) = (reported + 1, c.consumed);
        Ok(vec![
            UsageReportBegun {
                user_id: c.user_id,
                range: ReportRange {
                    period: c.period,
                    customer_id,
                    from_unit,
                    to_unit,
                    identifier: report::identifier(c.user_id, start, from_unit, to_unit),
                    timestamp,
                },
            }
            .into(),
        ])
    }

    /// Finishing a range already finished (by another reporter) is a no-op.
    fn finish_report(&self, c: FinishReport) -> Result<Vec<SubscriptionEvent>, SubscriptionError> {
        Ok(match self.pending.get(&c.period_start) {
            Some(r) if r.to_unit == c.to_unit => vec![
                UsageReported {
                    user_id: c.user_id,
                    period_start: c.period_start,
                    from_unit: r.from_unit,
                    to_unit: r.to_unit,
                }
                .into(),
            ],
            _ => vec![],
        })
    }
}

impl Decider for Subscription {
    type Command = SubscriptionCommand;
    type Event = SubscriptionEvent;
    type Error = SubscriptionError;

    fn decide(
        &self,
        command: SubscriptionCommand,
    ) -> Result<Vec<SubscriptionEvent>, SubscriptionError> {
        match command {
            SubscriptionCommand::ApplyStripeEvent(c) => self.apply_stripe(c),
            SubscriptionCommand::LinkCustomer(c) => self.link(c),
            SubscriptionCommand::BeginReport(c) => self.begin_report(c),
            SubscriptionCommand::FinishReport(c) => self.finish_report(c),
        }
    }

    fn evolve(&mut self, event: &SubscriptionEvent) {
        match event {
            SubscriptionEvent::SubscriptionChanged(e) => {
                self.user_id = Some(e.user_id);
                self.applied.insert(e.stripe_event_id.clone());
                self.paid = Some(PaidSubscription {
                    customer_id: e.customer_id.clone(),
                    subscription_id: e.subscription_id.clone(),
                    plan: e.plan,
                    status: e.status,
                    period: e.period,
                    changed_at: e.stripe_created,
                });
            }
            SubscriptionEvent::SubscriptionEnded(e) => {
                self.user_id = Some(e.user_id);
                self.applied.insert(e.stripe_event_id.clone());
                if let Some(p) = self.paid.as_mut() {
                    p.status = SubscriptionStatus::Ended;
                    p.changed_at = e.stripe_created;
                }
            }
            SubscriptionEvent::InvoicePaid(e) => {
                self.user_id = Some(e.user_id);
                self.applied.insert(e.stripe_event_id.clone());
                if let Some(p) = self
                    .paid
                    .as_mut()
                    .filter(|p| p.status != SubscriptionStatus::Ended)
                {
                    p.status = SubscriptionStatus::Active;
                    if e.period.start >= p.period.start {
                        p.period = e.period;
                    }
                }
            }
            SubscriptionEvent::PaymentFailed(e) => {
                self.user_id = Some(e.user_id);
                self.applied.insert(e.stripe_event_id.clone());
                if let Some(p) = self
                    .paid
                    .as_mut()
                    .filter(|p| p.status != SubscriptionStatus::Ended)
                {
                    p.status = SubscriptionStatus::PastDue;
                }
            }
            SubscriptionEvent::StripeEventSkipped(e) => {
                self.user_id = Some(e.user_id);
                self.applied.insert(e.stripe_event_id.clone());
            }
            SubscriptionEvent::CustomerLinked(e) => {
                self.user_id = Some(e.user_id);
                self.customer_id = Some(e.customer_id.clone());
            }
            SubscriptionEvent::UsageReportBegun(e) => {
                self.user_id = Some(e.user_id);
                self.pending.insert(e.range.period.start, e.range.clone());
            }
            SubscriptionEvent::UsageReported(e) => {
                self.pending.remove(&e.period_start);
                let reported = self.reported.entry(e.period_start).or_insert(0);
                *reported = (*reported).max(e.to_unit);
            }
        }
    }
}
