//! `runledger billing report|reconcile` and `runledger audit digest|replay --digest` on the
//! embedded default's data directory, against a fake Stripe speaking its wire protocol.

use base64::Engine;
use chrono::{Duration, Utc};
use command_api::billing::stripe::Api;
use domain::{
    ids::{JobId, StripeObjectId, UserId},
    period::BillingPeriod,
    plan::Plan,
    report::ReportRange,
    subscription::{LinkCustomer, Subscription, SubscriptionCommand},
    usage::{CommitUnit, ReserveUnit, Usage, UsageCommand, UsageKey},
};
use eventstore::EventStore;
use platform::stripe_fake::FakeStripe;
use serde_json::Value;

use super::{runledger, stderr};

const METER: &str = "runledger_jobs";

async fn embedded(dir: &std::path::Path) -> EventStore {
    EventStore::sqlite(platform::db::open_embedded(Some(dir)).await.unwrap())
}

async fn consume(store: &EventStore, user: UserId, period: BillingPeriod, plan: Plan, units: u128) {
    let id = UsageKey::new(user, &period).aggregate_id();
    let now = Utc::now().min(period.end - Duration::seconds(1));
    for n in 0..units {
        let job_id = JobId::from_uuid(uuid::Uuid::new_v4());
        let _ = n;
        let reserve = UsageCommand::Reserve(ReserveUnit {
            job_id,
            user_id: user,
            period,
            plan,
            limit: None,
            now,
        });
        for c in [reserve, UsageCommand::Commit(CommitUnit { job_id, now })] {
            store
                .execute::<Usage>(&id, c, &Default::default())
                .await
                .unwrap()
                .unwrap();
        }
    }
}

async fn link(store: &EventStore, user: UserId, customer: &str) {
    let c = SubscriptionCommand::LinkCustomer(LinkCustomer {
        user_id: user,
        customer_id: StripeObjectId::parse(customer).unwrap(),
    });
    store
        .execute::<Subscription>(&user.to_string(), c, &Default::default())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_then_reconcile_and_a_planted_difference_fails() {
    let fake = FakeStripe::start(METER).await;
    let dir = tempdir();
    let store = embedded(&dir).await;
    let (paid, free) = (
        UserId::from_uuid(uuid::Uuid::new_v4()),
        UserId::from_uuid(uuid::Uuid::new_v4()),
    );
    let now = Utc::now();
    let month = BillingPeriod::calendar_month(now);
    let period = BillingPeriod::new(month.start + Duration::hours(1), month.end).unwrap_or(month);
    let period = if period.contains(now) { period } else { month };
    link(&store, paid, "cus_cli_1").await;
    consume(&store, paid, period, Plan::Pro, 4).await;
    consume(&store, free, month, Plan::Free, 2).await;
    drop(store);
    let base = fake.base_url();
    let dir_s = dir.to_str().unwrap().to_owned();
    let env = [
        ("STRIPE_SECRET_KEY", fake.secret_key()),
        ("STRIPE_WEBHOOK_SECRET", "whsec_cli"),
        ("STRIPE_PRICE_PRO", "price_pro"),
        ("STRIPE_API_BASE", base.as_str()),
    ];
    let run = |args: Vec<String>| {
        let env = env.map(|(k, v)| (k.to_owned(), v.to_owned()));
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            runledger(&args, &env)
        })
    };
    let period_arg = format!("{}", now.format("%Y-%m"));
    let report = run(vec![
        "billing".into(),
        "report".into(),
        "--data-dir".into(),
        dir_s.clone(),
    ])
    .await
    .unwrap();
    assert!(report.status.success(), "{}", stderr(&report));
    let out = String::from_utf8_lossy(&report.stdout);
    assert!(out.contains("4 units sent in 1 Stripe calls"), "{out}");
    assert_eq!(fake.usage_total("cus_cli_1"), 4.0);
    let reconcile = |format: &str| {
        run(vec![
            "billing".into(),
            "reconcile".into(),
            "--period".into(),
            period_arg.clone(),
            "--format".into(),
            format.into(),
            "--data-dir".into(),
            dir_s.clone(),
        ])
    };
    let ok = reconcile("json").await.unwrap();
    assert!(
        ok.status.success(),
        "{}\n{}",
        stderr(&ok),
        String::from_utf8_lossy(&ok.stdout)
    );
    let rows: Value = serde_json::from_slice(&ok.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["user_id"] == paid.to_string())
        .unwrap();
    assert_eq!(
        (
            row["replayed"].as_u64(),
            row["projected"].as_u64(),
            row["stripe"].as_u64()
        ),
        (Some(4), Some(4), Some(4))
    );
    // A unit billed behind runledger's back: listed, exit 1.
    let b = platform::settings::Settings::from_vars(
        &env.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
    .unwrap();
    let api = Api::new(b.billing.as_ref().unwrap()).unwrap();
    let stray = ReportRange {
        period,
        customer_id: StripeObjectId::parse("cus_cli_1").unwrap(),
        from_unit: 99,
        to_unit: 99,
        identifier: "stray-1".into(),
        timestamp: domain::report::timestamp(&period, Utc::now()).unwrap(),
    };
    api.meter_event(METER, &stray).await.unwrap();
    let bad = reconcile("table").await.unwrap();
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    let table = String::from_utf8_lossy(&bad.stdout);
    let line = table
        .lines()
        .find(|l| l.contains(&paid.to_string()))
        .unwrap();
    assert!(line.contains("stripe"), "{table}");
    assert!(
        table
            .lines()
            .find(|l| l.contains(&free.to_string()))
            .unwrap()
            .ends_with('-'),
        "{table}"
    );
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rl-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_kept_elsewhere_catches_a_dropped_last_unit() {
    let dir = tempdir();
    let store = embedded(&dir).await;
    let (u, other) = (
        UserId::from_uuid(uuid::Uuid::new_v4()),
        UserId::from_uuid(uuid::Uuid::new_v4()),
    );
    let last_month = BillingPeriod::calendar_month(
        BillingPeriod::calendar_month(Utc::now()).start - Duration::days(1),
    );
    consume(&store, u, last_month, Plan::Free, 3).await;
    consume(&store, other, last_month, Plan::Free, 2).await;
    drop(store);
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let env = [("RUNLEDGER_AUDIT_SIGNING_KEY", key.as_str())];
    let month = last_month.start.format("%Y-%m").to_string();
    let d = dir.to_str().unwrap();
    let out = runledger(
        &["audit", "digest", "--period", &month, "--data-dir", d],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let digest: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(digest["ledgers"].as_array().unwrap().len(), 2);
    let file = dir.join("digest.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let f = file.to_str().unwrap();
    let replay = |user: UserId| {
        runledger(
            &[
                "audit",
                "replay",
                "--user",
                &user.to_string(),
                "--from",
                &month,
                "--to",
                &month,
                "--digest",
                f,
                "--data-dir",
                d,
            ],
            &env,
        )
    };
    let ok = replay(u);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("matches (3 units)"));
    // The last unit is dropped: events and read model still agree with each other.
    let pool = platform::db::open_embedded(Some(&dir)).await.unwrap();
    let id = UsageKey::new(u, &last_month).aggregate_id();
    sqlx::query("DELETE FROM events WHERE aggregate_id = ?1 AND sequence = (SELECT max(sequence) FROM events WHERE aggregate_id = ?1)")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let caught = replay(u);
    assert_eq!(caught.status.code(), Some(1));
    let text = String::from_utf8_lossy(&caught.stdout);
    assert!(text.contains("FAILS: 2 units replayed, 3 signed"), "{text}");
    // Another user's ledger still verifies against the same digest.
    assert!(replay(other).status.success());
    // A forged digest (edited units) does not verify.
    let forged = String::from_utf8_lossy(&out.stdout).replacen("\"units\": 3", "\"units\": 2", 1);
    std::fs::write(&file, forged).unwrap();
    let text = String::from_utf8_lossy(&replay(u).stdout).into_owned();
    assert!(text.contains("signature does not verify"), "{text}");
}
