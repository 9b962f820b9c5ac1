//! `runledger bench submit`: N submissions at concurrency C against a running command API,
//! with throughput and latency percentiles, and beside them this machine's durable-commit
//! ceiling measured by pgbench (one single-row INSERT per transaction, same concurrency).

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use anyhow::Context;
use platform::settings::Settings;

use super::{Percentiles, tokens};

pub async fn run(
    settings: &Settings,
    urls: &[String],
    requests: usize,
    concurrency: usize,
    users: usize,
    pgbench_seconds: u32,
) -> anyhow::Result<ExitCode> {
    let tokens: Arc<Vec<String>> = Arc::new(
        tokens(settings, users)?
            .into_iter()
            .map(|(_, t)| t)
            .collect(),
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let endpoints: Arc<Vec<String>> = Arc::new(
        urls.iter()
            .map(|u| format!("{}/v1/jobs", u.trim_end_matches('/')))
            .collect(),
    );
    // User `u`'s submissions all go to one replica.
    let endpoint_of = |u: usize| endpoints[u % endpoints.len()].clone();
    // Warm the connections and the server's caches.
    for (u, t) in tokens
        .iter()
        .enumerate()
        .take(concurrency.max(endpoints.len()))
    {
        let _ = post(&client, &endpoint_of(u), t).await;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, endpoints, next, tokens) = (
            client.clone(),
            endpoints.clone(),
            next.clone(),
            tokens.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let u = i % tokens.len();
                let t0 = Instant::now();
                let status = post(&client, &endpoints[u % endpoints.len()], &tokens[u]).await;
                out.push((t0.elapsed(), status));
            }
            out
        }));
    }
    let mut samples = Vec::with_capacity(requests);
    for t in tasks {
        samples.extend(t.await?);
    }
    let elapsed = started.elapsed();
    let accepted = samples.iter().filter(|(_, s)| *s == 202).count();
    let refused = samples.iter().filter(|(_, s)| *s == 402).count();
    let failed = samples.len() - accepted - refused;
    let lat = Percentiles::new(samples.iter().map(|(d, _)| *d).collect());
    let rate = accepted as f64 / elapsed.as_secs_f64();
    println!(
        "bench submit: {requests} requests, concurrency {concurrency}, {users} users, {}",
        urls.join(", ")
    );
    println!("  accepted (202)     {accepted}");
    println!("  refused (402)      {refused}");
    println!("  other/errors       {failed}");
    println!("  elapsed            {:.2} s", elapsed.as_secs_f64());
    println!("  accepted/s         {rate:.0}");
    println!("  latency ms         {lat}");
    if pgbench_seconds > 0 {
        match ceiling(settings, concurrency, pgbench_seconds) {
            Ok(tps) => {
                println!(
                    "  pgbench ceiling    {tps:.0} commits/s (one-row INSERT per transaction, c={concurrency})"
                );
                println!(
                    "  ratio              {:.2} accepted submissions per durable commit",
                    rate / tps
                );
            }
            Err(e) => println!("  pgbench ceiling    not measured: {e:#}"),
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn post(client: &reqwest::Client, endpoint: &str, token: &str) -> u16 {
    client
        .post(endpoint)
        .bearer_auth(token)
        .json(&serde_json::json!({"task_type": "noop", "payload": {}}))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// pgbench's tps for one single-row INSERT per transaction at `clients`.
fn ceiling(settings: &Settings, clients: usize, seconds: u32) -> anyhow::Result<f64> {
    let url = settings.require_database()?.expose().to_owned();
    let dir = std::env::temp_dir().join(format!("runledger-pgbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("insert.sql");
    std::fs::write(
        &script,
        "INSERT INTO runledger_bench_ceiling (v) VALUES (1);\n",
    )?;
    let psql = |sql: &str| {
        std::process::Command::new("psql")
            .arg(&url)
            .arg("-qc")
            .arg(sql)
            .status()
    };
    psql("CREATE TABLE IF NOT EXISTS runledger_bench_ceiling (id bigserial PRIMARY KEY, v int)")
        .context("psql not found")?;
    let out = std::process::Command::new("pgbench")
        .args([
            "-n",
            "-j",
            "2",
            "-c",
            &clients.to_string(),
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(&url)
        .output()
        .context("pgbench not found (install postgresql-client)")?;
    let _ = psql("DROP TABLE IF EXISTS runledger_bench_ceiling");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next()?.parse().ok())
        })
        .with_context(|| {
            format!(
                "pgbench printed no tps: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}
