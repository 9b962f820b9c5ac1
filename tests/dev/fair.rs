//! Concurrency limits under `runledger dev`: a FREE user at concurrency 1 runs one job at a
//! time (seen through the job views and `/v1/usage`), the others wait with their place in
//! line, and another user's job is not held back by them.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{Dev, client, get, new_customer, wait_final};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_caps_a_users_running_jobs_by_plan() {
    let dir = std::env::temp_dir().join(format!("runledger-fair-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let dev = Dev::start(
        &["--data-dir", dir.to_str().unwrap()],
        &[("RUNLEDGER_FREE_CONCURRENCY", "1")],
    );
    let heavy = new_customer(&dir);
    let mut ids = Vec::new();
    for _ in 0..4 {
        let res = client()
            .post(format!("{}/v1/jobs", dev.url))
            .bearer_auth(&heavy)
            .json(&json!({"task_type": "sleep", "payload": {"ms": 1500}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let body: serde_json::Value = res.json().await.unwrap();
        ids.push(body["job_id"].as_str().unwrap().to_owned());
    }
    // The first runs; the last waits behind its owner's two others.
    let (_, last) = get(&dev, &heavy, &format!("/v1/jobs/{}", ids[3])).await;
    assert_eq!(last["status"], "queued");
    assert_eq!(last["queued_behind"], 2, "{last}");

    // Another user's job runs while the first user's wait.
    let light = new_customer(&dir);
    let t0 = Instant::now();
    let res = client()
        .post(format!("{}/v1/jobs", dev.url))
        .bearer_auth(&light)
        .json(&json!({"task_type": "noop", "payload": {}}))
        .send()
        .await
        .unwrap();
    let light_job: serde_json::Value = res.json().await.unwrap();
    wait_final(&dev, &light, light_job["job_id"].as_str().unwrap(), 10).await;
    assert!(
        t0.elapsed() < Duration::from_millis(1_000),
        "held back: {:?}",
        t0.elapsed()
    );

    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (_, page) = get(&dev, &heavy, "/v1/jobs?status=running").await;
        let running = page["jobs"].as_array().map_or(0, Vec::len);
        let (_, usage) = get(&dev, &heavy, "/v1/usage").await;
        assert_eq!(usage["concurrency_limit"], 1, "{usage}");
        assert!(usage["running"].as_i64().unwrap() <= 1, "{usage}");
        most = most.max(running);
        let (_, done) = get(&dev, &heavy, "/v1/jobs?status=completed").await;
        if done["jobs"].as_array().map_or(0, Vec::len) == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "the four jobs did not complete");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(most, 1, "one running at a time, and some ran");
}
