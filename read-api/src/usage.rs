//! `GET /v1/usage`, `GET /v1/usage/history`, `GET /v1/subscription`.

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use domain::{period::BillingPeriod, plan::Plan};
use platform::{auth::Principal, problem::Problem};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::state::{AppState, customer, internal};

#[derive(sqlx::FromRow)]
struct SubRow {
    plan: String,
    status: String,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
}

const USAGE_COLUMNS: &str =
    "period_start, period_end, plan, unit_limit, reserved, consumed, released, chain_head, closed";

#[derive(sqlx::FromRow)]
struct UsageRow {
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    plan: String,
    unit_limit: Option<i64>,
    reserved: i64,
    consumed: i64,
    released: i64,
    chain_head: String,
    closed: bool,
}

async fn subscription_row(state: &AppState, user: Uuid) -> Result<Option<SubRow>, Problem> {
    sqlx::query_as(
        "SELECT plan, status, period_start, period_end FROM subscription_views WHERE user_id = $1",
    )
    .bind(user)
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| internal(&e))
}

/// The plan in force and the period containing `now`, as the command side computes them.
fn plan_and_period(sub: Option<&SubRow>, now: DateTime<Utc>) -> (Plan, BillingPeriod) {
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
    let row: Option<UsageRow> = sqlx::query_as(&format!(
        "SELECT {USAGE_COLUMNS} FROM usage_periods WHERE user_id = $1 AND period_start = $2"
    ))
    .bind(user)
    .bind(period.start)
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| internal(&e))?;
    let limit = state
        .settings
        .limits
        .limit(plan)
        .map(|l| i64::try_from(l).unwrap_or(i64::MAX));
    let (reserved, consumed) = row.as_ref().map_or((0, 0), |r| (r.reserved, r.consumed));
    Ok(Json(json!({
        "plan": plan.as_str(),
        "period_start": period.start,
        "period_end": period.end,
        "limit": limit,
        "reserved": reserved,
        "consumed": consumed,
        "remaining": limit.map(|l| (l - reserved - consumed).max(0)),
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
    let rows: Vec<UsageRow> = sqlx::query_as(
        &format!("SELECT {USAGE_COLUMNS} FROM usage_periods WHERE user_id = $1 ORDER BY period_start DESC LIMIT 120"),
    )
    .bind(user)
    .fetch_all(&state.pool)
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
    Ok(Json(json!({
        "plan": plan.as_str(),
        "status": sub.as_ref().map_or("none", |s| s.status.as_str()),
        "period_start": period.start,
        "period_end": period.end,
    })))
}
