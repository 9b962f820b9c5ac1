//! Every metric an alert rule or a Grafana dashboard names is exposed by some role's
//! `/metrics` once real jobs ran: the roles apart, a browser worker, an agent worker on a
//! fake model provider and the billing role on a fake Stripe.

use std::{collections::BTreeSet, time::Duration};

use axum::{Json, Router, http::StatusCode, routing};
use domain::ids::UserId;
use platform::stripe_fake::FakeStripe;
use serde_json::{Value, json};

use crate::{
    helpers::{final_status, serve, submit},
    stack::{Seen, Stack, token, watch},
};

/// `runledger_*` names in `text` (PromQL expressions, dashboard JSON).
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("runledger_") {
        if i > 0
            && text[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let end = text[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| i + e);
        names.insert(text[i..end].to_owned());
    }
    names
}

/// Every metric family named by `deploy/` (alert rules, recording rules, dashboards).
pub fn named_by_deploy() -> BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut names =
        metric_names(&std::fs::read_to_string(root.join("prometheus/alerts.yml")).unwrap());
    for entry in std::fs::read_dir(root.join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        names.extend(metric_names(&std::fs::read_to_string(path).unwrap()));
    }
    names
}

/// The families of a text exposition, from its `# TYPE` lines.
fn families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Whether `name` is exposed: a family, or a histogram's `_bucket`, `_sum` or `_count`.
fn exposed(all: &BTreeSet<String>, name: &str) -> bool {
    all.contains(name)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|base| all.contains(base)))
}

/// A model provider that answers every chat completion at once, with token usage.
async fn chat() -> Json<Value> {
    Json(json!({
        "id": "chatcmpl-ops",
        "object": "chat.completion",
        "created": 1_796_150_000,
        "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "done"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_the_alerts_and_dashboards_name_is_exposed_by_a_role() {
    let named = named_by_deploy();
    assert!(named.len() >= 10, "deploy/ names only {named:?}");

    let stripe = FakeStripe::start("runledger_jobs").await;
    let llm = serve(Router::new().route("/v1/chat/completions", routing::post(chat))).await;
    let site = serve(
        Router::new()
            .route(
                "/page",
                routing::get(|| async {
                    axum::response::Html("<html><body><h1>ops</h1></body></html>")
                }),
            )
            .route(
                "/broken",
                routing::get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
            ),
    )
    .await;
    let stripe_base = stripe.base_url();
    let llm_base = format!("{llm}/v1");
    let artifacts = std::env::temp_dir().join(format!("runledger-ops-{}", uuid::Uuid::new_v4()));
    let artifacts = artifacts.to_string_lossy().into_owned();
    let mut stack = Stack::start_with(&[
        ("RUNLEDGER_HTTP_ALLOW", "127.0.0.1/32"),
        ("RUNLEDGER_LLM_MODEL", "fake-model"),
        ("RUNLEDGER_LLM_BASE_URL", llm_base.as_str()),
        ("RUNLEDGER_LLM_API_KEY", "sk-ops-test"),
        ("STRIPE_SECRET_KEY", stripe.secret_key()),
        ("STRIPE_WEBHOOK_SECRET", "whsec_ops_test"),
        ("STRIPE_PRICE_PRO", "price_pro"),
        ("STRIPE_API_BASE", stripe_base.as_str()),
        ("RUNLEDGER_BILLING_REPORT_SECS", "10"),
        ("RUNLEDGER_ARTIFACTS_DIR", artifacts.as_str()),
    ])
    .await;
    let command = stack.writes[0].clone();
    stack.add_role(
        "worker-browser",
        &["worker", "--namespace", "browser", "--concurrency", "2"],
        &[("RUNLEDGER_COMMAND_URL", command.clone())],
    );
    stack.add_role("billing", &["billing"], &[]);

    let user = UserId::from_uuid(uuid::Uuid::new_v4());
    let token = token(user);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(watch(
        stack.read.clone(),
        token.clone(),
        std::sync::Arc::new(std::sync::Mutex::new(Seen::default())),
        stop.clone(),
    ));
    let done = submit(
        &stack,
        &token,
        json!({"task_type": "noop", "payload": {}}),
        &[],
    )
    .await;
    let page =
        json!({"task_type": "browser.screenshot", "payload": {"url": format!("{site}/page")}});
    let browser = submit(&stack, &token, page, &[]).await;
    let prompt = json!({"task_type": "agent.run", "payload": {"prompt": "say done"}});
    let agent = submit(&stack, &token, prompt, &[]).await;
    let broken = json!({
        "task_type": "http.request",
        "payload": {"url": format!("{site}/broken")},
        "max_attempts": 2
    });
    let broken = submit(&stack, &token, broken, &[]).await;
    let sleep = json!({"task_type": "sleep", "payload": {"ms": 20_000}});
    let slow = submit(&stack, &token, sleep, &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let res = stack
        .client
        .post(format!("{command}/v1/jobs/{slow}/cancel"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // A webhook with a bad signature: refused and counted.
    let res = stack
        .client
        .post(format!("{command}/v1/billing/webhook"))
        .header("stripe-signature", "t=1,v1=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    assert_eq!(final_status(&stack, &token, &done).await, "completed");
    assert_eq!(final_status(&stack, &token, &browser).await, "completed");
    assert_eq!(final_status(&stack, &token, &agent).await, "completed");
    assert_eq!(final_status(&stack, &token, &broken).await, "failed");
    assert_eq!(final_status(&stack, &token, &slow).await, "canceled");

    // Scraped until every named metric shows up (the billing role reconciles on its
    // schedule), then every name must be exposed somewhere.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = BTreeSet::new();
        for (_, url) in stack.addrs() {
            if let Ok(r) = stack.client.get(format!("{url}/metrics")).send().await {
                all.extend(families(&r.text().await.unwrap_or_default()));
            }
        }
        let missing: Vec<&String> = named.iter().filter(|n| !exposed(&all, n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "named in deploy/ but exposed by no role: {missing:?}\nexposed: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.cancel();
}
