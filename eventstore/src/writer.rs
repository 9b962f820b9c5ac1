//! The group committer: one task takes every unit waiting in its queue and hands them to the
//! log to commit in one transaction, so N concurrent commands cost one durable commit, not N.
//! Each unit stays all-or-nothing: a unit that conflicts is taken out and the rest committed
//! without it. The Postgres batch commit is here; SQLite's is in `sqlite`.
//!
//! Decisions are pipelined: a command may decide on a state that includes units still in the
//! queue (its appends name that unit as their `base`). Units are committed in queue order, so
//! a base is always settled first; when it failed, every unit built on it fails too, as a
//! conflict, and never leaves a gap in an aggregate's sequence (ADR 0014).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::log::EventLog;

/// Units committed in one transaction at most.
const MAX_BATCH: usize = 512;

/// One event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub(super) event_type: String,
    pub(super) event_version: String,
    pub(super) payload: String,
    pub(super) metadata: String,
}

/// Events for one aggregate, expected to follow `expected_sequence`.
#[derive(Debug, Clone)]
pub struct Append {
    /// The aggregate type.
    pub aggregate_type: &'static str,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The sequence of the last event the decision saw.
    pub expected_sequence: i64,
    /// The queued unit whose events the decision's state already included, if that unit was
    /// not yet known to be committed.
    pub base: Option<u64>,
    pub(super) events: Vec<NewEvent>,
}

/// A snapshot to store with the events.
#[derive(Debug, Clone)]
pub struct SnapshotWrite {
    /// The aggregate type.
    pub aggregate_type: &'static str,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The last event the snapshot includes.
    pub last_sequence: i64,
    /// The serialized aggregate (JSON text).
    pub payload: String,
}

/// A state a decision read without appending to it (the user's subscription, for a
/// submission): the unit commits only if the aggregate's last sequence is still `sequence`,
/// else it fails as [`CommitError::Stale`]. Checked in the unit's transaction, so a cached
/// state costs no read per command.
#[derive(Debug, Clone)]
pub struct Guard {
    /// The aggregate type.
    pub aggregate_type: &'static str,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The sequence of the last event the decision saw (0: none).
    pub sequence: i64,
}

/// The response to keep for an `Idempotency-Key`, committed with the events it produced.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    /// The caller.
    pub user_id: Uuid,
    /// The key.
    pub key: String,
    /// SHA-256 of the request, to tell a replay from a different request with the same key.
    pub request_hash: String,
    /// The HTTP status of the first response.
    pub status: u16,
    /// Its body.
    pub body: Value,
}

/// What commits together or not at all.
#[derive(Debug, Clone, Default)]
pub struct WriteUnit {
    /// Appends, each to one aggregate.
    pub appends: Vec<Append>,
    /// Snapshots due.
    pub snapshots: Vec<SnapshotWrite>,
    /// The idempotency record, if the request had a key.
    pub idempotency: Option<IdempotencyRecord>,
    /// States the decision read and did not append to.
    pub guards: Vec<Guard>,
}

impl WriteUnit {
    /// Whether it writes nothing.
    fn is_empty(&self) -> bool {
        self.appends.is_empty()
            && self.snapshots.is_empty()
            && self.idempotency.is_none()
            && self.guards.is_empty()
    }
}

/// Why a unit did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another writer appended to one of the aggregates first: reload and decide again.
    #[error("optimistic concurrency conflict")]
    Conflict,
    /// A state the decision read (a [`Guard`]) has moved on: read it again and decide again.
    #[error("a state the decision read has changed")]
    Stale,
    /// The idempotency key was recorded by another request first.
    #[error("idempotency key already used")]
    DuplicateKey,
    /// The database failed; nothing of the unit was committed.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// The store's disk is full; nothing of the unit was committed.
    #[error("the event store's disk is full")]
    StorageFull,
    /// The connection broke during COMMIT: the unit may or may not be saved.
    #[error("the commit's outcome is unknown")]
    OutcomeUnknown,
    /// The writer is shutting down.
    #[error("writer stopped")]
    Stopped,
}

pub(super) type Reply = oneshot::Sender<Result<(), CommitError>>;

/// A unit in the writer's queue: its ticket (the order it was enqueued in) and where to answer.
pub struct Queued {
    pub(super) ticket: u64,
    pub(super) unit: WriteUnit,
    pub(super) reply: Reply,
}

/// The tickets of recent units that did not commit, so units built on them fail too. A unit
/// names only its direct base, and a failed chain's newest link is always recent, so a
/// bounded memory is enough.
#[derive(Default)]
pub struct Failed {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

/// Failed tickets remembered at most.
const FAILED_KEPT: usize = 65_536;

impl Failed {
    pub(super) fn insert(&mut self, ticket: u64) {
        if self.set.insert(ticket) {
            self.order.push_back(ticket);
            if self.order.len() > FAILED_KEPT
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }

    fn contains(&self, ticket: u64) -> bool {
        self.set.contains(&ticket)
    }

    /// Answers, as conflicts, the units built on a failed unit (in queue order, so chains
    /// fail link by link) and takes them out.
    pub(super) fn cascade(&mut self, queued: &mut Vec<Queued>) {
        let mut i = 0;
        while i < queued.len() {
            let broken = queued[i]
                .unit
                .appends
                .iter()
                .any(|a| a.base.is_some_and(|b| self.contains(b)));
            if broken {
                let q = queued.remove(i);
                self.insert(q.ticket);
                metrics::counter!("runledger_command_conflicts_total").increment(1);
                let _ = q.reply.send(Err(CommitError::Conflict));
            } else {
                i += 1;
            }
        }
    }
}

/// A unit's commit, once it is in the queue.
pub struct Committing {
    answer: oneshot::Receiver<Result<(), CommitError>>,
    /// The append's span, ended when the answer comes. Never entered: nothing runs inside
    /// it, and entering it on every poll was a measurable share of a traced request.
    span: Option<crate::trace::Closer>,
}

impl Committing {
    /// Keeps `span` open until the commit is answered.
    #[must_use]
    pub fn in_span(mut self, span: Option<crate::trace::Closer>) -> Self {
        self.span = span;
        self
    }
}

impl Future for Committing {
    type Output = Result<(), CommitError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let answer = std::pin::Pin::new(&mut self.answer).poll(cx);
        if answer.is_ready() {
            self.span = None;
        }
        answer.map(|r| r.map_err(|_| CommitError::Stopped).and_then(|r| r))
    }
}

#[derive(Clone)]
pub(super) struct Writer {
    tx: mpsc::UnboundedSender<Queued>,
    next: Arc<AtomicU64>,
}

impl Writer {
    pub(super) fn start(log: Arc<dyn EventLog>, appended: Arc<Notify>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(log, rx, appended));
        Self {
            tx,
            next: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Puts `unit` in the queue; returns its ticket and its commit to await.
    pub(super) fn enqueue(&self, unit: WriteUnit) -> Result<(u64, Committing), CommitError> {
        let (reply, answer) = oneshot::channel();
        // Taken and sent under no lock: the caller holds its aggregates' locks, which is what
        // orders units that build on each other.
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Queued {
                ticket,
                unit,
                reply,
            })
            .map_err(|_| CommitError::Stopped)?;
        Ok((ticket, Committing { answer, span: None }))
    }
}

async fn run(
    log: Arc<dyn EventLog>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    appended: Arc<Notify>,
) {
    let mut failed = Failed::default();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        failed.cascade(&mut batch);
        if batch.iter().all(|q| q.unit.is_empty()) {
            // Only waits for the units before them (`EventStore::settle`): those are
            // settled, since batches commit one after the other. No transaction is needed.
            for q in batch {
                let _ = q.reply.send(Ok(()));
            }
            continue;
        }
        log.commit_batch(batch, &mut failed).await;
        appended.notify_waiters();
    }
}

/// Splits `queued` into what can commit in one transaction and what must wait for it: a unit
/// that touches an aggregate an earlier unit of the batch touches joins only when it is built
/// on that unit (its sequences follow on); otherwise their sequences would collide. A unit
/// guarding an aggregate that an earlier unit appends to waits too: the guards are checked
/// before the batch's rows are written.
pub(super) fn split_chains(queued: Vec<Queued>) -> (Vec<Queued>, Vec<Queued>) {
    fn key(a: &Append) -> (&'static str, &str) {
        (a.aggregate_type, a.aggregate_id.as_str())
    }
    // Decided on keys borrowed from the units (no id copied), then the units are moved.
    let joins: Vec<bool> = {
        let mut last: HashMap<(&str, &str), u64> = HashMap::with_capacity(queued.len() * 2);
        // Aggregates of units that wait: whatever touches them waits too, to keep queue order.
        let mut waiting: HashSet<(&str, &str)> = HashSet::new();
        queued
            .iter()
            .map(|q| {
                let joins = q.unit.appends.iter().all(|a| {
                    let k = key(a);
                    !waiting.contains(&k) && last.get(&k).is_none_or(|t| a.base == Some(*t))
                }) && q.unit.guards.iter().all(|g| {
                    let k = (g.aggregate_type, g.aggregate_id.as_str());
                    !waiting.contains(&k) && !last.contains_key(&k)
                });
                for a in &q.unit.appends {
                    if joins {
                        last.insert(key(a), q.ticket);
                    } else {
                        waiting.insert(key(a));
                    }
                }
                joins
            })
            .collect()
    };
    let (mut now, mut later) = (Vec::with_capacity(queued.len()), Vec::new());
    for (q, joins) in queued.into_iter().zip(joins) {
        if joins {
            now.push(q);
        } else {
            later.push(q);
        }
    }
    (now, later)
}

/// Answers every unit of a batch the database failed: nothing of it was committed.
/// How a batch failed as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// Nothing was committed.
    NothingSaved,
    /// Nothing was committed: the disk is full.
    DiskFull,
    /// The connection broke during COMMIT.
    Unknown,
}

impl Failure {
    /// A failure before COMMIT was answered: nothing was saved.
    pub(super) fn before_commit(e: &sqlx::Error) -> Self {
        if is_disk_full(e) {
            Self::DiskFull
        } else {
            Self::NothingSaved
        }
    }

    /// A failure of COMMIT itself: when the server answered with an error, it rolled back;
    /// when the connection broke, the transaction may or may not have committed.
    pub(super) fn at_commit(e: &sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(_) => Self::before_commit(e),
            _ => Self::Unknown,
        }
    }
}

/// SQLITE_FULL (13), or Postgres's disk_full (53100).
fn is_disk_full(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "13" || c == "53100")
}

pub(super) fn fail_all(
    failure: Failure,
    e: &sqlx::Error,
    queued: Vec<Queued>,
    failed: &mut Failed,
) {
    for q in &queued {
        failed.insert(q.ticket);
    }
    let replies: Vec<Reply> = queued.into_iter().map(|q| q.reply).collect();
    match failure {
        Failure::DiskFull => {
            tracing::error!(message = "Event batch failed: disk full; nothing was saved.", error = %e, units = replies.len());
        }
        Failure::Unknown => {
            tracing::error!(message = "Event batch outcome unknown: the connection broke during COMMIT.", error = %e, units = replies.len());
        }
        Failure::NothingSaved => {
            tracing::error!(message = "Event batch failed; nothing was saved.", error = %e, units = replies.len());
        }
    }
    let text = e.to_string();
    for r in replies {
        let _ = r.send(Err(match failure {
            Failure::DiskFull => CommitError::StorageFull,
            Failure::Unknown => CommitError::OutcomeUnknown,
            Failure::NothingSaved => CommitError::Database(sqlx::Error::Protocol(text.clone())),
        }));
    }
}

/// Units refused by a batch attempt, by index.
enum Refusal {
    Units(Vec<(usize, CommitError)>),
    Database(Failure, sqlx::Error),
}

/// Answers the units of a committed batch.
pub(super) fn answer_committed(queued: Vec<Queued>) {
    metrics::counter!("runledger_commands_committed_total").increment(queued.len() as u64);
    metrics::histogram!("runledger_commit_batch_units").record(queued.len() as f64);
    for q in queued {
        let _ = q.reply.send(Ok(()));
    }
}

fn before_commit(e: sqlx::Error) -> Refusal {
    Refusal::Database(Failure::before_commit(&e), e)
}

pub(super) async fn commit_batch(pool: &PgPool, batch: Vec<Queued>, failed: &mut Failed) {
    let (mut now, later) = split_chains(batch);
    loop {
        failed.cascade(&mut now);
        if now.is_empty() {
            break;
        }
        let units: Vec<&WriteUnit> = now.iter().map(|q| &q.unit).collect();
        match try_commit(pool, &units).await {
            Ok(()) => {
                answer_committed(now);
                break;
            }
            Err(Refusal::Units(refused)) => {
                metrics::counter!("runledger_command_conflicts_total")
                    .increment(refused.len() as u64);
                for (idx, err) in refused.into_iter().rev() {
                    let q = now.remove(idx);
                    failed.insert(q.ticket);
                    let _ = q.reply.send(Err(err));
                }
            }
            Err(Refusal::Database(failure, e)) => {
                fail_all(failure, &e, now, failed);
                break;
            }
        }
    }
    if !later.is_empty() {
        Box::pin(commit_batch(pool, later, failed)).await;
    }
}

async fn try_commit(pool: &PgPool, units: &[&WriteUnit]) -> Result<(), Refusal> {
    let mut tx = pool.begin().await.map_err(before_commit)?;
    let stale = check_guards(&mut tx, units).await.map_err(before_commit)?;
    if !stale.is_empty() {
        let _ = tx.rollback().await;
        return Err(Refusal::Units(
            stale.into_iter().map(|i| (i, CommitError::Stale)).collect(),
        ));
    }
    let duplicates = insert_idempotency(&mut tx, units)
        .await
        .map_err(before_commit)?;
    if !duplicates.is_empty() {
        let _ = tx.rollback().await;
        return Err(Refusal::Units(
            duplicates
                .into_iter()
                .map(|i| (i, CommitError::DuplicateKey))
                .collect(),
        ));
    }
    write_snapshots(&mut tx, units)
        .await
        .map_err(before_commit)?;
    // Events last: the position lock is taken at the first event row and held to commit.
    let conflicts = insert_events(&mut tx, units).await.map_err(before_commit)?;
    if !conflicts.is_empty() {
        let _ = tx.rollback().await;
        return Err(Refusal::Units(
            conflicts
                .into_iter()
                .map(|i| (i, CommitError::Conflict))
                .collect(),
        ));
    }
    tx.commit()
        .await
        .map_err(|e| Refusal::Database(Failure::at_commit(&e), e))
}

/// The indexes of units with a guard whose aggregate has moved on: one query for the batch.
async fn check_guards(
    tx: &mut Transaction<'_, Postgres>,
    units: &[&WriteUnit],
) -> Result<Vec<usize>, sqlx::Error> {
    let guards: Vec<(usize, &Guard)> = units
        .iter()
        .enumerate()
        .flat_map(|(i, u)| u.guards.iter().map(move |g| (i, g)))
        .collect();
    if guards.is_empty() {
        return Ok(vec![]);
    }
    let types: Vec<&str> = guards.iter().map(|(_, g)| g.aggregate_type).collect();
    let ids: Vec<&str> = guards
        .iter()
        .map(|(_, g)| g.aggregate_id.as_str())
        .collect();
    let seqs: Vec<i64> = guards.iter().map(|(_, g)| g.sequence).collect();
    // The guards that no longer hold, by their place in the arrays.
    let moved: Vec<(i64,)> = sqlx::query_as(
        "SELECT g.ord FROM UNNEST($1::text[], $2::text[], $3::int8[]) WITH ORDINALITY AS g(t, i, s, ord) \
          WHERE coalesce((SELECT max(sequence) FROM events e \
                           WHERE e.aggregate_type = g.t AND e.aggregate_id = g.i), 0) <> g.s",
    )
    .bind(&types)
    .bind(&ids)
    .bind(&seqs)
    .fetch_all(&mut **tx)
    .await?;
    let mut stale: Vec<usize> = moved
        .into_iter()
        .filter_map(|(ord,)| guards.get(usize::try_from(ord - 1).ok()?).map(|(i, _)| *i))
        .collect();
    stale.sort_unstable();
    stale.dedup();
    Ok(stale)
}

/// Inserts the idempotency records; returns the indexes of units whose key already exists.
async fn insert_idempotency(
    tx: &mut Transaction<'_, Postgres>,
    units: &[&WriteUnit],
) -> Result<Vec<usize>, sqlx::Error> {
    let records: Vec<(usize, &IdempotencyRecord)> = units
        .iter()
        .enumerate()
        .filter_map(|(i, u)| u.idempotency.as_ref().map(|r| (i, r)))
        .collect();
    if records.is_empty() {
        return Ok(vec![]);
    }
    let users: Vec<Uuid> = records.iter().map(|(_, r)| r.user_id).collect();
    let keys: Vec<&str> = records.iter().map(|(_, r)| r.key.as_str()).collect();
    let hashes: Vec<&str> = records
        .iter()
        .map(|(_, r)| r.request_hash.as_str())
        .collect();
    let statuses: Vec<i16> = records
        .iter()
        .map(|(_, r)| i16::try_from(r.status).unwrap_or(500))
        .collect();
    let bodies: Vec<String> = records.iter().map(|(_, r)| r.body.to_string()).collect();
    let inserted: Vec<(Uuid, String)> = sqlx::query_as(
        "INSERT INTO idempotency_keys (user_id, key, request_hash, status, body) \
         SELECT u, k, h, s, b::json FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int2[], $5::text[]) \
           AS t(u, k, h, s, b) \
         ON CONFLICT DO NOTHING RETURNING user_id, key",
    )
    .bind(&users)
    .bind(&keys)
    .bind(&hashes)
    .bind(&statuses)
    .bind(&bodies)
    .fetch_all(&mut **tx)
    .await?;
    let inserted: HashSet<(Uuid, String)> = inserted.into_iter().collect();
    Ok(records
        .iter()
        .filter(|(_, r)| !inserted.contains(&(r.user_id, r.key.clone())))
        .map(|(i, _)| *i)
        .collect())
}

async fn write_snapshots(
    tx: &mut Transaction<'_, Postgres>,
    units: &[&WriteUnit],
) -> Result<(), sqlx::Error> {
    // One row per aggregate, the latest: a chain of units may each bring one, and one
    // statement may not update a row twice.
    let mut latest: HashMap<(&str, &str), &SnapshotWrite> = HashMap::new();
    for s in units.iter().flat_map(|u| &u.snapshots) {
        let e = latest
            .entry((s.aggregate_type, s.aggregate_id.as_str()))
            .or_insert(s);
        if s.last_sequence > e.last_sequence {
            *e = s;
        }
    }
    let snaps: Vec<&SnapshotWrite> = latest.into_values().collect();
    if snaps.is_empty() {
        return Ok(());
    }
    let types: Vec<&str> = snaps.iter().map(|s| s.aggregate_type).collect();
    let ids: Vec<&str> = snaps.iter().map(|s| s.aggregate_id.as_str()).collect();
    let seqs: Vec<i64> = snaps.iter().map(|s| s.last_sequence).collect();
    let payloads: Vec<&str> = snaps.iter().map(|s| s.payload.as_str()).collect();
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload) \
         SELECT t, i, s, s, p::json FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[]) AS x(t, i, s, p) \
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
           SET last_sequence = EXCLUDED.last_sequence, current_snapshot = EXCLUDED.current_snapshot, \
               payload = EXCLUDED.payload \
           WHERE snapshots.last_sequence < EXCLUDED.last_sequence",
    )
    .bind(&types)
    .bind(&ids)
    .bind(&seqs)
    .bind(&payloads)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts every event in unit order; returns the indexes of units with a taken sequence.
async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    units: &[&WriteUnit],
) -> Result<Vec<usize>, sqlx::Error> {
    let mut owner = Vec::new();
    let (mut types, mut ids, mut seqs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut etypes, mut versions, mut payloads, mut metas) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, unit) in units.iter().enumerate() {
        for a in &unit.appends {
            for (n, e) in a.events.iter().enumerate() {
                owner.push(i);
                types.push(a.aggregate_type);
                ids.push(a.aggregate_id.as_str());
                seqs.push(a.expected_sequence + 1 + n as i64);
                etypes.push(e.event_type.as_str());
                versions.push(e.event_version.as_str());
                payloads.push(e.payload.as_str());
                metas.push(e.metadata.as_str());
            }
        }
    }
    if owner.is_empty() {
        return Ok(vec![]);
    }
    let inserted: Vec<(String, String, i64)> = sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT t, i, s, et, ev, p::json, m::json \
           FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::text[]) \
                WITH ORDINALITY AS x(t, i, s, et, ev, p, m, ord) \
          ORDER BY ord \
         ON CONFLICT DO NOTHING RETURNING aggregate_type, aggregate_id, sequence",
    )
    .bind(&types)
    .bind(&ids)
    .bind(&seqs)
    .bind(&etypes)
    .bind(&versions)
    .bind(&payloads)
    .bind(&metas)
    .fetch_all(&mut **tx)
    .await?;
    if inserted.len() == owner.len() {
        return Ok(vec![]);
    }
    let inserted: HashSet<(String, String, i64)> = inserted.into_iter().collect();
    let mut conflicts: Vec<usize> = (0..owner.len())
        .filter(|&row| !inserted.contains(&(types[row].to_owned(), ids[row].to_owned(), seqs[row])))
        .map(|row| owner[row])
        .collect();
    conflicts.dedup();
    Ok(conflicts)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_at_commit_leaves_the_outcome_unknown() {
        let broken = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(Failure::at_commit(&broken), Failure::Unknown);
        // Before COMMIT was sent, nothing can have been saved.
        assert_eq!(Failure::before_commit(&broken), Failure::NothingSaved);
        assert_eq!(
            Failure::at_commit(&sqlx::Error::PoolTimedOut),
            Failure::Unknown
        );
    }

    #[test]
    fn each_failure_answers_its_own_commit_error() {
        for (failure, expected) in [
            (Failure::Unknown, "the commit's outcome is unknown"),
            (Failure::DiskFull, "the event store's disk is full"),
        ] {
            let (tx, rx) = oneshot::channel();
            let queued = Queued {
                ticket: 7,
                unit: WriteUnit::default(),
                reply: tx,
            };
            let mut failed = Failed::default();
            fail_all(failure, &sqlx::Error::PoolClosed, vec![queued], &mut failed);
            assert!(failed.contains(7));
            let got = rx.blocking_recv().unwrap().unwrap_err();
            assert_eq!(got.to_string(), expected);
        }
    }
}
