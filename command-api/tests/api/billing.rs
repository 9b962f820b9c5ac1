//! Billing on Stripe against a fake Stripe speaking its wire protocol: checkout, the signed
//! webhook, usage reported as meter events exactly once.

use chrono::{Duration, Utc};
use command_api::billing::{report, stripe::Api};
use domain::{
    ids::{JobId, UserId},
    period::BillingPeriod,
    plan::Plan,
    subscription::Subscription,
    usage::{CommitUnit, ReserveUnit, Usage, UsageCommand, UsageKey},
};
use platform::{
    auth::Role,
    stripe_fake::{FakeStripe, WebhookKind, WebhookParams, sign, webhook_event},
};
use serde_json::json;

use crate::helpers::*;

const WHSEC: &str = "whsec_test_0123456789";
const METER: &str = "runledger_jobs";

async fn billed_app(fake: &FakeStripe, extra: &[(&str, &str)]) -> TestApp {
    let base = fake.base_url();
    let mut vars = vec![
        ("STRIPE_SECRET_KEY", fake.secret_key()),
        ("STRIPE_WEBHOOK_SECRET", WHSEC),
        ("STRIPE_PRICE_PRO", "price_pro"),
        ("STRIPE_PRICE_ENTERPRISE", "price_ent"),
        ("STRIPE_API_BASE", base.as_str()),
        ("RUNLEDGER_PUBLIC_URL", "https://app.example"),
        ("RUNLEDGER_FREE_LIMIT", "2"),
    ];
    vars.extend_from_slice(extra);
    spawn_app(&vars).await
}

impl TestApp {
    async fn webhook(&self, payload: &str, signature: &str) -> Reply {
        self.post_raw(
            "/v1/billing/webhook",
            None,
            payload.to_owned(),
            &[("stripe-signature", signature)],
        )
        .await
    }

    async fn deliver(&self, kind: WebhookKind, p: &WebhookParams) -> Reply {
        let body = webhook_event(kind, p);
        self.webhook(&body, &sign(&body, WHSEC, Utc::now().timestamp()))
            .await
    }

    async fn plan_of(&self, user: UserId) -> Plan {
        self.state
            .store
            .load_fresh::<Subscription>(&user.to_string())
            .await
            .unwrap()
            .state
            .plan_at(Utc::now())
    }
}

fn params(user: Option<UserId>, customer: &str, price: &str) -> WebhookParams {
    let mut p = WebhookParams::new(customer, "sub_test_1", price);
    p.user_id = user.map(|u| u.to_string());
    p
}

#[tokio::test]
async fn checkout_creates_the_customer_once_and_returns_the_session_url() {
    let fake = FakeStripe::start(METER).await;
    let app = billed_app(&fake, &[]).await;
    let user = new_user();
    let t = token(user, Role::Customer);
    let first = app
        .post("/v1/billing/checkout", Some(&t), &json!({"plan": "PRO"}))
        .await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert!(
        first.body["url"]
            .as_str()
            .unwrap()
            .starts_with("https://checkout.stripe.com/")
    );
    let again = app
        .post(
            "/v1/billing/checkout",
            Some(&t),
            &json!({"plan": "ENTERPRISE"}),
        )
        .await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_ne!(first.body["session_id"], again.body["session_id"]);
    assert_eq!(fake.customer_count(), 1);
    let customer = &fake.customers()[0];
    assert_eq!(customer.metadata["user_id"], user.to_string());
    let sessions = fake.checkout_sessions();
    assert_eq!(sessions.len(), 2);
    let s = &sessions[0];
    assert_eq!(s.param("mode"), Some("subscription"));
    assert_eq!(s.param("customer"), Some(customer.id.as_str()));
    assert_eq!(s.param("line_items[0][price]"), Some("price_pro"));
    assert_eq!(
        s.param("client_reference_id"),
        Some(user.to_string().as_str())
    );
    assert_eq!(
        s.param("subscription_data[metadata][user_id]"),
        Some(user.to_string().as_str())
    );
    assert_eq!(
        s.param("success_url"),
        Some("https://app.example/?checkout=success")
    );
    assert_eq!(sessions[1].param("line_items[0][price]"), Some("price_ent"));
    // FREE is not bought, an unknown field is refused, other roles are refused.
    let free = app
        .post("/v1/billing/checkout", Some(&t), &json!({"plan": "FREE"}))
        .await;
    assert_problem(&free, 400, "plan-not-sold");
    let odd = app
        .post(
            "/v1/billing/checkout",
            Some(&t),
            &json!({"plan": "PRO", "x": 1}),
        )
        .await;
    assert_eq!(odd.status, 400);
    let w = app
        .post(
            "/v1/billing/checkout",
            Some(&worker_token()),
            &json!({"plan": "PRO"}),
        )
        .await;
    assert_problem(&w, 403, "forbidden");
    // Once PRO is in force, another checkout is refused.
    let on = app
        .deliver(
            WebhookKind::CustomerSubscriptionCreated,
            &params(Some(user), &customer.id, "price_pro"),
        )
        .await;
    assert_eq!(on.body["applied"], true, "{:?}", on.body);
    let twice = app
        .post("/v1/billing/checkout", Some(&t), &json!({"plan": "PRO"}))
        .await;
    assert_problem(&twice, 409, "already-subscribed");
}

#[tokio::test]
async fn a_webhook_raises_the_limit_at_once_and_deleted_returns_to_free() {
    let fake = FakeStripe::start(METER).await;
    let app = billed_app(&fake, &[]).await;
    let user = new_user();
    let t = token(user, Role::Customer);
    for _ in 0..2 {
        assert_eq!(app.submit(&t).await.status, 202);
    }
    assert_problem(&app.submit(&t).await, 402, "quota-exceeded");
    let created = params(Some(user), "cus_test_a", "price_pro");
    let r = app
        .deliver(WebhookKind::CustomerSubscriptionCreated, &created)
        .await;
    assert_eq!(
        (r.status, &r.body["applied"]),
        (200, &json!(true)),
        "{:?}",
        r.body
    );
    assert_eq!(app.plan_of(user).await, Plan::Pro);
    // The paid period is a new ledger with PRO's limit: the next submission goes through.
    assert_eq!(app.submit(&t).await.status, 202);
    // The same event again changes nothing.
    let before = app.events_of("subscription", &user.to_string()).await.len();
    let replay = app
        .deliver(WebhookKind::CustomerSubscriptionCreated, &created)
        .await;
    assert_eq!(
        (replay.status, &replay.body["applied"]),
        (200, &json!(false))
    );
    assert_eq!(
        app.events_of("subscription", &user.to_string()).await.len(),
        before
    );
    let mut deleted = params(Some(user), "cus_test_a", "price_pro");
    deleted.status = "canceled".into();
    deleted.created += 5;
    let r = app
        .deliver(WebhookKind::CustomerSubscriptionDeleted, &deleted)
        .await;
    assert_eq!(r.body["applied"], true, "{:?}", r.body);
    assert_eq!(app.plan_of(user).await, Plan::Free);
}

#[tokio::test]
async fn out_of_order_events_end_in_the_newest_state() {
    let fake = FakeStripe::start(METER).await;
    let app = billed_app(&fake, &[]).await;
    let user = new_user();
    let older = params(Some(user), "cus_test_b", "price_pro");
    let mut newer = params(Some(user), "cus_test_b", "price_ent");
    newer.created = older.created + 60;
    app.deliver(WebhookKind::CustomerSubscriptionUpdated, &newer)
        .await;
    let late = app
        .deliver(WebhookKind::CustomerSubscriptionCreated, &older)
        .await;
    assert_eq!(late.status, 200);
    assert_eq!(app.plan_of(user).await, Plan::Enterprise);
    // Invoices: payment failed keeps the plan (past due), paid makes it active again.
    let mut failed = newer.clone();
    failed.event_id = "evt_fail_1".into();
    let r = app
        .deliver(WebhookKind::InvoicePaymentFailed, &failed)
        .await;
    assert_eq!(r.body["applied"], true, "{:?}", r.body);
    assert_eq!(app.plan_of(user).await, Plan::Enterprise);
}

#[tokio::test]
async fn bad_signatures_old_timestamps_and_malformed_bodies_apply_nothing() {
    let fake = FakeStripe::start(METER).await;
    let app = billed_app(&fake, &[]).await;
    let user = new_user();
    let body = webhook_event(
        WebhookKind::CustomerSubscriptionCreated,
        &params(Some(user), "cus_test_c", "price_pro"),
    );
    let now = Utc::now().timestamp();
    let cases = [
        (
            body.clone(),
            sign(&body, "whsec_someone_else", now),
            "webhook-signature",
        ),
        (
            body.clone(),
            sign(&body, WHSEC, now - 301),
            "webhook-signature",
        ),
        (body.clone(), String::new(), "webhook-signature"),
        (
            body.replace("price_pro", "price_ent"),
            sign(&body, WHSEC, now),
            "webhook-signature",
        ),
        (
            "{not json".to_owned(),
            sign("{not json", WHSEC, now),
            "webhook-malformed",
        ),
        (
            r#"{"object":"event","id":"evt_1"}"#.to_owned(),
            sign(r#"{"object":"event","id":"evt_1"}"#, WHSEC, now),
            "webhook-malformed",
        ),
    ];
    for (payload, signature, slug) in cases {
        let r = app.webhook(&payload, &signature).await;
        assert_problem(&r, 400, slug);
    }
    assert!(
        app.events_of("subscription", &user.to_string())
            .await
            .is_empty()
    );
    assert!(!logs().contains(WHSEC));
}

#[tokio::test]
async fn unknown_users_and_unused_types_are_acknowledged_and_ignored() {
    let fake = FakeStripe::start(METER).await;
    let app = billed_app(&fake, &[]).await;
    let stranger = params(None, "cus_nobody", "price_pro");
    let r = app
        .deliver(WebhookKind::CustomerSubscriptionCreated, &stranger)
        .await;
    assert_eq!(
        (r.status, &r.body["applied"]),
        (200, &json!(false)),
        "{:?}",
        r.body
    );
    let other = r#"{"id":"evt_x","object":"event","created":1,"type":"charge.refunded","data":{"object":{}}}"#;
    let r = app
        .webhook(other, &sign(other, WHSEC, Utc::now().timestamp()))
        .await;
    assert_eq!((r.status, &r.body["applied"]), (200, &json!(false)));
    assert_eq!(app.count_events("SubscriptionChanged").await, 0);
}

#[tokio::test]
async fn checkout_completed_links_the_customer_for_events_without_metadata() {
    let fake = FakeStripe::start(METER).await;
    let app = billed_app(&fake, &[]).await;
    let user = new_user();
    let linked = app
        .deliver(
            WebhookKind::CheckoutSessionCompleted,
            &params(Some(user), "cus_test_d", "price_pro"),
        )
        .await;
    assert_eq!(linked.body["applied"], true, "{:?}", linked.body);
    let r = app
        .deliver(
            WebhookKind::CustomerSubscriptionCreated,
            &params(None, "cus_test_d", "price_pro"),
        )
        .await;
    assert_eq!(r.body["applied"], true, "{:?}", r.body);
    assert_eq!(app.plan_of(user).await, Plan::Pro);
    // Another user's checkout naming the same customer: acknowledged, nothing linked.
    let thief = app
        .deliver(
            WebhookKind::CheckoutSessionCompleted,
            &params(Some(new_user()), "cus_test_d", "price_pro"),
        )
        .await;
    assert_eq!(
        (thief.status, &thief.body["applied"]),
        (200, &json!(false)),
        "{:?}",
        thief.body
    );
    assert_eq!(app.count_events("CustomerClaimed").await, 1);
}

#[tokio::test]
async fn billing_routes_answer_503_without_a_stripe_key() {
    let app = spawn_app(&[]).await;
    let t = token(new_user(), Role::Customer);
    let r = app
        .post("/v1/billing/checkout", Some(&t), &json!({"plan": "PRO"}))
        .await;
    assert_problem(&r, 503, "billing-disabled");
    let r = app.webhook("{}", "t=1,v1=00").await;
    assert_problem(&r, 503, "billing-disabled");
}

/// A PRO ledger with `units` consumed, made through the Usage aggregate.
async fn consume(app: &TestApp, user: UserId, period: BillingPeriod, from: u128, units: u128) {
    let id = UsageKey::new(user, &period).aggregate_id();
    let now = Utc::now().min(period.end - Duration::seconds(1));
    for n in from..from + units {
        let job_id = JobId::from_uuid(uuid::Uuid::from_u128(n + 1));
        let reserve = UsageCommand::Reserve(ReserveUnit {
            job_id,
            user_id: user,
            period,
            plan: Plan::Pro,
            limit: Some(1_000),
            now,
        });
        let commit = UsageCommand::Commit(CommitUnit { job_id, now });
        for c in [reserve, commit] {
            app.state
                .store
                .execute::<Usage>(&id, c, &Default::default())
                .await
                .unwrap()
                .unwrap();
        }
    }
}

#[tokio::test]
async fn reports_bill_each_unit_once_across_crashes_retries_and_two_reporters() {
    let fake = FakeStripe::start(METER).await;
    let app = billed_app(&fake, &[]).await;
    let user = new_user();
    let r = app
        .deliver(
            WebhookKind::CheckoutSessionCompleted,
            &params(Some(user), "cus_test_e", "price_pro"),
        )
        .await;
    assert_eq!(r.body["applied"], true);
    let period = BillingPeriod::new(
        Utc::now() - Duration::days(3),
        Utc::now() + Duration::days(27),
    )
    .unwrap();
    consume(&app, user, period, 0, 5).await;
    let api = Api::new(app.state.settings.billing.as_ref().unwrap()).unwrap();
    let store = &app.state.store;
    let run = || report::run(store, &api, METER, Utc::now());
    let first = run().await.unwrap();
    assert_eq!((first.units_sent, first.stripe_calls), (5, 1));
    assert_eq!(fake.usage_total("cus_test_e"), 5.0);
    // Nothing new: no call.
    assert_eq!(run().await.unwrap().stripe_calls, 0);
    // Stripe records the range, then the reporter dies before recording it.
    consume(&app, user, period, 5, 3).await;
    fake.fail_next_meter_events(1);
    let crashed = run().await.unwrap();
    assert!(crashed.has_failures());
    assert_eq!(fake.usage_total("cus_test_e"), 8.0);
    // The next run resends the same range; Stripe holds it once.
    let retried = run().await.unwrap();
    assert_eq!(retried.units_sent, 3);
    assert_eq!(fake.usage_total("cus_test_e"), 8.0);
    // Stripe down: nothing recorded, sent next time.
    consume(&app, user, period, 8, 2).await;
    fake.reject_next_meter_events(1);
    assert!(run().await.unwrap().has_failures());
    assert_eq!(fake.usage_total("cus_test_e"), 8.0);
    // Two reporters at once.
    consume(&app, user, period, 10, 4).await;
    let (a, b) = tokio::join!(run(), run());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(!a.has_failures() && !b.has_failures());
    assert_eq!(fake.usage_total("cus_test_e"), 14.0);
    let sub = store
        .load_fresh::<Subscription>(&user.to_string())
        .await
        .unwrap()
        .state;
    assert_eq!(sub.reported(period.start), 14);
    let mut ids: Vec<_> = fake
        .meter_events()
        .into_iter()
        .map(|e| e.identifier)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), fake.meter_events().len());
}

#[tokio::test]
async fn a_period_older_than_stripes_window_is_flagged_not_dropped() {
    let fake = FakeStripe::start(METER).await;
    let app = billed_app(&fake, &[]).await;
    let user = new_user();
    app.deliver(
        WebhookKind::CheckoutSessionCompleted,
        &params(Some(user), "cus_test_f", "price_pro"),
    )
    .await;
    let old = BillingPeriod::new(
        Utc::now() - Duration::days(80),
        Utc::now() - Duration::days(50),
    )
    .unwrap();
    consume(&app, user, old, 0, 2).await;
    let api = Api::new(app.state.settings.billing.as_ref().unwrap()).unwrap();
    let s = report::run(&app.state.store, &api, METER, Utc::now())
        .await
        .unwrap();
    assert!(s.has_failures());
    assert_eq!(s.lines[0].outcome, "flagged");
    assert_eq!(s.lines[0].units, 2);
    assert_eq!(fake.meter_events().len(), 0);
}
