//! Runs one projection: batches from its checkpoint, applied and checkpointed in one
//! transaction, then its notices published.

use std::time::Duration;

use platform::{
    notice::NoticeBus,
    store::reader::{checkpoint, head, read_from, save_checkpoint},
};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{Projection, ProjectionError};

const BATCH: i64 = 1_000;
const IDLE_MIN: Duration = Duration::from_millis(5);
const IDLE_MAX: Duration = Duration::from_millis(100);

/// Applies one batch; returns how many events it read (0: caught up).
///
/// # Errors
/// [`ProjectionError`]; nothing of the batch is kept.
pub async fn step(
    pool: &PgPool,
    projection: Projection,
    bus: &NoticeBus,
) -> Result<usize, ProjectionError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(projection.lock_key())
        .execute(&mut *tx)
        .await?;
    let from = checkpoint(&mut *tx, projection.name()).await?;
    let events = read_from(pool, from, BATCH).await?;
    let Some(last) = events.last().map(|e| e.position) else {
        tx.rollback().await?;
        return Ok(0);
    };
    let notices = projection.apply(&mut tx, &events, "").await?;
    save_checkpoint(&mut *tx, projection.name(), last).await?;
    tx.commit().await?;
    for n in notices {
        bus.publish(n).await;
    }
    if let Ok(h) = head(pool).await {
        metrics::gauge!("runledger_projection_lag_events", "projection" => projection.name())
            .set((h - last) as f64);
    }
    metrics::counter!("runledger_projection_events_total", "projection" => projection.name())
        .increment(events.len() as u64);
    Ok(events.len())
}

/// Runs `projection` until `shutdown`, waking early on `appended` (commits in this process).
pub async fn run(
    pool: PgPool,
    projection: Projection,
    bus: NoticeBus,
    appended: Option<std::sync::Arc<Notify>>,
    shutdown: CancellationToken,
) {
    let mut idle = IDLE_MIN;
    while !shutdown.is_cancelled() {
        match step(&pool, projection, &bus).await {
            Ok(0) => {
                let woken = async {
                    match &appended {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = woken => idle = IDLE_MIN,
                    () = tokio::time::sleep(idle) => idle = (idle * 2).min(IDLE_MAX),
                }
            }
            Ok(_) => idle = IDLE_MIN,
            Err(e) => {
                tracing::error!(message = "Projection batch failed; retrying.", projection = projection.name(), error = %e);
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
