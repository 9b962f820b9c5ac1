//! The fault-injection suite: for a fixed time, under steady load from several users, a
//! random fault every few seconds — a role SIGKILLed and restarted (two command-api
//! replicas, projections, relay, dispatcher, two workers, read-api), Redis restarted empty,
//! NATS stopped and started, every Postgres connection terminated. Then: every job ends;
//! consumed units = completed jobs per user; nothing stays reserved; every ledger verifies;
//! the read models equal a fresh rebuild; each open SSE stream saw each job's final state
//! once; JetStream holds each event once. Prints its figures.
//!
//! `RUNLEDGER_FAULTS_SECS` (default 20: the short form CI runs) and
//! `RUNLEDGER_FAULTS_RATE` (jobs/s, default 30) set the long form. The embedded store's full
//! disk is its own test (`tests/dev/disk_full.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Shared with tests/ops, which uses more of it.
#[allow(dead_code)]
mod stack;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use domain::ids::UserId;
use stack::*;
use tokio_util::sync::CancellationToken;

const USERS: usize = 5;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_job_ends_and_every_unit_counts_under_faults() {
    let secs = setting("RUNLEDGER_FAULTS_SECS", 20);
    let rate = setting("RUNLEDGER_FAULTS_RATE", 30).max(1);
    let mut stack = Stack::start().await;
    let users: Vec<(UserId, String)> = (0..USERS)
        .map(|_| {
            let u = UserId::from_uuid(uuid::Uuid::new_v4());
            (u, token(u))
        })
        .collect();

    let stop_watch = CancellationToken::new();
    let seen: Vec<Arc<Mutex<Seen>>> = users.iter().map(|_| Arc::default()).collect();
    for ((_, t), s) in users.iter().zip(&seen) {
        tokio::spawn(watch(
            stack.read.clone(),
            t.clone(),
            s.clone(),
            stop_watch.clone(),
        ));
    }

    // The load: each user submits at rate/USERS a second until the end.
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let submitted: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut load = Vec::new();
    for (i, (_, t)) in users.iter().enumerate() {
        let (client, writes, t) = (stack.client.clone(), stack.writes.clone(), t.clone());
        let (submitted, refused) = (submitted.clone(), refused.clone());
        let every = Duration::from_secs_f64(USERS as f64 / rate as f64);
        load.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut inflight = Vec::new();
            while Instant::now() < until {
                tick.tick().await;
                let (client, writes, t) = (client.clone(), writes.clone(), t.clone());
                let (submitted, refused) = (submitted.clone(), refused.clone());
                inflight.push(tokio::spawn(async move {
                    match submit(&client, &writes, &t, &job_body()).await {
                        Ok(job) => submitted.lock().unwrap().push((i, job)),
                        Err(e) => refused.lock().unwrap().push(e),
                    }
                }));
            }
            for f in inflight {
                let _ = f.await;
            }
        }));
    }

    // The faults.
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(
            1_500 + u64::from(rand::random::<u16>() % 1_500),
        ))
        .await;
        if Instant::now() >= until {
            break;
        }
        let pause = Duration::from_millis(300 + u64::from(rand::random::<u16>() % 1_700));
        match rand::random::<u8>() % 8 {
            0..=4 => {
                let i = rand::random::<u8>() as usize % stack.roles.len();
                stack.roles[i].kill();
                *faults
                    .entry(format!("kill {}", stack.roles[i].name))
                    .or_default() += 1;
                tokio::time::sleep(pause).await;
                stack.roles[i].spawn();
            }
            5 => {
                stack.redis.stop();
                stack.redis.resume().await;
                *faults.entry("redis restarted empty".into()).or_default() += 1;
            }
            6 => {
                stack.nats.stop();
                tokio::time::sleep(pause).await;
                stack.nats.resume().await;
                *faults.entry("nats stopped".into()).or_default() += 1;
            }
            _ => {
                let _ = sqlx::query(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                      WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
                .execute(&stack.db.pool)
                .await;
                *faults
                    .entry("postgres connections terminated".into())
                    .or_default() += 1;
            }
        }
    }
    for l in load {
        l.await.unwrap();
    }
    stack.all_up().await;
    let injected: usize = faults.values().sum();
    let jobs: Vec<(usize, String)> = submitted.lock().unwrap().clone();
    let mut violations: Vec<String> = refused
        .lock()
        .unwrap()
        .iter()
        .map(|e| format!("a submission was refused: {e}"))
        .collect();

    // Every job ends.
    let ids: Vec<String> = jobs.iter().map(|(_, j)| j.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    let open = loop {
        let open = unfinished(&stack, &ids).await;
        if open.is_empty() || Instant::now() > deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if !open.is_empty() {
        violations.push(format!(
            "{} jobs never ended, e.g. {:?}",
            open.len(),
            &open[..open.len().min(3)]
        ));
    }

    // Units: nothing reserved, consumed = completed, per user.
    let deadline = Instant::now() + Duration::from_secs(60);
    while reserved(&stack).await != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let held = reserved(&stack).await;
    if held != 0 {
        violations.push(format!("{held} units still reserved"));
    }
    let completed = completed(&stack, &ids).await;
    let consumed = consumed(&stack).await;
    for (i, (u, _)) in users.iter().enumerate() {
        let mine: HashSet<&String> = jobs
            .iter()
            .filter(|(o, _)| *o == i)
            .map(|(_, j)| j)
            .collect();
        let done = completed.iter().filter(|j| mine.contains(j)).count() as i64;
        let units = consumed.get(&u.to_string()).copied().unwrap_or(0);
        if done != units {
            violations.push(format!(
                "user {u}: {done} jobs completed, {units} units consumed"
            ));
        }
    }

    // Every ledger verifies against the raw events and the read model.
    caught_up(&stack).await;
    for (u, _) in &users {
        let out = cli(
            &stack,
            &[
                "audit",
                "replay",
                "--user",
                &u.to_string(),
                "--format",
                "json",
            ],
        );
        if !out.status.success() {
            violations.push(format!(
                "audit replay of {u} failed: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }

    // The read models equal a fresh rebuild.
    let before = (dump(&stack, VIEWS).await, dump(&stack, USAGE).await);
    for p in ["jobs", "usage"] {
        let out = cli(&stack, &["projections", "rebuild", p]);
        assert!(out.status.success(), "rebuild {p}: {out:?}");
    }
    if (dump(&stack, VIEWS).await, dump(&stack, USAGE).await) != before {
        violations.push("the read models differ from a fresh rebuild".into());
    }

    // Each stream saw each of its jobs' final state once, with no event twice.
    let finals = ["completed", "failed", "canceled"];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let behind = jobs.iter().filter(|(i, j)| {
            let s = seen[*i].lock().unwrap();
            !s.jobs
                .get(j)
                .is_some_and(|st| st.iter().any(|x| finals.contains(&x.as_str())))
        });
        if behind.count() == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_watch.cancel();
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock().unwrap();
        let unique: HashSet<&i64> = s.ids.iter().collect();
        if unique.len() != s.ids.len() {
            violations.push(format!(
                "stream {i} saw {} events twice",
                s.ids.len() - unique.len()
            ));
        }
        if s.resets > 0 {
            violations.push(format!("stream {i} was reset {} times", s.resets));
        }
        for (_, job) in jobs.iter().filter(|(o, _)| *o == i) {
            let n = s.jobs.get(job).map_or(0, |st| {
                st.iter().filter(|x| finals.contains(&x.as_str())).count()
            });
            if n != 1 {
                violations.push(format!("stream {i} saw job {job}'s final state {n} times"));
            }
        }
    }

    // JetStream holds each event once.
    let (messages, events) = relayed(&stack).await;
    if messages != events {
        violations.push(format!(
            "JetStream holds {messages} messages for {events} events"
        ));
    }

    let breakdown: Vec<String> = faults.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
    println!(
        "faults suite: {} s under load, {} jobs from {USERS} users ({} completed), {injected} faults \
         injected [{}], violations: {}",
        secs,
        jobs.len(),
        completed.len(),
        breakdown.join(", "),
        violations.len()
    );
    for v in &violations {
        println!("violation: {v}");
    }
    assert!(injected > 0, "no fault was injected");
    assert!(violations.is_empty(), "{violations:#?}");
}

fn cli(stack: &Stack, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_runledger"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", &stack.db.url)
        .env("RUNLEDGER_LOG", "error")
        .output()
        .unwrap()
}

/// The jobs of `ids` with no final event.
async fn unfinished(stack: &Stack, ids: &[String]) -> Vec<String> {
    let done: HashSet<String> = sqlx::query_as::<_, (String,)>(
        "SELECT DISTINCT aggregate_id FROM events WHERE aggregate_type = 'job' \
           AND event_type IN ('JobCompleted', 'JobDeadLettered', 'JobCanceled')",
    )
    .fetch_all(&stack.db.pool)
    .await
    .map(|rows| rows.into_iter().map(|(j,)| j).collect())
    .unwrap_or_default();
    ids.iter().filter(|j| !done.contains(*j)).cloned().collect()
}

async fn completed(stack: &Stack, ids: &[String]) -> Vec<String> {
    let done: HashSet<String> = sqlx::query_as::<_, (String,)>(
        "SELECT aggregate_id FROM events WHERE event_type = 'JobCompleted'",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(j,)| j)
    .collect();
    ids.iter().filter(|j| done.contains(*j)).cloned().collect()
}

/// Units reserved and not yet settled, from the usage events.
async fn reserved(stack: &Stack) -> i64 {
    sqlx::query_as::<_, (i64,)>(
        "SELECT count(*) FILTER (WHERE event_type = 'UnitReserved') \
              - count(*) FILTER (WHERE event_type IN ('UnitConsumed', 'UnitReleased')) \
           FROM events WHERE aggregate_type = 'usage'",
    )
    .fetch_one(&stack.db.pool)
    .await
    .map_or(-1, |(n,)| n)
}

async fn consumed(stack: &Stack) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT split_part(aggregate_id, ':', 1), count(*) FROM events \
          WHERE aggregate_type = 'usage' AND event_type = 'UnitConsumed' GROUP BY 1",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Waits until the projections and the relay reached the head of the log.
async fn caught_up(stack: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let head = eventstore::reader::head(&stack.db.pool).await.unwrap();
        let (min,): (Option<i64>,) = sqlx::query_as(
            "SELECT min(position) FROM checkpoints WHERE name IN ('jobs', 'usage', 'relay')",
        )
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
        if min.unwrap_or(0) >= head {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "projections and relay did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const VIEWS: &str = "SELECT row_to_json(v)::text FROM (SELECT * FROM job_views ORDER BY id) v";
const USAGE: &str = "SELECT row_to_json(u)::text FROM (SELECT * FROM usage_periods ORDER BY user_id, period_start) u";

async fn dump(stack: &Stack, sql: &str) -> Vec<String> {
    sqlx::query_as::<_, (String,)>(sql)
        .fetch_all(&stack.db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(r,)| r)
        .collect()
}

/// Messages in the JetStream stream, and events in the log.
async fn relayed(stack: &Stack) -> (u64, u64) {
    caught_up(stack).await;
    let client = async_nats::connect(&stack.nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut s = js
        .get_stream(projections::relay::stream_name(""))
        .await
        .unwrap();
    let messages = s.info().await.unwrap().state.messages;
    let (events,): (i64,) = sqlx::query_as("SELECT count(*) FROM events")
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    (messages, events as u64)
}
