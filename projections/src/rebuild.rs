//! `runledger projections rebuild NAME`: replays the whole store into fresh copies of the
//! projection's tables, then swaps them in, in one transaction that holds the projection's
//! lock: readers see the old tables or the new ones, never an empty window.
//!
//! The copies are built unlogged with only their unique indexes (what the upserts need);
//! the other indexes are built once at the end and the tables made logged before the swap.
//! A crashed rebuild leaves only the copies, which the next one drops.

use std::time::{Duration, Instant};

use eventstore::{
    poison,
    reader::{begin_unflushed, read_from, save_checkpoint},
};
use sqlx::{PgConnection, PgPool};

use crate::{Projection, ProjectionError};

const BATCH: i64 = 10_000;
const SUFFIX: &str = "_rebuild";

/// What a rebuild did.
#[derive(Debug, Clone, Copy)]
pub struct Rebuilt {
    /// Events replayed.
    pub events: u64,
    /// Position the new tables are at.
    pub position: i64,
    /// Time taken.
    pub elapsed: Duration,
    /// Of which reading events from the store.
    pub reading: Duration,
}

/// An index of a live table, to recreate on its copy.
struct Index {
    table: &'static str,
    name: String,
    definition: String,
    unique: bool,
}

impl Index {
    /// The definition, on the copy, under a temporary name.
    fn on_copy(&self) -> String {
        self.definition
            .replacen(
                &format!(" {} ON ", self.name),
                &format!(" {}{SUFFIX} ON ", self.name),
                1,
            )
            .replacen(
                &format!(" ON public.{} ", self.table),
                &format!(" ON public.{}{SUFFIX} ", self.table),
                1,
            )
    }
}

async fn indexes(
    conn: &mut PgConnection,
    projection: Projection,
) -> Result<Vec<Index>, sqlx::Error> {
    let mut out = Vec::new();
    for t in projection.tables() {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = $1",
        )
        .bind(t)
        .fetch_all(&mut *conn)
        .await?;
        out.extend(rows.into_iter().map(|(name, definition)| Index {
            table: t,
            unique: definition.starts_with("CREATE UNIQUE"),
            name,
            definition,
        }));
    }
    Ok(out)
}

async fn timed_read(
    pool: PgPool,
    after: i64,
) -> Result<(Vec<eventstore::reader::RecordedEvent>, Duration), sqlx::Error> {
    let t = Instant::now();
    let batch = read_from(&pool, after, BATCH).await?;
    Ok((batch, t.elapsed()))
}

/// Rebuilds `projection` from position 0, calling `progress(position)` after each batch.
///
/// # Errors
/// [`ProjectionError`]; the live tables are untouched unless the swap committed.
pub async fn rebuild(
    pool: &PgPool,
    projection: Projection,
    mut progress: impl FnMut(i64),
) -> Result<Rebuilt, ProjectionError> {
    let started = Instant::now();
    // One rebuild of a projection at a time: two would build the same copies and swap in
    // tables at different positions. The lock lives on a connection of its own, released
    // when the rebuild ends or its process dies.
    let mut fence = pool.acquire().await?.detach();
    let (won,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
        .bind(projection.rebuild_lock_key())
        .fetch_one(&mut fence)
        .await?;
    if !won {
        return Err(ProjectionError::RebuildRunning(projection.name()));
    }
    let result = rebuild_alone(pool, projection, &mut progress, started).await;
    let _ = sqlx::Connection::close(fence).await;
    result
}

async fn rebuild_alone(
    pool: &PgPool,
    projection: Projection,
    progress: &mut impl FnMut(i64),
    started: Instant,
) -> Result<Rebuilt, ProjectionError> {
    let cp_name = format!("{}@rebuild", projection.name());
    let mut tx = pool.begin().await?;
    let indexes = indexes(&mut tx, projection).await?;
    for t in projection.tables() {
        sqlx::query(&format!("DROP TABLE IF EXISTS {t}{SUFFIX}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "CREATE UNLOGGED TABLE {t}{SUFFIX} (LIKE {t} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        ))
        .execute(&mut *tx)
        .await?;
    }
    for i in indexes.iter().filter(|i| i.unique) {
        sqlx::query(&i.on_copy()).execute(&mut *tx).await?;
    }
    save_checkpoint(&mut *tx, &cp_name, 0).await?;
    tx.commit().await?;

    let mut events = 0u64;
    let mut still_parked: Vec<i64> = Vec::new();
    let mut reading = Duration::ZERO;
    let mut position = 0;
    // The next batch is read while this one is applied.
    let mut buffer = crate::jobs::Buffer::default();
    let mut next = Some(tokio::spawn(timed_read(pool.clone(), position)));
    while let Some(reading_batch) = next.take() {
        let (read, took) = reading_batch.await.map_err(|_| sqlx::Error::PoolClosed)??;
        reading += took;
        let Some(last) = read.last().map(|e| e.position) else {
            break;
        };
        let full = read.len() as i64 == BATCH;
        let read_count = read.len() as u64;
        let (batch, poison) = poison::split_raw(projection.name(), read);
        still_parked.extend(poison.iter().map(|(e, _)| e.position));
        if full {
            next = Some(tokio::spawn(timed_read(pool.clone(), last)));
        }
        // The copies are rebuilt from scratch after a crash: no need to wait for fsync.
        let mut tx = begin_unflushed(pool).await?;
        if projection == Projection::Jobs {
            crate::jobs::apply_buffered(&mut tx, &batch, SUFFIX, &mut buffer).await?;
            if buffer.len() >= crate::jobs::BUFFER_MAX || !full {
                crate::jobs::flush(&mut tx, &mut buffer, SUFFIX).await?;
            }
        } else {
            projection.apply(&mut tx, &batch, SUFFIX, None).await?;
        }
        poison::park_pg(&mut *tx, projection.name(), &poison).await?;
        // A crash loses the held rows with the checkpoint: the copies are built anew.
        save_checkpoint(&mut *tx, &cp_name, last).await?;
        tx.commit().await?;
        events += read_count;
        position = last;
        progress(last);
    }
    let mut tx = pool.begin().await?;
    crate::jobs::flush(&mut tx, &mut buffer, SUFFIX).await?;
    for i in indexes.iter().filter(|i| !i.unique) {
        sqlx::query(&i.on_copy()).execute(&mut *tx).await?;
    }
    for t in projection.tables() {
        sqlx::query(&format!("ALTER TABLE {t}{SUFFIX} SET LOGGED"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;

    // The swap: catch up the last events under the live runner's lock, then rename.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(projection.lock_key())
        .execute(&mut *tx)
        .await?;
    loop {
        let read = read_from(pool, position, BATCH).await?;
        let Some(last) = read.last().map(|e| e.position) else {
            break;
        };
        events += read.len() as u64;
        let (batch, poison) = poison::split_raw(projection.name(), read);
        still_parked.extend(poison.iter().map(|(e, _)| e.position));
        poison::park_pg(&mut *tx, projection.name(), &poison).await?;
        projection.apply(&mut tx, &batch, SUFFIX, None).await?;
        position = last;
    }
    // What was parked and reads now is in the new tables.
    sqlx::query("DELETE FROM parked_events WHERE consumer = $1 AND NOT (position = ANY($2))")
        .bind(projection.name())
        .bind(&still_parked)
        .execute(&mut *tx)
        .await?;
    for t in projection.tables() {
        sqlx::query(&format!("DROP TABLE {t}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("ALTER TABLE {t}{SUFFIX} RENAME TO {t}"))
            .execute(&mut *tx)
            .await?;
    }
    for i in &indexes {
        let sql = if i.name.ends_with("_pkey") {
            format!(
                "ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}{SUFFIX}",
                i.table, i.name, i.name
            )
        } else {
            format!("ALTER INDEX {}{SUFFIX} RENAME TO {}", i.name, i.name)
        };
        sqlx::query(&sql).execute(&mut *tx).await?;
    }
    save_checkpoint(&mut *tx, projection.name(), position).await?;
    sqlx::query("DELETE FROM checkpoints WHERE name = $1")
        .bind(&cp_name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Rebuilt {
        events,
        position,
        elapsed: started.elapsed(),
        reading,
    })
}
