//! `runledger bench fair`: a light user's latency (POST → SSE `completed`) alone, during a
//! heavy user's burst and during its drain, and the heavy user's drain rate, against running
//! roles (or `dev`).

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{StreamExt, stream};
use platform::settings::Settings;
use serde_json::{Value, json};

use super::{
    Percentiles,
    sse::{Arrivals, arrived, wait_all, watch_streams},
    tokens,
};

struct Bench {
    client: reqwest::Client,
    write: String,
    arrivals: Arrivals,
}

impl Bench {
    async fn submit(&self, token: &str) -> Option<(String, Instant)> {
        let t0 = Instant::now();
        let res = self
            .client
            .post(format!("{}/v1/jobs", self.write))
            .bearer_auth(token)
            .json(&json!({"task_type": "noop", "payload": {}}))
            .send()
            .await
            .ok()?;
        let v: Value = res.json().await.ok()?;
        Some((v["job_id"].as_str()?.to_owned(), t0))
    }

    /// `n` jobs one per 100 ms; their latencies once done (or after 30 s).
    async fn light(&self, token: &str, n: usize) -> (Vec<Duration>, usize) {
        let mut sent = Vec::new();
        for _ in 0..n {
            sent.extend(self.submit(token).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
        wait_all(&self.arrivals, &ids, Duration::from_secs(30)).await;
        let arrivals = self.arrivals.lock().map(|a| a.clone()).unwrap_or_default();
        let lat: Vec<Duration> = sent
            .iter()
            .filter_map(|(id, t0)| arrivals.get(id).map(|a| a.saturating_duration_since(*t0)))
            .collect();
        let missing = n - lat.len();
        (lat, missing)
    }
}

pub async fn run(
    settings: &Settings,
    write: &str,
    read: &str,
    heavy: usize,
    light: usize,
) -> anyhow::Result<ExitCode> {
    let users = tokens(settings, 3)?;
    let (heavy_user, light_user, alone_user) = (&users[0].1, &users[1].1, &users[2].1);
    let bench = Arc::new(Bench {
        client: reqwest::Client::new(),
        write: write.to_owned(),
        arrivals: Arc::default(),
    });
    watch_streams(&bench.client, read, &users, &bench.arrivals, "completed").await?;
    let (idle, idle_missing) = bench.light(light_user, light).await;

    // The heavy user's burst, 64 submissions in flight, with the light user beside it.
    let started = Instant::now();
    let burst = {
        let (bench, token) = (bench.clone(), heavy_user.clone());
        tokio::spawn(async move {
            stream::iter(0..heavy)
                .map(|_| bench.submit(&token))
                .buffer_unordered(64)
                .filter_map(|r| async move { r.map(|(id, _)| id) })
                .collect::<Vec<String>>()
                .await
        })
    };
    let (busy, busy_missing) = bench.light(alone_user, light).await;
    let ids = burst.await?;
    let submitted = started.elapsed();
    // Then the burst is a backlog the workers drain: whether the light user's jobs pass it.
    let backlog = ids.len() - arrived(&bench.arrivals, &ids);
    let (drain_lat, drain_missing) = bench.light(light_user, light).await;
    let left = ids.len() - arrived(&bench.arrivals, &ids);
    let last = wait_all(&bench.arrivals, &ids, Duration::from_secs(600))
        .await
        .context("the heavy user's jobs did not all complete in 10 minutes")?;
    let drain = last.saturating_duration_since(started);
    println!(
        "bench fair: one heavy user's {heavy}-job burst, a light user's {light} jobs one per 100 ms"
    );
    println!(
        "  light alone        {} (missing {idle_missing})",
        Percentiles::new(idle)
    );
    println!(
        "  light during burst {} (missing {busy_missing})",
        Percentiles::new(busy)
    );
    println!(
        "  light during drain {} (missing {drain_missing}; heavy backlog {backlog} before, {left} after)",
        Percentiles::new(drain_lat)
    );
    println!(
        "  heavy burst        {} accepted in {:.2} s, all completed after {:.2} s: {:.0} jobs/s",
        ids.len(),
        submitted.as_secs_f64(),
        drain.as_secs_f64(),
        ids.len() as f64 / drain.as_secs_f64()
    );
    Ok(
        if idle_missing + busy_missing + drain_missing == 0 && ids.len() == heavy {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}
