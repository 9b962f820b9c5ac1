//! `GET /v1/jobs/stream`: each change of the caller's jobs as an SSE event, live from change
//! notices, resumed after `Last-Event-ID` from the `job_changes` read model, without gap or
//! duplicate. A notice names the user's previous change; when that is not the last one this
//! stream sent (a notice was lost, or this stream fell behind), the gap is read from the
//! read model. Notices are at most once, so each stream also reads the read model every
//! heartbeat interval: a change reaches its open streams within that time even if every
//! notice is lost. Streams end when the server shuts down.

use std::{collections::HashMap, convert::Infallible, sync::Arc};

use axum::{
    extract::State,
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use futures::{Stream, StreamExt};
use platform::{
    auth::Principal,
    notice::{JobChange, Notice, NoticeBus},
    problem::Problem,
};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    state::{AppState, customer, internal},
    views::ReadModels,
};

/// Fans notices out to the streams of their user.
#[derive(Default)]
pub struct Hub {
    users: std::sync::Mutex<HashMap<Uuid, broadcast::Sender<Arc<Notice>>>>,
    /// Fires when the hub stops: streams end.
    closed: CancellationToken,
}

impl Hub {
    /// Subscribes to `bus` and starts dispatching.
    ///
    /// # Errors
    /// When the subscription fails.
    pub async fn start(
        bus: &NoticeBus,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, async_nats::SubscribeError> {
        let hub = Arc::new(Self::default());
        let mut notices = bus.subscribe().await?;
        let h = hub.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    n = notices.next() => match n {
                        Some(n) => h.dispatch(n),
                        None => break,
                    },
                }
            }
            // Dropping the senders ends every stream, so a graceful shutdown is not held
            // open by connected clients (they resume with Last-Event-ID elsewhere).
            if let Ok(mut users) = h.users.lock() {
                users.clear();
            }
            h.closed.cancel();
        });
        Ok(hub)
    }

    fn dispatch(&self, notice: Arc<Notice>) {
        let Ok(mut users) = self.users.lock() else {
            return;
        };
        let closed = users
            .get(&notice.user_id)
            .is_some_and(|tx| tx.send(notice.clone()).is_err());
        if closed {
            users.remove(&notice.user_id);
        }
    }

    fn subscribe(&self, user: Uuid) -> broadcast::Receiver<Arc<Notice>> {
        let mut users = match self.users.lock() {
            Ok(u) => u,
            Err(p) => p.into_inner(),
        };
        if users.len() > 1_024 {
            users.retain(|_, tx| tx.receiver_count() > 0);
        }
        users
            .entry(user)
            .or_insert_with(|| broadcast::channel(256).0)
            .subscribe()
    }

    /// Open streams, for the metric.
    pub fn streams(&self) -> usize {
        self.users.lock().map_or(0, |u| {
            u.values().map(broadcast::Sender::receiver_count).sum()
        })
    }
}

/// The SSE response.
///
/// # Errors
/// 400 on a bad `Last-Event-ID`, 403 for service roles.
pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let user = customer(principal)?;
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|p| *p >= 0)
                .ok_or_else(|| {
                    Problem::bad_request("Last-Event-ID must be a position this stream sent")
                })?,
        ),
        None => None,
    };
    // Subscribe before reading where to start, so no notice falls in between.
    let notices = state.hub.subscribe(user);
    let trimmed = match resume {
        Some(_) => state
            .views
            .trimmed_through()
            .await
            .map_err(|e| internal(&e))?,
        None => 0,
    };
    let (tx, rx) = mpsc::channel(64);
    let now = state
        .views
        .stream_position(user)
        .await
        .map_err(|e| internal(&e))?;
    let (start, backlog) = match resume {
        Some(p) if p >= trimmed && p <= now => (p, true),
        Some(p) => {
            // The changes after Last-Event-ID may be gone, or the id is beyond anything this
            // store holds (it was restored or reset): the client reloads its jobs, and the
            // stream goes on from now (the reset's id moves Last-Event-ID there).
            let data = if p > now {
                json!({"reason": "ahead-of-store", "position": now})
            } else {
                json!({"reason": "history-trimmed", "trimmed_through": trimmed})
            };
            let reset = Event::default()
                .id(now.to_string())
                .event("reset")
                .data(data.to_string());
            let _ = tx.try_send(reset);
            (now, false)
        }
        None => (now, false),
    };
    let poll = state.settings.sse_heartbeat;
    let closed = state.hub.closed.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = follow(state.views.clone(), user, start, backlog, notices, tx, poll) => {}
            () = closed.cancelled() => {}
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx).map(Ok)).keep_alive(
        KeepAlive::new()
            .interval(state.settings.sse_heartbeat)
            .text("heartbeat"),
    ))
}

fn event(c: &JobChange) -> Event {
    metrics::counter!("runledger_sse_events_sent_total").increment(1);
    Event::default()
        .id(c.position.to_string())
        .event("job")
        .data(
        json!({"id": c.id, "status": c.status, "attempts": c.attempts, "updated_at": c.updated_at})
            .to_string(),
    )
}

/// Sends `c`; in the job's trace when its notice carries one.
async fn send_traced(
    tx: &mpsc::Sender<Event>,
    user: Uuid,
    c: &JobChange,
) -> Result<(), mpsc::error::SendError<Event>> {
    let Some(tp) = c.traceparent.as_deref() else {
        return tx.send(event(c)).await;
    };
    let Some(span) = platform::telemetry::step_span("sse.send", Some(tp)) else {
        return tx.send(event(c)).await;
    };
    // Ids written on the stack: no formatting machinery per event.
    let (mut job, mut owner) = (Uuid::encode_buffer(), Uuid::encode_buffer());
    let span = span
        .text("job_id", c.id.hyphenated().encode_lower(&mut job))
        .text("correlation_id", c.correlation_id.as_deref().unwrap_or(""))
        .text("user_id", user.hyphenated().encode_lower(&mut owner))
        .text("status", &c.status)
        .int("position", c.position);
    // Open over the send: it ends when the event is handed to the connection.
    let sent = tx.send(event(c)).await;
    drop(span);
    sent
}

/// Feeds one connection until it closes.
async fn follow(
    views: Arc<dyn ReadModels>,
    user: Uuid,
    mut last: i64,
    backlog: bool,
    mut notices: broadcast::Receiver<Arc<Notice>>,
    tx: mpsc::Sender<Event>,
    poll: std::time::Duration,
) {
    if backlog {
        match catch_up(views.as_ref(), user, last, &tx).await {
            Some(p) => last = p,
            None => return,
        }
    }
    // Users poll at their own phase, so many streams do not read at once.
    let phase = poll.mul_f64((user.as_u128() % 1_000) as f64 / 1_000.0);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + poll + phase, poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            () = tx.closed() => return,
            r = notices.recv() => Some(r),
            _ = ticks.tick() => None,
        };
        let Some(received) = received else {
            // Whatever the notices missed.
            match catch_up(views.as_ref(), user, last, &tx).await {
                Some(p) => last = p,
                None => return,
            }
            continue;
        };
        let caught_up = match received {
            Ok(n) if n.prev <= last => {
                for c in &n.changes {
                    if c.position <= last {
                        continue;
                    }
                    if send_traced(&tx, user, c).await.is_err() {
                        return;
                    }
                    last = c.position;
                }
                Some(last)
            }
            // A notice was missed, or this stream fell behind: read the gap.
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                catch_up(views.as_ref(), user, last, &tx).await
            }
            Err(broadcast::error::RecvError::Closed) => None,
        };
        match caught_up {
            Some(p) => last = p,
            None => return,
        }
    }
}

/// Sends every change after `from` from the read model; returns the last position sent, or
/// `None` when the connection is gone or the database failed.
async fn catch_up(
    views: &dyn ReadModels,
    user: Uuid,
    mut from: i64,
    tx: &mpsc::Sender<Event>,
) -> Option<i64> {
    loop {
        let changes = match views.changes_after(user, from, 500).await {
            Ok(r) => r,
            Err(e) => {
                let _ = internal(&e);
                return None;
            }
        };
        let n = changes.len();
        for change in changes {
            tx.send(event(&change)).await.ok()?;
            from = change.position;
        }
        if n < 500 {
            return Some(from);
        }
    }
}
