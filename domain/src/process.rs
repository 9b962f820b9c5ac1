//! The process manager's rules: which usage command follows which job event.

use chrono::{DateTime, Utc};

use crate::{
    ids::JobId,
    job::JobEvent,
    usage::{CommitUnit, ReleaseReason, ReleaseUnit, UsageCommand, UsageKey},
};

/// The command to send to the Usage aggregate after `event` of job `job_id`, if any:
/// a completion commits the unit, a cancel or dead letter releases it.
pub fn usage_reaction(
    job_id: JobId,
    event: &JobEvent,
    now: DateTime<Utc>,
) -> Option<(UsageKey, UsageCommand)> {
    let release = |usage: &UsageKey, reason| {
        Some((
            usage.clone(),
            UsageCommand::Release(ReleaseUnit {
                job_id,
                reason,
                now,
            }),
        ))
    };
    match event {
        JobEvent::JobCompleted(e) => Some((
            e.usage.clone(),
            UsageCommand::Commit(CommitUnit { job_id, now }),
        )),
        JobEvent::JobCanceled(e) => release(&e.usage, ReleaseReason::Canceled),
        JobEvent::JobDeadLettered(e) => release(&e.usage, ReleaseReason::DeadLettered),
        JobEvent::JobSubmitted(_)
        | JobEvent::JobStarted(_)
        | JobEvent::JobHeartbeat(_)
        | JobEvent::JobFailed(_)
        | JobEvent::JobRetryScheduled(_) => None,
    }
}
