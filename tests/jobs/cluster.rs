//! The Redis contract on a real three-node Redis Cluster: jobs pushed, promoted, retried,
//! run by in-process workers (list and stream) and by a stream worker process killed
//! mid-run; each counted once.

use std::time::Duration;

use domain::task::{Namespace, NamespaceMap};
use futures::future::join_all;
use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_run_on_a_redis_cluster_and_survive_a_killed_worker() {
    let stack = Stack::start_on_cluster("100000").await;
    // `sleep` goes to the browser namespace: the stream, with its consumer group.
    let mut dispatcher = stack.dispatcher().await;
    dispatcher.namespaces = NamespaceMap::with_rules([("sleep".to_owned(), Namespace::browser())]);
    tokio::spawn(dispatcher.run(
        vec![Namespace::default_ns(), Namespace::browser()],
        stack.shutdown.clone(),
    ));
    let (user, t) = new_user();
    let target = target(1).await;
    let mut jobs = join_all((0..60).map(|_| stack.noop(&t))).await;
    let later = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    jobs.push(
        stack
            .submit(
                &t,
                json!({"task_type": "noop", "payload": {}, "run_at": later}),
            )
            .await,
    );
    jobs.push(
        stack
            .submit(
                &t,
                json!({"task_type": "http.request", "payload": {"url": format!("{target}/flaky")},
                       "max_attempts": 3}),
            )
            .await,
    );
    let sleeps = join_all(
        (0..4).map(|_| stack.submit(&t, json!({"task_type": "sleep", "payload": {"ms": 3000}}))),
    )
    .await;
    // A stream worker process on the cluster, killed while it runs the sleeps.
    let mut child = stack.spawn_worker_process("browser", 4);
    stack.wait_started(4).await;
    kill_group(&mut child);
    let _list = stack.start_worker(8, &["127.0.0.1/32".to_owned()]);
    let _stream = stack.start_worker_on(Namespace::browser(), 4, &[]);
    jobs.extend(sleeps.iter().cloned());
    stack.wait_final(&jobs, Duration::from_secs(90)).await;
    for j in &jobs {
        assert_eq!(stack.status(j).await, "completed", "{j}");
    }
    for j in &sleeps {
        assert_eq!(
            stack.attempt(j).await,
            2,
            "the killed worker's attempt was retried"
        );
    }
    stack.settle().await;
    assert_eq!(
        stack.consumed().await.get(&user.to_string()),
        Some(&(jobs.len() as i64))
    );
    assert_eq!(stack.reserved().await, 0);
}

/// A cluster node down holds back only the jobs whose keys it serves: the others run, and
/// the held-back one is pushed again by the reconciler once the node is back (empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_node_down_holds_back_only_its_own_jobs() {
    let mut stack = Stack::start_on_cluster("100000").await;
    let cluster = stack.cluster.as_ref().unwrap();
    let scheduled = cluster.owner("jobs:default:scheduled");
    assert_ne!(
        scheduled,
        cluster.owner("jobs:default:queue"),
        "the contract's two keys hash to different nodes"
    );
    stack.start_dispatcher().await;
    let _w = stack.start_worker(8, &[]);
    // A user whose slots live on another node (one whose slots live on the stopped node
    // waits for it, as its own jobs).
    let (user, t) = loop {
        let (u, t) = new_user();
        if cluster.owner(&workers::queue::slots_key(u)) != scheduled {
            break (u, t);
        }
    };
    stack.cluster.as_mut().unwrap().stop_node(scheduled);
    let later = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    let held_back = stack
        .submit(
            &t,
            json!({"task_type": "noop", "payload": {}, "run_at": later}),
        )
        .await;
    let now = join_all((0..20).map(|_| stack.noop(&t))).await;
    stack.wait_final(&now, Duration::from_secs(20)).await;
    assert_eq!(stack.status(&held_back).await, "scheduled");

    stack.cluster.as_mut().unwrap().start_node(scheduled).await;
    stack
        .wait_final(std::slice::from_ref(&held_back), Duration::from_secs(60))
        .await;
    assert_eq!(stack.status(&held_back).await, "completed");
    stack.settle().await;
    assert_eq!(stack.consumed().await.get(&user.to_string()), Some(&21));
}
