//! `runledger bench sse`: latency from `POST /v1/jobs` to the SSE event `queued` at a fixed
//! submission rate. `runledger bench streams`: N open streams and the read API's memory.

use std::{
    collections::HashMap,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use platform::settings::Settings;
use serde_json::Value;

use super::{Percentiles, tokens};

pub(super) type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// How many of `ids` have arrived so far.
pub(super) fn arrived(arrivals: &Arrivals, ids: &[String]) -> usize {
    arrivals
        .lock()
        .map(|a| ids.iter().filter(|id| a.contains_key(*id)).count())
        .unwrap_or(0)
}

/// Waits until every one of `ids` arrived, or `within` passed; when the last did.
pub(super) async fn wait_all(
    arrivals: &Arrivals,
    ids: &[String],
    within: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + within;
    loop {
        {
            let a = arrivals.lock().ok()?;
            if ids.iter().all(|id| a.contains_key(id)) {
                return ids.iter().filter_map(|id| a.get(id)).max().copied();
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads one SSE response, recording when each job's `until` event arrived.
async fn read_stream(mut res: reqwest::Response, arrivals: Arrivals, until: String) {
    let mut buf = String::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        let now = Instant::now();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            if v["status"] == until.as_str()
                && let (Some(id), Ok(mut a)) = (v["id"].as_str(), arrivals.lock())
            {
                a.entry(id.to_owned()).or_insert(now);
            }
        }
    }
}

/// Opens each user's stream on `read`, recording into `arrivals` when each job's `until`
/// event arrives.
pub(super) async fn watch_streams(
    client: &reqwest::Client,
    read: &str,
    users: &[(domain::ids::UserId, String)],
    arrivals: &Arrivals,
    until: &str,
) -> anyhow::Result<()> {
    for (_, t) in users {
        let res = client
            .get(format!("{read}/v1/jobs/stream"))
            .bearer_auth(t)
            .send()
            .await
            .context("opening a stream")?;
        anyhow::ensure!(res.status() == 200, "stream refused: {}", res.status());
        tokio::spawn(read_stream(res, arrivals.clone(), until.to_owned()));
    }
    Ok(())
}

pub async fn latency(
    settings: &Settings,
    write: &str,
    read: &str,
    rate: u32,
    seconds: u32,
    users: usize,
    until: &str,
) -> anyhow::Result<ExitCode> {
    let users = tokens(settings, users)?;
    let client = reqwest::Client::new();
    let arrivals: Arrivals = Arc::default();
    watch_streams(&client, read, &users, &arrivals, until).await?;
    // One second at the same rate first, not counted: connections, caches and pools warm up.
    let warmup: Vec<_> = (0..rate as usize)
        .map(|i| {
            let (client, token) = (client.clone(), users[i % users.len()].1.clone());
            let url = format!("{write}/v1/jobs");
            async move {
                let body = serde_json::json!({"task_type": "noop", "payload": {}});
                let _ = client.post(url).bearer_auth(token).json(&body).send().await;
            }
        })
        .collect();
    futures::future::join_all(warmup).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total = (rate * seconds) as usize;
    let sent: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let (client, sent, token) = (
            client.clone(),
            sent.clone(),
            users[i % users.len()].1.clone(),
        );
        let url = format!("{write}/v1/jobs");
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let res = client
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({"task_type": "noop", "payload": {}}))
                .send()
                .await;
            if let Ok(r) = res
                && let Ok(v) = r.json::<Value>().await
                && let (Some(id), Ok(mut s)) = (v["job_id"].as_str(), sent.lock())
            {
                s.push((id.to_owned(), t0));
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let submit_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = sent.lock().map(|s| s.clone()).unwrap_or_default();
    let arrivals = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let lat: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, t0)| arrivals.get(id).map(|a| a.saturating_duration_since(*t0)))
        .collect();
    let missing = sent.len() - lat.len();
    println!(
        "bench sse: {total} submissions at {rate}/s over {} users' streams",
        users.len()
    );
    println!("  accepted           {}", sent.len());
    println!(
        "  achieved rate      {:.0}/s",
        sent.len() as f64 / submit_secs
    );
    println!(
        "  `{until}` events{:>pad$}{} (missing {missing})",
        "",
        lat.len(),
        pad = 12usize.saturating_sub(until.len())
    );
    println!(
        "  POST → `{until}` ms{:>pad$}{}",
        "",
        Percentiles::new(lat),
        pad = 10usize.saturating_sub(until.len())
    );
    Ok(if missing == 0 && sent.len() == total {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn hold(settings: &Settings, read: &str, streams: usize) -> anyhow::Result<ExitCode> {
    let users = tokens(settings, streams)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let before = rss(&client, read).await;
    let started = Instant::now();
    let mut held = Vec::with_capacity(streams);
    for chunk in users.chunks(500) {
        let opens = chunk.iter().map(|(_, t)| {
            client
                .get(format!("{read}/v1/jobs/stream"))
                .bearer_auth(t)
                .send()
        });
        for res in futures::future::join_all(opens).await {
            let res = res.context("opening a stream")?;
            anyhow::ensure!(res.status() == 200, "stream refused: {}", res.status());
            held.push(res);
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss(&client, read).await;
    println!(
        "bench streams: {} SSE streams held open against {read}",
        held.len()
    );
    println!("  opened in          {open_secs:.2} s");
    println!(
        "  read API RSS       {:.0} MiB before, {:.0} MiB with the streams open",
        mib(before),
        mib(after)
    );
    println!(
        "  per stream         {:.1} KiB",
        (after - before) / held.len().max(1) as f64 / 1_024.0
    );
    drop(held);
    Ok(ExitCode::SUCCESS)
}

fn mib(bytes: f64) -> f64 {
    bytes / 1_048_576.0
}

/// `runledger_process_resident_bytes` from the read API's `/metrics`.
async fn rss(client: &reqwest::Client, read: &str) -> f64 {
    let Ok(res) = client.get(format!("{read}/metrics")).send().await else {
        return 0.0;
    };
    let text = res.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("runledger_process_resident_bytes ")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}
