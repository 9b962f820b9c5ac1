//! `GET /v1/audit/events?user=&from=&to=` (auditor or admin): the raw event log as NDJSON,
//! in global order, optionally only one user's events and only those recorded in a time
//! range. A job's later events carry no user id; its `JobSubmitted` does and comes first in
//! the global order, so one pass over the log attributes every job event.

use std::collections::{HashMap, HashSet};

use axum::{
    body::Body,
    extract::{Query, State},
    http::header,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use domain::job::JobEvent;
use eventstore::{EventStore, reader::RecordedEvent};
use futures::StreamExt;
use platform::{
    auth::{Principal, Role},
    problem::Problem,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use crate::state::AppState;

const BATCH: i64 = 1_000;

/// What to stream.
#[derive(Debug, Clone, Copy)]
struct Filter {
    user: Option<Uuid>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

/// The NDJSON response.
///
/// # Errors
/// 400 on a bad parameter, 403 for other roles.
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    if !matches!(principal.role, Role::Auditor | Role::Admin) {
        return Err(Problem::forbidden("audits need an auditor token"));
    }
    let filter = parse(&params)?;
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(stream_log(state.store.clone(), filter, tx));
    let body = Body::from_stream(ReceiverStream::new(rx).map(|r| r.map(String::into_bytes)));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

fn parse(params: &HashMap<String, String>) -> Result<Filter, Problem> {
    if let Some(k) = params
        .keys()
        .find(|k| !["user", "from", "to"].contains(&k.as_str()))
    {
        return Err(Problem::bad_request(format!(
            "unknown parameter `{}`",
            k.chars().take(64).collect::<String>()
        )));
    }
    let time = |k: &str| {
        params
            .get(k)
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| Problem::bad_request(format!("{k} must be an RFC 3339 time")))
            })
            .transpose()
    };
    Ok(Filter {
        user: params
            .get("user")
            .map(|u| Uuid::parse_str(u).map_err(|_| Problem::bad_request("user must be a UUID")))
            .transpose()?,
        from: time("from")?,
        to: time("to")?,
    })
}

/// Reads the whole log in order and sends the lines `filter` keeps, until the client goes.
async fn stream_log(
    store: EventStore,
    filter: Filter,
    tx: mpsc::Sender<Result<String, std::io::Error>>,
) {
    let mut jobs: HashSet<String> = HashSet::new();
    let mut at = 0;
    loop {
        let batch = match store.read_from(at, BATCH).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(message = "Audit read failed.", error = %e);
                let _ = tx
                    .send(Err(std::io::Error::other(
                        "the event log could not be read",
                    )))
                    .await;
                return;
            }
        };
        let Some(last) = batch.last().map(|e| e.position) else {
            return;
        };
        let mut out = String::new();
        for e in &batch {
            if keeps(&filter, e, &mut jobs) {
                match line(e) {
                    Some(l) => {
                        out.push_str(&l);
                        out.push('\n');
                    }
                    None => tracing::error!(
                        message = "Stored event is not JSON.",
                        position = e.position
                    ),
                }
            }
        }
        if !out.is_empty() && tx.send(Ok(out)).await.is_err() {
            return;
        }
        at = last;
    }
}

fn keeps(filter: &Filter, e: &RecordedEvent, jobs: &mut HashSet<String>) -> bool {
    let owned = match filter.user {
        None => true,
        Some(user) => match e.aggregate_type.as_str() {
            "job" => {
                if let Ok(JobEvent::JobSubmitted(s)) = e.decode::<JobEvent>()
                    && s.user_id.as_uuid() == user
                {
                    jobs.insert(e.aggregate_id.clone());
                }
                jobs.contains(&e.aggregate_id)
            }
            "usage" => e
                .aggregate_id
                .split_once(':')
                .is_some_and(|(u, _)| Uuid::parse_str(u).is_ok_and(|u| u == user)),
            _ => Uuid::parse_str(&e.aggregate_id).is_ok_and(|u| u == user),
        },
    };
    owned
        && filter.from.is_none_or(|f| e.recorded_at >= f)
        && filter.to.is_none_or(|t| e.recorded_at < t)
}

fn line(e: &RecordedEvent) -> Option<String> {
    let stored = e.stored();
    stored.payload?;
    serde_json::to_string(&stored).ok()
}
