use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::{customer::*, ids::StripeObjectId, report::*, subscription::*};

fn cus() -> StripeObjectId {
    StripeObjectId::parse("cus_1").unwrap()
}

fn linked() -> SubscriptionEvent {
    CustomerLinked {
        user_id: user(),
        customer_id: cus(),
    }
    .into()
}

fn nov() -> BillingPeriod {
    BillingPeriod::new(at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z")).unwrap()
}

fn begin(consumed: u64, now: &str) -> SubscriptionCommand {
    SubscriptionCommand::BeginReport(BeginReport {
        user_id: user(),
        period: nov(),
        consumed,
        now: at(now),
    })
}

fn finish(to_unit: u64) -> SubscriptionCommand {
    SubscriptionCommand::FinishReport(FinishReport {
        user_id: user(),
        period_start: nov().start,
        to_unit,
    })
}

fn range(from: u64, to: u64, timestamp: &str) -> ReportRange {
    ReportRange {
        period: nov(),
        customer_id: cus(),
        from_unit: from,
        to_unit: to,
        identifier: identifier(user(), nov().start, from, to),
        timestamp: at(timestamp),
    }
}

fn begun(from: u64, to: u64, timestamp: &str) -> SubscriptionEvent {
    UsageReportBegun {
        user_id: user(),
        range: range(from, to, timestamp),
    }
    .into()
}

#[test]
fn a_user_without_a_customer_has_nothing_to_report_to() {
    given::<Subscription>(Vec::<SubscriptionEvent>::new())
        .when(begin(3, "2026-11-20T00:00:00Z"))
        .then_err(SubscriptionError::NoCustomer);
}

#[test]
fn consumed_units_become_one_range_with_a_stable_identifier() {
    given::<Subscription>([linked()])
        .when(begin(5, "2026-11-20T00:00:00Z"))
        .then(vec![begun(1, 5, "2026-11-20T00:00:00Z")]);
    let id = identifier(user(), nov().start, 1, 5);
    assert!(id.len() <= 100, "{id}");
    assert_eq!(id, identifier(user(), nov().start, 1, 5));
}

#[test]
fn a_begun_range_is_resent_as_it_is_and_finished_once() {
    let pending = [linked(), begun(1, 5, "2026-11-20T00:00:00Z")];
    // More units meanwhile: the begun range is still the one to send.
    given::<Subscription>(pending.clone())
        .when(begin(9, "2026-11-21T00:00:00Z"))
        .then(vec![]);
    let done: SubscriptionEvent = UsageReported {
        user_id: user(),
        period_start: nov().start,
        from_unit: 1,
        to_unit: 5,
    }
    .into();
    given::<Subscription>(pending.clone())
        .when(finish(5))
        .then(vec![done.clone()]);
    let after = [pending[0].clone(), pending[1].clone(), done];
    given::<Subscription>(after.clone())
        .when(finish(5))
        .then(vec![]);
    given::<Subscription>(after.clone())
        .when(begin(9, "2026-11-21T00:00:00Z"))
        .then(vec![begun(6, 9, "2026-11-21T00:00:00Z")]);
    given::<Subscription>(after)
        .when(begin(5, "2026-11-21T00:00:00Z"))
        .then(vec![]);
}

#[test]
fn a_closed_period_is_reported_at_its_last_second_within_stripes_window() {
    given::<Subscription>([linked()])
        .when(begin(2, "2026-12-20T00:00:00Z"))
        .then(vec![begun(1, 2, "2026-11-30T23:59:00Z")]);
    given::<Subscription>([linked()])
        .when(begin(2, "2027-01-10T00:00:00Z"))
        .then_err(SubscriptionError::ReportTooOld {
            period_end: nov().end,
        });
}

#[test]
fn meter_times_fall_in_whole_minutes_no_neighbour_shares() {
    let p = BillingPeriod::new(at("2026-11-05T12:34:56Z"), at("2026-12-05T12:34:56Z")).unwrap();
    let (lo, hi) = summary_window(&p);
    assert_eq!(
        (lo, hi),
        (at("2026-11-05T12:35:00Z"), at("2026-12-05T12:35:00Z"))
    );
    let next = BillingPeriod::new(p.end, at("2027-01-05T12:34:56Z")).unwrap();
    assert_eq!(summary_window(&next).0, hi);
    // Early in the first minute, late in the last, after the end: always inside [lo, hi).
    for now in [
        "2026-11-05T12:34:57Z",
        "2026-11-20T08:00:30Z",
        "2026-12-05T12:34:50Z",
        "2026-12-09T00:00:00Z",
    ] {
        let t = timestamp(&p, at(now)).unwrap();
        assert!(
            lo <= t && t < hi && t.timestamp() % 60 == 0 && p.contains(t),
            "{now}: {t}"
        );
    }
}

#[test]
fn a_user_links_one_customer() {
    given::<Subscription>([linked()])
        .when(SubscriptionCommand::LinkCustomer(LinkCustomer {
            user_id: user(),
            customer_id: cus(),
        }))
        .then(vec![]);
    given::<Subscription>([linked()])
        .when(SubscriptionCommand::LinkCustomer(LinkCustomer {
            user_id: user(),
            customer_id: StripeObjectId::parse("cus_2").unwrap(),
        }))
        .then_err(SubscriptionError::OtherCustomer);
}

#[test]
fn a_customer_is_claimed_once_by_one_user() {
    let claim = |u: UserId| {
        CustomerCommand::Claim(ClaimCustomer {
            customer_id: cus(),
            user_id: u,
        })
    };
    let claimed = CustomerClaimed {
        customer_id: cus(),
        user_id: user(),
    };
    given::<Customer>(Vec::<CustomerEvent>::new())
        .when(claim(user()))
        .then(vec![claimed.clone().into()]);
    given::<Customer>([claimed.clone()])
        .when(claim(user()))
        .then(vec![]);
    given::<Customer>([claimed])
        .when(claim(UserId::from_uuid(uuid::Uuid::from_u128(99))))
        .then_err(CustomerError::ClaimedByOther);
}

#[derive(Debug, Clone)]
enum Step {
    /// Units consumed meanwhile.
    Consume(u64),
    /// Reporter `r` begins (and learns the range to send).
    Begin(usize),
    /// Reporter `r` sends what it holds to "Stripe".
    Send(usize),
    /// Reporter `r` records that its range reached Stripe.
    Finish(usize),
    /// Reporter `r` crashes: it forgets what it held.
    Crash(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u64..4).prop_map(Step::Consume),
        (0usize..2).prop_map(Step::Begin),
        (0usize..2).prop_map(Step::Send),
        (0usize..2).prop_map(Step::Finish),
        (0usize..2).prop_map(Step::Crash),
    ]
}

proptest! {
    /// Two reporters interleaved in any order, crashing anywhere: Stripe (which records an
    /// identifier once) never holds a unit twice, and once both run to the end, holds each.
    #[test]
    fn reports_bill_each_unit_once_whatever_the_interleaving(steps in prop::collection::vec(step(), 1..60)) {
        let mut state = Subscription::replay([linked()].iter());
        let mut consumed = 0u64;
        let mut held: [Option<ReportRange>; 2] = [None, None];
        let mut stripe: BTreeMap<String, ReportRange> = BTreeMap::new();
        let now = at("2026-11-20T00:00:00Z");
        let run = |state: &mut Subscription, c: SubscriptionCommand| {
            for e in state.decide(c).unwrap() {
                state.evolve(&e);
            }
        };
        for s in steps.iter().cloned().chain([Step::Crash(0), Step::Crash(1)]) {
            match s {
                Step::Consume(n) => consumed += n,
                Step::Begin(r) => {
                    run(&mut state, SubscriptionCommand::BeginReport(BeginReport {
                        user_id: user(), period: nov(), consumed, now,
                    }));
                    held[r] = state.pending_report(nov().start).cloned();
                }
                Step::Send(r) => if let Some(range) = &held[r] {
                    stripe.entry(range.identifier.clone()).or_insert_with(|| range.clone());
                },
                Step::Finish(r) => {
                    let reached = held[r].take().filter(|range| stripe.contains_key(&range.identifier));
                    if let Some(range) = reached {
                        run(&mut state, finish(range.to_unit));
                    }
                }
                Step::Crash(r) => held[r] = None,
            }
        }
        // A last clean run reports the rest.
        loop {
            run(&mut state, SubscriptionCommand::BeginReport(BeginReport {
                user_id: user(), period: nov(), consumed, now,
            }));
            let Some(range) = state.pending_report(nov().start).cloned() else { break };
            stripe.entry(range.identifier.clone()).or_insert_with(|| range.clone());
            run(&mut state, finish(range.to_unit));
        }
        let mut units: Vec<u64> = stripe.values().flat_map(|r| r.from_unit..=r.to_unit).collect();
        units.sort_unstable();
        prop_assert_eq!(units, (1..=consumed).collect::<Vec<_>>());
        prop_assert_eq!(state.reported(nov().start), consumed);
    }
}
