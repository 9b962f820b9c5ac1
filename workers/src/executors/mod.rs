//! Executors: what a worker runs for each task type.

pub mod browser;
mod generic;

use std::time::Duration;

use domain::envelope::JobEnvelope;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use browser::BrowserExecutor;
pub use generic::Generic;

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    /// What went wrong, for the job's error.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl ExecError {
    /// A failure a retry may fix (a timeout, a 503).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry fixes (a bad payload, a forbidden destination).
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Runs envelopes of some task types.
pub trait Executor: Send + Sync + 'static {
    /// Whether this executor runs `task_type`.
    fn handles(&self, task_type: &str) -> bool;

    /// The longest an attempt of `task_type` may take.
    fn timeout(&self, _task_type: &str) -> Duration {
        Duration::from_secs(60)
    }

    /// Runs one attempt; stops early when `cancel` fires.
    fn run(
        &self,
        env: &JobEnvelope,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Value, ExecError>> + Send;
}

/// Every executor this worker has: the generic ones always, the browser when built with one.
#[derive(Clone, Default)]
pub struct Executors {
    /// `noop`, `sleep`, `http.request`.
    pub generic: Generic,
    /// `browser.*`.
    pub browser: Option<BrowserExecutor>,
}

impl Executor for Executors {
    fn handles(&self, task_type: &str) -> bool {
        self.generic.handles(task_type)
            || self.browser.as_ref().is_some_and(|b| b.handles(task_type))
    }

    fn timeout(&self, task_type: &str) -> Duration {
        match &self.browser {
            Some(b) if b.handles(task_type) => b.timeout(task_type),
            _ => self.generic.timeout(task_type),
        }
    }

    async fn run(&self, env: &JobEnvelope, cancel: &CancellationToken) -> Result<Value, ExecError> {
        let t = env.task_type.as_str();
        match &self.browser {
            Some(b) if b.handles(t) => b.run(env, cancel).await,
            None if t.starts_with("browser.") => Err(ExecError::fatal(
                "this worker has no browser (see RUNLEDGER_CHROMIUM_PATH)",
            )),
            _ => self.generic.run(env, cancel).await,
        }
    }
}
