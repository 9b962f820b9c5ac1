use super::*;
use crate::{chain::GENESIS, plan::Plan, usage::*};

fn reserve(n: u128, limit: Option<u64>) -> UsageCommand {
    UsageCommand::Reserve(ReserveUnit {
        job_id: job_id(n),
        user_id: user(),
        period: period(),
        plan: Plan::Free,
        limit,
        now: t0(),
    })
}

fn reserved(n: u128, limit: Option<u64>) -> UsageEvent {
    UnitReserved {
        job_id: job_id(n),
        user_id: user(),
        period: period(),
        plan: Plan::Free,
        limit,
        reserved_at: t0(),
    }
    .into()
}

fn commit(n: u128) -> UsageCommand {
    UsageCommand::Commit(CommitUnit {
        job_id: job_id(n),
        now: later(10),
    })
}

fn release(n: u128) -> UsageCommand {
    UsageCommand::Release(ReleaseUnit {
        job_id: job_id(n),
        reason: ReleaseReason::Canceled,
        now: later(10),
    })
}

fn released(n: u128) -> UsageEvent {
    UnitReleased {
        job_id: job_id(n),
        reason: ReleaseReason::Canceled,
        released_at: later(10),
    }
    .into()
}

/// The events of committing job `n` on top of `history`.
fn consumed(history: &[UsageEvent], n: u128) -> UsageEvent {
    let state = Usage::replay(history.iter());
    let mut events = state.decide(commit(n)).unwrap();
    assert_eq!(events.len(), 1);
    events.remove(0)
}

#[test]
fn reserve_holds_a_unit() {
    given::<Usage>(Vec::<UsageEvent>::new())
        .when(reserve(1, Some(2)))
        .then(vec![reserved(1, Some(2))]);
}

#[test]
fn reserving_past_the_limit_is_refused() {
    given::<Usage>([reserved(1, Some(2)), reserved(2, Some(2))])
        .when(reserve(3, Some(2)))
        .then_err(UsageError::QuotaExceeded {
            limit: 2,
            consumed: 0,
            reserved: 2,
        });
    given::<Usage>(Vec::<UsageEvent>::new())
        .when(reserve(1, Some(0)))
        .then_err(UsageError::QuotaExceeded {
            limit: 0,
            consumed: 0,
            reserved: 0,
        });
}

#[test]
fn consumed_units_count_against_the_limit_and_released_ones_do_not() {
    let mut h = vec![reserved(1, Some(2)), reserved(2, Some(2))];
    h.push(consumed(&h, 1));
    h.push(released(2));
    given::<Usage>(h.clone())
        .when(reserve(3, Some(2)))
        .then(vec![reserved(3, Some(2))]);
    h.push(reserved(3, Some(2)));
    given::<Usage>(h)
        .when(reserve(4, Some(2)))
        .then_err(UsageError::QuotaExceeded {
            limit: 2,
            consumed: 1,
            reserved: 1,
        });
}

#[test]
fn unlimited_plans_never_refuse() {
    let h: Vec<UsageEvent> = (0..500).map(|n| reserved(n, None)).collect();
    given::<Usage>(h)
        .when(reserve(1_000, None))
        .then(vec![reserved(1_000, None)]);
}

#[test]
fn reserving_the_same_job_twice_is_a_no_op() {
    given::<Usage>([reserved(1, Some(1))])
        .when(reserve(1, Some(1)))
        .then(vec![]);
}

#[test]
fn a_reservation_for_another_user_or_outside_the_period_is_refused() {
    let mut c = ReserveUnit {
        job_id: job_id(2),
        user_id: other_user(),
        period: period(),
        plan: Plan::Free,
        limit: None,
        now: t0(),
    };
    given::<Usage>([reserved(1, None)])
        .when(UsageCommand::Reserve(c.clone()))
        .then_err(UsageError::WrongLedger);
    c.user_id = user();
    c.now = period().end;
    given::<Usage>(Vec::<UsageEvent>::new())
        .when(UsageCommand::Reserve(c))
        .then_err(UsageError::WrongLedger);
}

#[test]
fn commit_consumes_the_first_unit_on_the_genesis_hash() {
    let events = given::<Usage>([reserved(1, None)]).when(commit(1)).events();
    let [UsageEvent::UnitConsumed(u)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!((u.unit, u.job_id, u.user_id), (1, job_id(1), user()));
    assert_eq!(u.period_start, period().start);
    assert_eq!(u.prev_hash, GENESIS);
    assert_eq!(u.hash, unit_hash(u));
}

#[test]
fn each_unit_links_to_the_previous_one() {
    let mut h = vec![reserved(1, None), reserved(2, None)];
    h.push(consumed(&h, 1));
    h.push(consumed(&h, 2));
    let (UsageEvent::UnitConsumed(first), UsageEvent::UnitConsumed(second)) = (&h[2], &h[3]) else {
        panic!("{h:?}")
    };
    assert_eq!(second.unit, 2);
    assert_eq!(second.prev_hash, first.hash);
    let state = Usage::replay(h.iter());
    assert_eq!(state.state().unwrap().chain_head, second.hash);
}

#[test]
fn committing_twice_counts_once() {
    let mut h = vec![reserved(1, None)];
    h.push(consumed(&h, 1));
    given::<Usage>(h)
        .when(commit(1))
        .then_err(UsageError::NotReserved(job_id(1)));
}

#[test]
fn committing_without_a_reservation_is_refused() {
    given::<Usage>(Vec::<UsageEvent>::new())
        .when(commit(1))
        .then_err(UsageError::NotReserved(job_id(1)));
    given::<Usage>([reserved(2, None)])
        .when(commit(1))
        .then_err(UsageError::NotReserved(job_id(1)));
}

#[test]
fn committing_a_released_unit_is_refused() {
    given::<Usage>([reserved(1, None), released(1)])
        .when(commit(1))
        .then_err(UsageError::NotReserved(job_id(1)));
}

#[test]
fn release_gives_the_unit_back_once() {
    given::<Usage>([reserved(1, None)])
        .when(release(1))
        .then(vec![released(1)]);
    given::<Usage>([reserved(1, None), released(1)])
        .when(release(1))
        .then_err(UsageError::NotReserved(job_id(1)));
}

#[test]
fn releasing_a_consumed_unit_is_refused() {
    let mut h = vec![reserved(1, None)];
    h.push(consumed(&h, 1));
    given::<Usage>(h)
        .when(release(1))
        .then_err(UsageError::NotReserved(job_id(1)));
}

#[test]
fn the_state_holds_only_open_reservations() {
    let mut h = vec![reserved(1, None), reserved(2, None), reserved(3, None)];
    h.push(consumed(&h, 1));
    h.push(released(2));
    let usage = Usage::replay(h.iter());
    let s = usage.state().unwrap();
    assert_eq!(
        s.reserved.keys().copied().collect::<Vec<_>>(),
        vec![job_id(3)]
    );
    assert_eq!((s.consumed_units(), s.reserved_units()), (1, 1));
    // A snapshot's size does not grow with settled jobs.
    let small = serde_json::to_string(&usage).unwrap().len();
    for n in 10..60 {
        h.push(reserved(n, None));
        h.push(consumed(&h, n));
    }
    let later = serde_json::to_string(&Usage::replay(h.iter()))
        .unwrap()
        .len();
    assert!(later <= small + 8, "{small} -> {later}");
}

#[test]
fn a_snapshot_that_listed_consumed_jobs_reads_as_their_count() {
    let mut h = vec![reserved(1, None), reserved(2, None), reserved(3, None)];
    h.push(consumed(&h, 1));
    h.push(consumed(&h, 2));
    let usage = Usage::replay(h.iter());
    let mut old = serde_json::to_value(&usage).unwrap();
    // The shape snapshots had before the state kept counts.
    old["state"]["consumed"] = serde_json::json!([job_id(1), job_id(2)]);
    old["state"]["released"] = serde_json::json!([]);
    let read: Usage = serde_json::from_value(old).unwrap();
    assert_eq!(read, usage);
    assert_eq!(read.state().unwrap().consumed_units(), 2);
}

#[test]
fn closing_stops_reservations_but_lets_held_units_complete() {
    let close = || UsageCommand::Close(ClosePeriod { now: later(20) });
    let h = vec![reserved(1, None), reserved(2, None), released(2)];
    let closed: UsageEvent = PeriodClosed {
        units: 0,
        pending: 1,
        closed_at: later(20),
    }
    .into();
    given::<Usage>(h.clone())
        .when(close())
        .then(vec![closed.clone()]);
    let mut h = h;
    h.push(closed);
    given::<Usage>(h.clone()).when(close()).then(vec![]);
    given::<Usage>(h.clone())
        .when(reserve(3, None))
        .then_err(UsageError::PeriodClosed);
    let events = given::<Usage>(h).when(commit(1)).events();
    assert!(matches!(events.as_slice(), [UsageEvent::UnitConsumed(u)] if u.unit == 1));
    given::<Usage>(Vec::<UsageEvent>::new())
        .when(close())
        .then(vec![]);
}

#[test]
fn the_sweeper_sees_old_reservations_only() {
    let mut old = reserved(1, None);
    if let UsageEvent::UnitReserved(r) = &mut old {
        r.reserved_at = at("2026-11-10T11:00:00Z");
    }
    let usage = Usage::replay([old, reserved(2, None)].iter());
    assert_eq!(
        usage.reservations_before(at("2026-11-10T11:30:00Z")),
        vec![job_id(1)]
    );
}

#[test]
fn usage_keys_name_user_and_period() {
    assert_eq!(
        usage_key().aggregate_id(),
        "0b5c8f6e-2f1d-4c1a-9a61-3f3f0b7a1e01:2026-11-01T00:00:00Z"
    );
}

/// A ledger opened on a guessed period (the previous one's length) takes the renewal's real
/// end when a reservation carries it: no refusal, no second ledger, the same limit.
#[test]
fn a_guessed_period_end_is_corrected_by_the_next_reservation() {
    let guessed = period();
    let real = BillingPeriod::new(guessed.start, guessed.end - chrono::Duration::days(3)).unwrap();
    let at_real = |n: u128, limit: Option<u64>| {
        UsageCommand::Reserve(ReserveUnit {
            job_id: job_id(n),
            user_id: user(),
            period: real,
            plan: Plan::Pro,
            limit,
            now: later(60),
        })
    };
    let history = [reserved(1, Some(2))];
    let events = given::<Usage>(history.clone())
        .when(at_real(2, Some(2)))
        .events();
    let [UsageEvent::UnitReserved(r)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(r.period, real);
    let mut all: Vec<UsageEvent> = history.to_vec();
    all.extend(events);
    let state = Usage::replay(all.iter());
    assert_eq!(state.state().map(|s| s.period), Some(real));
    // The limit still holds across the correction.
    given::<Usage>(all)
        .when(at_real(3, Some(2)))
        .then_err(UsageError::QuotaExceeded {
            limit: 2,
            consumed: 0,
            reserved: 2,
        });
    // Another start is another ledger's business.
    let shifted =
        BillingPeriod::new(guessed.start + chrono::Duration::days(1), guessed.end).unwrap();
    given::<Usage>(history)
        .when(UsageCommand::Reserve(ReserveUnit {
            job_id: job_id(4),
            user_id: user(),
            period: shifted,
            plan: Plan::Pro,
            limit: None,
            now: later(86_400 * 2),
        }))
        .then_err(UsageError::WrongLedger);
}
