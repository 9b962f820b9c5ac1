//! From the backlog to the ready queues: whose turn it is, whether the queue has room, and
//! whether the user (and the job's group) has a free slot.

use std::time::{Duration, Instant};

use domain::{
    Decider,
    concurrency::ConcurrencyGroup,
    envelope::JobEnvelope,
    job::{Job, JobEvent, JobStatus},
    task::Namespace,
};

use super::{DispatchError, Dispatcher};
use crate::{
    fair::{Pending, Skip},
    queue::{Claim, JobQueue, Slot},
};

/// How long a user found at its limit is not asked again, unless one of its slots frees.
const FULL_RECHECK: Duration = Duration::from_secs(1);

impl<Q: JobQueue> Dispatcher<Q> {
    /// Puts `env` in its owner's lane of `ns`; `position`: the log position it came from.
    pub(super) async fn wait_turn(
        &mut self,
        ns: &Namespace,
        env: JobEnvelope,
        group: Option<ConcurrencyGroup>,
        position: Option<i64>,
    ) -> Result<(), DispatchError> {
        let plan = self.plans.get(env.meta.user_id).await?;
        let weight = self.fair.weights.weight(plan);
        self.backlog().add(
            ns,
            weight,
            Pending {
                env,
                group,
                position,
            },
        );
        self.pushed += 1;
        Ok(())
    }

    /// Hands out jobs from the backlog, in turn, while a ready queue holds fewer than the
    /// window and their owners have free slots; returns how many it pushed.
    ///
    /// # Errors
    /// [`DispatchError`]; what was not pushed stays in the backlog (claims are idempotent).
    pub async fn feed(&mut self) -> Result<usize, DispatchError> {
        let mut pushed = 0;
        let mut failed = None;
        let now = Instant::now();
        self.full
            .retain(|_, at| now.duration_since(*at) < FULL_RECHECK);
        for ns in self.served.clone() {
            if self.backlog().len(&ns) == 0 {
                continue;
            }
            // A namespace whose queue is unreachable does not hold back the others.
            match self.feed_namespace(&ns).await {
                Ok(n) => pushed += n,
                Err(e) => {
                    tracing::warn!(message = "Feeding a ready queue failed.", namespace = %ns, error = %e);
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) if pushed == 0 => Err(e),
            _ => Ok(pushed),
        }
    }

    async fn feed_namespace(&mut self, ns: &Namespace) -> Result<usize, DispatchError> {
        let mut pushed = 0;
        let mut failed = None;
        let mut room = self
            .fair
            .window
            .saturating_sub(self.queue.waiting(ns).await?);
        let mut skip = Skip::default();
        for user in self.full.keys() {
            skip.user(*user);
        }
        while room > 0 {
            let Some(p) = self.backlog().next(ns, &skip) else {
                break;
            };
            let (user, job) = (p.user(), p.env.job_id);
            let limit = self.fair.concurrency.limit(self.plans.get(user).await?);
            let claim = match self.queue.claim(user, job, limit, p.group.as_ref()).await {
                Ok(c) => c,
                // The node holding this user's slots is unreachable: the user waits, the
                // others go on.
                Err(e) => {
                    tracing::warn!(message = "Claiming a slot failed; the user's jobs wait.", user_id = %user, error = %e);
                    skip.user(user);
                    failed.get_or_insert(e);
                    continue;
                }
            };
            match claim {
                Claim::Held => {}
                Claim::UserFull => {
                    skip.user(user);
                    self.full.insert(user, Instant::now());
                    continue;
                }
                Claim::GroupFull => {
                    if let Some(g) = &p.group {
                        skip.group(user, &g.key);
                    }
                    continue;
                }
            }
            self.holders.insert(
                job,
                Slot {
                    user,
                    job,
                    group: p.group.as_ref().map(|g| g.key.clone()),
                },
            );
            let bytes = serde_json::to_string(&p.env).unwrap_or_default();
            let fresh = self.queue.push_ready(ns, &p.env, &bytes).await?;
            self.backlog().take(job, p.env.attempt.get());
            if fresh {
                room -= 1;
                pushed += 1;
                metrics::counter!("runledger_dispatched_total", "namespace" => ns.as_str().to_owned())
                        .increment(1);
            }
        }
        match failed {
            Some(e) if pushed == 0 => Err(DispatchError::Redis(e)),
            _ => Ok(pushed),
        }
    }

    /// Frees the slots of users at their limit that are held by jobs that are over (a
    /// release lost to a crash of Redis or of a dispatcher between two writes); returns
    /// how many it freed. Only a job whose end this dispatcher has already read counts: a
    /// slot of a job that ended since is given back by that event, and freeing it here
    /// would only race it. A running job's own slot is freed by its lease: the process
    /// manager fails an attempt whose heartbeats stopped, and that failure frees it.
    ///
    /// # Errors
    /// [`DispatchError`].
    pub async fn sweep(&mut self) -> Result<usize, DispatchError> {
        let Some(read) = self.position else {
            return Ok(0);
        };
        let users: Vec<_> = self.full.keys().copied().collect();
        let mut stale = Vec::new();
        for user in users {
            for job in self.queue.slots(user).await? {
                let events = self.store.events_of("job", &job.to_string()).await?;
                // A job the log does not know holds no slot by right.
                let last = events.last().map_or(0, |e| e.position);
                let decoded: Vec<JobEvent> =
                    events.iter().filter_map(|e| e.decode().ok()).collect();
                let loaded = Job::replay(decoded.iter());
                let over = loaded.state().is_none_or(|s| {
                    matches!(
                        s.status,
                        JobStatus::Completed | JobStatus::Failed | JobStatus::Canceled
                    )
                });
                if over && last <= read {
                    stale.push(Slot {
                        user,
                        job,
                        group: loaded
                            .state()
                            .and_then(|s| s.concurrency.as_ref().map(|g| g.key.clone())),
                    });
                }
            }
        }
        self.queue.release(&stale).await?;
        for s in &stale {
            self.full.remove(&s.user);
            metrics::counter!("runledger_slots_swept_total").increment(1);
            tracing::warn!(message = "Freed a slot held by a job that is over.", job_id = %s.job, user_id = %s.user);
        }
        Ok(stale.len())
    }
}
