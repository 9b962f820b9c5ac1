//! `POST /v1/jobs/{id}/cancel` and the worker endpoints: commands on one Job aggregate.

use axum::{
    Json as AxumJson,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::Utc;
use domain::{
    ids::{JobId, WorkerId},
    job::{
        CancelJob, CompleteJob, ErrorText, FailJob, HeartbeatJob, Job, JobCommand, JobError,
        StartJob,
    },
    retry::Attempt,
};
use platform::{
    auth::{Principal, Role},
    http::RequestSpan,
    problem::Problem,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument;

use crate::{
    body::Json,
    error::ApiError,
    gates::{Owner, Worker},
    metadata,
    state::AppState,
};

fn job_id(raw: &str) -> Result<JobId, ApiError> {
    // A malformed id cannot name anyone's job: 404, like another user's job.
    JobId::parse(raw).map_err(|_| ApiError::Job(JobError::NotFound))
}

/// Runs `command` on job `id`, after `allowed` approves the loaded job.
async fn run(
    state: &AppState,
    id: JobId,
    principal: Principal,
    span: &RequestSpan,
    allowed: impl Fn(&Job) -> bool,
    command: JobCommand,
) -> Result<Response, ApiError> {
    let (status, attempt) = execute(state, id, principal, span, allowed, command).await?;
    let body = json!({"job_id": id, "status": status.as_str(), "attempt": attempt});
    Ok((StatusCode::OK, AxumJson(body)).into_response())
}

/// A worker's report in process (the embedded default), as the worker endpoints take it.
///
/// # Errors
/// As the endpoints: [`JobError`]s, or the store's.
pub async fn report(
    state: &AppState,
    id: JobId,
    worker: Principal,
    report: WorkerReport,
) -> Result<(), ApiError> {
    require_worker(worker)?;
    let span = RequestSpan::within(tracing::Span::current());
    execute(state, id, worker, &span, |_| true, report.command()?)
        .await
        .map(drop)
}

async fn execute(
    state: &AppState,
    id: JobId,
    principal: Principal,
    span: &RequestSpan,
    allowed: impl Fn(&Job) -> bool,
    command: JobCommand,
) -> Result<(domain::job::JobStatus, Attempt), ApiError> {
    let id_text = id.to_string();
    span.record("job_id", id_text.as_str());
    // Refusals come back as 404 for a job that does not exist or is not the caller's.
    let check = |job: &Job| match job.state() {
        Some(_) if allowed(job) => Ok(()),
        _ => Err(JobError::NotFound),
    };
    let meta = |job: &Job| match job.state() {
        Some(s) => {
            span.record("correlation_id", s.correlation_id.as_str());
            metadata(&s.correlation_id, principal, span)
        }
        None => Default::default(),
    };
    let executed = state
        .store
        .execute_checked::<Job, _>(&id_text, command, meta, check, |job: &Job| {
            job.state().map(|s| (s.status, s.attempt))
        })
        // Log lines of the load, lock and commit carry the request's fields; the append's
        // span finds the request's, its parent, in the events' `traceparent`.
        .instrument(span.log().clone())
        .await??;
    Ok(executed.view.ok_or(JobError::NotFound)?)
}

/// The owner cancels a job; another user's job is a 404.
///
/// # Errors
/// 404, or 409 when the job is finished.
pub async fn cancel(
    State(state): State<AppState>,
    Owner(principal): Owner,
    span: RequestSpan,
    Path(id): Path<String>,
) -> Response {
    span.answer(cancel_job(&state, principal, &span, &id).await)
}

async fn cancel_job(
    state: &AppState,
    principal: Principal,
    span: &RequestSpan,
    id: &str,
) -> Result<Response, ApiError> {
    let id = job_id(id)?;
    let owner = principal.user_id;
    let admin = principal.role == Role::Admin;
    let owns = move |job: &Job| admin || job.state().is_some_and(|s| s.user_id == owner);
    run(
        state,
        id,
        principal,
        span,
        owns,
        JobCommand::Cancel(CancelJob { now: Utc::now() }),
    )
    .await
}

fn require_worker(p: Principal) -> Result<(), ApiError> {
    match p.role {
        Role::Worker | Role::Admin => Ok(()),
        _ => Err(Problem::forbidden("worker endpoints need a worker token").into()),
    }
}

/// `POST /v1/worker/jobs/{id}/start`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// The attempt.
    pub attempt: u32,
    /// Who runs it.
    pub worker_id: String,
}

/// `POST /v1/worker/jobs/{id}/heartbeat`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    /// The attempt.
    pub attempt: u32,
}

/// `POST /v1/worker/jobs/{id}/complete`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    /// The attempt.
    pub attempt: u32,
    /// The executor's result.
    #[serde(default)]
    pub result: Value,
}

/// `POST /v1/worker/jobs/{id}/fail`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    /// The attempt.
    pub attempt: u32,
    /// What went wrong (truncated to the domain's bound).
    pub error: String,
    /// Whether another attempt may follow.
    pub retryable: bool,
    /// The least wait before another attempt, in milliseconds (an upstream `Retry-After`;
    /// at most a day is honoured).
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

/// A worker's report, over HTTP or in process: one place turns it into a command.
#[derive(Debug)]
pub enum WorkerReport {
    /// An attempt starts.
    Start(StartBody),
    /// An attempt is alive.
    Heartbeat(HeartbeatBody),
    /// An attempt finished.
    Complete(CompleteBody),
    /// An attempt failed.
    Fail(FailBody),
}

impl WorkerReport {
    fn command(self) -> Result<JobCommand, ApiError> {
        let now = Utc::now();
        Ok(match self {
            Self::Start(b) => JobCommand::Start(StartJob {
                attempt: Attempt::new(b.attempt)?,
                worker_id: WorkerId::parse(&b.worker_id)?,
                now,
            }),
            Self::Heartbeat(b) => JobCommand::Heartbeat(HeartbeatJob {
                attempt: Attempt::new(b.attempt)?,
                now,
            }),
            Self::Complete(b) => JobCommand::Complete(CompleteJob {
                attempt: Attempt::new(b.attempt)?,
                result: b.result,
                now,
            }),
            Self::Fail(b) => JobCommand::Fail(FailJob {
                attempt: Attempt::new(b.attempt)?,
                error: ErrorText::truncated(&b.error),
                retryable: b.retryable,
                retry_after_ms: b.retry_after_ms,
                now,
                jitter_seed: rand::random(),
            }),
        })
    }
}

impl From<StartBody> for WorkerReport {
    fn from(b: StartBody) -> Self {
        Self::Start(b)
    }
}

impl From<HeartbeatBody> for WorkerReport {
    fn from(b: HeartbeatBody) -> Self {
        Self::Heartbeat(b)
    }
}

impl From<CompleteBody> for WorkerReport {
    fn from(b: CompleteBody) -> Self {
        Self::Complete(b)
    }
}

impl From<FailBody> for WorkerReport {
    fn from(b: FailBody) -> Self {
        Self::Fail(b)
    }
}

/// A worker's report on its attempt, `B` the body of its endpoint (start, heartbeat,
/// complete, fail).
///
/// # Errors
/// 403 without a worker token, 404, 409 on a stale attempt or a finished job.
pub async fn worker_report<B: Into<WorkerReport>>(
    State(state): State<AppState>,
    Worker(principal): Worker,
    span: RequestSpan,
    Path(id): Path<String>,
    body: Json<B>,
) -> Response {
    let outcome = async {
        require_worker(principal)?;
        let id = job_id(&id)?;
        let command = body.value.into().command()?;
        run(&state, id, principal, &span, |_| true, command).await
    };
    span.answer(outcome.await)
}
