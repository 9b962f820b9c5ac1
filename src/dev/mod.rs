//! `runledger dev`: every role in one process on one port. The embedded default keeps the
//! events in SQLite under the data directory, the read models in memory (folded from the
//! events at start), and the bus and the job queue in process; `DATABASE_URL`, `NATS_URL`
//! and `REDIS_URL` each switch one part to the real service.

mod banner;
mod reporter;

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use axum::{Router, routing::get};
use domain::task::{Namespace, NamespaceMap};
use eventstore::EventStore;
use platform::{
    notice::NoticeBus,
    settings::{Secret, Settings},
    views::MemoryViews,
};
use read_api::ReadModels;
use tokio_util::sync::CancellationToken;
use workers::{
    dispatcher::Dispatcher, local::LocalQueue, queue::RedisQueue, runtime::WorkerConfig,
};

/// The demo customer whose token `runledger dev` prints.
pub const DEMO_USER: &str = "00000000-0000-4000-8000-00000000d3e0";
/// The auditor whose token `runledger dev` prints.
pub const DEMO_AUDITOR: &str = "00000000-0000-4000-8000-0000000a0d17";

/// Where `runledger dev` keeps its data.
pub enum Data {
    /// A directory (events and the dev JWT secret survive a restart).
    Dir(PathBuf),
    /// Nothing kept.
    InMemory,
}

/// Runs until Ctrl-C / SIGTERM.
pub async fn run(mut s: Settings, data: Data, concurrency: usize) -> anyhow::Result<ExitCode> {
    platform::telemetry::init_human(
        s.log_filter_or("warn"),
        s.otlp_endpoint.as_deref(),
        "runledger-dev",
    );
    let _lock = match &data {
        Data::Dir(dir) => Some(lock_data_dir(dir)?),
        Data::InMemory => None,
    };
    if s.jwt_secret.is_none() && s.jwks_url.is_none() {
        s.jwt_secret = Some(dev_secret(&data)?);
    }
    let profiles = match &data {
        Data::Dir(dir) => {
            // Profiles of browsers an earlier run left behind (it holds the lock no more).
            let profiles = dir.join("browser");
            let _ = std::fs::remove_dir_all(&profiles);
            if std::env::var_os("RUNLEDGER_ARTIFACTS_DIR").is_none() {
                s.artifacts_dir = dir.join("artifacts");
            }
            profiles
        }
        Data::InMemory => {
            if std::env::var_os("RUNLEDGER_ARTIFACTS_DIR").is_none() {
                s.artifacts_dir = std::env::temp_dir()
                    .join(format!("runledger-dev-{}", uuid::Uuid::new_v4().simple()))
                    .join("artifacts");
            }
            crate::executors::temp_profiles()
        }
    };
    let listener = tokio::net::TcpListener::bind(s.addr)
        .await
        .with_context(|| format!("cannot listen on {}", s.addr))?;
    let shutdown = platform::shutdown::on_signal();

    let nats = match &s.nats_url {
        Some(url) => Some(nats(url).await?),
        None => None,
    };
    let bus = match &nats {
        Some(client) => NoticeBus::nats(client.clone(), s.nats_prefix.clone()),
        None => NoticeBus::local(),
    };
    let mut tasks = Vec::new();
    let Storage {
        store,
        views,
        backend,
        _claim,
    } = storage(&s, &data, &bus, &shutdown, &mut tasks).await?;
    if let Some(client) = nats {
        tasks.push(tokio::spawn(projections::relay::run(
            store.clone(),
            client,
            s.nats_prefix.clone(),
            Some(store.appended().clone()),
            shutdown.clone(),
        )));
    }

    let command = command_api::build_on(store.clone(), s.clone());
    tasks.push(tokio::spawn(command_api::process::run(
        store.clone(),
        command_api::process::Timeouts::of(&s),
        shutdown.clone(),
    )));
    let read = read_api::build_on(store.clone(), views, s.clone(), &bus, shutdown.clone()).await?;
    let pools = Pools {
        concurrency,
        profiles,
    };
    start_workers(&s, &store, &command, pools, &shutdown, &mut tasks).await?;

    let metrics_state = read.clone();
    let app = platform::http::finish(
        Router::new()
            .merge(command_api::routes(command))
            .merge(read_api::routes(read))
            .merge(
                Router::new()
                    .route("/metrics", get(read_api::metrics))
                    .with_state(metrics_state),
            ),
        store.clone(),
        &s.task_types,
    );

    banner::banner(&s, &listener, &backend, &data)?;
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    shutdown.cancel();
    // Workers get their grace period (30 s) to finish running jobs.
    let _ = tokio::time::timeout(Duration::from_secs(35), futures::future::join_all(tasks)).await;
    println!("runledger dev stopped.");
    Ok(ExitCode::SUCCESS)
}

/// The event store and read models, and what runs them.
struct Storage {
    store: EventStore,
    views: Arc<dyn ReadModels>,
    /// Where the events are, for the banner.
    backend: String,
    /// Held for the life of the process (see [`claim_database`]).
    _claim: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
}

/// Postgres when `DATABASE_URL` is set (its projection tables as read models), else SQLite in
/// `data` with in-memory read models folded from it before anything is served.
async fn storage(
    s: &Settings,
    data: &Data,
    bus: &NoticeBus,
    shutdown: &CancellationToken,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<Storage> {
    let mut claim = None;
    let (store, views, backend) = match &s.database_url {
        Some(url) => {
            let pool = platform::db::connect(url, s.db_max_connections).await?;
            platform::db::migrate(&pool).await?;
            if s.redis_url.is_none() {
                claim = Some(claim_database(&pool).await?);
            }
            let store = EventStore::new(pool.clone());
            tasks.push(tokio::spawn(projections::runner::run(
                pool.clone(),
                projections::Projection::ALL.to_vec(),
                bus.clone(),
                Some(store.appended().clone()),
                shutdown.clone(),
            )));
            tasks.push(tokio::spawn(projections::jobs::trim_every(
                pool.clone(),
                s.changes_retention,
                shutdown.clone(),
            )));
            (
                store,
                Arc::new(read_api::PgViews(pool)) as Arc<dyn ReadModels>,
                "Postgres (DATABASE_URL)".to_owned(),
            )
        }
        None => {
            let pool = platform::db::open_embedded(match data {
                Data::Dir(d) => Some(d.as_path()),
                Data::InMemory => None,
            })
            .await?;
            if let Data::Dir(d) = data {
                // The events name every customer and hold their payloads: the owner's only
                // (SQLite gives its -wal and -shm files the database's mode).
                for name in ["events.db", "events.db-wal", "events.db-shm"] {
                    owner_only(&d.join(name), 0o600)?;
                }
            }
            let store = EventStore::sqlite(pool);
            let views = Arc::new(MemoryViews::default());
            projections::memory::catch_up(&store, &views).await?;
            tasks.push(tokio::spawn(projections::memory::run(
                store.clone(),
                views.clone(),
                bus.clone(),
                shutdown.clone(),
            )));
            tasks.push(tokio::spawn(projections::memory::trim_every(
                views.clone(),
                s.changes_retention,
                shutdown.clone(),
            )));
            let where_ = match data {
                Data::Dir(d) => format!("SQLite in {}", d.display()),
                Data::InMemory => "SQLite in memory (nothing kept)".to_owned(),
            };
            (store, views as Arc<dyn ReadModels>, where_)
        }
    };
    Ok(Storage {
        store,
        views,
        backend,
        _claim: claim,
    })
}

/// NATS, failing when no server answers (the roles themselves wait for one).
async fn nats(url: &str) -> anyhow::Result<async_nats::Client> {
    match tokio::time::timeout(Duration::from_secs(10), platform::nats::connect_now(url)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => anyhow::bail!("NATS_URL: cannot connect: {}", e.kind()),
        Err(_) => anyhow::bail!("NATS_URL: no NATS server answered within 10 s"),
    }
}

/// How the workers of `runledger dev` run.
struct Pools {
    /// Jobs at once per namespace.
    concurrency: usize,
    /// Where browser profiles go.
    profiles: PathBuf,
}

/// The dispatcher and a worker per namespace: on Redis when `REDIS_URL` is set, else on
/// the in-process queue. Workers report through the command side in process.
async fn start_workers(
    s: &Settings,
    store: &EventStore,
    command: &command_api::AppState,
    Pools {
        concurrency,
        profiles,
    }: Pools,
    shutdown: &CancellationToken,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let namespaces = vec![Namespace::default_ns(), Namespace::browser()];
    let reporter = Arc::new(reporter::LocalReporter {
        state: command.clone(),
    });
    // Redis first: a start refused for it launches no browser.
    let redis = match &s.redis_url {
        Some(url) => {
            let client = workers::queue::Target::open(url, s.redis_cluster)
                .map_err(|_| anyhow::anyhow!("REDIS_URL does not parse as a Redis URL"))?;
            let conn = workers::queue::connect(&client)
                .await
                .map_err(|e| anyhow::anyhow!("REDIS_URL: cannot connect: {e}"))?;
            Some((client, conn))
        }
        None => None,
    };
    let executor = Arc::new(crate::executors::build(s, &namespaces, profiles, shutdown).await?);
    match redis {
        Some((client, conn)) => {
            let dispatcher =
                Dispatcher::new(store.clone(), RedisQueue { conn }, NamespaceMap::default())
                    .with_reconcile_grace(s.reconcile_grace)
                    .with_fairness(s.dispatch);
            tasks.push(tokio::spawn(
                dispatcher.run(namespaces.clone(), shutdown.clone()),
            ));
            for ns in namespaces {
                let (client, reporter, executor) =
                    (client.clone(), reporter.clone(), executor.clone());
                let cfg = WorkerConfig::new(ns, concurrency);
                let shutdown = shutdown.clone();
                tasks.push(tokio::spawn(async move {
                    if let Err(e) =
                        workers::runtime::run(client, reporter, executor, cfg, shutdown).await
                    {
                        tracing::error!(message = "Worker stopped.", error = %e);
                    }
                }));
            }
        }
        None => {
            let queue = LocalQueue::new();
            // It refills the queue from the log first, while the port is served.
            let dispatcher = Dispatcher::new(store.clone(), queue.clone(), NamespaceMap::default())
                .with_fairness(s.dispatch);
            tasks.push(tokio::spawn(
                dispatcher.run(namespaces.clone(), shutdown.clone()),
            ));
            for ns in namespaces {
                tasks.push(tokio::spawn(workers::runtime::run_local(
                    queue.clone(),
                    reporter.clone(),
                    executor.clone(),
                    WorkerConfig::new(ns, concurrency),
                    shutdown.clone(),
                )));
            }
        }
    }
    Ok(())
}

/// With `DATABASE_URL` and no `REDIS_URL`, the job queue lives in this process and is refilled
/// from the shared log at start, failing attempts left running: a second such process on the
/// same database would fail the first one's running attempts. One is allowed per database
/// (a session advisory lock, released when the connection closes).
async fn claim_database(
    pool: &sqlx::PgPool,
) -> anyhow::Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    let mut conn = pool.acquire().await?;
    let (won,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock(7245037263)")
        .fetch_one(&mut *conn)
        .await?;
    if !won {
        anyhow::bail!(
            "another runledger dev with an in-process queue uses this DATABASE_URL; \
             set REDIS_URL to share one queue"
        );
    }
    Ok(conn)
}

/// Holds the data directory for this process: two `runledger dev` on one directory would
/// each refill the queue and run every job twice.
fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    let fail = |what: &str| format!("cannot use data directory {}: {what}", dir.display());
    std::fs::create_dir_all(dir).with_context(|| fail("cannot create it"))?;
    owner_only(dir, 0o700)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .with_context(|| fail("not writable"))?;
    file.try_lock()
        .map_err(|_| anyhow::anyhow!(fail("another runledger dev is using it")))?;
    Ok(file)
}

/// The HS256 secret of the dev tokens: kept in the data directory so tokens outlive a
/// restart; fresh each run in memory.
fn dev_secret(data: &Data) -> anyhow::Result<Secret> {
    let fresh = || {
        let bytes: [u8; 32] = rand::random();
        hex::encode(bytes)
    };
    let Data::Dir(dir) = data else {
        return Ok(Secret::new(fresh()));
    };
    let path = dir.join("jwt-secret");
    if let Ok(s) = std::fs::read_to_string(&path)
        && s.trim().len() >= 32
    {
        if exposed(&path) {
            tracing::warn!(
                message = "The dev JWT secret was readable by other users; it is now 0600. Delete it to have a new one minted (tokens made with the old one stop working).",
                path = %path.display()
            );
        }
        owner_only(&path, 0o600)?;
        return Ok(Secret::new(s.trim()));
    }
    let secret = fresh();
    write_private(&path, &secret)?;
    Ok(Secret::new(secret))
}

/// Writes a file only its owner can read (it holds a secret or tokens).
pub(crate) fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    let mut options = File::options();
    options.create(true).truncate(true).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // `mode` applies to a new file only: one that existed keeps its mode unless set here.
    owner_only(path, 0o600)?;
    f.write_all(content.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Sets `path` (when it exists) to `mode`, so only its owner can read it, whatever it was.
fn owner_only(path: &Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot restrict {}", path.display()))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Whether `path` is readable by its group or by others.
fn exposed(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}
