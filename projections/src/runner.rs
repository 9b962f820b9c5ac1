//! Runs projections: one read of the log feeds them all; each projection's rows and its
//! checkpoint are written in the same transaction; then the notices are published.

use std::time::Duration;

use eventstore::{
    poison,
    reader::{begin_unflushed, checkpoints, head, read_from_conn, save_checkpoints},
};
use platform::notice::NoticeBus;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{Projection, ProjectionError, jobs::Warm};

const BATCH: i64 = 1_000;
const IDLE_MIN: Duration = Duration::from_millis(5);
const IDLE_MAX: Duration = Duration::from_millis(100);

/// Applies one batch to `projections` (each from its own checkpoint); returns how many
/// events it read (0: all caught up).
///
/// # Errors
/// [`ProjectionError`]; nothing of the batch is kept.
pub async fn step(
    pool: &PgPool,
    projections: &[Projection],
    bus: &NoticeBus,
    warm: &mut Warm,
) -> Result<usize, ProjectionError> {
    // Rows and checkpoints commit together: a crash that loses this commit loses both, and
    // the batch is applied again. So no need to wait for the WAL flush.
    let mut tx = begin_unflushed(pool).await?;
    // All locks in one statement, then all checkpoints in the next (whose snapshot is taken
    // once the locks are held): two round trips per batch, not two per projection.
    let keys: Vec<i64> = projections.iter().map(|p| p.lock_key()).collect();
    sqlx::query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) AS k")
        .bind(&keys)
        .execute(&mut *tx)
        .await?;
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    let stored = checkpoints(&mut *tx, &names).await?;
    let from: Vec<i64> = names
        .iter()
        .map(|n| stored.iter().find(|(s, _)| s == n).map_or(0, |(_, p)| *p))
        .collect();
    let start = from.iter().copied().min().unwrap_or(0);
    // In the batch's transaction, on its connection: its locks are held (which the writers
    // never take) and each statement reads the latest commits.
    let read = read_from_conn(&mut tx, start, BATCH).await?;
    let Some(last) = read.last().map(|e| e.position) else {
        tx.rollback().await?;
        return Ok(0);
    };
    let count = read.len();
    // Each traced event's span covers its batch's apply and commit; in position order, as
    // read, so a change finds its own by a binary search.
    let spans: Vec<(i64, platform::telemetry::StepSpan, Option<String>)> = read
        .iter()
        .filter_map(|e| {
            let span = platform::telemetry::event_span("projection.apply", e)?;
            let correlation = span.text_of("correlation_id").map(str::to_owned);
            Some((e.position, span, correlation))
        })
        .collect();
    let (events, poison) = poison::split_raw("projections", read);
    let mut notices = Vec::new();
    let mut jobs_applied = false;
    let mut applied = Vec::with_capacity(projections.len());
    for (p, cp) in projections.iter().zip(&from) {
        let newer = &events[events.partition_point(|e| e.position <= *cp)..];
        let skipped: Vec<_> = poison
            .iter()
            .filter(|(e, _)| e.position > *cp)
            .cloned()
            .collect();
        if newer.is_empty() && skipped.is_empty() {
            continue;
        }
        // Parked with the checkpoint: `runledger projections rebuild` reads them again.
        poison::park_pg(&mut *tx, p.name(), &skipped).await?;
        let rows = if *p == Projection::Jobs {
            warm.valid_at(*cp);
            jobs_applied = true;
            Some(&mut *warm)
        } else {
            None
        };
        notices.extend(p.apply(&mut tx, newer, "", rows).await?);
        applied.push(p.name());
        metrics::counter!("runledger_projection_events_total", "projection" => p.name())
            .increment(newer.len() as u64);
    }
    save_checkpoints(&mut *tx, &applied, last).await?;
    tx.commit().await?;
    if jobs_applied {
        warm.committed(last);
    }
    if !spans.is_empty() {
        for c in notices.iter_mut().flat_map(|n| n.changes.iter_mut()) {
            if let Ok(i) = spans.binary_search_by_key(&c.position, |s| s.0) {
                let (_, span, correlation) = &spans[i];
                c.traceparent = Some(span.traceparent());
                c.correlation_id.clone_from(correlation);
            }
        }
    }
    drop(spans);
    for n in notices {
        bus.publish(n).await;
    }
    // The lag is measured when a batch came back full, i.e. when there may be one.
    let lag = if count as i64 == BATCH {
        head(pool).await.map_or(0, |h| h - last)
    } else {
        0
    };
    for p in projections {
        metrics::gauge!("runledger_projection_lag_events", "projection" => p.name())
            .set(lag as f64);
    }
    Ok(count)
}

/// When `signal` (if any) is notified: commits in this process, or announced by others.
pub(crate) async fn woken(signal: Option<&Notify>) {
    match signal {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// Runs `projections` until `shutdown`, waking early on `appended` (commits in this process,
/// or announced by other processes: `platform::wake`).
pub async fn run(
    pool: PgPool,
    projections: Vec<Projection>,
    bus: NoticeBus,
    appended: Option<std::sync::Arc<Notify>>,
    shutdown: CancellationToken,
) {
    let mut idle = IDLE_MIN;
    let mut warm = Warm::default();
    while !shutdown.is_cancelled() {
        match step(&pool, &projections, &bus, &mut warm).await {
            Ok(0) => {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = woken(appended.as_deref()) => idle = IDLE_MIN,
                    () = tokio::time::sleep(idle) => idle = (idle * 2).min(IDLE_MAX),
                }
            }
            Ok(_) => idle = IDLE_MIN,
            Err(e) => {
                // Rows of a batch that did not commit may be held: start over.
                warm.clear();
                tracing::error!(message = "Projection batch failed; retrying.", error = %e);
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
