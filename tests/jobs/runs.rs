use std::time::Duration;

use futures::future::join_all;
use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_noop_jobs_from_ten_users_all_complete_and_count_once() {
    let stack = Stack::start("100000").await;
    stack.start_dispatcher().await;
    let _w = stack.start_worker(16, &[]);
    let users: Vec<_> = (0..10).map(|_| new_user()).collect();
    let mut jobs = Vec::new();
    for chunk in 0..10 {
        let batch = join_all((0..100).map(|i| stack.noop(&users[(chunk * 100 + i) % 10].1))).await;
        jobs.extend(batch);
    }
    stack.wait_final(&jobs, Duration::from_secs(120)).await;
    stack.settle().await;
    let consumed = stack.consumed().await;
    for (u, _) in &users {
        assert_eq!(consumed.get(&u.to_string()), Some(&100), "user {u}");
    }
    let (completed,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM events WHERE event_type = 'JobCompleted'")
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(completed, 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_twice_then_succeeding_takes_three_attempts_and_one_unit() {
    let stack = Stack::start("100").await;
    stack.start_dispatcher().await;
    let target = target(2).await;
    let _w = stack.start_worker(2, &["127.0.0.1/32".to_owned()]);
    let (user, t) = new_user();
    let flaky = stack
        .submit(&t, json!({"task_type": "http.request", "payload": {"url": format!("{target}/flaky")}, "max_attempts": 5}))
        .await;
    let broken = stack
        .submit(&t, json!({"task_type": "http.request", "payload": {"url": format!("{target}/fail")}, "max_attempts": 3}))
        .await;
    stack
        .wait_final(&[flaky.clone(), broken.clone()], Duration::from_secs(60))
        .await;
    assert_eq!(stack.status(&flaky).await, "completed");
    assert_eq!(stack.attempt(&flaky).await, 3);
    assert_eq!(stack.status(&broken).await, "failed");
    assert_eq!(stack.attempt(&broken).await, 3);
    stack.settle().await;
    assert_eq!(stack.consumed().await.get(&user.to_string()), Some(&1));
    let released: (i64,) =
        sqlx::query_as("SELECT count(*) FROM events WHERE event_type = 'UnitReleased'")
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(released.0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ssrf_is_refused_directly_by_redirect_and_by_name() {
    let stack = Stack::start("100").await;
    stack.start_dispatcher().await;
    let target = target(0).await;
    // Only the test server's address is opened; everything it redirects to is judged again.
    let _w = stack.start_worker(4, &[format!("{}/32", "127.0.0.1")]);
    let (_, t) = new_user();
    let port = target.rsplit(':').next().unwrap();
    let urls = [
        "http://10.0.0.1/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[::1]/".to_owned(),
        format!("http://localhost:{port}/flaky"), // resolves to loopback; ::1 is not opened
        format!("{target}/redirect?to=http://169.254.169.254/"),
        format!("{target}/redirect?to=http://192.168.1.1/"),
        format!("{target}/redirect?to=file:///etc/passwd"),
    ];
    // A URL that is not http(s) is refused at submit: no unit held, no worker reached.
    let r = stack
        .client
        .post(format!("{}/v1/jobs", stack.write))
        .bearer_auth(&t)
        .json(&json!({"task_type": "http.request", "payload": {"url": "file:///etc/passwd"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let mut jobs = Vec::new();
    for u in &urls {
        jobs.push(
            stack
                .submit(
                    &t,
                    json!({"task_type": "http.request", "payload": {"url": u}, "max_attempts": 1}),
                )
                .await,
        );
    }
    let ok = stack
        .submit(
            &t,
            json!({"task_type": "http.request", "payload": {"url": format!("{target}/flaky")}}),
        )
        .await;
    jobs.push(ok.clone());
    stack.wait_final(&jobs, Duration::from_secs(60)).await;
    assert_eq!(stack.status(&ok).await, "completed");
    for (job, url) in jobs.iter().zip(&urls) {
        let status = stack.status(job).await;
        if url.starts_with("http://localhost") && status == "completed" {
            // localhost resolved to 127.0.0.1 only, which the allow-list opens: fine.
            continue;
        }
        assert_eq!(status, "failed", "{url} was reached");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_dispatchers_never_enqueue_a_job_twice() {
    let stack = Stack::start_with("100000", &[("RUNLEDGER_DISPATCH_WINDOW", "1000")]).await;
    let (_, t) = new_user();
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(300)).to_rfc3339();
    let mut jobs = Vec::new();
    for i in 0..60 {
        let body = if i % 3 == 0 {
            json!({"task_type": "noop", "payload": {}, "run_at": soon})
        } else {
            json!({"task_type": "noop", "payload": {}})
        };
        jobs.push(stack.submit(&t, body).await);
    }
    // Two dispatchers on one checkpoint race through the same events and promotions.
    let (mut a, mut b) = (stack.dispatcher().await, stack.dispatcher().await);
    let ns = domain::task::Namespace::default_ns();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        let (x, y) = tokio::join!(a.step(), b.step());
        x.unwrap();
        y.unwrap();
        let (x, y) = tokio::join!(a.promote(&ns), b.promote(&ns));
        x.unwrap();
        y.unwrap();
        let (x, y) = tokio::join!(a.feed(), b.feed());
        x.unwrap();
        y.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = workers::queue::connect(&stack.redis_client())
        .await
        .unwrap();
    let queued: Vec<String> = redis::cmd("LRANGE")
        .arg(ns.queue_key())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut ids: Vec<String> = queued
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(e).unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.sort();
    let mut expected = jobs.clone();
    expected.sort();
    assert_eq!(ids, expected, "each job exactly once in the queue");
    let scheduled: i64 = redis::cmd("ZCARD")
        .arg(ns.scheduled_key())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(scheduled, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_process_loses_no_job_and_counts_none_twice() {
    let stack = Stack::start("100000").await;
    stack.start_dispatcher().await;
    let (user, t) = new_user();
    let jobs = join_all(
        (0..12).map(|_| stack.submit(&t, json!({"task_type": "sleep", "payload": {"ms": 1500}}))),
    )
    .await;
    let mut child = stack.spawn_worker_process("default", 6);
    // Wait until it runs some jobs, then kill it outright.
    stack.wait_started(3).await;
    kill_group(&mut child);
    // A survivor takes over: the dead worker's jobs come back after its lease.
    let _w = stack.start_worker(6, &[]);
    stack.wait_final(&jobs, Duration::from_secs(90)).await;
    for j in &jobs {
        assert_eq!(stack.status(j).await, "completed");
    }
    stack.settle().await;
    assert_eq!(stack.consumed().await.get(&user.to_string()), Some(&12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_removes_a_queued_job_and_stops_a_running_one() {
    let stack = Stack::start("100").await;
    let (_, t) = new_user();
    // Queued, with no worker yet: cancel takes it back out of the queue.
    stack.start_dispatcher().await;
    let queued = stack.noop(&t).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = stack
        .client
        .post(format!("{}/v1/jobs/{queued}/cancel", stack.write))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = workers::queue::connect(&stack.redis_client())
        .await
        .unwrap();
    let len: i64 = redis::cmd("LLEN")
        .arg("jobs:default:queue")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 0);
    // Running: the worker's next heartbeat learns of it and stops the executor.
    let _w = stack.start_worker(2, &[]);
    let long = stack
        .submit(&t, json!({"task_type": "sleep", "payload": {"ms": 60000}}))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stack.status(&long).await != "running" {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = stack
        .client
        .post(format!("{}/v1/jobs/{long}/cancel", stack.write))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = tokio::time::Instant::now();
    // The slot is free again well before the sleep would have ended.
    let next = stack.noop(&t).await;
    let other = stack.noop(&t).await;
    stack
        .wait_final(&[next, other], Duration::from_secs(10))
        .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(stack.status(&long).await, "canceled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_redis_outage_the_dispatcher_catches_up() {
    let mut stack = Stack::start("1000").await;
    stack.start_dispatcher().await;
    let _w = stack.start_worker(4, &[]);
    let (user, t) = new_user();
    let before = join_all((0..5).map(|_| stack.noop(&t))).await;
    stack.wait_final(&before, Duration::from_secs(30)).await;
    stack.redis.stop();
    // Commands go on without Redis.
    let during = join_all((0..10).map(|_| stack.noop(&t))).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stack.redis.resume().await;
    stack.wait_final(&during, Duration::from_secs(60)).await;
    for j in &during {
        assert_eq!(stack.status(j).await, "completed");
    }
    stack.settle().await;
    assert_eq!(stack.consumed().await.get(&user.to_string()), Some(&15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_running_jobs_finish_and_leaves_the_rest_queued() {
    let stack = Stack::start("1000").await;
    stack.start_dispatcher().await;
    let (user, t) = new_user();
    let jobs = join_all(
        (0..6).map(|_| stack.submit(&t, json!({"task_type": "sleep", "payload": {"ms": 1500}}))),
    )
    .await;
    let mut child = stack.spawn_worker_process("default", 2);
    stack.wait_started(2).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stopped = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(stopped.success(), "the worker exits cleanly on SIGTERM");
    // The two running jobs finished in their first attempt; nothing else was taken.
    let (completed, started): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE event_type = 'JobCompleted'), count(*) FILTER (WHERE event_type = 'JobStarted') FROM events",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!((completed, started), (2, 2));
    let _w = stack.start_worker(4, &[]);
    stack.wait_final(&jobs, Duration::from_secs(30)).await;
    for j in &jobs {
        assert_eq!(
            (stack.status(j).await.as_str(), stack.attempt(j).await),
            ("completed", 1)
        );
    }
    stack.settle().await;
    assert_eq!(stack.consumed().await.get(&user.to_string()), Some(&6));
}

/// The stream transport (`jobs:browser:stream`, group `jobs:browser:group`): a worker
/// process killed mid-job leaves pending entries; a survivor claims them after the lease
/// (XAUTOCLAIM), fails the lost attempt as retryable, and the next attempt runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_entries_of_a_killed_worker_are_claimed_and_retried() {
    use domain::task::{Namespace, NamespaceMap};
    let stack = Stack::start("1000").await;
    // Route `sleep` to the browser namespace so the generic executor runs on the stream.
    let mut dispatcher = stack.dispatcher().await;
    dispatcher.namespaces = NamespaceMap::with_rules([("sleep".to_owned(), Namespace::browser())]);
    tokio::spawn(dispatcher.run(vec![Namespace::browser()], stack.shutdown.clone()));
    let (user, t) = new_user();
    let jobs = join_all(
        (0..4).map(|_| stack.submit(&t, json!({"task_type": "sleep", "payload": {"ms": 3000}}))),
    )
    .await;
    let mut child = stack.spawn_worker_process("browser", 4);
    stack.wait_started(4).await;
    kill_group(&mut child);
    let _w = stack.start_worker_on(Namespace::browser(), 4, &[]);
    stack.wait_final(&jobs, Duration::from_secs(60)).await;
    for j in &jobs {
        assert_eq!(stack.status(j).await, "completed");
        assert_eq!(stack.attempt(j).await, 2, "the lost attempt was retried");
    }
    stack.settle().await;
    assert_eq!(stack.consumed().await.get(&user.to_string()), Some(&4));
    let mut conn = workers::queue::connect(&stack.redis_client())
        .await
        .unwrap();
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg("jobs:browser:stream")
        .arg("jobs:browser:group")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        matches!(&pending, redis::Value::Array(v) if matches!(v.first(), Some(redis::Value::Int(0)))),
        "{pending:?}"
    );
}
