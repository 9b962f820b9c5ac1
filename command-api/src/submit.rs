//! `POST /v1/jobs`: reserve a unit and submit the job in one transaction.

use axum::{
    Json as AxumJson,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Duration, Utc};
use domain::{
    Decider,
    concurrency::ConcurrencyGroup,
    ids::{CorrelationId, JobId},
    job::{Job, JobCommand, JobEvent, SubmitJob},
    retry::{MaxAttempts, RetryPolicy},
    subscription::Subscription,
    usage::{ReserveUnit, Usage, UsageCommand, UsageKey},
};
use eventstore::{
    AppendTrace, CommitError, EventStore, IdempotencyRecord, Loaded, MAX_ATTEMPTS, StoreError,
    WriteUnit, backoff, trace::Parent,
};
use platform::{auth::Principal, http::RequestSpan, problem::Problem};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{body::Json, error::ApiError, gates::Customer, metadata, state::AppState};

/// The body of `POST /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    task_type: String,
    payload: Value,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    run_at: Option<String>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    concurrency_key: Option<String>,
    #[serde(default)]
    concurrency_limit: Option<u32>,
}

/// How far ahead `run_at` may be.
const MAX_SCHEDULE_AHEAD_DAYS: i64 = 366;

/// The longest accepted `Idempotency-Key`.
const MAX_KEY_LEN: usize = 255;

/// Submits a job for the caller.
///
/// # Errors
/// 400 on a bad body, 402 past the plan's limit, 409 on a reused idempotency key.
pub async fn submit(
    State(state): State<AppState>,
    Customer(principal): Customer,
    span: RequestSpan,
    headers: HeaderMap,
    body: Json<SubmitRequest>,
) -> Response {
    span.answer(accept(state, principal, &span, headers, body).await)
}

async fn accept(
    state: AppState,
    principal: Principal,
    span: &RequestSpan,
    headers: HeaderMap,
    body: Json<SubmitRequest>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let req = body.value;
    let task_type = state.settings.task_types.parse(&req.task_type)?;
    domain::payload::validate(&task_type, &req.payload)?;
    let correlation_id = correlation_id(req.correlation_id.as_deref(), &headers)?;
    let run_at = match req.run_at.as_deref() {
        None => None,
        Some(s) => Some(parse_run_at(s, now)?),
    };
    let max_attempts = req
        .max_attempts
        .map(MaxAttempts::new)
        .transpose()?
        .unwrap_or_default();
    let concurrency =
        ConcurrencyGroup::parse(req.concurrency_key.as_deref(), req.concurrency_limit)
            .map_err(|e| ApiError::Problem(Problem::bad_request(e.to_string())))?;
    let key = idempotency_key(&headers)?;
    let request_hash = hex::encode(Sha256::digest(&body.raw));

    let user = principal.user_id;
    // Checked before and after taking the key's lock: the common replay costs no lock, and
    // a concurrent duplicate in this process waits for the first and then replays it.
    if let Some(r) = replay(&state, principal, key.as_deref(), &request_hash).await? {
        return Ok(r);
    }
    let _key_guard = match &key {
        Some(k) => Some(
            state
                .store
                .lock("idempotency", &format!("{user}/{k}"))
                .await,
        ),
        None => None,
    };
    if let Some(r) = replay(&state, principal, key.as_deref(), &request_hash).await? {
        return Ok(r);
    }

    let job_id = JobId::from_uuid(uuid::Uuid::new_v4());
    let job_id_text = job_id.to_string();
    span.record("job_id", job_id_text.as_str());
    span.record("correlation_id", correlation_id.as_str());
    let user_text = user.to_string();
    let mut payload = req.payload;
    // A round decides on the cached subscription, and commits only if it is still the
    // latest (its guard); when it is not, or a refusal was decided on it, the next round
    // reads it from the database. A plan change is rare; a read per submission was not.
    'round: for _ in 0..MAX_ATTEMPTS {
        let subscription = state.store.read::<Subscription>(&user_text).await?;
        let plan = subscription.state.plan_at(now);
        let period = subscription.state.period_at(now);
        let usage_key = UsageKey::new(user, &period);
        let usage_id = usage_key.aggregate_id();
        let mut meta = metadata(&correlation_id, principal, span);
        let reserve = ReserveUnit {
            job_id,
            user_id: user,
            period,
            plan,
            limit: state.settings.limits.limit(plan),
            now,
        };
        let job_events = Job::default().decide(JobCommand::Submit(SubmitJob {
            job_id,
            user_id: user,
            task_type: task_type.clone(),
            payload,
            correlation_id: correlation_id.clone(),
            run_at,
            max_attempts,
            retry: RetryPolicy::default(),
            usage: usage_key,
            concurrency: concurrency.clone(),
            now,
        }))?;
        let status = match job_events.first() {
            Some(JobEvent::JobSubmitted(e)) => e.status,
            _ => {
                return Err(
                    StoreError::Invariant("job submission produced no event".into()).into(),
                );
            }
        };
        let response = json!({"job_id": job_id, "status": status.as_str()});
        let (job_append, _, job_after) = encode(EventStore::prepare(
            &job_id_text,
            Loaded::<Job>::default(),
            &job_events,
            &meta,
        ))?;
        // Only the job's events carry the trace on: no follower opens a span for a usage event.
        let traceparent = meta.remove("traceparent");

        for attempt in 0..MAX_ATTEMPTS {
            // Decided and queued under the ledger's lock, committed after it: the user's next
            // submission decides on this state at once instead of waiting for the fsync.
            let committing = {
                let _usage_guard = state.store.lock("usage", &usage_id).await;
                let loaded = state.store.load::<Usage>(&usage_id).await?;
                let usage_events = match loaded.state.decide(UsageCommand::Reserve(reserve.clone()))
                {
                    Ok(events) => events,
                    // Another process may have released units since this state was cached.
                    Err(_) if loaded.cached => {
                        state.store.settle(&loaded).await?;
                        continue;
                    }
                    // Or changed the plan since the subscription was cached.
                    Err(_) if subscription.cached => {
                        state.store.remember(&usage_id, loaded);
                        state.store.forget("subscription", &user_text);
                        payload = payload_of(job_events);
                        continue 'round;
                    }
                    Err(e) => {
                        state.store.remember(&usage_id, loaded);
                        return Err(e.into());
                    }
                };
                let (usage_append, snapshot, mut after) =
                    encode(EventStore::prepare(&usage_id, loaded, &usage_events, &meta))?;
                let unit = WriteUnit {
                    appends: vec![usage_append, job_append.clone()],
                    snapshots: snapshot.into_iter().collect(),
                    idempotency: key.as_ref().map(|k| IdempotencyRecord {
                        user_id: user.as_uuid(),
                        key: k.clone(),
                        request_hash: request_hash.clone(),
                        status: 202,
                        body: response.clone(),
                    }),
                    guards: vec![subscription.guard(&user_text)],
                };
                // The append's span is the request's child.
                let trace = AppendTrace {
                    parent: span.parent().unwrap_or_else(|| {
                        traceparent
                            .as_deref()
                            .map_or(Parent::Current, Parent::Traceparent)
                    }),
                    job_id: &job_id_text,
                    correlation_id: correlation_id.as_str(),
                };
                let (ticket, committing) = state
                    .store
                    .enqueue_traced(unit, trace)
                    .map_err(StoreError::from)?;
                after.pending = Some(ticket);
                state.store.remember(&usage_id, after);
                committing
            };
            let outcome = committing.await;
            if outcome.is_err() {
                state.store.forget_after_failure("usage", &usage_id).await;
            }
            match outcome {
                Ok(()) => {
                    // The worker's start comes next: spare it a load.
                    state.store.remember(&job_id_text, job_after);
                    tracing::info!(
                        parent: span.log(),
                        message = "Job submitted.",
                        job_id = %job_id,
                        user_id = %user,
                        correlation_id = %correlation_id,
                    );
                    return Ok((StatusCode::ACCEPTED, AxumJson(response)).into_response());
                }
                Err(CommitError::Conflict) => backoff(attempt).await,
                Err(CommitError::Stale) => {
                    state.store.forget("subscription", &user_text);
                    payload = payload_of(job_events);
                    continue 'round;
                }
                Err(CommitError::DuplicateKey) => {
                    // Another process recorded this key first: answer as it did.
                    if let Some(r) =
                        replay(&state, principal, key.as_deref(), &request_hash).await?
                    {
                        return Ok(r);
                    }
                    backoff(attempt).await;
                }
                Err(e) => return Err(StoreError::from(e).into()),
            }
        }
        return Err(StoreError::Contention(format!("usage/{usage_id}")).into());
    }
    Err(StoreError::Contention(format!("subscription/{user_text}")).into())
}

/// The payload given back by a submission's events, for another round.
fn payload_of(events: Vec<JobEvent>) -> Value {
    events
        .into_iter()
        .find_map(|e| match e {
            JobEvent::JobSubmitted(e) => Some(e.payload),
            _ => None,
        })
        .unwrap_or_default()
}

fn encode<T>(r: Result<T, serde_json::Error>) -> Result<T, ApiError> {
    r.map_err(|source| {
        ApiError::Store(StoreError::Decode {
            aggregate_type: "job",
            aggregate_id: String::new(),
            source,
        })
    })
}

fn correlation_id(body: Option<&str>, headers: &HeaderMap) -> Result<CorrelationId, ApiError> {
    // A header that is sent must be valid, even when the body's value wins.
    let header = match headers.get("x-correlation-id") {
        Some(v) => Some(CorrelationId::parse(v.to_str().map_err(|_| {
            Problem::bad_request("X-Correlation-Id must be printable ASCII")
        })?)?),
        None => None,
    };
    match (body, header) {
        (Some(s), _) => Ok(CorrelationId::parse(s)?),
        (None, Some(h)) => Ok(h),
        (None, None) => Ok(CorrelationId::parse(&uuid::Uuid::new_v4().to_string())?),
    }
}

fn parse_run_at(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    let at = DateTime::parse_from_rfc3339(s)
        .map_err(|_| {
            Problem::bad_request("run_at must be an RFC 3339 time, such as 2026-12-01T09:00:00Z")
        })?
        .with_timezone(&Utc);
    if at > now + Duration::days(MAX_SCHEDULE_AHEAD_DAYS) {
        return Err(Problem::bad_request("run_at may be at most 366 days ahead").into());
    }
    Ok(at)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| Problem::bad_request("Idempotency-Key must be printable ASCII"))?;
    if s.is_empty() || s.len() > MAX_KEY_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::bad_request(
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        )
        .into());
    }
    Ok(Some(s.to_owned()))
}

/// The stored response for a key seen before, or 409 when it came with another request.
async fn replay(
    state: &AppState,
    principal: Principal,
    key: Option<&str>,
    request_hash: &str,
) -> Result<Option<Response>, ApiError> {
    let Some(key) = key else { return Ok(None) };
    let row = state
        .store
        .stored_response(principal.user_id.as_uuid(), key)
        .await
        .map_err(StoreError::from)?;
    let Some((hash, status, body)) = row else {
        return Ok(None);
    };
    if hash != request_hash {
        return Err(ApiError::KeyReused);
    }
    let status =
        StatusCode::from_u16(u16::try_from(status).unwrap_or(500)).unwrap_or(StatusCode::OK);
    let mut res = (status, AxumJson(body)).into_response();
    res.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(Some(res))
}
