//! The event store against a real Postgres: global order under concurrent commits,
//! optimistic concurrency, snapshots, and compatibility with postgres-es's own writer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::Utc;
use domain::{
    Decider,
    ids::{StripeEventId, StripeObjectId, UserId},
    period::BillingPeriod,
    plan::Plan,
    subscription::{
        ApplyStripeEvent, StripeChange, Subscription, SubscriptionCommand, SubscriptionStatus,
    },
    usage::{CommitUnit, Usage, UsageCommand},
};
use eventstore::{EventStore, Metadata, SNAPSHOT_EVERY, reader::read_from};
use platform::testing::{TestDb, reserve, usage_id};

/// Many writers (several stores, each with its own group committer, plus raw transactions
/// that hold their commit back) race while a reader follows `read_from`. The reader must see
/// every event exactly once, in increasing position, each aggregate in sequence order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_never_skips_an_event_committed_late() {
    let db = TestDb::create().await;
    let stores: Vec<EventStore> = (0..3).map(|_| EventStore::new(db.pool.clone())).collect();
    let reader_pool = db.pool.clone();
    let done = tokio_util::sync::CancellationToken::new();
    let stop = done.clone();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut at = 0;
        loop {
            let finished = stop.is_cancelled();
            let batch = read_from(&reader_pool, at, 100).await.unwrap();
            if batch.is_empty() {
                if finished {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            at = batch.last().unwrap().position;
            seen.extend(batch);
        }
        seen
    });
    let mut writers = Vec::new();
    for w in 0..12u128 {
        let store = stores[(w % 3) as usize].clone();
        writers.push(tokio::spawn(async move {
            let user = UserId::from_uuid(uuid::Uuid::new_v4());
            for n in 0..25 {
                store
                    .execute::<Usage>(
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
    // Raw transactions that take a position, then sleep before committing, while others
    // with later positions commit first.
    for r in 0..8 {
        let pool = db.pool.clone();
        writers.push(tokio::spawn(async move {
            for k in 0..5 {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query(
                    "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                     VALUES ('raw', $1, $2, 'Raw', '1', '{}', '{}')",
                )
                .bind(format!("raw-{r}"))
                .bind(k + 1)
                .execute(&mut *tx)
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(3 + (r * 7 + k as u64 * 3) % 11)).await;
                tx.commit().await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.cancel();
    let seen = reader.await.unwrap();

    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 12 * 25 + 8 * 5);
    assert_eq!(
        seen.len() as i64,
        count,
        "the reader missed or repeated events"
    );
    let ids: HashSet<_> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), seen.len());
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
    let mut last_seq: HashMap<(String, String), i64> = HashMap::new();
    for e in &seen {
        let prev = last_seq.insert(
            (e.aggregate_type.clone(), e.aggregate_id.clone()),
            e.sequence,
        );
        assert_eq!(
            e.sequence,
            prev.unwrap_or(0) + 1,
            "aggregate order broken at {}",
            e.position
        );
    }
}

#[tokio::test]
async fn conflicting_writers_on_one_aggregate_lose_nothing() {
    let db = TestDb::create().await;
    let user = UserId::from_uuid(uuid::Uuid::new_v4());
    let mut tasks = Vec::new();
    // Separate stores share no lock or cache: they really conflict and retry.
    for s in 0..4u128 {
        let store = EventStore::new(db.pool.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..10 {
                store
                    .execute::<Usage>(
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
    let store = EventStore::new(db.pool.clone());
    let usage = store.load_fresh::<Usage>(&usage_id(user)).await.unwrap();
    assert_eq!(usage.sequence, 40);
    assert_eq!(usage.state.state().unwrap().reserved_units(), 40);
}

#[tokio::test]
async fn snapshots_bound_what_a_load_reads() {
    let db = TestDb::create().await;
    let store = EventStore::new(db.pool.clone());
    let user = UserId::from_uuid(uuid::Uuid::new_v4());
    let id = usage_id(user);
    let n = SNAPSHOT_EVERY as u128 * 2 + 30;
    for j in 0..n {
        store
            .execute::<Usage>(&id, reserve(user, j), &Metadata::new())
            .await
            .unwrap()
            .unwrap();
        let commit = UsageCommand::Commit(CommitUnit {
            job_id: domain::ids::JobId::from_uuid(uuid::Uuid::from_u128(j)),
            now: Utc::now(),
        });
        store
            .execute::<Usage>(&id, commit, &Metadata::new())
            .await
            .unwrap()
            .unwrap();
    }
    let (snap_seq,): (i64,) = sqlx::query_as(
        "SELECT last_sequence FROM snapshots WHERE aggregate_type = 'usage' AND aggregate_id = $1",
    )
    .bind(&id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let total = (n * 2) as i64;
    assert!(
        total - snap_seq < SNAPSHOT_EVERY,
        "snapshot at {snap_seq} of {total}"
    );
    let fresh = store.load_fresh::<Usage>(&id).await.unwrap();
    assert_eq!(fresh.snapshot_sequence, snap_seq);
    assert_eq!(fresh.sequence, total);
    // Loaded through the snapshot, the state equals a full replay.
    let rows: Vec<(serde_json::Value,)> = sqlx::query_as(
        "SELECT payload::jsonb FROM events WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(&id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let events: Vec<domain::usage::UsageEvent> = rows
        .into_iter()
        .map(|(v,)| serde_json::from_value(v).unwrap())
        .collect();
    assert_eq!(Usage::replay(events.iter()), fresh.state);
    assert_eq!(fresh.state.state().unwrap().consumed_units(), n as u64);
}

/// postgres-es's own repository writes into the same table and gets positions too.
#[tokio::test]
async fn postgres_es_appends_take_global_positions() {
    use cqrs_es::{CqrsFramework, persist::PersistedEventStore};
    use postgres_es::PostgresEventRepository;

    let db = TestDb::create().await;
    let repo = PostgresEventRepository::new(db.pool.clone());
    let cqrs = CqrsFramework::new(
        PersistedEventStore::<_, Subscription>::new_event_store(repo),
        vec![],
        (),
    );
    let user = UserId::from_uuid(uuid::Uuid::new_v4());
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
    let events = read_from(&db.pool, 0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert!(events[0].position > 0);
    assert_eq!(events[0].event_type, "SubscriptionChanged");
    let store = EventStore::new(db.pool.clone());
    let loaded = store
        .load_fresh::<Subscription>(&user.to_string())
        .await
        .unwrap();
    assert_eq!(loaded.state.plan_at(now), Plan::Pro);
}

#[tokio::test]
async fn pool_sessions_bound_locks_statements_and_idle_transactions() {
    let db = TestDb::create().await;
    let (lock, statement, idle): (String, String, String) = sqlx::query_as(
        "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'), \
                current_setting('idle_in_transaction_session_timeout')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (lock.as_str(), statement.as_str(), idle.as_str()),
        ("10s", "2min", "1min")
    );
    // A lock held by a stuck session is given up on, not waited for.
    let mut holder = db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut *holder)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let waited = sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&db.pool)
        .await
        .unwrap_err();
    let code = waited
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("55P03"), "lock_not_available");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

/// Checkpoints only move forward: a stale instance of a reader (a former leader that has
/// not noticed yet) saves nothing, on either backend.
#[tokio::test]
async fn a_stale_reader_cannot_move_its_checkpoint_back_or_write_its_progress() {
    let db = TestDb::create().await;
    let sqlite = platform::db::open_embedded(None).await.unwrap();
    for store in [EventStore::new(db.pool.clone()), EventStore::sqlite(sqlite)] {
        store.save_checkpoint("pm", 50).await.unwrap();
        let job = uuid::Uuid::new_v4();
        let stale = eventstore::Progress {
            live: vec![eventstore::LiveJob {
                job_id: job,
                status: "running".into(),
                attempt: 1,
                since: Utc::now() - chrono::Duration::hours(1),
            }],
            ..Default::default()
        };
        let refused = store.save_progress("pm", 40, stale).await.unwrap_err();
        assert!(
            matches!(refused, eventstore::StoreError::Fenced(ref n) if n == "pm"),
            "{refused}"
        );
        assert_eq!(store.checkpoint("pm").await.unwrap(), 50);
        let live = store
            .live_before(&["running"], Utc::now(), 10)
            .await
            .unwrap();
        assert!(live.is_empty(), "nothing of the stale batch was saved");
        // Forward (or the same position, a batch redone) is fine.
        store.save_checkpoint("pm", 50).await.unwrap();
        store.save_checkpoint("pm", 60).await.unwrap();
        assert_eq!(store.checkpoint("pm").await.unwrap(), 60);
    }
}

/// A chain of queued units whose first fails: the rest fail too, and no gap is left.
#[tokio::test]
async fn a_failed_unit_fails_the_units_built_on_it() {
    let db = TestDb::create().await;
    let (first, second) = (
        EventStore::new(db.pool.clone()),
        EventStore::new(db.pool.clone()),
    );
    platform::testing::a_failed_unit_fails_the_units_built_on_it(&first, &second).await;
}

/// A unit guarding a state it read commits only while that state is the latest.
#[tokio::test]
async fn a_guard_commits_only_while_its_state_is_the_latest() {
    let db = TestDb::create().await;
    let (first, second) = (
        EventStore::new(db.pool.clone()),
        EventStore::new(db.pool.clone()),
    );
    platform::testing::a_guard_commits_only_while_its_state_is_the_latest(&first, &second).await;
}

/// Commands on one aggregate decide while the ones before them are still committing, so
/// they share transactions: one ledger's 200 concurrent reservations take far fewer than
/// 200 commits, and its sequence is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_aggregate_pipelines_its_commands() {
    let db = TestDb::create().await;
    let store = EventStore::new(db.pool.clone());
    let user = UserId::from_uuid(uuid::Uuid::new_v4());
    let id = usage_id(user);
    let tasks: Vec<_> = (0..200u128)
        .map(|n| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move {
                store
                    .execute::<Usage>(&id, reserve(user, n), &Metadata::new())
                    .await
                    .unwrap()
                    .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (count, max, transactions): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), max(sequence), count(DISTINCT xmin::text) FROM events \
          WHERE aggregate_type = 'usage' AND aggregate_id = $1",
    )
    .bind(&id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((count, max), (200, 200));
    assert!(
        transactions <= 100,
        "{transactions} transactions for 200 commands"
    );
    let state = store.load_fresh::<Usage>(&id).await.unwrap().state;
    assert_eq!(state.state().unwrap().reserved_units(), 200);
}

/// Inserting transactions no longer wait for each other's commit (ADR 0015): one holds its
/// events uncommitted while another appends and commits; a reader stops below the first
/// one's position until it commits, then reads both in order.
#[tokio::test]
async fn writers_commit_in_parallel_and_readers_wait_for_them() {
    let db = TestDb::create().await;
    let mut first = db.pool.begin().await.unwrap();
    let p1 = insert_raw(&mut first, "first").await;
    // Under an exclusive position lock the second insert would wait for the first commit;
    // here it appends and commits while the first is still open.
    let mut second = db.pool.begin().await.unwrap();
    let p2 = tokio::time::timeout(Duration::from_secs(5), async {
        let p = insert_raw(&mut second, "second").await;
        second.commit().await.unwrap();
        p
    })
    .await
    .expect("the second writer waited for the first");
    assert!(p2 > p1);
    let reader = {
        let pool = db.pool.clone();
        tokio::spawn(async move { read_from(&pool, 0, 100).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.commit().await.unwrap();
    let seen: Vec<i64> = reader.await.unwrap().iter().map(|e| e.position).collect();
    // Either both (the reader waited for the first writer) or neither: never p2 alone.
    assert!(seen == vec![p1, p2] || seen.is_empty(), "{seen:?}");
    let after: Vec<i64> = read_from(&db.pool, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(after, vec![p1, p2]);
}

/// One raw event at sequence 1 of `id`, in `tx`; its position.
async fn insert_raw(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, id: &str) -> i64 {
    let (p,): (i64,) = sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('raw', $1, 1, 'Raw', '1', '{}', '{}') RETURNING position",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await
    .unwrap();
    p
}

/// A follower's transaction skips the WAL flush for itself only, and is a transaction.
#[tokio::test]
async fn an_unflushed_transaction_is_one_and_its_setting_ends_with_it() {
    let db = TestDb::create().await;
    let mut tx = eventstore::reader::begin_unflushed(&db.pool).await.unwrap();
    let (inside,): (String,) = sqlx::query_as("SHOW synchronous_commit")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(inside, "off");
    sqlx::query("INSERT INTO checkpoints (name, position) VALUES ('unflushed', 1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let kept: Option<(i64,)> =
        sqlx::query_as("SELECT position FROM checkpoints WHERE name = 'unflushed'")
            .fetch_optional(&db.pool)
            .await
            .unwrap();
    assert_eq!(kept, None, "rolled back with the transaction");
    let mut conn = db.pool.acquire().await.unwrap();
    let (after,): (String,) = sqlx::query_as("SHOW synchronous_commit")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(after, "on");
}
