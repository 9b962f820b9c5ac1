//! `runledger bench agent`: the agent executor's orchestration overhead against a local fake
//! provider that answers after a fixed model time: each run recalls memories (an embedding),
//! asks for `http.request`, calls a local page, answers, and is remembered (an embedding).
//! Overhead = the run's wall time minus the time the fake spent answering.

use std::{
    collections::HashMap,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Json, Router, extract::State, routing::post};
use domain::{
    envelope::{EnvelopeMeta, JobEnvelope},
    ids::{CorrelationId, JobId, UserId},
    retry::Attempt,
    task::TaskType,
};
use futures::StreamExt;
use platform::settings::{LlmProvider, LlmSettings, Secret, Settings};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use workers::{
    executors::{AgentExecutor, Executor, Generic, agent::memory::MemMemory},
    ssrf::Guard,
};

use super::Percentiles;

/// The fake provider: a fixed model time per chat call; the time it spent answering each
/// run (found by the last `run-<n>` tag in a request: recalled memories of earlier runs come
/// before the prompt).
#[derive(Clone)]
struct Fake {
    model_time: Duration,
    spent: Arc<Mutex<HashMap<String, Duration>>>,
    page: String,
}

impl Fake {
    fn charge(&self, body: &Value, since: Instant) {
        let text = body.to_string();
        let Some(at) = text.rfind("run-") else { return };
        let tag: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if let Ok(mut m) = self.spent.lock() {
            *m.entry(tag).or_default() += since.elapsed();
        }
    }

    fn spent_on(&self, tag: &str) -> Duration {
        self.spent
            .lock()
            .ok()
            .and_then(|m| m.get(tag).copied())
            .unwrap_or_default()
    }
}

async fn chat(State(f): State<Fake>, Json(body): Json<Value>) -> Json<Value> {
    let t = Instant::now();
    tokio::time::sleep(f.model_time).await;
    let last = body["messages"].as_array().and_then(|m| m.last()).cloned();
    let message = if last.is_some_and(|m| m["role"] == "tool") {
        json!({"role": "assistant", "content": "The invoice page lists 1,204 jobs."})
    } else {
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "http_request", "arguments": json!({"url": f.page}).to_string()}}]})
    };
    let finish = if message["tool_calls"].is_null() {
        "stop"
    } else {
        "tool_calls"
    };
    f.charge(&body, t);
    Json(
        json!({"id": "c", "object": "chat.completion", "model": "bench", "choices": [{"index": 0,
        "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50}}),
    )
}

async fn embeddings(State(f): State<Fake>, Json(body): Json<Value>) -> Json<Value> {
    let t = Instant::now();
    let n = body["input"].as_array().map_or(1, Vec::len);
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.5, 0.25, 0.125, 1.0]}))
        .collect();
    f.charge(&body, t);
    Json(
        json!({"object": "list", "data": data, "model": "bench-embed",
        "usage": {"prompt_tokens": 4, "total_tokens": 4}}),
    )
}

async fn serve(app: Router) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

pub async fn run(
    settings: &Settings,
    runs: usize,
    concurrency: usize,
    model_ms: u64,
) -> anyhow::Result<ExitCode> {
    let page = serve(Router::new().route(
        "/invoice",
        axum::routing::get(|| async { "Invoice 2026-12: 1,204 jobs" }),
    ))
    .await?;
    let fake = Fake {
        model_time: Duration::from_millis(model_ms),
        spent: Arc::default(),
        page: format!("{page}/invoice"),
    };
    let base = serve(
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .with_state(fake.clone()),
    )
    .await?;
    let llm = LlmSettings {
        provider: LlmProvider::OpenAi,
        base_url: format!("{base}/v1"),
        api_key: Secret::new("sk-bench"),
        model: "bench".to_owned(),
        embedding_model: Some("bench-embed".to_owned()),
        embedding_base_url: format!("{base}/v1"),
        timeout: settings
            .llm
            .as_ref()
            .map_or(Duration::from_secs(60), |l| l.timeout),
    };
    let allow = ["127.0.0.1/32".to_owned()];
    let executor = AgentExecutor::new(
        &llm,
        Arc::new(MemMemory::default()),
        Generic::new(Guard::new(&allow)),
    )?;
    let users: Vec<UserId> = (0..16)
        .map(|_| UserId::from_uuid(uuid::Uuid::new_v4()))
        .collect();
    let env = |i: usize| -> anyhow::Result<JobEnvelope> {
        Ok(JobEnvelope {
            job_id: JobId::from_uuid(uuid::Uuid::new_v4()),
            attempt: Attempt::FIRST,
            correlation_id: CorrelationId::parse(&format!("bench-{i}"))?,
            task_type: TaskType::parse("agent.run")?,
            meta: EnvelopeMeta {
                user_id: users[i % users.len()],
                traceparent: None,
            },
            payload: json!({"prompt": format!("run-{i}: how many jobs does my invoice list?")}),
        })
    };
    let cancel = CancellationToken::new();
    let envs = (0..runs).map(env).collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let results: Vec<(Duration, bool)> = futures::stream::iter(envs.into_iter().enumerate())
        .map(|(i, e)| {
            let (executor, cancel, fake) = (&executor, &cancel, &fake);
            async move {
                let t = Instant::now();
                let ok = executor.run(&e, cancel).await.is_ok();
                let provider = fake.spent_on(&format!("run-{i}"));
                (t.elapsed().saturating_sub(provider), ok)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let wall = started.elapsed();
    let failed = results.iter().filter(|(_, ok)| !ok).count();
    let overhead = Percentiles::new(results.into_iter().map(|(d, _)| d).collect());
    println!(
        "agent.run against a fake provider ({model_ms} ms per model call): {runs} runs, {concurrency} at once"
    );
    println!("  2 model calls, 2 embeddings, 1 http.request per run; {failed} failed");
    println!("  {:.1} runs/s", runs as f64 / wall.as_secs_f64());
    println!("  orchestration overhead ms (run minus provider time): {overhead}");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
