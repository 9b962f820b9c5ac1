//! Two projection runners on one database take turns (a second `runledger projections`
//! process): the job rows one keeps in memory between batches must not be used once the
//! other has written the table.

use projections::{Projection, jobs::Warm};
use serde_json::json;

use crate::helpers::*;

/// Runs `warm`'s runner until it has applied everything committed.
async fn drain(stack: &Stack, warm: &mut Warm) {
    let all = Projection::ALL.to_vec();
    while projections::runner::step(&stack.db.pool, &all, &stack.bus, warm)
        .await
        .unwrap()
        > 0
    {}
}

#[tokio::test]
async fn rows_kept_by_one_runner_are_not_used_after_another_wrote() {
    let mut stack = Stack::start().await;
    stack.kill_projections().await;
    let (_, t) = new_user();
    let (mut a, mut b) = (Warm::default(), Warm::default());

    // A applies the submission and keeps the row (queued, attempts 0).
    let job = stack.submit(&t).await;
    drain(&stack, &mut a).await;
    // B applies the start (running, attempt 1).
    stack
        .report(&job, "start", json!({"attempt": 1, "worker_id": "w1"}))
        .await;
    drain(&stack, &mut b).await;
    // A applies the completion: on its kept row it would write attempts 0.
    stack
        .report(
            &job,
            "complete",
            json!({"attempt": 1, "result": {"ok": true}}),
        )
        .await;
    drain(&stack, &mut a).await;

    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM job_views WHERE id = $1::uuid")
            .bind(&job)
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("completed", 1));
}
