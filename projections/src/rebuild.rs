//! `runledger projections rebuild NAME`: replays the whole store into fresh copies of the
//! projection's tables, then swaps them in, in one transaction that holds the projection's
//! lock: readers see the old tables or the new ones, never an empty window.

use std::time::{Duration, Instant};

use platform::store::reader::{checkpoint, read_from, save_checkpoint};
use sqlx::PgPool;

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
    let cp_name = format!("{}@rebuild", projection.name());
    let mut tx = pool.begin().await?;
    for t in projection.tables() {
        sqlx::query(&format!("DROP TABLE IF EXISTS {t}{SUFFIX}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "CREATE TABLE {t}{SUFFIX} (LIKE {t} INCLUDING ALL)"
        ))
        .execute(&mut *tx)
        .await?;
    }
    save_checkpoint(&mut *tx, &cp_name, 0).await?;
    tx.commit().await?;

    let mut events = 0u64;
    loop {
        let mut tx = pool.begin().await?;
        let from = checkpoint(&mut *tx, &cp_name).await?;
        let batch = read_from(pool, from, BATCH).await?;
        let Some(last) = batch.last().map(|e| e.position) else {
            break;
        };
        projection.apply(&mut tx, &batch, SUFFIX).await?;
        save_checkpoint(&mut *tx, &cp_name, last).await?;
        tx.commit().await?;
        events += batch.len() as u64;
        progress(last);
        if (batch.len() as i64) < BATCH {
            break;
        }
    }

    // The swap: catch up the last events under the live runner's lock, then rename.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(projection.lock_key())
        .execute(&mut *tx)
        .await?;
    let mut position = checkpoint(&mut *tx, &cp_name).await?;
    loop {
        let batch = read_from(pool, position, BATCH).await?;
        let Some(last) = batch.last().map(|e| e.position) else {
            break;
        };
        projection.apply(&mut tx, &batch, SUFFIX).await?;
        events += batch.len() as u64;
        position = last;
    }
    for t in projection.tables() {
        sqlx::query(&format!("ALTER TABLE {t} RENAME TO {t}_old"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("ALTER TABLE {t}{SUFFIX} RENAME TO {t}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("DROP TABLE {t}_old"))
            .execute(&mut *tx)
            .await?;
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
    })
}
