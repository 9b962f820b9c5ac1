//! For any interleaving of commands, the ledger never overshoots and never double-counts.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::{
    chain::verify_chain,
    ids::WorkerId,
    job::*,
    plan::Plan,
    process::usage_reaction,
    retry::{Attempt, MaxAttempts, RetryPolicy},
    task::TaskType,
    usage::*,
};

#[derive(Debug, Clone)]
enum Op {
    Reserve(u8),
    Submit(u8),
    Start(u8, u8),
    Complete(u8, u8),
    Fail(u8, u8, bool),
    Cancel(u8),
    /// A redelivered or stray commit, as a broken relay would send.
    Commit(u8),
    /// The sweeper releasing a reservation of a job never submitted.
    Release(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let j = 0u8..12;
    let n = 1u8..4;
    prop_oneof![
        j.clone().prop_map(Op::Reserve),
        j.clone().prop_map(Op::Submit),
        (j.clone(), n.clone()).prop_map(|(j, n)| Op::Start(j, n)),
        (j.clone(), n.clone()).prop_map(|(j, n)| Op::Complete(j, n)),
        (j.clone(), n, any::<bool>()).prop_map(|(j, n, r)| Op::Fail(j, n, r)),
        j.clone().prop_map(Op::Cancel),
        j.clone().prop_map(Op::Commit),
        j.prop_map(Op::Release),
    ]
}

/// A small system: one usage ledger, some jobs, and the process manager between them.
#[derive(Default)]
struct World {
    usage: Usage,
    usage_log: Vec<UsageEvent>,
    jobs: BTreeMap<u8, Job>,
    job_logs: BTreeMap<u8, Vec<JobEvent>>,
    /// Jobs ever reserved: the store's unique key on a job's first event, committed with
    /// its reservation, allows one reservation per job id.
    ever_reserved: BTreeSet<u8>,
}

impl World {
    fn usage_cmd(&mut self, cmd: UsageCommand) {
        if let Ok(events) = self.usage.decide(cmd) {
            for e in events {
                self.usage.evolve(&e);
                self.usage_log.push(e);
            }
        }
    }

    fn job_cmd(&mut self, j: u8, cmd: JobCommand) {
        let job = self.jobs.entry(j).or_default();
        let Ok(events) = job.decide(cmd) else { return };
        for e in &events {
            job.evolve(e);
        }
        self.job_logs
            .entry(j)
            .or_default()
            .extend(events.iter().cloned());
        for e in &events {
            if let Some((key, cmd)) = usage_reaction(job_id(j.into()), e, later(30)) {
                assert_eq!(key, usage_key());
                self.usage_cmd(cmd);
            }
        }
    }

    fn run(&mut self, op: Op, limit: Option<u64>) {
        let a = |n: u8| Attempt::new(n.into()).unwrap();
        match op {
            Op::Reserve(j) => {
                let open = self
                    .usage
                    .state()
                    .is_some_and(|s| s.reserved.contains_key(&job_id(j.into())));
                // A redelivered reservation of a held unit is let through (a no-op);
                // one of a settled job is what the store's unique key refuses.
                if open || !self.ever_reserved.contains(&j) {
                    self.usage_cmd(UsageCommand::Reserve(ReserveUnit {
                        job_id: job_id(j.into()),
                        user_id: user(),
                        period: period(),
                        plan: Plan::Free,
                        limit,
                        now: t0(),
                    }));
                    if self
                        .usage
                        .state()
                        .is_some_and(|s| s.reserved.contains_key(&job_id(j.into())))
                    {
                        self.ever_reserved.insert(j);
                    }
                }
            }
            Op::Submit(j) => {
                // The command side submits only after its reservation held.
                let held = self
                    .usage
                    .state()
                    .is_some_and(|s| s.reserved.contains_key(&job_id(j.into())));
                if held {
                    self.job_cmd(
                        j,
                        JobCommand::Submit(SubmitJob {
                            job_id: job_id(j.into()),
                            user_id: user(),
                            task_type: TaskType::parse("noop").unwrap(),
                            payload: json!({}),
                            correlation_id: corr(),
                            run_at: None,
                            max_attempts: MaxAttempts::new(2).unwrap(),
                            retry: RetryPolicy::default(),
                            usage: usage_key(),
                            concurrency: None,
                            now: t0(),
                        }),
                    );
                }
            }
            Op::Start(j, n) => self.job_cmd(
                j,
                JobCommand::Start(StartJob {
                    attempt: a(n),
                    worker_id: WorkerId::parse("w").unwrap(),
                    now: later(1),
                }),
            ),
            Op::Complete(j, n) => self.job_cmd(
                j,
                JobCommand::Complete(CompleteJob {
                    attempt: a(n),
                    result: json!(null),
                    now: later(2),
                }),
            ),
            Op::Fail(j, n, retryable) => self.job_cmd(
                j,
                JobCommand::Fail(FailJob {
                    attempt: a(n),
                    error: ErrorText::truncated("x"),
                    retryable,
                    retry_after_ms: None,
                    now: later(2),
                    jitter_seed: 1,
                }),
            ),
            Op::Cancel(j) => self.job_cmd(j, JobCommand::Cancel(CancelJob { now: later(3) })),
            Op::Commit(j) => self.usage_cmd(UsageCommand::Commit(CommitUnit {
                job_id: job_id(j.into()),
                now: later(4),
            })),
            Op::Release(j) => {
                // The sweeper releases only reservations whose job was never submitted.
                if self.jobs.get(&j).is_none_or(|job| job.state().is_none()) {
                    self.usage_cmd(UsageCommand::Release(ReleaseUnit {
                        job_id: job_id(j.into()),
                        reason: ReleaseReason::Orphaned,
                        now: later(4),
                    }));
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_ledger_never_overshoots_nor_double_counts(
        ops in proptest::collection::vec(op(), 0..120),
        limit in prop_oneof![Just(None), (0u64..8).prop_map(Some)],
    ) {
        let mut w = World::default();
        for op in ops {
            w.run(op, limit);
            if let (Some(s), Some(limit)) = (w.usage.state(), limit) {
                prop_assert!(s.consumed_units() + s.reserved_units() <= limit);
            }
        }
        let mut seen = BTreeSet::new();
        let units: Vec<serde_json::Value> = w.usage_log.iter().filter_map(|e| match e {
            UsageEvent::UnitConsumed(u) => Some(serde_json::to_value(u).unwrap()),
            _ => None,
        }).collect();
        for e in &w.usage_log {
            if let UsageEvent::UnitConsumed(u) = e {
                prop_assert!(seen.insert(u.job_id), "job {} consumed twice", u.job_id);
            }
        }
        // No unit is counted for a job that did not complete (stray commits aside, which
        // need a reservation held by a job that is still live).
        let completed: BTreeSet<_> = w.job_logs.iter()
            .filter(|(_, log)| log.iter().any(|e| matches!(e, JobEvent::JobCompleted(_))))
            .map(|(j, _)| job_id((*j).into()))
            .collect();
        for j in &completed {
            prop_assert!(seen.contains(j), "completed job {j} not consumed");
        }
        let head = verify_chain(units.iter()).unwrap();
        prop_assert_eq!(head.units, seen.len() as u64);
    }

    #[test]
    fn replaying_the_same_events_gives_the_same_state(
        ops in proptest::collection::vec(op(), 0..120),
        limit in prop_oneof![Just(None), (0u64..8).prop_map(Some)],
    ) {
        let mut w = World::default();
        for op in ops {
            w.run(op, limit);
        }
        // Through storage and back: the state depends on the events alone.
        let stored = serde_json::to_string(&w.usage_log).unwrap();
        let loaded: Vec<UsageEvent> = serde_json::from_str(&stored).unwrap();
        prop_assert_eq!(&Usage::replay(loaded.iter()), &w.usage);
        prop_assert_eq!(Usage::replay(w.usage_log.iter()), Usage::replay(w.usage_log.iter()));
        for (j, log) in &w.job_logs {
            let stored = serde_json::to_string(log).unwrap();
            let loaded: Vec<JobEvent> = serde_json::from_str(&stored).unwrap();
            prop_assert_eq!(&Job::replay(loaded.iter()), &w.jobs[j]);
        }
    }
}

#[test]
fn a_full_life_counts_exactly_one_unit() {
    let mut w = World::default();
    for op in [
        Op::Reserve(1),
        Op::Submit(1),
        Op::Start(1, 1),
        Op::Fail(1, 1, true),
        Op::Start(1, 2),
        Op::Complete(1, 2),
        Op::Complete(1, 2),
        Op::Commit(1),
        Op::Release(1),
        Op::Cancel(1),
    ] {
        w.run(op, Some(1));
    }
    let s = w.usage.state().unwrap();
    assert_eq!((s.consumed_units(), s.reserved_units()), (1, 0));
    let consumed = w
        .usage_log
        .iter()
        .filter(|e| matches!(e, UsageEvent::UnitConsumed(_)))
        .count();
    assert_eq!(consumed, 1);
}

proptest! {
    /// Reservations whose period ends move around (guesses, then corrections, in any order)
    /// stay on one ledger and never hold more units than the limit.
    #[test]
    fn corrected_period_ends_never_fork_or_exceed_the_limit(
        ends in proptest::collection::vec(20i64..40, 1..40),
        limit in 1u64..10,
    ) {
        let start = crate::tests::t0();
        let mut ledger = Usage::default();
        let mut held = 0u64;
        for (i, days) in ends.iter().enumerate() {
            let period = crate::period::BillingPeriod::new(start, start + chrono::Duration::days(*days)).unwrap();
            let c = ReserveUnit {
                job_id: crate::tests::job_id(i as u128 + 1),
                user_id: crate::tests::user(),
                period,
                plan: crate::plan::Plan::Pro,
                limit: Some(limit),
                now: start + chrono::Duration::days(1),
            };
            match ledger.decide(UsageCommand::Reserve(c)) {
                Ok(events) => {
                    for e in &events {
                        ledger.evolve(e);
                    }
                    held += events.len() as u64;
                    prop_assert_eq!(ledger.state().map(|s| s.period), Some(period));
                }
                Err(UsageError::QuotaExceeded { .. }) => prop_assert_eq!(held, limit),
                Err(e) => prop_assert!(false, "refused: {e}"),
            }
            prop_assert!(held <= limit);
        }
    }
}
