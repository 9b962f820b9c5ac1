//! Executors: what a worker runs for each task type.

pub mod agent;
pub mod browser;
mod generic;

use std::time::Duration;

use domain::envelope::JobEnvelope;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use agent::AgentExecutor;
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
    /// The least wait before another attempt that the failed call asked for.
    pub retry_after: Option<Duration>,
}

impl ExecError {
    /// A failure a retry may fix (a timeout, a 503).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }

    /// A failure a retry may fix, not before `after` (an HTTP `Retry-After`).
    pub fn retryable_after(message: impl Into<String>, after: Option<Duration>) -> Self {
        Self {
            retry_after: after,
            ..Self::retryable(message)
        }
    }

    /// A failure no retry fixes (a bad payload, a forbidden destination).
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            retry_after: None,
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

/// Every executor this worker has: the generic ones always, the browser and the agent when
/// built with them.
#[derive(Clone, Default)]
pub struct Executors {
    /// `noop`, `sleep`, `http.request`.
    pub generic: Generic,
    /// `browser.*`.
    pub browser: Option<BrowserExecutor>,
    /// `agent.run`, when a model is configured.
    pub agent: Option<AgentExecutor>,
}

impl Executor for Executors {
    fn handles(&self, task_type: &str) -> bool {
        self.generic.handles(task_type)
            || self.browser.as_ref().is_some_and(|b| b.handles(task_type))
            || self.agent.as_ref().is_some_and(|a| a.handles(task_type))
    }

    fn timeout(&self, task_type: &str) -> Duration {
        match (&self.browser, &self.agent) {
            (Some(b), _) if b.handles(task_type) => b.timeout(task_type),
            (_, Some(a)) if a.handles(task_type) => a.timeout(task_type),
            _ => self.generic.timeout(task_type),
        }
    }

    async fn run(&self, env: &JobEnvelope, cancel: &CancellationToken) -> Result<Value, ExecError> {
        let t = env.task_type.as_str();
        match (&self.browser, &self.agent) {
            (Some(b), _) if b.handles(t) => b.run(env, cancel).await,
            (_, Some(a)) if a.handles(t) => a.run(env, cancel).await,
            (None, _) if t.starts_with("browser.") => Err(ExecError::fatal(
                "this worker has no browser (see RUNLEDGER_CHROMIUM_PATH)",
            )),
            (_, None) if t == "agent.run" => Err(ExecError::fatal(
                "this worker has no model (see RUNLEDGER_LLM_MODEL)",
            )),
            _ => self.generic.run(env, cancel).await,
        }
    }
}
