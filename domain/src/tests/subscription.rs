use super::*;
use crate::{
    ids::{StripeEventId, StripeObjectId},
    plan::Plan,
    subscription::*,
};

fn evt(id: &str) -> StripeEventId {
    StripeEventId::parse(id).unwrap()
}

fn obj(id: &str) -> StripeObjectId {
    StripeObjectId::parse(id).unwrap()
}

fn paid_period() -> BillingPeriod {
    BillingPeriod::new(at("2026-11-05T00:00:00Z"), at("2026-12-05T00:00:00Z")).unwrap()
}

fn apply(id: &str, created: &str, change: StripeChange) -> SubscriptionCommand {
    SubscriptionCommand::ApplyStripeEvent(ApplyStripeEvent {
        user_id: user(),
        event_id: evt(id),
        created: at(created),
        change,
        now: t0(),
    })
}

fn changed_to(plan: Plan, status: SubscriptionStatus) -> StripeChange {
    StripeChange::SubscriptionChanged {
        customer_id: obj("cus_1"),
        subscription_id: obj("sub_1"),
        plan,
        status,
        period: paid_period(),
    }
}

fn changed(id: &str, created: &str, plan: Plan) -> SubscriptionEvent {
    SubscriptionChanged {
        user_id: user(),
        stripe_event_id: evt(id),
        stripe_created: at(created),
        customer_id: obj("cus_1"),
        subscription_id: obj("sub_1"),
        plan,
        status: SubscriptionStatus::Active,
        period: paid_period(),
    }
    .into()
}

fn skipped(id: &str, reason: SkipReason) -> SubscriptionEvent {
    StripeEventSkipped {
        user_id: user(),
        stripe_event_id: evt(id),
        reason,
    }
    .into()
}

const T1: &str = "2026-11-05T00:00:00Z";
const T2: &str = "2026-11-06T00:00:00Z";

#[test]
fn without_a_subscription_a_user_is_on_free_calendar_months() {
    let s = Subscription::default();
    assert_eq!(s.plan_at(t0()), Plan::Free);
    assert_eq!(s.period_at(t0()), BillingPeriod::calendar_month(t0()));
}

#[test]
fn subscription_created_sets_plan_and_period() {
    let events = given::<Subscription>(Vec::<SubscriptionEvent>::new())
        .when(apply(
            "evt_1",
            T1,
            changed_to(Plan::Pro, SubscriptionStatus::Active),
        ))
        .events();
    assert_eq!(events, vec![changed("evt_1", T1, Plan::Pro)]);
    let s = Subscription::replay(events.iter());
    assert_eq!(s.plan_at(t0()), Plan::Pro);
    assert_eq!(s.period_at(t0()), paid_period());
}

#[test]
fn a_duplicate_stripe_event_id_is_refused() {
    given::<Subscription>([changed("evt_1", T1, Plan::Pro)])
        .when(apply(
            "evt_1",
            T1,
            changed_to(Plan::Pro, SubscriptionStatus::Active),
        ))
        .then_err(SubscriptionError::DuplicateStripeEvent(evt("evt_1")));
    given::<Subscription>([skipped("evt_9", SkipReason::NoSubscription)])
        .when(apply(
            "evt_9",
            T1,
            StripeChange::InvoicePaymentFailed {
                invoice_id: obj("in_1"),
            },
        ))
        .then_err(SubscriptionError::DuplicateStripeEvent(evt("evt_9")));
}

#[test]
fn an_older_change_arriving_late_is_skipped() {
    given::<Subscription>([changed("evt_2", T2, Plan::Enterprise)])
        .when(apply(
            "evt_1",
            T1,
            changed_to(Plan::Pro, SubscriptionStatus::Active),
        ))
        .then(vec![skipped("evt_1", SkipReason::Stale)]);
}

#[test]
fn deletion_returns_the_user_to_free() {
    let deleted = given::<Subscription>([changed("evt_1", T1, Plan::Pro)])
        .when(apply(
            "evt_2",
            T2,
            StripeChange::SubscriptionDeleted {
                subscription_id: obj("sub_1"),
            },
        ))
        .events();
    assert_eq!(
        deleted,
        vec![
            SubscriptionEnded {
                user_id: user(),
                stripe_event_id: evt("evt_2"),
                stripe_created: at(T2),
                subscription_id: obj("sub_1"),
            }
            .into()
        ]
    );
    let s = Subscription::replay([changed("evt_1", T1, Plan::Pro)].iter().chain(&deleted));
    assert_eq!(s.plan_at(t0()), Plan::Free);
    assert_eq!(s.period_at(t0()), BillingPeriod::calendar_month(t0()));
}

#[test]
fn deletion_of_another_subscription_is_skipped() {
    given::<Subscription>([changed("evt_1", T1, Plan::Pro)])
        .when(apply(
            "evt_2",
            T2,
            StripeChange::SubscriptionDeleted {
                subscription_id: obj("sub_old"),
            },
        ))
        .then(vec![skipped("evt_2", SkipReason::OtherSubscription)]);
}

#[test]
fn a_failed_payment_keeps_the_plan_while_past_due_and_a_paid_invoice_renews() {
    let failed = given::<Subscription>([changed("evt_1", T1, Plan::Pro)])
        .when(apply(
            "evt_2",
            T2,
            StripeChange::InvoicePaymentFailed {
                invoice_id: obj("in_1"),
            },
        ))
        .events();
    assert_eq!(
        failed,
        vec![
            PaymentFailed {
                user_id: user(),
                stripe_event_id: evt("evt_2"),
                invoice_id: obj("in_1")
            }
            .into()
        ]
    );
    let mut h = vec![changed("evt_1", T1, Plan::Pro)];
    h.extend(failed);
    let s = Subscription::replay(h.iter());
    assert_eq!(s.paid().unwrap().status, SubscriptionStatus::PastDue);
    assert_eq!(s.plan_at(t0()), Plan::Pro);

    let next = BillingPeriod::new(paid_period().end, at("2027-01-05T00:00:00Z")).unwrap();
    let paid = given::<Subscription>(h.clone())
        .when(apply(
            "evt_3",
            T2,
            StripeChange::InvoicePaid {
                invoice_id: obj("in_2"),
                period: next,
            },
        ))
        .events();
    h.extend(paid);
    let s = Subscription::replay(h.iter());
    assert_eq!(s.paid().unwrap().status, SubscriptionStatus::Active);
    assert_eq!(s.period_at(at("2026-12-20T00:00:00Z")), next);
}

#[test]
fn invoice_events_without_a_subscription_are_skipped() {
    given::<Subscription>(Vec::<SubscriptionEvent>::new())
        .when(apply(
            "evt_1",
            T1,
            StripeChange::InvoicePaid {
                invoice_id: obj("in_1"),
                period: paid_period(),
            },
        ))
        .then(vec![skipped("evt_1", SkipReason::NoSubscription)]);
}

#[test]
fn an_event_for_another_user_is_refused() {
    let mut cmd = apply(
        "evt_2",
        T2,
        changed_to(Plan::Pro, SubscriptionStatus::Active),
    );
    if let SubscriptionCommand::ApplyStripeEvent(c) = &mut cmd {
        c.user_id = other_user();
    }
    given::<Subscription>([changed("evt_1", T1, Plan::Pro)])
        .when(cmd)
        .then_err(SubscriptionError::WrongUser);
}

#[test]
fn a_canceled_status_means_free_and_a_renewal_late_rolls_the_period() {
    let events = given::<Subscription>(Vec::<SubscriptionEvent>::new())
        .when(apply(
            "evt_1",
            T1,
            changed_to(Plan::Pro, SubscriptionStatus::Ended),
        ))
        .events();
    assert_eq!(
        Subscription::replay(events.iter()).plan_at(t0()),
        Plan::Free
    );
    let s = Subscription::replay([changed("evt_1", T1, Plan::Pro)].iter());
    let p = s.period_at(at("2026-12-06T00:00:00Z"));
    assert_eq!(p.start, paid_period().end);
}

mod orders {
    use proptest::prelude::*;

    use super::*;

    fn change(i: usize) -> StripeChange {
        let plans = [Plan::Pro, Plan::Enterprise];
        let statuses = [
            SubscriptionStatus::Active,
            SubscriptionStatus::PastDue,
            SubscriptionStatus::Ended,
        ];
        let start = at("2026-11-05T00:00:00Z") + chrono::Duration::days(i as i64 * 30);
        StripeChange::SubscriptionChanged {
            customer_id: obj("cus_1"),
            subscription_id: obj("sub_1"),
            plan: plans[i % 2],
            status: statuses[i % 3],
            period: BillingPeriod::new(start, start + chrono::Duration::days(28 + (i as i64 % 4)))
                .unwrap(),
        }
    }

    proptest! {
        /// Subscription changes delivered in any order, some twice: the state is the newest
        /// change's, and each event id is applied once.
        #[test]
        fn any_delivery_order_ends_in_the_newest_state(
            order in Just((0..6usize).collect::<Vec<_>>()).prop_shuffle(),
            repeats in prop::collection::vec(0..6usize, 0..4),
        ) {
            let mut s = Subscription::default();
            let created = |i: usize| at("2026-11-05T00:00:00Z") + chrono::Duration::minutes(i as i64);
            let mut applied = 0;
            for i in order.iter().copied().chain(repeats) {
                let cmd = SubscriptionCommand::ApplyStripeEvent(ApplyStripeEvent {
                    user_id: user(),
                    event_id: evt(&format!("evt_{i}")),
                    created: created(i),
                    change: change(i),
                    now: t0(),
                });
                if let Ok(events) = s.decide(cmd) {
                    applied += 1;
                    for e in events {
                        s.evolve(&e);
                    }
                }
            }
            prop_assert_eq!(applied, 6);
            let StripeChange::SubscriptionChanged { plan, status, period, .. } = change(5) else {
                unreachable!()
            };
            let paid = s.paid().unwrap();
            prop_assert_eq!((paid.plan, paid.status, paid.period), (plan, status, period));
        }
    }
}
