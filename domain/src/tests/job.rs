use serde_json::json;

use super::*;
use crate::{
    ids::WorkerId,
    job::*,
    retry::{Attempt, MaxAttempts, RetryPolicy},
    task::TaskType,
};

fn submit(run_at: Option<DateTime<Utc>>, max_attempts: u32) -> SubmitJob {
    SubmitJob {
        job_id: job_id(1),
        user_id: user(),
        task_type: TaskType::parse("noop").unwrap(),
        payload: json!({"x": 1}),
        correlation_id: corr(),
        run_at,
        max_attempts: MaxAttempts::new(max_attempts).unwrap(),
        retry: RetryPolicy {
            base_ms: 1_000,
            cap_ms: 60_000,
        },
        usage: usage_key(),
        concurrency: None,
        now: t0(),
    }
}

fn submitted(run_at: Option<DateTime<Utc>>, max_attempts: u32) -> JobEvent {
    let c = submit(run_at, max_attempts);
    let status = if run_at.is_some() {
        JobStatus::Scheduled
    } else {
        JobStatus::Queued
    };
    JobSubmitted {
        job_id: c.job_id,
        user_id: c.user_id,
        task_type: c.task_type,
        payload: c.payload,
        correlation_id: c.correlation_id,
        run_at,
        max_attempts: c.max_attempts,
        retry: c.retry,
        usage: c.usage,
        status,
        submitted_at: t0(),
        concurrency: None,
    }
    .into()
}

fn a(n: u32) -> Attempt {
    Attempt::new(n).unwrap()
}

fn worker(w: &str) -> WorkerId {
    WorkerId::parse(w).unwrap()
}

fn started(n: u32) -> JobEvent {
    JobStarted {
        attempt: a(n),
        worker_id: worker("w1"),
        started_at: later(n.into()),
    }
    .into()
}

fn start(n: u32, w: &str) -> JobCommand {
    JobCommand::Start(StartJob {
        attempt: a(n),
        worker_id: worker(w),
        now: later(1),
    })
}

fn complete(n: u32) -> JobCommand {
    JobCommand::Complete(CompleteJob {
        attempt: a(n),
        result: json!({"ok": true}),
        now: later(5),
    })
}

fn fail(n: u32, retryable: bool) -> JobCommand {
    JobCommand::Fail(FailJob {
        attempt: a(n),
        error: ErrorText::truncated("boom"),
        retryable,
        retry_after_ms: None,
        now: later(5),
        jitter_seed: 42,
    })
}

fn failed(n: u32, retryable: bool) -> JobEvent {
    JobFailed {
        attempt: a(n),
        error: ErrorText::truncated("boom"),
        retryable,
        failed_at: later(5),
    }
    .into()
}

fn retry_scheduled(next: u32) -> JobEvent {
    let policy = RetryPolicy {
        base_ms: 1_000,
        cap_ms: 60_000,
    };
    let delay = chrono::Duration::from_std(policy.delay(a(next - 1), 42)).unwrap();
    JobRetryScheduled {
        next_attempt: a(next),
        not_before: later(5) + delay,
    }
    .into()
}

fn completed(n: u32) -> JobEvent {
    JobCompleted {
        attempt: a(n),
        result: json!({"ok": true}),
        usage: usage_key(),
        completed_at: later(5),
    }
    .into()
}

fn canceled(previous_status: JobStatus) -> JobEvent {
    JobCanceled {
        previous_status,
        usage: usage_key(),
        canceled_at: later(9),
    }
    .into()
}

fn cancel() -> JobCommand {
    JobCommand::Cancel(CancelJob { now: later(9) })
}

#[test]
fn submit_queues_a_job_to_run_now() {
    given::<Job>(Vec::<JobEvent>::new())
        .when(JobCommand::Submit(submit(None, 3)))
        .then(vec![submitted(None, 3)]);
}

#[test]
fn submit_with_a_future_run_at_schedules_it_and_a_past_one_queues_it() {
    let future = later(3_600);
    given::<Job>(Vec::<JobEvent>::new())
        .when(JobCommand::Submit(submit(Some(future), 3)))
        .then(vec![submitted(Some(future), 3)]);
    given::<Job>(Vec::<JobEvent>::new())
        .when(JobCommand::Submit(submit(Some(later(-60)), 3)))
        .then(vec![submitted(None, 3)]);
}

#[test]
fn submitting_the_same_job_twice_is_refused() {
    given::<Job>([submitted(None, 3)])
        .when(JobCommand::Submit(submit(None, 3)))
        .then_err(JobError::AlreadySubmitted);
}

#[test]
fn commands_on_a_job_never_submitted_are_refused() {
    given::<Job>(Vec::<JobEvent>::new())
        .when(start(1, "w1"))
        .then_err(JobError::NotFound);
    given::<Job>(Vec::<JobEvent>::new())
        .when(cancel())
        .then_err(JobError::NotFound);
}

#[test]
fn start_records_the_attempt_and_worker() {
    given::<Job>([submitted(None, 3)])
        .when(start(1, "w1"))
        .then(vec![
            JobStarted {
                attempt: a(1),
                worker_id: worker("w1"),
                started_at: later(1),
            }
            .into(),
        ]);
}

fn start_at(n: u32, now: DateTime<Utc>) -> JobCommand {
    JobCommand::Start(StartJob {
        attempt: a(n),
        worker_id: worker("w1"),
        now,
    })
}

#[test]
fn a_scheduled_job_starts_at_its_run_at_and_not_before() {
    let run_at = later(60);
    given::<Job>([submitted(Some(run_at), 3)])
        .when(start(1, "w1"))
        .then_err(JobError::NotDue { not_before: run_at });
    // Within the leeway for clocks that differ between hosts, and after.
    for now in [
        run_at - chrono::Duration::milliseconds(START_LEEWAY_MS),
        run_at,
        later(61),
    ] {
        given::<Job>([submitted(Some(run_at), 3)])
            .when(start_at(1, now))
            .then(vec![
                JobStarted {
                    attempt: a(1),
                    worker_id: worker("w1"),
                    started_at: now,
                }
                .into(),
            ]);
    }
    given::<Job>([submitted(Some(run_at), 3)])
        .when(start_at(
            1,
            run_at - chrono::Duration::milliseconds(START_LEEWAY_MS + 1),
        ))
        .then_err(JobError::NotDue { not_before: run_at });
}

#[test]
fn a_retry_does_not_start_before_its_backoff() {
    let history = [
        submitted(None, 3),
        started(1),
        failed(1, true),
        retry_scheduled(2),
    ];
    let JobEvent::JobRetryScheduled(r) = retry_scheduled(2) else {
        unreachable!()
    };
    given::<Job>(history.clone())
        .when(start_at(2, later(4)))
        .then_err(JobError::NotDue {
            not_before: r.not_before,
        });
    given::<Job>(history)
        .when(start_at(2, r.not_before))
        .then(vec![
            JobStarted {
                attempt: a(2),
                worker_id: worker("w1"),
                started_at: r.not_before,
            }
            .into(),
        ]);
}

#[test]
fn a_retry_waits_at_least_what_the_failed_call_asked_for() {
    let fail_asking = |ms: u64| {
        JobCommand::Fail(FailJob {
            attempt: a(1),
            error: ErrorText::truncated("boom"),
            retryable: true,
            retry_after_ms: Some(ms),
            now: later(5),
            jitter_seed: 42,
        })
    };
    // Longer than the backoff: the retry waits for it.
    given::<Job>([submitted(None, 3), started(1)])
        .when(fail_asking(30_000))
        .then(vec![
            failed(1, true),
            JobRetryScheduled {
                next_attempt: a(2),
                not_before: later(5) + chrono::Duration::seconds(30),
            }
            .into(),
        ]);
    // Shorter than the backoff: the backoff stands.
    given::<Job>([submitted(None, 3), started(1)])
        .when(fail_asking(1))
        .then(vec![failed(1, true), retry_scheduled(2)]);
    // More than a day is a day.
    given::<Job>([submitted(None, 3), started(1)])
        .when(fail_asking(u64::MAX))
        .then(vec![
            failed(1, true),
            JobRetryScheduled {
                next_attempt: a(2),
                not_before: later(5) + chrono::Duration::days(1),
            }
            .into(),
        ]);
}

#[test]
fn start_delivered_twice_by_the_same_worker_is_a_no_op_and_by_another_is_refused() {
    given::<Job>([submitted(None, 3), started(1)])
        .when(start(1, "w1"))
        .then(vec![]);
    given::<Job>([submitted(None, 3), started(1)])
        .when(start(1, "w2"))
        .then_err(JobError::StartedElsewhere { attempt: 1 });
}

#[test]
fn start_of_a_stale_attempt_is_refused() {
    given::<Job>([
        submitted(None, 3),
        started(1),
        failed(1, true),
        retry_scheduled(2),
    ])
    .when(start(1, "w1"))
    .then_err(JobError::StaleAttempt { current: 2, got: 1 });
}

#[test]
fn heartbeat_needs_the_running_attempt() {
    given::<Job>([submitted(None, 3), started(1)])
        .when(JobCommand::Heartbeat(HeartbeatJob {
            attempt: a(1),
            now: later(2),
        }))
        .then(vec![
            JobHeartbeat {
                attempt: a(1),
                at: later(2),
            }
            .into(),
        ]);
    given::<Job>([submitted(None, 3)])
        .when(JobCommand::Heartbeat(HeartbeatJob {
            attempt: a(1),
            now: later(2),
        }))
        .then_err(JobError::NotRunning {
            status: JobStatus::Queued,
        });
    given::<Job>([submitted(None, 3), started(1)])
        .when(JobCommand::Heartbeat(HeartbeatJob {
            attempt: a(2),
            now: later(2),
        }))
        .then_err(JobError::StaleAttempt { current: 1, got: 2 });
}

#[test]
fn complete_records_the_result_and_the_usage_ledger() {
    given::<Job>([submitted(None, 3), started(1)])
        .when(complete(1))
        .then(vec![completed(1)]);
}

#[test]
fn completing_twice_is_refused() {
    given::<Job>([submitted(None, 3), started(1), completed(1)])
        .when(complete(1))
        .then_err(JobError::Finished {
            status: JobStatus::Completed,
        });
}

#[test]
fn completing_an_old_attempt_is_refused() {
    given::<Job>([
        submitted(None, 3),
        started(1),
        failed(1, true),
        retry_scheduled(2),
        started(2),
    ])
    .when(complete(1))
    .then_err(JobError::StaleAttempt { current: 2, got: 1 });
}

#[test]
fn completing_before_start_is_refused() {
    given::<Job>([submitted(None, 3)])
        .when(complete(1))
        .then_err(JobError::NotRunning {
            status: JobStatus::Queued,
        });
}

#[test]
fn a_retryable_failure_schedules_the_next_attempt_with_backoff() {
    let events = given::<Job>([submitted(None, 3), started(1)])
        .when(fail(1, true))
        .events();
    assert_eq!(events, vec![failed(1, true), retry_scheduled(2)]);
    let JobEvent::JobRetryScheduled(r) = &events[1] else {
        panic!("{events:?}")
    };
    let wait = r.not_before - later(5);
    assert!(wait >= chrono::Duration::milliseconds(500) && wait <= chrono::Duration::seconds(1));
    let job = Job::replay([submitted(None, 3), started(1)].iter().chain(&events));
    let s = job.state().unwrap();
    assert_eq!((s.status, s.attempt), (JobStatus::Retrying, a(2)));
    assert_eq!(job.envelope().unwrap().attempt, a(2));
}

#[test]
fn the_last_attempt_failing_dead_letters_the_job() {
    given::<Job>([
        submitted(None, 2),
        started(1),
        failed(1, true),
        retry_scheduled(2),
        started(2),
    ])
    .when(fail(2, true))
    .then(vec![
        failed(2, true),
        JobDeadLettered {
            attempts: a(2),
            error: ErrorText::truncated("boom"),
            usage: usage_key(),
            dead_lettered_at: later(5),
        }
        .into(),
    ]);
}

#[test]
fn a_fatal_failure_dead_letters_at_once() {
    let events = given::<Job>([submitted(None, 5), started(1)])
        .when(fail(1, false))
        .events();
    assert!(matches!(events[1], JobEvent::JobDeadLettered(_)));
    let job = Job::replay([submitted(None, 5), started(1)].iter().chain(&events));
    assert_eq!(job.state().unwrap().status, JobStatus::Failed);
}

#[test]
fn fail_of_a_stale_attempt_is_refused() {
    given::<Job>([
        submitted(None, 3),
        started(1),
        failed(1, true),
        retry_scheduled(2),
    ])
    .when(fail(1, true))
    .then_err(JobError::StaleAttempt { current: 2, got: 1 });
}

#[test]
fn cancel_releases_from_any_live_status() {
    given::<Job>([submitted(None, 3)])
        .when(cancel())
        .then(vec![canceled(JobStatus::Queued)]);
    given::<Job>([submitted(None, 3), started(1)])
        .when(cancel())
        .then(vec![canceled(JobStatus::Running)]);
    given::<Job>([
        submitted(None, 3),
        started(1),
        failed(1, true),
        retry_scheduled(2),
    ])
    .when(cancel())
    .then(vec![canceled(JobStatus::Retrying)]);
}

#[test]
fn cancelling_a_finished_job_is_refused() {
    given::<Job>([submitted(None, 3), started(1), completed(1)])
        .when(cancel())
        .then_err(JobError::Finished {
            status: JobStatus::Completed,
        });
    given::<Job>([submitted(None, 3), canceled(JobStatus::Queued)])
        .when(cancel())
        .then_err(JobError::Finished {
            status: JobStatus::Canceled,
        });
}

#[test]
fn a_canceled_job_takes_no_completion() {
    given::<Job>([submitted(None, 3), started(1), canceled(JobStatus::Running)])
        .when(complete(1))
        .then_err(JobError::Finished {
            status: JobStatus::Canceled,
        });
}

#[test]
fn error_text_is_cut_at_a_char_boundary() {
    let long = "é".repeat(3_000);
    let t = ErrorText::truncated(&long);
    assert!(t.as_str().len() <= ErrorText::MAX_LEN);
    assert!(t.as_str().len() >= ErrorText::MAX_LEN - 1);
}

#[test]
fn events_have_types_and_versions() {
    assert_eq!(completed(1).event_type(), "JobCompleted");
    assert_eq!(completed(1).event_version(), "1");
    assert_eq!(JobEvent::EVENT_TYPES.len(), 8);
}

#[test]
fn the_process_manager_commits_completions_and_releases_the_rest() {
    use crate::{
        process::usage_reaction,
        usage::{ReleaseReason, UsageCommand},
    };
    let r = usage_reaction(job_id(1), &completed(1), later(6)).unwrap();
    assert_eq!(r.0, usage_key());
    assert!(matches!(r.1, UsageCommand::Commit(c) if c.job_id == job_id(1)));
    let r = usage_reaction(job_id(1), &canceled(JobStatus::Queued), later(6)).unwrap();
    assert!(matches!(r.1, UsageCommand::Release(c) if c.reason == ReleaseReason::Canceled));
    let dl: JobEvent = JobDeadLettered {
        attempts: a(1),
        error: ErrorText::truncated("x"),
        usage: usage_key(),
        dead_lettered_at: later(5),
    }
    .into();
    let r = usage_reaction(job_id(1), &dl, later(6)).unwrap();
    assert!(matches!(r.1, UsageCommand::Release(c) if c.reason == ReleaseReason::DeadLettered));
    assert!(usage_reaction(job_id(1), &failed(1, true), later(6)).is_none());
    assert!(usage_reaction(job_id(1), &started(1), later(6)).is_none());
}

fn expire(n: u32, now: i64) -> JobCommand {
    JobCommand::Expire(ExpireJob {
        attempt: a(n),
        lease_secs: 30,
        now: later(now),
        jitter_seed: 42,
    })
}

fn heartbeat_at(n: u32, secs: i64) -> JobEvent {
    JobHeartbeat {
        attempt: a(n),
        at: later(secs),
    }
    .into()
}

#[test]
fn an_attempt_silent_past_its_lease_fails_as_retryable() {
    // Started at +1 s, never heard of again: at +31 s the lease (30 s) is over.
    let events = given::<Job>([submitted(None, 3), started(1)])
        .when(expire(1, 31))
        .events();
    assert!(
        matches!(&events[0], JobEvent::JobFailed(f) if f.retryable && f.attempt == a(1)
        && f.error.as_str().contains("lease expired"))
    );
    assert!(matches!(&events[1], JobEvent::JobRetryScheduled(r) if r.next_attempt == a(2)));
}

#[test]
fn a_heartbeat_renews_the_lease() {
    given::<Job>([submitted(None, 3), started(1), heartbeat_at(1, 20)])
        .when(expire(1, 31))
        .then_err(JobError::LeaseAlive { attempt: 1 });
    given::<Job>([submitted(None, 3), started(1), heartbeat_at(1, 20)])
        .when(expire(1, 49))
        .then_err(JobError::LeaseAlive { attempt: 1 });
    let events = given::<Job>([submitted(None, 3), started(1), heartbeat_at(1, 20)])
        .when(expire(1, 50))
        .events();
    assert!(matches!(&events[0], JobEvent::JobFailed(_)));
}

#[test]
fn the_last_attempt_expired_is_dead_lettered_so_its_unit_is_released() {
    let events = given::<Job>([
        submitted(None, 2),
        started(1),
        failed(1, true),
        retry_scheduled(2),
        started(2),
    ])
    .when(expire(2, 60))
    .events();
    assert!(matches!(&events[1], JobEvent::JobDeadLettered(d) if d.usage == usage_key()));
}

#[test]
fn expiring_an_attempt_that_is_not_running_changes_nothing() {
    given::<Job>([submitted(None, 3)])
        .when(expire(1, 600))
        .then_err(JobError::NotRunning {
            status: JobStatus::Queued,
        });
    given::<Job>([
        submitted(None, 3),
        started(1),
        failed(1, true),
        retry_scheduled(2),
    ])
    .when(expire(1, 600))
    .then_err(JobError::StaleAttempt { current: 2, got: 1 });
    given::<Job>([submitted(None, 3), started(1), completed(1)])
        .when(expire(1, 600))
        .then_err(JobError::Finished {
            status: JobStatus::Completed,
        });
}
