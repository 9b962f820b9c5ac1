//! `runledger billing`: the billing role (usage reported to Stripe on a schedule, the month
//! reconciled after each report, `/metrics`), and its one-shot `report` and `reconcile`.

use std::{path::Path, process::ExitCode};

use anyhow::Context;
use chrono::{DateTime, Datelike, Utc};
use clap::ValueEnum;
use command_api::billing::{report, stripe::Api};
use domain::{period::BillingPeriod, plan::Plan, subscription::Subscription, usage::Usage};
use eventstore::EventStore;
use platform::settings::Settings;
use read_api::{
    ReadModels,
    audit::{ledgers_starting_in, month_start, replay_month},
};
use serde::Serialize;
use uuid::Uuid;

use crate::audit::open;

/// How the reconciliation is printed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
}

/// `runledger billing report`.
pub async fn report(s: &Settings, data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let b = s.require_billing()?;
    let (store, _) = open(s, data_dir).await?;
    let api = Api::new(b)?;
    let started = std::time::Instant::now();
    let summary = report::run(&store, &api, &b.meter_event_name, Utc::now()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        for l in &summary.lines {
            println!(
                "{}  {}  {:<7}  {:>6}  {}",
                l.user_id,
                l.period_start.to_rfc3339(),
                l.outcome,
                l.units,
                l.reason.as_deref().unwrap_or("")
            );
        }
        println!(
            "billing report: {} ledgers ({} paid), {} units sent in {} Stripe calls, {:.2} s",
            summary.ledgers,
            summary.paid_ledgers,
            summary.units_sent,
            summary.stripe_calls,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(if summary.has_failures() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One ledger, three ways.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The user.
    pub user_id: Uuid,
    /// The period.
    pub period_start: DateTime<Utc>,
    /// Its end.
    pub period_end: DateTime<Utc>,
    /// The ledger's plan.
    pub plan: Plan,
    /// Units replayed from the raw events.
    pub replayed: u64,
    /// Units the usage projection holds (`None`: no row).
    pub projected: Option<u64>,
    /// Units recorded as reported to Stripe.
    pub reported: u64,
    /// Units Stripe's meter holds for the customer in the period (`None`: no customer).
    pub stripe: Option<u64>,
    /// What disagrees: `projection`, `stripe`, `unreported`.
    pub differences: Vec<&'static str>,
}

/// Reconciles the ledgers starting in `month` as of `now`.
///
/// # Errors
/// Store, read-model or Stripe failures (a Stripe failure is an error, not a difference).
pub async fn rows(
    store: &EventStore,
    views: &dyn ReadModels,
    api: &Api,
    event_name: &str,
    month: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Row>> {
    let start = month_start(month).context("--period must be YYYY-MM")?;
    // Ledgers are found in the raw events, as the audit does.
    let ledgers = ledgers_starting_in(store, start, None).await?;
    let mut meter = None;
    let mut out = Vec::new();
    for (user, ids) in ledgers {
        let replay = replay_month(store, views, user, start).await?;
        let sub = store
            .load_fresh::<Subscription>(&user.to_string())
            .await?
            .state;
        for (period_start, id) in ids {
            let ledger = store.load_fresh::<Usage>(&id).await?;
            let Some(state) = ledger.state.state() else {
                continue;
            };
            let row = replay
                .iter()
                .find(|r| r["period_start"] == serde_json::json!(period_start));
            let replayed = row.and_then(|r| r["consumed"].as_u64()).unwrap_or(0);
            let projected = row.and_then(|r| r["projection"]["consumed"].as_u64());
            let reported = sub.reported(period_start);
            let stripe = match sub.customer_id() {
                Some(c) => {
                    if meter.is_none() {
                        meter = Some(api.meter_id(event_name).await?);
                    }
                    let m = meter.as_deref().unwrap_or_default();
                    Some(api.metered_units(m, c.as_str(), &state.period).await?)
                }
                None => None,
            };
            let mut differences = Vec::new();
            if projected != Some(replayed) {
                differences.push("projection");
            }
            // Stripe must hold what was recorded as sent, and never more than was consumed.
            let held = stripe.unwrap_or(0);
            if held != reported || held > replayed {
                differences.push("stripe");
            }
            if state.plan != Plan::Free && state.period.end <= now && reported < replayed {
                differences.push("unreported");
            }
            out.push(Row {
                user_id: user,
                period_start,
                period_end: state.period.end,
                plan: state.plan,
                replayed,
                projected,
                reported,
                stripe,
                differences,
            });
        }
    }
    Ok(out)
}

fn print(rows: &[Row], format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        Format::Table => {
            println!(
                "{:<36}  {:<25}  {:<10}  {:>8}  {:>9}  {:>8}  {:>6}  differences",
                "user_id", "period_start", "plan", "replayed", "projected", "reported", "stripe"
            );
            let dash = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
            for r in rows {
                println!(
                    "{:<36}  {:<25}  {:<10}  {:>8}  {:>9}  {:>8}  {:>6}  {}",
                    r.user_id,
                    r.period_start.to_rfc3339(),
                    r.plan.as_str(),
                    r.replayed,
                    dash(r.projected),
                    r.reported,
                    dash(r.stripe),
                    if r.differences.is_empty() {
                        "-".to_owned()
                    } else {
                        r.differences.join(",")
                    }
                );
            }
        }
    }
    Ok(())
}

/// `runledger billing reconcile --period YYYY-MM`.
pub async fn reconcile(
    s: &Settings,
    data_dir: &Path,
    month: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let b = s.require_billing()?;
    let (store, views) = open(s, data_dir).await?;
    let api = Api::new(b)?;
    let rows = rows(
        &store,
        views.as_ref(),
        &api,
        &b.meter_event_name,
        month,
        Utc::now(),
    )
    .await?;
    print(&rows, format)?;
    let differing = rows.iter().filter(|r| !r.differences.is_empty()).count();
    if differing > 0 {
        eprintln!("runledger: {differing} ledger(s) differ");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn month_of(at: DateTime<Utc>) -> String {
    format!("{:04}-{:02}", at.year(), at.month())
}

/// The billing role: every `RUNLEDGER_BILLING_REPORT_SECS`, report, then reconcile this
/// month and the last; `runledger_billing_reconcile_differences` on `/metrics`.
pub async fn role(s: Settings, migrate: bool) -> anyhow::Result<ExitCode> {
    s.init_telemetry("billing");
    platform::metrics::handle();
    let b = s.require_billing()?.clone();
    crate::roles::schema(&s, migrate).await?;
    let pool = platform::db::connect(s.require_database()?, s.db_max_connections).await?;
    let store = EventStore::new(pool.clone());
    let views = read_api::PgViews(pool);
    let api = Api::new(&b)?;
    let shutdown = platform::shutdown::on_signal();
    let listener = tokio::net::TcpListener::bind(s.addr)
        .await
        .with_context(|| format!("cannot listen on {}", s.addr))?;
    tokio::spawn(platform::metrics::serve(listener, shutdown.clone()));
    tracing::info!(
        message = "Billing role running.",
        every_secs = b.report_every.as_secs()
    );
    loop {
        let now = Utc::now();
        match report::run(&store, &api, &b.meter_event_name, now).await {
            Ok(sum) => {
                metrics::counter!("runledger_billing_units_reported_total")
                    .increment(sum.units_sent);
                let failed = sum.lines.iter().filter(|l| l.outcome != "sent").count();
                metrics::gauge!("runledger_billing_report_unsent").set(failed as f64);
                tracing::info!(
                    message = "Usage reported.",
                    units = sum.units_sent,
                    calls = sum.stripe_calls,
                    unsent = failed
                );
            }
            Err(e) => tracing::error!(message = "Billing report failed.", error = %e),
        }
        let last_month = BillingPeriod::calendar_month(
            BillingPeriod::calendar_month(now).start - chrono::Duration::days(1),
        )
        .start;
        let mut differences = 0usize;
        for month in [month_of(last_month), month_of(now)] {
            match rows(&store, &views, &api, &b.meter_event_name, &month, now).await {
                Ok(r) => differences += r.iter().filter(|r| !r.differences.is_empty()).count(),
                Err(e) => {
                    tracing::error!(message = "Reconciliation failed.", month = %month, error = %e)
                }
            }
        }
        metrics::gauge!("runledger_billing_reconcile_differences").set(differences as f64);
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(b.report_every) => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}
