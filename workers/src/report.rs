//! The port through which a worker reports outcomes. Over HTTP to the worker endpoints when
//! roles run apart; in process under `runledger dev` (with another implementation).

use std::time::Duration;

use domain::{ids::JobId, job::ConflictKind, retry::Attempt};
use serde_json::{Value, json};

/// Why a report was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// 409: the job moved on (finished, another attempt, another worker, not running, not
    /// due); nothing changed.
    #[error("conflict: {}", .0.slug())]
    Conflict(ConflictKind),
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
        matches!(self, Self::Conflict(k) if k.job_is_over()) || matches!(self, Self::NotFound)
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
    /// An attempt failed; `retry_after`: the least wait before another attempt.
    fn fail(
        &self,
        job: JobId,
        attempt: Attempt,
        error: &str,
        retryable: bool,
        retry_after: Option<std::time::Duration>,
    ) -> impl Future<Output = Result<(), ReportError>> + Send;
}

/// The worker's service token: given (`RUNLEDGER_WORKER_TOKEN`, renewed by whoever issued
/// it), or minted from the HS256 secret and minted again at half its lifetime, so a worker
/// that runs for months never reports with an expired token.
pub enum Credentials {
    /// A token from configuration.
    Fixed(platform::settings::Secret),
    /// Minted for `sub` with role `worker`.
    Minted {
        /// Signs with the service secret (or the HS256 secret), audience and issuer.
        minter: platform::auth::Minter,
        /// The worker's identity.
        sub: domain::ids::UserId,
        /// Each token's lifetime.
        ttl: Duration,
        /// The token in use and when it was minted.
        current: std::sync::Mutex<Option<(String, std::time::Instant)>>,
    },
}

impl Credentials {
    /// Mints tokens of `ttl` for a new worker identity.
    pub fn minted(minter: platform::auth::Minter, ttl: Duration) -> Self {
        Self::Minted {
            minter,
            sub: domain::ids::UserId::from_uuid(uuid::Uuid::new_v4()),
            ttl,
            current: std::sync::Mutex::new(None),
        }
    }

    /// The token to send now.
    ///
    /// # Errors
    /// When minting fails.
    pub fn token(&self) -> Result<String, ReportError> {
        match self {
            Self::Fixed(t) => Ok(t.expose().to_owned()),
            Self::Minted {
                minter,
                sub,
                ttl,
                current,
            } => {
                let mut current = match current.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                if let Some((token, at)) = current.as_ref()
                    && at.elapsed() < *ttl / 2
                {
                    return Ok(token.clone());
                }
                let token = minter
                    .mint(*sub, platform::auth::Role::Worker, *ttl)
                    .map_err(|_| ReportError::Transport("cannot mint a worker token".into()))?;
                *current = Some((token.clone(), std::time::Instant::now()));
                Ok(token)
            }
        }
    }
}

/// Reports over HTTP with a worker token, retrying transport failures a few times.
pub struct HttpReporter {
    base: String,
    credentials: Credentials,
    client: reqwest::Client,
}

impl HttpReporter {
    /// Reports to `base` (the command API) with `token`.
    pub fn new(base: &str, token: String) -> Self {
        Self::with_credentials(
            base,
            Credentials::Fixed(platform::settings::Secret::new(token)),
        )
    }

    /// Reports to `base` with the tokens of `credentials`.
    pub fn with_credentials(base: &str, credentials: Credentials) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            credentials,
            client: platform::http_client()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    async fn post(&self, job: JobId, op: &str, body: Value) -> Result<(), ReportError> {
        let url = format!("{}/v1/worker/jobs/{job}/{op}", self.base);
        let token = self.credentials.token()?;
        let mut last = String::new();
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            let mut req = self.client.post(&url).bearer_auth(&token).json(&body);
            if let Some(tp) = platform::telemetry::traceparent() {
                req = req.header("traceparent", tp);
            }
            let res = match req.send().await {
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
                    let slug = body["type"].as_str().unwrap_or("").rsplit(':').next();
                    return Err(match slug.and_then(ConflictKind::from_slug) {
                        Some(kind) => ReportError::Conflict(kind),
                        // A kind this worker does not know: not a reason to drop the job.
                        None => ReportError::Transport(format!(
                            "unknown conflict {}",
                            slug.unwrap_or_default()
                        )),
                    });
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
        retry_after: Option<std::time::Duration>,
    ) -> Result<(), ReportError> {
        let mut body = json!({"attempt": attempt, "error": error, "retryable": retryable});
        if let Some(d) = retry_after {
            body["retry_after_ms"] = json!(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        }
        self.post(job, "fail", body).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_is_renewed_at_half_its_lifetime() {
        let secret = platform::settings::Secret::new("worker-test-secret-0123456789abcdef");
        let minter = platform::auth::Minter {
            secret,
            audience: "authenticated".into(),
            issuer: None,
        };
        let c = Credentials::minted(minter, Duration::from_secs(2));
        let first = c.token().unwrap();
        assert_eq!(c.token().unwrap(), first, "reused while young");
        std::thread::sleep(Duration::from_millis(1_100));
        let second = c.token().unwrap();
        assert_ne!(second, first, "minted anew, with a later expiry");
    }
}
