//! The dispatcher: follows the event log from its checkpoint and keeps the Redis contract
//! filled — ready jobs to `jobs:<ns>:queue` (or the browser stream), future and retrying
//! ones to `jobs:<ns>:scheduled` — and takes scheduled envelopes back when due.
//!
//! Ready jobs wait in a per-user backlog ([`crate::fair`]) and go to the queue in weighted
//! round-robin, only while the queue holds fewer than the window and the user (and the
//! job's concurrency group) holds fewer slots than its plan allows. Slots are a set per user
//! in Redis, claimed atomically and idempotently per job, so several dispatchers keep the
//! limits exact; a slot is given back when the attempt ends (a lease that expired ends it).
//! The stored checkpoint never passes a job still in the backlog, so a restart finds it.
//!
//! Each (job, attempt) is pushed at most once: a marker in the target's slot is set by the
//! same script that pushes. When an attempt ends, its markers go.
//!
//! Redis holds no truth: every few seconds the dispatcher compares the jobs waiting in the
//! log (the process manager's `live_jobs`) with what the queues and the backlog hold, and
//! pushes again a job that nothing has held for the grace period (Redis restarted empty,
//! `FLUSHDB`, a failover, a worker that popped it and died before reporting its start).

mod feed;
mod plans;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use domain::{
    Decider,
    envelope::JobEnvelope,
    ids::{JobId, UserId},
    job::{FailJob, Job, JobCommand, JobEvent, JobStatus},
    task::{Namespace, NamespaceMap},
};
use eventstore::{
    EventStore, Metadata, StoreError,
    poison::{self, Decoded},
    reader::RecordedEvent,
};
use platform::settings::DispatchSettings;
use tokio_util::sync::CancellationToken;

pub use self::plans::Plans;
use crate::{
    fair::Backlog,
    queue::{Ended, JobQueue, Slot},
};

/// The checkpoint's name.
pub const CHECKPOINT: &str = "dispatcher";
const BATCH: i64 = 500;
/// How often the slots of users at their limit are checked against their jobs.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

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

/// The dispatcher's dependencies and state.
pub struct Dispatcher<Q> {
    /// The event store (to read the log and load jobs).
    pub store: EventStore,
    /// Where envelopes go.
    pub queue: Q,
    /// Task type → namespace.
    pub namespaces: NamespaceMap,
    /// Where the next read starts (`None`: at the stored checkpoint).
    position: Option<i64>,
    /// The namespaces it serves (markers to delete, queues to reconcile).
    served: Vec<Namespace>,
    /// How long a waiting job may go unheld before it is pushed again.
    grace: Duration,
    /// Events of the current batch handled without a Redis error (a write, or a job put in
    /// the backlog).
    pushed: usize,
    /// Concurrency and weights per plan, the ready queues' window.
    fair: DispatchSettings,
    /// Ready jobs waiting for their turn; shared with the maintenance task.
    backlog: Arc<Mutex<Backlog>>,
    /// Users' plans.
    plans: Plans,
    /// Slots this dispatcher claimed, by job, to give back when the attempt ends.
    holders: HashMap<JobId, Slot>,
    /// Users at their limit, not asked again until one of their slots frees (or a second
    /// passes: another dispatcher, or the sweep, may have freed one).
    full: HashMap<UserId, Instant>,
    /// Commits announced by other processes (`platform::wake`), when it listens.
    woken: Option<Arc<tokio::sync::Notify>>,
}

impl<Q: JobQueue> Dispatcher<Q> {
    /// A dispatcher filling `queue`, with the default fairness settings.
    pub fn new(store: EventStore, queue: Q, namespaces: NamespaceMap) -> Self {
        Self {
            plans: Plans::new(store.clone()),
            store,
            queue,
            namespaces,
            position: None,
            served: vec![Namespace::default_ns(), Namespace::browser()],
            grace: Duration::from_secs(30),
            pushed: 0,
            fair: DispatchSettings::default(),
            backlog: Arc::default(),
            holders: HashMap::new(),
            full: HashMap::new(),
            woken: None,
        }
    }

    /// Pushes again a waiting job that no queue has held for `grace`.
    #[must_use]
    pub fn with_reconcile_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Wakes on `woken` (commits announced by other processes, `platform::wake`) as well as
    /// on its own store's commits, instead of waiting out its 10 ms poll.
    #[must_use]
    pub fn with_wakeups(mut self, woken: Arc<tokio::sync::Notify>) -> Self {
        self.woken = Some(woken);
        self
    }

    /// Concurrency limits and weights per plan, and the window (`RUNLEDGER_*_CONCURRENCY`,
    /// `RUNLEDGER_*_WEIGHT`, `RUNLEDGER_DISPATCH_WINDOW`).
    #[must_use]
    pub fn with_fairness(mut self, fair: DispatchSettings) -> Self {
        self.fair = fair;
        self
    }

    fn backlog(&self) -> std::sync::MutexGuard<'_, Backlog> {
        match self.backlog.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Jobs of `ns` waiting in the backlog.
    pub fn backlog_len(&self, ns: &Namespace) -> usize {
        self.backlog().len(ns)
    }

    /// A copy sharing the store, queue, backlog and plans, for the maintenance task.
    fn sibling(&self) -> Self
    where
        Q: Clone,
    {
        Self {
            store: self.store.clone(),
            queue: self.queue.clone(),
            namespaces: self.namespaces.clone(),
            position: None,
            served: self.served.clone(),
            grace: self.grace,
            pushed: 0,
            fair: self.fair,
            backlog: self.backlog.clone(),
            plans: self.plans.clone(),
            holders: HashMap::new(),
            full: HashMap::new(),
            woken: None,
        }
    }

    /// Refills a volatile queue from the log: jobs waiting to run are queued or scheduled
    /// again, and an attempt that was running when the process stopped is failed as
    /// retryable (its next attempt follows). Returns how many jobs were refilled.
    ///
    /// # Errors
    /// [`DispatchError`].
    pub async fn refill(&mut self) -> Result<usize, DispatchError> {
        let mut jobs: HashMap<String, Job> = HashMap::new();
        let mut position = 0;
        loop {
            let read = self.store.read_from(position, 5_000).await?;
            let Some(last) = read.last().map(|e| e.position) else {
                break;
            };
            let (events, poison) = poison::split(CHECKPOINT, read);
            self.store.park(CHECKPOINT, &poison).await?;
            for (e, decoded) in &events {
                if let Decoded::Job(_, event) = decoded {
                    jobs.entry(e.aggregate_id.clone())
                        .or_default()
                        .evolve(event);
                }
            }
            position = last;
        }
        self.position = Some(position);
        let mut refilled = 0;
        for (id, job) in jobs {
            let (Some(env), Some(state)) = (job.envelope(), job.state()) else {
                continue;
            };
            let ns = self.namespaces.route(&state.task_type);
            match (state.status, state.not_before) {
                (JobStatus::Queued, _) => {
                    self.wait_turn(&ns, env, state.concurrency.clone(), None)
                        .await?;
                }
                (JobStatus::Scheduled | JobStatus::Retrying, at) => {
                    let due = at.unwrap_or_else(Utc::now).timestamp_millis();
                    self.enqueue_scheduled(&ns, &env, due).await?;
                }
                (JobStatus::Running, _) => {
                    let mut meta = Metadata::new();
                    meta.insert("actor".into(), "dispatcher".into());
                    meta.insert("correlation_id".into(), state.correlation_id.to_string());
                    let fail = JobCommand::Fail(FailJob {
                        attempt: state.attempt,
                        error: domain::job::ErrorText::truncated(
                            "the process stopped while it ran",
                        ),
                        retryable: true,
                        retry_after_ms: None,
                        now: Utc::now(),
                        jitter_seed: rand::random(),
                    });
                    // Its retry (or dead letter) comes through the log like any other.
                    let _ = self.store.execute::<Job>(&id, fail, &meta).await?;
                }
                _ => continue,
            }
            refilled += 1;
        }
        Ok(refilled)
    }

    /// Handles one batch after the checkpoint; returns how many events it read.
    ///
    /// # Errors
    /// [`DispatchError`]; the checkpoint stays and the batch is redone (pushes and claims
    /// are idempotent).
    pub async fn step(&mut self) -> Result<usize, DispatchError> {
        let from = match self.position {
            Some(p) => p,
            None => self.store.checkpoint(CHECKPOINT).await?,
        };
        let read = self.store.read_from(from, BATCH).await?;
        let Some(last) = read.last().map(|e| e.position) else {
            self.position = Some(from);
            return Ok(0);
        };
        let count = read.len();
        let (events, poison) = poison::split(CHECKPOINT, read);
        self.store.park(CHECKPOINT, &poison).await?;
        let mut ended = Vec::new();
        let mut freed = Vec::new();
        self.pushed = 0;
        let mut failed = None;
        for (e, decoded) in &events {
            let (job, event) = match decoded {
                Decoded::Job(job, event) => (*job, event),
                Decoded::Subscription(_) => {
                    if let Ok(user) = UserId::parse(&e.aggregate_id) {
                        self.plans.forget(user);
                    }
                    continue;
                }
                _ => continue,
            };
            match self.handle(e, job, event).await {
                Ok(Some(end)) => {
                    freed.push(self.slot_of(end).await?);
                    ended.push(end);
                }
                Ok(None) => {}
                // One failing push (a cluster node down, say) does not hold back the other
                // jobs: the reconciler pushes it again once it is reachable.
                Err(DispatchError::Redis(err)) => {
                    metrics::counter!("runledger_dispatch_failures_total").increment(1);
                    tracing::warn!(message = "Push failed; the reconciler will push it again.", position = e.position, error = %err);
                    failed.get_or_insert(err);
                }
                Err(other) => return Err(other),
            }
        }
        // Nothing reached Redis at all: it is down, so the batch is redone from the
        // checkpoint rather than left to the (slower) reconciler.
        if let Some(err) = failed
            && self.pushed == 0
        {
            return Err(err.into());
        }
        // Before the checkpoint: a crash redoes the batch, and giving back twice is harmless.
        let freed: Vec<Slot> = freed.into_iter().flatten().collect();
        self.queue.release(&freed).await?;
        for s in &freed {
            self.full.remove(&s.user);
        }
        if self.queue.durable() {
            // Never past a job still waiting in the backlog: a restart reads it again.
            let keep = self
                .backlog()
                .first_position()
                .map_or(last, |p| (p - 1).min(last));
            self.store.save_checkpoint(CHECKPOINT, keep).await?;
        }
        self.position = Some(last);
        // After the checkpoint: a batch redone after a crash must find its markers. A crash
        // here leaves them to their TTL.
        if let Err(e) = self.queue.forget(&self.served, &ended).await {
            tracing::warn!(message = "Deleting the markers of ended attempts failed; they expire by themselves.", error = %e);
        }
        Ok(count)
    }

    /// The slot `job` holds, to give back: known from its claim or its backlog entry, else
    /// from its events (claimed by another dispatcher, or before a restart).
    async fn slot_of(&mut self, end: Ended) -> Result<Option<Slot>, DispatchError> {
        let job = end.job;
        // The ended attempt leaves the backlog too (canceled before its push, or claimed and
        // not yet pushed), so it is never handed out afterwards.
        let waiting = self.backlog().take(job, end.attempt.get());
        if let Some(slot) = self.holders.remove(&job) {
            return Ok(Some(slot));
        }
        if let Some(p) = waiting {
            return Ok(Some(Slot {
                user: p.user(),
                job,
                group: p.group.map(|g| g.key),
            }));
        }
        let loaded = self.store.load_fresh::<Job>(&job.to_string()).await?.state;
        Ok(loaded.state().map(|s| Slot {
            user: s.user_id,
            job,
            group: s.concurrency.as_ref().map(|g| g.key.clone()),
        }))
    }

    /// Another try at the parked events an operator asked to retry (`runledger events
    /// retry`): those that can be read now are handled, out of log order (pushes are at
    /// most once per attempt, and a worker's start refuses a job that moved on).
    ///
    /// # Errors
    /// [`DispatchError`].
    pub async fn retry_parked(&mut self) -> Result<usize, DispatchError> {
        let events = self.store.take_retries(CHECKPOINT).await?;
        let mut ended = Vec::new();
        let mut freed = Vec::new();
        for (e, decoded) in &events {
            if let Decoded::Job(job, event) = decoded
                && let Some(end) = self.handle(e, *job, event).await?
            {
                freed.push(self.slot_of(end).await?);
                ended.push(end);
            }
        }
        let freed: Vec<Slot> = freed.into_iter().flatten().collect();
        self.queue.release(&freed).await?;
        self.queue.forget(&self.served, &ended).await?;
        Ok(events.len())
    }

    /// Enqueues what job `job`'s event `event` (recorded as `e`) calls for; returns the
    /// attempt it ended, if any.
    async fn handle(
        &mut self,
        e: &RecordedEvent,
        job: JobId,
        event: &JobEvent,
    ) -> Result<Option<Ended>, DispatchError> {
        let ended = |attempt, job_over| {
            Some(Ended {
                job,
                attempt,
                job_over,
            })
        };
        match event {
            JobEvent::JobSubmitted(s) => {
                let job = Job::replay([event]);
                let Some(mut env) = job.envelope() else {
                    return Ok(None);
                };
                // The dispatch joins the submission's trace, and the worker continues it.
                if let Some(span) = platform::telemetry::event_span("dispatcher.dispatch", e) {
                    env.meta.traceparent = Some(span.traceparent());
                }
                let ns = self.namespaces.route(&s.task_type);
                match s.run_at {
                    Some(at) => {
                        self.enqueue_scheduled(&ns, &env, at.timestamp_millis())
                            .await?;
                    }
                    None => {
                        self.wait_turn(&ns, env, s.concurrency.clone(), Some(e.position))
                            .await?;
                    }
                }
            }
            JobEvent::JobStarted(s) => {
                // Pushed by another dispatcher (or before a restart) and taken by a worker.
                self.backlog().take(job, s.attempt.get());
            }
            JobEvent::JobRetryScheduled(r) => {
                let job = self.store.load_fresh::<Job>(&e.aggregate_id).await?.state;
                let (Some(mut env), Some(state)) = (job.envelope(), job.state()) else {
                    return Ok(None);
                };
                env.attempt = r.next_attempt;
                if let Some(span) = platform::telemetry::event_span("dispatcher.dispatch", e) {
                    env.meta.traceparent = Some(span.traceparent());
                }
                let ns = self.namespaces.route(&state.task_type);
                self.enqueue_scheduled(&ns, &env, r.not_before.timestamp_millis())
                    .await?;
            }
            JobEvent::JobCanceled(_) => {
                // A queued or scheduled envelope is taken back; one already handed out is
                // refused at start (job-finished) or stopped at its next heartbeat.
                let job = self.store.load_fresh::<Job>(&e.aggregate_id).await?.state;
                let (Some(env), Some(state)) = (job.envelope(), job.state()) else {
                    return Ok(None);
                };
                let ns = self.namespaces.route(&state.task_type);
                let bytes = serde_json::to_string(&env).unwrap_or_default();
                self.queue.withdraw(&ns, &env, &bytes).await?;
                self.pushed += 1;
                return Ok(ended(env.attempt, true));
            }
            JobEvent::JobFailed(f) => return Ok(ended(f.attempt, false)),
            JobEvent::JobCompleted(c) => return Ok(ended(c.attempt, true)),
            JobEvent::JobDeadLettered(d) => return Ok(ended(d.attempts, true)),
            JobEvent::JobHeartbeat(_) => {}
        }
        Ok(None)
    }

    /// Pushes again each job the log says is waiting (since before the grace period) that
    /// no structure of the queue holds; returns how many. The live-job index may lag behind
    /// the log, so each job's own events decide.
    ///
    /// # Errors
    /// [`DispatchError`]; the next round tries again.
    pub async fn reconcile(&mut self) -> Result<usize, DispatchError> {
        let grace = chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::MAX);
        let waiting = self
            .store
            .live_before(
                &["queued", "scheduled", "retrying"],
                Utc::now() - grace,
                1_000,
            )
            .await?;
        if waiting.is_empty() {
            return Ok(0);
        }
        let Some(held) = self.queue.held(&self.served).await? else {
            return Ok(0);
        };
        let mut repushed = 0;
        for l in waiting {
            let job = JobId::from_uuid(l.job_id);
            let attempt = u32::try_from(l.attempt).unwrap_or(0);
            if held.contains(&(job, attempt)) || self.backlog().holds(job, attempt) {
                continue;
            }
            let loaded = self
                .store
                .load_fresh::<Job>(&l.job_id.to_string())
                .await?
                .state;
            let (Some(env), Some(state)) = (loaded.envelope(), loaded.state()) else {
                continue;
            };
            let waits = matches!(
                state.status,
                JobStatus::Queued | JobStatus::Scheduled | JobStatus::Retrying
            );
            let attempt = env.attempt.get();
            if !waits || held.contains(&(job, attempt)) || self.backlog().holds(job, attempt) {
                continue;
            }
            let ns = self.namespaces.route(&state.task_type);
            let now = Utc::now().timestamp_millis();
            let due = state
                .not_before
                .map(|t| t.timestamp_millis())
                .filter(|d| *d > now);
            let bytes = serde_json::to_string(&env).unwrap_or_default();
            match due {
                Some(_) => self.queue.repush(&ns, &env, &bytes, due).await?,
                None => {
                    // The queue lost it after its push: its marker goes, so its turn can push.
                    self.queue
                        .forget(
                            std::slice::from_ref(&ns),
                            &[Ended {
                                job,
                                attempt: env.attempt,
                                job_over: false,
                            }],
                        )
                        .await?;
                    self.wait_turn(&ns, env, state.concurrency.clone(), None)
                        .await?;
                }
            }
            repushed += 1;
            metrics::counter!("runledger_queue_repushed_total", "namespace" => ns.as_str().to_owned())
                .increment(1);
            tracing::warn!(message = "Pushed again a waiting job no queue held.", job_id = %job, attempt);
        }
        Ok(repushed)
    }

    async fn enqueue_scheduled(
        &mut self,
        ns: &Namespace,
        env: &JobEnvelope,
        due_ms: i64,
    ) -> Result<(), DispatchError> {
        let bytes = serde_json::to_string(env).unwrap_or_default();
        self.queue.schedule(ns, env, &bytes, due_ms).await?;
        self.pushed += 1;
        Ok(())
    }

    /// Takes due envelopes of `ns` out of `scheduled` into the backlog; returns how many.
    ///
    /// # Errors
    /// Queue errors.
    pub async fn promote(&mut self, ns: &Namespace) -> Result<usize, DispatchError> {
        let due = self.queue.take_due(ns).await?;
        let n = due.len();
        for env in due {
            // The envelope does not carry the job's concurrency group; its events do.
            let group = self
                .store
                .load_fresh::<Job>(&env.job_id.to_string())
                .await?
                .state
                .state()
                .and_then(|s| s.concurrency.clone());
            self.wait_turn(ns, env, group, None).await?;
        }
        Ok(n)
    }

    /// `runledger_queue_depth{namespace, state}`: ready and scheduled envelopes, and those
    /// waiting in the backlog.
    async fn gauge_depth(&mut self, ns: &Namespace) {
        if let Ok((r, s)) = self.queue.depth(ns).await {
            let name = ns.as_str().to_owned();
            metrics::gauge!("runledger_queue_depth", "namespace" => name.clone(), "state" => "ready").set(r as f64);
            metrics::gauge!("runledger_queue_depth", "namespace" => name.clone(), "state" => "scheduled")
                .set(s as f64);
            metrics::gauge!("runledger_queue_depth", "namespace" => name, "state" => "backlog")
                .set(self.backlog_len(ns) as f64);
        }
    }

    /// Runs until `shutdown`: the log, the backlog, and promotion of `namespaces` every
    /// 100 ms. A volatile queue is refilled first (see [`Dispatcher::refill`]); a durable one
    /// reads the log up to its end before the first job is handed out, so an attempt that
    /// ended while it was away is not pushed again.
    pub async fn run(mut self, promote: Vec<Namespace>, shutdown: CancellationToken)
    where
        Q: Clone,
    {
        self.served.clone_from(&promote);
        if !self.queue.durable() && self.position.is_none() {
            while let Err(e) = self.refill().await {
                tracing::error!(message = "Refilling the job queue failed; retrying.", error = %e);
                wait(&shutdown, Duration::from_secs(1)).await;
                if shutdown.is_cancelled() {
                    return;
                }
            }
        }
        loop {
            match self.step().await {
                Ok(n) if n < usize::try_from(BATCH).unwrap_or(usize::MAX) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(message = "Catching up with the log failed; retrying.", error = %e);
                    wait(&shutdown, Duration::from_millis(500)).await;
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
        // Promotion, reconciliation and parked retries run beside the log, on their own
        // connection: a slow or unreachable node of theirs never holds back dispatch.
        let maintenance = tokio::spawn(self.sibling().maintain(shutdown.clone()));
        let mut last_sweep = Instant::now();
        while !shutdown.is_cancelled() {
            let read = match self.step().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(message = "Dispatch failed; retrying from the checkpoint.", error = %e);
                    wait(&shutdown, Duration::from_millis(500)).await;
                    continue;
                }
            };
            if let Err(e) = self.feed().await {
                tracing::warn!(message = "Feeding the ready queues failed; retrying.", error = %e);
                wait(&shutdown, Duration::from_millis(200)).await;
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                if let Err(e) = self.sweep().await {
                    tracing::warn!(message = "Sweeping stale slots failed.", error = %e);
                }
                last_sweep = Instant::now();
            }
            if read == 0 {
                let announced = async {
                    match &self.woken {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = self.store.appended().notified() => {}
                    () = announced => {}
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        }
        let _ = maintenance.await;
    }

    /// Every 100 ms takes due envelopes into the backlog and gauges the queues; every third
    /// of the grace period reconciles the queues with the log and retries parked events.
    async fn maintain(mut self, shutdown: CancellationToken) {
        let reconcile_every =
            (self.grace / 3).clamp(Duration::from_secs(1), Duration::from_secs(10));
        let mut last_reconcile = tokio::time::Instant::now();
        let served = self.served.clone();
        while !shutdown.is_cancelled() {
            for ns in &served {
                if let Err(e) = self.promote(ns).await {
                    tracing::warn!(message = "Promotion failed.", namespace = %ns, error = %e);
                }
                self.gauge_depth(ns).await;
            }
            if last_reconcile.elapsed() >= reconcile_every {
                if self.queue.durable()
                    && let Err(e) = self.reconcile().await
                {
                    tracing::warn!(message = "Reconciling the queues failed.", error = %e);
                }
                if let Err(e) = self.retry_parked().await {
                    tracing::warn!(message = "Retrying parked events failed.", error = %e);
                }
                last_reconcile = tokio::time::Instant::now();
            }
            wait(&shutdown, Duration::from_millis(100)).await;
        }
    }
}

async fn wait(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}
