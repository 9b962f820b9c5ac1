//! The dispatcher: follows the event log from its checkpoint and keeps the Redis contract
//! filled — ready jobs to `jobs:<ns>:queue` (or the browser stream), future and retrying
//! ones to `jobs:<ns>:scheduled` — and promotes scheduled envelopes when due.
//!
//! Each (job, attempt) is pushed at most once: a marker in the target's slot is set by the
//! same script that pushes. Promotion pushes first (the marker is the claim, so two
//! dispatchers cannot both push), then ZREMs; a crash in between leaves the entry to be
//! removed by the next round, never lost and never doubled.

use std::{collections::HashMap, time::Duration};

use chrono::Utc;
use domain::{
    Decider,
    envelope::JobEnvelope,
    job::{FailJob, Job, JobCommand, JobEvent, JobStatus},
    task::{Namespace, NamespaceMap},
};
use platform::store::{EventStore, Metadata, StoreError, reader::RecordedEvent};
use tokio_util::sync::CancellationToken;

use crate::queue::JobQueue;

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
pub struct Dispatcher<Q> {
    /// The event store (to read the log and load jobs).
    pub store: EventStore,
    /// Where envelopes go.
    pub queue: Q,
    /// Task type → namespace.
    pub namespaces: NamespaceMap,
    /// The position reached, for a volatile queue (its checkpoint is not stored).
    position: Option<i64>,
}

impl<Q: JobQueue> Dispatcher<Q> {
    /// A dispatcher filling `queue`.
    pub fn new(store: EventStore, queue: Q, namespaces: NamespaceMap) -> Self {
        Self {
            store,
            queue,
            namespaces,
            position: None,
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
            let events = self.store.read_from(position, 5_000).await?;
            let Some(last) = events.last().map(|e| e.position) else {
                break;
            };
            for e in events.iter().filter(|e| e.aggregate_type == "job") {
                let event: JobEvent = decode(e)?;
                jobs.entry(e.aggregate_id.clone())
                    .or_default()
                    .evolve(&event);
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
                (JobStatus::Queued, _) => self.enqueue_ready(&ns, &env).await?,
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
    /// [`DispatchError`]; the checkpoint stays and the batch is redone (pushes are
    /// idempotent).
    pub async fn step(&mut self) -> Result<usize, DispatchError> {
        let from = match self.position {
            Some(p) => p,
            None => self.store.checkpoint(CHECKPOINT).await?,
        };
        let events = self.store.read_from(from, BATCH).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(0);
        };
        for e in events.iter().filter(|e| e.aggregate_type == "job") {
            self.handle(e).await?;
        }
        match self.position {
            Some(_) => self.position = Some(last),
            None => self.store.save_checkpoint(CHECKPOINT, last).await?,
        }
        Ok(events.len())
    }

    async fn handle(&mut self, e: &RecordedEvent) -> Result<(), DispatchError> {
        let event: JobEvent = decode(e)?;
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
                self.queue.withdraw(&ns, &env, &bytes).await?;
                self.queue.forget(env.job_id);
            }
            JobEvent::JobCompleted(_) | JobEvent::JobDeadLettered(_) => {
                if let Ok(id) = domain::ids::JobId::parse(&e.aggregate_id) {
                    self.queue.forget(id);
                }
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
        if self.queue.push_ready(ns, env, &bytes).await? {
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
        self.queue.schedule(ns, env, &bytes, due_ms).await?;
        Ok(())
    }

    /// Moves due envelopes of `ns` from `scheduled` to the ready structure; returns how many.
    ///
    /// # Errors
    /// Queue errors.
    pub async fn promote(&mut self, ns: &Namespace) -> Result<usize, DispatchError> {
        Ok(self.queue.promote(ns).await?)
    }

    /// `runledger_queue_depth{namespace, state}`: ready and scheduled envelopes.
    async fn gauge_depth(&mut self, ns: &Namespace) {
        if let Ok((r, s)) = self.queue.depth(ns).await {
            let name = ns.as_str().to_owned();
            metrics::gauge!("runledger_queue_depth", "namespace" => name.clone(), "state" => "ready").set(r as f64);
            metrics::gauge!("runledger_queue_depth", "namespace" => name, "state" => "scheduled")
                .set(s as f64);
        }
    }

    /// Runs until `shutdown`: the log, and promotion of `namespaces` every 100 ms.
    /// A volatile queue is refilled first (see [`Dispatcher::refill`]).
    pub async fn run(mut self, promote: Vec<Namespace>, shutdown: CancellationToken) {
        if !self.queue.durable() && self.position.is_none() {
            while let Err(e) = self.refill().await {
                tracing::error!(message = "Refilling the job queue failed; retrying.", error = %e);
                wait(&shutdown, Duration::from_secs(1)).await;
                if shutdown.is_cancelled() {
                    return;
                }
            }
        }
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

fn decode(e: &RecordedEvent) -> Result<JobEvent, StoreError> {
    e.decode().map_err(|source| StoreError::Decode {
        aggregate_type: "job",
        aggregate_id: e.aggregate_id.clone(),
        source,
    })
}

async fn wait(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}
