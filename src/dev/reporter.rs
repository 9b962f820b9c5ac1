//! The worker's reporter under `runledger dev`: outcomes go straight to the command side of
//! this process, through the same command path as the HTTP worker endpoints.

use domain::{
    ids::{JobId, UserId, WorkerId},
    job::{CompleteJob, ErrorText, FailJob, HeartbeatJob, JobCommand, JobError, StartJob},
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
    async fn report(&self, job: JobId, command: JobCommand) -> Result<(), ReportError> {
        let worker = Principal {
            user_id: UserId::from_uuid(uuid::Uuid::nil()),
            role: Role::Worker,
        };
        command_api::jobs::report(&self.state, job, worker, command)
            .await
            .map_err(|e| match e {
                command_api::error::ApiError::Job(j) => match j {
                    JobError::NotFound => ReportError::NotFound,
                    JobError::Finished { .. } => ReportError::Conflict("job-finished".into()),
                    JobError::StaleAttempt { .. } => ReportError::Conflict("stale-attempt".into()),
                    JobError::StartedElsewhere { .. } => {
                        ReportError::Conflict("started-elsewhere".into())
                    }
                    JobError::NotRunning { .. } => ReportError::Conflict("job-not-running".into()),
                    JobError::AlreadySubmitted => ReportError::Conflict("job-exists".into()),
                },
                other => ReportError::Transport(other.to_string()),
            })
    }
}

impl Reporter for LocalReporter {
    async fn start(&self, job: JobId, attempt: Attempt, worker: &str) -> Result<(), ReportError> {
        let worker_id =
            WorkerId::parse(worker).map_err(|e| ReportError::Transport(e.to_string()))?;
        let now = chrono::Utc::now();
        self.report(
            job,
            JobCommand::Start(StartJob {
                attempt,
                worker_id,
                now,
            }),
        )
        .await
    }

    async fn heartbeat(&self, job: JobId, attempt: Attempt) -> Result<(), ReportError> {
        let now = chrono::Utc::now();
        self.report(job, JobCommand::Heartbeat(HeartbeatJob { attempt, now }))
            .await
    }

    async fn complete(
        &self,
        job: JobId,
        attempt: Attempt,
        result: Value,
    ) -> Result<(), ReportError> {
        let now = chrono::Utc::now();
        self.report(
            job,
            JobCommand::Complete(CompleteJob {
                attempt,
                result,
                now,
            }),
        )
        .await
    }

    async fn fail(
        &self,
        job: JobId,
        attempt: Attempt,
        error: &str,
        retryable: bool,
    ) -> Result<(), ReportError> {
        let now = chrono::Utc::now();
        self.report(
            job,
            JobCommand::Fail(FailJob {
                attempt,
                error: ErrorText::truncated(error),
                retryable,
                now,
                jitter_seed: rand::random(),
            }),
        )
        .await
    }
}
