//! The process manager: follows the ordered event reader from its checkpoint and turns job
//! outcomes into usage commands (a completion commits the unit; a cancel or dead letter
//! releases it). One instance is active across replicas, elected by a Postgres advisory lock.
//! Usage commands are idempotent, so events redone after a crash count nothing twice.
//! The sweeper releases reservations whose job never got submitted, and the lease sweep
//! fails as retryable every running attempt whose heartbeats stopped, so every job ends.

use std::{borrow::Cow, time::Duration};

use chrono::Utc;
use domain::{
    ids::JobId,
    job::{ExpireJob, Job, JobCommand, JobError, JobEvent},
    process::usage_reaction,
    usage::{ReleaseReason, ReleaseUnit, Usage, UsageCommand, UsageError, UsageEvent},
};
use eventstore::{
    EventStore, LiveJob, Metadata, Progress, StoreError,
    poison::{self, Decoded},
    reader::{Meta, RecordedEvent},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The checkpoint's name.
pub const CHECKPOINT: &str = "process-manager";
/// The advisory lock key that elects the active instance.
const LEADER_LOCK: i64 = 7_245_037_262;
const BATCH: i64 = 500;
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// How often the leader checks that its lock connection is still alive.
const LEADER_CHECK: Duration = Duration::from_secs(1);

/// The process manager's timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A reservation whose job never appeared is released after this.
    pub reservation: Duration,
    /// A running attempt silent this long is failed as retryable.
    pub lease: Duration,
}

impl Timeouts {
    /// From the settings.
    pub fn of(settings: &platform::settings::Settings) -> Self {
        Self {
            reservation: settings.reservation_timeout,
            lease: settings.job_lease,
        }
    }
}

/// Runs until `shutdown`, taking over whenever no other instance holds the lock.
pub async fn run(store: EventStore, timeouts: Timeouts, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        match lead(&store, timeouts, &shutdown).await {
            Ok(()) => {}
            Err(e) => tracing::error!(message = "Process manager failed; retrying.", error = %e),
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn lead(
    store: &EventStore,
    timeouts: Timeouts,
    shutdown: &CancellationToken,
) -> Result<(), StoreError> {
    // Detached from the pool: if this task dies, the connection closes and the lock goes
    // with it, instead of riding a pooled connection forever. The embedded store has one
    // process (its data directory is locked), so it needs no election.
    let mut leader = match store.postgres() {
        Some(pool) => {
            let mut conn = pool.acquire().await?.detach();
            let (won,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK)
                .fetch_one(&mut conn)
                .await?;
            if !won {
                return Ok(());
            }
            Some(conn)
        }
        None => None,
    };
    tracing::info!(message = "Process manager is active.");
    let sweep_every = (timeouts.reservation.min(timeouts.lease) / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut last_sweep = tokio::time::Instant::now();
    let mut last_check = tokio::time::Instant::now();
    let mut saved = None;
    let result = loop {
        if shutdown.is_cancelled() {
            break Ok(());
        }
        // The lock lives as long as its connection: once that is gone (terminated, a
        // network cut) another instance may lead, so this one stops. Until it notices, the
        // forward-only checkpoint keeps its writes out.
        if let Some(conn) = leader.as_mut()
            && last_check.elapsed() >= LEADER_CHECK
        {
            let alive = tokio::time::timeout(
                Duration::from_secs(5),
                sqlx::query("SELECT 1").execute(&mut *conn),
            )
            .await;
            if !matches!(alive, Ok(Ok(_))) {
                tracing::warn!(message = "Process manager lost its leader lock; standing down.");
                break Ok(());
            }
            last_check = tokio::time::Instant::now();
        }
        match step_from(store, &mut saved).await {
            Ok(0) => {
                if last_sweep.elapsed() >= sweep_every {
                    if let Err(e) = sweep(store, timeouts.reservation).await {
                        break Err(e);
                    }
                    if let Err(e) = expire_leases(store, timeouts.lease).await {
                        break Err(e);
                    }
                    if let Err(e) = retry_parked(store).await {
                        break Err(e);
                    }
                    last_sweep = tokio::time::Instant::now();
                }
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = store.appended().notified() => {}
                    () = tokio::time::sleep(IDLE_WAIT) => {}
                }
            }
            Ok(_) => {}
            Err(e) => break Err(e),
        }
    };
    if let Some(conn) = leader.as_mut() {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LEADER_LOCK)
            .execute(conn)
            .await;
    }
    result
}

/// Processes one batch after the checkpoint; returns how many events it read.
///
/// # Errors
/// Store failures; the checkpoint then stays where it was and the batch is redone.
pub async fn step(store: &EventStore) -> Result<usize, StoreError> {
    step_from(store, &mut None).await
}

/// As [`step`], from `saved`: the checkpoint this process last stored (read from the
/// database when `None`, and left `None` after a failure), so the leader does not read its
/// own checkpoint back on every batch.
///
/// # Errors
/// Store failures; the checkpoint then stays where it was and the batch is redone.
pub async fn step_from(store: &EventStore, saved: &mut Option<i64>) -> Result<usize, StoreError> {
    let from = match saved.take() {
        Some(p) => p,
        None => store.checkpoint(CHECKPOINT).await?,
    };
    let read = store.read_from(from, BATCH).await?;
    let Some(last) = read.last().map(|e| e.position) else {
        *saved = Some(from);
        return Ok(0);
    };
    let count = read.len();
    let (events, poison) = poison::split(CHECKPOINT, read);
    store.park(CHECKPOINT, &poison).await?;
    react_all(store, &events, last).await?;
    *saved = Some(last);
    // Measured when a batch came back full, i.e. when there may be a lag.
    let lag = if count as i64 == BATCH {
        store.head().await.map_or(0, |h| h - last)
    } else {
        0
    };
    metrics::gauge!("runledger_process_manager_lag_events").set(lag as f64);
    Ok(count)
}

/// Another try at the parked events an operator asked to retry (`runledger events
/// retry`): those that can be read now are processed, out of log order (usage commands are
/// idempotent and keyed by job); returns how many.
///
/// # Errors
/// Store failures.
pub async fn retry_parked(store: &EventStore) -> Result<usize, StoreError> {
    let events = store.take_retries(CHECKPOINT).await?;
    let mut done = 0;
    for (e, decoded) in events {
        let mut pending = PendingChanges::default();
        if let Some(r) = react(&e, &decoded, &mut pending)
            && let Err(refused) = store
                .execute::<Usage>(&r.usage_id, r.command, &r.metadata)
                .await?
        {
            log_refusal(r.job_id, &refused);
        }
        done += 1;
    }
    Ok(done)
}

/// Applies what `events` call for, then saves the checkpoint at `last` with the batch's
/// reservations and live jobs.
async fn react_all(
    store: &EventStore,
    events: &[(RecordedEvent, Decoded)],
    last: i64,
) -> Result<(), StoreError> {
    let mut pending = PendingChanges::default();
    let reactions: Vec<Reaction> = events
        .iter()
        .filter_map(|(event, decoded)| react(event, decoded, &mut pending))
        .collect();
    // All at once: commands on one ledger decide one after the other under its lock (in the
    // order they ask for it) and share the group commit (ADR 0014); ledgers are independent.
    futures::future::try_join_all(reactions.into_iter().map(|r| async move {
        let span = r.span();
        if let Err(e) = store
            .execute::<Usage>(&r.usage_id, r.command, &r.metadata)
            .instrument(span)
            .await?
        {
            log_refusal(r.job_id, &e);
        }
        Ok::<_, StoreError>(())
    }))
    .await?;
    store.save_progress(CHECKPOINT, last, pending.net()).await
}

/// A refused usage command: a reservation already settled is what redone events find (after
/// a crash, or a retried park), so only other refusals are warnings.
fn log_refusal(job_id: impl std::fmt::Display, e: &UsageError) {
    if matches!(e, UsageError::NotReserved(_)) {
        tracing::debug!(message = "Usage command found its reservation settled.", job_id = %job_id, error = %e);
    } else {
        tracing::warn!(message = "Usage command refused.", job_id = %job_id, error = %e);
    }
}

/// Changes to `pending_reservations` and `live_jobs`, committed with the checkpoint.
#[derive(Default)]
struct PendingChanges {
    added: Vec<(uuid::Uuid, String, chrono::DateTime<Utc>)>,
    settled: Vec<uuid::Uuid>,
    /// Each job's latest state in the batch: live, or over (`None`).
    jobs: std::collections::HashMap<uuid::Uuid, Option<LiveJob>>,
    /// Jobs submitted in the batch: no `live_jobs` row of theirs existed before it.
    born: std::collections::HashSet<uuid::Uuid>,
}

impl PendingChanges {
    /// Nets the batch: only each job's latest state reaches the tables, and rows born and
    /// gone within the batch (a reservation settled, a job submitted and ended) are neither
    /// inserted nor deleted.
    fn net(self) -> Progress {
        use std::collections::HashSet;
        let Self {
            added,
            settled,
            jobs,
            born,
        } = self;
        let settled: HashSet<uuid::Uuid> = settled.into_iter().collect();
        let added_now: HashSet<uuid::Uuid> = added.iter().map(|(j, _, _)| *j).collect();
        let reserved = added
            .into_iter()
            .filter(|(job, _, _)| !settled.contains(job))
            .collect();
        let settled = settled
            .into_iter()
            .filter(|j| !added_now.contains(j))
            .collect();
        let mut live = Vec::new();
        let mut ended = Vec::new();
        for (job, state) in jobs {
            match state {
                Some(l) => live.push(l),
                None if born.contains(&job) => {}
                None => ended.push(job),
            }
        }
        Progress {
            reserved,
            settled,
            live,
            ended,
        }
    }
}

/// A usage command the log calls for.
struct Reaction {
    usage_id: String,
    command: UsageCommand,
    metadata: Metadata,
    job_id: JobId,
    /// The `traceparent` of the event that called for it.
    cause: Option<String>,
}

impl Reaction {
    /// Its span, in the trace of the event that called for it. The usage events it appends
    /// carry no `traceparent`: no follower opens a span for a usage event, and their append
    /// is a child of this span already.
    fn span(&self) -> tracing::Span {
        let span = tracing::info_span!(
            "process_manager.react",
            job_id = %self.job_id,
            correlation_id = self.metadata.get("correlation_id").map_or("", String::as_str),
        );
        platform::telemetry::continue_from(&span, self.cause.as_deref());
        span
    }
}

fn react(
    event: &RecordedEvent,
    decoded: &Decoded,
    pending: &mut PendingChanges,
) -> Option<Reaction> {
    match decoded {
        Decoded::Job(job_id, job_event) => {
            if matches!(job_event, JobEvent::JobSubmitted(_)) {
                pending.settled.push(job_id.as_uuid());
                pending.born.insert(job_id.as_uuid());
            }
            if let Some(state) = liveness(
                *job_id,
                job_event,
                event.recorded_at,
                pending.jobs.get(&job_id.as_uuid()),
            ) {
                pending.jobs.insert(job_id.as_uuid(), state);
            }
            usage_reaction(*job_id, job_event, Utc::now()).map(|(key, command)| {
                let meta = event.meta();
                Reaction {
                    usage_id: key.aggregate_id(),
                    command,
                    metadata: inherited_metadata(event, &meta),
                    job_id: *job_id,
                    cause: meta.traceparent.map(Cow::into_owned),
                }
            })
        }
        Decoded::Usage(usage_event) => {
            match usage_event {
                UsageEvent::UnitReserved(e) => {
                    pending.added.push((
                        e.job_id.as_uuid(),
                        event.aggregate_id.clone(),
                        e.reserved_at,
                    ));
                }
                UsageEvent::UnitConsumed(e) => pending.settled.push(e.job_id.as_uuid()),
                UsageEvent::UnitReleased(e) => pending.settled.push(e.job_id.as_uuid()),
                UsageEvent::PeriodClosed(_) => {}
            }
            None
        }
        Decoded::Subscription(_) | Decoded::Other => None,
    }
}

/// A job's state in `live_jobs` after `e`: live with its status and attempt, over (`None`),
/// or unchanged (outer `None`: a failure, whose retry or dead letter follows).
fn liveness(
    job: JobId,
    e: &JobEvent,
    at: chrono::DateTime<Utc>,
    before: Option<&Option<LiveJob>>,
) -> Option<Option<LiveJob>> {
    let live = |status: &str, attempt: domain::retry::Attempt| {
        Some(Some(LiveJob {
            job_id: job.as_uuid(),
            status: status.to_owned(),
            attempt: i32::try_from(attempt.get()).unwrap_or(i32::MAX),
            since: at,
        }))
    };
    match e {
        JobEvent::JobSubmitted(s) => live(s.status.as_str(), domain::retry::Attempt::FIRST),
        JobEvent::JobStarted(s) => live("running", s.attempt),
        // A heartbeat after the job ended in this batch changes nothing.
        JobEvent::JobHeartbeat(_) if matches!(before, Some(None)) => None,
        JobEvent::JobHeartbeat(h) => live("running", h.attempt),
        JobEvent::JobRetryScheduled(r) => live("retrying", r.next_attempt),
        JobEvent::JobCompleted(_) | JobEvent::JobDeadLettered(_) | JobEvent::JobCanceled(_) => {
            Some(None)
        }
        JobEvent::JobFailed(_) => None,
    }
}

/// Fails as retryable each running attempt silent for `lease` (its worker died, hung or was
/// cut off); the job's next attempt, or its dead letter and released unit, follow through
/// the log. The index may lag behind the log: the Job aggregate decides, so an attempt seen
/// alive since is left alone. Returns how many attempts expired.
///
/// # Errors
/// Store failures.
pub async fn expire_leases(store: &EventStore, lease: Duration) -> Result<usize, StoreError> {
    let cutoff = Utc::now() - chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    let silent = store.live_before(&["running"], cutoff, 100).await?;
    let lease_secs = u32::try_from(lease.as_secs()).unwrap_or(u32::MAX);
    let mut expired = 0;
    for l in silent {
        let Ok(attempt) = domain::retry::Attempt::new(u32::try_from(l.attempt).unwrap_or(0)) else {
            continue;
        };
        let command = JobCommand::Expire(ExpireJob {
            attempt,
            lease_secs,
            now: Utc::now(),
            jitter_seed: rand::random(),
        });
        let mut meta = Metadata::new();
        meta.insert("actor".into(), "lease-sweep".into());
        match store
            .execute::<Job>(&l.job_id.to_string(), command, &meta)
            .await?
        {
            Ok(_) => {
                expired += 1;
                metrics::counter!("runledger_leases_expired_total").increment(1);
                tracing::warn!(message = "Expired a silent attempt.", job_id = %l.job_id, attempt = l.attempt);
            }
            Err(
                JobError::LeaseAlive { .. }
                | JobError::StaleAttempt { .. }
                | JobError::NotRunning { .. }
                | JobError::Finished { .. },
            ) => {}
            Err(e) => {
                tracing::warn!(message = "Lease expiry refused.", job_id = %l.job_id, error = %e)
            }
        }
    }
    Ok(expired)
}

/// The correlation id of the event that caused a command goes along with it.
fn inherited_metadata(event: &RecordedEvent, names: &Meta<'_>) -> Metadata {
    let mut meta = Metadata::with_capacity(3);
    if let Some(c) = &names.correlation_id {
        meta.insert("correlation_id".into(), c.clone().into_owned());
    }
    meta.insert("actor".into(), "process-manager".into());
    meta.insert("caused_by".into(), event.event_id.to_string());
    meta
}

/// Releases reservations older than `timeout` whose job was never submitted.
///
/// # Errors
/// Store failures.
pub async fn sweep(store: &EventStore, timeout: Duration) -> Result<usize, StoreError> {
    let cutoff = Utc::now() - chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
    let candidates = store.pending_before(cutoff, 100).await?;
    let mut released = 0;
    for (job, usage_id) in candidates {
        if !store.exists("job", &job.to_string()).await? {
            let command = UsageCommand::Release(ReleaseUnit {
                job_id: JobId::from_uuid(job),
                reason: ReleaseReason::Orphaned,
                now: Utc::now(),
            });
            let mut meta = Metadata::new();
            meta.insert("actor".into(), "sweeper".into());
            match store.execute::<Usage>(&usage_id, command, &meta).await? {
                Ok(_) => {
                    released += 1;
                    tracing::warn!(message = "Released an orphaned reservation.", job_id = %job);
                }
                Err(UsageError::NotReserved(_)) => {}
                Err(e) => {
                    tracing::warn!(message = "Sweeper release refused.", job_id = %job, error = %e)
                }
            }
        }
        // Either way the row is settled: a submitted job's unit follows its outcome.
        store.drop_pending(job).await?;
    }
    Ok(released)
}
