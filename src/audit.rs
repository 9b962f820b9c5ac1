//! `runledger audit replay`: a user's usage ledgers replayed from the raw events, month by
//! month, each hash chain verified and compared with the read model; a table, JSON or CSV.
//! Exit code 1 when any chain is broken or disagrees with the read model.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use chrono::{DateTime, Datelike, Utc};
use clap::ValueEnum;
use platform::{settings::Settings, store::EventStore, views::MemoryViews};
use read_api::{
    PgViews, ReadModels,
    audit::{month_start, replay_month},
};
use serde_json::Value;
use uuid::Uuid;

/// How the result is printed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
    /// Comma-separated values with a header.
    Csv,
}

/// Replays `user`'s months `from..=to` (`YYYY-MM`) from `DATABASE_URL`, else from the data
/// directory of `runledger dev`.
pub async fn replay(
    s: &Settings,
    data_dir: PathBuf,
    user: &str,
    from: &str,
    to: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let user = Uuid::parse_str(user).map_err(|_| anyhow::anyhow!("--user must be a UUID"))?;
    let months = months(from, to)?;
    let (store, views): (EventStore, Arc<dyn ReadModels>) = match &s.database_url {
        Some(url) => {
            let pool = platform::db::connect(url, 4).await?;
            (EventStore::new(pool.clone()), Arc::new(PgViews(pool)))
        }
        None => {
            if !data_dir.join("events.db").is_file() {
                anyhow::bail!(
                    "no runledger data in {} (set DATABASE_URL, or --data-dir)",
                    data_dir.display()
                );
            }
            let pool = platform::db::open_embedded(Some(&data_dir)).await?;
            let store = EventStore::sqlite(pool);
            // The embedded read models live in memory: fold them here from the same log.
            let views = Arc::new(MemoryViews::default());
            projections::memory::catch_up(&store, &views).await?;
            (store, views as Arc<dyn ReadModels>)
        }
    };
    let mut rows = Vec::new();
    for (i, start) in months.iter().enumerate() {
        if months.len() > 12 {
            eprint!("\raudit: {}/{} months", i + 1, months.len());
        }
        rows.extend(replay_month(&store, views.as_ref(), user, *start).await?);
    }
    if months.len() > 12 {
        eprintln!();
    }
    print(&rows, format);
    let bad = rows
        .iter()
        .filter(|r| r["chain_verified"] != true || r["matches_projection"] != true)
        .count();
    if bad > 0 {
        eprintln!("runledger: {bad} ledger(s) failed verification or disagree with the read model");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The first instants of the months `from..=to`.
fn months(from: &str, to: &str) -> anyhow::Result<Vec<DateTime<Utc>>> {
    let first = month_start(from).context("--from must be YYYY-MM")?;
    let last = month_start(to).context("--to must be YYYY-MM")?;
    anyhow::ensure!(first <= last, "--from must not be after --to");
    let mut out = Vec::new();
    let mut at = first;
    while at <= last {
        anyhow::ensure!(out.len() < 240, "at most 240 months at once");
        out.push(at);
        at = domain::period::BillingPeriod::calendar_month(at).end;
    }
    Ok(out)
}

const COLUMNS: [&str; 8] = [
    "period_start",
    "events",
    "consumed",
    "released",
    "reserved",
    "chain_verified",
    "matches_projection",
    "chain_head",
];

fn cell(row: &Value, column: &str) -> String {
    match &row[column] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn print(rows: &[Value], format: Format) {
    match format {
        Format::Json => println!("{}", Value::Array(rows.to_vec())),
        Format::Csv => {
            println!("{}", COLUMNS.join(","));
            for r in rows {
                let cells: Vec<String> = COLUMNS.iter().map(|c| cell(r, c)).collect();
                println!("{}", cells.join(","));
            }
        }
        Format::Table => {
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| COLUMNS.iter().map(|c| cell(r, c)).collect())
                .collect();
            let widths: Vec<usize> = COLUMNS
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    table
                        .iter()
                        .map(|r| r[i].len())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            };
            println!(
                "{}",
                line(COLUMNS.iter().map(|c| (*c).to_owned()).collect())
            );
            for r in table {
                println!("{}", line(r));
            }
            for r in rows.iter().filter(|r| !r["chain_break"].is_null()) {
                println!(
                    "chain broken in the period from {}: unit {} ({})",
                    cell(r, "period_start"),
                    r["chain_break"]["index"],
                    cell(&r["chain_break"], "reason")
                );
            }
        }
    }
}

/// The current month, `YYYY-MM`.
pub fn this_month() -> String {
    let now = Utc::now();
    format!("{:04}-{:02}", now.year(), now.month())
}
