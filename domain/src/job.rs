//! The Job aggregate: a job's life from submission to a final status.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    concurrency::ConcurrencyGroup,
    envelope::{EnvelopeMeta, JobEnvelope},
    event::{Decider, event_enum},
    ids::{CorrelationId, JobId, UserId, WorkerId},
    retry::{Attempt, MaxAttempts, RetryPolicy},
    task::TaskType,
    usage::UsageKey,
};

/// Where a job is in its life, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for its `run_at`.
    Scheduled,
    /// Ready for a worker.
    Queued,
    /// A worker runs it.
    Running,
    /// An attempt failed; the next one waits for its backoff.
    Retrying,
    /// Finished with a result. Counts one unit of usage.
    Completed,
    /// Dead-lettered: a fatal failure or no attempts left.
    Failed,
    /// Canceled by its owner.
    Canceled,
}

impl JobStatus {
    /// Whether no command changes the job any more.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }

    /// The status as the API writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }
}

/// A failure message from a worker, cut to 4 KiB at a character boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ErrorText(#[schemars(length(max = 4096))] String);

impl ErrorText {
    /// The longest kept message, in bytes.
    pub const MAX_LEN: usize = 4096;

    /// Keeps at most `MAX_LEN` bytes of `s`.
    pub fn truncated(s: &str) -> Self {
        let mut end = s.len().min(Self::MAX_LEN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Self(s[..end].to_owned())
    }

    /// The message.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Submit a new job. The command side has already reserved its unit in `usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubmitJob {
    /// The new job's id.
    pub job_id: JobId,
    /// Its owner.
    pub user_id: UserId,
    /// What to run.
    pub task_type: TaskType,
    /// The executor's input.
    pub payload: serde_json::Value,
    /// From `X-Correlation-Id`, or generated.
    pub correlation_id: CorrelationId,
    /// Run no earlier than this; `None` or past: at once.
    #[serde(
        default,
        serialize_with = "crate::time::write_opt",
        deserialize_with = "crate::time::read_opt"
    )]
    pub run_at: Option<DateTime<Utc>>,
    /// Attempts before dead-lettering.
    pub max_attempts: MaxAttempts,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// The usage ledger holding its reservation.
    pub usage: UsageKey,
    /// Its concurrency group among its owner's jobs, if any.
    pub concurrency: Option<ConcurrencyGroup>,
    /// The time of submission.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub now: DateTime<Utc>,
}

/// A worker starts an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StartJob {
    /// The attempt from the envelope.
    pub attempt: Attempt,
    /// Who runs it.
    pub worker_id: WorkerId,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub now: DateTime<Utc>,
}

/// A worker still runs an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HeartbeatJob {
    /// The attempt running.
    pub attempt: Attempt,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub now: DateTime<Utc>,
}

/// A worker finished an attempt with a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CompleteJob {
    /// The attempt that finished.
    pub attempt: Attempt,
    /// The executor's output.
    pub result: serde_json::Value,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub now: DateTime<Utc>,
}

/// A worker's attempt failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FailJob {
    /// The attempt that failed.
    pub attempt: Attempt,
    /// What went wrong.
    pub error: ErrorText,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// The least wait before another attempt that the failed call asked for (an HTTP
    /// `Retry-After`), in milliseconds; the backoff is never shorter.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub now: DateTime<Utc>,
    /// Randomness for the backoff jitter, drawn by the caller.
    pub jitter_seed: u64,
}

/// The process manager expires an attempt whose heartbeats stopped: its worker is presumed
/// dead or cut off, so the attempt fails as retryable and every job still ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExpireJob {
    /// The attempt the process manager saw running.
    pub attempt: Attempt,
    /// How long an attempt may go without a start or heartbeat, in seconds.
    pub lease_secs: u32,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub now: DateTime<Utc>,
    /// Randomness for the backoff jitter, drawn by the caller.
    pub jitter_seed: u64,
}

/// The owner cancels the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CancelJob {
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub now: DateTime<Utc>,
}

/// Every command of the Job aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[allow(missing_docs)]
pub enum JobCommand {
    Submit(SubmitJob),
    Start(StartJob),
    Heartbeat(HeartbeatJob),
    Complete(CompleteJob),
    Fail(FailJob),
    Expire(ExpireJob),
    Cancel(CancelJob),
}

/// A job was accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobSubmitted {
    /// The job.
    pub job_id: JobId,
    /// Its owner.
    pub user_id: UserId,
    /// What to run.
    pub task_type: TaskType,
    /// The executor's input.
    pub payload: serde_json::Value,
    /// Follows the job everywhere.
    pub correlation_id: CorrelationId,
    /// Not before this time, if later than submission.
    #[serde(
        default,
        serialize_with = "crate::time::write_opt",
        deserialize_with = "crate::time::read_opt"
    )]
    pub run_at: Option<DateTime<Utc>>,
    /// Attempts before dead-lettering.
    pub max_attempts: MaxAttempts,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// The usage ledger holding its reservation.
    pub usage: UsageKey,
    /// `queued`, or `scheduled` when `run_at` is in the future.
    pub status: JobStatus,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub submitted_at: DateTime<Utc>,
    /// Its concurrency group among its owner's jobs (absent in events before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyGroup>,
}

/// A worker started an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobStarted {
    /// The attempt.
    pub attempt: Attempt,
    /// Who runs it.
    pub worker_id: WorkerId,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub started_at: DateTime<Utc>,
}

/// A worker reported that an attempt still runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobHeartbeat {
    /// The attempt.
    pub attempt: Attempt,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub at: DateTime<Utc>,
}

/// An attempt finished with a result: the job counts one unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobCompleted {
    /// The attempt.
    pub attempt: Attempt,
    /// The executor's output.
    pub result: serde_json::Value,
    /// The ledger that commits the unit.
    pub usage: UsageKey,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub completed_at: DateTime<Utc>,
}

/// An attempt failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobFailed {
    /// The attempt.
    pub attempt: Attempt,
    /// What went wrong.
    pub error: ErrorText,
    /// Whether the worker thought a retry may help.
    pub retryable: bool,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub failed_at: DateTime<Utc>,
}

/// Another attempt will run after a backoff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobRetryScheduled {
    /// The attempt to run next.
    pub next_attempt: Attempt,
    /// Not before this time.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub not_before: DateTime<Utc>,
}

/// No attempt will run any more; the reservation is released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobDeadLettered {
    /// Attempts made.
    pub attempts: Attempt,
    /// The last failure.
    pub error: ErrorText,
    /// The ledger that releases the unit.
    pub usage: UsageKey,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub dead_lettered_at: DateTime<Utc>,
}

/// The owner canceled the job; the reservation is released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobCanceled {
    /// The status it had, so a running executor can be told to stop.
    pub previous_status: JobStatus,
    /// The ledger that releases the unit.
    pub usage: UsageKey,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub canceled_at: DateTime<Utc>,
}

event_enum!(
    /// Every event of the Job aggregate.
    JobEvent {
        JobSubmitted,
        JobStarted,
        JobHeartbeat,
        JobCompleted,
        JobFailed,
        JobRetryScheduled,
        JobDeadLettered,
        JobCanceled,
    }
);

/// Why the Job aggregate refuses a command. Each maps to a 4xx; none changes anything.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JobError {
    /// The job id is taken.
    #[error("job already submitted")]
    AlreadySubmitted,
    /// No such job.
    #[error("job not found")]
    NotFound,
    /// The report names another attempt than the current one.
    #[error("attempt {got} is stale: the current attempt is {current}")]
    StaleAttempt {
        /// The current attempt.
        current: u32,
        /// The attempt reported.
        got: u32,
    },
    /// The attempt runs on another worker.
    #[error("attempt {attempt} already runs on another worker")]
    StartedElsewhere {
        /// The attempt.
        attempt: u32,
    },
    /// The attempt was never started.
    #[error("the job is {status:?}, not running")]
    NotRunning {
        /// Its status.
        status: JobStatus,
    },
    /// The job is completed, failed or canceled.
    #[error("the job is already {status:?}")]
    Finished {
        /// Its final status.
        status: JobStatus,
    },
    /// The attempt was seen alive within its lease: it is not expired.
    #[error("attempt {attempt} was seen alive within its lease")]
    LeaseAlive {
        /// The attempt.
        attempt: u32,
    },
    /// A start before the job's `run_at` or its retry's backoff.
    #[error("the job is not due before {not_before}")]
    NotDue {
        /// When it is due.
        not_before: DateTime<Utc>,
    },
}

/// Why the Job aggregate refused a command about an existing job: the `409` problem's type
/// over HTTP, and what a worker decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConflictKind {
    /// `job-exists`.
    JobExists,
    /// `stale-attempt`.
    StaleAttempt,
    /// `started-elsewhere`.
    StartedElsewhere,
    /// `job-not-running`.
    NotRunning,
    /// `job-finished`.
    Finished,
    /// `lease-alive`.
    LeaseAlive,
    /// `not-due`.
    NotDue,
}

impl ConflictKind {
    /// Every kind.
    pub const ALL: [Self; 7] = [
        Self::JobExists,
        Self::StaleAttempt,
        Self::StartedElsewhere,
        Self::NotRunning,
        Self::Finished,
        Self::LeaseAlive,
        Self::NotDue,
    ];

    /// The last segment of the problem type, `urn:runledger:problem:<slug>`.
    pub const fn slug(self) -> &'static str {
        match self {
            Self::JobExists => "job-exists",
            Self::StaleAttempt => "stale-attempt",
            Self::StartedElsewhere => "started-elsewhere",
            Self::NotRunning => "job-not-running",
            Self::Finished => "job-finished",
            Self::LeaseAlive => "lease-alive",
            Self::NotDue => "not-due",
        }
    }

    /// The kind a slug names.
    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.slug() == slug)
    }

    /// Whether the job is over and work on it should stop.
    pub const fn job_is_over(self) -> bool {
        matches!(self, Self::Finished)
    }
}

impl JobError {
    /// The conflict this refusal is, if it is one (not for a missing job).
    pub const fn conflict(&self) -> Option<ConflictKind> {
        Some(match self {
            Self::NotFound => return None,
            Self::AlreadySubmitted => ConflictKind::JobExists,
            Self::StaleAttempt { .. } => ConflictKind::StaleAttempt,
            Self::StartedElsewhere { .. } => ConflictKind::StartedElsewhere,
            Self::NotRunning { .. } => ConflictKind::NotRunning,
            Self::Finished { .. } => ConflictKind::Finished,
            Self::LeaseAlive { .. } => ConflictKind::LeaseAlive,
            Self::NotDue { .. } => ConflictKind::NotDue,
        })
    }
}

/// How far a start may come before the job is due, for clocks that differ between the
/// dispatcher's host and the command side's.
pub const START_LEEWAY_MS: i64 = 1_000;

/// The state of a submitted job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// The job.
    pub job_id: JobId,
    /// Its owner.
    pub user_id: UserId,
    /// What it runs.
    pub task_type: TaskType,
    /// The executor's input.
    pub payload: serde_json::Value,
    /// Follows the job everywhere.
    pub correlation_id: CorrelationId,
    /// Attempts before dead-lettering.
    pub max_attempts: MaxAttempts,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// Its usage ledger.
    pub usage: UsageKey,
    /// Where it is.
    pub status: JobStatus,
    /// The current (or next) attempt.
    pub attempt: Attempt,
    /// Who runs the current attempt.
    pub worker_id: Option<WorkerId>,
    /// When the next attempt may run.
    #[serde(
        default,
        serialize_with = "crate::time::write_opt",
        deserialize_with = "crate::time::read_opt"
    )]
    pub not_before: Option<DateTime<Utc>>,
    /// The last failure.
    pub last_error: Option<ErrorText>,
    /// When the running attempt was last seen (its start or latest heartbeat).
    #[serde(
        default,
        serialize_with = "crate::time::write_opt",
        deserialize_with = "crate::time::read_opt"
    )]
    pub last_seen: Option<DateTime<Utc>>,
    /// Its concurrency group among its owner's jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyGroup>,
}

/// The Job aggregate; its default is a job not yet submitted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Job {
    state: Option<JobState>,
}

impl Job {
    /// The job's state, `None` before submission.
    pub fn state(&self) -> Option<&JobState> {
        self.state.as_ref()
    }

    /// The envelope a worker receives for the current attempt.
    pub fn envelope(&self) -> Option<JobEnvelope> {
        self.state.as_ref().map(|s| JobEnvelope {
            job_id: s.job_id,
            attempt: s.attempt,
            correlation_id: s.correlation_id.clone(),
            task_type: s.task_type.clone(),
            meta: EnvelopeMeta {
                user_id: s.user_id,
                traceparent: None,
            },
            payload: s.payload.clone(),
        })
    }

    fn live(&self) -> Result<&JobState, JobError> {
        let s = self.state.as_ref().ok_or(JobError::NotFound)?;
        if s.status.is_final() {
            return Err(JobError::Finished { status: s.status });
        }
        Ok(s)
    }

    /// The running state for a report about `attempt`.
    fn running(&self, attempt: Attempt) -> Result<&JobState, JobError> {
        let s = self.live()?;
        if attempt != s.attempt {
            return Err(JobError::StaleAttempt {
                current: s.attempt.get(),
                got: attempt.get(),
            });
        }
        if s.status != JobStatus::Running {
            return Err(JobError::NotRunning { status: s.status });
        }
        Ok(s)
    }
}

impl Decider for Job {
    type Command = JobCommand;
    type Event = JobEvent;
    type Error = JobError;

    fn decide(&self, command: JobCommand) -> Result<Vec<JobEvent>, JobError> {
        match command {
            JobCommand::Submit(c) => {
                if self.state.is_some() {
                    return Err(JobError::AlreadySubmitted);
                }
                let later = c.run_at.filter(|at| *at > c.now);
                let status = if later.is_some() {
                    JobStatus::Scheduled
                } else {
                    JobStatus::Queued
                };
                Ok(vec![
                    JobSubmitted {
                        job_id: c.job_id,
                        user_id: c.user_id,
                        task_type: c.task_type,
                        payload: c.payload,
                        correlation_id: c.correlation_id,
                        run_at: later,
                        max_attempts: c.max_attempts,
                        retry: c.retry,
                        usage: c.usage,
                        status,
                        submitted_at: c.now,
                        concurrency: c.concurrency,
                    }
                    .into(),
                ])
            }
            JobCommand::Start(c) => {
                let s = self.live()?;
                if c.attempt != s.attempt {
                    return Err(JobError::StaleAttempt {
                        current: s.attempt.get(),
                        got: c.attempt.get(),
                    });
                }
                if let Some(not_before) = s.not_before
                    && c.now + chrono::Duration::milliseconds(START_LEEWAY_MS) < not_before
                {
                    return Err(JobError::NotDue { not_before });
                }
                if s.status == JobStatus::Running {
                    // The same worker's start, delivered twice, changes nothing.
                    return if s.worker_id.as_ref() == Some(&c.worker_id) {
                        Ok(vec![])
                    } else {
                        Err(JobError::StartedElsewhere {
                            attempt: c.attempt.get(),
                        })
                    };
                }
                Ok(vec![
                    JobStarted {
                        attempt: c.attempt,
                        worker_id: c.worker_id,
                        started_at: c.now,
                    }
                    .into(),
                ])
            }
            JobCommand::Heartbeat(c) => {
                self.running(c.attempt)?;
                Ok(vec![
                    JobHeartbeat {
                        attempt: c.attempt,
                        at: c.now,
                    }
                    .into(),
                ])
            }
            JobCommand::Complete(c) => {
                let s = self.running(c.attempt)?;
                Ok(vec![
                    JobCompleted {
                        attempt: c.attempt,
                        result: c.result,
                        usage: s.usage.clone(),
                        completed_at: c.now,
                    }
                    .into(),
                ])
            }
            JobCommand::Fail(c) => {
                let s = self.running(c.attempt)?;
                Ok(failure(s, c))
            }
            JobCommand::Expire(c) => {
                let s = self.running(c.attempt)?;
                let lease = chrono::Duration::seconds(i64::from(c.lease_secs));
                let seen = s.last_seen.unwrap_or(c.now);
                if c.now.signed_duration_since(seen) < lease {
                    return Err(JobError::LeaseAlive {
                        attempt: c.attempt.get(),
                    });
                }
                let error = format!(
                    "lease expired: attempt {} sent no heartbeat for {} s",
                    c.attempt.get(),
                    c.lease_secs
                );
                Ok(failure(
                    s,
                    FailJob {
                        attempt: c.attempt,
                        error: ErrorText::truncated(&error),
                        retryable: true,
                        retry_after_ms: None,
                        now: c.now,
                        jitter_seed: c.jitter_seed,
                    },
                ))
            }
            JobCommand::Cancel(c) => {
                let s = self.live()?;
                Ok(vec![
                    JobCanceled {
                        previous_status: s.status,
                        usage: s.usage.clone(),
                        canceled_at: c.now,
                    }
                    .into(),
                ])
            }
        }
    }

    fn evolve(&mut self, event: &JobEvent) {
        if let JobEvent::JobSubmitted(e) = event {
            self.state = Some(JobState {
                job_id: e.job_id,
                user_id: e.user_id,
                task_type: e.task_type.clone(),
                payload: e.payload.clone(),
                correlation_id: e.correlation_id.clone(),
                max_attempts: e.max_attempts,
                retry: e.retry,
                usage: e.usage.clone(),
                status: e.status,
                attempt: Attempt::FIRST,
                worker_id: None,
                not_before: e.run_at,
                last_error: None,
                last_seen: None,
                concurrency: e.concurrency.clone(),
            });
            return;
        }
        let Some(s) = self.state.as_mut() else { return };
        match event {
            JobEvent::JobSubmitted(_) => {}
            JobEvent::JobHeartbeat(e) => s.last_seen = Some(e.at),
            JobEvent::JobStarted(e) => {
                s.status = JobStatus::Running;
                s.worker_id = Some(e.worker_id.clone());
                s.not_before = None;
                s.last_seen = Some(e.started_at);
            }
            JobEvent::JobCompleted(_) => s.status = JobStatus::Completed,
            JobEvent::JobFailed(e) => s.last_error = Some(e.error.clone()),
            JobEvent::JobRetryScheduled(e) => {
                s.status = JobStatus::Retrying;
                s.attempt = e.next_attempt;
                s.worker_id = None;
                s.not_before = Some(e.not_before);
                s.last_seen = None;
            }
            JobEvent::JobDeadLettered(_) => s.status = JobStatus::Failed,
            JobEvent::JobCanceled(_) => s.status = JobStatus::Canceled,
        }
    }
}

/// The longest `Retry-After` honoured: one day.
pub const MAX_RETRY_AFTER_MS: u64 = 86_400_000;

/// A failed attempt, then its retry after a backoff or, with no attempt left or a fatal
/// error, the dead letter.
fn failure(s: &JobState, c: FailJob) -> Vec<JobEvent> {
    let failed = JobFailed {
        attempt: c.attempt,
        error: c.error.clone(),
        retryable: c.retryable,
        failed_at: c.now,
    };
    let next = if c.retryable && s.max_attempts.allows_retry_after(c.attempt) {
        let asked =
            std::time::Duration::from_millis(c.retry_after_ms.unwrap_or(0).min(MAX_RETRY_AFTER_MS));
        let delay = s.retry.delay(c.attempt, c.jitter_seed).max(asked);
        let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        JobRetryScheduled {
            next_attempt: c.attempt.next(),
            not_before: c.now.checked_add_signed(delay).unwrap_or(c.now),
        }
        .into()
    } else {
        JobDeadLettered {
            attempts: c.attempt,
            error: c.error,
            usage: s.usage.clone(),
            dead_lettered_at: c.now,
        }
        .into()
    };
    vec![failed.into(), next]
}
