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
    usage::UsageKey,
};
use platform::auth::Role;

use crate::helpers::*;

/// Applies Stripe event `n`, a PRO subscription for `period` created at `created`, through
/// `store` (the app's own, or another replica's).
async fn subscribe_pro(
    store: &eventstore::EventStore,
    user: domain::ids::UserId,
    n: u32,
    created: chrono::DateTime<Utc>,
    period: BillingPeriod,
) {
    let command = SubscriptionCommand::ApplyStripeEvent(ApplyStripeEvent {
        user_id: user,
        event_id: StripeEventId::parse(&format!("evt_test_{n}")).unwrap(),
        created,
        change: StripeChange::SubscriptionChanged {
            customer_id: StripeObjectId::parse("cus_test").unwrap(),
            subscription_id: StripeObjectId::parse("sub_test").unwrap(),
            plan: Plan::Pro,
            status: SubscriptionStatus::Active,
            period,
        },
        now: Utc::now(),
    });
    store
        .execute::<Subscription>(&user.to_string(), command, &Default::default())
        .await
        .unwrap()
        .unwrap();
}

async fn renewal(app: &TestApp, user: domain::ids::UserId, n: u32, period: BillingPeriod) {
    let created = Utc::now() - Duration::minutes(10) + Duration::seconds(i64::from(n));
    subscribe_pro(&app.state.store, user, n, created, period).await;
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

/// Moves `user` to PRO for a period that began 3 days ago, through another process's store
/// (a webhook served by another replica); returns the period.
async fn pro_elsewhere(app: &TestApp, user: domain::ids::UserId) -> BillingPeriod {
    let now = Utc::now();
    let paid = BillingPeriod::new(now - Duration::days(3), now + Duration::days(27)).unwrap();
    let elsewhere = eventstore::EventStore::new(app.db.pool.clone());
    subscribe_pro(&elsewhere, user, 1, now, paid).await;
    paid
}

/// The ledger each `UnitReserved` of `user` went to, in order.
async fn ledgers_of(app: &TestApp, user: domain::ids::UserId) -> Vec<String> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT aggregate_id FROM events WHERE event_type = 'UnitReserved' \
           AND aggregate_id LIKE $1 ORDER BY position",
    )
    .bind(format!("{user}:%"))
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    rows.into_iter().map(|(id,)| id).collect()
}

/// The subscription is cached between submissions; another process (a webhook on another
/// replica) moves the user to a paid period. The next submission here, decided on the
/// cached free plan, is stopped by its guard and decided again: its unit lands in the paid
/// period's ledger, not the calendar month's.
#[tokio::test]
async fn a_subscription_changed_by_another_process_applies_to_the_next_submission() {
    let app = spawn_app(&[]).await;
    let user = new_user();
    let t = token(user, Role::Customer);
    assert_eq!(app.submit(&t).await.status, 202);
    let paid = pro_elsewhere(&app, user).await;
    let r = app.submit(&t).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let month = BillingPeriod::calendar_month(Utc::now());
    assert_eq!(
        ledgers_of(&app, user).await,
        [
            UsageKey::new(user, &month).aggregate_id(),
            UsageKey::new(user, &paid).aggregate_id()
        ]
    );
}

/// A refusal decided on the cached subscription is decided again on the stored one: the
/// free plan's last unit is used, another process upgrades the user, and the next
/// submission here is accepted at once.
#[tokio::test]
async fn a_refusal_on_a_cached_plan_is_checked_against_the_stored_one() {
    let app = spawn_app(&[("RUNLEDGER_FREE_LIMIT", "1")]).await;
    let user = new_user();
    let t = token(user, Role::Customer);
    assert_eq!(app.submit(&t).await.status, 202);
    assert_eq!(app.submit(&t).await.status, 402);
    pro_elsewhere(&app, user).await;
    let r = app.submit(&t).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(ledgers_of(&app, user).await.len(), 2);
}
