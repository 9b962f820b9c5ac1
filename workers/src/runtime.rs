//! The worker runtime: pulls envelopes (list: BLMOVE into this worker's processing list;
//! stream: XREADGROUP), reports start, heartbeats, runs the executor under a timeout, reports
//! the outcome and acknowledges. A dead worker's jobs come back: its processing list is
//! reaped once its liveness key expires, and stream entries idle too long are claimed with
//! XAUTOCLAIM; a job it had started is failed as retryable (the next attempt follows), one it
//! had not is run again. On shutdown it stops pulling, lets running jobs finish within the
//! grace period, then fails the rest as retryable.

use std::{sync::Arc, time::Duration};

use domain::{envelope::JobEnvelope, job::ConflictKind, task::Namespace};
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    executors::{ExecError, Executor},
    local::LocalQueue,
    queue::{self, Conn, Transport},
    report::{ReportError, Reporter},
};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The namespace it serves.
    pub namespace: Namespace,
    /// Jobs at once.
    pub concurrency: usize,
    /// Its id (processing list, consumer name, reports).
    pub worker_id: String,
    /// Time running jobs get to finish after shutdown.
    pub grace: Duration,
    /// Heartbeat interval (and how soon a cancel reaches a running job).
    pub heartbeat: Duration,
    /// Liveness: a worker silent this long is presumed dead and its jobs return.
    pub lease: Duration,
}

impl WorkerConfig {
    /// Defaults for `namespace`.
    pub fn new(namespace: Namespace, concurrency: usize) -> Self {
        Self {
            namespace,
            concurrency: concurrency.max(1),
            worker_id: format!("w-{}", uuid::Uuid::new_v4().simple()),
            grace: Duration::from_secs(30),
            heartbeat: Duration::from_secs(2),
            lease: Duration::from_secs(15),
        }
    }
}

/// Where an envelope came from, to acknowledge it.
#[derive(Debug, Clone)]
enum Ack {
    List { processing: String, bytes: String },
    Stream { id: String },
}

struct Ctx<R, E> {
    cfg: WorkerConfig,
    reporter: Arc<R>,
    executor: Arc<E>,
    /// Fires `grace` after shutdown: running jobs are then stopped.
    stop: CancellationToken,
}

/// Runs a worker until `shutdown` (and the grace period) ends.
///
/// # Errors
/// When Redis cannot be reached at start.
pub async fn run<R: Reporter, E: Executor>(
    target: queue::Target,
    reporter: Arc<R>,
    executor: Arc<E>,
    cfg: WorkerConfig,
    shutdown: CancellationToken,
) -> redis::RedisResult<()> {
    let mut conn = queue::connect(&target).await?;
    if queue::transport(&cfg.namespace) == Transport::Stream {
        queue::ensure_group(&mut conn, &cfg.namespace).await?;
    }
    let stop = after_grace(&shutdown, cfg.grace);
    // Alive before the first pull: a reaper must never see our processing list without it.
    let _: () = redis::cmd("SET")
        .arg(queue::alive_key(&cfg.namespace, &cfg.worker_id))
        .arg(1)
        .arg("PX")
        .arg(cfg.lease.as_millis() as u64)
        .query_async(&mut conn)
        .await?;
    // Registered before the first pull, so reapers and the reconciler find our list.
    let _: i64 = redis::cmd("SADD")
        .arg(queue::workers_key(&cfg.namespace))
        .arg(&cfg.worker_id)
        .query_async(&mut conn)
        .await?;
    let ctx = Arc::new(Ctx {
        cfg,
        reporter,
        executor,
        stop,
    });
    let mut slots = Vec::new();
    for _ in 0..ctx.cfg.concurrency {
        let conn = queue::connect(&target).await?;
        slots.push(tokio::spawn(slot(ctx.clone(), conn, shutdown.clone())));
    }
    let maintenance = tokio::spawn(maintain(ctx.clone(), conn, shutdown.clone()));
    for s in slots {
        let _ = s.await;
    }
    maintenance.abort();
    // Leave no liveness behind: our processing list is empty or will be reaped.
    if let Ok(mut c) = queue::connect(&target).await {
        let _: redis::RedisResult<i64> = redis::cmd("DEL")
            .arg(queue::alive_key(&ctx.cfg.namespace, &ctx.cfg.worker_id))
            .query_async(&mut c)
            .await;
        let _ = forget_worker(&mut c, &ctx.cfg.namespace, &ctx.cfg.worker_id).await;
    }
    Ok(())
}

/// Fires `grace` after `shutdown`: running jobs are then stopped.
fn after_grace(shutdown: &CancellationToken, grace: Duration) -> CancellationToken {
    let stop = CancellationToken::new();
    let (shutdown, s) = (shutdown.clone(), stop.clone());
    tokio::spawn(async move {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
        s.cancel();
    });
    stop
}

/// Runs a worker on the in-process queue of the embedded default until `shutdown` (and the
/// grace period) ends. Nothing is left to recover: a job running when the process stops is
/// failed as retryable by the dispatcher's refill at the next start.
pub async fn run_local<R: Reporter, E: Executor>(
    queue: Arc<LocalQueue>,
    reporter: Arc<R>,
    executor: Arc<E>,
    cfg: WorkerConfig,
    shutdown: CancellationToken,
) {
    let stop = after_grace(&shutdown, cfg.grace);
    let ctx = Arc::new(Ctx {
        cfg,
        reporter,
        executor,
        stop,
    });
    let mut slots = Vec::new();
    for _ in 0..ctx.cfg.concurrency {
        let (ctx, queue, shutdown) = (ctx.clone(), queue.clone(), shutdown.clone());
        slots.push(tokio::spawn(async move {
            let ns = ctx.cfg.namespace.clone();
            loop {
                let env = tokio::select! {
                    () = shutdown.cancelled() => return,
                    env = queue.pull(&ns) => env,
                };
                if let Attempted::HandBack = attempt(&ctx, &env, None).await {
                    queue.give_back(&ns, env);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }));
    }
    for s in slots {
        let _ = s.await;
    }
}

/// One concurrency slot: pull, handle, acknowledge, until shutdown.
async fn slot<R: Reporter, E: Executor>(
    ctx: Arc<Ctx<R, E>>,
    mut conn: Conn,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        match pull(&ctx, &mut conn).await {
            Ok(Some((bytes, ack))) => {
                handle(&ctx, &mut conn, &bytes, ack).await;
            }
            Ok(None) => {}
            // The server restarted empty (or was flushed): the group is gone with it.
            Err(e) if e.code() == Some("NOGROUP") => {
                if let Err(e) = queue::ensure_group(&mut conn, &ctx.cfg.namespace).await {
                    tracing::warn!(message = "Creating the consumer group failed.", error = %e);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            Err(e) => {
                tracing::warn!(message = "Pull failed.", error = %e);
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

async fn pull<R, E>(ctx: &Ctx<R, E>, conn: &mut Conn) -> redis::RedisResult<Option<(String, Ack)>> {
    let ns = &ctx.cfg.namespace;
    match queue::transport(ns) {
        Transport::List => {
            let processing = queue::processing_key(ns, &ctx.cfg.worker_id);
            let got: Option<String> = redis::cmd("BLMOVE")
                .arg(ns.queue_key())
                .arg(&processing)
                .arg("RIGHT")
                .arg("LEFT")
                .arg(1)
                .query_async(conn)
                .await?;
            Ok(got.map(|bytes| (bytes.clone(), Ack::List { processing, bytes })))
        }
        Transport::Stream => {
            let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(ns.group_name())
                .arg(&ctx.cfg.worker_id)
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(ns.stream_key())
                .arg(">")
                .query_async(conn)
                .await?;
            let entry = reply
                .and_then(|r| r.keys.into_iter().next())
                .and_then(|k| k.ids.into_iter().next());
            Ok(entry.and_then(|e| {
                let bytes: String = e.get("envelope")?;
                Some((bytes, Ack::Stream { id: e.id }))
            }))
        }
    }
}

async fn ack<R, E>(ctx: &Ctx<R, E>, conn: &mut Conn, ack: &Ack) {
    let ns = &ctx.cfg.namespace;
    let r: redis::RedisResult<()> = match ack {
        Ack::List { processing, bytes } => {
            redis::cmd("LREM")
                .arg(processing)
                .arg(1)
                .arg(bytes)
                .query_async(conn)
                .await
        }
        Ack::Stream { id } => {
            let acked: redis::RedisResult<i64> = redis::cmd("XACK")
                .arg(ns.stream_key())
                .arg(ns.group_name())
                .arg(id)
                .query_async(conn)
                .await;
            match acked {
                Ok(_) => {
                    redis::cmd("XDEL")
                        .arg(ns.stream_key())
                        .arg(id)
                        .query_async(conn)
                        .await
                }
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = r {
        tracing::warn!(message = "Acknowledge failed; the entry will be recovered.", error = %e);
    }
}

/// Hands an envelope back for another worker (the command side was unreachable at start).
async fn give_back<R, E>(ctx: &Ctx<R, E>, conn: &mut Conn, bytes: &str, a: &Ack) {
    if let Ack::List { .. } = a {
        let _: redis::RedisResult<i64> = redis::cmd("RPUSH")
            .arg(ctx.cfg.namespace.queue_key())
            .arg(bytes)
            .query_async(conn)
            .await;
        ack(ctx, conn, a).await;
    }
    // A stream entry stays pending and is claimed after the lease.
}

async fn handle<R: Reporter, E: Executor>(ctx: &Ctx<R, E>, conn: &mut Conn, bytes: &str, a: Ack) {
    let env: JobEnvelope = match serde_json::from_str(bytes) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(message = "Dropped an envelope that does not parse.", error = %e);
            ack(ctx, conn, &a).await;
            return;
        }
    };
    let claim = match &a {
        Ack::Stream { id } => Some((conn.clone(), id.clone())),
        Ack::List { .. } => None,
    };
    match attempt(ctx, &env, claim).await {
        Attempted::HandBack => {
            give_back(ctx, conn, bytes, &a).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Attempted::Ran { taken: true } | Attempted::NotOurs => ack(ctx, conn, &a).await,
        // The outcome never reached the command side before the process stopped: the entry
        // stays, so the reaper (or the lease) ends the attempt.
        Attempted::Ran { taken: false } => {}
    }
}

/// How an attempt at an envelope went.
enum Attempted {
    /// Started and run; `taken`: the command side took its outcome.
    Ran {
        /// Whether the outcome was taken (or is moot: the job moved on).
        taken: bool,
    },
    /// The command side was unreachable at start: hand the envelope back.
    HandBack,
    /// Finished, canceled, stale or running elsewhere: not ours to run.
    NotOurs,
}

/// Reports the start of `env`'s attempt, then runs it. `claim`: a stream entry to keep
/// claimed while it runs.
async fn attempt<R: Reporter, E: Executor>(
    ctx: &Ctx<R, E>,
    env: &JobEnvelope,
    claim: Option<(Conn, String)>,
) -> Attempted {
    // In the job's trace when the envelope carries one; every log line of the attempt
    // names the job and its correlation id.
    let span = tracing::info_span!(
        "worker.execute",
        job_id = %env.job_id,
        correlation_id = %env.correlation_id,
        task_type = %env.task_type,
        attempt = env.attempt.get(),
    );
    platform::telemetry::continue_from(&span, env.meta.traceparent.as_deref());
    start_and_run(ctx, env, claim).instrument(span).await
}

async fn start_and_run<R: Reporter, E: Executor>(
    ctx: &Ctx<R, E>,
    env: &JobEnvelope,
    claim: Option<(Conn, String)>,
) -> Attempted {
    match ctx
        .reporter
        .start(env.job_id, env.attempt, &ctx.cfg.worker_id)
        .await
    {
        Ok(()) => {}
        Err(ReportError::Transport(e)) => {
            tracing::warn!(message = "Start not reported; handing the job back.", job_id = %env.job_id, error = %e);
            return Attempted::HandBack;
        }
        Err(e) => {
            tracing::info!(message = "Job not started.", job_id = %env.job_id, reason = %e);
            return Attempted::NotOurs;
        }
    }
    let taken = execute(ctx, env, claim).await;
    Attempted::Ran { taken }
}

/// Runs a started attempt and reports its outcome; whether the command side took it.
async fn execute<R: Reporter, E: Executor>(
    ctx: &Ctx<R, E>,
    env: &JobEnvelope,
    claim: Option<(Conn, String)>,
) -> bool {
    let cancel = CancellationToken::new();
    let beating = heartbeat(ctx, env, claim, cancel.clone());
    let timeout = ctx.executor.timeout(env.task_type.as_str());
    let outcome = tokio::select! {
        r = tokio::time::timeout(timeout, ctx.executor.run(env, &cancel)) => Some(r),
        () = ctx.stop.cancelled() => None,
    };
    cancel.cancel();
    let _ = beating.await;
    let outcome = match outcome {
        Some(Ok(Ok(result))) => Outcome::Complete(result),
        // Canceled by its owner: the job is over, nothing to report.
        Some(Ok(Err(_))) if cancel_reason_is_job_over(ctx, env).await => return true,
        Some(Ok(Err(e))) => Outcome::Fail(e),
        Some(Err(_)) => Outcome::Fail(ExecError::retryable("timed out")),
        None => Outcome::Fail(ExecError::retryable("worker stopped")),
    };
    match deliver(ctx, env, &outcome).await {
        Ok(()) => {
            metrics::counter!("runledger_job_outcomes_total", "task_type" => env.task_type.to_string()).increment(1);
            true
        }
        Err(Some(e)) => {
            // The job moved on (canceled, or its attempt expired): nothing left to report.
            tracing::info!(message = "Outcome not taken: the job moved on.", job_id = %env.job_id, reason = %e);
            true
        }
        Err(None) => {
            tracing::warn!(message = "Outcome not delivered before the worker stopped; the attempt will be expired.", job_id = %env.job_id);
            false
        }
    }
}

/// What an attempt came to.
enum Outcome {
    Complete(serde_json::Value),
    Fail(ExecError),
}

/// Reports `outcome` until the command side takes it: a transport failure (the command side
/// down, restarting or overloaded) is retried with backoff for as long as the worker runs.
/// `Err(Some)`: refused for good (the job moved on); `Err(None)`: the worker stopped first.
async fn deliver<R: Reporter, E>(
    ctx: &Ctx<R, E>,
    env: &JobEnvelope,
    outcome: &Outcome,
) -> Result<(), Option<ReportError>> {
    let (job, attempt) = (env.job_id, env.attempt);
    let mut wait = Duration::from_millis(250);
    loop {
        let reported = match outcome {
            Outcome::Complete(result) => ctx.reporter.complete(job, attempt, result.clone()).await,
            Outcome::Fail(e) => {
                ctx.reporter
                    .fail(job, attempt, &e.message, e.retryable, e.retry_after)
                    .await
            }
        };
        match reported {
            Ok(()) => return Ok(()),
            Err(ReportError::Transport(e)) => {
                tracing::warn!(message = "Outcome not delivered; retrying.", job_id = %job, error = %e);
                metrics::counter!("runledger_outcome_retries_total").increment(1);
            }
            Err(e) => return Err(Some(e)),
        }
        tokio::select! {
            () = ctx.stop.cancelled() => return Err(None),
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Whether the job ended elsewhere (canceled) while it ran.
async fn cancel_reason_is_job_over<R: Reporter, E>(ctx: &Ctx<R, E>, env: &JobEnvelope) -> bool {
    matches!(ctx.reporter.heartbeat(env.job_id, env.attempt).await, Err(e) if e.job_is_over())
}

/// Heartbeats until `cancel`; cancels the attempt when the job is over (a cancel by its
/// owner reaches the executor this way). For a stream entry it also keeps the entry's idle
/// time low, so no other worker claims it.
fn heartbeat<R: Reporter, E>(
    ctx: &Ctx<R, E>,
    env: &JobEnvelope,
    mut claim: Option<(Conn, String)>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (reporter, every, ns, worker) = (
        ctx.reporter.clone(),
        ctx.cfg.heartbeat,
        ctx.cfg.namespace.clone(),
        ctx.cfg.worker_id.clone(),
    );
    let (job, attempt) = (env.job_id, env.attempt);
    let span = tracing::Span::current();
    tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                if let Err(e) = reporter.heartbeat(job, attempt).await
                    && (e.job_is_over() || matches!(e, ReportError::Conflict(_)))
                {
                    cancel.cancel();
                    return;
                }
                if let Some((conn, id)) = claim.as_mut() {
                    let _: redis::RedisResult<redis::Value> = redis::cmd("XCLAIM")
                        .arg(ns.stream_key())
                        .arg(ns.group_name())
                        .arg(&worker)
                        .arg(0)
                        .arg(&*id)
                        .arg("JUSTID")
                        .query_async(conn)
                        .await;
                }
            }
        }
        .instrument(span),
    )
}

/// Liveness, and recovery of dead workers' jobs.
async fn maintain<R: Reporter, E: Executor>(
    ctx: Arc<Ctx<R, E>>,
    mut conn: Conn,
    shutdown: CancellationToken,
) {
    let every = ctx.cfg.lease / 3;
    while !shutdown.is_cancelled() {
        let ns = &ctx.cfg.namespace;
        let _: redis::RedisResult<()> = redis::cmd("SET")
            .arg(queue::alive_key(ns, &ctx.cfg.worker_id))
            .arg(1)
            .arg("PX")
            .arg(ctx.cfg.lease.as_millis() as u64)
            .query_async(&mut conn)
            .await;
        // Again each round: a Redis that restarted empty forgot us.
        let _: redis::RedisResult<i64> = redis::cmd("SADD")
            .arg(queue::workers_key(ns))
            .arg(&ctx.cfg.worker_id)
            .query_async(&mut conn)
            .await;
        let recovered = match queue::transport(ns) {
            Transport::List => reap_lists(&ctx, &mut conn).await,
            Transport::Stream => claim_idle(&ctx, &mut conn).await,
        };
        if let Err(e) = recovered {
            tracing::warn!(message = "Recovery round failed.", error = %e);
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// What to do with an envelope a dead worker held.
async fn recover<R: Reporter, E>(ctx: &Ctx<R, E>, env: &JobEnvelope) -> Recovery {
    match ctx
        .reporter
        .fail(env.job_id, env.attempt, "worker lost", true, None)
        .await
    {
        Ok(()) => Recovery::Settled,
        Err(ReportError::Conflict(ConflictKind::NotRunning)) => Recovery::RunAgain,
        Err(ReportError::Transport(_)) => Recovery::Later,
        Err(_) => Recovery::Settled,
    }
}

enum Recovery {
    /// Failed as retryable (its next attempt follows) or already over: drop the entry.
    Settled,
    /// Never started: run it again.
    RunAgain,
    /// The command side is unreachable: try next round.
    Later,
}

async fn reap_lists<R: Reporter, E>(ctx: &Ctx<R, E>, conn: &mut Conn) -> redis::RedisResult<()> {
    let ns = &ctx.cfg.namespace;
    let workers: Vec<String> = redis::cmd("SMEMBERS")
        .arg(queue::workers_key(ns))
        .query_async(conn)
        .await?;
    for worker in workers {
        if worker == ctx.cfg.worker_id {
            continue;
        }
        let alive: bool = redis::cmd("EXISTS")
            .arg(queue::alive_key(ns, &worker))
            .query_async(conn)
            .await?;
        if alive {
            continue;
        }
        let key = queue::processing_key(ns, &worker);
        let held: Vec<String> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await?;
        let mut left = held.len();
        for bytes in held {
            let action = match serde_json::from_str::<JobEnvelope>(&bytes) {
                Ok(env) => recover(ctx, &env).await,
                Err(_) => Recovery::Settled,
            };
            match action {
                Recovery::Settled => {}
                Recovery::RunAgain => {
                    let _: i64 = redis::cmd("RPUSH")
                        .arg(ns.queue_key())
                        .arg(&bytes)
                        .query_async(conn)
                        .await?;
                }
                Recovery::Later => continue,
            }
            let _: i64 = redis::cmd("LREM")
                .arg(&key)
                .arg(1)
                .arg(&bytes)
                .query_async(conn)
                .await?;
            left -= 1;
            tracing::warn!(message = "Recovered a job from a dead worker.", worker = %worker);
        }
        if left == 0 {
            // Nothing of it is left: it leaves the registry (both keys in the queue's slot).
            forget_worker(conn, ns, &worker).await?;
        }
    }
    Ok(())
}

/// Takes a worker that holds nothing off the registry.
async fn forget_worker(conn: &mut Conn, ns: &Namespace, worker: &str) -> redis::RedisResult<()> {
    let _: i64 = redis::Script::new(
        r"if redis.call('LLEN', KEYS[1]) == 0 then
            return redis.call('SREM', KEYS[2], ARGV[1])
          end
          return 0",
    )
    .key(queue::processing_key(ns, worker))
    .key(queue::workers_key(ns))
    .arg(worker)
    .invoke_async(conn)
    .await?;
    Ok(())
}

async fn claim_idle<R: Reporter, E: Executor>(
    ctx: &Ctx<R, E>,
    conn: &mut Conn,
) -> redis::RedisResult<()> {
    let ns = &ctx.cfg.namespace;
    let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(ns.stream_key())
        .arg(ns.group_name())
        .arg(&ctx.cfg.worker_id)
        .arg(ctx.cfg.lease.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(10)
        .query_async(conn)
        .await?;
    for entry in reply.claimed {
        let a = Ack::Stream {
            id: entry.id.clone(),
        };
        let Some(bytes) = entry.get::<String>("envelope") else {
            ack(ctx, conn, &a).await;
            continue;
        };
        let Ok(env) = serde_json::from_str::<JobEnvelope>(&bytes) else {
            ack(ctx, conn, &a).await;
            continue;
        };
        match recover(ctx, &env).await {
            Recovery::Settled => ack(ctx, conn, &a).await,
            Recovery::RunAgain => handle(ctx, conn, &bytes, a).await,
            Recovery::Later => {}
        }
    }
    Ok(())
}
