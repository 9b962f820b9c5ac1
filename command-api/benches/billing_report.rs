//! `cargo bench -p command-api --bench billing_report`: `billing report` over 10,000 paid
//! users (each a linked Stripe customer and a PRO ledger of 3 units), against the fake
//! Stripe, on a fresh Postgres database. Prints the time and the Stripe calls made, then the
//! same for a second run that has nothing left to send.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use chrono::{Duration, Utc};
use command_api::billing::{report, stripe::Api};
use domain::{
    Decider,
    ids::{JobId, StripeObjectId, UserId},
    period::BillingPeriod,
    plan::Plan,
    subscription::{CustomerLinked, SubscriptionEvent},
    usage::{CommitUnit, ReserveUnit, Usage, UsageCommand, UsageEvent, UsageKey},
};
use eventstore::EventStore;
use platform::{settings::Settings, stripe_fake::FakeStripe, testing::TestDb};

const USERS: usize = 10_000;
const UNITS: u128 = 3;

#[tokio::main]
async fn main() {
    platform::install_crypto();
    let users: usize = std::env::var("BENCH_USERS")
        .ok()
        .and_then(|u| u.parse().ok())
        .unwrap_or(USERS);
    let db = TestDb::create().await;
    let fake = FakeStripe::start("runledger_jobs").await;
    let now = Utc::now();
    let period = BillingPeriod::new(now - Duration::days(2), now + Duration::days(28)).unwrap();
    let seeding = Instant::now();
    let mut rows: Vec<(String, String, i64, String, String)> = Vec::new();
    for u in 0..users {
        let user = UserId::from_uuid(uuid::Uuid::new_v4());
        let linked = SubscriptionEvent::from(CustomerLinked {
            user_id: user,
            customer_id: StripeObjectId::parse(&format!("cus_bench_{u}")).unwrap(),
        });
        rows.push((
            "subscription".into(),
            user.to_string(),
            1,
            linked.event_type().into(),
            serde_json::to_string(&linked).unwrap(),
        ));
        let mut usage = Usage::default();
        let id = UsageKey::new(user, &period).aggregate_id();
        let mut seq = 0;
        for n in 0..UNITS {
            let job_id = JobId::from_uuid(uuid::Uuid::new_v4());
            let reserve = UsageCommand::Reserve(ReserveUnit {
                job_id,
                user_id: user,
                period,
                plan: Plan::Pro,
                limit: Some(1_000),
                now: now - Duration::hours(1),
            });
            let commit = UsageCommand::Commit(CommitUnit {
                job_id,
                now: now - Duration::minutes(59) + Duration::seconds(n as i64),
            });
            for c in [reserve, commit] {
                for e in usage.decide(c).unwrap() {
                    usage.evolve(&e);
                    seq += 1;
                    let e: UsageEvent = e;
                    rows.push((
                        "usage".into(),
                        id.clone(),
                        seq,
                        e.event_type().into(),
                        serde_json::to_string(&e).unwrap(),
                    ));
                }
            }
        }
        if rows.len() >= 20_000 || u + 1 == users {
            insert(&db.pool, &rows).await;
            rows.clear();
        }
    }
    println!(
        "bench billing report: seeded {users} paid users ({UNITS} units each) in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    let vars = [
        ("STRIPE_SECRET_KEY", fake.secret_key().to_owned()),
        ("STRIPE_WEBHOOK_SECRET", "whsec_bench".to_owned()),
        ("STRIPE_PRICE_PRO", "price_pro".to_owned()),
        ("STRIPE_API_BASE", fake.base_url()),
    ];
    let settings = Settings::from_vars(
        &vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
    .unwrap();
    let api = Api::new(settings.billing.as_ref().unwrap()).unwrap();
    let store = EventStore::new(db.pool.clone());
    for pass in ["first run", "second run"] {
        let started = Instant::now();
        let s = report::run(&store, &api, "runledger_jobs", Utc::now())
            .await
            .unwrap();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "  {pass:<10}  {:.2} s  ledgers {}  units sent {}  Stripe calls {}  unsent {}  ({:.0} ledgers/s)",
            secs,
            s.ledgers,
            s.units_sent,
            s.stripe_calls,
            s.lines.iter().filter(|l| l.outcome != "sent").count(),
            s.ledgers as f64 / secs.max(1e-9)
        );
    }
    let billed: f64 = fake.meter_events().iter().map(|e| e.value).sum();
    println!(
        "  Stripe holds {billed} units for {} meter events",
        fake.meter_events().len()
    );
    assert_eq!(billed as u128, users as u128 * UNITS);
}

async fn insert(pool: &sqlx::PgPool, rows: &[(String, String, i64, String, String)]) {
    let types: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| r.2).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
    let payloads: Vec<&str> = rows.iter().map(|r| r.4.as_str()).collect();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT t, i, s, k, '1', p::json, '{}'::json FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[]) AS x(t, i, s, k, p)",
    )
    .bind(&types).bind(&ids).bind(&seqs).bind(&kinds).bind(&payloads)
    .execute(pool)
    .await
    .unwrap();
}
