//! Every job ends and every unit counts when a part of the stack fails: the command side
//! goes away while outcomes are due, a worker vanishes after starting an attempt, Redis
//! restarts empty or a legacy worker drops an envelope.

use std::time::Duration;

use futures::future::join_all;
use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outcomes_wait_out_a_command_side_outage_and_are_taken_once_it_is_back() {
    // A lease longer than the outage: the outcomes themselves must arrive, not a retry.
    let mut stack = Stack::start_with("1000", &[("RUNLEDGER_JOB_LEASE_SECS", "60")]).await;
    stack.start_dispatcher().await;
    let _w = stack.start_worker(4, &[]);
    let (user, t) = new_user();
    let jobs = join_all(
        (0..4).map(|_| stack.submit(&t, json!({"task_type": "sleep", "payload": {"ms": 1500}}))),
    )
    .await;
    stack.wait_started(4).await;
    stack.stop_write().await;
    // The sleeps end during the outage; their outcomes wait in the worker.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stack.restart_write().await;
    stack.wait_final(&jobs, Duration::from_secs(30)).await;
    for j in &jobs {
        assert_eq!(stack.status(j).await, "completed");
        assert_eq!(
            stack.attempt(j).await,
            1,
            "the first attempt's outcome was kept"
        );
    }
    stack.settle().await;
    assert_eq!(stack.consumed().await.get(&user.to_string()), Some(&4));
    assert_eq!(stack.reserved().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attempt_whose_worker_vanished_after_start_is_expired_and_retried() {
    let stack = Stack::start("1000").await;
    stack.start_dispatcher().await;
    let (user, t) = new_user();
    let job = stack.noop(&t).await;
    // A worker in another language pops the envelope, reports the start, and dies: no
    // processing list, no liveness key, nothing for a reaper to find.
    let mut conn = workers::queue::connect(&stack.redis_client())
        .await
        .unwrap();
    let (_, envelope): (String, String) = redis::cmd("BRPOP")
        .arg("jobs:default:queue")
        .arg(10)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(envelope.contains(&job));
    let r = stack
        .client
        .post(format!("{}/v1/worker/jobs/{job}/start", stack.write))
        .bearer_auth(worker_token())
        .json(&json!({"attempt": 1, "worker_id": "gone"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The lease (5 s here) runs out; the process manager fails the attempt as retryable and
    // the next attempt reaches a live worker.
    let _w = stack.start_worker(2, &[]);
    stack
        .wait_final(std::slice::from_ref(&job), Duration::from_secs(30))
        .await;
    assert_eq!(stack.status(&job).await, "completed");
    assert_eq!(stack.attempt(&job).await, 2);
    stack.settle().await;
    assert_eq!(stack.consumed().await.get(&user.to_string()), Some(&1));
    assert_eq!(stack.reserved().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restarted_empty_is_refilled_from_the_log() {
    let mut stack = Stack::start("1000").await;
    stack.start_dispatcher().await;
    let (user, t) = new_user();
    let mut jobs = join_all((0..20).map(|_| stack.noop(&t))).await;
    let later = (chrono::Utc::now() + chrono::Duration::seconds(4)).to_rfc3339();
    jobs.push(
        stack
            .submit(
                &t,
                json!({"task_type": "noop", "payload": {}, "run_at": later}),
            )
            .await,
    );
    let mut conn = workers::queue::connect(&stack.redis_client())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (ready, scheduled): (i64, i64) = redis::pipe()
            .cmd("LLEN")
            .arg("jobs:default:queue")
            .cmd("ZCARD")
            .arg("jobs:default:scheduled")
            .query_async(&mut conn)
            .await
            .unwrap();
        if ready == 20 && scheduled == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{ready} ready, {scheduled} scheduled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Redis without persistence restarts: every queue and marker is gone.
    stack.redis.stop();
    stack.redis.resume().await;
    let _w = stack.start_worker(4, &[]);
    stack.wait_final(&jobs, Duration::from_secs(60)).await;
    for j in &jobs {
        assert_eq!(stack.status(j).await, "completed");
        assert_eq!(stack.attempt(j).await, 1);
    }
    stack.settle().await;
    assert_eq!(stack.consumed().await.get(&user.to_string()), Some(&21));
    assert_eq!(stack.reserved().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_envelope_a_legacy_worker_dropped_before_start_is_pushed_again() {
    let stack = Stack::start("1000").await;
    stack.start_dispatcher().await;
    let (_, t) = new_user();
    let job = stack.noop(&t).await;
    let mut conn = workers::queue::connect(&stack.redis_client())
        .await
        .unwrap();
    // Popped and lost: its dispatch marker still says it was pushed.
    let _: (String, String) = redis::cmd("BRPOP")
        .arg("jobs:default:queue")
        .arg(10)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _w = stack.start_worker(2, &[]);
    stack
        .wait_final(std::slice::from_ref(&job), Duration::from_secs(30))
        .await;
    assert_eq!(stack.status(&job).await, "completed");
    assert_eq!(stack.attempt(&job).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dispatch_markers_go_when_their_attempts_end() {
    let stack = Stack::start("1000").await;
    stack.start_dispatcher().await;
    let _w = stack.start_worker(4, &["127.0.0.1/32".to_owned()]);
    let (_, t) = new_user();
    let target = target(1).await;
    let mut jobs = join_all((0..30).map(|_| stack.noop(&t))).await;
    // One retried once (two attempts), one run later (scheduled, then ready).
    jobs.push(
        stack
            .submit(
                &t,
                json!({"task_type": "http.request", "payload": {"url": format!("{target}/flaky")},
                       "max_attempts": 3}),
            )
            .await,
    );
    let later = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    jobs.push(
        stack
            .submit(
                &t,
                json!({"task_type": "noop", "payload": {}, "run_at": later}),
            )
            .await,
    );
    stack.wait_final(&jobs, Duration::from_secs(60)).await;
    eventually(
        Duration::from_secs(10),
        "no dispatch marker left",
        || async { stack.markers().await.is_empty() },
    )
    .await;
}

/// The process manager's leader lock lives on one connection: when that connection is
/// terminated, the leader stands down and an instance takes the lock again, so units still
/// count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_manager_that_lost_its_lock_stands_down_and_one_leads_again() {
    let stack = Stack::start("1000").await;
    stack.start_dispatcher().await;
    let _w = stack.start_worker(2, &[]);
    let (user, t) = new_user();
    let first = stack.noop(&t).await;
    stack
        .wait_final(std::slice::from_ref(&first), Duration::from_secs(30))
        .await;
    let holder = || async {
        sqlx::query_as::<_, (i32,)>(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
               AND ((classid::int8 << 32) | objid::int8) = 7245037262",
        )
        .fetch_optional(&stack.db.pool)
        .await
        .unwrap()
        .map(|(p,)| p)
    };
    let before = holder().await.expect("a leader holds the lock");
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(before)
        .execute(&stack.db.pool)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "an instance leads again after the lock was lost",
        || async { holder().await.is_some_and(|p| p != before) },
    )
    .await;
    let second = stack.noop(&t).await;
    stack
        .wait_final(std::slice::from_ref(&second), Duration::from_secs(30))
        .await;
    eventually(
        Duration::from_secs(10),
        "the second unit committed",
        || async { stack.consumed().await.get(&user.to_string()) == Some(&2) },
    )
    .await;
}

/// An event this build cannot read is parked by each consumer that meets it; every other
/// job still runs and counts. Once it can be read (here: rewritten to a known shape, as a
/// fixed build would read it), `runledger events retry` has it processed and unparked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreadable_event_is_parked_and_everyone_else_goes_on() {
    let stack = Stack::start("1000").await;
    stack.start_dispatcher().await;
    let _w = stack.start_worker(2, &[]);
    let (user, t) = new_user();
    let first = stack.noop(&t).await;
    stack
        .wait_final(std::slice::from_ref(&first), Duration::from_secs(30))
        .await;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
                             payload, metadata) \
         VALUES ('job', $1, 1000, 'JobExploded', '1.0', '{\"JobExploded\": {}}', '{}')",
    )
    .bind(&first)
    .execute(&stack.db.pool)
    .await
    .unwrap();
    let later = join_all((0..5).map(|_| stack.noop(&t))).await;
    stack.wait_final(&later, Duration::from_secs(30)).await;
    stack.settle().await;
    assert_eq!(stack.consumed().await.get(&user.to_string()), Some(&6));

    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_runledger"))
            .args(args)
            .env_clear()
            .env("DATABASE_URL", &stack.db.url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let parked: serde_json::Value =
            serde_json::from_str(&cli(&["events", "parked", "--json"])).unwrap();
        let consumers: Vec<&str> = parked
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["consumer"].as_str().unwrap())
            .collect();
        if consumers.contains(&"process-manager") && consumers.contains(&"dispatcher") {
            assert!(
                parked
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["event_type"] == "JobExploded")
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "parked: {parked}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    sqlx::query(
        "UPDATE events SET event_type = 'JobHeartbeat', \
                payload = json_build_object('JobHeartbeat', \
                  json_build_object('attempt', 1, 'at', '2026-12-01T00:00:00Z')) \
          WHERE event_type = 'JobExploded'",
    )
    .execute(&stack.db.pool)
    .await
    .unwrap();
    assert!(cli(&["events", "retry"]).starts_with("2 parked event(s)"));
    eventually(Duration::from_secs(15), "the retries taken", || async {
        stack.command.store.parked(None).await.unwrap().is_empty()
    })
    .await;
}
