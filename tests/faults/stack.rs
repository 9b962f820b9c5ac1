//! The stack with its roles apart, each a `runledger` child process that can be SIGKILLed
//! and started again, on a fresh Postgres database, a `nats-server -js` and a
//! `redis-server` without persistence of their own.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use domain::ids::UserId;
use platform::{
    auth::{Role as TokenRole, mint},
    settings::Secret,
    testing::{NatsServer, RedisServer, TestDb},
};
use serde_json::{Value, json};

pub const SECRET: &str = "faults-suite-secret-0123456789abcdef012";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One role: how to start it, and its process when running.
pub struct Role {
    pub name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Its HTTP port, if it listens.
    pub port: Option<u16>,
    child: Option<Child>,
}

impl Role {
    pub fn spawn(&mut self) {
        if self.child.is_some() {
            return;
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runledger"));
        // A group of its own: a kill takes the browsers a worker launched with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    /// SIGKILL: no shutdown, no cleanup.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Stack {
    pub db: TestDb,
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub roles: Vec<Role>,
    /// The two command-api replicas.
    pub writes: [String; 2],
    pub read: String,
    pub client: reqwest::Client,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// As [`Stack::start`], with `extra` in every role's environment.
    pub async fn start_with(extra: &[(&str, &str)]) -> Self {
        platform::install_crypto();
        let db = TestDb::create().await;
        let nats = NatsServer::start().await;
        let redis = RedisServer::start().await;
        let common: Vec<(String, String)> = [
            ("DATABASE_URL", db.url.as_str()),
            ("NATS_URL", nats.url.as_str()),
            ("REDIS_URL", redis.url.as_str()),
            ("RUNLEDGER_JWT_SECRET", SECRET),
            ("RUNLEDGER_FREE_LIMIT", "100000000"),
            ("RUNLEDGER_DB_MAX_CONNECTIONS", "8"),
            ("RUNLEDGER_JOB_LEASE_SECS", "8"),
            ("RUNLEDGER_RECONCILE_GRACE_SECS", "3"),
            ("RUNLEDGER_SSE_HEARTBEAT_SECS", "1"),
            ("RUNLEDGER_LOG", "error"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (a, b, r) = (free_port(), free_port(), free_port());
        let mut roles = Vec::new();
        let mut role = |name: &str, args: &[&str], port: Option<u16>, extra: &[(&str, String)]| {
            let mut env = common.clone();
            let addr = port.unwrap_or_else(free_port);
            env.push(("RUNLEDGER_ADDR".into(), format!("127.0.0.1:{addr}")));
            env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
            roles.push(Role {
                name: name.to_owned(),
                args: args.iter().map(|s| (*s).to_owned()).collect(),
                env,
                port,
                child: None,
            });
        };
        role("command-api-a", &["command-api"], Some(a), &[]);
        role("command-api-b", &["command-api"], Some(b), &[]);
        role("projections", &["projections"], None, &[]);
        role("relay", &["relay"], None, &[]);
        role("dispatcher", &["dispatcher"], None, &[]);
        for (name, port) in [("worker-a", a), ("worker-b", b)] {
            role(
                name,
                &["worker", "--namespace", "default", "--concurrency", "16"],
                None,
                &[("RUNLEDGER_COMMAND_URL", format!("http://127.0.0.1:{port}"))],
            );
        }
        role("read-api", &["read-api"], Some(r), &[]);
        let mut stack = Self {
            db,
            nats,
            redis,
            roles,
            writes: [
                format!("http://127.0.0.1:{a}"),
                format!("http://127.0.0.1:{b}"),
            ],
            read: format!("http://127.0.0.1:{r}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        stack.all_up().await;
        stack
    }

    /// Adds role `name` (`args`, the common environment with `extra` over it, a listen
    /// address of its own) and starts it.
    pub fn add_role(&mut self, name: &str, args: &[&str], extra: &[(&str, String)]) {
        let mut env: Vec<(String, String)> = self.roles[0]
            .env
            .iter()
            .filter(|(k, _)| k != "RUNLEDGER_ADDR" && !extra.iter().any(|(e, _)| e == k))
            .cloned()
            .collect();
        env.push((
            "RUNLEDGER_ADDR".into(),
            format!("127.0.0.1:{}", free_port()),
        ));
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let mut role = Role {
            name: name.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env,
            port: None,
            child: None,
        };
        role.spawn();
        self.roles.push(role);
    }

    /// Every role's listen address (its `/metrics`), by name.
    pub fn addrs(&self) -> Vec<(String, String)> {
        self.roles
            .iter()
            .filter_map(|r| {
                let addr = r.env.iter().find(|(k, _)| k == "RUNLEDGER_ADDR")?;
                Some((r.name.clone(), format!("http://{}", addr.1)))
            })
            .collect()
    }

    /// Starts every role that is not running and waits for the HTTP ones to answer.
    pub async fn all_up(&mut self) {
        for r in &mut self.roles {
            r.spawn();
        }
        for port in self.roles.iter().filter_map(|r| r.port) {
            let url = format!("http://127.0.0.1:{port}/healthz");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !self
                .client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{url} never answered"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub fn token(user: UserId) -> String {
    mint(
        &Secret::new(SECRET),
        "authenticated",
        user,
        TokenRole::Customer,
        Duration::from_secs(3_600),
    )
    .unwrap()
}

/// Submits one job, retrying on either replica with the same Idempotency-Key until it is
/// accepted (a killed replica, a terminated connection or an unknown commit outcome are all
/// retried safely that way). `Err`: a refusal that is not a fault's.
pub async fn submit(
    client: &reqwest::Client,
    writes: &[String; 2],
    token: &str,
    body: &Value,
) -> Result<String, String> {
    let key = uuid::Uuid::new_v4().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut i = rand::random::<u8>() as usize;
    loop {
        i += 1;
        let res = client
            .post(format!("{}/v1/jobs", writes[i % 2]))
            .bearer_auth(token)
            .header("idempotency-key", &key)
            .json(body)
            .send()
            .await;
        match res {
            Ok(r) if r.status() == 202 => {
                let v: Value = r.json().await.map_err(|e| e.to_string())?;
                return Ok(v["job_id"].as_str().unwrap_or_default().to_owned());
            }
            Ok(r) if r.status().is_server_error() => {}
            Ok(r) => {
                return Err(format!(
                    "{} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ));
            }
            Err(_) => {}
        }
        if tokio::time::Instant::now() > deadline {
            return Err("not accepted within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one user's SSE stream saw, across reconnections with Last-Event-ID.
#[derive(Default)]
pub struct Seen {
    /// Statuses per job, in arrival order.
    pub jobs: HashMap<String, Vec<String>>,
    /// Event ids, in arrival order.
    pub ids: Vec<i64>,
    /// `reset` events.
    pub resets: usize,
}

/// Follows `token`'s stream on `read` until `stop`, reconnecting after every drop.
pub async fn watch(
    read: String,
    token: String,
    seen: Arc<Mutex<Seen>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let client = reqwest::Client::new();
    let mut last: Option<i64> = None;
    while !stop.is_cancelled() {
        let mut req = client
            .get(format!("{read}/v1/jobs/stream"))
            .bearer_auth(&token);
        if let Some(id) = last {
            req = req.header("last-event-id", id.to_string());
        }
        let Ok(mut res) = req.send().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if !res.status().is_success() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut buf = String::new();
        loop {
            let chunk = tokio::select! {
                () = stop.cancelled() => return,
                c = res.chunk() => c,
            };
            let Ok(Some(chunk)) = chunk else { break };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse::<i64>().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                let Some(id) = id else { continue };
                last = Some(id);
                let mut s = seen.lock().unwrap();
                s.ids.push(id);
                if event == "reset" {
                    s.resets += 1;
                } else if let Ok(v) = serde_json::from_str::<Value>(&data) {
                    let job = v["id"].as_str().unwrap_or_default().to_owned();
                    let status = v["status"].as_str().unwrap_or_default().to_owned();
                    s.jobs.entry(job).or_default().push(status);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A job of the mixed load: mostly no-ops, some short sleeps.
pub fn job_body() -> Value {
    if rand::random::<u8>() < 180 {
        json!({"task_type": "noop", "payload": {}})
    } else {
        json!({"task_type": "sleep", "payload": {"ms": 20 + u64::from(rand::random::<u8>())}})
    }
}
