//! The cqrs-es impls delegate to the deciders: same events, same refusals.

use cqrs_es::{Aggregate, test::TestFramework};
use serde_json::json;

use super::*;
use crate::{
    ids::WorkerId,
    job::*,
    plan::Plan,
    retry::{Attempt, MaxAttempts, RetryPolicy},
    task::TaskType,
    usage::*,
};

#[test]
fn aggregate_types_are_stable() {
    assert_eq!(<Job as Aggregate>::TYPE, "job");
    assert_eq!(<Usage as Aggregate>::TYPE, "usage");
    assert_eq!(
        <crate::subscription::Subscription as Aggregate>::TYPE,
        "subscription"
    );
    assert_eq!(<crate::customer::Customer as Aggregate>::TYPE, "customer");
}

#[test]
fn job_handle_matches_decide() {
    let submit = SubmitJob {
        job_id: job_id(1),
        user_id: user(),
        task_type: TaskType::parse("noop").unwrap(),
        payload: json!({}),
        correlation_id: corr(),
        run_at: None,
        max_attempts: MaxAttempts::new(1).unwrap(),
        retry: RetryPolicy::default(),
        usage: usage_key(),
        concurrency: None,
        now: t0(),
    };
    let submitted = Job::default()
        .decide(JobCommand::Submit(submit.clone()))
        .unwrap();
    TestFramework::<Job>::with(())
        .given_no_previous_events()
        .when(JobCommand::Submit(submit.clone()))
        .then_expect_events(submitted.clone());
    TestFramework::<Job>::with(())
        .given(submitted.clone())
        .when(JobCommand::Submit(submit))
        .then_expect_error(JobError::AlreadySubmitted);
    let start = StartJob {
        attempt: Attempt::FIRST,
        worker_id: WorkerId::parse("w").unwrap(),
        now: t0(),
    };
    let started = Job::replay(submitted.iter())
        .decide(JobCommand::Start(start.clone()))
        .unwrap();
    TestFramework::<Job>::with(())
        .given(submitted)
        .when(JobCommand::Start(start))
        .then_expect_events(started);
}

#[test]
fn usage_handle_applies_each_event_before_the_next() {
    let reserve = UsageCommand::Reserve(ReserveUnit {
        job_id: job_id(1),
        user_id: user(),
        period: period(),
        plan: Plan::Free,
        limit: Some(1),
        now: t0(),
    });
    let reserved = Usage::default().decide(reserve.clone()).unwrap();
    TestFramework::<Usage>::with(())
        .given_no_previous_events()
        .when(reserve)
        .then_expect_events(reserved.clone());
    let second = UsageCommand::Reserve(ReserveUnit {
        job_id: job_id(2),
        user_id: user(),
        period: period(),
        plan: Plan::Free,
        limit: Some(1),
        now: t0(),
    });
    TestFramework::<Usage>::with(())
        .given(reserved)
        .when(second)
        .then_expect_error(UsageError::QuotaExceeded {
            limit: 1,
            consumed: 0,
            reserved: 1,
        });
}
