//! Test helpers: each test owns a fresh Postgres database, migrated, dropped at the end.

use sqlx::{Connection, PgConnection, PgPool};

use crate::{db, settings::Secret};

/// Where tests create their databases: `RUNLEDGER_TEST_DATABASE_URL`, else a local server.
pub fn admin_url() -> String {
    std::env::var("RUNLEDGER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database created for one test.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    /// A pool on it, already migrated.
    pub pool: PgPool,
    name: String,
}

impl TestDb {
    /// Creates and migrates a new database.
    ///
    /// # Panics
    /// When Postgres is not reachable: the test cannot run.
    pub async fn create() -> Self {
        let db = Self::create_empty().await;
        #[allow(clippy::expect_used)]
        db::migrate(&db.pool).await.expect("migrate test database");
        db
    }

    /// Creates a new database with no migration applied (what a fresh server holds).
    ///
    /// # Panics
    /// When Postgres is not reachable: the test cannot run.
    #[allow(clippy::expect_used)]
    pub async fn create_empty() -> Self {
        let admin = admin_url();
        let name = format!("rl_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("Postgres for tests (scripts/test starts it)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => admin.clone(),
        };
        let pool = db::connect(&Secret::new(url.clone()), 40)
            .await
            .expect("connect test database");
        Self { url, pool, name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async: use a thread with its own small runtime. The pool is not
        // closed (its connections belong to the test's runtime, blocked here); FORCE ends them.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A free TCP port on loopback.
#[allow(clippy::expect_used)]
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A free port whose cluster bus port (+10000) is free too.
#[allow(clippy::panic)]
fn cluster_port() -> u16 {
    for _ in 0..1_000 {
        let p = free_port();
        if p <= 55_535 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair for a cluster node")
}

/// Whether something listens on `port` within five seconds.
async fn listening(port: u16) -> bool {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// A `nats-server -js` child process on a free port with its own store, for one test.
/// `stop` and `start` inject real outages.
pub struct NatsServer {
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl NatsServer {
    /// Starts one.
    ///
    /// # Panics
    /// When `nats-server` is not installed (scripts/services installs it).
    #[allow(clippy::expect_used)]
    pub async fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("rl-nats-{}", uuid::Uuid::new_v4().simple()));
        let mut s = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            dir,
            child: None,
        };
        s.resume().await;
        s
    }

    /// Starts the server again on the same port and store.
    ///
    /// # Panics
    /// When it does not come up.
    #[allow(clippy::expect_used, clippy::panic)]
    pub async fn resume(&mut self) {
        let bin = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server");
        let child = std::process::Command::new(bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server (scripts/services installs it)");
        self.child = Some(child);
        if listening(self.port).await {
            return;
        }
        panic!("nats-server did not start on port {}", self.port);
    }

    /// Kills the server (SIGKILL): an outage, not a shutdown.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` child process on a free port that keeps nothing on disk, for one test.
/// `stop` and `resume` inject real outages (the restarted server is empty, as one without
/// persistence is).
pub struct RedisServer {
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
    port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts one.
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not come up.
    #[allow(clippy::expect_used)]
    pub async fn start() -> Self {
        let port = free_port();
        let mut s = Self {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            child: None,
        };
        s.resume().await;
        s
    }

    /// Starts the server again on the same port.
    ///
    /// # Panics
    /// When it does not come up.
    #[allow(clippy::expect_used, clippy::panic)]
    pub async fn resume(&mut self) {
        let port = self.port.to_string();
        let mut child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services installs it)");
        if listening(self.port).await {
            self.child = Some(child);
            return;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not start on port {port}");
    }

    /// Kills the server (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A three-node Redis Cluster (three primaries, no replica) of `redis-server` child
/// processes on free ports, each with its own temporary directory, for one test.
pub struct RedisCluster {
    /// The nodes' URLs, comma-separated (what `REDIS_URL` takes for a cluster).
    pub urls: String,
    /// The nodes' ports.
    pub ports: Vec<u16>,
    children: Vec<Option<std::process::Child>>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts the nodes and joins them into a cluster with `redis-cli --cluster create`.
    ///
    /// # Panics
    /// When `redis-server` or `redis-cli` is missing, or the cluster does not form.
    #[allow(clippy::expect_used, clippy::panic)]
    pub async fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("rl-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let ports: Vec<u16> = (0..3).map(|_| cluster_port()).collect();
        let mut cluster = Self {
            urls: ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(","),
            ports: ports.clone(),
            children: Vec::new(),
            dir,
        };
        for i in 0..ports.len() {
            cluster.start_node(i).await;
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("redis-cli (scripts/services installs it)");
        assert!(created.success(), "redis-cli --cluster create failed");
        // Every node must see every slot served before the cluster takes commands.
        for port in &ports {
            let mut ok = false;
            for _ in 0..100 {
                let info = std::process::Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    ok = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            assert!(ok, "cluster node {port} never reported cluster_state:ok");
        }
        cluster
    }
}

impl RedisCluster {
    /// Starts node `i` (again: it rejoins with its slots from its cluster config file, and
    /// empty, as a node without persistence comes back). A node that is down leaves the
    /// others serving their slots (`cluster-require-full-coverage no`).
    ///
    /// # Panics
    /// When it does not come up.
    #[allow(clippy::expect_used)]
    pub async fn start_node(&mut self, i: usize) {
        let port = self.ports[i];
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-require-full-coverage",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services installs it)");
        if self.children.len() <= i {
            self.children.resize_with(i + 1, || None);
        }
        self.children[i] = Some(child);
        assert!(listening(port).await, "cluster node {port} did not start");
    }

    /// Kills node `i` (SIGKILL).
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut c) = self.children.get_mut(i).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The index of the node that serves `key`'s slot.
    ///
    /// # Panics
    /// When no node claims it.
    #[allow(clippy::expect_used, clippy::panic)]
    pub fn owner(&self, key: &str) -> usize {
        for (i, port) in self.ports.iter().enumerate() {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "EXISTS", key])
                .output()
                .expect("redis-cli");
            // The owner answers; the others redirect with MOVED.
            if !String::from_utf8_lossy(&out.stdout).contains("MOVED") {
                return i;
            }
        }
        panic!("no node serves {key}")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().filter_map(Option::as_mut) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An unlimited reservation of job `n` (a UUID made from the number) on `user`'s ledger of
/// the current month.
pub fn reserve(user: domain::ids::UserId, n: u128) -> domain::usage::UsageCommand {
    let now = chrono::Utc::now();
    domain::usage::UsageCommand::Reserve(domain::usage::ReserveUnit {
        job_id: domain::ids::JobId::from_uuid(uuid::Uuid::from_u128(n)),
        user_id: user,
        period: domain::period::BillingPeriod::calendar_month(now),
        plan: domain::plan::Plan::Enterprise,
        limit: None,
        now,
    })
}

/// The aggregate id of `user`'s ledger of the current month.
pub fn usage_id(user: domain::ids::UserId) -> String {
    let period = domain::period::BillingPeriod::calendar_month(chrono::Utc::now());
    domain::usage::UsageKey::new(user, &period).aggregate_id()
}

/// Pipelining against a real store (either backend): `first` queues a chain of units on one
/// ledger, each built on the one before, whose first unit fails; `second` is another process
/// on the same database. Every unit built on a failed one must fail as a conflict, and the
/// ledger's sequence must stay without a gap.
///
/// # Panics
/// When the store breaks the rule: this is a test.
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::missing_panics_doc)]
pub async fn a_failed_unit_fails_the_units_built_on_it(
    first: &eventstore::EventStore,
    second: &eventstore::EventStore,
) {
    use domain::{Decider, ids::UserId, usage::Usage};

    use eventstore::{CommitError, EventStore, IdempotencyRecord, Loaded, Metadata, WriteUnit};

    let user = UserId::from_uuid(uuid::Uuid::new_v4());
    let id = usage_id(user);
    let reserve = |n: u128| reserve(user, n);
    let key = |k: &str| IdempotencyRecord {
        user_id: user.as_uuid(),
        key: k.to_owned(),
        request_hash: "h".into(),
        status: 202,
        body: serde_json::json!({}),
    };
    // Queues `n`'s reservation on `loaded`; returns the state after it and its commit.
    let queue = |loaded: Loaded<Usage>, n: u128, idempotency: Option<IdempotencyRecord>| {
        let events = loaded.state.decide(reserve(n)).unwrap();
        let (append, _, mut after) =
            EventStore::prepare(&id, loaded, &events, &Metadata::new()).unwrap();
        let unit = WriteUnit {
            appends: vec![append],
            snapshots: vec![],
            idempotency,
            guards: vec![],
        };
        let (ticket, committing) = first.enqueue(unit).unwrap();
        after.pending = Some(ticket);
        (after, committing)
    };
    let sequences = || async {
        first
            .events_of("usage", &id)
            .await
            .unwrap()
            .iter()
            .map(|e| e.sequence)
            .collect::<Vec<_>>()
    };

    // 1. The chain's base is refused for its idempotency key (its sequence was free): the
    //    units queued behind it in the same breath must not be written after a hole.
    first
        .execute::<Usage>(&id, reserve(1), &Metadata::new())
        .await
        .unwrap()
        .unwrap();
    second
        .commit(WriteUnit {
            idempotency: Some(key("taken")),
            ..WriteUnit::default()
        })
        .await
        .unwrap();
    let loaded = first.load_fresh::<Usage>(&id).await.unwrap();
    let (after_a, a) = queue(loaded, 2, Some(key("taken")));
    let (after_b, b) = queue(after_a, 3, None);
    let (_, c) = queue(after_b, 4, None);
    assert!(matches!(a.await, Err(CommitError::DuplicateKey)));
    assert!(matches!(b.await, Err(CommitError::Conflict)));
    assert!(matches!(c.await, Err(CommitError::Conflict)));
    assert_eq!(sequences().await, vec![1]);

    // 2. The base loses its sequence to another process; a unit built on it is queued only
    //    after the base's failure is known to the writer (another batch).
    let loaded = first.load_fresh::<Usage>(&id).await.unwrap();
    second
        .execute::<Usage>(&id, reserve(5), &Metadata::new())
        .await
        .unwrap()
        .unwrap();
    let (after_a, a) = queue(loaded, 6, None);
    assert!(matches!(a.await, Err(CommitError::Conflict)));
    let (_, b) = queue(after_a, 7, None);
    assert!(matches!(b.await, Err(CommitError::Conflict)));
    assert_eq!(sequences().await, vec![1, 2]);

    // 3. The store goes on: a command after the failures decides on the stored state.
    first.forget("usage", &id);
    let done = first
        .execute::<Usage>(&id, reserve(8), &Metadata::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.events.len(), 1);
    assert_eq!(sequences().await, vec![1, 2, 3]);
    let state = first.load_fresh::<Usage>(&id).await.unwrap().state;
    let held: Vec<u128> = state
        .state()
        .unwrap()
        .reserved
        .keys()
        .map(|j| j.as_uuid().as_u128())
        .collect();
    assert_eq!(held, vec![1, 5, 8]);
}

/// Guards against a real store (either backend): a unit that decided on an aggregate it
/// does not append to (a guard) commits only while that aggregate's last sequence is still
/// the one it read, and a guard behind an append to its aggregate in the same queue sees it.
///
/// # Panics
/// When the store breaks the rule: this is a test.
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::missing_panics_doc)]
pub async fn a_guard_commits_only_while_its_state_is_the_latest(
    first: &eventstore::EventStore,
    second: &eventstore::EventStore,
) {
    use domain::{Decider, ids::UserId, usage::Usage};

    use eventstore::{CommitError, EventStore, Guard, Metadata, WriteUnit};

    let new_user = || UserId::from_uuid(uuid::Uuid::new_v4());
    let owner = new_user();
    let guarded = usage_id(owner);
    // A reservation on a new user's ledger, decided while `guarded` was at `sequence`.
    let unit = |sequence: i64| {
        let user = new_user();
        let id = usage_id(user);
        let events = Usage::default().decide(reserve(user, 1)).unwrap();
        let loaded = eventstore::Loaded::<Usage>::default();
        let (append, _, _) = EventStore::prepare(&id, loaded, &events, &Metadata::new()).unwrap();
        let unit = WriteUnit {
            appends: vec![append],
            guards: vec![Guard {
                aggregate_type: "usage",
                aggregate_id: guarded.clone(),
                sequence,
            }],
            ..WriteUnit::default()
        };
        (id, unit)
    };
    let written = |id: String| async move { first.events_of("usage", &id).await.unwrap().len() };

    // 1. Nothing appended to the guarded aggregate yet: a guard at 0 holds.
    let (id, u) = unit(0);
    first.commit(u).await.unwrap();
    assert_eq!(written(id).await, 1);

    // 2. Another process moves it on: a guard at the old sequence fails, writing nothing;
    //    one at the new sequence commits.
    second
        .execute::<Usage>(&guarded, reserve(owner, 7), &Metadata::new())
        .await
        .unwrap()
        .unwrap();
    let (id, u) = unit(0);
    assert!(matches!(first.commit(u).await, Err(CommitError::Stale)));
    assert_eq!(written(id).await, 0);
    let (id, u) = unit(1);
    first.commit(u).await.unwrap();
    assert_eq!(written(id).await, 1);

    // 3. An append to the guarded aggregate queued just before: a guard at the sequence it
    //    makes commits, one at the sequence before it fails, whether or not they share its
    //    transaction.
    let loaded = first.load_fresh::<Usage>(&guarded).await.unwrap();
    let events = loaded.state.decide(reserve(owner, 8)).unwrap();
    let (append, _, _) = EventStore::prepare(&guarded, loaded, &events, &Metadata::new()).unwrap();
    let (_, moving) = first
        .enqueue(WriteUnit {
            appends: vec![append],
            ..WriteUnit::default()
        })
        .unwrap();
    let (after_id, after) = unit(2);
    let (before_id, before) = unit(1);
    let (_, after) = first.enqueue(after).unwrap();
    let (_, before) = first.enqueue(before).unwrap();
    moving.await.unwrap();
    after.await.unwrap();
    assert!(matches!(before.await, Err(CommitError::Stale)));
    assert_eq!(written(after_id).await, 1);
    assert_eq!(written(before_id).await, 0);
    assert_eq!(written(guarded).await, 2);
}
