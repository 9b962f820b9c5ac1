//! The process manager: follows the ordered event reader from its checkpoint and turns job
//! outcomes into usage commands (a completion commits the unit; a cancel or dead letter
//! releases it). One instance is active across replicas, elected by a Postgres advisory lock.
//! Usage commands are idempotent, so events redone after a crash count nothing twice.
//! The sweeper releases reservations whose job never got submitted.

use std::time::Duration;

use chrono::Utc;
use domain::{
    ids::JobId,
    job::JobEvent,
    process::usage_reaction,
    usage::{ReleaseReason, ReleaseUnit, Usage, UsageCommand, UsageError, UsageEvent},
};
use platform::store::{EventStore, Metadata, StoreError, reader::RecordedEvent};
use tokio_util::sync::CancellationToken;

/// The checkpoint's name.
pub const CHECKPOINT: &str = "process-manager";
/// The advisory lock key that elects the active instance.
const LEADER_LOCK: i64 = 7_245_037_262;
const BATCH: i64 = 500;
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// Runs until `shutdown`, taking over whenever no other instance holds the lock.
pub async fn run(store: EventStore, reservation_timeout: Duration, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        match lead(&store, reservation_timeout, &shutdown).await {
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
    reservation_timeout: Duration,
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
    let sweep_every =
        (reservation_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut last_sweep = tokio::time::Instant::now();
    let result = loop {
        if shutdown.is_cancelled() {
            break Ok(());
        }
        match step(store).await {
            Ok(0) => {
                if last_sweep.elapsed() >= sweep_every {
                    if let Err(e) = sweep(store, reservation_timeout).await {
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
    let from = store.checkpoint(CHECKPOINT).await?;
    let events = store.read_from(from, BATCH).await?;
    let Some(last) = events.last().map(|e| e.position) else {
        return Ok(0);
    };
    let mut pending = PendingChanges::default();
    let mut by_ledger: std::collections::HashMap<String, Vec<Reaction>> =
        std::collections::HashMap::new();
    for event in &events {
        if let Some(r) = react(event, &mut pending)? {
            by_ledger.entry(r.usage_id.clone()).or_default().push(r);
        }
    }
    // Ledgers are independent: their commands run concurrently (and commit in one group),
    // each ledger's in log order.
    futures::future::try_join_all(by_ledger.into_values().map(|reactions| async move {
        for r in reactions {
            if let Err(e) = store
                .execute::<Usage>(&r.usage_id, r.command, &r.metadata)
                .await?
            {
                tracing::warn!(message = "Usage command refused.", job_id = %r.job_id, error = %e);
            }
        }
        Ok::<_, StoreError>(())
    }))
    .await?;
    let (added, settled) = pending.net();
    store
        .save_progress(CHECKPOINT, last, added, settled)
        .await?;
    Ok(events.len())
}

/// Changes to `pending_reservations`, committed with the checkpoint.
#[derive(Default)]
struct PendingChanges {
    added: Vec<(uuid::Uuid, String, chrono::DateTime<Utc>)>,
    settled: Vec<uuid::Uuid>,
}

impl PendingChanges {
    /// A reservation and its job are committed together, so most rows added in a batch are
    /// settled in the same batch: only the rest reach the table.
    fn net(self) -> (Vec<platform::store::Pending>, Vec<uuid::Uuid>) {
        let settled: std::collections::HashSet<uuid::Uuid> = self.settled.iter().copied().collect();
        let added: Vec<_> = self
            .added
            .into_iter()
            .filter(|(job, _, _)| !settled.contains(job))
            .collect();
        let added_ids: std::collections::HashSet<uuid::Uuid> =
            added.iter().map(|(j, _, _)| *j).collect();
        let gone = settled
            .into_iter()
            .filter(|j| !added_ids.contains(j))
            .collect();
        (added, gone)
    }
}

/// A usage command the log calls for.
struct Reaction {
    usage_id: String,
    command: UsageCommand,
    metadata: Metadata,
    job_id: JobId,
}

fn react(
    event: &RecordedEvent,
    pending: &mut PendingChanges,
) -> Result<Option<Reaction>, StoreError> {
    let decode = |source| StoreError::Decode {
        aggregate_type: "event",
        aggregate_id: event.aggregate_id.clone(),
        source,
    };
    match event.aggregate_type.as_str() {
        "job" => {
            let job_event: JobEvent = event.decode().map_err(decode)?;
            let job_id = JobId::parse(&event.aggregate_id).map_err(|_| {
                StoreError::Contention(format!("bad job id {}", event.aggregate_id))
            })?;
            if matches!(job_event, JobEvent::JobSubmitted(_)) {
                pending.settled.push(job_id.as_uuid());
            }
            return Ok(
                usage_reaction(job_id, &job_event, Utc::now()).map(|(key, command)| Reaction {
                    usage_id: key.aggregate_id(),
                    command,
                    metadata: inherited_metadata(event),
                    job_id,
                }),
            );
        }
        "usage" => {
            let usage_event: UsageEvent = event.decode().map_err(decode)?;
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
        }
        _ => {}
    }
    Ok(None)
}

/// The correlation id of the event that caused a command goes along with it.
fn inherited_metadata(event: &RecordedEvent) -> Metadata {
    let mut meta = Metadata::new();
    if let Some(c) = event
        .metadata
        .get("correlation_id")
        .and_then(|v| v.as_str())
    {
        meta.insert("correlation_id".into(), c.to_owned());
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
                Err(UsageError::AlreadyConsumed(_) | UsageError::NotReserved(_)) => {}
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
