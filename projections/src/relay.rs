//! The relay: publishes every event, in global order, to a JetStream stream, with
//! `Nats-Msg-Id` = event id so a batch redone after a crash is deduplicated. NATS down:
//! commands go on; the relay retries with backoff and resumes from its checkpoint.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use eventstore::{EventStore, reader::RecordedEvent};
use tokio_util::sync::CancellationToken;

/// The checkpoint's name.
pub const CHECKPOINT: &str = "relay";
const BATCH: i64 = 500;

/// The stream's name for a subject prefix (`runledger.` → `runledger_EVENTS`).
pub fn stream_name(prefix: &str) -> String {
    format!("{}EVENTS", prefix.replace('.', "_"))
}

/// `<prefix>events.<aggregate_type>.<event_type>`.
pub fn subject(prefix: &str, e: &RecordedEvent) -> String {
    format!("{prefix}events.{}.{}", e.aggregate_type, e.event_type)
}

/// What a consumer of the stream receives: the event as stored, its payload inline (null
/// if it were not JSON). Written straight from the event: a `json!` tree parsed the payload
/// into values only to write them out again, a third of the relay's work per event.
pub fn message(e: &RecordedEvent) -> Vec<u8> {
    // Strings, numbers and JSON values only: writing them to memory cannot fail.
    serde_json::to_vec(&e.stored()).unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("nats: {0}")]
    Nats(String),
    #[error(transparent)]
    Store(#[from] eventstore::StoreError),
}

/// Publishes one batch after the checkpoint; returns how many events (0: caught up).
/// `saved`: the checkpoint this relay last stored, read from the database when `None` (at
/// start, and after a failed batch: another relay may have moved it).
async fn step(
    store: &EventStore,
    js: &jetstream::Context,
    prefix: &str,
    saved: &mut Option<i64>,
) -> Result<usize, RelayError> {
    let from = match saved.take() {
        Some(p) => p,
        None => store.checkpoint(CHECKPOINT).await?,
    };
    let events = store.read_from(from, BATCH).await?;
    let Some(last) = events.last().map(|e| e.position) else {
        *saved = Some(from);
        return Ok(0);
    };
    let mut acks = Vec::with_capacity(events.len());
    for e in &events {
        let msg = PublishMessage::build()
            .payload(message(e).into())
            .message_id(e.event_id.to_string());
        // Held open over the publish, not entered: nothing inside logs or starts a span.
        let _span = platform::telemetry::event_span("relay.publish", e);
        acks.push(
            js.send_publish(subject(prefix, e), msg)
                .await
                .map_err(|e| RelayError::Nats(e.to_string()))?,
        );
    }
    for ack in acks {
        ack.await.map_err(|e| RelayError::Nats(e.to_string()))?;
    }
    store.save_checkpoint(CHECKPOINT, last).await?;
    *saved = Some(last);
    // Only a full batch can leave a lag: a round trip per batch spared otherwise.
    let lag = if events.len() as i64 == BATCH {
        store.head().await.map_or(0, |h| h - last)
    } else {
        0
    };
    metrics::gauge!("runledger_relay_lag_events").set(lag as f64);
    metrics::counter!("runledger_relay_events_total").increment(events.len() as u64);
    Ok(events.len())
}

/// Creates the stream if needed; runs until `shutdown`. Caught up, it waits for `woken`
/// (commits announced by other processes, `platform::wake`) or 10 ms, whichever comes first.
pub async fn run(
    store: EventStore,
    client: async_nats::Client,
    prefix: String,
    woken: Option<std::sync::Arc<tokio::sync::Notify>>,
    shutdown: CancellationToken,
) {
    let js = jetstream::new(client);
    let mut backoff = Duration::from_millis(100);
    let mut stream_ready = false;
    let mut saved = None;
    while !shutdown.is_cancelled() {
        if !stream_ready {
            let config = stream::Config {
                name: stream_name(&prefix),
                subjects: vec![format!("{prefix}events.>")],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            };
            match js.get_or_create_stream(config).await {
                Ok(_) => stream_ready = true,
                Err(e) => {
                    tracing::warn!(message = "JetStream not ready; retrying.", error = %e);
                    wait(&shutdown, backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        match step(&store, &js, &prefix, &mut saved).await {
            Ok(0) => {
                tokio::select! {
                    () = crate::runner::woken(woken.as_deref()) => {}
                    () = wait(&shutdown, Duration::from_millis(10)) => {}
                }
            }
            Ok(_) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(message = "Relay batch failed; retrying from the checkpoint.", error = %e);
                wait(&shutdown, backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn wait(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use serde_json::Value;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn a_message_is_the_event_with_its_payload_inline() {
        let e = RecordedEvent {
            position: 7,
            event_id: Uuid::nil(),
            recorded_at: DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            aggregate_type: "job".into(),
            aggregate_id: "j-1".into(),
            sequence: 2,
            event_type: "JobSubmitted".into(),
            event_version: "1".into(),
            payload: r#"{"JobSubmitted":{"n":1.5,"s":"a\"b"}}"#.into(),
            metadata: r#"{"correlation_id":"c-1"}"#.into(),
        };
        let text = String::from_utf8(message(&e)).unwrap();
        assert_eq!(
            text,
            r#"{"position":7,"event_id":"00000000-0000-0000-0000-000000000000","recorded_at":"2026-12-07T10:00:00Z","aggregate_type":"job","aggregate_id":"j-1","sequence":2,"event_type":"JobSubmitted","event_version":"1","payload":{"JobSubmitted":{"n":1.5,"s":"a\"b"}},"metadata":{"correlation_id":"c-1"}}"#
        );
        let not_json = RecordedEvent {
            payload: "{".into(),
            ..e
        };
        let v: Value = serde_json::from_slice(&message(&not_json)).unwrap();
        assert!(v["payload"].is_null());
    }
}
