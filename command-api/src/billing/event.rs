//! A Stripe webhook event read leniently: only the fields runledger uses, so an endpoint
//! pinned to another API version than async-stripe's still works. Which events do what is
//! DESIGN.md section 9.

use chrono::{DateTime, Utc};
use domain::{
    ids::{StripeEventId, StripeObjectId, UserId},
    period::BillingPeriod,
    plan::Plan,
    subscription::{StripeChange, SubscriptionStatus},
};
use serde_json::Value;

/// A webhook event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `evt_…`.
    pub id: StripeEventId,
    /// Stripe's `created`.
    pub created: DateTime<Utc>,
    /// What it says.
    pub kind: Kind,
}

/// What an event says, for runledger.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `checkout.session.completed`: the customer belongs to the user.
    CheckoutCompleted {
        /// The customer.
        customer_id: StripeObjectId,
        /// `client_reference_id`, else `metadata.user_id`.
        user_id: Option<UserId>,
    },
    /// A change of the user's subscription.
    Change {
        /// `metadata.user_id` of the subscription, if set.
        user_id: Option<UserId>,
        /// The customer, to find the user by its link otherwise.
        customer_id: Option<StripeObjectId>,
        /// The change.
        change: StripeChange,
    },
    /// Not used by runledger (answered 200, applied nowhere), and why.
    Ignored(&'static str),
}

/// The plan each price id stands for.
#[derive(Debug, Clone)]
pub struct Prices {
    /// PRO's price id.
    pub pro: String,
    /// ENTERPRISE's, if sold.
    pub enterprise: Option<String>,
}

impl Prices {
    fn plan(&self, price: &str) -> Option<Plan> {
        if price == self.pro {
            Some(Plan::Pro)
        } else if self.enterprise.as_deref() == Some(price) {
            Some(Plan::Enterprise)
        } else {
            None
        }
    }
}

/// Why a body is not a Stripe event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Stripe event: {0}")]
pub struct Malformed(pub String);

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn time(v: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    v.pointer(pointer)
        .and_then(Value::as_i64)
        .and_then(|t| DateTime::from_timestamp(t, 0))
}

fn object_id(v: &Value, pointer: &str) -> Option<StripeObjectId> {
    // An expanded object carries its id inside.
    let id = text(v, pointer).or_else(|| text(v, &format!("{pointer}/id")))?;
    StripeObjectId::parse(id).ok()
}

fn user(v: &Value, pointer: &str) -> Option<UserId> {
    text(v, pointer).and_then(|u| UserId::parse(u).ok())
}

fn required<T>(v: Option<T>, what: &str) -> Result<T, Malformed> {
    v.ok_or_else(|| Malformed(format!("{what} is missing or malformed")))
}

/// Reads an event.
///
/// # Errors
/// [`Malformed`] when the body is not JSON or lacks what its type needs.
pub fn parse(body: &[u8], prices: &Prices) -> Result<Event, Malformed> {
    let v: Value = serde_json::from_slice(body).map_err(|e| Malformed(e.to_string()))?;
    if text(&v, "/object") != Some("event") {
        return Err(Malformed("`object` is not \"event\"".into()));
    }
    let id = required(
        text(&v, "/id").and_then(|i| StripeEventId::parse(i).ok()),
        "`id`",
    )?;
    let created = required(time(&v, "/created"), "`created`")?;
    let kind = required(text(&v, "/type"), "`type`")?;
    let o = required(v.pointer("/data/object"), "`data.object`")?;
    let kind = match kind {
        "checkout.session.completed" => Kind::CheckoutCompleted {
            customer_id: required(object_id(o, "/customer"), "`customer`")?,
            user_id: user(o, "/client_reference_id").or_else(|| user(o, "/metadata/user_id")),
        },
        "customer.subscription.created" | "customer.subscription.updated" => {
            subscription(o, prices)?
        }
        "customer.subscription.deleted" => Kind::Change {
            user_id: user(o, "/metadata/user_id"),
            customer_id: object_id(o, "/customer"),
            change: StripeChange::SubscriptionDeleted {
                subscription_id: required(object_id(o, "/id"), "`id`")?,
            },
        },
        "invoice.paid" | "invoice.payment_failed" => invoice(kind, o)?,
        _ => Kind::Ignored("an event type runledger does not use"),
    };
    Ok(Event { id, created, kind })
}

fn subscription(o: &Value, prices: &Prices) -> Result<Kind, Malformed> {
    let item = required(o.pointer("/items/data/0"), "`items.data[0]`")?;
    let price = required(
        text(item, "/price/id").or_else(|| text(item, "/plan/id")),
        "`items.data[0].price.id`",
    )?;
    let Some(plan) = prices.plan(price) else {
        return Ok(Kind::Ignored(
            "a price that is not one of runledger's plans",
        ));
    };
    let status = match required(text(o, "/status"), "`status`")? {
        "active" | "trialing" => SubscriptionStatus::Active,
        "past_due" => SubscriptionStatus::PastDue,
        "canceled" | "unpaid" | "incomplete_expired" | "paused" => SubscriptionStatus::Ended,
        // `incomplete`: the first payment is not through; a later update says how it ended.
        _ => return Ok(Kind::Ignored("a subscription not yet in force")),
    };
    // Since API 2025-03-31 the period lives on the item; older payloads carry it on the
    // subscription.
    let start = time(item, "/current_period_start").or_else(|| time(o, "/current_period_start"));
    let end = time(item, "/current_period_end").or_else(|| time(o, "/current_period_end"));
    let period = required(
        start.zip(end).and_then(|(s, e)| BillingPeriod::new(s, e)),
        "`current_period_start` < `current_period_end`",
    )?;
    Ok(Kind::Change {
        user_id: user(o, "/metadata/user_id"),
        customer_id: object_id(o, "/customer"),
        change: StripeChange::SubscriptionChanged {
            customer_id: required(object_id(o, "/customer"), "`customer`")?,
            subscription_id: required(object_id(o, "/id"), "`id`")?,
            plan,
            status,
            period,
        },
    })
}

fn invoice(kind: &str, o: &Value) -> Result<Kind, Malformed> {
    let invoice_id = required(object_id(o, "/id"), "`id`")?;
    let of_subscription = object_id(o, "/parent/subscription_details/subscription")
        .or_else(|| object_id(o, "/subscription"))
        .is_some();
    if !of_subscription {
        return Ok(Kind::Ignored("an invoice of no subscription"));
    }
    // The subscription's metadata: under `parent` since API 2025-03-31, at the top before.
    let user_id = user(o, "/parent/subscription_details/metadata/user_id")
        .or_else(|| user(o, "/subscription_details/metadata/user_id"));
    let change = if kind == "invoice.paid" {
        let start = time(o, "/lines/data/0/period/start").or_else(|| time(o, "/period_start"));
        let end = time(o, "/lines/data/0/period/end").or_else(|| time(o, "/period_end"));
        let Some(period) = start.zip(end).and_then(|(s, e)| BillingPeriod::new(s, e)) else {
            return Ok(Kind::Ignored("an invoice without a billing period"));
        };
        StripeChange::InvoicePaid { invoice_id, period }
    } else {
        StripeChange::InvoicePaymentFailed { invoice_id }
    };
    Ok(Kind::Change {
        user_id,
        customer_id: object_id(o, "/customer"),
        change,
    })
}
