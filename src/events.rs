//! `runledger events parked | retry`: the events a consumer could not read and skipped
//! (ADR 0007), from `DATABASE_URL` or the data directory of `runledger dev`.

use std::{path::Path, process::ExitCode};

use eventstore::EventStore;
use platform::settings::Settings;

/// The store the command reads: Postgres, else the dev data directory.
async fn open(s: &Settings, data_dir: &Path) -> anyhow::Result<EventStore> {
    match &s.database_url {
        Some(url) => Ok(EventStore::new(platform::db::connect(url, 2).await?)),
        None => {
            if !data_dir.join("events.db").is_file() {
                anyhow::bail!(
                    "no runledger data in {} (set DATABASE_URL, or --data-dir)",
                    data_dir.display()
                );
            }
            Ok(EventStore::sqlite(
                platform::db::open_embedded(Some(data_dir)).await?,
            ))
        }
    }
}

/// Lists the parked events (of `consumer`); `json`: one JSON document.
pub async fn parked(
    s: &Settings,
    data_dir: &Path,
    consumer: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = open(s, data_dir).await?;
    let parked = store.parked(consumer).await?;
    if json {
        println!("{}", serde_json::to_string(&parked)?);
        return Ok(ExitCode::SUCCESS);
    }
    if parked.is_empty() {
        println!("no parked events");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:>10} {:<13} {:<20} {:<8} error",
        "consumer", "position", "aggregate", "event_type", "retry"
    );
    for p in &parked {
        println!(
            "{:<16} {:>10} {:<13} {:<20} {:<8} {}",
            p.consumer, p.position, p.aggregate_type, p.event_type, p.retry, p.error
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks for another try at the parked events (of `consumer`).
pub async fn retry(
    s: &Settings,
    data_dir: &Path,
    consumer: Option<&str>,
) -> anyhow::Result<ExitCode> {
    if let Some(name) = consumer.filter(|c| ["jobs", "usage", "subscriptions"].contains(c)) {
        anyhow::bail!(
            "a projection reads its parked events again when rebuilt: runledger projections rebuild {name}"
        );
    }
    if consumer == Some(projections::memory::CONSUMER) {
        anyhow::bail!("runledger dev reads its parked events again at its next start");
    }
    let store = open(s, data_dir).await?;
    let asked = store.ask_retry(consumer).await?;
    println!(
        "{asked} parked event(s) marked for another try; the process manager and the \
         dispatcher take them within seconds (projections: rebuild them)"
    );
    Ok(ExitCode::SUCCESS)
}
