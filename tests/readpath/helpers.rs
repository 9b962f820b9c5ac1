//! The whole stack in one test process, each role on its own task and port, over a fresh
//! Postgres database and a `nats-server -js` child process.

use std::{collections::HashMap, time::Duration};

use domain::ids::UserId;
use platform::{
    auth::{Role, mint},
    notice::NoticeBus,
    settings::{Secret, Settings},
    testing::{NatsServer, TestDb},
};
use projections::Projection;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "readpath-test-secret-0123456789abcdef";

pub struct Stack {
    pub db: TestDb,
    pub nats: NatsServer,
    pub write: String,
    pub read: String,
    pub client: reqwest::Client,
    pub command: command_api::AppState,
    pub bus: NoticeBus,
    pub projections: Vec<JoinHandle<()>>,
    /// The projections' own connections, closed when they are killed.
    projections_pool: Option<sqlx::PgPool>,
    pub relay: Option<JoinHandle<()>>,
    pub shutdown: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn settings(db: &TestDb, nats: &NatsServer) -> Settings {
    let vars: HashMap<String, String> = [
        ("DATABASE_URL", db.url.as_str()),
        ("NATS_URL", nats.url.as_str()),
        ("RUNLEDGER_JWT_SECRET", SECRET),
        ("RUNLEDGER_DB_MAX_CONNECTIONS", "10"),
        ("RUNLEDGER_SSE_HEARTBEAT_SECS", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Settings::from_vars(&vars).unwrap()
}

impl Stack {
    pub async fn start() -> Self {
        platform::install_crypto();
        let db = TestDb::create().await;
        let nats = NatsServer::start().await;
        let shutdown = CancellationToken::new();
        let command = command_api::build(settings(&db, &nats)).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let write = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(command_api::run(
            listener,
            command.clone(),
            shutdown.clone(),
        ));

        let client = platform::nats::connect(&nats.url).await.unwrap();
        let bus = NoticeBus::nats(client, String::new());
        let read_state = read_api::build(settings(&db, &nats), &bus, shutdown.clone())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let read = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(read_api::run(listener, read_state, shutdown.clone()));

        let mut stack = Self {
            db,
            nats,
            write,
            read,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            command,
            bus,
            projections: vec![],
            projections_pool: None,
            relay: None,
            shutdown,
        };
        stack.start_projections();
        stack
    }

    pub fn start_projections(&mut self) {
        let bus = self.bus.clone();
        self.start_projections_on(&bus);
    }

    /// The projections, sending their change notices on `bus`, on connections of their own
    /// as a `runledger projections` process has.
    pub fn start_projections_on(&mut self, bus: &NoticeBus) {
        let pool = self
            .projections_pool
            .get_or_insert_with(|| {
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .connect_lazy(&self.db.url)
                    .unwrap()
            })
            .clone();
        // The jobs projection alone, and the other two together: both ways of running.
        for set in [
            vec![Projection::Jobs],
            vec![Projection::Usage, Projection::Subscriptions],
        ] {
            self.projections.push(tokio::spawn(projections::runner::run(
                pool.clone(),
                set,
                bus.clone(),
                None,
                self.shutdown.clone(),
            )));
        }
    }

    /// Drops the projection tasks wherever they are, mid-batch included, and closes their
    /// connections as a killed process's are: a transaction cut short is rolled back by
    /// the server, never handed to the next user of a shared pool still open.
    pub async fn kill_projections(&mut self) {
        for t in self.projections.drain(..) {
            t.abort();
        }
        if let Some(pool) = self.projections_pool.take() {
            pool.close().await;
        }
    }

    pub async fn start_relay(&mut self) {
        let client = platform::nats::connect(&self.nats.url).await.unwrap();
        self.relay = Some(tokio::spawn(projections::relay::run(
            eventstore::EventStore::new(self.db.pool.clone()),
            client,
            String::new(),
            None,
            self.shutdown.clone(),
        )));
    }

    pub fn kill_relay(&mut self) {
        if let Some(r) = self.relay.take() {
            r.abort();
        }
    }

    pub async fn submit(&self, token: &str) -> String {
        let r = self
            .client
            .post(format!("{}/v1/jobs", self.write))
            .bearer_auth(token)
            .json(&json!({"task_type": "noop", "payload": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        r.json::<Value>().await.unwrap()["job_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn report(&self, job: &str, op: &str, body: Value) {
        let r = self
            .client
            .post(format!("{}/v1/worker/jobs/{job}/{op}", self.write))
            .bearer_auth(token(UserId::from_uuid(uuid::Uuid::new_v4()), Role::Worker))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{op}: {:?}", r.text().await);
    }

    /// Start and complete attempt 1.
    pub async fn run_job(&self, job: &str) {
        self.report(job, "start", json!({"attempt": 1, "worker_id": "w1"}))
            .await;
        self.report(
            job,
            "complete",
            json!({"attempt": 1, "result": {"ok": true}}),
        )
        .await;
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.read))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until every projection's checkpoint reached the head of the log.
    pub async fn caught_up(&self) {
        for _ in 0..500 {
            let head = eventstore::reader::head(&self.db.pool).await.unwrap();
            let (min,): (Option<i64>,) = sqlx::query_as(
                "SELECT min(position) FROM checkpoints WHERE name IN ('jobs', 'usage', 'subscriptions')",
            )
            .fetch_one(&self.db.pool)
            .await
            .unwrap();
            let (n,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM checkpoints WHERE name IN ('jobs', 'usage', 'subscriptions')",
            )
            .fetch_one(&self.db.pool)
            .await
            .unwrap();
            if n == 3 && min.unwrap_or(0) >= head {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("projections did not catch up");
    }

    /// Runs the process manager to the head, then waits for the projections.
    pub async fn settle(&self) {
        loop {
            match command_api::process::step(&self.command.store).await {
                Ok(0) => break,
                // The running process manager got further: go on from its checkpoint.
                Ok(_) | Err(eventstore::StoreError::Fenced(_)) => {}
                Err(e) => panic!("process manager step: {e}"),
            }
        }
        self.caught_up().await;
    }

    pub async fn sse(&self, token: &str, last_event_id: Option<i64>) -> Sse {
        let mut req = self
            .client
            .get(format!("{}/v1/jobs/stream", self.read))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Sse::from(res)
    }
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

pub fn new_user() -> (UserId, String) {
    let u = UserId::from_uuid(uuid::Uuid::new_v4());
    (u, token(u, Role::Customer))
}

/// One SSE event as it came over the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: i64,
    pub event: String,
    pub data: Value,
}

pub struct Sse {
    res: reqwest::Response,
    buf: String,
    /// Every byte received, for assertions on the wire.
    pub raw: String,
}

impl From<reqwest::Response> for Sse {
    fn from(res: reqwest::Response) -> Self {
        Self {
            res,
            buf: String::new(),
            raw: String::new(),
        }
    }
}

impl Sse {
    /// The next event (comments skipped), or `None` if none comes within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let mut ev = (None, String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.0 = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.1 = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        ev.2.push_str(v.trim());
                    }
                }
                if let Some(id) = ev.0 {
                    return Some(SseEvent {
                        id,
                        event: ev.1,
                        data: serde_json::from_str(&ev.2).unwrap(),
                    });
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.res.chunk())
                .await
                .ok()?
                .ok()??;
            let text = String::from_utf8_lossy(&chunk).into_owned();
            self.raw.push_str(&text);
            self.buf.push_str(&text);
        }
    }

    /// Reads whatever arrives within `wait` (comments included) into `raw`.
    pub async fn drain(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, self.res.chunk()).await {
            let text = String::from_utf8_lossy(&chunk).into_owned();
            self.raw.push_str(&text);
            self.buf.push_str(&text);
        }
    }

    /// Whether the server ended the stream within `wait` (events before the end are dropped).
    pub async fn ended(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.res.chunk()).await {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None) | Err(_)) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Exactly `n` events, each within `wait`.
    pub async fn take(&mut self, n: usize, wait: Duration) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for _ in 0..n {
            match self.next(wait).await {
                Some(e) => out.push(e),
                None => panic!("expected {n} events, got {}: {out:?}", out.len()),
            }
        }
        out
    }
}
