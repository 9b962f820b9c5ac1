//! `GET /v1/jobs` (cursor pagination, status filter) and `GET /v1/jobs/{id}`.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, State},
};
use chrono::{DateTime, Utc};
use platform::{auth::Principal, problem::Problem, views::JobView};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::state::{AppState, customer, internal};

const STATUSES: [&str; 7] = [
    "scheduled",
    "queued",
    "running",
    "retrying",
    "completed",
    "failed",
    "canceled",
];

fn to_json(v: &JobView) -> Value {
    let mut j = json!({
        "id": v.id,
        "task_type": v.task_type,
        "status": v.status,
        "attempts": v.attempts,
        "correlation_id": v.correlation_id,
        "created_at": v.created_at,
        "updated_at": v.updated_at,
    });
    if let Some(r) = &v.result {
        j["result"] = r.clone();
    }
    if let Some(e) = &v.error {
        j["error"] = json!(e);
    }
    j
}

/// One of the caller's jobs; another user's is a 404.
///
/// # Errors
/// 404, or 500.
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let user = customer(principal)?;
    let id = Uuid::parse_str(&id).map_err(|_| Problem::not_found("job"))?;
    let row = state.views.job(user, id).await.map_err(|e| internal(&e))?;
    let Some(row) = row else {
        return Err(Problem::not_found("job"));
    };
    let mut j = to_json(&row);
    if row.status == "queued" {
        // The user's own queued jobs submitted before this one: its place in the user's lane.
        let ahead = state
            .views
            .count(user, "queued", Some((row.created_at, row.id)))
            .await
            .map_err(|e| internal(&e))?;
        j["queued_behind"] = json!(ahead);
    }
    Ok(Json(j))
}

/// The caller's jobs, newest first: `?status=&limit=&cursor=`.
///
/// # Errors
/// 400 on a bad parameter, or 500.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, Problem> {
    let user = customer(principal)?;
    if let Some(k) = params
        .keys()
        .find(|k| !["status", "limit", "cursor"].contains(&k.as_str()))
    {
        return Err(Problem::bad_request(format!(
            "unknown parameter `{}`",
            k.chars().take(64).collect::<String>()
        )));
    }
    let status = match params.get("status") {
        Some(s) if STATUSES.contains(&s.as_str()) => Some(s.clone()),
        Some(_) => {
            return Err(Problem::bad_request(format!(
                "status must be one of {}",
                STATUSES.join(", ")
            )));
        }
        None => None,
    };
    let limit: usize = match params.get("limit") {
        Some(l) => l
            .parse()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| Problem::bad_request("limit must be 1 to 100"))?,
        None => 20,
    };
    let cursor = params.get("cursor").map(|c| decode_cursor(c)).transpose()?;
    let rows = state
        .views
        .jobs(user, status.as_deref(), cursor, limit + 1)
        .await
        .map_err(|e| internal(&e))?;
    let more = rows.len() > limit;
    let page = &rows[..rows.len().min(limit)];
    let next = if more {
        page.last().map(|r| encode_cursor(r.created_at, r.id))
    } else {
        None
    };
    Ok(Json(
        json!({"jobs": page.iter().map(to_json).collect::<Vec<_>>(), "next_cursor": next}),
    ))
}

/// `<microseconds since 1970>_<job uuid>` of the last job of a page: the OpenAPI document
/// gives its pattern.
fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    format!("{}_{}", at.timestamp_micros(), id.hyphenated())
}

fn decode_cursor(c: &str) -> Result<(DateTime<Utc>, Uuid), Problem> {
    let bad = || Problem::bad_request("cursor must be a next_cursor this API returned");
    let (micros, id) = c.split_once('_').ok_or_else(bad)?;
    if micros.is_empty() || micros.len() > 16 || !micros.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let hyphenated = id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    if !hyphenated {
        return Err(bad());
    }
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok((at, Uuid::parse_str(id).map_err(|_| bad())?))
}
