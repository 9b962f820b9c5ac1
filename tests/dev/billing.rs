//! Billing in `runledger dev` (the embedded default) against a fake Stripe: the checkout,
//! the signed webhook upgrading the demo user, and `GET /v1/subscription` showing it.

use platform::stripe_fake::{FakeStripe, WebhookKind, WebhookParams, sign, webhook_event};
use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_user_upgrades_from_free_to_pro_in_dev() {
    let fake = FakeStripe::start("runledger_jobs").await;
    let base = fake.base_url();
    let dev = Dev::start(
        &["--in-memory"],
        &[
            ("STRIPE_SECRET_KEY", fake.secret_key()),
            ("STRIPE_WEBHOOK_SECRET", "whsec_dev_test"),
            ("STRIPE_PRICE_PRO", "price_pro"),
            ("STRIPE_API_BASE", &base),
        ],
    );
    let (_, before) = get(&dev, &dev.token, "/v1/subscription").await;
    assert_eq!(before["plan"], "FREE", "{before}");
    let res = client()
        .post(format!("{}/v1/billing/checkout", dev.url))
        .bearer_auth(&dev.token)
        .json(&json!({"plan": "PRO"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let session: serde_json::Value = res.json().await.unwrap();
    assert!(
        session["url"]
            .as_str()
            .unwrap()
            .starts_with("https://checkout.stripe.com/")
    );
    let customer = fake.customers()[0].id.clone();
    // Stripe reports the subscription; the user is found through the customer's link.
    let body = webhook_event(
        WebhookKind::CustomerSubscriptionCreated,
        &WebhookParams::new(&customer, "sub_dev_1", "price_pro"),
    );
    let res = client()
        .post(format!("{}/v1/billing/webhook", dev.url))
        .header(
            "stripe-signature",
            sign(&body, "whsec_dev_test", chrono::Utc::now().timestamp()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ack: serde_json::Value = res.json().await.unwrap();
    assert_eq!(ack["applied"], true, "{ack}");
    eventually(15, "the subscription view to show PRO", || async {
        let (_, s) = get(&dev, &dev.token, "/v1/subscription").await;
        s["plan"] == "PRO" && s["status"] == "active" && s["stripe_customer"] == customer.as_str()
    })
    .await;
    let (_, usage) = get(&dev, &dev.token, "/v1/usage").await;
    assert_eq!(usage["plan"], "PRO", "{usage}");
}
