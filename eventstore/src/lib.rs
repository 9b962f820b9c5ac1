//! The event store: an [`EventLog`] (postgres-es's tables on Postgres, or sqlite-es's on
//! SQLite for `runledger dev`) with a gap-safe global position, loading with snapshots and a
//! cache, and one group-committing writer that appends the events of many concurrent
//! commands (each all-or-nothing) in one transaction.

mod cache;
mod locks;
pub mod log;
mod meta;
mod ops;
pub mod poison;
mod postgres;
pub mod reader;
mod sqlite;
pub mod trace;
mod writer;

use std::{collections::HashMap, sync::Arc, time::Duration};

use cqrs_es::{Aggregate, DomainEvent};
use domain::Decider;
pub use log::{EventLog, LiveJob, Pending, Progress};
pub use postgres::Postgres;
use rand::Rng;
use serde_json::Value;
pub use sqlite::Sqlite;
use sqlx::{PgPool, SqlitePool};
use tokio::sync::Notify;
pub use writer::{
    Append, CommitError, Committing, Guard, IdempotencyRecord, SnapshotWrite, WriteUnit,
};

use self::{cache::Cache, locks::KeyedLocks, writer::Writer};

/// An aggregate the store can load and append to: a cqrs-es `Aggregate` whose rules are a
/// pure [`Decider`].
pub trait StoredAggregate:
    Aggregate + Decider<Event = <Self as Aggregate>::Event> + Clone + 'static
{
}

impl<T> StoredAggregate for T where
    T: Aggregate + Decider<Event = <T as Aggregate>::Event> + Clone + 'static
{
}

/// Write a snapshot once this many events have piled up since the last one, so loading an
/// aggregate never grows with its history.
pub const SNAPSHOT_EVERY: i64 = 100;

/// About the stored size of one event. A large state (a ledger with many jobs in flight) is
/// snapshotted only once the events since its last snapshot weigh about as much as that
/// snapshot: writing snapshots then costs O(1) per event, and a load reads at most about
/// twice the state, instead of rewriting the whole state every 100 events.
const EVENT_BYTES: usize = 256;

/// An aggregate's state as of its last event (by default: a new aggregate, no event yet).
#[derive(Debug, Clone, Default)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// Sequence of the last event (0: none).
    pub sequence: i64,
    /// Sequence covered by the stored snapshot (0: none).
    pub snapshot_sequence: i64,
    /// The stored snapshot's size in bytes (0: none).
    pub snapshot_bytes: usize,
    /// Whether it came from this process's cache: a refusal decided on it is checked again
    /// on fresh state, since another process may have moved the aggregate on.
    pub cached: bool,
    /// The queued unit whose events this state already includes, while that unit may not
    /// be committed yet (pipelining; the writer fails what is built on a failed unit).
    pub pending: Option<u64>,
}

impl<A: StoredAggregate> Loaded<A> {
    /// The guard that keeps a decision on this state of aggregate `id` from committing
    /// once the aggregate has moved on.
    pub fn guard(&self, id: &str) -> Guard {
        Guard {
            aggregate_type: A::TYPE,
            aggregate_id: id.to_owned(),
            sequence: self.sequence,
        }
    }
}

/// Failures of the store itself, not refusals of the domain.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored payload does not decode into the current types.
    #[error("stored {aggregate_type} {aggregate_id} does not decode: {source}")]
    Decode {
        /// The aggregate type.
        aggregate_type: &'static str,
        /// The aggregate id.
        aggregate_id: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// Concurrent writers kept winning; the caller may retry later.
    #[error("too much contention on {0}")]
    Contention(String),
    /// A rule the code relies on did not hold: a bug, not a reason to retry.
    #[error("invariant broken: {0}")]
    Invariant(String),
    /// The writer task is gone (shutting down).
    #[error("the event writer has stopped")]
    WriterStopped,
    /// The store's disk is full: nothing was saved.
    #[error("the event store's disk is full")]
    StorageFull,
    /// Another instance of this reader moved its checkpoint further: this one is stale
    /// and saved nothing.
    #[error("checkpoint {0} is ahead of this reader: another instance runs")]
    Fenced(String),
    /// The connection broke during COMMIT: the command may or may not have been saved.
    #[error("the commit's outcome is unknown")]
    OutcomeUnknown,
}

/// String metadata carried with every event (`correlation_id`, `actor`, ...).
pub type Metadata = HashMap<String, String>;

/// The result of executing a command against one aggregate.
#[derive(Debug, Clone)]
pub struct Executed<A: StoredAggregate, V = ()> {
    /// The events appended (none for an accepted no-op).
    pub events: Vec<<A as Aggregate>::Event>,
    /// What the caller asked to see of the state after them.
    pub view: V,
}

/// Shared handle to the event store.
#[derive(Clone)]
pub struct EventStore {
    log: Arc<dyn EventLog>,
    writer: Writer,
    cache: Arc<Cache>,
    locks: Arc<KeyedLocks>,
    appended: Arc<Notify>,
}

impl EventStore {
    /// Starts the writer task on a Postgres `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self::on(Arc::new(Postgres(pool)))
    }

    /// Starts the writer task on a SQLite `pool` (the embedded default).
    pub fn sqlite(pool: SqlitePool) -> Self {
        Self::on(Arc::new(Sqlite(pool)))
    }

    /// Starts the writer task on `log`.
    pub fn on(log: Arc<dyn EventLog>) -> Self {
        let appended = Arc::new(Notify::new());
        Self {
            writer: Writer::start(log.clone(), appended.clone()),
            log,
            cache: Arc::new(Cache::default()),
            locks: Arc::new(KeyedLocks::default()),
            appended,
        }
    }

    /// The Postgres pool, when the store is on Postgres.
    pub fn postgres(&self) -> Option<&PgPool> {
        self.log.postgres()
    }

    /// Woken after each commit of this process, so in-process readers need not poll hard.
    pub fn appended(&self) -> &Arc<Notify> {
        &self.appended
    }

    /// Serializes this process's commands on one aggregate, so they neither conflict with
    /// each other nor load stale state. Other processes are caught by the sequence check.
    pub async fn lock(&self, aggregate_type: &str, id: &str) -> locks::Guard {
        self.locks.lock(format!("{aggregate_type}/{id}")).await
    }

    /// The aggregate's current state, taken out of the cache or loaded from its snapshot and
    /// later events. Call it holding the aggregate's [`EventStore::lock`], and give the state
    /// back with [`EventStore::remember`] when it is still current.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Decode`].
    pub async fn load<A: StoredAggregate>(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        if let Some(hit) = self.cache.take::<A>(A::TYPE, id) {
            return Ok(Loaded {
                cached: true,
                ..hit
            });
        }
        self.load_fresh::<A>(id).await
    }

    /// For a decision that reads `id` and appends nothing to it: a copy of the cached state,
    /// loaded (and cached) when there is none. It may be stale: the unit the decision makes
    /// carries the state's [`Loaded::guard`] and fails as [`CommitError::Stale`] when another
    /// process moved the aggregate on.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Decode`].
    pub async fn read<A: StoredAggregate>(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        if let Some(hit) = self.cache.copy::<A>(A::TYPE, id) {
            return Ok(Loaded {
                cached: true,
                ..hit
            });
        }
        let loaded = self.load_fresh::<A>(id).await?;
        self.cache.put(A::TYPE, id, loaded.clone());
        Ok(loaded)
    }

    /// Loads from the database, bypassing the cache.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Decode`].
    pub async fn load_fresh<A: StoredAggregate>(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let decode = |source| StoreError::Decode {
            aggregate_type: A::TYPE,
            aggregate_id: id.to_owned(),
            source,
        };
        let (snapshot, rows) = self.log.load_rows(A::TYPE, id).await?;
        let (mut state, snapshot_sequence, snapshot_bytes) = match snapshot {
            Some((seq, json)) => (
                serde_json::from_str::<A>(&json).map_err(decode)?,
                seq,
                json.len(),
            ),
            None => (A::default(), 0, 0),
        };
        let mut sequence = snapshot_sequence;
        for (seq, json) in rows {
            let event: <A as Aggregate>::Event = serde_json::from_str(&json).map_err(decode)?;
            state.evolve(&event);
            sequence = seq;
        }
        Ok(Loaded {
            state,
            sequence,
            snapshot_sequence,
            snapshot_bytes,
            cached: false,
            pending: None,
        })
    }

    /// Appends `events` to `loaded`'s aggregate: the append, and a snapshot when due.
    /// Returns them with the state after the events, for [`EventStore::remember`].
    ///
    /// # Errors
    /// When an event does not serialize.
    pub fn prepare<A: StoredAggregate>(
        id: &str,
        loaded: Loaded<A>,
        events: &[<A as Aggregate>::Event],
        metadata: &Metadata,
    ) -> Result<(Append, Option<SnapshotWrite>, Loaded<A>), serde_json::Error> {
        // Straight to JSON text: no value trees built and dropped on the hot path.
        let metadata = serde_json::to_string(metadata)?;
        let mut stored = Vec::with_capacity(events.len());
        let mut state = loaded.state;
        for e in events {
            stored.push(writer::NewEvent {
                event_type: e.event_type(),
                event_version: e.event_version(),
                payload: serde_json::to_string(e)?,
                metadata: metadata.clone(),
            });
            state.evolve(e);
        }
        let sequence = loaded.sequence + events.len() as i64;
        let mut after = Loaded {
            state,
            sequence,
            snapshot_sequence: loaded.snapshot_sequence,
            snapshot_bytes: loaded.snapshot_bytes,
            cached: false,
            // Set to this unit's ticket once it is queued.
            pending: None,
        };
        let every = SNAPSHOT_EVERY.max((loaded.snapshot_bytes / EVENT_BYTES) as i64);
        let snapshot = if sequence - loaded.snapshot_sequence >= every {
            let payload = serde_json::to_string(&after.state)?;
            after.snapshot_sequence = sequence;
            after.snapshot_bytes = payload.len();
            Some(SnapshotWrite {
                aggregate_type: A::TYPE,
                aggregate_id: id.to_owned(),
                last_sequence: sequence,
                payload,
            })
        } else {
            None
        };
        let append = Append {
            aggregate_type: A::TYPE,
            aggregate_id: id.to_owned(),
            expected_sequence: loaded.sequence,
            base: loaded.pending,
            events: stored,
        };
        Ok((append, snapshot, after))
    }

    /// Commits one unit through the group committer.
    ///
    /// # Errors
    /// [`CommitError`].
    pub async fn commit(&self, unit: WriteUnit) -> Result<(), CommitError> {
        self.enqueue(unit)?.1.await
    }

    /// Puts `unit` in the group committer's queue and returns its ticket and its commit, to
    /// be awaited after the aggregates' locks are let go: call it holding them, and remember
    /// each state after the unit with `pending` set to the ticket, so the next command on
    /// those aggregates decides at once instead of waiting for this one's fsync. Answer the
    /// caller only once the commit is done.
    ///
    /// # Errors
    /// [`CommitError::Stopped`] when the writer is gone.
    pub fn enqueue(&self, unit: WriteUnit) -> Result<(u64, Committing), CommitError> {
        let span = crate::trace::append_span().and_then(|open| {
            let (job, meta) = names(&unit);
            // The events' `traceparent` names the span that made them (a request's).
            let parent = meta
                .traceparent
                .as_deref()
                .map_or(trace::Parent::Current, trace::Parent::Traceparent);
            open(
                parent,
                job.as_deref().unwrap_or(""),
                meta.correlation_id.as_deref().unwrap_or(""),
                events(&unit),
            )
        });
        self.queue(unit, span)
    }

    /// As [`EventStore::enqueue`], for a caller that knows the job and correlation id the
    /// unit is about: the append's span is `trace.parent`'s child (which need not be
    /// entered) and takes the ids from it instead of finding them in the events.
    ///
    /// # Errors
    /// [`CommitError::Stopped`] when the writer is gone.
    pub fn enqueue_traced(
        &self,
        unit: WriteUnit,
        trace: AppendTrace<'_>,
    ) -> Result<(u64, Committing), CommitError> {
        let span = crate::trace::append_span().and_then(|open| {
            open(
                trace.parent,
                trace.job_id,
                trace.correlation_id,
                events(&unit),
            )
        });
        self.queue(unit, span)
    }

    fn queue(
        &self,
        unit: WriteUnit,
        span: Option<trace::Closer>,
    ) -> Result<(u64, Committing), CommitError> {
        let (ticket, committing) = self.writer.enqueue(unit)?;
        Ok((ticket, committing.in_span(span)))
    }

    /// Caches the state after a commit, or after a queued unit (its `pending` set).
    pub fn remember<A: StoredAggregate>(&self, id: &str, loaded: Loaded<A>) {
        self.cache.put(A::TYPE, id, loaded);
    }

    /// Drops a cached state after a conflict showed it stale.
    pub fn forget(&self, aggregate_type: &'static str, id: &str) {
        self.cache.remove(aggregate_type, id);
    }

    /// Before a state is read again from the database: waits until the units it was built
    /// on are settled, so the database holds them (or they failed).
    ///
    /// # Errors
    /// [`StoreError::WriterStopped`].
    pub async fn settle<A>(&self, loaded: &Loaded<A>) -> Result<(), StoreError> {
        if loaded.pending.is_some() {
            // The queue commits in order: an empty unit is answered after every unit before it.
            self.commit(WriteUnit::default()).await?;
        }
        Ok(())
    }

    /// After a unit failed: drops the cached state of its aggregate, which may have been
    /// built on it, under the aggregate's lock so no command is deciding on it meanwhile.
    /// Units already queued on top of it fail in the writer.
    pub async fn forget_after_failure(&self, aggregate_type: &'static str, id: &str) {
        let _guard = self.lock(aggregate_type, id).await;
        self.forget(aggregate_type, id);
    }

    /// Executes `command` on one aggregate: load, decide, append; retried with jittered
    /// backoff when another process appended first.
    ///
    /// # Errors
    /// The outer error is the store's; the inner one the domain's refusal.
    pub async fn execute<A>(
        &self,
        id: &str,
        command: <A as Decider>::Command,
        metadata: &Metadata,
    ) -> Result<Result<Executed<A>, <A as Decider>::Error>, StoreError>
    where
        A: StoredAggregate,
        <A as Decider>::Command: Clone,
    {
        self.execute_checked(
            id,
            command,
            |_: &A| metadata.clone(),
            |_: &A| Ok(()),
            |_: &A| (),
        )
        .await
    }

    /// As [`EventStore::execute`], after `check` approves the loaded state (ownership, say),
    /// with metadata made from that state (a job's correlation id, say), returning `view` of
    /// the state after the command.
    ///
    /// # Errors
    /// The outer error is the store's; the inner one `check`'s or the domain's refusal.
    pub async fn execute_checked<A, V>(
        &self,
        id: &str,
        command: <A as Decider>::Command,
        metadata: impl Fn(&A) -> Metadata,
        check: impl Fn(&A) -> Result<(), <A as Decider>::Error>,
        view: impl Fn(&A) -> V,
    ) -> Result<Result<Executed<A, V>, <A as Decider>::Error>, StoreError>
    where
        A: StoredAggregate,
        <A as Decider>::Command: Clone,
    {
        for attempt in 0..MAX_ATTEMPTS {
            // Decided and queued under the aggregate's lock; the commit is awaited after it,
            // so the next command on the aggregate builds on this one (pipelining).
            let (events, v, committing) = {
                let _guard = self.lock(A::TYPE, id).await;
                let loaded = self.load::<A>(id).await?;
                let decided =
                    check(&loaded.state).and_then(|()| loaded.state.decide(command.clone()));
                let events = match decided {
                    Ok(events) if !events.is_empty() => events,
                    // A refusal or no-op on cached state is only believed on fresh state.
                    _ if loaded.cached => {
                        self.settle(&loaded).await?;
                        continue;
                    }
                    Ok(events) => {
                        let v = view(&loaded.state);
                        self.remember(id, loaded);
                        return Ok(Ok(Executed { events, view: v }));
                    }
                    Err(e) => {
                        self.remember(id, loaded);
                        return Ok(Err(e));
                    }
                };
                let meta = metadata(&loaded.state);
                let (append, snapshot, mut after) = Self::prepare(id, loaded, &events, &meta)
                    .map_err(|source| StoreError::Decode {
                        aggregate_type: A::TYPE,
                        aggregate_id: id.to_owned(),
                        source,
                    })?;
                let unit = WriteUnit {
                    appends: vec![append],
                    snapshots: snapshot.into_iter().collect(),
                    ..WriteUnit::default()
                };
                let (ticket, committing) = self.enqueue(unit)?;
                let v = view(&after.state);
                after.pending = Some(ticket);
                self.remember(id, after);
                (events, v, committing)
            };
            match committing.await {
                Ok(()) => return Ok(Ok(Executed { events, view: v })),
                Err(CommitError::Conflict) => {
                    self.forget_after_failure(A::TYPE, id).await;
                    backoff(attempt).await;
                }
                Err(e) => {
                    self.forget_after_failure(A::TYPE, id).await;
                    return Err(e.into());
                }
            }
        }
        Err(StoreError::Contention(format!("{}/{id}", A::TYPE)))
    }
}

/// How often a conflicting command is tried in all. Generous: with four writers on one
/// aggregate and slow fsyncs (a loaded box), eight tries were seen to lose; sixteen add at
/// most ~1 s of backoff in that worst case.
pub const MAX_ATTEMPTS: u32 = 16;

/// Who an append is for, as its span names it.
pub struct AppendTrace<'a> {
    /// The span the append's is a child of.
    pub parent: trace::Parent<'a>,
    /// The job the unit's events are about.
    pub job_id: &'a str,
    /// The job's correlation id.
    pub correlation_id: &'a str,
}

/// How many events a unit appends.
fn events(unit: &WriteUnit) -> usize {
    unit.appends.iter().map(|a| a.events.len()).sum()
}

/// The job a unit's events are about and their metadata's names, found in them.
fn names(unit: &WriteUnit) -> (Option<String>, reader::Meta<'_>) {
    // One unit's events share their metadata.
    let meta = unit
        .appends
        .iter()
        .flat_map(|a| a.events.iter())
        .next()
        .map(|e| reader::Meta::of(&e.metadata))
        .unwrap_or_default();
    let job = unit
        .appends
        .iter()
        .find(|a| a.aggregate_type == "job")
        .map(|a| a.aggregate_id.clone())
        .or_else(|| {
            unit.appends
                .iter()
                .flat_map(|a| a.events.iter())
                .find_map(|e| crate::trace::job_in(&e.payload))
        });
    (job, meta)
}

/// Sleeps before retry `attempt` (0-based): 2 ms doubling to 128 ms, each with full jitter.
pub async fn backoff(attempt: u32) {
    let ceiling = 2u64 << attempt.min(6);
    let ms = rand::rng().random_range(0..=ceiling);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

impl From<CommitError> for StoreError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Database(e) => Self::Database(e),
            CommitError::Stopped => Self::WriterStopped,
            CommitError::StorageFull => Self::StorageFull,
            CommitError::OutcomeUnknown => Self::OutcomeUnknown,
            CommitError::Conflict | CommitError::Stale | CommitError::DuplicateKey => {
                Self::Invariant("a conflict reached a caller that does not retry".to_owned())
            }
        }
    }
}

/// The stored JSON of a value, for metadata maps and snapshots.
pub fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::Utc;
    use domain::{
        Decider,
        ids::{JobId, UserId},
        period::BillingPeriod,
        plan::Plan,
        usage::{ReserveUnit, Usage, UsageCommand},
    };

    use super::*;

    /// An unlimited reservation of job `n` on one user's ledger of this month.
    fn reserve(n: u128) -> UsageCommand {
        let now = Utc::now();
        UsageCommand::Reserve(ReserveUnit {
            job_id: JobId::from_uuid(uuid::Uuid::from_u128(n)),
            user_id: UserId::from_uuid(uuid::Uuid::from_u128(1)),
            period: BillingPeriod::calendar_month(now),
            plan: Plan::Enterprise,
            limit: None,
            now,
        })
    }

    /// A ledger holding `n` open reservations, as loaded with its snapshot at `n`.
    fn ledger(n: u128) -> Loaded<Usage> {
        let mut state = Usage::default();
        for j in 0..n {
            for e in state.decide(reserve(j + 1)).unwrap() {
                state.evolve(&e);
            }
        }
        let bytes = serde_json::to_string(&state).unwrap().len();
        Loaded {
            state,
            sequence: n as i64,
            snapshot_sequence: n as i64,
            snapshot_bytes: bytes,
            cached: false,
            pending: None,
        }
    }

    fn next_snapshot_after(mut loaded: Loaded<Usage>) -> i64 {
        for j in 0..1_000_000u128 {
            let events = loaded.state.decide(reserve(u128::MAX - j)).unwrap();
            let start = loaded.snapshot_sequence;
            let (_, snapshot, after) =
                EventStore::prepare("l", loaded, &events, &Metadata::new()).unwrap();
            if snapshot.is_some() {
                return after.sequence - start;
            }
            loaded = after;
        }
        unreachable!("no snapshot in a million events")
    }

    #[test]
    fn a_small_state_is_snapshotted_every_hundred_events() {
        assert_eq!(next_snapshot_after(ledger(10)), SNAPSHOT_EVERY);
    }

    #[test]
    fn a_large_state_is_snapshotted_once_the_events_since_weigh_as_much() {
        let loaded = ledger(5_000);
        let bytes = loaded.snapshot_bytes;
        let every = next_snapshot_after(loaded);
        // ~5,000 × 70 bytes of state: one snapshot per ~1,400 events, not per 100.
        assert_eq!(every, (bytes / EVENT_BYTES) as i64);
        assert!(every > 10 * SNAPSHOT_EVERY, "{every}");
    }
}
