//! `spawn_app`: a command API on port 0 over a fresh database, and clients for it.

use std::{
    collections::HashMap,
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use domain::ids::UserId;
use platform::{
    auth::{Role, mint},
    settings::{Secret, Settings},
    testing::TestDb,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// Everything the service logged, for asserting what never reaches a log line.
pub fn logs() -> String {
    let buf = log_buffer().lock().unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

#[derive(Clone)]
struct Capture;

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        log_buffer().lock().unwrap().extend_from_slice(b);
        if std::env::var_os("TEST_LOG").is_some() {
            std::io::stderr().write_all(b)?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        platform::install_crypto();
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter("debug,sqlx=warn,hyper=warn,reqwest=warn")
            .with_writer(|| Capture)
            .try_init();
    });
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub db: TestDb,
    pub state: command_api::AppState,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts the API with `RUNLEDGER_JWT_SECRET` = [`SECRET`] plus `vars`.
pub async fn spawn_app(vars: &[(&str, &str)]) -> TestApp {
    init_logs();
    let db = TestDb::create().await;
    let mut env: HashMap<String, String> = HashMap::from([
        ("DATABASE_URL".into(), db.url.clone()),
        ("RUNLEDGER_JWT_SECRET".into(), SECRET.into()),
        ("RUNLEDGER_DB_MAX_CONNECTIONS".into(), "10".into()),
    ]);
    for (k, v) in vars {
        if v.is_empty() {
            env.remove(*k);
        } else {
            env.insert((*k).into(), (*v).into());
        }
    }
    let settings = Settings::from_vars(&env).unwrap();
    let state = command_api::build(settings).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(command_api::run(listener, state.clone(), shutdown.clone()));
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        db,
        state,
        shutdown,
    }
}

pub fn new_user() -> UserId {
    UserId::from_uuid(uuid::Uuid::new_v4())
}

pub fn token(user: UserId, role: Role) -> String {
    mint(
        &Secret::new(SECRET),
        "authenticated",
        user,
        role,
        Duration::from_secs(600),
    )
    .unwrap()
}

pub fn worker_token() -> String {
    token(new_user(), Role::Worker)
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

impl TestApp {
    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.post_raw(path, token, body.to_string(), &[]).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        body: String,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            content_type,
            body,
        }
    }

    pub async fn submit(&self, token: &str) -> Reply {
        self.post(
            "/v1/jobs",
            Some(token),
            &serde_json::json!({"task_type": "noop", "payload": {}}),
        )
        .await
    }

    /// Runs the process manager until it has caught up with every event.
    pub async fn settle(&self) {
        loop {
            match command_api::process::step(&self.state.store).await {
                Ok(0) => break,
                // The running process manager got further: go on from its checkpoint.
                Ok(_) | Err(eventstore::StoreError::Fenced(_)) => {}
                Err(e) => panic!("process manager step: {e}"),
            }
        }
    }

    /// `(event_type, payload)` of every event of one aggregate, in order.
    pub async fn events_of(&self, aggregate_type: &str, id: &str) -> Vec<(String, Value)> {
        sqlx::query_as("SELECT event_type, payload::jsonb FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence")
            .bind(aggregate_type)
            .bind(id)
            .fetch_all(&self.db.pool)
            .await
            .unwrap()
    }

    pub async fn count_events(&self, event_type: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM events WHERE event_type = $1")
            .bind(event_type)
            .fetch_one(&self.db.pool)
            .await
            .unwrap();
        n
    }
}

pub fn usage_id(user: UserId) -> String {
    let period = domain::period::BillingPeriod::calendar_month(chrono::Utc::now());
    domain::usage::UsageKey::new(user, &period).aggregate_id()
}

#[track_caller]
pub fn assert_problem(r: &Reply, status: u16, type_suffix: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.content_type, "application/problem+json", "{:?}", r.body);
    assert_eq!(
        r.body["type"],
        format!("urn:runledger:problem:{type_suffix}"),
        "{:?}",
        r.body
    );
}
