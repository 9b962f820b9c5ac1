use std::time::Duration;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(10);

/// Retention drops old changes from the SSE replay log; a client resuming from before the
/// mark gets a `reset` (reload your jobs) whose id is the user's position now, then the live
/// changes. A client resuming after the mark replays as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_from_before_the_retention_mark_gets_a_reset() {
    let stack = Stack::start().await;
    let (_, t) = new_user();
    let first = stack.submit(&t).await;
    stack.run_job(&first).await;
    stack.settle().await;
    let (_, before) = stack.get(&format!("/v1/jobs/{first}"), &t).await;
    assert_eq!(before["status"], "completed");

    let gone = projections::jobs::trim(&stack.db.pool, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(gone, 3, "queued, running, completed");
    let (left,): (i64,) = sqlx::query_as("SELECT count(*) FROM job_changes")
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);

    let mut sse = stack.sse(&t, Some(0)).await;
    let reset = sse.next(WAIT).await.expect("a reset");
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.data["reason"], "history-trimmed");
    let mark = reset.data["trimmed_through"].as_i64().unwrap();
    assert!(mark > 0);
    assert!(reset.id >= mark, "the reset moves Last-Event-ID to now");
    let second = stack.submit(&t).await;
    let live = sse.next(WAIT).await.expect("the live change");
    assert_eq!(
        (live.event.as_str(), live.data["id"].as_str()),
        ("job", Some(second.as_str()))
    );

    // From the reset's id on, nothing is missing: a plain replay, no reset.
    stack.caught_up().await;
    let mut again = stack.sse(&t, Some(reset.id)).await;
    let replayed = again.next(WAIT).await.expect("the replay");
    assert_eq!(replayed.event, "job");
    assert_eq!(replayed.data["id"], second.as_str());
    // Trimming again with nothing old is a no-op that keeps the mark.
    assert_eq!(
        projections::jobs::trim(&stack.db.pool, Duration::from_secs(3_600))
            .await
            .unwrap(),
        0
    );
}
