//! `runledger bench browser`: screenshots of a local page through the browser executor on a
//! warm pool (what a worker does per job, without the queue): p50/p99 and jobs/s.

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Router, response::Html, routing::get};
use domain::{
    envelope::{EnvelopeMeta, JobEnvelope},
    ids::{CorrelationId, JobId, UserId},
    retry::Attempt,
    task::TaskType,
};
use futures::StreamExt;
use platform::{artifacts::DirStore, settings::Settings};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use workers::{
    executors::{BrowserExecutor, Executor},
    ssrf::Guard,
};

use super::Percentiles;

const PAGE: &str = "<html><head><style>body{font:16px sans-serif;margin:24px}\
    .card{border:1px solid #ccc;border-radius:8px;padding:16px;margin:8px 0}</style></head><body>\
    <h1>Invoice 2026-12</h1><div class=\"card\">Jobs completed: 1,204</div>\
    <div class=\"card\">Plan: PRO</div><table><tr><td>noop</td><td>900</td></tr>\
    <tr><td>browser.screenshot</td><td>304</td></tr></table></body></html>";

pub async fn run(settings: &Settings, jobs: usize, concurrency: usize) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let app = Router::new().route("/", get(|| async { Html(PAGE) }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let scratch = std::env::temp_dir().join(format!("runledger-bench-{}", std::process::id()));
    let executor = BrowserExecutor::new(
        &settings.browser,
        Guard::new(&["127.0.0.1/32".to_owned()]),
        Arc::new(DirStore::new(scratch.join("artifacts"))),
        scratch.join("profiles"),
    );
    let env = |i: usize| -> anyhow::Result<JobEnvelope> {
        Ok(JobEnvelope {
            job_id: JobId::from_uuid(uuid::Uuid::new_v4()),
            attempt: Attempt::FIRST,
            correlation_id: CorrelationId::parse(&format!("bench-{i}"))?,
            task_type: TaskType::parse("browser.screenshot")?,
            meta: EnvelopeMeta {
                user_id: UserId::from_uuid(uuid::Uuid::new_v4()),
                traceparent: None,
            },
            payload: json!({"url": url}),
        })
    };
    let cancel = CancellationToken::new();
    // Warm: every browser launched and one page rendered on each.
    for i in 0..settings.browser.pool {
        executor
            .run(&env(i)?, &cancel)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
    }
    let envs = (0..jobs).map(env).collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let results: Vec<(Duration, bool)> = futures::stream::iter(envs)
        .map(|e| {
            let (executor, cancel) = (&executor, &cancel);
            async move {
                let t = Instant::now();
                let ok = executor.run(&e, cancel).await.is_ok();
                (t.elapsed(), ok)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let wall = started.elapsed();
    let failed = results.iter().filter(|(_, ok)| !ok).count();
    let latencies = Percentiles::new(results.into_iter().map(|(d, _)| d).collect());
    println!(
        "browser.screenshot of a local page: {jobs} jobs, {concurrency} at once, pool {}",
        settings.browser.pool
    );
    println!(
        "  {:.1} jobs/s, {failed} failed",
        jobs as f64 / wall.as_secs_f64()
    );
    println!("  latency ms: {latencies}");
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
