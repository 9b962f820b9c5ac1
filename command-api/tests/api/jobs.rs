//! Worker reports, cancel, usage settlement by the process manager, and the sweeper.

use platform::auth::Role;
use serde_json::json;

use crate::helpers::*;

async fn consumed_units(app: &TestApp, user: domain::ids::UserId) -> usize {
    app.events_of("usage", &usage_id(user))
        .await
        .iter()
        .filter(|(t, _)| t == "UnitConsumed")
        .count()
}

#[tokio::test]
async fn a_completion_reported_twice_or_for_an_old_attempt_counts_one_unit() {
    let app = spawn_app(&[]).await;
    let user = new_user();
    let t = token(user, Role::Customer);
    let w = worker_token();
    let job = app.submit(&t).await.body["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = |op: &str| format!("/v1/worker/jobs/{job}/{op}");

    assert_eq!(
        app.post(
            &path("start"),
            Some(&w),
            &json!({"attempt": 1, "worker_id": "w1"})
        )
        .await
        .status,
        200
    );
    let r = app
        .post(
            &path("fail"),
            Some(&w),
            &json!({"attempt": 1, "error": "flaky", "retryable": true}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("retrying"))
    );
    assert_eq!(r.body["attempt"], 2);
    // The old attempt reports late: refused, nothing changes.
    let r = app
        .post(
            &path("complete"),
            Some(&w),
            &json!({"attempt": 1, "result": {}}),
        )
        .await;
    assert_problem(&r, 409, "stale-attempt");
    assert_eq!(
        app.post(
            &path("start"),
            Some(&w),
            &json!({"attempt": 2, "worker_id": "w2"})
        )
        .await
        .status,
        200
    );
    // The same start redelivered is harmless; another worker claiming it is refused.
    assert_eq!(
        app.post(
            &path("start"),
            Some(&w),
            &json!({"attempt": 2, "worker_id": "w2"})
        )
        .await
        .status,
        200
    );
    assert_problem(
        &app.post(
            &path("start"),
            Some(&w),
            &json!({"attempt": 2, "worker_id": "w3"}),
        )
        .await,
        409,
        "started-elsewhere",
    );
    assert_eq!(
        app.post(&path("heartbeat"), Some(&w), &json!({"attempt": 2}))
            .await
            .status,
        200
    );
    let r = app
        .post(
            &path("complete"),
            Some(&w),
            &json!({"attempt": 2, "result": {"ok": true}}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("completed"))
    );
    // Completed twice, and redelivered: refused, still one unit.
    assert_problem(
        &app.post(
            &path("complete"),
            Some(&w),
            &json!({"attempt": 2, "result": {}}),
        )
        .await,
        409,
        "job-finished",
    );
    assert_problem(
        &app.post(
            &path("fail"),
            Some(&w),
            &json!({"attempt": 2, "error": "x", "retryable": false}),
        )
        .await,
        409,
        "job-finished",
    );
    app.settle().await;
    assert_eq!(consumed_units(&app, user).await, 1);
    assert_eq!(app.count_events("JobCompleted").await, 1);

    // A crash after the usage commands but before the checkpoint: the batch is redone.
    sqlx::query("UPDATE checkpoints SET position = 0")
        .execute(&app.db.pool)
        .await
        .unwrap();
    app.settle().await;
    assert_eq!(consumed_units(&app, user).await, 1);
    let (pending,): (i64,) = sqlx::query_as("SELECT count(*) FROM pending_reservations")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(pending, 0);
}

#[tokio::test]
async fn dead_lettered_and_canceled_jobs_count_nothing() {
    let app = spawn_app(&[]).await;
    let user = new_user();
    let t = token(user, Role::Customer);
    let w = worker_token();
    let submit = json!({"task_type": "noop", "payload": {}, "max_attempts": 1});
    let failing = app.post("/v1/jobs", Some(&t), &submit).await.body["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(
        &format!("/v1/worker/jobs/{failing}/start"),
        Some(&w),
        &json!({"attempt": 1, "worker_id": "w"}),
    )
    .await;
    let r = app
        .post(
            &format!("/v1/worker/jobs/{failing}/fail"),
            Some(&w),
            &json!({"attempt": 1, "error": "boom", "retryable": true}),
        )
        .await;
    assert_eq!(r.body["status"], "failed");
    let canceled = app.submit(&t).await.body["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .post(&format!("/v1/jobs/{canceled}/cancel"), Some(&t), &json!({}))
        .await;
    assert_eq!(r.body["status"], "canceled");
    assert_problem(
        &app.post(&format!("/v1/jobs/{canceled}/cancel"), Some(&t), &json!({}))
            .await,
        409,
        "job-finished",
    );
    app.settle().await;
    let usage = app.events_of("usage", &usage_id(user)).await;
    let mut kinds: Vec<&str> = usage.iter().map(|(t, _)| t.as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "UnitReleased",
            "UnitReleased",
            "UnitReserved",
            "UnitReserved"
        ]
    );
}

#[tokio::test]
async fn another_users_job_is_a_404() {
    let app = spawn_app(&[]).await;
    let owner = token(new_user(), Role::Customer);
    let stranger = token(new_user(), Role::Customer);
    let job = app.submit(&owner).await.body["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_problem(
        &app.post(
            &format!("/v1/jobs/{job}/cancel"),
            Some(&stranger),
            &json!({}),
        )
        .await,
        404,
        "not-found",
    );
    assert_problem(
        &app.post("/v1/jobs/not-a-uuid/cancel", Some(&stranger), &json!({}))
            .await,
        404,
        "not-found",
    );
    let w = worker_token();
    let missing = uuid::Uuid::new_v4();
    assert_problem(
        &app.post(
            &format!("/v1/worker/jobs/{missing}/start"),
            Some(&w),
            &json!({"attempt": 1, "worker_id": "w"}),
        )
        .await,
        404,
        "not-found",
    );
}

/// A crash between reservation and submission leaves a reservation with no job; the
/// sweeper gives the unit back.
#[tokio::test]
async fn the_sweeper_returns_an_orphaned_reservation() {
    use chrono::Utc;
    use domain::{
        ids::JobId,
        period::BillingPeriod,
        plan::Plan,
        usage::{ReserveUnit, Usage, UsageCommand},
    };
    let app = spawn_app(&[
        ("RUNLEDGER_FREE_LIMIT", "1"),
        ("RUNLEDGER_RESERVATION_TIMEOUT_SECS", "0"),
    ])
    .await;
    let user = new_user();
    let now = Utc::now();
    let orphan = JobId::from_uuid(uuid::Uuid::new_v4());
    // The reservation alone, as a process that died before appending the job would leave it.
    let reserve = UsageCommand::Reserve(ReserveUnit {
        job_id: orphan,
        user_id: user,
        period: BillingPeriod::calendar_month(now),
        plan: Plan::Free,
        limit: Some(1),
        now,
    });
    app.state
        .store
        .execute::<Usage>(&usage_id(user), reserve, &Default::default())
        .await
        .unwrap()
        .unwrap();
    let t = token(user, Role::Customer);
    assert_problem(&app.submit(&t).await, 402, "quota-exceeded");
    app.settle().await;
    // The background process manager sweeps too (its timeout is 0 here): one of them wins.
    let released = command_api::process::sweep(&app.state.store, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert!(released <= 1);
    app.settle().await;
    let usage = app.events_of("usage", &usage_id(user)).await;
    assert_eq!(
        usage.last().unwrap().1["UnitReleased"]["reason"],
        "orphaned"
    );
    assert_eq!(app.submit(&t).await.status, 202);
    // A submitted job's reservation is never swept.
    app.settle().await;
    assert_eq!(
        command_api::process::sweep(&app.state.store, std::time::Duration::ZERO)
            .await
            .unwrap(),
        0
    );
}

/// A worker cannot start a job before its `run_at`; the refusal says when it is due.
#[tokio::test]
async fn a_scheduled_job_cannot_start_before_its_run_at() {
    let app = spawn_app(&[]).await;
    let t = token(new_user(), Role::Customer);
    let run_at = chrono::Utc::now() + chrono::Duration::seconds(60);
    let r = app
        .post(
            "/v1/jobs",
            Some(&t),
            &json!({"task_type": "noop", "payload": {}, "run_at": run_at.to_rfc3339()}),
        )
        .await;
    assert_eq!(r.body["status"], "scheduled", "{:?}", r.body);
    let job = r.body["job_id"].as_str().unwrap().to_owned();
    let r = app
        .post(
            &format!("/v1/worker/jobs/{job}/start"),
            Some(&worker_token()),
            &json!({"attempt": 1, "worker_id": "eager"}),
        )
        .await;
    assert_problem(&r, 409, "not-due");
    let due: chrono::DateTime<chrono::Utc> =
        r.body["not_before"].as_str().unwrap().parse().unwrap();
    assert!((due - run_at).num_milliseconds().abs() < 1, "{:?}", r.body);
    assert_eq!(app.count_events("JobStarted").await, 0);
}

/// The `job-finished` problem keeps RFC 9457's `status` for the HTTP status and names the
/// job's own status `job_status`.
#[tokio::test]
async fn a_finished_job_problem_has_one_status_member() {
    let app = spawn_app(&[]).await;
    let t = token(new_user(), Role::Customer);
    let job = app.submit(&t).await.body["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cancel = format!("/v1/jobs/{job}/cancel");
    assert_eq!(app.post(&cancel, Some(&t), &json!({})).await.status, 200);
    let r = app.post(&cancel, Some(&t), &json!({})).await;
    assert_problem(&r, 409, "job-finished");
    assert_eq!(r.body["status"], 409);
    assert_eq!(r.body["job_status"], "canceled");
}
