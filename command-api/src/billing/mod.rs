//! Billing on Stripe (DESIGN.md section 9): checkout, the webhook, usage reported as meter
//! events, and reconciliation. Off, with a 503 problem on its routes, without
//! `STRIPE_SECRET_KEY`.

pub mod event;
pub mod report;
pub mod signature;
pub mod stripe;

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use chrono::Utc;
use domain::{
    customer::{ClaimCustomer, Customer, CustomerCommand, CustomerError},
    ids::{StripeObjectId, UserId},
    plan::Plan,
    subscription::{
        ApplyStripeEvent, LinkCustomer, Subscription, SubscriptionCommand, SubscriptionError,
        SubscriptionStatus,
    },
};
use eventstore::Metadata;
use platform::{problem::Problem, settings::Billing};
use serde::Deserialize;
use serde_json::{Value, json};

use self::event::{Kind, Prices};
use crate::{body, error::ApiError, gates, state::AppState};

fn store_problem(e: eventstore::StoreError) -> Problem {
    ApiError::Store(e).problem()
}

/// The largest webhook body accepted: Stripe's events with many invoice lines exceed the
/// API's 64 KiB default.
pub const WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;

fn billing(state: &AppState) -> Result<&Billing, Problem> {
    state.settings.billing.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "billing-disabled",
            "Billing is not configured",
        )
        .detail("this deployment has no STRIPE_SECRET_KEY")
    })
}

/// The plan each configured price stands for.
pub fn prices(b: &Billing) -> Prices {
    Prices {
        pro: b.price_pro.clone(),
        enterprise: b.price_enterprise.clone(),
    }
}

/// The metadata of billing's events: a fresh correlation id and who acted.
pub(crate) fn metadata(source: &str) -> Metadata {
    let mut m = Metadata::new();
    m.insert("correlation_id".into(), uuid::Uuid::new_v4().to_string());
    m.insert("actor".into(), source.to_owned());
    m
}

/// The body of `POST /v1/billing/checkout`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// `PRO` or `ENTERPRISE`.
    pub plan: Plan,
}

/// `POST /v1/billing/checkout`: a Stripe Checkout Session for the caller's upgrade, on their
/// Stripe customer (created once, on the first checkout).
///
/// # Errors
/// 503 without billing, 400 for FREE or a plan not sold, 409 while a paid plan is in force,
/// 502 when Stripe fails.
pub async fn checkout(
    State(state): State<AppState>,
    gates::Customer(principal): gates::Customer,
    req: body::Json<CheckoutRequest>,
) -> Result<Json<Value>, Problem> {
    let b = billing(&state)?;
    let req = req.value;
    let price = match req.plan {
        Plan::Pro => Some(b.price_pro.clone()),
        Plan::Enterprise => b.price_enterprise.clone(),
        Plan::Free => None,
    }
    .ok_or_else(|| {
        Problem::new(StatusCode::BAD_REQUEST, "plan-not-sold", "Plan not sold")
            .detail(format!("{} cannot be bought here", req.plan.as_str()))
    })?;
    let user = principal.user_id;
    let sub = state
        .store
        .load_fresh::<Subscription>(&user.to_string())
        .await
        .map_err(store_problem)?
        .state;
    if sub
        .paid()
        .is_some_and(|p| p.status != SubscriptionStatus::Ended)
    {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "already-subscribed",
            "Already subscribed",
        )
        .detail("a paid plan is in force; change it in Stripe's customer portal"));
    }
    let api = stripe::Api::new(b).map_err(stripe_problem)?;
    let customer = match sub.customer_id() {
        Some(c) => c.clone(),
        None => {
            let c = api.create_customer(user).await.map_err(stripe_problem)?;
            // Created under the user's own idempotency key: another owner is a bug.
            if !link(&state, user, &c).await? {
                return Err(Problem::internal());
            }
            c
        }
    };
    let session = api
        .create_checkout(user, &customer, &price, b)
        .await
        .map_err(stripe_problem)?;
    Ok(Json(
        json!({ "url": session.url, "session_id": session.id }),
    ))
}

/// Claims `customer` for `user` and links it on the user's subscription (each idempotent,
/// so a retry after a crash between them completes the pair). `false`: the customer is
/// another user's, and nothing was linked.
async fn link(state: &AppState, user: UserId, customer: &StripeObjectId) -> Result<bool, Problem> {
    let claim = CustomerCommand::Claim(ClaimCustomer {
        customer_id: customer.clone(),
        user_id: user,
    });
    match state
        .store
        .execute::<Customer>(customer.as_str(), claim, &metadata("checkout"))
        .await
        .map_err(store_problem)?
    {
        Ok(_) => {}
        Err(CustomerError::ClaimedByOther) => {
            tracing::warn!(message = "A Stripe customer is claimed by another user.", user_id = %user);
            return Ok(false);
        }
    }
    let command = SubscriptionCommand::LinkCustomer(LinkCustomer {
        user_id: user,
        customer_id: customer.clone(),
    });
    match state
        .store
        .execute::<Subscription>(&user.to_string(), command, &metadata("checkout"))
        .await
        .map_err(store_problem)?
    {
        Ok(_) => Ok(true),
        Err(e) => {
            tracing::warn!(message = "The customer link was refused.", user_id = %user, error = %e);
            Ok(false)
        }
    }
}

fn stripe_problem(e: stripe::StripeFailure) -> Problem {
    tracing::error!(message = "A Stripe call failed.", error = %e);
    Problem::new(
        StatusCode::BAD_GATEWAY,
        "stripe-unavailable",
        "Stripe is unavailable",
    )
    .detail("Stripe did not complete the request; try again")
}

fn webhook_problem(slug: &str, title: &'static str, detail: String) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, slug, title).detail(detail)
}

fn received(applied: bool, reason: Option<&str>) -> Json<Value> {
    Json(json!({ "received": true, "applied": applied, "reason": reason }))
}

/// `POST /v1/billing/webhook`: a Stripe event, signature checked, applied at most once.
///
/// # Errors
/// 503 without billing; 400 `webhook-signature` or `webhook-malformed` with nothing applied.
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Problem> {
    let b = billing(&state)?;
    let header = headers
        .get("stripe-signature")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    signature::verify(
        &body,
        header,
        b.webhook_secret.expose(),
        Utc::now().timestamp(),
    )
    .map_err(|e| {
        count("bad_signature");
        webhook_problem("webhook-signature", "Bad webhook signature", e.to_string())
    })?;
    let event = event::parse(&body, &prices(b)).map_err(|e| {
        count("malformed");
        webhook_problem("webhook-malformed", "Malformed webhook", e.to_string())
    })?;
    let (user, customer, change) = match event.kind {
        Kind::Ignored(reason) => {
            count("ignored");
            return Ok(received(false, Some(reason)));
        }
        Kind::CheckoutCompleted {
            customer_id,
            user_id,
        } => {
            let Some(user) = user_of(&state, user_id, Some(&customer_id)).await? else {
                count("ignored");
                return Ok(received(false, Some("no runledger user for this customer")));
            };
            // Stripe retries anything but 2xx: a customer of another user is acknowledged.
            let linked = link(&state, user, &customer_id).await?;
            count(if linked { "applied" } else { "ignored" });
            return Ok(received(
                linked,
                (!linked).then_some("the customer or the user is linked to another"),
            ));
        }
        Kind::Change {
            user_id,
            customer_id,
            change,
        } => (user_id, customer_id, change),
    };
    let Some(user) = user_of(&state, user, customer.as_ref()).await? else {
        count("ignored");
        return Ok(received(false, Some("no runledger user for this customer")));
    };
    let command = SubscriptionCommand::ApplyStripeEvent(ApplyStripeEvent {
        user_id: user,
        event_id: event.id,
        created: event.created,
        change,
        now: Utc::now(),
    });
    let outcome = state
        .store
        .execute::<Subscription>(&user.to_string(), command, &metadata("stripe"))
        .await
        .map_err(store_problem)?;
    Ok(match outcome {
        Ok(_) => {
            count("applied");
            received(true, None)
        }
        Err(SubscriptionError::DuplicateStripeEvent(_)) => {
            count("duplicate");
            received(false, Some("this event was applied before"))
        }
        Err(e) => {
            count("ignored");
            received(false, Some(&e.to_string()))
        }
    })
}

/// Counts a webhook delivery in `runledger_billing_webhook_events_total{outcome}`.
fn count(outcome: &'static str) {
    metrics::counter!("runledger_billing_webhook_events_total", "outcome" => outcome).increment(1);
}

/// The user an event is for: the subscription's `metadata.user_id`, else the customer's link.
async fn user_of(
    state: &AppState,
    user: Option<UserId>,
    customer: Option<&StripeObjectId>,
) -> Result<Option<UserId>, Problem> {
    if user.is_some() {
        return Ok(user);
    }
    let Some(c) = customer else { return Ok(None) };
    let owner = state
        .store
        .load_fresh::<Customer>(c.as_str())
        .await
        .map_err(store_problem)?;
    Ok(owner.state.user_id())
}
