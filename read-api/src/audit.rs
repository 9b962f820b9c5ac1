//! `GET /v1/audit/usage/{user_id}?period=YYYY-MM` (auditor or admin): the user's usage in
//! the periods starting that month, replayed from the raw events beside the projection, with
//! the verdict of each ledger's hash chain.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::{
    Json,
    extract::{Path, Query, State},
};
use chrono::{DateTime, NaiveDate, Utc};
use domain::{
    chain::{BreakReason, CheckedUnit, check_unit, link_units},
    ids::UserId,
    period::BillingPeriod,
    usage::UsageKey,
};
use eventstore::EventStore;
use platform::{
    auth::{Principal, Role},
    problem::Problem,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    state::{AppState, internal},
    views::ReadModels,
};

/// The replayed usage and the verdicts.
///
/// # Errors
/// 400 on a bad user id or period, 403 for other roles, 500.
pub async fn usage(
    State(state): State<AppState>,
    principal: Principal,
    Path(user): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, Problem> {
    if !matches!(principal.role, Role::Auditor | Role::Admin) {
        return Err(Problem::forbidden("audits need an auditor token"));
    }
    let user =
        Uuid::parse_str(&user).map_err(|_| Problem::bad_request("user_id must be a UUID"))?;
    let month = params
        .get("period")
        .ok_or_else(|| Problem::bad_request("period=YYYY-MM is required"))?;
    let start = month_start(month).ok_or_else(|| Problem::bad_request("period must be YYYY-MM"))?;
    let periods = replay_month(&state.store, state.views.as_ref(), user, start)
        .await
        .map_err(|e| match e {
            AuditError::Database(e) => internal(&e),
            AuditError::Decode(position) => {
                tracing::error!(message = "Stored usage event does not decode.", position);
                Problem::internal()
            }
        })?;
    Ok(Json(
        json!({ "user_id": user, "period": month, "periods": periods }),
    ))
}

/// Why an audit could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store or the read models failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored usage event does not decode.
    #[error("the usage event at position {0} does not decode")]
    Decode(i64),
}

/// The first instant of `YYYY-MM`, UTC.
pub fn month_start(month: &str) -> Option<DateTime<Utc>> {
    NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d")
        .ok()?
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
}

/// The usage ledgers starting in the month that starts at `start` (one user's, or all),
/// found in the raw events: per user, `(period start, aggregate id)` in order.
///
/// # Errors
/// Database errors.
pub async fn ledgers_starting_in(
    store: &EventStore,
    start: DateTime<Utc>,
    user: Option<Uuid>,
) -> Result<BTreeMap<Uuid, Vec<(DateTime<Utc>, String)>>, sqlx::Error> {
    let end = BillingPeriod::calendar_month(start).end;
    let prefix = user.map_or_else(String::new, |u| UsageKey::prefix_of(UserId::from_uuid(u)));
    let mut ledgers: BTreeMap<Uuid, Vec<(DateTime<Utc>, String)>> = BTreeMap::new();
    for id in store.aggregate_ids("usage", &prefix).await? {
        if let Some(k) = UsageKey::from_aggregate_id(&id)
            .filter(|k| k.period_start >= start && k.period_start < end)
            .filter(|k| user.is_none_or(|u| k.user_id.as_uuid() == u))
        {
            ledgers
                .entry(k.user_id.as_uuid())
                .or_default()
                .push((k.period_start, id));
        }
    }
    Ok(ledgers)
}

/// `user`'s periods starting in the month that starts at `start`, each replayed from its raw
/// events with the hash-chain verdict, beside what the projection says.
///
/// # Errors
/// [`AuditError`].
pub async fn replay_month(
    store: &EventStore,
    views: &dyn ReadModels,
    user: Uuid,
    start: DateTime<Utc>,
) -> Result<Vec<Value>, AuditError> {
    // The ledgers are found in the raw events, never in the projection under audit: the
    // calendar month's, and any other period (a paid plan's) that starts in it.
    let mut starts: BTreeSet<DateTime<Utc>> = ledgers_starting_in(store, start, Some(user))
        .await?
        .remove(&user)
        .unwrap_or_default()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    starts.insert(start);
    let known = views.usage_history(user, 120).await?;
    let mut periods = Vec::new();
    for s in starts {
        let period = BillingPeriod::new(s, s + chrono::Duration::seconds(1))
            .unwrap_or_else(|| BillingPeriod::calendar_month(s));
        let id = UsageKey::new(UserId::from_uuid(user), &period).aggregate_id();
        let events = store.payloads_of("usage", &id, "UnitConsumed").await?;
        if events.is_empty() && s != start {
            continue;
        }
        let projected = known.iter().find(|u| u.period_start == s);
        periods.push(replay(s, &events, projected)?);
    }
    Ok(periods)
}

/// What one event contributes to a replay.
enum Seen {
    Reserved,
    Released,
    Other,
    Unit(Result<CheckedUnit, (Option<String>, BreakReason)>),
}

/// Reads one stored event: each unit is checked in full, on its own; the other events are
/// counted by type (they carry nothing the audit reports).
fn see(
    (position, event_type, payload): &(i64, String, Option<String>),
) -> Result<Seen, AuditError> {
    Ok(match (event_type.as_str(), payload) {
        ("UnitConsumed", Some(payload)) => {
            let raw: Value =
                serde_json::from_str(payload).map_err(|_| AuditError::Decode(*position))?;
            let unit = raw
                .get("UnitConsumed")
                .ok_or(AuditError::Decode(*position))?;
            Seen::Unit(check_unit(unit))
        }
        ("UnitReserved", _) => Seen::Reserved,
        ("UnitReleased", _) => Seen::Released,
        ("PeriodClosed", _) => Seen::Other,
        _ => return Err(AuditError::Decode(*position)),
    })
}

/// Below this many events one core is quicker than two.
const PARALLEL_FROM: usize = 10_000;

fn replay(
    start: DateTime<Utc>,
    events: &[(i64, String, Option<String>)],
    projected: Option<&platform::views::UsageView>,
) -> Result<Value, AuditError> {
    // Each unit's own hash is independent of the others: check halves on two cores, then
    // link them in order.
    let seen: Vec<Seen> = if events.len() >= PARALLEL_FROM {
        let (a, b) = events.split_at(events.len() / 2);
        let (left, right) = std::thread::scope(|scope| {
            let right = scope.spawn(|| b.iter().map(see).collect::<Result<Vec<_>, _>>());
            let left = a.iter().map(see).collect::<Result<Vec<_>, _>>();
            (left, right.join())
        });
        let mut all = left?;
        all.extend(right.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?);
        all
    } else {
        events.iter().map(see).collect::<Result<_, _>>()?
    };
    let (mut reserved, mut released) = (0i64, 0i64);
    let mut units = Vec::new();
    for s in seen {
        match s {
            Seen::Reserved => reserved += 1,
            Seen::Released => released += 1,
            Seen::Other => {}
            Seen::Unit(u) => units.push(u),
        }
    }
    let consumed = units.len() as i64;
    let verdict = link_units(units);
    let (verified, chain_head, broken) = match &verdict {
        Ok(head) => (true, Some(head.hash.clone()), Value::Null),
        Err(b) => (
            false,
            None,
            json!({"index": b.index, "job_id": b.job_id, "reason": b.reason.to_string()}),
        ),
    };
    let matches = projected
        .is_some_and(|p| p.consumed == consumed && Some(&p.chain_head) == chain_head.as_ref())
        || (projected.is_none() && events.is_empty());
    Ok(json!({
        "period_start": start,
        "events": events.len(),
        "reserved": reserved - consumed - released,
        "consumed": consumed,
        "released": released,
        "chain_head": chain_head,
        "chain_verified": verified,
        "chain_break": broken,
        "projection": projected.map(|p| json!({"consumed": p.consumed, "chain_head": p.chain_head})),
        "matches_projection": matches,
    }))
}
