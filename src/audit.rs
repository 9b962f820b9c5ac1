//! `runledger audit replay`: a user's usage ledgers replayed from the raw events, month by
//! month, each hash chain verified and compared with the read model; a table, JSON or CSV.
//! Exit code 1 when any chain is broken or disagrees with the read model.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use base64::Engine;
use chrono::{DateTime, Datelike, Utc};
use clap::ValueEnum;
use eventstore::EventStore;
use platform::{settings::Settings, views::MemoryViews};
use read_api::{
    PgViews, ReadModels,
    audit::{month_start, replay_month},
    digest::{Digest, signed_by, signing_key},
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

/// The event store and read models: `DATABASE_URL`'s, else the data directory of
/// `runledger dev` (its read models folded in memory from the same log).
///
/// # Errors
/// When neither can be opened.
pub async fn open(
    s: &Settings,
    data_dir: &std::path::Path,
) -> anyhow::Result<(EventStore, Arc<dyn ReadModels>)> {
    Ok(match &s.database_url {
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
            let pool = platform::db::open_embedded(Some(data_dir)).await?;
            let store = EventStore::sqlite(pool);
            let views = Arc::new(MemoryViews::default());
            projections::memory::catch_up(&store, &views).await?;
            (store, views as Arc<dyn ReadModels>)
        }
    })
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
    digest: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let user = Uuid::parse_str(user).map_err(|_| anyhow::anyhow!("--user must be a UUID"))?;
    let months = months(from, to)?;
    let (store, views) = open(s, &data_dir).await?;
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
    let mut failed_digests = 0;
    if let Some(path) = digest {
        failed_digests = check_digest(s, &path, user, &months, &rows)?;
    }
    let bad = rows
        .iter()
        .filter(|r| r["chain_verified"] != true || r["matches_projection"] != true)
        .count();
    if bad > 0 {
        eprintln!("runledger: {bad} ledger(s) failed verification or disagree with the read model");
        return Ok(ExitCode::FAILURE);
    }
    if failed_digests > 0 {
        eprintln!("runledger: {failed_digests} ledger(s) differ from the signed digest");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the replayed `rows` against a digest file kept elsewhere: each of `user`'s signed
/// ledgers in those months must verify (signed by this deployment's key when one is set) and
/// match the replay's unit count and chain head. Prints a line per ledger; returns the
/// number that fail.
fn check_digest(
    s: &Settings,
    path: &std::path::Path,
    user: Uuid,
    months: &[DateTime<Utc>],
    rows: &[Value],
) -> anyhow::Result<usize> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let digest: Digest = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a runledger digest", path.display()))?;
    if let Ok(key) = signing_key(s.audit_key.as_ref()) {
        let ours = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes());
        anyhow::ensure!(
            ours == digest.public_key,
            "the digest is signed with another key than RUNLEDGER_AUDIT_SIGNING_KEY's"
        );
    }
    let last = months
        .last()
        .map(|m| domain::period::BillingPeriod::calendar_month(*m).end);
    let mut failed = 0;
    for d in digest.ledgers.iter().filter(|d| {
        d.user_id == user
            && months.first().is_some_and(|f| d.period_start >= *f)
            && last.is_some_and(|l| d.period_start < l)
    }) {
        let row = rows
            .iter()
            .find(|r| r["period_start"] == serde_json::json!(d.period_start));
        let verdict = if !signed_by(d, &digest.public_key) {
            "the signature does not verify".to_owned()
        } else if let Some(r) = row {
            let units = r["consumed"].as_u64();
            let head = r["chain_head"].as_str();
            if units != Some(d.units) {
                format!("{} units replayed, {} signed", r["consumed"], d.units)
            } else if head != Some(d.chain_head.as_str()) {
                "the chain head differs from the signed one".to_owned()
            } else {
                String::new()
            }
        } else {
            "the ledger is missing from the events".to_owned()
        };
        if verdict.is_empty() {
            println!(
                "digest: period from {} matches ({} units)",
                d.period_start, d.units
            );
        } else {
            failed += 1;
            println!("digest: period from {} FAILS: {verdict}", d.period_start);
        }
    }
    Ok(failed)
}

/// `runledger audit digest`: the signed digest of the ledgers starting in `month`, printed as
/// JSON (keep it somewhere the database's writers cannot reach).
///
/// # Errors
/// Without a signing key, a bad month, or a failing store.
pub async fn digest(
    s: &Settings,
    data_dir: PathBuf,
    month: &str,
    user: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let key = signing_key(s.audit_key.as_ref())
        .map_err(|_| anyhow::anyhow!("RUNLEDGER_AUDIT_SIGNING_KEY is required to sign digests"))?;
    let user = user
        .map(|u| Uuid::parse_str(u).map_err(|_| anyhow::anyhow!("--user must be a UUID")))
        .transpose()?;
    let (store, views) = open(s, &data_dir).await?;
    let d = read_api::digest::make(&store, views.as_ref(), &key, month, user, Utc::now()).await?;
    println!("{}", serde_json::to_string_pretty(&d)?);
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
