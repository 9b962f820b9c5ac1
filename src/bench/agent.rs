//! `runledger bench agent`: the agent executor's orchestration overhead against a local fake
//! provider that answers after a fixed model time: each run recalls memories (an embedding),
//! asks for `http.request`, calls a local page, answers, and is remembered (an embedding).
//! Overhead = the run's wall time minus the time the fake spent answering.

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
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

/// The fake provider: a fixed model time per chat call; what it spent, in microseconds.
#[derive(Clone)]
struct Fake {
    model_time: Duration,
    spent_us: Arc<AtomicU64>,
    page: String,
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
    f.spent_us
        .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
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
    f.spent_us
        .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
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
    let spent_us = Arc::new(AtomicU64::new(0));
    let fake = Fake {
        model_time: Duration::from_millis(model_ms),
        spent_us: spent_us.clone(),
        page: format!("{page}/invoice"),
    };
    let base = serve(
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .with_state(fake),
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
            },
            payload: json!({"prompt": "How many jobs does my invoice list?"}),
        })
    };
    let cancel = CancellationToken::new();
    let envs = (0..runs).map(env).collect::<anyhow::Result<Vec<_>>>()?;
    // Runs one at a time per slot so each run's share of the fake's time is its own.
    let started = Instant::now();
    let results: Vec<(Duration, bool)> = futures::stream::iter(envs)
        .map(|e| {
            let (executor, cancel, spent) = (&executor, &cancel, &spent_us);
            async move {
                let before = spent.load(Ordering::Relaxed);
                let t = Instant::now();
                let ok = executor.run(&e, cancel).await.is_ok();
                let wall = t.elapsed();
                let provider = Duration::from_micros(spent.load(Ordering::Relaxed) - before);
                (wall.saturating_sub(provider), ok)
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
