//! Bad bodies are refused with a problem and change nothing.

use platform::auth::Role;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn bad_bodies_are_refused_and_nothing_is_recorded() {
    let app = spawn_app(&[("RUNLEDGER_BODY_LIMIT", "4096")]).await;
    let t = token(new_user(), Role::Customer);
    let oversize = json!({"task_type": "noop", "payload": {"blob": "x".repeat(10_000)}});
    assert_problem(
        &app.post("/v1/jobs", Some(&t), &oversize).await,
        413,
        "payload-too-large",
    );
    let cases = [
        (
            "unknown field",
            json!({"task_type": "noop", "payload": {}, "priority": 9}),
        ),
        (
            "unknown task type",
            json!({"task_type": "image.resize", "payload": {}}),
        ),
        (
            "bad task type syntax",
            json!({"task_type": "NOOP!", "payload": {}}),
        ),
        (
            "bad run_at",
            json!({"task_type": "noop", "payload": {}, "run_at": "tomorrow"}),
        ),
        (
            "run_at too far",
            json!({"task_type": "noop", "payload": {}, "run_at": "2999-01-01T00:00:00Z"}),
        ),
        (
            "huge task type",
            json!({"task_type": "a".repeat(3_000), "payload": {}}),
        ),
        (
            "huge correlation id",
            json!({"task_type": "noop", "payload": {}, "correlation_id": "c".repeat(1_000)}),
        ),
        (
            "max_attempts 0",
            json!({"task_type": "noop", "payload": {}, "max_attempts": 0}),
        ),
        (
            "max_attempts 99",
            json!({"task_type": "noop", "payload": {}, "max_attempts": 99}),
        ),
        ("missing payload", json!({"task_type": "noop"})),
        (
            "sleep -1",
            json!({"task_type": "sleep", "payload": {"ms": -1}}),
        ),
        (
            "sleep too long",
            json!({"task_type": "sleep", "payload": {"ms": 300_001}}),
        ),
        (
            "sleep unknown field",
            json!({"task_type": "sleep", "payload": {"ms": 1, "x": 1}}),
        ),
        (
            "noop with fields",
            json!({"task_type": "noop", "payload": {"n": 1}}),
        ),
        (
            "http file url",
            json!({"task_type": "http.request", "payload": {"url": "file:///etc/passwd"}}),
        ),
        (
            "http bad header name",
            json!({"task_type": "http.request", "payload": {"url": "https://a.example", "headers": {"bad name": "x"}}}),
        ),
        (
            "agent without prompt",
            json!({"task_type": "agent.run", "payload": {}}),
        ),
        ("not an object", json!([1, 2])),
    ];
    for (name, body) in cases {
        let r = app.post("/v1/jobs", Some(&t), &body).await;
        assert_eq!(r.status, 400, "{name}: {:?}", r.body);
        assert_problem(&r, 400, "invalid-request");
    }
    // A refused payload holds no unit and reaches no worker.
    assert_eq!(app.count_events("UnitReserved").await, 0);
    assert_eq!(app.count_events("JobSubmitted").await, 0);
    let r = app
        .post_raw("/v1/jobs", Some(&t), "{not json".into(), &[])
        .await;
    assert_problem(&r, 400, "invalid-request");
    let r = app
        .post_raw(
            "/v1/jobs",
            Some(&t),
            "{}".into(),
            &[("x-correlation-id", "has space")],
        )
        .await;
    assert_problem(&r, 400, "invalid-request");
    let r = app
        .post_raw(
            "/v1/jobs",
            Some(&t),
            json!({"task_type": "noop", "payload": {}}).to_string(),
            &[("idempotency-key", &"k".repeat(300))],
        )
        .await;
    assert_problem(&r, 400, "invalid-request");
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM events")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_too() {
    let app = spawn_app(&[]).await;
    let r = app
        .client
        .get(format!("{}/v1/nope", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = app
        .client
        .get(format!("{}/v1/jobs/x/cancel", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_same_idempotency_key_replays_and_a_different_body_conflicts() {
    let app = spawn_app(&[]).await;
    let t = token(new_user(), Role::Customer);
    let body = json!({"task_type": "sleep", "payload": {"ms": 1}}).to_string();
    let key = [("idempotency-key", "order-42")];
    let first = app.post_raw("/v1/jobs", Some(&t), body.clone(), &key).await;
    assert_eq!(first.status, 202);
    let again = app.post_raw("/v1/jobs", Some(&t), body.clone(), &key).await;
    assert_eq!((again.status, &again.body), (202, &first.body));
    let other = app
        .post_raw(
            "/v1/jobs",
            Some(&t),
            json!({"task_type": "sleep", "payload": {"ms": 2}}).to_string(),
            &key,
        )
        .await;
    assert_problem(&other, 409, "idempotency-key-reused");
    // Keys are per user: another user's same key is a new request.
    let t2 = token(new_user(), Role::Customer);
    assert_ne!(
        app.post_raw("/v1/jobs", Some(&t2), body.clone(), &key)
            .await
            .body,
        first.body
    );
    // Concurrent duplicates still make one job.
    let t3 = token(new_user(), Role::Customer);
    let k3 = [("idempotency-key", "burst")];
    let replies = futures::future::join_all(
        (0..10).map(|_| app.post_raw("/v1/jobs", Some(&t3), body.clone(), &k3)),
    )
    .await;
    assert!(
        replies
            .iter()
            .all(|r| r.status == 202 && r.body == replies[0].body)
    );
    assert_eq!(app.count_events("JobSubmitted").await, 3);
}

#[tokio::test]
async fn metrics_show_route_latency_and_commits() {
    let app = spawn_app(&[]).await;
    let t = token(new_user(), Role::Customer);
    assert_eq!(app.submit(&t).await.status, 202);
    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("runledger_http_request_duration_seconds"),
        "{text}"
    );
    assert!(text.contains("route=\"/v1/jobs\""), "{text}");
    assert!(
        text.contains("runledger_commands_committed_total"),
        "{text}"
    );
}

#[tokio::test]
async fn readyz_fails_while_the_database_is_unreachable() {
    let app = spawn_app(&[]).await;
    let ready = |app: &TestApp| {
        let url = format!("{}/readyz", app.base);
        let client = app.client.clone();
        async move { client.get(url).send().await.unwrap() }
    };
    assert_eq!(ready(&app).await.status(), 200);
    // The database goes away under the running service.
    let name = app.db.url.rsplit('/').next().unwrap().to_owned();
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(&platform::testing::admin_url())
            .await
            .unwrap();
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    let r = ready(&app).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(
        app.client
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// JSON Schema counts `3.0` as an integer: such a body is read as the integer it is, in the
/// request and in the payload.
#[tokio::test]
async fn integral_floats_are_integers() {
    let app = spawn_app(&[]).await;
    let t = token(new_user(), Role::Customer);
    let r = app
        .post(
            "/v1/jobs",
            Some(&t),
            &json!({"task_type": "sleep", "payload": {"ms": 94.0}, "max_attempts": 3.0}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let r = app
        .post(
            "/v1/jobs",
            Some(&t),
            &json!({"task_type": "noop", "payload": {}, "max_attempts": 2.5}),
        )
        .await;
    assert_problem(&r, 400, "invalid-request");
}
