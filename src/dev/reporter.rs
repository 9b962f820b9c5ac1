//! The worker's reporter under `runledger dev`: outcomes go straight to the command side of
//! this process, through the same command path and the same problem answers as the HTTP
//! worker endpoints.

use command_api::{
    error::ApiError,
    jobs::{CompleteBody, FailBody, HeartbeatBody, StartBody, WorkerReport},
};
use domain::{
    ids::{JobId, UserId},
    retry::Attempt,
};
use platform::auth::{Principal, Role};
use serde_json::Value;
use workers::report::{ReportError, Reporter};

/// Worker reports straight to the command side of this process.
pub struct LocalReporter {
    /// The command side.
    pub state: command_api::AppState,
}

impl LocalReporter {
    async fn report(&self, job: JobId, report: WorkerReport) -> Result<(), ReportError> {
        let worker = Principal {
            user_id: UserId::from_uuid(uuid::Uuid::nil()),
            role: Role::Worker,
        };
        let Err(e) = command_api::jobs::report(&self.state, job, worker, report).await else {
            return Ok(());
        };
        if let ApiError::Job(refusal) = &e {
            return Err(refusal
                .conflict()
                .map_or(ReportError::NotFound, ReportError::Conflict));
        }
        let problem = e.problem();
        Err(ReportError::Transport(format!(
            "{} {}",
            problem.status, problem.type_uri
        )))
    }
}

impl Reporter for LocalReporter {
    async fn start(&self, job: JobId, attempt: Attempt, worker: &str) -> Result<(), ReportError> {
        let body = StartBody {
            attempt: attempt.get(),
            worker_id: worker.to_owned(),
        };
        self.report(job, WorkerReport::Start(body)).await
    }

    async fn heartbeat(&self, job: JobId, attempt: Attempt) -> Result<(), ReportError> {
        let body = HeartbeatBody {
            attempt: attempt.get(),
        };
        self.report(job, WorkerReport::Heartbeat(body)).await
    }

    async fn complete(
        &self,
        job: JobId,
        attempt: Attempt,
        result: Value,
    ) -> Result<(), ReportError> {
        let body = CompleteBody {
            attempt: attempt.get(),
            result,
        };
        self.report(job, WorkerReport::Complete(body)).await
    }

    async fn fail(
        &self,
        job: JobId,
        attempt: Attempt,
        error: &str,
        retryable: bool,
        retry_after: Option<std::time::Duration>,
    ) -> Result<(), ReportError> {
        let body = FailBody {
            attempt: attempt.get(),
            error: error.to_owned(),
            retryable,
            retry_after_ms: retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        };
        self.report(job, WorkerReport::Fail(body)).await
    }
}
