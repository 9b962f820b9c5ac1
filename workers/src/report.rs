//! The port through which a worker reports outcomes. Over HTTP to the worker endpoints when
//! roles run apart; in process under `runledger dev` (with another implementation).

use std::time::Duration;

use domain::{ids::JobId, retry::Attempt};
use serde_json::{Value, json};

/// Why a report was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// 409: the job moved on (`job-finished`, `stale-attempt`, `started-elsewhere`,
    /// `job-not-running`); nothing changed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// No such job.
    #[error("job not found")]
    NotFound,
    /// The command side could not be reached or failed; the report may be retried.
    #[error("transport: {0}")]
    Transport(String),
}

impl ReportError {
    /// Whether the job is over (finished or canceled) and the work should stop.
    pub fn job_is_over(&self) -> bool {
        matches!(self, Self::Conflict(k) if k == "job-finished") || matches!(self, Self::NotFound)
    }
}

/// Reports outcomes to the command side.
pub trait Reporter: Send + Sync + 'static {
    /// An attempt starts.
    fn start(
        &self,
        job: JobId,
        attempt: Attempt,
        worker: &str,
    ) -> impl Future<Output = Result<(), ReportError>> + Send;
    /// An attempt is alive.
    fn heartbeat(
        &self,
        job: JobId,
        attempt: Attempt,
    ) -> impl Future<Output = Result<(), ReportError>> + Send;
    /// An attempt finished.
    fn complete(
        &self,
        job: JobId,
        attempt: Attempt,
        result: Value,
    ) -> impl Future<Output = Result<(), ReportError>> + Send;
    /// An attempt failed.
    fn fail(
        &self,
        job: JobId,
        attempt: Attempt,
        error: &str,
        retryable: bool,
    ) -> impl Future<Output = Result<(), ReportError>> + Send;
}

/// Reports over HTTP with a worker token, retrying transport failures a few times.
#[derive(Clone)]
pub struct HttpReporter {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl HttpReporter {
    /// Reports to `base` (the command API) with `token`.
    pub fn new(base: &str, token: String) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            client: platform::http_client()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    async fn post(&self, job: JobId, op: &str, body: Value) -> Result<(), ReportError> {
        let url = format!("{}/v1/worker/jobs/{job}/{op}", self.base);
        let mut last = String::new();
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            let res = match self
                .client
                .post(&url)
                .bearer_auth(&self.token)
                .json(&body)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let status = res.status().as_u16();
            match status {
                200..=299 => return Ok(()),
                404 => return Err(ReportError::NotFound),
                409 => {
                    let body: Value = res.json().await.unwrap_or(Value::Null);
                    let kind = body["type"]
                        .as_str()
                        .unwrap_or("")
                        .rsplit(':')
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    return Err(ReportError::Conflict(kind));
                }
                500..=599 => last = format!("status {status}"),
                _ => return Err(ReportError::Transport(format!("status {status}"))),
            }
        }
        Err(ReportError::Transport(last))
    }
}

impl Reporter for HttpReporter {
    async fn start(&self, job: JobId, attempt: Attempt, worker: &str) -> Result<(), ReportError> {
        self.post(
            job,
            "start",
            json!({"attempt": attempt, "worker_id": worker}),
        )
        .await
    }

    async fn heartbeat(&self, job: JobId, attempt: Attempt) -> Result<(), ReportError> {
        self.post(job, "heartbeat", json!({"attempt": attempt}))
            .await
    }

    async fn complete(
        &self,
        job: JobId,
        attempt: Attempt,
        result: Value,
    ) -> Result<(), ReportError> {
        self.post(
            job,
            "complete",
            json!({"attempt": attempt, "result": result}),
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
        self.post(
            job,
            "fail",
            json!({"attempt": attempt, "error": error, "retryable": retryable}),
        )
        .await
    }
}
