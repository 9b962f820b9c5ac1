use std::time::Duration;

use futures::future::join_all;

use crate::helpers::*;

/// A worker written in Python with redis-py takes envelopes from `jobs:default:queue` and
/// reports over the HTTP worker endpoints, unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_python_worker_speaks_the_contract() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import redis"])
        .status()
        .map(|s| s.success());
    assert!(
        matches!(ok, Ok(true)),
        "python3 with redis-py is needed (scripts/services installs it)"
    );
    let stack = Stack::start("1000").await;
    stack.start_dispatcher().await;
    let (user, t) = new_user();
    let jobs = join_all((0..20).map(|_| stack.noop(&t))).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python_worker/worker.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .env("REDIS_URL", &stack.redis.url)
        .env("RUNLEDGER_COMMAND_URL", &stack.write)
        .env("RUNLEDGER_WORKER_TOKEN", worker_token())
        .env("MAX_JOBS", "20")
        .spawn()
        .unwrap();
    stack.wait_final(&jobs, Duration::from_secs(60)).await;
    let _ = child.kill();
    let _ = child.wait();
    for j in &jobs {
        assert_eq!(stack.status(j).await, "completed");
    }
    stack.settle().await;
    assert_eq!(stack.consumed().await.get(&user.to_string()), Some(&20));
}
