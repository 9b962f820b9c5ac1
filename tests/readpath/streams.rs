//! SSE streams under faults: every change reaches an open stream even when every notice is
//! lost; a Last-Event-ID beyond the store gets a reset; streams end on shutdown.

use std::time::Duration;

use platform::notice::NoticeBus;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_reach_open_streams_when_every_notice_is_lost() {
    let mut stack = Stack::start().await;
    let (_, t) = new_user();
    let mut sse = stack.sse(&t, None).await;
    // The projections now notify on subjects the read side does not listen to.
    stack.kill_projections().await;
    let client = platform::nats::connect(&stack.nats.url).await.unwrap();
    let lost = NoticeBus::nats(client, "nobody".to_owned());
    stack.start_projections_on(&lost);
    let job = stack.submit(&t).await;
    stack.run_job(&job).await;
    // The heartbeat interval is 1 s in these tests: each stream reads the read model that
    // often.
    let events = sse.take(3, Duration::from_secs(5)).await;
    let statuses: Vec<&str> = events
        .iter()
        .map(|e| e.data["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["queued", "running", "completed"]);
    assert!(events.iter().all(|e| e.data["id"] == job.as_str()));
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    assert!(
        sse.next(Duration::from_millis(2_500)).await.is_none(),
        "no duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_last_event_id_beyond_the_store_gets_a_reset() {
    let stack = Stack::start().await;
    let (_, t) = new_user();
    let job = stack.submit(&t).await;
    stack.caught_up().await;
    let mut sse = stack.sse(&t, Some(1_000_000_000)).await;
    let reset = sse.next(Duration::from_secs(5)).await.expect("a reset");
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.data["reason"], "ahead-of-store");
    assert!(
        reset.id < 1_000_000_000,
        "the reset moves Last-Event-ID back to now"
    );
    stack.run_job(&job).await;
    let next = sse.take(2, Duration::from_secs(5)).await;
    assert_eq!(next[1].data["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_end_on_shutdown_so_the_server_stops() {
    let stack = Stack::start().await;
    let (_, t) = new_user();
    let own = tokio_util::sync::CancellationToken::new();
    let vars: std::collections::HashMap<String, String> = [
        ("DATABASE_URL", stack.db.url.as_str()),
        ("NATS_URL", stack.nats.url.as_str()),
        ("RUNLEDGER_JWT_SECRET", SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let settings = platform::settings::Settings::from_vars(&vars).unwrap();
    let state = read_api::build(settings, &stack.bus, own.clone())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(read_api::run(listener, state, own.clone()));
    let res = stack
        .client
        .get(format!("{url}/v1/jobs/stream"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut sse = Sse::from(res);
    own.cancel();
    assert!(sse.ended(Duration::from_secs(5)).await, "the stream ends");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops while a client is connected")
        .unwrap()
        .unwrap();
}
