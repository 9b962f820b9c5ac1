use std::{collections::HashMap, sync::Arc, time::Duration};

use domain::{
    ids::UserId,
    task::{Namespace, NamespaceMap},
};
use platform::{
    auth::{Role, mint},
    settings::{Secret, Settings},
    testing::{RedisServer, TestDb},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use workers::{
    dispatcher::Dispatcher,
    executors::Generic,
    queue::RedisQueue,
    report::HttpReporter,
    runtime::{self, WorkerConfig},
    ssrf::Guard,
};

pub const SECRET: &str = "jobs-test-secret-0123456789abcdef0123";

pub struct Stack {
    pub db: TestDb,
    pub redis: RedisServer,
    pub write: String,
    pub client: reqwest::Client,
    pub command: command_api::AppState,
    pub shutdown: CancellationToken,
    /// A Redis Cluster the queues use instead of `redis`, when started on one.
    pub cluster: Option<platform::testing::RedisCluster>,
    /// Stops the command side alone (HTTP and process manager).
    write_stop: CancellationToken,
    write_task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Stack {
    pub async fn start(free_limit: &str) -> Self {
        Self::start_with(free_limit, &[]).await
    }

    /// With extra settings, e.g. `RUNLEDGER_JOB_LEASE_SECS`.
    pub async fn start_with(free_limit: &str, extra: &[(&str, &str)]) -> Self {
        platform::install_crypto();
        let db = TestDb::create().await;
        let redis = RedisServer::start().await;
        let vars: HashMap<String, String> = [
            ("DATABASE_URL", db.url.as_str()),
            ("RUNLEDGER_JWT_SECRET", SECRET),
            ("RUNLEDGER_FREE_LIMIT", free_limit),
            ("RUNLEDGER_DB_MAX_CONNECTIONS", "16"),
            ("RUNLEDGER_JOB_LEASE_SECS", "5"),
            ("RUNLEDGER_RECONCILE_GRACE_SECS", "2"),
            // These tests are about the contract, not fairness (tests/jobs/fair.rs).
            ("RUNLEDGER_FREE_CONCURRENCY", "unlimited"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let command = command_api::build(Settings::from_vars(&vars).unwrap())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let write = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let mut stack = Self {
            db,
            redis,
            write,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            command,
            shutdown,
            cluster: None,
            write_stop: CancellationToken::new(),
            write_task: None,
        };
        stack.serve_write(listener);
        stack
    }

    fn serve_write(&mut self, listener: tokio::net::TcpListener) {
        self.write_stop = self.shutdown.child_token();
        let (command, stop) = (self.command.clone(), self.write_stop.clone());
        self.write_task = Some(tokio::spawn(async move {
            command_api::run(listener, command, stop).await.unwrap();
        }));
    }

    /// Stops the command side (its HTTP server and process manager), as a crash would.
    pub async fn stop_write(&mut self) {
        self.write_stop.cancel();
        if let Some(t) = self.write_task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Starts the command side again on the same address.
    pub async fn restart_write(&mut self) {
        let addr = self.write.trim_start_matches("http://").to_owned();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(&addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "rebinding {addr}: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        self.serve_write(listener);
    }

    /// On a three-node Redis Cluster instead of one server.
    pub async fn start_on_cluster(free_limit: &str) -> Self {
        let mut stack = Self::start(free_limit).await;
        stack.cluster = Some(platform::testing::RedisCluster::start().await);
        stack
    }

    /// What `REDIS_URL` would say.
    pub fn redis_url(&self) -> String {
        self.cluster
            .as_ref()
            .map_or_else(|| self.redis.url.clone(), |c| c.urls.clone())
    }

    pub fn redis_client(&self) -> workers::queue::Target {
        workers::queue::Target::open(&self.redis_url(), false).unwrap()
    }

    pub async fn dispatcher(&self) -> Dispatcher<RedisQueue> {
        let conn = workers::queue::connect(&self.redis_client()).await.unwrap();
        Dispatcher::new(
            self.command.store.clone(),
            RedisQueue { conn },
            NamespaceMap::default(),
        )
        .with_reconcile_grace(Duration::from_secs(2))
        .with_fairness(self.command.settings.dispatch)
    }

    pub async fn start_dispatcher(&self) {
        let d = self.dispatcher().await;
        tokio::spawn(d.run(
            vec![Namespace::default_ns(), Namespace::browser()],
            self.shutdown.clone(),
        ));
    }

    /// An in-process worker with its own shutdown; `allow` opens ranges to `http.request`.
    pub fn start_worker(&self, concurrency: usize, allow: &[String]) -> CancellationToken {
        self.start_worker_on(Namespace::default_ns(), concurrency, allow)
    }

    pub fn start_worker_on(
        &self,
        ns: Namespace,
        concurrency: usize,
        allow: &[String],
    ) -> CancellationToken {
        let stop = CancellationToken::new();
        let reporter = Arc::new(HttpReporter::new(&self.write, worker_token()));
        let executor = Arc::new(Generic::new(Guard::new(allow)));
        let mut cfg = WorkerConfig::new(ns, concurrency);
        cfg.heartbeat = Duration::from_millis(300);
        cfg.lease = Duration::from_secs(2);
        cfg.grace = Duration::from_secs(2);
        let (client, s) = (self.redis_client(), stop.clone());
        let all = self.shutdown.clone();
        tokio::spawn(async move {
            let both = CancellationToken::new();
            let b = both.clone();
            tokio::spawn(async move {
                tokio::select! { () = s.cancelled() => {}, () = all.cancelled() => {} }
                b.cancel();
            });
            runtime::run(client, reporter, executor, cfg, both)
                .await
                .unwrap();
        });
        stop
    }

    pub async fn submit(&self, token: &str, body: Value) -> String {
        let r = self
            .client
            .post(format!("{}/v1/jobs", self.write))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        r.json::<Value>().await.unwrap()["job_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn noop(&self, token: &str) -> String {
        self.submit(token, json!({"task_type": "noop", "payload": {}}))
            .await
    }

    /// The job's status, straight from its events.
    pub async fn status(&self, job: &str) -> String {
        let loaded = self
            .command
            .store
            .load_fresh::<domain::job::Job>(job)
            .await
            .unwrap();
        loaded
            .state
            .state()
            .map(|s| s.status.as_str().to_owned())
            .unwrap_or_default()
    }

    pub async fn attempt(&self, job: &str) -> u32 {
        let loaded = self
            .command
            .store
            .load_fresh::<domain::job::Job>(job)
            .await
            .unwrap();
        loaded.state.state().map(|s| s.attempt.get()).unwrap_or(0)
    }

    pub async fn wait_final(&self, jobs: &[String], within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (n,): (i64,) = sqlx::query_as(
                "SELECT count(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'job' \
                   AND event_type IN ('JobCompleted', 'JobDeadLettered', 'JobCanceled') AND aggregate_id = ANY($1)",
            )
            .bind(jobs)
            .fetch_one(&self.db.pool)
            .await
            .unwrap();
            if n as usize == jobs.len() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} of {} jobs final",
                jobs.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs the process manager to the head of the log.
    pub async fn settle(&self) {
        loop {
            match command_api::process::step(&self.command.store).await {
                Ok(0) => break,
                // The running process manager got further: go on from its checkpoint.
                Ok(_) | Err(eventstore::StoreError::Fenced(_)) => {}
                Err(e) => panic!("process manager step: {e}"),
            }
        }
    }

    /// Units reserved and not settled, per user, from the usage events.
    pub async fn reserved(&self) -> i64 {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE event_type = 'UnitReserved') \
                  - count(*) FILTER (WHERE event_type IN ('UnitConsumed', 'UnitReleased')) \
               FROM events WHERE aggregate_type = 'usage'",
        )
        .fetch_one(&self.db.pool)
        .await
        .unwrap();
        n
    }

    /// The dispatch markers left in Redis.
    pub async fn markers(&self) -> Vec<String> {
        let mut conn = workers::queue::connect(&self.redis_client()).await.unwrap();
        redis::cmd("KEYS")
            .arg("*:dispatched:*")
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// Units consumed per user, from the usage events.
    pub async fn consumed(&self) -> HashMap<String, i64> {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT split_part(aggregate_id, ':', 1), count(*) FROM events \
              WHERE aggregate_type = 'usage' AND event_type = 'UnitConsumed' GROUP BY 1",
        )
        .fetch_all(&self.db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
    }
}

impl Stack {
    /// `runledger worker` as a child process on `namespace`.
    pub fn spawn_worker_process(&self, namespace: &str, concurrency: usize) -> std::process::Child {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_runledger"));
        // A group of its own, so [`kill_group`] takes the browsers it launched with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.args([
            "worker",
            "--namespace",
            namespace,
            "--concurrency",
            &concurrency.to_string(),
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", self.redis_url())
        .env("RUNLEDGER_COMMAND_URL", &self.write)
        .env("RUNLEDGER_JWT_SECRET", SECRET)
        .env("RUNLEDGER_LOG", "warn")
        .env("RUNLEDGER_ADDR", {
            // Its /metrics: a port of its own.
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
    }

    /// Waits until at least `n` attempts have started.
    pub async fn wait_started(&self, n: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (started,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM events WHERE event_type = 'JobStarted'")
                    .fetch_one(&self.db.pool)
                    .await
                    .unwrap();
            if started >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {started} of {n} attempts started"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Polls `check` every 100 ms until it holds; fails with `what` after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn worker_token() -> String {
    mint(
        &Secret::new(SECRET),
        "authenticated",
        UserId::from_uuid(uuid::Uuid::new_v4()),
        Role::Worker,
        Duration::from_secs(3_600),
    )
    .unwrap()
}

pub fn new_user() -> (UserId, String) {
    let u = UserId::from_uuid(uuid::Uuid::new_v4());
    (
        u,
        mint(
            &Secret::new(SECRET),
            "authenticated",
            u,
            Role::Customer,
            Duration::from_secs(3_600),
        )
        .unwrap(),
    )
}

/// A local HTTP server answering `GET /flaky` with 503 `fails` times then 200, `GET /fail`
/// always 500, and `GET /redirect?to=URL` with a 302.
pub async fn target(fails: usize) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::{extract::Query, http::StatusCode, response::IntoResponse, routing::get};
    let count = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route(
            "/flaky",
            get(move || {
                let count = count.clone();
                async move {
                    if count.fetch_add(1, Ordering::SeqCst) < fails {
                        (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response()
                    } else {
                        (StatusCode::OK, "fine").into_response()
                    }
                }
            }),
        )
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "broken") }),
        )
        .route(
            "/redirect",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                (
                    StatusCode::FOUND,
                    [("location", q.get("to").cloned().unwrap_or_default())],
                )
                    .into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// SIGKILL to a child started by [`Stack::spawn_worker_process`] and its process group (a
/// crash of the machine's worker, browsers included), then reaps it.
pub fn kill_group(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
    child.wait().unwrap();
}
