//! The dispatcher: follows the event log from its checkpoint and keeps the Redis contract
//! filled — ready jobs to `jobs:<ns>:queue` (or the browser stream), future and retrying
//! ones to `jobs:<ns>:scheduled` — and promotes scheduled envelopes when due.
//!
//! Each (job, attempt) is pushed at most once: a marker in the target's slot is set by the
//! same script that pushes. Promotion pushes first (the marker is the claim, so two
//! dispatchers cannot both push), then ZREMs; a crash in between leaves the entry to be
//! removed by the next round, never lost and never doubled.

use std::time::Duration;

use crate::queue::Conn;
use chrono::Utc;
use domain::{
    Decider,
    envelope::JobEnvelope,
    job::{Job, JobEvent},
    task::{Namespace, NamespaceMap},
};
use platform::store::{
    EventStore, StoreError,
    reader::{RecordedEvent, checkpoint, read_from, save_checkpoint},
};
use tokio_util::sync::CancellationToken;

use crate::queue;

/// The checkpoint's name.
pub const CHECKPOINT: &str = "dispatcher";
const BATCH: i64 = 500;

/// Why a dispatcher round failed; it is redone from the checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl From<sqlx::Error> for DispatchError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// The dispatcher's dependencies.
#[derive(Clone)]
pub struct Dispatcher {
    /// The event store (to read the log and load jobs).
    pub store: EventStore,
    /// A Redis connection.
    pub redis: Conn,
    /// Task type → namespace.
    pub namespaces: NamespaceMap,
}

impl Dispatcher {
    /// Handles one batch after the checkpoint; returns how many events it read.
    ///
    /// # Errors
    /// [`DispatchError`]; the checkpoint stays and the batch is redone (pushes are
    /// idempotent).
    pub async fn step(&mut self) -> Result<usize, DispatchError> {
        let pool = self.store.pool().clone();
        let from = checkpoint(&pool, CHECKPOINT).await?;
        let events = read_from(&pool, from, BATCH).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(0);
        };
        for e in events.iter().filter(|e| e.aggregate_type == "job") {
            self.handle(e).await?;
        }
        save_checkpoint(&pool, CHECKPOINT, last).await?;
        Ok(events.len())
    }

    async fn handle(&mut self, e: &RecordedEvent) -> Result<(), DispatchError> {
        let event: JobEvent = e.decode().map_err(|source| StoreError::Decode {
            aggregate_type: "job",
            aggregate_id: e.aggregate_id.clone(),
            source,
        })?;
        match &event {
            JobEvent::JobSubmitted(s) => {
                let job = Job::replay([&event]);
                let Some(env) = job.envelope() else {
                    return Ok(());
                };
                let ns = self.namespaces.route(&s.task_type);
                match s.run_at {
                    Some(at) => {
                        self.enqueue_scheduled(&ns, &env, at.timestamp_millis())
                            .await?
                    }
                    None => self.enqueue_ready(&ns, &env).await?,
                }
            }
            JobEvent::JobRetryScheduled(r) => {
                let job = self.store.load_fresh::<Job>(&e.aggregate_id).await?.state;
                let (Some(mut env), Some(state)) = (job.envelope(), job.state()) else {
                    return Ok(());
                };
                env.attempt = r.next_attempt;
                let ns = self.namespaces.route(&state.task_type);
                self.enqueue_scheduled(&ns, &env, r.not_before.timestamp_millis())
                    .await?;
            }
            JobEvent::JobCanceled(_) => {
                // A queued or scheduled envelope is taken back; one already handed out is
                // refused at start (job-finished) or stopped at its next heartbeat.
                let job = self.store.load_fresh::<Job>(&e.aggregate_id).await?.state;
                let (Some(env), Some(state)) = (job.envelope(), job.state()) else {
                    return Ok(());
                };
                let ns = self.namespaces.route(&state.task_type);
                let bytes = serde_json::to_string(&env).unwrap_or_default();
                if queue::transport(&ns) == queue::Transport::List {
                    let _: i64 = redis::cmd("LREM")
                        .arg(ns.queue_key())
                        .arg(0)
                        .arg(&bytes)
                        .query_async(&mut self.redis)
                        .await?;
                }
                let _: i64 = redis::cmd("ZREM")
                    .arg(ns.scheduled_key())
                    .arg(&bytes)
                    .query_async(&mut self.redis)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn enqueue_ready(
        &mut self,
        ns: &Namespace,
        env: &JobEnvelope,
    ) -> Result<(), DispatchError> {
        let bytes = serde_json::to_string(env).unwrap_or_default();
        if queue::transport(ns) == queue::Transport::Stream {
            queue::ensure_group(&mut self.redis, ns).await?;
        }
        if queue::push_ready(&mut self.redis, ns, env, &bytes).await? {
            metrics::counter!("runledger_dispatched_total", "namespace" => ns.as_str().to_owned())
                .increment(1);
        }
        Ok(())
    }

    async fn enqueue_scheduled(
        &mut self,
        ns: &Namespace,
        env: &JobEnvelope,
        due_ms: i64,
    ) -> Result<(), DispatchError> {
        let bytes = serde_json::to_string(env).unwrap_or_default();
        queue::schedule(&mut self.redis, ns, env, &bytes, due_ms).await?;
        Ok(())
    }

    /// Moves due envelopes of `ns` from `scheduled` to the ready structure; returns how many.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn promote(&mut self, ns: &Namespace) -> Result<usize, DispatchError> {
        let now = Utc::now().timestamp_millis();
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(ns.scheduled_key())
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(200)
            .query_async(&mut self.redis)
            .await?;
        let mut promoted = 0;
        for bytes in due {
            if let Ok(env) = serde_json::from_str::<JobEnvelope>(&bytes) {
                if queue::transport(ns) == queue::Transport::Stream {
                    queue::ensure_group(&mut self.redis, ns).await?;
                }
                if queue::push_ready(&mut self.redis, ns, &env, &bytes).await? {
                    promoted += 1;
                }
            }
            let _: i64 = redis::cmd("ZREM")
                .arg(ns.scheduled_key())
                .arg(&bytes)
                .query_async(&mut self.redis)
                .await?;
        }
        Ok(promoted)
    }

    /// `runledger_queue_depth{namespace, state}`: ready and scheduled envelopes.
    async fn gauge_depth(&mut self, ns: &Namespace) {
        let ready_cmd = match queue::transport(ns) {
            queue::Transport::List => "LLEN",
            queue::Transport::Stream => "XLEN",
        };
        let ready: redis::RedisResult<i64> = redis::cmd(ready_cmd)
            .arg(queue::ready_key(ns))
            .query_async(&mut self.redis)
            .await;
        let scheduled: redis::RedisResult<i64> = redis::cmd("ZCARD")
            .arg(ns.scheduled_key())
            .query_async(&mut self.redis)
            .await;
        if let (Ok(r), Ok(s)) = (ready, scheduled) {
            let name = ns.as_str().to_owned();
            metrics::gauge!("runledger_queue_depth", "namespace" => name.clone(), "state" => "ready").set(r as f64);
            metrics::gauge!("runledger_queue_depth", "namespace" => name, "state" => "scheduled")
                .set(s as f64);
        }
    }

    /// Runs until `shutdown`: the log, and promotion of `namespaces` every 100 ms.
    pub async fn run(mut self, promote: Vec<Namespace>, shutdown: CancellationToken) {
        let mut last_promotion = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            let read = match self.step().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(message = "Dispatch failed; retrying from the checkpoint.", error = %e);
                    wait(&shutdown, Duration::from_millis(500)).await;
                    continue;
                }
            };
            if last_promotion.elapsed() >= Duration::from_millis(100) {
                for ns in &promote {
                    if let Err(e) = self.promote(ns).await {
                        tracing::warn!(message = "Promotion failed.", namespace = %ns, error = %e);
                    }
                    self.gauge_depth(ns).await;
                }
                last_promotion = tokio::time::Instant::now();
            }
            if read == 0 {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = self.store.appended().notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        }
    }
}

async fn wait(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}
