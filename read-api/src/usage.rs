//! `GET /v1/usage`, `GET /v1/usage/history`, `GET /v1/subscription`.

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use domain::{period::BillingPeriod, plan::Plan};
use platform::{auth::Principal, problem::Problem, views::SubscriptionView};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::state::{AppState, customer, internal};

async fn subscription_row(
    state: &AppState,
    user: Uuid,
) -> Result<Option<SubscriptionView>, Problem> {
    state
        .views
        .subscription(user)
        .await
        .map_err(|e| internal(&e))
}

/// The plan in force and the period containing `now`, as the command side computes them.
fn plan_and_period(sub: Option<&SubscriptionView>, now: DateTime<Utc>) -> (Plan, BillingPeriod) {
    match sub {
        Some(s) if s.status != "ended" && now >= s.period_start => {
            let plan = s.plan.parse().unwrap_or(Plan::Free);
            let period = BillingPeriod::new(s.period_start, s.period_end).map_or_else(
                || BillingPeriod::calendar_month(now),
                |p| p.rolled_forward_to(now),
            );
            (plan, period)
        }
        _ => (Plan::Free, BillingPeriod::calendar_month(now)),
    }
}

/// The current period's usage.
///
/// # Errors
/// 500.
pub async fn current(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Value>, Problem> {
    let user = customer(principal)?;
    let now = Utc::now();
    let sub = subscription_row(&state, user).await?;
    let (plan, period) = plan_and_period(sub.as_ref(), now);
    let row = state
        .views
        .usage(user, period.start)
        .await
        .map_err(|e| internal(&e))?;
    let limit = state
        .settings
        .limits
        .limit(plan)
        .map(|l| i64::try_from(l).unwrap_or(i64::MAX));
    let (reserved, consumed) = row.as_ref().map_or((0, 0), |r| (r.reserved, r.consumed));
    let running = state
        .views
        .count(user, "running", None)
        .await
        .map_err(|e| internal(&e))?;
    Ok(Json(json!({
        "plan": plan.as_str(),
        "period_start": period.start,
        "period_end": period.end,
        "limit": limit,
        "reserved": reserved,
        "consumed": consumed,
        "remaining": limit.map(|l| (l - reserved - consumed).max(0)),
        "running": running,
        "concurrency_limit": state.settings.dispatch.concurrency.limit(plan),
    })))
}

/// Every period with usage, newest first.
///
/// # Errors
/// 500.
pub async fn history(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Value>, Problem> {
    let user = customer(principal)?;
    let rows = state
        .views
        .usage_history(user, 120)
        .await
        .map_err(|e| internal(&e))?;
    let periods: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "period_start": r.period_start, "period_end": r.period_end, "plan": r.plan,
                "limit": r.unit_limit, "reserved": r.reserved, "consumed": r.consumed,
                "released": r.released, "chain_head": r.chain_head, "closed": r.closed,
            })
        })
        .collect();
    Ok(Json(json!({ "periods": periods })))
}

/// The caller's plan and period.
///
/// # Errors
/// 500.
pub async fn subscription(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Value>, Problem> {
    let user = customer(principal)?;
    let now = Utc::now();
    let sub = subscription_row(&state, user).await?;
    let (plan, period) = plan_and_period(sub.as_ref(), now);
    let customer = state.views.customer(user).await.map_err(|e| internal(&e))?;
    Ok(Json(json!({
        "plan": plan.as_str(),
        "status": sub.as_ref().map_or("none", |s| s.status.as_str()),
        "period_start": period.start,
        "period_end": period.end,
        "stripe_customer": customer,
        "checkout": for_sale(&state),
    })))
}

/// The plans a checkout sells here: none when billing is off.
fn for_sale(state: &AppState) -> Vec<&'static str> {
    state.settings.billing.as_ref().map_or_else(Vec::new, |b| {
        let mut plans = vec![Plan::Pro.as_str()];
        if b.price_enterprise.is_some() {
            plans.push(Plan::Enterprise.as_str());
        }
        plans
    })
}
