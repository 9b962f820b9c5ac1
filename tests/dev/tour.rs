use std::time::{Duration, Instant};

use platform::testing::{NatsServer, RedisServer, TestDb};
use serde_json::{Value, json};

use crate::helpers::*;

/// The tour: watch the stream, submit, see each job complete live, read the views, the
/// usage, and the auditor's replay of the ledger. `before`: units the demo user already had.
async fn tour(dev: &Dev, before: i64) {
    // No client timeout: it would cut the stream.
    let mut sse = reqwest::Client::new()
        .get(format!("{}/v1/jobs/stream", dev.url))
        .bearer_auth(&dev.token)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, body) = submit(dev, "noop", json!({})).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["job_id"].as_str().unwrap().to_owned());
    }
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ids.iter().all(|id| completed_on_stream(&seen, id)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, sse.chunk())
            .await
            .unwrap_or_else(|_| panic!("jobs not completed on the stream: {seen}"))
            .unwrap()
            .expect("stream ended");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    for id in &ids {
        let (status, job) = get(dev, &dev.token, &format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(job["status"], "completed", "{job}");
    }
    // A new connection resuming from Last-Event-ID 0 gets every change again, once, in order.
    let mut resumed = reqwest::Client::new()
        .get(format!("{}/v1/jobs/stream", dev.url))
        .bearer_auth(&dev.token)
        .header("last-event-id", "0")
        .send()
        .await
        .unwrap();
    let mut replay = String::new();
    while !ids.iter().all(|id| completed_on_stream(&replay, id)) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resumed.chunk())
            .await
            .unwrap_or_else(|_| panic!("resume did not replay: {replay}"))
            .unwrap()
            .expect("stream ended");
        replay.push_str(&String::from_utf8_lossy(&chunk));
    }
    let positions: Vec<i64> = replay
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|p| p.trim().parse().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{replay}");
    let want = before + 3;
    eventually(30, "usage to count the units", || async {
        let (_, u) = get(dev, &dev.token, "/v1/usage").await;
        u["consumed"] == json!(want) && u["reserved"] == json!(0)
    })
    .await;
    audit_verifies(dev, want).await;
}

fn completed_on_stream(stream: &str, id: &str) -> bool {
    stream
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .any(|e| e["id"] == id && e["status"] == "completed")
}

async fn audit_verifies(dev: &Dev, consumed: i64) {
    let path = format!("/v1/audit/usage/{DEMO_USER}?period={}", month());
    eventually(30, "the audit to match the projection", || async {
        let (status, a) = get(dev, &dev.auditor, &path).await;
        assert_eq!(status, 200, "{a}");
        let p = &a["periods"][0];
        p["chain_verified"] == json!(true)
            && p["consumed"] == json!(consumed)
            && p["matches_projection"] == json!(true)
    })
    .await;
    // Customers do not audit; auditors do not read customers' views.
    let (status, _) = get(dev, &dev.token, &path).await;
    assert_eq!(status, 403);
    let (status, _) = get(dev, &dev.auditor, "/v1/usage").await;
    assert_eq!(status, 403);
}

async fn jobs_listed(dev: &Dev, token: &str) -> usize {
    let (status, list) = get(dev, token, "/v1/jobs?limit=100").await;
    assert_eq!(status, 200);
    list["jobs"].as_array().map_or(0, Vec::len)
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("runledger-dev-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the tour, stops with Ctrl-C, starts again on the same data: the jobs, the usage and
/// the ledger are all there, old tokens still work, and the tour runs again on top.
async fn tour_across_a_restart(args: &[&str], env: &[(&str, &str)], events_in: &str) {
    let dev = Dev::start(args, env);
    assert!(dev.printed(events_in), "{:?}", dev.output.lock().unwrap());
    tour(&dev, 0).await;
    let old_token = dev.token.clone();
    let status = dev.interrupt();
    assert!(status.success(), "stopped with {status}");

    let dev = Dev::start(args, env);
    assert_eq!(jobs_listed(&dev, &old_token).await, 3);
    let (_, usage) = get(&dev, &old_token, "/v1/usage").await;
    assert_eq!(usage["consumed"], 3, "{usage}");
    audit_verifies(&dev, 3).await;
    tour(&dev, 3).await;
    assert_eq!(jobs_listed(&dev, &dev.token).await, 6);
    assert!(dev.interrupt().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_runs_the_tour_and_keeps_everything_across_a_restart() {
    let dir = temp_dir();
    let d = dir.to_str().unwrap();
    tour_across_a_restart(&["--data-dir", d], &[], "SQLite in").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_tour_runs_on_postgres_nats_and_redis() {
    let db = TestDb::create().await;
    let nats = NatsServer::start().await;
    let redis = RedisServer::start().await;
    let dir = temp_dir();
    tour_across_a_restart(
        &["--data-dir", dir.to_str().unwrap()],
        &[
            ("DATABASE_URL", &db.url),
            ("NATS_URL", &nats.url),
            ("REDIS_URL", &redis.url),
        ],
        "Postgres",
    )
    .await;
    // The auditor's command line reads the same Postgres store and read models.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runledger"))
        .args(["audit", "replay", "--user", DEMO_USER, "--format", "json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let rows: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows[0]["consumed"], 6);
    assert_eq!(rows[0]["matches_projection"], true);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_keeps_nothing() {
    let dev = Dev::start(&["--in-memory"], &[]);
    tour(&dev, 0).await;
    assert!(dev.interrupt().success());
    let dev = Dev::start(&["--in-memory"], &[]);
    assert_eq!(jobs_listed(&dev, &dev.token).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problems_and_lose_nothing() {
    let dev = Dev::start(&["--in-memory"], &[]);
    let (status, p) = submit(&dev, "no.such.task", json!({})).await;
    assert_eq!(status, 400);
    assert!(
        p["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:runledger:problem:")
    );
    let (status, _) = get(&dev, "not-a-jwt", "/v1/jobs").await;
    assert_eq!(status, 401);
    let other = format!("/v1/jobs/{}", uuid::Uuid::new_v4());
    let (status, _) = get(&dev, &dev.token, &other).await;
    assert_eq!(status, 404);
    let (status, body) = submit(&dev, "noop", json!({})).await;
    assert_eq!(status, 202);
    let id = body["job_id"].as_str().unwrap().to_owned();
    eventually(30, "the job to complete", || async {
        get(&dev, &dev.token, &format!("/v1/jobs/{id}")).await.1["status"] == "completed"
    })
    .await;
    eventually(30, "one unit", || async {
        get(&dev, &dev.token, "/v1/usage").await.1["consumed"] == 1
    })
    .await;
}

/// The process is killed (no Ctrl-C) while a job runs: at the next start its attempt is
/// failed as retryable, the next attempt runs, and the job counts one unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_running_when_the_process_dies_is_retried_at_the_next_start() {
    let dir = temp_dir();
    let d = dir.to_str().unwrap().to_owned();
    let mut dev = Dev::start(&["--data-dir", &d], &[]);
    let (status, body) = submit(&dev, "sleep", json!({"ms": 3000})).await;
    assert_eq!(status, 202);
    let job = format!("/v1/jobs/{}", body["job_id"].as_str().unwrap());
    eventually(30, "the job to run", || async {
        get(&dev, &dev.token, &job).await.1["status"] == "running"
    })
    .await;
    dev.child.kill().unwrap();
    dev.child.wait().unwrap();

    let dev = Dev::start(&["--data-dir", &d], &[]);
    eventually(60, "the retried job to complete", || async {
        get(&dev, &dev.token, &job).await.1["status"] == "completed"
    })
    .await;
    assert_eq!(get(&dev, &dev.token, &job).await.1["attempts"], 2);
    eventually(30, "one unit", || async {
        let u = get(&dev, &dev.token, "/v1/usage").await.1;
        u["consumed"] == 1 && u["reserved"] == 0
    })
    .await;
    audit_verifies(&dev, 1).await;
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ctrl-C while a job runs: it finishes within the grace period before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_lets_a_running_job_finish() {
    let dir = temp_dir();
    let d = dir.to_str().unwrap().to_owned();
    let dev = Dev::start(&["--data-dir", &d], &[]);
    let (_, body) = submit(&dev, "sleep", json!({"ms": 1500})).await;
    let job = format!("/v1/jobs/{}", body["job_id"].as_str().unwrap());
    eventually(30, "the job to run", || async {
        get(&dev, &dev.token, &job).await.1["status"] == "running"
    })
    .await;
    assert!(dev.interrupt().success());
    let dev = Dev::start(&["--data-dir", &d], &[]);
    let view = get(&dev, &dev.token, &job).await.1;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["attempts"], 1);
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each real service alone replaces its embedded stand-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_real_service_can_be_switched_on_alone() {
    let db = TestDb::create().await;
    let nats = NatsServer::start().await;
    let redis = RedisServer::start().await;
    for (var, url, events_in) in [
        ("DATABASE_URL", db.url.as_str(), "Postgres"),
        ("NATS_URL", nats.url.as_str(), "SQLite"),
        ("REDIS_URL", redis.url.as_str(), "SQLite"),
    ] {
        let dev = Dev::start(&["--in-memory"], &[(var, url)]);
        assert!(dev.printed(events_in), "{var}");
        tour(&dev, 0).await;
        assert!(dev.interrupt().success(), "{var}");
    }
}

/// An edited unit in the embedded store is caught by the auditor's replay, at that unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_catches_a_unit_edited_in_the_database() {
    let dir = temp_dir();
    let d = dir.to_str().unwrap().to_owned();
    let dev = Dev::start(&["--data-dir", &d], &[]);
    tour(&dev, 0).await;
    assert!(dev.interrupt().success());
    // The auditor's command line, before the edit: every ledger holds.
    let (ok, out, _) = audit_replay(&d, "json");
    assert!(ok, "{out}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["consumed"], 3);
    assert_eq!(rows[0]["chain_verified"], true);
    let (ok, table, _) = audit_replay(&d, "table");
    assert!(ok && table.starts_with("period_start"), "{table}");

    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{d}/events.db"))
        .await
        .unwrap();
    let (position, payload): (i64, String) = sqlx::query_as(
        "SELECT position, payload FROM events WHERE event_type = 'UnitConsumed' \
         ORDER BY sequence LIMIT 1 OFFSET 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let mut unit: Value = serde_json::from_str(&payload).unwrap();
    unit["UnitConsumed"]["consumed_at"] = json!("2001-01-01T00:00:00Z");
    sqlx::query("UPDATE events SET payload = ?1 WHERE position = ?2")
        .bind(unit.to_string())
        .bind(position)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let dev = Dev::start(&["--data-dir", &d], &[]);
    let (status, audit) = get(
        &dev,
        &dev.auditor,
        &format!("/v1/audit/usage/{DEMO_USER}?period={}", month()),
    )
    .await;
    assert_eq!(status, 200);
    let p = &audit["periods"][0];
    assert_eq!(p["chain_verified"], false, "{audit}");
    assert_eq!(p["chain_break"]["index"], 1, "{audit}");
    assert_eq!(
        p["chain_break"]["reason"],
        "hash does not match the unit's contents"
    );
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Paging through the jobs with the cursor gives each job once, newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_through_jobs_gives_each_once_newest_first() {
    let dev = Dev::start(&["--in-memory"], &[]);
    let mut submitted = Vec::new();
    for _ in 0..25 {
        let (status, body) = submit(&dev, "noop", json!({})).await;
        assert_eq!(status, 202);
        submitted.push(body["job_id"].as_str().unwrap().to_owned());
    }
    eventually(30, "every job listed", || async {
        jobs_listed(&dev, &dev.token).await == 25
    })
    .await;
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=10&cursor={c}"),
            None => "/v1/jobs?limit=10".to_owned(),
        };
        let (status, page) = get(&dev, &dev.token, &path).await;
        assert_eq!(status, 200, "{page}");
        for j in page["jobs"].as_array().unwrap() {
            seen.push(j["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    submitted.reverse();
    assert_eq!(seen, submitted);
}

/// Only completed jobs count: a job refused by the SSRF guard fails for good and a canceled
/// one is released; the ledger still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_canceled_jobs_count_no_unit() {
    let dev = Dev::start(&["--in-memory"], &[]);
    let (_, done) = submit(&dev, "noop", json!({})).await;
    let (_, refused) = submit(
        &dev,
        "http.request",
        json!({"url": "http://169.254.169.254/latest/meta-data/"}),
    )
    .await;
    let (_, long) = submit(&dev, "sleep", json!({"ms": 20_000})).await;
    let job = |b: &Value| format!("/v1/jobs/{}", b["job_id"].as_str().unwrap());
    eventually(30, "the sleep to run", || async {
        get(&dev, &dev.token, &job(&long)).await.1["status"] == "running"
    })
    .await;
    let res = client()
        .post(format!("{}{}/cancel", dev.url, job(&long)))
        .bearer_auth(&dev.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for (b, want) in [
        (&done, "completed"),
        (&refused, "failed"),
        (&long, "canceled"),
    ] {
        eventually(30, want, || async {
            get(&dev, &dev.token, &job(b)).await.1["status"] == want
        })
        .await;
    }
    let (_, view) = get(&dev, &dev.token, &job(&refused)).await;
    assert!(
        view["error"].as_str().unwrap().contains("not allowed"),
        "{view}"
    );
    eventually(30, "one unit consumed, two released", || async {
        let (_, h) = get(&dev, &dev.token, "/v1/usage/history").await;
        let p = &h["periods"][0];
        p["consumed"] == 1 && p["released"] == 2 && p["reserved"] == 0
    })
    .await;
    audit_verifies(&dev, 1).await;
}

/// The auditor reads the raw log as NDJSON: one user's events only, in global order, exactly
/// as stored; a time range narrows it; customers are refused; a bad parameter is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_reads_one_users_raw_events_as_ndjson() {
    let dir = temp_dir();
    let dev = Dev::start(&["--data-dir", dir.to_str().unwrap()], &[]);
    tour(&dev, 0).await;
    // Another user's job, which the demo user's log must not show.
    let other = new_customer(&dir);
    let res = client()
        .post(format!("{}/v1/jobs", dev.url))
        .bearer_auth(&other)
        .json(&json!({"task_type": "noop", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let other_job = res.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let fetch = |query: String, token: String| {
        let url = format!("{}/v1/audit/events{query}", dev.url);
        async move {
            let res = client().get(url).bearer_auth(token).send().await.unwrap();
            let status = res.status().as_u16();
            let kind = res
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, kind, res.text().await.unwrap())
        }
    };
    let (status, kind, body) = fetch(format!("?user={DEMO_USER}"), dev.auditor.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(kind.as_deref(), Some("application/x-ndjson"));
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // 3 jobs × (submitted, started, completed) + 3 reserved + 3 consumed.
    assert_eq!(lines.len(), 15, "{body}");
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["position"].as_i64() < w[1]["position"].as_i64())
    );
    assert!(lines.iter().all(|l| l["aggregate_type"] == "job"
        || l["aggregate_id"].as_str().unwrap().starts_with(DEMO_USER)));
    let consumed = lines
        .iter()
        .filter(|l| l["event_type"] == "UnitConsumed")
        .count();
    assert_eq!(consumed, 3);
    // Nothing recorded before 2001.
    let (_, _, none) = fetch("?to=2001-01-01T00:00:00Z".into(), dev.auditor.clone()).await;
    assert!(none.is_empty(), "{none}");
    let (status, _, _) = fetch(String::new(), dev.token.clone()).await;
    assert_eq!(status, 403);
    let (status, _, p) = fetch("?user=bob".into(), dev.auditor.clone()).await;
    assert_eq!(status, 400, "{p}");
    let (status, _, _) = fetch("?since=yesterday".into(), dev.auditor.clone()).await;
    assert_eq!(status, 400);
    assert!(!body.contains(&other_job));
    let (_, _, all) = fetch(String::new(), dev.auditor.clone()).await;
    assert!(all.contains(&other_job));
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `runledger audit replay` on a data directory: (success, stdout, stderr).
fn audit_replay(dir: &str, format: &str) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runledger"))
        .args([
            "audit",
            "replay",
            "--user",
            DEMO_USER,
            "--data-dir",
            dir,
            "--format",
            format,
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An event the embedded read models cannot read does not keep `runledger dev` from
/// starting: it is parked, listed by `runledger events parked`, and the rest is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_event_is_parked_and_dev_still_starts() {
    let dir = temp_dir();
    let d = dir.to_str().unwrap().to_owned();
    let dev = Dev::start(&["--data-dir", &d], &[]);
    let (_, body) = submit(&dev, "noop", json!({})).await;
    let job = body["job_id"].as_str().unwrap().to_owned();
    eventually(30, "the job to complete", || async {
        get(&dev, &dev.token, &format!("/v1/jobs/{job}")).await.1["status"] == "completed"
    })
    .await;
    assert!(dev.interrupt().success());

    let pool = platform::db::open_embedded(Some(&dir)).await.unwrap();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
                             payload, metadata) \
         VALUES ('job', ?1, 1000, 'JobExploded', '1.0', '{\"JobExploded\": {}}', '{}')",
    )
    .bind(&job)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let dev = Dev::start(&["--data-dir", &d], &[]);
    let (status, body) = submit(&dev, "noop", json!({})).await;
    assert_eq!(status, 202);
    let next = format!("/v1/jobs/{}", body["job_id"].as_str().unwrap());
    eventually(30, "a later job to complete", || async {
        get(&dev, &dev.token, &next).await.1["status"] == "completed"
    })
    .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runledger"))
        .args(["events", "parked", "--json", "--data-dir", &d])
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let parked: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        parked
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["consumer"] == "projections" && p["event_type"] == "JobExploded"),
        "{parked}"
    );
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The data directory and its files are the owner's only, whatever they were before: the
/// events, the tokens in `env` and the JWT secret.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_secrets_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir();
    let d = dir.to_str().unwrap().to_owned();
    let open = std::fs::Permissions::from_mode;
    std::fs::set_permissions(&dir, open(0o755)).unwrap();
    std::fs::write(dir.join("jwt-secret"), "0123456789abcdef0123456789abcdef01").unwrap();
    std::fs::set_permissions(dir.join("jwt-secret"), open(0o644)).unwrap();
    std::fs::write(dir.join("env"), "URL=stale\n").unwrap();
    std::fs::set_permissions(dir.join("env"), open(0o644)).unwrap();
    let dev = Dev::start(&["--data-dir", &d], &[]);
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for name in ["jwt-secret", "env", "events.db"] {
        assert_eq!(mode(name), 0o600, "{name}");
    }
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}
