//! `runledger`: one binary, a subcommand per role. This file only parses the command line
//! and calls each crate's `run`.

mod audit;
mod bench;
mod billing;
mod dev;
mod events;
mod executors;
mod roles;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use domain::ids::UserId;
use platform::{auth::Role, settings::Settings};

// Every request, span and event allocates; glibc's allocator spent ~13% of the command API's
// CPU under load (perf, `bench submit`), mimalloc a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "runledger", version, about = "An event-sourced job platform")]
struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Run the whole platform in one process on one port, with no server to install.
    ///
    /// Events in SQLite under the data directory; read models, bus and queue in process.
    /// DATABASE_URL, NATS_URL and REDIS_URL switch each part to the real service.
    Dev {
        /// Where the events are kept (default: RUNLEDGER_DATA_DIR, else ./.runledger).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Keep nothing: a throw-away run.
        #[arg(long, conflicts_with = "data_dir")]
        in_memory: bool,
        /// Listen address (default: RUNLEDGER_ADDR, else 127.0.0.1:8080).
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// Jobs at once per namespace (reports wait on commits, so more slots than cores pay off).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Apply the database migrations (DATABASE_URL).
    Migrate,
    /// Audit the usage ledgers from the raw events.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Events a consumer could not read and skipped (parked), and another try at them.
    Events {
        #[command(subcommand)]
        action: EventsAction,
        /// Without DATABASE_URL: the data directory of `runledger dev` (default:
        /// RUNLEDGER_DATA_DIR, else ./.runledger).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
    /// Billing on Stripe: without an action, the billing role (reports on a schedule,
    /// reconciles, serves /metrics); or one report or reconciliation.
    Billing {
        #[command(subcommand)]
        action: Option<BillingAction>,
        /// Apply pending migrations first (small installs; a deployment with several
        /// replicas runs `runledger migrate` once instead).
        #[arg(long)]
        migrate: bool,
    },
    /// Serve the write side: job submission, cancel, worker reports; runs the process manager.
    CommandApi {
        /// Apply pending migrations first (small installs; a deployment with several
        /// replicas runs `runledger migrate` once instead).
        #[arg(long)]
        migrate: bool,
    },
    /// Serve the read side: job views, usage, subscription, the per-user SSE stream.
    ReadApi {
        /// Apply pending migrations first (small installs; a deployment with several
        /// replicas runs `runledger migrate` once instead).
        #[arg(long)]
        migrate: bool,
    },
    /// Run the projections (read models), or rebuild one.
    Projections {
        #[command(subcommand)]
        action: Option<ProjectionsAction>,
        /// Apply pending migrations first (small installs; a deployment with several
        /// replicas runs `runledger migrate` once instead).
        #[arg(long)]
        migrate: bool,
    },
    /// Publish the event log to NATS JetStream, in global order.
    Relay {
        /// Apply pending migrations first (small installs; a deployment with several
        /// replicas runs `runledger migrate` once instead).
        #[arg(long)]
        migrate: bool,
    },
    /// Keep the Redis queues filled from the event log; promote scheduled jobs when due.
    Dispatcher {
        /// Apply pending migrations first (small installs; a deployment with several
        /// replicas runs `runledger migrate` once instead).
        #[arg(long)]
        migrate: bool,
    },
    /// Pull jobs from a namespace's queue, run them, report outcomes to RUNLEDGER_COMMAND_URL.
    Worker {
        /// default or browser (or a configured namespace).
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Jobs at once (reports wait on commits, so more slots than cores pay off).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Print every setting (environment variable) with its default and meaning, as the
    /// Markdown of docs/settings.md.
    Settings,
    /// Tokens for the configured HS256 secret (RUNLEDGER_JWT_SECRET).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Load generators that print their figures.
    Bench {
        #[command(subcommand)]
        action: bench::BenchAction,
    },
    /// The JSON Schemas of the envelope, commands and events, generated from the domain types.
    Schemas {
        #[command(subcommand)]
        action: SchemasAction,
        /// The schemas directory.
        #[arg(long, default_value = "schemas", global = true)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ProjectionsAction {
    /// Replay the whole store into fresh tables and swap them in.
    Rebuild {
        /// jobs, usage or subscriptions.
        name: projections::Projection,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Replay a user's usage per period from the events, verify each hash chain, compare with
    /// the read model; exit 1 when any does not hold.
    Replay {
        /// The user (UUID).
        #[arg(long)]
        user: String,
        /// First month, YYYY-MM (default: this month).
        #[arg(long)]
        from: Option<String>,
        /// Last month, YYYY-MM (default: this month).
        #[arg(long)]
        to: Option<String>,
        /// table, json or csv.
        #[arg(long, value_enum, default_value = "table")]
        format: audit::Format,
        /// A digest made earlier (`runledger audit digest`): the ledgers must still match it.
        #[arg(long)]
        digest: Option<PathBuf>,
        /// Without DATABASE_URL: the data directory of `runledger dev` (default:
        /// RUNLEDGER_DATA_DIR, else ./.runledger).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Print the signed digest (unit count and chain head) of each closed ledger starting in
    /// a month (RUNLEDGER_AUDIT_SIGNING_KEY).
    Digest {
        /// The month, YYYY-MM.
        #[arg(long)]
        period: String,
        /// Only this user's ledgers (UUID).
        #[arg(long)]
        user: Option<String>,
        /// Without DATABASE_URL: the data directory of `runledger dev`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BillingAction {
    /// Send paid ledgers' unreported units to Stripe as meter events; exit 1 when a range
    /// could not be sent or is flagged.
    Report {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Without DATABASE_URL: the data directory of `runledger dev`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Per ledger of a month: Stripe's meter vs the projection vs a replay of the events;
    /// exit 1 on any difference.
    Reconcile {
        /// The month, YYYY-MM.
        #[arg(long)]
        period: String,
        /// table or json.
        #[arg(long, value_enum, default_value = "table")]
        format: billing::Format,
        /// Without DATABASE_URL: the data directory of `runledger dev`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EventsAction {
    /// List the parked events.
    Parked {
        /// Only this consumer's: process-manager, dispatcher, jobs, usage, subscriptions,
        /// projections (runledger dev).
        #[arg(long)]
        consumer: Option<String>,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask the process manager and the dispatcher to try their parked events again.
    Retry {
        /// Only this consumer's.
        #[arg(long)]
        consumer: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Print a signed token.
    Mint {
        /// The subject: a user id (UUID).
        #[arg(long)]
        sub: String,
        /// authenticated, worker, auditor or admin.
        #[arg(long, default_value = "authenticated")]
        role: Role,
        /// Lifetime, such as 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum SchemasAction {
    /// Write every schema file.
    Write,
    /// Exit non-zero, naming the files, when a checked-in schema differs from the types.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    platform::install_crypto();
    let result = match cli.command {
        Action::Schemas { action, dir } => schemas(action, &dir),
        Action::Settings => {
            print!("{}", platform::settings::table::markdown());
            Ok(ExitCode::SUCCESS)
        }
        Action::Token {
            action: TokenAction::Mint { sub, role, ttl },
        } => mint(&sub, role, ttl),
        Action::Dev {
            data_dir,
            in_memory,
            addr,
            concurrency,
        } => runtime().and_then(|rt| {
            let mut s = settings()?;
            if let Some(a) = addr {
                s.addr = a;
            }
            let data = if in_memory {
                dev::Data::InMemory
            } else {
                dev::Data::Dir(data_dir.unwrap_or_else(|| s.data_dir.clone()))
            };
            rt.block_on(dev::run(s, data, concurrency))
        }),
        Action::Audit {
            action:
                AuditAction::Replay {
                    user,
                    from,
                    to,
                    format,
                    digest,
                    data_dir,
                },
        } => runtime().and_then(|rt| {
            let s = settings()?;
            let month = audit::this_month();
            let (from, to) = (from.unwrap_or_else(|| month.clone()), to.unwrap_or(month));
            rt.block_on(audit::replay(
                &s,
                data_dir.unwrap_or_else(|| s.data_dir.clone()),
                &user,
                &from,
                &to,
                format,
                digest,
            ))
        }),
        Action::Audit {
            action:
                AuditAction::Digest {
                    period,
                    user,
                    data_dir,
                },
        } => runtime().and_then(|rt| {
            let s = settings()?;
            rt.block_on(audit::digest(
                &s,
                data_dir.unwrap_or_else(|| s.data_dir.clone()),
                &period,
                user.as_deref(),
            ))
        }),
        Action::Billing { action, migrate } => runtime().and_then(|rt| {
            let s = settings()?;
            rt.block_on(async {
                match action {
                    None => billing::role(s, migrate).await,
                    Some(BillingAction::Report { json, data_dir }) => {
                        billing::report(&s, &data_dir.unwrap_or_else(|| s.data_dir.clone()), json)
                            .await
                    }
                    Some(BillingAction::Reconcile {
                        period,
                        format,
                        data_dir,
                    }) => {
                        billing::reconcile(
                            &s,
                            &data_dir.unwrap_or_else(|| s.data_dir.clone()),
                            &period,
                            format,
                        )
                        .await
                    }
                }
            })
        }),
        Action::Events { action, data_dir } => runtime().and_then(|rt| {
            let s = settings()?;
            let dir = data_dir.unwrap_or_else(|| s.data_dir.clone());
            rt.block_on(async {
                match action {
                    EventsAction::Parked { consumer, json } => {
                        events::parked(&s, &dir, consumer.as_deref(), json).await
                    }
                    EventsAction::Retry { consumer } => {
                        events::retry(&s, &dir, consumer.as_deref()).await
                    }
                }
            })
        }),
        Action::Migrate => runtime().and_then(|rt| rt.block_on(migrate())),
        Action::CommandApi { migrate } => {
            runtime().and_then(|rt| rt.block_on(roles::command_api(settings()?, migrate)))
        }
        Action::ReadApi { migrate } => {
            runtime().and_then(|rt| rt.block_on(roles::read_api(settings()?, migrate)))
        }
        Action::Projections {
            action: None,
            migrate,
        } => runtime().and_then(|rt| rt.block_on(roles::projections(settings()?, migrate))),
        Action::Projections {
            action: Some(ProjectionsAction::Rebuild { name }),
            ..
        } => runtime().and_then(|rt| rt.block_on(roles::rebuild(settings()?, name))),
        Action::Relay { migrate } => {
            runtime().and_then(|rt| rt.block_on(roles::relay(settings()?, migrate)))
        }
        Action::Dispatcher { migrate } => {
            runtime().and_then(|rt| rt.block_on(roles::dispatcher(settings()?, migrate)))
        }
        Action::Worker {
            namespace,
            concurrency,
        } => runtime()
            .and_then(|rt| rt.block_on(roles::worker(settings()?, &namespace, concurrency))),
        Action::Bench { action } => runtime().and_then(|rt| rt.block_on(bench::run(action))),
    };
    // Spans still buffered leave before the process does.
    platform::telemetry::shutdown();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("runledger: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn settings() -> anyhow::Result<Settings> {
    Settings::from_env().context("bad configuration")
}

fn mint(sub: &str, role: Role, ttl: Duration) -> anyhow::Result<ExitCode> {
    let s = settings()?;
    let minter = platform::auth::Minter::for_role(&s, role).context(
        "RUNLEDGER_JWT_SECRET (or RUNLEDGER_SERVICE_JWT_SECRET for a service role) is required to mint tokens",
    )?;
    let sub = UserId::parse(sub).context("--sub must be a UUID")?;
    let token = minter.mint(sub, role, ttl)?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

async fn migrate() -> anyhow::Result<ExitCode> {
    let s = settings()?;
    let pool = platform::db::connect_for_migrations(s.require_database()?).await?;
    platform::db::migrate(&pool).await?;
    eprintln!("runledger: migrations applied");
    Ok(ExitCode::SUCCESS)
}

/// `30s`, `15m`, `1h`, `7d`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number and s, m, h or d"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3_600,
        "d" => n * 86_400,
        _ => return Err(format!("`{s}`: unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

fn schemas(action: SchemasAction, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let mut drifted = Vec::new();
    for file in domain::schema::all() {
        let path = dir.join(&file.path);
        match action {
            SchemasAction::Write => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                std::fs::write(&path, &file.json)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            SchemasAction::Check => {
                if std::fs::read_to_string(&path).ok().as_deref() != Some(file.json.as_str()) {
                    drifted.push(path.display().to_string());
                }
            }
        }
    }
    // The OpenAPI document is written by hand but for its generated parts.
    let path = dir.join("openapi.json");
    let current =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&current)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let wanted = domain::schema::pretty(&domain::schema::openapi(doc));
    match action {
        SchemasAction::Write => {
            std::fs::write(&path, wanted).with_context(|| format!("writing {}", path.display()))?
        }
        SchemasAction::Check if wanted != current => drifted.push(path.display().to_string()),
        SchemasAction::Check => {}
    }
    if drifted.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "runledger: schemas differ from the types (run `runledger schemas write`):\n  {}",
        drifted.join("\n  ")
    );
    Ok(ExitCode::FAILURE)
}
