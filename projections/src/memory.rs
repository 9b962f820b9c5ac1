//! The projections folded into in-memory tables ([`MemoryViews`]) for the embedded default:
//! the same job, usage and subscription rules as the Postgres tables, read from the log
//! from position 0 at start, then live; each batch's change notices are published after it.

use std::{sync::Arc, time::Duration};

use domain::subscription::SubscriptionEvent;
use eventstore::{EventStore, reader::RecordedEvent};
use platform::{
    notice::{Notice, NoticeBus},
    views::{MemoryViews, SubscriptionView, Tables, UsageView},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{ProjectionError, jobs, subscriptions, usage};

const BATCH: i64 = 2_000;

/// The consumer name the in-memory projections park under.
pub const CONSUMER: &str = "projections";

/// Applies `events` (all after the tables' position, none unreadable) to `views` and moves
/// them to `last`; returns the notices.
///
/// # Errors
/// An event that does not decode; nothing of the batch is applied.
pub fn apply(
    views: &MemoryViews,
    events: &[RecordedEvent],
    last: i64,
) -> Result<Vec<Notice>, ProjectionError> {
    let usage = usage::deltas(events)?;
    let decoded_jobs: Vec<DecodedJob<'_>> = crate::decode(events, "job")?;
    let subs: Vec<(_, Uuid, SubscriptionEvent)> = crate::decode(events, "subscription")?;
    Ok(views.write(|t| {
        let notices = apply_jobs(t, decoded_jobs);
        for ((user, start), d) in usage {
            let row = t.usage.entry((user, start)).or_insert_with(|| UsageView {
                period_start: start,
                period_end: d.period_end.unwrap_or(start),
                plan: d.plan.clone().unwrap_or_else(|| "FREE".into()),
                unit_limit: d.limit.flatten(),
                reserved: 0,
                consumed: 0,
                released: 0,
                chain_head: "0".repeat(64),
                closed: false,
            });
            if let Some(end) = d.period_end {
                row.period_end = end;
            }
            if let Some(plan) = d.plan {
                row.plan = plan;
            }
            if let Some(limit) = d.limit {
                row.unit_limit = limit;
            }
            row.reserved += d.reserved;
            row.consumed += d.consumed;
            row.released += d.released;
            if let Some(h) = d.chain_head {
                row.chain_head = h;
            }
            row.closed |= d.closed;
        }
        for (_, user, event) in subs {
            apply_subscription(t, user, event);
        }
        t.position = last;
        notices
    }))
}

type DecodedJob<'a> = (&'a RecordedEvent, Uuid, domain::job::JobEvent);

fn apply_jobs(t: &mut Tables, decoded: Vec<DecodedJob<'_>>) -> Vec<Notice> {
    let mut notices: Vec<Notice> = Vec::new();
    for (e, id, event) in decoded {
        let Some((user, change)) = jobs::evolve(&mut t.jobs, e, id, &event) else {
            continue;
        };
        if let Some(j) = t.jobs.get(&id) {
            t.by_user
                .entry(user)
                .or_default()
                .insert((j.created_at, id));
        }
        let prev = t.streams.insert(user, change.position).unwrap_or(0);
        t.changes
            .entry(user)
            .or_default()
            .insert(change.position, change.clone());
        match notices.iter_mut().find(|n| n.user_id == user) {
            Some(n) => n.changes.push(change),
            None => notices.push(Notice {
                user_id: user,
                prev,
                changes: vec![change],
            }),
        }
    }
    notices
}

fn apply_subscription(t: &mut Tables, user: Uuid, event: SubscriptionEvent) {
    match event {
        SubscriptionEvent::SubscriptionChanged(c) => {
            t.customers
                .entry(user)
                .or_insert_with(|| c.customer_id.as_str().to_owned());
            t.subscriptions.insert(
                user,
                SubscriptionView {
                    plan: c.plan.as_str().to_owned(),
                    status: subscriptions::status(c.status).to_owned(),
                    period_start: c.period.start,
                    period_end: c.period.end,
                },
            );
        }
        SubscriptionEvent::SubscriptionEnded(_) => {
            if let Some(s) = t.subscriptions.get_mut(&user) {
                s.status = "ended".into();
            }
        }
        SubscriptionEvent::InvoicePaid(p) => {
            if let Some(s) = t
                .subscriptions
                .get_mut(&user)
                .filter(|s| s.status != "ended")
            {
                s.status = "active".into();
                if p.period.start >= s.period_start {
                    s.period_end = p.period.end;
                }
                s.period_start = s.period_start.max(p.period.start);
            }
        }
        SubscriptionEvent::PaymentFailed(_) => {
            if let Some(s) = t
                .subscriptions
                .get_mut(&user)
                .filter(|s| s.status != "ended")
            {
                s.status = "past_due".into();
            }
        }
        SubscriptionEvent::CustomerLinked(l) => {
            t.customers.insert(user, l.customer_id.as_str().to_owned());
        }
        SubscriptionEvent::StripeEventSkipped(_)
        | SubscriptionEvent::UsageReportBegun(_)
        | SubscriptionEvent::UsageReported(_) => {}
    }
}

/// Folds the log into `views` until `shutdown`, waking on the store's commits.
pub async fn run(
    store: EventStore,
    views: Arc<MemoryViews>,
    bus: NoticeBus,
    shutdown: CancellationToken,
) {
    let appended = store.appended().clone();
    while !shutdown.is_cancelled() {
        // Armed before reading, so a commit during the read is not missed.
        let woken = appended.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let read = match next_batch(&store, &views).await {
            Ok(n) => {
                for n in n.1 {
                    bus.publish(n).await;
                }
                n.0
            }
            Err(e) => {
                tracing::error!(message = "Projection batch failed; retrying.", error = %e);
                0
            }
        };
        if read == 0 {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = woken => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

/// Folds the whole log into `views` (at start, before serving).
///
/// # Errors
/// Database errors, or an event that does not decode.
pub async fn catch_up(store: &EventStore, views: &MemoryViews) -> Result<i64, ProjectionError> {
    // Every event is read again: what was parked and reads now is applied, what still does
    // not is parked again.
    if views.position() == 0 {
        let parked: Vec<i64> = store
            .parked(Some(CONSUMER))
            .await?
            .iter()
            .map(|p| p.position)
            .collect();
        store.unpark_all(CONSUMER, &parked).await?;
    }
    while next_batch(store, views).await?.0 > 0 {}
    Ok(views.position())
}

/// Reads and applies the next batch, parking what cannot be read; returns how many events
/// it read, and the notices.
async fn next_batch(
    store: &EventStore,
    views: &MemoryViews,
) -> Result<(usize, Vec<Notice>), ProjectionError> {
    let read = store.read_from(views.position(), BATCH).await?;
    let Some(last) = read.last().map(|e| e.position) else {
        return Ok((0, vec![]));
    };
    let count = read.len();
    let (events, poison) = eventstore::poison::split_raw(CONSUMER, read);
    store.park(CONSUMER, &poison).await?;
    Ok((count, apply(views, &events, last)?))
}

/// Drops the in-memory changes older than `keep` every minute until `shutdown`.
pub async fn trim_every(views: Arc<MemoryViews>, keep: Duration, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let cutoff =
            chrono::Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        views.trim(cutoff);
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}
