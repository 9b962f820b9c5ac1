//! `agent.run`: an LLM agent through rig (0.44) against an OpenAI-compatible (chat
//! completions and embeddings) or Anthropic-compatible endpoint, with the tools
//! `http.request` (the SSRF guard of the generic executor) and `memory.search` (the user's own
//! memories), and per-user memory of finished runs.

pub mod memory;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use domain::{
    envelope::JobEnvelope,
    payload::{self, AgentRun, AgentTool, HttpRequest},
};
use platform::settings::{LlmProvider, LlmSettings};
use rig_agent::{AgentBuilder, completion::PromptError};
use rig_core::{
    DynModel,
    completion::Document,
    message::ToolName,
    operation::{Completion, Embedding as EmbeddingOp},
    providers::{anthropic::AnthropicConfig, openai::OpenAIConfig},
    tool::{DynamicTool, ToolExecutionError, ToolOutput},
    vector_store::{VectorSearchRequest, VectorStoreIndex},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use self::memory::{MemoryStore, UserMemory};
use super::{ExecError, Executor, Generic};

/// Steps (model calls) when the payload names none.
const DEFAULT_STEPS: u32 = 8;
/// Memories handed to a run before it starts.
const RECALLED: u64 = 3;
/// The longest text remembered of a run.
const MAX_MEMORY: usize = 4 * 1024;
/// The most of a tool's answer shown to the model and kept in the result.
const MAX_TOOL_OUTPUT: usize = 8 * 1024;
const DEFAULT_SYSTEM: &str =
    "You are a careful assistant. Use the tools when they help, and answer concisely.";

/// The agent executor.
#[derive(Clone)]
pub struct AgentExecutor {
    model: DynModel<Completion>,
    embedder: Option<DynModel<EmbeddingOp>>,
    memory: Arc<dyn MemoryStore>,
    http: Generic,
    call_timeout: Duration,
}

/// Why the agent could not be built from the settings.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the model client: {0}")]
pub struct AgentSetupError(String);

impl AgentExecutor {
    /// An agent on `settings`' provider, with memories in `memory` and `http` for the
    /// `http.request` tool.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        settings: &LlmSettings,
        memory: Arc<dyn MemoryStore>,
        http: Generic,
    ) -> Result<Self, AgentSetupError> {
        let client = platform::http_client()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| AgentSetupError(e.to_string()))?;
        let transport = rig_reqwest::ReqwestClient::from(client);
        let key = settings.api_key.expose().to_owned();
        let model: DynModel<Completion> = match settings.provider {
            LlmProvider::OpenAi => OpenAIConfig::new(key.clone())
                .with_base_url(settings.base_url.clone())
                .connect(transport.clone())
                .chat(settings.model.clone())
                .into(),
            LlmProvider::Anthropic => AnthropicConfig::new(key.clone())
                .with_base_url(&settings.base_url)
                .connect(transport.clone())
                .completion(settings.model.clone())
                .into(),
        };
        let embedder = settings.embedding_model.as_ref().map(|m| {
            OpenAIConfig::new(key.clone())
                .with_base_url(settings.embedding_base_url.clone())
                .connect(transport.clone())
                .embedding(m.clone(), None)
                .into()
        });
        Ok(Self {
            model,
            embedder,
            memory,
            http,
            call_timeout: settings.timeout,
        })
    }

    async fn job(&self, env: &JobEnvelope) -> Result<Value, ExecError> {
        let p: AgentRun =
            payload::read(&env.payload).map_err(|e| ExecError::fatal(e.to_string()))?;
        let user = env.meta.user_id.as_uuid();
        let offered = p
            .tools
            .clone()
            .unwrap_or_else(|| vec![AgentTool::HttpRequest, AgentTool::MemorySearch]);
        let index = self.embedder.clone().map(|embedder| UserMemory {
            store: self.memory.clone(),
            user,
            embedder,
        });
        let recalled = match &index {
            Some(ix) => recall(ix, &p.prompt, RECALLED).await?,
            None => Vec::new(),
        };
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut tools = Vec::new();
        if offered.contains(&AgentTool::HttpRequest) {
            tools.push(http_tool(self.http.clone(), calls.clone())?);
        }
        if let (true, Some(ix)) = (offered.contains(&AgentTool::MemorySearch), &index) {
            tools.push(memory_tool(ix.clone(), calls.clone())?);
        }
        let steps = p.max_steps.unwrap_or(DEFAULT_STEPS) as usize;
        let builder = AgentBuilder::new(self.model.clone())
            .preamble(p.system.as_deref().unwrap_or(DEFAULT_SYSTEM))
            .max_tokens(4096)
            .default_max_turns(steps);
        let agent = if tools.is_empty() {
            builder.build()
        } else {
            builder.dynamic_tools(tools).build()
        };
        let started = Instant::now();
        let run = agent
            .prompt(p.prompt.as_str())
            .documents(recalled)
            .max_turns(steps)
            .await;
        metrics::histogram!("runledger_agent_run_seconds").record(started.elapsed().as_secs_f64());
        let resp = run.map_err(|e| classify(&e))?;
        let answer = resp.output();
        let usage = &resp.usage;
        for (kind, n) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
        ] {
            metrics::counter!("runledger_agent_tokens_total", "kind" => kind)
                .increment(n.unwrap_or(0));
        }
        if let Some(ix) = &index {
            self.remember(ix, &p.prompt, &answer).await;
        }
        let tool_calls = calls.lock().map(|c| c.clone()).unwrap_or_default();
        Ok(json!({
            "answer": answer,
            "steps": resp.requests(),
            "tool_calls": tool_calls,
            "usage": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "total_tokens": usage.total_tokens,
            },
        }))
    }

    /// Keeps the finished run for the user's later runs. A failure here does not fail a run
    /// whose answer is already paid for: it is logged and counted.
    async fn remember(&self, ix: &UserMemory, prompt: &str, answer: &str) {
        let text = cut(&format!("Q: {prompt}\nA: {answer}"), MAX_MEMORY);
        let stored = match ix.embedder.embed_text(&text).await {
            Ok(e) => {
                let v: Vec<f32> = e.vec.iter().map(|x| *x as f32).collect();
                self.memory
                    .remember(ix.user, &text, &v)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = stored {
            metrics::counter!("runledger_agent_memory_failures_total").increment(1);
            tracing::warn!(message = "A finished agent run was not remembered.", error = %e);
        }
    }
}

/// The user's memories closest to `prompt`, as documents for the model.
async fn recall(ix: &UserMemory, prompt: &str, n: u64) -> Result<Vec<Document>, ExecError> {
    let req = VectorSearchRequest::builder()
        .query(prompt)
        .samples(n)
        .build();
    let found = ix
        .top_n::<Value>(req)
        .await
        .map_err(|e| ExecError::retryable(format!("recalling memories failed: {e}")))?;
    Ok(found
        .into_iter()
        .map(|r| Document {
            id: format!("memory-{}", r.id),
            text: r.document["text"].as_str().unwrap_or_default().to_owned(),
            additional_props: Default::default(),
        })
        .collect())
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn tool_name(name: &str) -> Result<ToolName, ExecError> {
    ToolName::new(name).map_err(|e| ExecError::fatal(e.to_string()))
}

fn record(calls: &Mutex<Vec<Value>>, name: &str, args: &Value, out: &Result<String, String>) {
    if let Ok(mut c) = calls.lock() {
        c.push(match out {
            Ok(o) => json!({"name": name, "arguments": args, "output": o}),
            Err(e) => json!({"name": name, "arguments": args, "error": e}),
        });
    }
}

/// `http.request` for the model, as `http_request` (tool names allow no dot): the generic
/// executor's request, behind the same SSRF guard.
fn http_tool(http: Generic, calls: Arc<Mutex<Vec<Value>>>) -> Result<DynamicTool, ExecError> {
    let schema = serde_json::to_value(schemars::schema_for!(HttpRequest))
        .map_err(|e| ExecError::fatal(e.to_string()))?;
    Ok(DynamicTool::new(
        tool_name("http_request")?,
        "Makes one HTTP request (GET by default) and returns its status and the first 64 KiB of its body. Private and internal addresses are refused.",
        schema,
        move |args: Value| {
            let (http, calls) = (http.clone(), calls.clone());
            Box::pin(async move {
                let out = match payload::read::<HttpRequest>(&args) {
                    Ok(req) => http
                        .http(req)
                        .await
                        .map(|v| cut(&v.to_string(), MAX_TOOL_OUTPUT))
                        .map_err(|e| e.message),
                    Err(e) => Err(e.to_string()),
                };
                record(&calls, "http.request", &args, &out);
                out.map(ToolOutput::text).map_err(ToolExecutionError::other)
            })
        },
    ))
}

/// `memory.search` for the model, as `memory_search`: the user's own memories only.
fn memory_tool(ix: UserMemory, calls: Arc<Mutex<Vec<Value>>>) -> Result<DynamicTool, ExecError> {
    let schema = json!({
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What to look for"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 10}
        },
        "required": ["query"]
    });
    Ok(DynamicTool::new(
        tool_name("memory_search")?,
        "Searches what this user's earlier runs asked and answered; returns the closest entries.",
        schema,
        move |args: Value| {
            let (ix, calls) = (ix.clone(), calls.clone());
            Box::pin(async move {
                let query = args["query"].as_str().unwrap_or_default().to_owned();
                let limit = args["limit"].as_u64().unwrap_or(3).clamp(1, 10);
                let out = if query.is_empty() {
                    Err("`query` is required".to_owned())
                } else {
                    let req = VectorSearchRequest::builder()
                        .query(query)
                        .samples(limit)
                        .build();
                    ix.top_n::<Value>(req)
                        .await
                        .map(|found| {
                            let texts: Vec<Value> = found
                                .into_iter()
                                .map(|r| r.document["text"].clone())
                                .collect();
                            cut(&Value::from(texts).to_string(), MAX_TOOL_OUTPUT)
                        })
                        .map_err(|e| e.to_string())
                };
                record(&calls, "memory.search", &args, &out);
                out.map(ToolOutput::text).map_err(ToolExecutionError::other)
            })
        },
    ))
}

/// A failed run as a job failure: the provider's 408, 429 and 5xx (and transport failures)
/// are retryable, after its `Retry-After` when it sent one; its other 4xx are fatal; running
/// out of steps is fatal.
fn classify(e: &PromptError) -> ExecError {
    if let PromptError::MaxTurns { max_turns, .. } = e {
        return ExecError::fatal(format!(
            "the agent gave no answer within {max_turns} steps (max_steps)"
        ));
    }
    if let PromptError::UnknownToolCall { tool_name, .. } = e {
        return ExecError::fatal(format!("the model called an unknown tool `{tool_name}`"));
    }
    match e.provider_response_status() {
        Some(s) if s.as_u16() == 408 || s.as_u16() == 429 || s.is_server_error() => {
            let after = e
                .provider_response_headers()
                .and_then(|h| h.get(reqwest::header::RETRY_AFTER))
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after);
            ExecError::retryable_after(format!("the model provider answered {s}"), after)
        }
        Some(s) => ExecError::fatal(format!("the model provider refused the request: {s}")),
        None => ExecError::retryable(format!("the model call failed: {e}")),
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

impl Executor for AgentExecutor {
    fn handles(&self, task_type: &str) -> bool {
        task_type == "agent.run"
    }

    fn timeout(&self, _task_type: &str) -> Duration {
        // Every step may take a whole model call, plus its tools.
        (self.call_timeout + Duration::from_secs(60)) * (payload::MAX_AGENT_STEPS + 1)
    }

    async fn run(&self, env: &JobEnvelope, cancel: &CancellationToken) -> Result<Value, ExecError> {
        tokio::select! {
            () = cancel.cancelled() => Err(ExecError::fatal("canceled")),
            r = self.job(env) => r,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let d = retry_after(&later).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("abc", 10), "abc");
    }
}
