//! `runledger bench drain`: a burst of noop jobs submitted by several users at once (a fixed
//! number of submissions in flight), timed from the first submission to the last SSE
//! `completed`: the method the peer queues are measured with (bench/peers).

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use platform::settings::Settings;
use serde_json::Value;

use super::{
    sse::{Arrivals, arrived, wait_all, watch_streams},
    tokens,
};

pub async fn run(
    settings: &Settings,
    write: &str,
    read: &str,
    jobs: usize,
    concurrency: usize,
    users: usize,
) -> anyhow::Result<ExitCode> {
    let users = tokens(settings, users)?;
    let client = reqwest::Client::new();
    let arrivals: Arrivals = Arc::default();
    watch_streams(&client, read, &users, &arrivals, "completed").await?;
    let url = format!("{write}/v1/jobs");
    let started = Instant::now();
    let ids: Vec<String> = stream::iter(0..jobs)
        .map(|i| {
            let (client, url, token) = (&client, &url, &users[i % users.len()].1);
            async move {
                let res = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&serde_json::json!({"task_type": "noop", "payload": {}}))
                    .send()
                    .await
                    .ok()?;
                let v: Value = res.json().await.ok()?;
                v["job_id"].as_str().map(str::to_owned)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|id| async move { id })
        .collect()
        .await;
    let submitted = started.elapsed();
    // Done when every accepted job's `completed` arrived, or after ten minutes.
    let last = wait_all(&arrivals, &ids, Duration::from_secs(600)).await;
    let done = arrived(&arrivals, &ids);
    // Short of all of them, the rate is over the whole wait.
    let secs = last
        .map_or_else(
            || started.elapsed(),
            |l| l.saturating_duration_since(started),
        )
        .as_secs_f64();
    println!(
        "bench drain: {jobs} noop jobs, {concurrency} submissions in flight, {} users",
        users.len()
    );
    println!(
        "  accepted           {} in {:.2} s",
        ids.len(),
        submitted.as_secs_f64()
    );
    println!("  completed          {done} after {secs:.2} s");
    println!(
        "  drain jobs/s       {:.0}",
        done as f64 / secs.max(f64::EPSILON)
    );
    Ok(if done == jobs {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
