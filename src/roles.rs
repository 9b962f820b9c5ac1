//! Wiring of the roles that run on Postgres and NATS.

use std::process::ExitCode;

use anyhow::Context;
use platform::{notice::NoticeBus, settings::Settings};
use projections::Projection;

async fn bus(settings: &Settings) -> anyhow::Result<NoticeBus> {
    let url = settings.require_nats()?;
    let client = platform::nats::connect(url)
        .await
        .context("connecting to NATS")?;
    Ok(NoticeBus::nats(client, settings.nats_prefix.clone()))
}

/// Where a role that commits events says so, when NATS is configured: followers in other
/// processes wake on it (`platform::wake`) instead of waiting out their poll.
async fn announcer(settings: &Settings) -> anyhow::Result<Option<(async_nats::Client, String)>> {
    let Some(url) = &settings.nats_url else {
        return Ok(None);
    };
    // Without echo: the dispatcher also listens on this connection.
    let client = platform::nats::connect_no_echo(url)
        .await
        .context("connecting to NATS")?;
    Ok(Some((
        client,
        platform::wake::subject(&settings.nats_prefix),
    )))
}

async fn pool(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    Ok(platform::db::connect(settings.require_database()?, settings.db_max_connections).await?)
}

/// Applies the migrations (`--migrate`) or checks that `runledger migrate` did, on a
/// connection of its own (a migration's statements are not cut short).
pub async fn schema(settings: &Settings, migrate: bool) -> anyhow::Result<()> {
    let pool = platform::db::connect_for_migrations(settings.require_database()?).await?;
    platform::db::prepare(&pool, migrate).await?;
    pool.close().await;
    Ok(())
}

pub async fn command_api(s: Settings, migrate: bool) -> anyhow::Result<ExitCode> {
    s.init_telemetry("command-api");
    for name in [
        "runledger_command_conflicts_total",
        "runledger_leases_expired_total",
    ] {
        platform::metrics::zero(name, &[]);
    }
    platform::metrics::zero(
        "runledger_events_parked_total",
        &[("consumer", command_api::process::CHECKPOINT)],
    );
    schema(&s, migrate).await?;
    let addr = s.addr;
    let shutdown = platform::shutdown::on_signal();
    let wake = announcer(&s).await?;
    let state = command_api::build(s).await?;
    if let Some((client, subject)) = wake {
        tokio::spawn(platform::wake::announce(
            client,
            subject,
            state.store.appended().clone(),
            shutdown.clone(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(message = "Command API listening.", addr = %addr);
    command_api::run(listener, state, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn read_api(s: Settings, migrate: bool) -> anyhow::Result<ExitCode> {
    s.init_telemetry("read-api");
    schema(&s, migrate).await?;
    let addr = s.addr;
    let bus = bus(&s).await?;
    let shutdown = platform::shutdown::on_signal();
    let state = read_api::build(s, &bus, shutdown.clone()).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(message = "Read API listening.", addr = %addr);
    read_api::run(listener, state, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// `/metrics` and `/healthz` on `RUNLEDGER_ADDR`.
async fn metrics_endpoint(
    s: &Settings,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(s.addr)
        .await
        .with_context(|| format!("cannot listen on {}", s.addr))?;
    tokio::spawn(platform::metrics::serve(listener, shutdown.clone()));
    Ok(())
}

pub async fn projections(s: Settings, migrate: bool) -> anyhow::Result<ExitCode> {
    s.init_telemetry("projections");
    platform::metrics::zero(
        "runledger_events_parked_total",
        &[("consumer", "projections")],
    );
    schema(&s, migrate).await?;
    let url = s.require_nats()?;
    let client = platform::nats::connect(url)
        .await
        .context("connecting to NATS")?;
    let bus = NoticeBus::nats(client.clone(), s.nats_prefix.clone());
    let pool = pool(&s).await?;
    let shutdown = platform::shutdown::on_signal();
    let woken = platform::wake::follower(client, &s.nats_prefix, &shutdown);
    metrics_endpoint(&s, &shutdown).await?;
    tracing::info!(message = "Projections running.");
    tokio::spawn(projections::jobs::trim_every(
        pool.clone(),
        s.changes_retention,
        shutdown.clone(),
    ));
    projections::runner::run(pool, Projection::ALL.to_vec(), bus, Some(woken), shutdown).await;
    Ok(ExitCode::SUCCESS)
}

pub async fn rebuild(s: Settings, projection: Projection) -> anyhow::Result<ExitCode> {
    schema(&s, false).await?;
    let pool = pool(&s).await?;
    let head = eventstore::reader::head(&pool).await?;
    let mut shown = 0;
    let done = projections::rebuild::rebuild(&pool, projection, |p| {
        let pct = if head > 0 { p * 100 / head } else { 100 };
        if pct >= shown + 5 {
            shown = pct;
            eprint!("\rrebuilding {}: {pct}%", projection.name());
        }
    })
    .await?;
    eprintln!();
    println!(
        "rebuilt {}: {} events to position {} in {:.2} s ({:.0} events/s)",
        projection.name(),
        done.events,
        done.position,
        done.elapsed.as_secs_f64(),
        done.events as f64 / done.elapsed.as_secs_f64().max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn relay(s: Settings, migrate: bool) -> anyhow::Result<ExitCode> {
    s.init_telemetry("relay");
    schema(&s, migrate).await?;
    let url = s.require_nats()?.to_owned();
    let pool = pool(&s).await?;
    let client = platform::nats::connect(&url)
        .await
        .context("connecting to NATS")?;
    let shutdown = platform::shutdown::on_signal();
    let woken = platform::wake::follower(client.clone(), &s.nats_prefix, &shutdown);
    metrics_endpoint(&s, &shutdown).await?;
    tracing::info!(message = "Relay running.");
    projections::relay::run(
        eventstore::EventStore::new(pool),
        client,
        s.nats_prefix.clone(),
        Some(woken),
        shutdown,
    )
    .await;
    Ok(ExitCode::SUCCESS)
}

pub async fn dispatcher(s: Settings, migrate: bool) -> anyhow::Result<ExitCode> {
    s.init_telemetry("dispatcher");
    platform::metrics::zero("runledger_dispatch_failures_total", &[]);
    platform::metrics::zero(
        "runledger_events_parked_total",
        &[("consumer", workers::dispatcher::CHECKPOINT)],
    );
    for ns in ["default", "browser"] {
        platform::metrics::zero("runledger_queue_repushed_total", &[("namespace", ns)]);
    }
    schema(&s, migrate).await?;
    let pool = pool(&s).await?;
    let client = workers::queue::Target::open(s.require_redis()?, s.redis_cluster)
        .context("REDIS_URL does not parse")?;
    let redis = workers::queue::connect(&client)
        .await
        .context("connecting to Redis")?;
    let shutdown = platform::shutdown::on_signal();
    metrics_endpoint(&s, &shutdown).await?;
    let store = eventstore::EventStore::new(pool);
    let mut woken = None;
    if let Some((client, subject)) = announcer(&s).await? {
        // Submissions and reports commit in the command API: woken by its announcements,
        // a job is dispatched without waiting out the poll.
        woken = Some(platform::wake::follower(
            client.clone(),
            &s.nats_prefix,
            &shutdown,
        ));
        tokio::spawn(platform::wake::announce(
            client,
            subject,
            store.appended().clone(),
            shutdown.clone(),
        ));
    }
    let mut dispatcher = workers::dispatcher::Dispatcher::new(
        store,
        workers::queue::RedisQueue { conn: redis },
        domain::task::NamespaceMap::default(),
    )
    .with_reconcile_grace(s.reconcile_grace)
    .with_fairness(s.dispatch);
    if let Some(w) = woken {
        dispatcher = dispatcher.with_wakeups(w);
    }
    let namespaces = vec![
        domain::task::Namespace::default_ns(),
        domain::task::Namespace::browser(),
    ];
    tracing::info!(message = "Dispatcher running.");
    dispatcher.run(namespaces, shutdown).await;
    Ok(ExitCode::SUCCESS)
}

pub async fn worker(s: Settings, namespace: &str, concurrency: usize) -> anyhow::Result<ExitCode> {
    s.init_telemetry("worker");
    platform::metrics::zero("runledger_outcome_retries_total", &[]);
    let namespace = domain::task::Namespace::parse(namespace).context("--namespace")?;
    let command_url = s
        .command_url
        .clone()
        .context("RUNLEDGER_COMMAND_URL is required by the worker")?;
    let minter = platform::auth::Minter::for_role(&s, platform::auth::Role::Worker);
    let credentials = match (&s.worker_token, minter) {
        (Some(t), _) => workers::report::Credentials::Fixed(t.clone()),
        (None, Some(minter)) => {
            workers::report::Credentials::minted(minter, std::time::Duration::from_secs(86_400))
        }
        (None, None) => anyhow::bail!(
            "set RUNLEDGER_WORKER_TOKEN (or RUNLEDGER_JWT_SECRET, or RUNLEDGER_SERVICE_JWT_SECRET, to mint one)"
        ),
    };
    let client = workers::queue::Target::open(s.require_redis()?, s.redis_cluster)
        .context("REDIS_URL does not parse")?;
    let reporter = std::sync::Arc::new(workers::report::HttpReporter::with_credentials(
        &command_url,
        credentials,
    ));
    let shutdown = platform::shutdown::on_signal();
    metrics_endpoint(&s, &shutdown).await?;
    let executor = std::sync::Arc::new(
        crate::executors::build(
            &s,
            std::slice::from_ref(&namespace),
            crate::executors::temp_profiles(),
            &shutdown,
        )
        .await?,
    );
    let cfg = workers::runtime::WorkerConfig::new(namespace, concurrency);
    tracing::info!(message = "Worker running.", worker_id = %cfg.worker_id, namespace = %cfg.namespace);
    workers::runtime::run(client, reporter, executor, cfg, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
