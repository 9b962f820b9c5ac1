//! The relay: publishes every event, in global order, to a JetStream stream, with
//! `Nats-Msg-Id` = event id so a batch redone after a crash is deduplicated. NATS down:
//! commands go on; the relay retries with backoff and resumes from its checkpoint.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use eventstore::{EventStore, reader::RecordedEvent};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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

/// What a consumer of the stream receives.
pub fn message(e: &RecordedEvent) -> serde_json::Value {
    json!({
        "position": e.position,
        "event_id": e.event_id,
        "recorded_at": e.recorded_at,
        "aggregate_type": e.aggregate_type,
        "aggregate_id": e.aggregate_id,
        "sequence": e.sequence,
        "event_type": e.event_type,
        "event_version": e.event_version,
        "payload": serde_json::value::RawValue::from_string(e.payload.clone()).ok(),
        "metadata": e.metadata,
    })
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
async fn step(
    store: &EventStore,
    js: &jetstream::Context,
    prefix: &str,
) -> Result<usize, RelayError> {
    let from = store.checkpoint(CHECKPOINT).await?;
    let events = store.read_from(from, BATCH).await?;
    let Some(last) = events.last().map(|e| e.position) else {
        return Ok(0);
    };
    let mut acks = Vec::with_capacity(events.len());
    for e in &events {
        let msg = PublishMessage::build()
            .payload(message(e).to_string().into())
            .message_id(e.event_id.to_string());
        let span =
            platform::telemetry::event_span("relay.publish", e).unwrap_or_else(tracing::Span::none);
        acks.push(
            js.send_publish(subject(prefix, e), msg)
                .instrument(span)
                .await
                .map_err(|e| RelayError::Nats(e.to_string()))?,
        );
    }
    for ack in acks {
        ack.await.map_err(|e| RelayError::Nats(e.to_string()))?;
    }
    store.save_checkpoint(CHECKPOINT, last).await?;
    if let Ok(h) = store.head().await {
        metrics::gauge!("runledger_relay_lag_events").set((h - last) as f64);
    }
    metrics::counter!("runledger_relay_events_total").increment(events.len() as u64);
    Ok(events.len())
}

/// Creates the stream if needed; runs until `shutdown`.
pub async fn run(
    store: EventStore,
    client: async_nats::Client,
    prefix: String,
    shutdown: CancellationToken,
) {
    let js = jetstream::new(client);
    let mut backoff = Duration::from_millis(100);
    let mut stream_ready = false;
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
        match step(&store, &js, &prefix).await {
            Ok(0) => wait(&shutdown, Duration::from_millis(10)).await,
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
