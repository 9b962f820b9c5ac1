//! `http.request` against real local servers: the body cap stops reading, credentials do
//! not follow a redirect to another host, and a bad header is the payload's fault.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    convert::Infallible,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::Query,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::get,
};
use domain::{
    envelope::{EnvelopeMeta, JobEnvelope},
    ids::{CorrelationId, JobId, UserId},
    retry::Attempt,
    task::TaskType,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use workers::{
    executors::{Executor, Generic},
    ssrf::Guard,
};

/// A server on `ip`: `/echo` answers the request's headers as JSON, `/redirect?to=` a 302,
/// `/endless` a body that never ends.
async fn server(ip: &str) -> String {
    let app = axum::Router::new()
        .route(
            "/echo",
            get(|headers: HeaderMap| async move {
                let seen: HashMap<String, String> = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                axum::Json(seen)
            }),
        )
        .route(
            "/redirect",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                (StatusCode::FOUND, [("location", q["to"].clone())]).into_response()
            }),
        )
        .route(
            "/endless",
            get(|| async {
                let chunks = futures::stream::repeat_with(|| {
                    Ok::<_, Infallible>(bytes::Bytes::from(vec![b'x'; 16 * 1024]))
                });
                Body::from_stream(chunks)
            }),
        );
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn envelope(payload: Value) -> JobEnvelope {
    JobEnvelope {
        job_id: JobId::from_uuid(uuid::Uuid::new_v4()),
        attempt: Attempt::FIRST,
        correlation_id: CorrelationId::parse("outbound-test").unwrap(),
        task_type: TaskType::parse("http.request").unwrap(),
        meta: EnvelopeMeta {
            user_id: UserId::from_uuid(uuid::Uuid::new_v4()),
            traceparent: None,
        },
        payload,
    }
}

fn executor() -> Generic {
    Generic::new(Guard::new(&["127.0.0.0/8".to_owned()]))
}

#[tokio::test]
async fn an_endless_body_is_cut_at_64_kib_without_reading_the_rest() {
    let target = server("127.0.0.1").await;
    let started = Instant::now();
    let out = executor()
        .run(
            &envelope(json!({"url": format!("{target}/endless"), "timeout_ms": 5000})),
            &CancellationToken::new(),
        )
        .await
        .expect("the capped answer is a result, not a timeout");
    assert_eq!(out["status"], 200);
    assert_eq!(out["body"].as_str().unwrap().len(), 64 * 1024);
    assert_eq!(out["truncated"], true);
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn credentials_do_not_follow_a_redirect_to_another_host() {
    let a = server("127.0.0.1").await;
    let b = server("127.0.0.2").await;
    let headers = json!({"Authorization": "Bearer s3cret", "Cookie": "session=1", "X-Keep": "yes"});
    let run = |to: String| {
        let env = envelope(json!({
            "url": format!("{a}/redirect?to={to}"),
            "headers": headers.clone(),
        }));
        async move {
            let out = executor()
                .run(&env, &CancellationToken::new())
                .await
                .unwrap();
            serde_json::from_str::<Value>(out["body"].as_str().unwrap()).unwrap()
        }
    };
    let elsewhere = run(format!("{b}/echo")).await;
    assert_eq!(elsewhere["x-keep"], "yes");
    assert!(elsewhere.get("authorization").is_none(), "{elsewhere}");
    assert!(elsewhere.get("cookie").is_none(), "{elsewhere}");
    // The same origin keeps them.
    let same = run(format!("{a}/echo")).await;
    assert_eq!(same["authorization"], "Bearer s3cret");
    assert_eq!(same["cookie"], "session=1");
}

async fn fatal(executor: Generic, payload: Value) -> workers::executors::ExecError {
    let err = executor
        .run(&envelope(payload), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(!err.retryable, "{err}");
    err
}

#[tokio::test]
async fn a_bad_header_or_a_forbidden_address_is_fatal() {
    let target = server("127.0.0.1").await;
    fatal(
        executor(),
        json!({"url": format!("{target}/echo"), "headers": {"bad name": "x"}}),
    )
    .await;
    let err = fatal(
        Generic::new(Guard::default()),
        json!({"url": format!("{target}/echo")}),
    )
    .await;
    assert!(err.message.contains("not allowed"), "{err}");
    let err = fatal(executor(), json!({"url": "http://[64:ff9b:1::a00:1]/"})).await;
    assert!(err.message.contains("not allowed"), "{err}");
}
