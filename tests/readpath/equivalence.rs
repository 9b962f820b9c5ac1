use std::sync::Arc;

use eventstore::EventStore;
use platform::views::MemoryViews;
use read_api::{PgViews, ReadModels};
use serde_json::json;

use crate::helpers::*;

/// The same log folded into the in-memory read models (the embedded default's) gives what the
/// Postgres projection tables give, query for query: the projections are the same rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_in_memory_read_models_equal_the_postgres_tables() {
    let stack = Stack::start().await;
    let users: Vec<_> = (0..3).map(|_| new_user()).collect();
    let mut n = 0;
    for (_, t) in &users {
        for _ in 0..7 {
            let job = stack.submit(t).await;
            match n % 4 {
                0 | 1 => stack.run_job(&job).await,
                2 => {
                    stack
                        .report(&job, "start", json!({"attempt": 1, "worker_id": "w1"}))
                        .await;
                    stack
                        .report(
                            &job,
                            "fail",
                            json!({"attempt": 1, "error": "boom", "retryable": false}),
                        )
                        .await;
                }
                _ => {
                    let r = stack
                        .client
                        .post(format!("{}/v1/jobs/{job}/cancel", stack.write))
                        .bearer_auth(t)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
            }
            n += 1;
        }
    }
    stack.settle().await;

    let pg: Arc<dyn ReadModels> = Arc::new(PgViews(stack.db.pool.clone()));
    let mem = Arc::new(MemoryViews::default());
    projections::memory::catch_up(&EventStore::new(stack.db.pool.clone()), &mem)
        .await
        .unwrap();
    let mem: Arc<dyn ReadModels> = mem;
    for (user, _) in &users {
        let u = user.as_uuid();
        let all = pg.jobs(u, None, None, 100).await.unwrap();
        assert_eq!(all.len(), 7);
        assert_eq!(all, mem.jobs(u, None, None, 100).await.unwrap());
        // A page after a cursor, and a status filter.
        let cursor = Some((all[2].created_at, all[2].id));
        assert_eq!(
            pg.jobs(u, None, cursor, 3).await.unwrap(),
            mem.jobs(u, None, cursor, 3).await.unwrap()
        );
        for status in ["completed", "failed", "canceled"] {
            assert_eq!(
                pg.jobs(u, Some(status), None, 100).await.unwrap(),
                mem.jobs(u, Some(status), None, 100).await.unwrap(),
                "{status}"
            );
        }
        for j in &all {
            assert_eq!(
                pg.job(u, j.id).await.unwrap(),
                mem.job(u, j.id).await.unwrap()
            );
        }
        assert_eq!(
            pg.usage_history(u, 10).await.unwrap(),
            mem.usage_history(u, 10).await.unwrap()
        );
        assert_eq!(
            pg.stream_position(u).await.unwrap(),
            mem.stream_position(u).await.unwrap()
        );
        assert_eq!(
            pg.changes_after(u, 0, 1000).await.unwrap(),
            mem.changes_after(u, 0, 1000).await.unwrap()
        );
        assert_eq!(
            pg.subscription(u).await.unwrap(),
            mem.subscription(u).await.unwrap()
        );
    }
}
