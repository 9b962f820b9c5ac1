//! Settings of the browser and agent executors and of the artifact store (DESIGN.md section 8).

use std::{path::PathBuf, time::Duration};

use super::{Secret, SettingsError, bad, number, within};

/// The browser executor.
#[derive(Debug, Clone)]
pub struct BrowserSettings {
    /// `RUNLEDGER_CHROMIUM_PATH` (default `/usr/bin/chromium`).
    pub chromium_path: PathBuf,
    /// `RUNLEDGER_BROWSER_POOL` (default 2, 1 to 64): warm browsers per worker.
    pub pool: usize,
    /// `RUNLEDGER_BROWSER_TIMEOUT_SECS` (default 30, 1 to 600): the most one job may take.
    pub timeout: Duration,
    /// `RUNLEDGER_BROWSER_MAX_RESPONSE` in bytes (default 10 MiB, 1 KiB to 256 MiB): the most
    /// any one request of a page may load.
    pub max_response: usize,
}

/// Which wire protocol the model provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmProvider {
    /// OpenAI's chat completions and embeddings (vLLM, Ollama and LM Studio serve them too).
    OpenAi,
    /// Anthropic's messages API.
    Anthropic,
}

/// The agent executor: on when `RUNLEDGER_LLM_MODEL` is set.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// `RUNLEDGER_LLM_PROVIDER` (`openai`, the default, or `anthropic`).
    pub provider: LlmProvider,
    /// `RUNLEDGER_LLM_BASE_URL` (default the provider's own).
    pub base_url: String,
    /// `RUNLEDGER_LLM_API_KEY`: never logged.
    pub api_key: Secret,
    /// `RUNLEDGER_LLM_MODEL`.
    pub model: String,
    /// `RUNLEDGER_EMBEDDING_MODEL`: embeddings for per-user memory (always an
    /// OpenAI-compatible embeddings endpoint at `RUNLEDGER_EMBEDDING_BASE_URL`, default the
    /// LLM base URL); without it, runs are not remembered and `memory.search` is not offered.
    pub embedding_model: Option<String>,
    /// `RUNLEDGER_EMBEDDING_BASE_URL`.
    pub embedding_base_url: String,
    /// `RUNLEDGER_LLM_TIMEOUT_SECS` (default 120, 1 to 3600): one model call's limit.
    pub timeout: Duration,
}

/// Reads the browser settings.
pub(super) fn browser(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<BrowserSettings, SettingsError> {
    let n = |var: &'static str, default: u64, range| {
        within(number(get(var).as_deref(), var, default)?, var, range)
    };
    Ok(BrowserSettings {
        chromium_path: get("RUNLEDGER_CHROMIUM_PATH")
            .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from),
        pool: usize::try_from(n("RUNLEDGER_BROWSER_POOL", 2, 1..=64)?).unwrap_or(2),
        timeout: Duration::from_secs(n("RUNLEDGER_BROWSER_TIMEOUT_SECS", 30, 1..=600)?),
        max_response: usize::try_from(n(
            "RUNLEDGER_BROWSER_MAX_RESPONSE",
            10 * 1024 * 1024,
            1024..=256 * 1024 * 1024,
        )?)
        .unwrap_or(10 * 1024 * 1024),
    })
}

/// Reads the agent settings; `None` when `RUNLEDGER_LLM_MODEL` is unset.
pub(super) fn llm(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<LlmSettings>, SettingsError> {
    let Some(model) = get("RUNLEDGER_LLM_MODEL") else {
        return Ok(None);
    };
    let provider = match get("RUNLEDGER_LLM_PROVIDER").as_deref() {
        None | Some("openai") => LlmProvider::OpenAi,
        Some("anthropic") => LlmProvider::Anthropic,
        Some(_) => return Err(bad("RUNLEDGER_LLM_PROVIDER", "must be openai or anthropic")),
    };
    let url = |var: &'static str, default: &str| match get(var) {
        None => Ok(default.to_owned()),
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
            Ok(u.trim_end_matches('/').to_owned())
        }
        Some(_) => Err(bad(var, "must be an http(s) URL")),
    };
    let base_url = url(
        "RUNLEDGER_LLM_BASE_URL",
        match provider {
            LlmProvider::OpenAi => "https://api.openai.com/v1",
            LlmProvider::Anthropic => "https://api.anthropic.com",
        },
    )?;
    let api_key = get("RUNLEDGER_LLM_API_KEY")
        .map(Secret::new)
        .ok_or_else(|| {
            bad(
                "RUNLEDGER_LLM_API_KEY",
                "is required with RUNLEDGER_LLM_MODEL",
            )
        })?;
    let embedding_base_url = url("RUNLEDGER_EMBEDDING_BASE_URL", &base_url)?;
    let timeout = within(
        number(
            get("RUNLEDGER_LLM_TIMEOUT_SECS").as_deref(),
            "RUNLEDGER_LLM_TIMEOUT_SECS",
            120,
        )?,
        "RUNLEDGER_LLM_TIMEOUT_SECS",
        1..=3_600,
    )?;
    Ok(Some(LlmSettings {
        provider,
        base_url,
        api_key,
        model,
        embedding_model: get("RUNLEDGER_EMBEDDING_MODEL"),
        embedding_base_url,
        timeout: Duration::from_secs(timeout),
    }))
}
