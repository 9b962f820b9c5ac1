use std::time::Duration;

use platform::auth::Role;
use serde_json::json;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_is_seen_by_its_view_its_usage_and_sse_in_order() {
    let stack = Stack::start().await;
    let (_, t) = new_user();
    let mut sse = stack.sse(&t, None).await;
    let job = stack.submit(&t).await;
    let first = sse.take(1, WAIT).await;
    stack.run_job(&job).await;
    let rest = sse.take(2, WAIT).await;
    let events: Vec<_> = first.into_iter().chain(rest).collect();
    let seen: Vec<(&str, i64)> = events
        .iter()
        .map(|e| {
            (
                e.data["status"].as_str().unwrap(),
                e.data["attempts"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [("queued", 0), ("running", 1), ("completed", 1)]);
    assert!(
        events
            .iter()
            .all(|e| e.event == "job" && e.data["id"] == job.as_str())
    );
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    assert!(
        events
            .iter()
            .all(|e| e.data["updated_at"].as_str().is_some())
    );

    stack.settle().await;
    let (status, view) = stack.get(&format!("/v1/jobs/{job}"), &t).await;
    assert_eq!(status, 200);
    assert_eq!(
        (view["status"].as_str(), view["attempts"].as_i64()),
        (Some("completed"), Some(1))
    );
    assert_eq!(view["result"], json!({"ok": true}));
    let (_, usage) = stack.get("/v1/usage", &t).await;
    assert_eq!(
        (
            usage["plan"].as_str(),
            usage["consumed"].as_i64(),
            usage["reserved"].as_i64()
        ),
        (Some("FREE"), Some(1), Some(0))
    );
    assert_eq!(
        (usage["limit"].as_i64(), usage["remaining"].as_i64()),
        (Some(100), Some(99))
    );
    let (_, history) = stack.get("/v1/usage/history", &t).await;
    assert_eq!(history["periods"][0]["consumed"], 1);
    let (_, sub) = stack.get("/v1/subscription", &t).await;
    assert_eq!(sub["plan"], "FREE");
    let (_, list) = stack.get("/v1/jobs?status=completed", &t).await;
    assert_eq!(list["jobs"][0]["id"], job.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_users_never_see_each_others_jobs() {
    let stack = Stack::start().await;
    let (_, alice) = new_user();
    let (_, bob) = new_user();
    let mut a = stack.sse(&alice, None).await;
    let mut b = stack.sse(&bob, None).await;
    let mut a_jobs = Vec::new();
    let mut b_jobs = Vec::new();
    for _ in 0..5 {
        a_jobs.push(stack.submit(&alice).await);
        b_jobs.push(stack.submit(&bob).await);
    }
    let a_events = a.take(5, WAIT).await;
    let b_events = b.take(5, WAIT).await;
    assert!(
        a_events
            .iter()
            .all(|e| a_jobs.contains(&e.data["id"].as_str().unwrap().to_owned()))
    );
    assert!(
        b_events
            .iter()
            .all(|e| b_jobs.contains(&e.data["id"].as_str().unwrap().to_owned()))
    );
    assert!(a.next(Duration::from_millis(300)).await.is_none());
    for j in &b_jobs {
        assert!(
            !a.raw.contains(j.as_str()),
            "alice's stream carried bob's job"
        );
    }
    for j in &a_jobs {
        assert!(
            !b.raw.contains(j.as_str()),
            "bob's stream carried alice's job"
        );
    }
    // Reading another user's job is a 404, and lists hold only one's own.
    stack.caught_up().await;
    assert_eq!(
        stack
            .get(&format!("/v1/jobs/{}", b_jobs[0]), &alice)
            .await
            .0,
        404
    );
    let (_, list) = stack.get("/v1/jobs?limit=100", &alice).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn last_event_id_resumes_with_exactly_the_missed_events() {
    let stack = Stack::start().await;
    let (_, t) = new_user();
    let mut sse = stack.sse(&t, None).await;
    let a = stack.submit(&t).await;
    let seen = sse.take(1, WAIT).await;
    drop(sse);
    stack.run_job(&a).await;
    let b = stack.submit(&t).await;
    stack.caught_up().await;
    let mut resumed = stack.sse(&t, Some(seen[0].id)).await;
    let missed = resumed.take(3, WAIT).await;
    let got: Vec<(String, String)> = missed
        .iter()
        .map(|e| {
            (
                e.data["id"].as_str().unwrap().to_owned(),
                e.data["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (a.clone(), "running".into()),
            (a, "completed".into()),
            (b.clone(), "queued".into())
        ]
    );
    assert!(missed.iter().all(|e| e.id > seen[0].id));
    // Nothing twice, and the stream goes on live.
    assert!(resumed.next(Duration::from_millis(300)).await.is_none());
    stack
        .report(&b, "start", json!({"attempt": 1, "worker_id": "w"}))
        .await;
    let live = resumed.take(1, WAIT).await;
    assert_eq!(live[0].data["status"], "running");
    assert!(live[0].id > missed[2].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_endpoints_refuse_bad_requests() {
    let stack = Stack::start().await;
    let (_, t) = new_user();
    assert_eq!(stack.get("/v1/jobs?status=weird", &t).await.0, 400);
    assert_eq!(stack.get("/v1/jobs?limit=0", &t).await.0, 400);
    assert_eq!(stack.get("/v1/jobs?cursor=zzz", &t).await.0, 400);
    assert_eq!(stack.get("/v1/jobs?sort=asc", &t).await.0, 400);
    assert_eq!(stack.get("/v1/jobs/not-a-uuid", &t).await.0, 404);
    let r = stack
        .client
        .get(format!("{}/v1/jobs", stack.read))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = stack
        .client
        .get(format!("{}/v1/jobs/stream", stack.read))
        .bearer_auth(&t)
        .header("last-event-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Pagination walks every job once.
    for _ in 0..5 {
        stack.submit(&t).await;
    }
    stack.caught_up().await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=2&cursor={c}"),
            None => "/v1/jobs?limit=2".to_owned(),
        };
        let (_, page) = stack.get(&path, &t).await;
        seen.extend(
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_stream_gets_heartbeat_comments() {
    let stack = Stack::start().await;
    let (_, t) = new_user();
    let mut sse = stack.sse(&t, None).await;
    sse.drain(Duration::from_millis(2_500)).await;
    let beats = sse.raw.lines().filter(|l| l.starts_with(':')).count();
    assert!(beats >= 2, "{:?}", sse.raw);
    assert!(
        !sse.raw.contains("event:"),
        "an idle stream carries no events"
    );
}

/// Every read route × every role × own and other user's job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_read_route_admits_only_its_roles() {
    let stack = Stack::start().await;
    let (owner, owner_token) = new_user();
    let (_, other_token) = new_user();
    let job = stack.submit(&owner_token).await;
    stack.settle().await;
    let worker = token(owner, Role::Worker);
    let auditor = token(owner, Role::Auditor);
    let admin = token(owner, Role::Admin);
    let period = chrono::Utc::now().format("%Y-%m").to_string();
    let customer_routes = [
        "/v1/jobs".to_owned(),
        format!("/v1/jobs/{job}"),
        "/v1/jobs/stream".to_owned(),
        "/v1/usage".to_owned(),
        "/v1/usage/history".to_owned(),
        "/v1/subscription".to_owned(),
    ];
    let audit_routes = [
        format!("/v1/audit/usage/{owner}?period={period}"),
        "/v1/audit/events".to_owned(),
    ];
    let status = |path: String, t: Option<String>| {
        let (client, read) = (stack.client.clone(), stack.read.clone());
        async move {
            let mut req = client.get(format!("{read}{path}"));
            if let Some(t) = t {
                req = req.bearer_auth(t);
            }
            // Only the status line: a stream's body never ends.
            req.send().await.unwrap().status().as_u16()
        }
    };
    for path in &customer_routes {
        assert_eq!(
            status(path.clone(), Some(owner_token.clone())).await,
            200,
            "owner {path}"
        );
        let other = if path.ends_with(&job) { 404 } else { 200 };
        assert_eq!(
            status(path.clone(), Some(other_token.clone())).await,
            other,
            "other {path}"
        );
        for (who, t) in [
            ("worker", &worker),
            ("auditor", &auditor),
            ("admin", &admin),
        ] {
            assert_eq!(
                status(path.clone(), Some(t.clone())).await,
                403,
                "{who} {path}"
            );
        }
        assert_eq!(status(path.clone(), None).await, 401, "anonymous {path}");
    }
    // A job's artifact: customers only (the owner's 200 is in tests/dev/browser.rs; this noop
    // job has none, so its owner gets 404 like anyone else).
    let artifact = format!("/v1/jobs/{job}/artifacts/screenshot.png");
    for (who, t, expected) in [
        ("owner", &owner_token, 404),
        ("other", &other_token, 404),
        ("worker", &worker, 403),
        ("auditor", &auditor, 403),
        ("admin", &admin, 403),
    ] {
        assert_eq!(
            status(artifact.clone(), Some(t.clone())).await,
            expected,
            "{who} {artifact}"
        );
    }
    assert_eq!(status(artifact.clone(), None).await, 401, "anonymous");
    for path in &audit_routes {
        for (who, t, expected) in [
            ("auditor", &auditor, 200),
            ("admin", &admin, 200),
            ("owner", &owner_token, 403),
            ("worker", &worker, 403),
        ] {
            assert_eq!(
                status(path.clone(), Some(t.clone())).await,
                expected,
                "{who} {path}"
            );
        }
        assert_eq!(status(path.clone(), None).await, 401, "anonymous {path}");
    }
}

/// The audit finds a user's ledgers in the raw events, not in the projection it checks: a
/// ledger of a paid period that the projection lost is still replayed, and flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_finds_ledgers_the_projection_lost() {
    use domain::{
        ids::JobId,
        period::BillingPeriod,
        plan::Plan,
        usage::{ReserveUnit, Usage, UsageCommand, UsageKey},
    };
    let stack = Stack::start().await;
    let (owner, _) = new_user();
    let now = chrono::Utc::now();
    let month = BillingPeriod::calendar_month(now);
    // A paid period that starts on the 3rd of this month.
    let start = month.start + chrono::Duration::days(2);
    let period = BillingPeriod::new(start, start + chrono::Duration::days(30)).unwrap();
    let id = UsageKey::new(owner, &period).aggregate_id();
    let reserve = ReserveUnit {
        job_id: JobId::from_uuid(uuid::Uuid::new_v4()),
        user_id: owner,
        period,
        plan: Plan::Pro,
        limit: Some(10_000),
        now: start + chrono::Duration::hours(1),
    };
    stack
        .command
        .store
        .execute::<Usage>(
            &id,
            UsageCommand::Reserve(reserve),
            &eventstore::Metadata::new(),
        )
        .await
        .unwrap()
        .unwrap();
    stack.settle().await;
    let auditor = token(owner, Role::Auditor);
    let path = format!("/v1/audit/usage/{owner}?period={}", now.format("%Y-%m"));
    let listed = |body: &serde_json::Value| {
        body["periods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["period_start"] == json!(start))
            .cloned()
    };
    let (status, body) = stack.get(&path, &auditor).await;
    assert_eq!(status, 200);
    let ledger = listed(&body).expect("the paid ledger is audited");
    assert_eq!(ledger["reserved"], 1);
    assert_eq!(ledger["matches_projection"], true, "{ledger}");
    // The projection loses the ledger: the audit still replays it, and says they disagree.
    sqlx::query("DELETE FROM usage_periods WHERE user_id = $1")
        .bind(owner.as_uuid())
        .execute(&stack.db.pool)
        .await
        .unwrap();
    let (_, body) = stack.get(&path, &auditor).await;
    let ledger = listed(&body).expect("found in the raw events");
    assert_eq!(ledger["events"], 1);
    assert_eq!(ledger["matches_projection"], false, "{ledger}");
}
