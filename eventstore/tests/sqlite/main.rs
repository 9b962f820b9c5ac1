//! The embedded event store (SQLite, `runledger dev`) against a real database file: global
//! order under concurrent writers, optimistic concurrency between two stores on one file,
//! unit atomicity with idempotency keys, snapshots, and sqlite-es's own writer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use domain::{
    Decider,
    ids::{JobId, StripeEventId, StripeObjectId, UserId},
    period::BillingPeriod,
    plan::Plan,
    subscription::{
        ApplyStripeEvent, StripeChange, Subscription, SubscriptionCommand, SubscriptionStatus,
    },
    usage::{CommitUnit, Usage, UsageCommand},
};
use eventstore::{
    CommitError, EventStore, IdempotencyRecord, Loaded, Metadata, SNAPSHOT_EVERY, WriteUnit,
};
use platform::testing::{reserve, usage_id};
use sqlx::SqlitePool;

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!("runledger-sqlite-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn open(dir: &TempDir) -> SqlitePool {
    platform::db::open_embedded(Some(&dir.0)).await.unwrap()
}

fn store(pool: &SqlitePool) -> EventStore {
    EventStore::sqlite(pool.clone())
}

fn new_user() -> UserId {
    UserId::from_uuid(uuid::Uuid::new_v4())
}

/// Writers on two stores (two pools on one file, as two processes would be) race while a
/// reader follows the log: every event once, positions increasing, each aggregate in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_sees_every_event_once_in_order() {
    let dir = TempDir::new();
    let (a, b) = (open(&dir).await, open(&dir).await);
    let stores = [store(&a), store(&b)];
    let reader = store(&a);
    let done = tokio_util::sync::CancellationToken::new();
    let stop = done.clone();
    let follow = tokio::spawn(async move {
        let (mut seen, mut at) = (Vec::new(), 0);
        loop {
            let finished = stop.is_cancelled();
            let batch = reader.read_from(at, 100).await.unwrap();
            if batch.is_empty() {
                if finished {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                continue;
            }
            at = batch.last().unwrap().position;
            seen.extend(batch);
        }
        seen
    });
    let mut writers = Vec::new();
    for w in 0..8u128 {
        let s = stores[(w % 2) as usize].clone();
        writers.push(tokio::spawn(async move {
            let user = new_user();
            for n in 0..20 {
                s.execute::<Usage>(
                    &usage_id(user),
                    reserve(user, w * 1000 + n),
                    &Metadata::new(),
                )
                .await
                .unwrap()
                .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.cancel();
    let seen = follow.await.unwrap();
    assert_eq!(seen.len(), 8 * 20);
    assert_eq!(
        stores[0].head().await.unwrap(),
        seen.last().unwrap().position
    );
    let ids: HashSet<_> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), seen.len());
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
    let mut last: HashMap<String, i64> = HashMap::new();
    for e in &seen {
        let prev = last.insert(e.aggregate_id.clone(), e.sequence);
        assert_eq!(e.sequence, prev.unwrap_or(0) + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflicting_stores_on_one_aggregate_lose_nothing() {
    let dir = TempDir::new();
    let user = new_user();
    let mut tasks = Vec::new();
    for s in 0..3u128 {
        // Separate pools and stores share no lock or cache: they really conflict and retry.
        let st = store(&open(&dir).await);
        tasks.push(tokio::spawn(async move {
            for n in 0..10 {
                st.execute::<Usage>(
                    &usage_id(user),
                    reserve(user, s * 100 + n),
                    &Metadata::new(),
                )
                .await
                .unwrap()
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let usage = store(&open(&dir).await)
        .load_fresh::<Usage>(&usage_id(user))
        .await
        .unwrap();
    assert_eq!(usage.sequence, 30);
    assert_eq!(usage.state.state().unwrap().reserved_units(), 30);
}

/// A unit whose idempotency key is taken, or whose sequence is taken, commits nothing of
/// itself.
#[tokio::test]
async fn a_refused_unit_commits_nothing_of_itself() {
    let dir = TempDir::new();
    let st = store(&open(&dir).await);
    let user = new_user();
    let id = usage_id(user);
    let unit = |n: u128, key: &str| {
        let loaded = Loaded::<Usage>::default();
        let events = Usage::default().decide(reserve(user, n)).unwrap();
        let (append, _, _) = EventStore::prepare(&id, loaded, &events, &Metadata::new()).unwrap();
        WriteUnit {
            appends: vec![append],
            snapshots: vec![],
            idempotency: Some(IdempotencyRecord {
                user_id: user.as_uuid(),
                key: key.to_owned(),
                request_hash: "h".into(),
                status: 202,
                body: serde_json::json!({"n": n as u64}),
            }),
            guards: vec![],
        }
    };
    st.commit(unit(1, "k1")).await.unwrap();
    // Sequence 1 again with a new key: a conflict, and its key is not kept.
    assert!(matches!(
        st.commit(unit(2, "k2")).await,
        Err(CommitError::Conflict)
    ));
    assert!(
        st.stored_response(user.as_uuid(), "k2")
            .await
            .unwrap()
            .is_none()
    );
    // The same key: a duplicate.
    assert!(matches!(
        st.commit(unit(3, "k1")).await,
        Err(CommitError::DuplicateKey)
    ));
    let (hash, status, body) = st
        .stored_response(user.as_uuid(), "k1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((hash.as_str(), status), ("h", 202));
    assert_eq!(body["n"], 1);
    assert_eq!(st.events_of("usage", &id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn snapshots_bound_what_a_load_reads_and_equal_a_replay() {
    let dir = TempDir::new();
    let st = store(&open(&dir).await);
    let user = new_user();
    let id = usage_id(user);
    let n = SNAPSHOT_EVERY as u128 + 20;
    for j in 0..n {
        st.execute::<Usage>(&id, reserve(user, j), &Metadata::new())
            .await
            .unwrap()
            .unwrap();
        let commit = UsageCommand::Commit(CommitUnit {
            job_id: JobId::from_uuid(uuid::Uuid::from_u128(j)),
            now: Utc::now(),
        });
        st.execute::<Usage>(&id, commit, &Metadata::new())
            .await
            .unwrap()
            .unwrap();
    }
    let fresh = st.load_fresh::<Usage>(&id).await.unwrap();
    assert!(fresh.snapshot_sequence > 0);
    assert_eq!(fresh.sequence, (n * 2) as i64);
    let events: Vec<domain::usage::UsageEvent> = st
        .events_of("usage", &id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.decode().unwrap())
        .collect();
    assert_eq!(Usage::replay(events.iter()), fresh.state);
    assert_eq!(fresh.state.state().unwrap().consumed_units(), n as u64);
}

/// sqlite-es's own repository writes into the same tables and gets positions too.
#[tokio::test]
async fn sqlite_es_appends_take_global_positions() {
    use cqrs_es::{CqrsFramework, persist::PersistedEventStore};
    use sqlite_es::SqliteEventRepository;

    let dir = TempDir::new();
    let pool = open(&dir).await;
    let cqrs = CqrsFramework::new(
        PersistedEventStore::<_, Subscription>::new_event_store(SqliteEventRepository::new(
            pool.clone(),
        )),
        vec![],
        (),
    );
    let user = new_user();
    let now = Utc::now();
    let command = SubscriptionCommand::ApplyStripeEvent(ApplyStripeEvent {
        user_id: user,
        event_id: StripeEventId::parse("evt_1").unwrap(),
        created: now,
        change: StripeChange::SubscriptionChanged {
            customer_id: StripeObjectId::parse("cus_1").unwrap(),
            subscription_id: StripeObjectId::parse("sub_1").unwrap(),
            plan: Plan::Pro,
            status: SubscriptionStatus::Active,
            period: BillingPeriod::calendar_month(now),
        },
        now,
    });
    cqrs.execute(&user.to_string(), command).await.unwrap();
    let st = store(&pool);
    let events = st.read_from(0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert!(events[0].position > 0);
    assert_eq!(events[0].event_type, "SubscriptionChanged");
    let loaded = st
        .load_fresh::<Subscription>(&user.to_string())
        .await
        .unwrap();
    assert_eq!(loaded.state.plan_at(now), Plan::Pro);
}

/// A chain of queued units whose first fails: the rest fail too, and no gap is left.
#[tokio::test]
async fn a_failed_unit_fails_the_units_built_on_it() {
    let dir = TempDir::new();
    let pool = open(&dir).await;
    platform::testing::a_failed_unit_fails_the_units_built_on_it(&store(&pool), &store(&pool))
        .await;
}

/// A unit guarding a state it read commits only while that state is the latest.
#[tokio::test]
async fn a_guard_commits_only_while_its_state_is_the_latest() {
    let dir = TempDir::new();
    let pool = open(&dir).await;
    platform::testing::a_guard_commits_only_while_its_state_is_the_latest(
        &store(&pool),
        &store(&pool),
    )
    .await;
}
