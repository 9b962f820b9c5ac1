//! Every write route × every role × own and other user's job: the role is checked before
//! the body is read (a malformed body from the wrong role is 403, not 400), and a service
//! token whose `sub` is a customer's id acts for no customer.

use platform::auth::Role;
use serde_json::json;

use crate::helpers::*;

/// A job of `owner` that waits (scheduled a day ahead), so cancel can succeed on it.
async fn waiting_job(app: &TestApp, owner: &str) -> String {
    let later = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let r = app
        .post(
            "/v1/jobs",
            Some(owner),
            &json!({"task_type": "noop", "payload": {}, "run_at": later}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    r.body["job_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn each_route_admits_only_its_roles_before_reading_the_body() {
    let app = spawn_app(&[]).await;
    let owner = new_user();
    let other = new_user();
    let as_role = |role| token(owner, role);
    let owner_token = as_role(Role::Customer);
    let other_token = token(other, Role::Customer);
    let worker = as_role(Role::Worker);
    let auditor = as_role(Role::Auditor);
    let admin = as_role(Role::Admin);

    // (caller, submit, cancel of the owner's job, worker route with a malformed body)
    let table: [(&str, &str, u16, u16, u16); 5] = [
        ("owner", owner_token.as_str(), 202, 200, 403),
        ("another customer", other_token.as_str(), 202, 404, 403),
        // Service tokens whose sub is the owner's id act for no customer.
        ("worker", worker.as_str(), 403, 403, 400),
        ("auditor", auditor.as_str(), 403, 403, 403),
        ("admin", admin.as_str(), 403, 200, 400),
    ];
    for (who, t, submit, cancel, report) in table {
        let r = app
            .post(
                "/v1/jobs",
                Some(t),
                &json!({"task_type": "noop", "payload": {}}),
            )
            .await;
        assert_eq!(r.status, submit, "{who} submits: {:?}", r.body);
        // The wrong role with a malformed body: still 403.
        let r = app
            .post_raw("/v1/jobs", Some(t), "{not json".into(), &[])
            .await;
        let expected = if submit == 403 { 403 } else { 400 };
        assert_eq!(r.status, expected, "{who} submits garbage: {:?}", r.body);

        let job = waiting_job(&app, &owner_token).await;
        let r = app
            .post(&format!("/v1/jobs/{job}/cancel"), Some(t), &json!({}))
            .await;
        assert_eq!(
            r.status, cancel,
            "{who} cancels the owner's job: {:?}",
            r.body
        );
        if cancel != 200 {
            assert!(
                app.events_of("job", &job)
                    .await
                    .iter()
                    .all(|(t, _)| t != "JobCanceled"),
                "{who}'s refused cancel changed nothing"
            );
        }

        for op in ["start", "heartbeat", "complete", "fail"] {
            let r = app
                .post_raw(
                    &format!("/v1/worker/jobs/{job}/{op}"),
                    Some(t),
                    "{not json".into(),
                    &[],
                )
                .await;
            assert_eq!(
                r.status, report,
                "{who} → {op} with a malformed body: {:?}",
                r.body
            );
            if report == 403 {
                assert_problem(&r, 403, "forbidden");
            }
        }
    }
    // No token at all: 401 on every route.
    let job = waiting_job(&app, &owner_token).await;
    for path in [
        "/v1/jobs".to_owned(),
        format!("/v1/jobs/{job}/cancel"),
        format!("/v1/worker/jobs/{job}/start"),
        "/v1/billing/checkout".to_owned(),
    ] {
        let r = app.post_raw(&path, None, "{not json".into(), &[]).await;
        assert_eq!(r.status, 401, "{path}");
    }
    // Checkout is a customer's: every service role is 403, whatever the body.
    for t in [&worker, &auditor, &admin] {
        let r = app
            .post_raw("/v1/billing/checkout", Some(t), "{not json".into(), &[])
            .await;
        assert_problem(&r, 403, "forbidden");
    }
}
