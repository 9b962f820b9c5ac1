//! What the ops tests share: a local HTTP server, a submission, a job's final status.

use std::time::Duration;

use axum::Router;
use serde_json::Value;

use crate::stack::Stack;

/// Serves `app` on a free local port; its base URL.
pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// Submits `body` as `token`'s job on the first replica, with the headers given; its id.
pub async fn submit(stack: &Stack, token: &str, body: Value, headers: &[(&str, String)]) -> String {
    let mut req = stack
        .client
        .post(format!("{}/v1/jobs", stack.writes[0]))
        .bearer_auth(token)
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 202);
    res.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Polls the job view until the job ends (60 s at most); its final status.
pub async fn final_status(stack: &Stack, token: &str, id: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v: Value = stack
            .client
            .get(format!("{}/v1/jobs/{id}", stack.read))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        let status = v["status"].as_str().unwrap_or_default().to_owned();
        if ["completed", "failed", "canceled"].contains(&status.as_str()) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
