//! One job, one trace: from the client's `POST /v1/jobs` through the store, the process
//! manager, the relay, the projections, the dispatcher and the worker to the SSE event, each
//! role a process of its own exporting to the receiver.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use domain::ids::UserId;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{
    helpers::{final_status, serve, submit},
    otlp::{Receiver, Span},
    stack::{Seen, Stack, token, watch},
};

/// The spans a job's trace must hold, and the services that send them.
const EXPECTED: &[(&str, &str)] = &[
    ("POST /v1/jobs", "runledger-command-api"),
    ("eventstore.append", "runledger-command-api"),
    ("dispatcher.dispatch", "runledger-dispatcher"),
    ("worker.execute", "runledger-worker"),
    ("POST /v1/worker/jobs/{id}/start", "runledger-command-api"),
    (
        "POST /v1/worker/jobs/{id}/complete",
        "runledger-command-api",
    ),
    ("process_manager.react", "runledger-command-api"),
    ("relay.publish", "runledger-relay"),
    ("projection.apply", "runledger-projections"),
    ("sse.send", "runledger-read-api"),
];

fn missing(spans: &[Span]) -> Vec<&'static str> {
    EXPECTED
        .iter()
        .filter(|(name, service)| {
            !spans
                .iter()
                .any(|s| s.name == *name && s.service == *service)
        })
        .map(|(name, _)| *name)
        .collect()
}

/// The entries of the default namespace's `scheduled` set.
async fn scheduled_entries(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg("jobs:default:scheduled")
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap()
}

/// The spans whose parent is neither `root` nor a span received.
fn orphans<'a>(spans: &'a [Span], root: &str) -> Vec<&'a str> {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    spans
        .iter()
        .filter(|s| s.parent != root && !ids.contains(s.parent.as_str()))
        .map(|s| s.name.as_str())
        .collect()
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_is_one_trace_from_submit_to_its_sse_event() {
    let receiver = Receiver::start().await;
    let stack = Stack::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    let user = UserId::from_uuid(uuid::Uuid::new_v4());
    let token = token(user);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = CancellationToken::new();
    tokio::spawn(watch(
        stack.read.clone(),
        token.clone(),
        seen.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The client's own trace: the job's spans must all land in it.
    let trace_id = hex::encode(rand::random::<[u8; 16]>());
    let client_span = hex::encode(rand::random::<[u8; 8]>());
    let job_id = submit(
        &stack,
        &token,
        json!({"task_type": "noop", "payload": {}}),
        &[
            ("traceparent", format!("00-{trace_id}-{client_span}-01")),
            ("x-correlation-id", "trace-me-1".to_owned()),
        ],
    )
    .await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let done = seen
            .lock()
            .unwrap()
            .jobs
            .get(&job_id)
            .is_some_and(|s| s.iter().any(|st| st == "completed"));
        let spans = receiver.trace(&trace_id);
        // Each role exports on its own schedule: a child (sse.send) may arrive before the
        // parent that another role still buffers, so wait for the tree to close too.
        if done && missing(&spans).is_empty() && orphans(&spans, &client_span).is_empty() {
            break spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "completed on SSE: {done}; spans missing: {:?}; parents not received: {:?}; received: {:?}",
            missing(&spans),
            orphans(&spans, &client_span),
            spans
                .iter()
                .map(|s| (&s.service, &s.name))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.cancel();

    // One tree: the request's span is the only child of the client's span; every other
    // span's parent is a span of the trace.
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let roots: Vec<&Span> = spans.iter().filter(|s| s.parent == client_span).collect();
    assert_eq!(roots.len(), 1, "{roots:#?}");
    assert_eq!(roots[0].name, "POST /v1/jobs");
    for s in &spans {
        assert!(
            s.parent == client_span || ids.contains(s.parent.as_str()),
            "{} ({}) has a parent outside the trace",
            s.name,
            s.service
        );
    }
    // Parented by causality.
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent_of = |s: &Span| by_id.get(s.parent.as_str()).map(|p| p.name.clone());
    let submit = one(&spans, "POST /v1/jobs");
    let dispatch = one(&spans, "dispatcher.dispatch");
    assert_eq!(
        dispatch.parent, submit.span_id,
        "the dispatch follows the submission"
    );
    let execute = one(&spans, "worker.execute");
    assert_eq!(
        execute.parent, dispatch.span_id,
        "the worker continues the envelope's context"
    );
    for report in [
        "POST /v1/worker/jobs/{id}/start",
        "POST /v1/worker/jobs/{id}/complete",
    ] {
        assert_eq!(
            one(&spans, report).parent,
            execute.span_id,
            "{report} is sent from the execution"
        );
    }
    let react = one(&spans, "process_manager.react");
    assert_eq!(
        parent_of(react).as_deref(),
        Some("POST /v1/worker/jobs/{id}/complete"),
        "the unit is committed because of the completion"
    );
    for s in spans.iter().filter(|s| s.name == "sse.send") {
        assert_eq!(parent_of(s).as_deref(), Some("projection.apply"));
    }
    assert!(
        spans
            .iter()
            .filter(|s| s.name == "eventstore.append")
            .any(|s| s.parent == submit.span_id),
        "the submission's append is inside its request"
    );
    // Every span names the job and its correlation id.
    for s in &spans {
        assert_eq!(
            s.attributes.get("job_id").map(String::as_str),
            Some(job_id.as_str()),
            "{} ({}) lacks job_id: {:?}",
            s.name,
            s.service,
            s.attributes
        );
        assert_eq!(
            s.attributes.get("correlation_id").map(String::as_str),
            Some("trace-me-1"),
            "{} ({}) lacks correlation_id",
            s.name,
            s.service
        );
    }
    let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services.len(), 6, "{services:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_and_no_context_travels() {
    let stack = Stack::start().await;
    let user = UserId::from_uuid(uuid::Uuid::new_v4());
    let token = token(user);
    let job_id = submit(
        &stack,
        &token,
        json!({"task_type": "noop", "payload": {}}),
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )],
    )
    .await;
    assert_eq!(final_status(&stack, &token, &job_id).await, "completed");
    // No traceparent reached the events: the envelope and the log stay as before.
    let traced: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE metadata::jsonb ? 'traceparent'")
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(traced, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_stays_in_the_trace_and_a_traced_envelope_is_withdrawn_on_cancel() {
    let receiver = Receiver::start().await;
    let site = serve(axum::Router::new().route(
        "/broken",
        axum::routing::get(|| async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }),
    ))
    .await;
    let stack = Stack::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUNLEDGER_HTTP_ALLOW", "127.0.0.1/32"),
    ])
    .await;
    let token = token(UserId::from_uuid(uuid::Uuid::new_v4()));
    let trace_id = hex::encode(rand::random::<[u8; 16]>());
    let failing = submit(
        &stack,
        &token,
        json!({"task_type": "http.request", "payload": {"url": format!("{site}/broken")}, "max_attempts": 2}),
        &[(
            "traceparent",
            format!("00-{trace_id}-{}-01", hex::encode(rand::random::<[u8; 8]>())),
        )],
    )
    .await;
    let later = submit(
        &stack,
        &token,
        json!({"task_type": "noop", "payload": {}, "run_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()}),
        &[],
    )
    .await;

    // Both attempts run in the submission's trace.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let spans = receiver.trace(&trace_id);
        let attempts: HashSet<String> = spans
            .iter()
            .filter(|s| s.name == "worker.execute")
            .filter_map(|s| s.attributes.get("attempt").cloned())
            .collect();
        if attempts.len() == 2 {
            assert!(
                spans
                    .iter()
                    .all(|s| s.attributes.get("job_id") == Some(&failing))
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "attempts traced: {attempts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The scheduled envelope carries a traceparent; the cancel still takes it out.
    let client = redis::Client::open(stack.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let scheduled = scheduled_entries(&mut conn).await;
    assert!(
        scheduled
            .iter()
            .any(|e| e.contains(&later) && e.contains("\"traceparent\":\"00-")),
        "{scheduled:?}"
    );
    let res = stack
        .client
        .post(format!("{}/v1/jobs/{later}/cancel", stack.writes[1]))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let scheduled = scheduled_entries(&mut conn).await;
        if !scheduled.iter().any(|e| e.contains(&later)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{scheduled:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
