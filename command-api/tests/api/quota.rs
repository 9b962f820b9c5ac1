use futures::future::join_all;
use platform::auth::Role;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_submissions_on_a_limit_of_ten_accept_exactly_ten() {
    let app = spawn_app(&[("RUNLEDGER_FREE_LIMIT", "10")]).await;
    let user = new_user();
    let t = token(user, Role::Customer);
    let replies = join_all((0..50).map(|_| app.submit(&t))).await;
    let accepted = replies.iter().filter(|r| r.status == 202).count();
    let refused: Vec<_> = replies.iter().filter(|r| r.status == 402).collect();
    assert_eq!(accepted, 10);
    assert_eq!(refused.len(), 40);
    for r in &refused {
        assert_problem(r, 402, "quota-exceeded");
        assert_eq!(r.body["limit"], 10);
    }
    let usage = app.events_of("usage", &usage_id(user)).await;
    assert_eq!(
        usage.iter().filter(|(t, _)| t == "UnitReserved").count(),
        10
    );
    assert_eq!(usage.len(), 10);
    assert_eq!(app.count_events("JobSubmitted").await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_api_processes_on_one_database_still_never_overshoot() {
    let a = spawn_app(&[("RUNLEDGER_FREE_LIMIT", "7")]).await;
    // A second state on the same database: its own writer, cache and locks.
    let settings = platform::settings::Settings::from_vars(
        &[
            ("DATABASE_URL", a.db.url.as_str()),
            ("RUNLEDGER_JWT_SECRET", SECRET),
            ("RUNLEDGER_FREE_LIMIT", "7"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    )
    .unwrap();
    let b_state = command_api::build(settings).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_base = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(command_api::run(listener, b_state, stop.clone()));

    let user = new_user();
    let t = token(user, Role::Customer);
    let body = serde_json::json!({"task_type": "noop", "payload": {}});
    let reqs = (0..30).map(|i| {
        let base = if i % 2 == 0 {
            a.base.clone()
        } else {
            b_base.clone()
        };
        let (client, t, body) = (a.client.clone(), t.clone(), body.clone());
        async move {
            client
                .post(format!("{base}/v1/jobs"))
                .bearer_auth(t)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = join_all(reqs).await;
    stop.cancel();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 402).count(),
        23,
        "{statuses:?}"
    );
    assert_eq!(a.count_events("UnitReserved").await, 7);
}

#[tokio::test]
async fn released_units_can_be_used_again() {
    let app = spawn_app(&[("RUNLEDGER_FREE_LIMIT", "1")]).await;
    let t = token(new_user(), Role::Customer);
    let first = app.submit(&t).await;
    assert_eq!(first.status, 202);
    assert_problem(&app.submit(&t).await, 402, "quota-exceeded");
    let id = first.body["job_id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/v1/jobs/{id}/cancel"),
            Some(&t),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.settle().await;
    assert_eq!(app.submit(&t).await.status, 202);
}
