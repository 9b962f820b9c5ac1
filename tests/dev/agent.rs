//! The agent worker under `runledger dev`, against a fake model provider written here that
//! speaks OpenAI's chat-completions and embeddings wire format (tool calls included): the
//! agent calls `http.request` and uses its answer; a user's memories reach that user's later
//! runs and never another's; a 429 with Retry-After is one retry and one unit; a 400 and a run
//! past max_steps fail at once; the API key never reaches a log line.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing,
};
use serde_json::{Value, json};

use crate::helpers::*;

const KEY: &str = "sk-test-SECRET-4242";

#[derive(Default)]
struct Fake {
    /// When each chat call whose prompt says BUSY arrived.
    busy_calls: Vec<Instant>,
    /// Calls without the right key.
    unauthorized: usize,
}

type Shared = Arc<Mutex<Fake>>;

fn text_of(m: &Value) -> String {
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The prompt: the last text part of a message (recalled memories come before it).
fn prompt_of(m: &Value) -> String {
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .rev()
            .find_map(|p| p["text"].as_str())
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

fn reply(message: Value, finish: &str) -> Response {
    Json(json!({
        "id": format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        "object": "chat.completion",
        "created": 1_796_150_000,
        "model": "fake-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
    .into_response()
}

fn tool_call(name: &str, args: Value) -> Response {
    reply(
        json!({"role": "assistant", "content": null, "tool_calls": [{
            "id": format!("call_{}", uuid::Uuid::new_v4().simple()),
            "type": "function",
            "function": {"name": name, "arguments": args.to_string()}
        }]}),
        "tool_calls",
    )
}

fn answer(text: String) -> Response {
    reply(json!({"role": "assistant", "content": text}), "stop")
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})),
    )
        .into_response()
}

fn authorized(fake: &Shared, h: &HeaderMap) -> bool {
    let ok = h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {KEY}"));
    if !ok {
        fake.lock().unwrap().unauthorized += 1;
    }
    ok
}

/// Chat completions scripted by the user's prompt (FETCH url, LOOP, BUSY, BAD, RECALL; else
/// it is noted); a tool's answer in the newest message is quoted back.
async fn chat(State(fake): State<Shared>, h: HeaderMap, Json(body): Json<Value>) -> Response {
    if !authorized(&fake, &h) {
        return error(StatusCode::UNAUTHORIZED, "bad key");
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let Some(last) = messages.last() else {
        return error(StatusCode::BAD_REQUEST, "no messages");
    };
    let prompt = messages
        .iter()
        .find(|m| m["role"] == "user")
        .map(prompt_of)
        .unwrap_or_default();
    if prompt.starts_with("LOOP") {
        return tool_call("memory_search", json!({"query": "anything"}));
    }
    if last["role"] == "tool" {
        return answer(format!("Fetched: {}", text_of(last)));
    }
    if let Some(url) = prompt.strip_prefix("FETCH ") {
        return tool_call("http_request", json!({"url": url.trim()}));
    }
    if prompt.starts_with("BAD") {
        return error(StatusCode::BAD_REQUEST, "this model does not take that");
    }
    if prompt.starts_with("BUSY") {
        let first = {
            let mut f = fake.lock().unwrap();
            f.busy_calls.push(Instant::now());
            f.busy_calls.len() == 1
        };
        if first {
            let mut res = error(StatusCode::TOO_MANY_REQUESTS, "slow down");
            res.headers_mut()
                .insert("retry-after", "3".parse().unwrap());
            return res;
        }
        return answer("done at last".to_owned());
    }
    if prompt.starts_with("RECALL") {
        // The memories rig handed over, as <file> documents anywhere in the conversation.
        let files: Vec<String> = messages
            .iter()
            .map(text_of)
            .filter(|t| t.contains("<file id:"))
            .collect();
        return answer(format!("I recall: {}", files.join(" | ")));
    }
    answer(format!("Noted: {prompt}"))
}

/// A bag of words hashed into 64 dimensions: texts sharing words are close.
fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; 64];
    for w in text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let h = w.bytes().fold(2_166_136_261u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(16_777_619)
        });
        v[(h % 64) as usize] += 1.0;
    }
    v
}

async fn embeddings(State(fake): State<Shared>, h: HeaderMap, Json(body): Json<Value>) -> Response {
    if !authorized(&fake, &h) {
        return error(StatusCode::UNAUTHORIZED, "bad key");
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        _ => return error(StatusCode::BAD_REQUEST, "no input"),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": embed(t)}))
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": inputs.len() * 3, "total_tokens": inputs.len() * 3}
    }))
    .into_response()
}

/// The fake provider's base URL (with `/v1`).
async fn provider(fake: Shared) -> String {
    let app = Router::new()
        .route("/v1/chat/completions", routing::post(chat))
        .route("/v1/embeddings", routing::post(embeddings))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

/// An agent job as `token`, to its end.
async fn run_as(dev: &Dev, token: &str, payload: Value) -> Value {
    run_job(dev, token, "agent.run", payload, 60).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_uses_tools_remembers_per_user_retries_politely_and_keeps_its_key() {
    let fake = Shared::default();
    let base = provider(fake.clone()).await;
    let page = {
        let app = Router::new().route(
            "/weather",
            routing::get(|| async { "the weather is sunny" }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/weather")
    };
    let dir = std::env::temp_dir().join(format!("runledger-agent-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let dev = Dev::start(
        &["--data-dir", dir.to_str().unwrap()],
        &[
            ("RUNLEDGER_HTTP_ALLOW", "127.0.0.1/32"),
            ("RUNLEDGER_LOG", "debug"),
            ("RUNLEDGER_LLM_MODEL", "fake-model"),
            ("RUNLEDGER_LLM_BASE_URL", &base),
            ("RUNLEDGER_LLM_API_KEY", KEY),
            ("RUNLEDGER_EMBEDDING_MODEL", "fake-embed"),
        ],
    );
    let alice = dev.token.clone();
    let bob = new_customer(&dir);

    // A tool call, its answer used, two steps.
    let job = run_as(&dev, &alice, json!({"prompt": format!("FETCH {page}")})).await;
    assert_eq!(job["status"], "completed", "{job}");
    let r = &job["result"];
    assert!(r["answer"].as_str().unwrap().contains("sunny"), "{r}");
    assert_eq!(r["steps"], 2, "{r}");
    assert_eq!(r["tool_calls"][0]["name"], "http.request", "{r}");
    assert_eq!(r["tool_calls"][0]["arguments"]["url"], page.as_str(), "{r}");
    assert!(
        r["tool_calls"][0]["output"]
            .as_str()
            .unwrap()
            .contains("sunny"),
        "{r}"
    );
    assert_eq!(r["usage"]["total_tokens"], 30, "{r}");

    // Memory: each user's first run reaches their own second run only.
    for (token, word) in [(&alice, "alpha"), (&bob, "bravo")] {
        let job = run_as(
            &dev,
            token,
            json!({"prompt": format!("my secret word is {word}")}),
        )
        .await;
        assert_eq!(job["status"], "completed", "{job}");
    }
    for (token, mine, theirs) in [(&alice, "alpha", "bravo"), (&bob, "bravo", "alpha")] {
        let job = run_as(
            &dev,
            token,
            json!({"prompt": "RECALL my secret word", "tools": []}),
        )
        .await;
        let said = job["result"]["answer"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(said.contains(&format!("my secret word is {mine}")), "{job}");
        assert!(
            !said.contains(theirs),
            "another user's memory leaked: {job}"
        );
    }

    // 429 with Retry-After: 3 → one retry, not before 3 s, and one unit for the job.
    let before = get(&dev, &alice, "/v1/usage").await.1["consumed"]
        .as_i64()
        .unwrap();
    let job = run_as(&dev, &alice, json!({"prompt": "BUSY now"})).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    let calls = fake.lock().unwrap().busy_calls.clone();
    assert_eq!(calls.len(), 2);
    assert!(
        calls[1] - calls[0] >= Duration::from_secs(3),
        "Retry-After not respected: {:?}",
        calls[1] - calls[0]
    );
    let after = get(&dev, &alice, "/v1/usage").await.1["consumed"]
        .as_i64()
        .unwrap();
    assert_eq!(after - before, 1);

    // A 400 is fatal; so is running out of steps.
    let job = run_as(&dev, &alice, json!({"prompt": "BAD idea"})).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("failed"), Some(1)),
        "{job}"
    );
    assert!(job["error"].as_str().unwrap().contains("400"), "{job}");
    let job = run_as(
        &dev,
        &alice,
        json!({"prompt": "LOOP forever", "max_steps": 2}),
    )
    .await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("failed"), Some(1)),
        "{job}"
    );
    assert!(
        job["error"].as_str().unwrap().contains("within 2 steps"),
        "{job}"
    );

    assert_eq!(
        fake.lock().unwrap().unauthorized,
        0,
        "a call without the key"
    );
    let lines = dev.output.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.contains("DEBUG")),
        "no debug log was captured"
    );
    assert!(
        !lines.iter().any(|l| l.contains("SECRET-4242")),
        "the API key reached a log line"
    );
}
