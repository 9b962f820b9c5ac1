//! Load generators that print their figures: `runledger bench
//! submit|sse|streams|rebuild|audit|browser|agent|fair`.

mod agent;
mod audit;
mod browser;
mod drain;
mod fair;
mod rebuild;
mod sse;
mod submit;

use std::{fmt, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Subcommand;
use domain::ids::UserId;
use platform::{auth::Role, settings::Settings};

#[derive(Subcommand)]
pub enum BenchAction {
    /// Submit noop jobs: accepted/s and p50/p95/p99 latency, beside pgbench's commit ceiling.
    Submit {
        /// The command API's base URL; several, comma-separated, for replicas (each user's
        /// submissions go to one of them, as a load balancer with user affinity would).
        #[arg(long, default_value = "http://127.0.0.1:8080", value_delimiter = ',')]
        url: Vec<String>,
        /// Submissions in all.
        #[arg(short = 'n', long, default_value_t = 20_000)]
        requests: usize,
        /// Submissions in flight at once.
        #[arg(short = 'c', long, default_value_t = 64)]
        concurrency: usize,
        /// Distinct users the submissions are spread over.
        #[arg(long, default_value_t = 256)]
        users: usize,
        /// Seconds of pgbench for the durable-commit ceiling (0 skips it; needs DATABASE_URL).
        #[arg(long, default_value_t = 5)]
        pgbench_seconds: u32,
    },
    /// Latency from `POST /v1/jobs` to the SSE event `queued`, at a fixed submission rate.
    Sse {
        /// The command API's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        write: String,
        /// The read API's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        read: String,
        /// Submissions per second.
        #[arg(long, default_value_t = 500)]
        rate: u32,
        /// How long to submit.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Users, each with one open stream.
        #[arg(long, default_value_t = 50)]
        users: usize,
        /// The status to wait for: `queued` (read path), `completed` (workers too).
        #[arg(long, default_value = "queued")]
        until: String,
    },
    /// Hold N SSE streams open and report the read API's resident memory.
    Streams {
        /// The read API's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        read: String,
        /// Streams to open.
        #[arg(long, default_value_t = 10_000)]
        streams: usize,
    },
    /// Seed a scratch database with synthetic job events, then time a rebuild of `jobs`.
    Rebuild {
        /// Events to seed (3 per job: submitted, started, completed).
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
    },
    /// Seed one heavy user's ledger in a scratch database (beside DATABASE_URL's), then time
    /// the audit's replay of it: read, decode, verify the hash chain.
    Audit {
        /// Events to seed (half reservations, half units).
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
    },
    /// A burst of noop jobs from several users, timed from the first submission to the last
    /// SSE `completed` (the method of the peer queues' harness, bench/peers).
    Drain {
        /// The command API's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        write: String,
        /// The read API's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        read: String,
        /// Jobs in the burst.
        #[arg(short = 'n', long = "jobs", default_value_t = 20_000)]
        jobs: usize,
        /// Submissions in flight at once.
        #[arg(short = 'c', long, default_value_t = 32)]
        concurrency: usize,
        /// Users the jobs are spread over, each watching its own stream.
        #[arg(long, default_value_t = 8)]
        users: usize,
    },
    /// A light user's latency (POST → SSE `completed`) alone, during a heavy user's burst of
    /// noop jobs, and during the drain of its backlog; and the heavy user's drain rate. Run the stack with a usage limit and a
    /// concurrency that let one user submit and run that many.
    Fair {
        /// The command API's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        write: String,
        /// The read API's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        read: String,
        /// The heavy user's jobs.
        #[arg(long, default_value_t = 10_000)]
        heavy: usize,
        /// The light user's jobs, one per 100 ms, alone, during the burst, during the drain.
        #[arg(long, default_value_t = 20)]
        light: usize,
    },
    /// Screenshots of a local page through the browser executor on a warm pool
    /// (`RUNLEDGER_BROWSER_POOL` browsers of `RUNLEDGER_CHROMIUM_PATH`): p50/p99 and jobs/s.
    Browser {
        /// Screenshots in all.
        #[arg(short = 'n', long, default_value_t = 200)]
        jobs: usize,
        /// Screenshots at once.
        #[arg(short = 'c', long, default_value_t = 2)]
        concurrency: usize,
    },
    /// Agent runs against a local fake provider: the orchestration overhead (each run's time
    /// minus the provider's) as p50/p99.
    Agent {
        /// Runs in all.
        #[arg(short = 'n', long, default_value_t = 500)]
        runs: usize,
        /// Runs at once.
        #[arg(short = 'c', long, default_value_t = 8)]
        concurrency: usize,
        /// The fake model's time per call, in milliseconds.
        #[arg(long, default_value_t = 50)]
        model_ms: u64,
    },
}

pub async fn run(action: BenchAction) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_env().context("bad configuration")?;
    match action {
        BenchAction::Submit {
            url,
            requests,
            concurrency,
            users,
            pgbench_seconds,
        } => {
            submit::run(
                &settings,
                &url,
                requests,
                concurrency,
                users,
                pgbench_seconds,
            )
            .await
        }
        BenchAction::Sse {
            write,
            read,
            rate,
            seconds,
            users,
            until,
        } => sse::latency(&settings, &write, &read, rate, seconds, users, &until).await,
        BenchAction::Streams { read, streams } => sse::hold(&settings, &read, streams).await,
        BenchAction::Rebuild { events } => rebuild::run(&settings, events).await,
        BenchAction::Audit { events } => audit::run(&settings, events).await,
        BenchAction::Drain {
            write,
            read,
            jobs,
            concurrency,
            users,
        } => drain::run(&settings, &write, &read, jobs, concurrency, users).await,
        BenchAction::Fair {
            write,
            read,
            heavy,
            light,
        } => fair::run(&settings, &write, &read, heavy, light).await,
        BenchAction::Browser { jobs, concurrency } => {
            browser::run(&settings, jobs, concurrency).await
        }
        BenchAction::Agent {
            runs,
            concurrency,
            model_ms,
        } => agent::run(&settings, runs, concurrency, model_ms).await,
    }
}

/// Tokens for `n` new customers.
/// Runs `f` on a scratch database created beside `DATABASE_URL`'s (named `prefix` and the
/// process id), dropped afterwards whatever `f` returned.
async fn in_scratch_db<F, Fut>(settings: &Settings, prefix: &str, f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    use sqlx::Connection;
    let admin = settings.require_database()?.expose().to_owned();
    let name = format!("{prefix}_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .context("connecting to DATABASE_URL")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    let url = match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => anyhow::bail!("DATABASE_URL has no database name"),
    };
    let result = f(url).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    result
}

fn tokens(settings: &Settings, n: usize) -> anyhow::Result<Vec<(UserId, String)>> {
    let minter = platform::auth::Minter::for_role(settings, Role::Customer)
        .context("RUNLEDGER_JWT_SECRET is required to mint tokens")?;
    (0..n.max(1))
        .map(|_| {
            let user = UserId::from_uuid(uuid::Uuid::new_v4());
            let t = minter.mint(user, Role::Customer, Duration::from_secs(3_600))?;
            Ok((user, t))
        })
        .collect()
}

/// Latency percentiles of a sample.
struct Percentiles(Vec<Duration>);

impl Percentiles {
    fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self(samples)
    }

    fn ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let idx = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len()) - 1;
        self.0[idx].as_secs_f64() * 1_000.0
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
            self.ms(0.50),
            self.ms(0.95),
            self.ms(0.99),
            self.ms(1.0)
        )
    }
}
