use std::time::Duration;

use async_nats::jetstream;
use futures::future::join_all;

use crate::helpers::*;

async fn dump(stack: &Stack, sql: &str) -> Vec<String> {
    sqlx::query_as::<_, (String,)>(sql)
        .fetch_all(&stack.db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(r,)| r)
        .collect()
}

const VIEWS: &str = "SELECT row_to_json(v)::text FROM (SELECT * FROM job_views ORDER BY id) v";
const CHANGES: &str =
    "SELECT row_to_json(c)::text FROM (SELECT * FROM job_changes ORDER BY position) c";
const USAGE: &str = "SELECT row_to_json(u)::text FROM (SELECT * FROM usage_periods ORDER BY user_id, period_start) u";

async fn stream_messages(stack: &Stack) -> u64 {
    let client = async_nats::connect(&stack.nats.url).await.unwrap();
    let js = jetstream::new(client);
    let mut s = js
        .get_stream(projections::relay::stream_name(""))
        .await
        .unwrap();
    s.info().await.unwrap().state.messages
}

async fn event_count(stack: &Stack) -> u64 {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM events")
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    n as u64
}

async fn relay_caught_up(stack: &Stack) {
    for _ in 0..500 {
        let head = eventstore::reader::head(&stack.db.pool).await.unwrap();
        let cp = eventstore::reader::checkpoint(&stack.db.pool, projections::relay::CHECKPOINT)
            .await
            .unwrap();
        if cp >= head {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("relay did not catch up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_projections_and_relay_resume_to_what_a_rebuild_gives() {
    let mut stack = Stack::start().await;
    stack.start_relay().await;
    let users: Vec<_> = (0..4).map(|_| new_user()).collect();
    for round in 0..3 {
        let jobs = join_all((0..40).map(|i| stack.submit(&users[i % 4].1))).await;
        // Kill both mid-work, while the batch above is being projected and relayed.
        tokio::time::sleep(Duration::from_millis(5 * round)).await;
        stack.kill_projections().await;
        stack.kill_relay();
        join_all(jobs.iter().take(20).map(|j| stack.run_job(j))).await;
        stack.start_projections();
        stack.start_relay().await;
    }
    stack.settle().await;
    relay_caught_up(&stack).await;

    let (views, changes, usage) = (
        dump(&stack, VIEWS).await,
        dump(&stack, CHANGES).await,
        dump(&stack, USAGE).await,
    );
    assert_eq!(views.len(), 120);
    stack.kill_projections().await;
    for p in projections::Projection::ALL {
        projections::rebuild::rebuild(&stack.db.pool, p, |_| {})
            .await
            .unwrap();
    }
    assert_eq!(dump(&stack, VIEWS).await, views);
    assert_eq!(dump(&stack, CHANGES).await, changes);
    assert_eq!(dump(&stack, USAGE).await, usage);
    let (consumed,): (Option<i64>,) =
        sqlx::query_as("SELECT sum(consumed)::int8 FROM usage_periods")
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(consumed, Some(60));
    // Every event is in JetStream exactly once, in spite of the kills.
    assert_eq!(stream_messages(&stack).await, event_count(&stack).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_nats_down_commands_succeed_and_the_relay_catches_up() {
    let mut stack = Stack::start().await;
    stack.start_relay().await;
    let (_, t) = new_user();
    for _ in 0..5 {
        stack.submit(&t).await;
    }
    relay_caught_up(&stack).await;
    stack.nats.stop();
    let jobs = join_all((0..20).map(|_| stack.submit(&t))).await;
    join_all(jobs.iter().map(|j| stack.run_job(j))).await;
    stack.settle().await;
    stack.nats.resume().await;
    relay_caught_up(&stack).await;
    assert_eq!(stream_messages(&stack).await, event_count(&stack).await);
}

/// Two rebuilds of one projection at once: the second is refused while the first runs, the
/// first swaps in complete tables, and a later rebuild runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_rebuild_of_a_projection_at_a_time() {
    let stack = Stack::start().await;
    let (_, t) = new_user();
    let jobs = join_all((0..30).map(|_| stack.submit(&t))).await;
    join_all(jobs.iter().map(|j| stack.run_job(j))).await;
    stack.settle().await;
    let views = dump(&stack, VIEWS).await;
    // Hold the first rebuild inside its progress callback, so the second surely overlaps.
    // It blocks there, so it runs on a thread and runtime (and pool) of its own.
    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let url = stack.db.url.clone();
    let first = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let mut once = Some((entered_tx, release_rx));
            projections::rebuild::rebuild(&pool, projections::Projection::Jobs, move |_| {
                if let Some((tx, rx)) = once.take() {
                    tx.send(()).unwrap();
                    rx.recv().unwrap();
                }
            })
            .await
            .map(|_| ())
        })
    });
    tokio::task::spawn_blocking(move || entered.recv().unwrap())
        .await
        .unwrap();
    let second =
        projections::rebuild::rebuild(&stack.db.pool, projections::Projection::Jobs, |_| {}).await;
    assert!(
        matches!(
            second,
            Err(projections::ProjectionError::RebuildRunning("jobs"))
        ),
        "{second:?}"
    );
    release.send(()).unwrap();
    tokio::task::spawn_blocking(move || first.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dump(&stack, VIEWS).await, views);
    projections::rebuild::rebuild(&stack.db.pool, projections::Projection::Jobs, |_| {})
        .await
        .unwrap();
    assert_eq!(dump(&stack, VIEWS).await, views);
}
