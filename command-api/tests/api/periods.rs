//! A paid period whose renewal webhook comes late: usage begins in the guessed period (the
//! previous period's length), then the real period arrives with another length. The ledger
//! is corrected, not forked, and submissions go on.

use chrono::{Duration, Utc};
use domain::{
    ids::{StripeEventId, StripeObjectId},
    period::BillingPeriod,
    plan::Plan,
    subscription::{
        ApplyStripeEvent, StripeChange, Subscription, SubscriptionCommand, SubscriptionStatus,
    },
};
use platform::auth::Role;

use crate::helpers::*;

async fn renewal(app: &TestApp, user: domain::ids::UserId, n: u32, period: BillingPeriod) {
    let now = Utc::now();
    let command = SubscriptionCommand::ApplyStripeEvent(ApplyStripeEvent {
        user_id: user,
        event_id: StripeEventId::parse(&format!("evt_test_{n}")).unwrap(),
        created: now - Duration::minutes(10) + Duration::seconds(i64::from(n)),
        change: StripeChange::SubscriptionChanged {
            customer_id: StripeObjectId::parse("cus_test").unwrap(),
            subscription_id: StripeObjectId::parse("sub_test").unwrap(),
            plan: Plan::Pro,
            status: SubscriptionStatus::Active,
            period,
        },
        now,
    });
    app.state
        .store
        .execute::<Subscription>(&user.to_string(), command, &Default::default())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_late_renewal_of_another_length_corrects_the_ledger() {
    let app = spawn_app(&[]).await;
    let user = new_user();
    let t = token(user, Role::Customer);
    let now = Utc::now();
    // The last period Stripe sent ended 10 days ago and lasted 31 days.
    let previous = BillingPeriod::new(now - Duration::days(41), now - Duration::days(10)).unwrap();
    renewal(&app, user, 1, previous).await;
    // Usage begins in the guessed period [now-10d, now+21d).
    assert_eq!(app.submit(&t).await.status, 202);
    // The renewal arrives: the real period is 28 days from the same start.
    let real = BillingPeriod::new(previous.end, previous.end + Duration::days(28)).unwrap();
    renewal(&app, user, 2, real).await;
    let r = app.submit(&t).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    // One ledger, with the real end, holding both units.
    let ledgers: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT aggregate_id FROM events WHERE aggregate_type = 'usage' \
           AND aggregate_id LIKE $1",
    )
    .bind(format!("{user}:%"))
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(ledgers.len(), 1, "{ledgers:?}");
    assert_eq!(app.count_events("UnitReserved").await, 2);
}
