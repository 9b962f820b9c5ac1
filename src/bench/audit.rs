//! `runledger bench audit`: seeds a scratch database (created beside DATABASE_URL's) with one
//! heavy user's ledger, every unit a real link of the hash chain, then times the audit's
//! replay of it from the raw events (read, decoded, chain verified, compared).

use std::{process::ExitCode, sync::Arc, time::Instant};

use anyhow::Context;
use chrono::{Duration, Utc};
use domain::{
    ids::{JobId, UserId},
    period::BillingPeriod,
    plan::Plan,
    usage::{UnitConsumed, UnitReserved, UsageEvent, UsageKey, unit_hash},
};
use eventstore::EventStore;
use platform::{
    settings::{Secret, Settings},
    views::MemoryViews,
};

pub async fn run(settings: &Settings, events: u64) -> anyhow::Result<ExitCode> {
    super::in_scratch_db(settings, "runledger_bench_audit", |url| async move {
        seed_and_replay(&url, events).await
    })
    .await
}

async fn seed_and_replay(url: &str, events: u64) -> anyhow::Result<ExitCode> {
    let pool = platform::db::connect(&Secret::new(url), 4).await?;
    platform::db::migrate(&pool).await?;
    let user = UserId::from_uuid(uuid::Uuid::new_v4());
    let period = BillingPeriod::calendar_month(Utc::now());
    let id = UsageKey::new(user, &period).aggregate_id();
    let units = (events / 2).max(1);
    let seeding = Instant::now();
    // Each job: reserved, then consumed as the next link of the chain.
    let mut prev = domain::chain::GENESIS.to_owned();
    let mut batch: Vec<(i64, &'static str, String)> = Vec::with_capacity(20_000);
    let mut sequence = 0i64;
    for n in 1..=units {
        let job_id = JobId::from_uuid(uuid::Uuid::from_u128(u128::from(n)));
        let at = period.start + Duration::milliseconds(i64::try_from(n).unwrap_or(0));
        let reserved = UsageEvent::from(UnitReserved {
            job_id,
            user_id: user,
            period,
            plan: Plan::Enterprise,
            limit: None,
            reserved_at: at,
        });
        let mut unit = UnitConsumed {
            user_id: user,
            period_start: period.start,
            job_id,
            unit: n,
            consumed_at: at,
            prev_hash: prev.clone(),
            hash: String::new(),
        };
        unit.hash = unit_hash(&unit);
        prev = unit.hash.clone();
        for (kind, e) in [("UnitReserved", reserved), ("UnitConsumed", unit.into())] {
            sequence += 1;
            batch.push((sequence, kind, serde_json::to_string(&e)?));
        }
        if batch.len() >= 20_000 || n == units {
            insert(&pool, &id, &batch).await?;
            batch.clear();
            eprint!("\r  seeding: {}%", n * 100 / units);
        }
    }
    eprintln!();
    println!(
        "bench audit: seeded {sequence} events (one user, one ledger, {units} units) in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    let store = EventStore::new(pool.clone());
    let views = Arc::new(MemoryViews::default());
    let reading = Instant::now();
    let read = store.payloads_of("usage", &id, "UnitConsumed").await?.len();
    let reading = reading.elapsed().as_secs_f64();
    let started = Instant::now();
    let rows =
        read_api::audit::replay_month(&store, views.as_ref(), user.as_uuid(), period.start).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let row = rows.first().context("no ledger replayed")?;
    println!(
        "  replayed, verified {} events in {elapsed:.2} s",
        row["events"]
    );
    println!(
        "  rate               {:.0} events/s",
        sequence as f64 / elapsed.max(1e-9)
    );
    println!("  reading alone      {read} events in {reading:.2} s");
    println!("  chain verified     {}", row["chain_verified"]);
    println!("  units              {}", row["consumed"]);
    pool.close().await;
    Ok(
        if row["chain_verified"] == true && row["consumed"].as_u64() == Some(units) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

async fn insert(
    pool: &sqlx::PgPool,
    id: &str,
    batch: &[(i64, &'static str, String)],
) -> anyhow::Result<()> {
    let seqs: Vec<i64> = batch.iter().map(|b| b.0).collect();
    let kinds: Vec<&str> = batch.iter().map(|b| b.1).collect();
    let payloads: Vec<&str> = batch.iter().map(|b| b.2.as_str()).collect();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT 'usage', $1, s, k, '1', p::json, '{}'::json FROM unnest($2::bigint[], $3::text[], $4::text[]) AS t(s, k, p)",
    )
    .bind(id)
    .bind(&seqs)
    .bind(&kinds)
    .bind(&payloads)
    .execute(pool)
    .await?;
    Ok(())
}
