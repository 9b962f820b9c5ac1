//! The dispatcher's backlog: ready jobs per user, handed to the ready queue in weighted
//! round-robin, so one user's burst waits in its own lane instead of in front of everyone.
//! No I/O here: the dispatcher asks for the next job, claims its slot in the queue, and
//! takes it out of the backlog once it is pushed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use domain::{
    concurrency::ConcurrencyGroup, envelope::JobEnvelope, ids::JobId, ids::UserId, task::Namespace,
};

/// A ready job waiting for its turn.
#[derive(Debug, Clone)]
pub struct Pending {
    /// What the worker gets.
    pub env: JobEnvelope,
    /// Its concurrency group, if it has one.
    pub group: Option<ConcurrencyGroup>,
    /// The log position it came from, while the dispatcher's checkpoint must not pass it
    /// (`None`: it came from `scheduled` or the reconciler, which recover it by themselves).
    pub position: Option<i64>,
}

impl Pending {
    /// The job's owner.
    pub fn user(&self) -> UserId {
        self.env.meta.user_id
    }
}

/// What the dispatcher skips for the rest of a feeding round: users at their concurrency
/// limit, and groups at theirs.
#[derive(Debug, Default)]
pub struct Skip {
    users: HashSet<UserId>,
    groups: HashSet<(UserId, String)>,
}

impl Skip {
    /// `user` holds all its slots.
    pub fn user(&mut self, user: UserId) {
        self.users.insert(user);
    }

    /// `user`'s group `key` holds all its slots.
    pub fn group(&mut self, user: UserId, key: &str) {
        self.groups.insert((user, key.to_owned()));
    }

    fn skips(&self, p: &Pending) -> bool {
        !self.groups.is_empty()
            && p.group
                .as_ref()
                .is_some_and(|g| self.groups.contains(&(p.user(), g.key.clone())))
    }
}

#[derive(Debug, Default)]
struct Lane {
    jobs: VecDeque<Pending>,
    weight: u32,
    /// Jobs handed out in the current turn.
    used: u32,
}

/// One namespace's lanes and whose turn it is.
#[derive(Debug, Default)]
struct Lanes {
    lanes: HashMap<UserId, Lane>,
    /// Users with waiting jobs, the one whose turn it is first.
    ring: VecDeque<UserId>,
}

/// Every namespace's backlog.
#[derive(Debug, Default)]
pub struct Backlog {
    spaces: HashMap<Namespace, Lanes>,
    /// Job → its namespace, owner and attempt.
    index: HashMap<JobId, (Namespace, UserId, u32)>,
    /// Log positions of waiting jobs (a count per position).
    positions: BTreeMap<i64, u32>,
}

impl Backlog {
    /// Adds `p` to its owner's lane of `ns` with the owner's `weight`; `false` when this
    /// attempt (or a later one) of the job waits already.
    pub fn add(&mut self, ns: &Namespace, weight: u32, p: Pending) -> bool {
        let attempt = p.env.attempt.get();
        if let Some((_, _, a)) = self.index.get(&p.env.job_id) {
            if *a >= attempt {
                return false;
            }
            self.remove(p.env.job_id);
        }
        self.index
            .insert(p.env.job_id, (ns.clone(), p.user(), attempt));
        if let Some(pos) = p.position {
            *self.positions.entry(pos).or_default() += 1;
        }
        let space = self.spaces.entry(ns.clone()).or_default();
        let user = p.user();
        let lane = space.lanes.entry(user).or_default();
        lane.weight = weight.max(1);
        if lane.jobs.is_empty() {
            // A user who had nothing waiting comes next: its first job waits behind at
            // most the queue's window.
            space.ring.push_front(user);
        }
        lane.jobs.push_back(p);
        true
    }

    /// Takes `job` out if what waits of it is `attempt` or an earlier one (a later attempt,
    /// queued since, stays).
    pub fn take(&mut self, job: JobId, attempt: u32) -> Option<Pending> {
        match self.index.get(&job) {
            Some((_, _, a)) if *a <= attempt => self.remove(job),
            _ => None,
        }
    }

    /// Takes `job` out, whatever its attempt.
    pub fn remove(&mut self, job: JobId) -> Option<Pending> {
        let (ns, user, _) = self.index.remove(&job)?;
        let space = self.spaces.get_mut(&ns)?;
        let lane = space.lanes.get_mut(&user)?;
        let at = lane.jobs.iter().position(|p| p.env.job_id == job)?;
        let p = lane.jobs.remove(at)?;
        if lane.jobs.is_empty() {
            space.lanes.remove(&user);
            space.ring.retain(|u| *u != user);
        }
        if let Some(pos) = p.position
            && let Some(n) = self.positions.get_mut(&pos)
        {
            *n -= 1;
            if *n == 0 {
                self.positions.remove(&pos);
            }
        }
        Some(p)
    }

    /// The next job of `ns` in turn, skipping what `skip` names; the turn moves on.
    pub fn next(&mut self, ns: &Namespace, skip: &Skip) -> Option<Pending> {
        let space = self.spaces.get_mut(ns)?;
        for _ in 0..space.ring.len() {
            let user = *space.ring.front()?;
            let lane = space.lanes.get_mut(&user)?;
            let pick = if skip.users.contains(&user) {
                None
            } else {
                lane.jobs.iter().find(|p| !skip.skips(p)).cloned()
            };
            let Some(p) = pick else {
                space.ring.rotate_left(1);
                continue;
            };
            lane.used += 1;
            if lane.used >= lane.weight {
                lane.used = 0;
                space.ring.rotate_left(1);
            }
            return Some(p);
        }
        None
    }

    /// Whether `job`'s `attempt` (or a later one) waits here.
    pub fn holds(&self, job: JobId, attempt: u32) -> bool {
        self.index.get(&job).is_some_and(|(_, _, a)| *a >= attempt)
    }

    /// Jobs waiting in `ns`.
    pub fn len(&self, ns: &Namespace) -> usize {
        self.spaces
            .get(ns)
            .map_or(0, |s| s.lanes.values().map(|l| l.jobs.len()).sum())
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// `user`'s jobs waiting in `ns`, in order (the job view's `queued_behind`).
    pub fn lane_len(&self, ns: &Namespace, user: UserId) -> usize {
        self.spaces
            .get(ns)
            .and_then(|s| s.lanes.get(&user))
            .map_or(0, |l| l.jobs.len())
    }

    /// The earliest log position a waiting job came from.
    pub fn first_position(&self) -> Option<i64> {
        self.positions.keys().next().copied()
    }
}

#[cfg(test)]
mod tests {
    use domain::{envelope::EnvelopeMeta, ids::CorrelationId, retry::Attempt, task::TaskType};

    use super::*;

    fn user(n: u128) -> UserId {
        UserId::from_uuid(uuid::Uuid::from_u128(n))
    }

    fn job(u: u128, n: u128, pos: i64) -> Pending {
        Pending {
            env: JobEnvelope {
                job_id: JobId::from_uuid(uuid::Uuid::from_u128(u << 64 | n)),
                attempt: Attempt::FIRST,
                correlation_id: CorrelationId::parse("c").unwrap(),
                task_type: TaskType::parse("noop").unwrap(),
                meta: EnvelopeMeta {
                    user_id: user(u),
                    traceparent: None,
                },
                payload: serde_json::json!({}),
            },
            group: None,
            position: Some(pos),
        }
    }

    fn drain(b: &mut Backlog, ns: &Namespace, skip: &Skip, n: usize) -> Vec<u128> {
        let mut out = Vec::new();
        for _ in 0..n {
            let Some(p) = b.next(ns, skip) else { break };
            out.push(p.user().as_uuid().as_u128());
            b.remove(p.env.job_id);
        }
        out
    }

    #[test]
    fn a_burst_does_not_hold_back_a_newcomer() {
        let ns = Namespace::default_ns();
        let mut b = Backlog::default();
        for n in 0..100 {
            b.add(&ns, 1, job(1, n, n as i64));
        }
        assert_eq!(drain(&mut b, &ns, &Skip::default(), 3), [1, 1, 1]);
        b.add(&ns, 1, job(2, 0, 200));
        b.add(&ns, 1, job(2, 1, 201));
        assert_eq!(drain(&mut b, &ns, &Skip::default(), 5), [2, 1, 2, 1, 1]);
    }

    #[test]
    fn weights_give_more_turns() {
        let ns = Namespace::default_ns();
        let mut b = Backlog::default();
        for n in 0..10 {
            b.add(&ns, 1, job(1, n, 1));
            b.add(&ns, 4, job(2, n, 2));
        }
        let order = drain(&mut b, &ns, &Skip::default(), 10);
        assert_eq!(order.iter().filter(|u| **u == 2).count(), 8);
    }

    #[test]
    fn skipped_users_and_groups_keep_their_jobs() {
        let ns = Namespace::default_ns();
        let mut b = Backlog::default();
        let mut grouped = job(1, 0, 1);
        grouped.group = Some(ConcurrencyGroup {
            key: "k".into(),
            limit: 1,
        });
        b.add(&ns, 1, grouped);
        b.add(&ns, 1, job(1, 1, 2));
        b.add(&ns, 1, job(2, 0, 3));
        let mut skip = Skip::default();
        skip.group(user(1), "k");
        skip.user(user(2));
        let p = b.next(&ns, &skip).unwrap();
        assert_eq!(p.env.job_id, job(1, 1, 0).env.job_id);
        b.remove(p.env.job_id);
        assert!(b.next(&ns, &skip).is_none());
        assert_eq!(b.len(&ns), 2);
        assert_eq!(b.lane_len(&ns, user(1)), 1);
    }

    #[test]
    fn take_leaves_a_later_attempt_waiting() {
        let ns = Namespace::default_ns();
        let mut b = Backlog::default();
        let mut retry = job(1, 0, 5);
        retry.env.attempt = Attempt::new(2).unwrap();
        b.add(&ns, 1, retry);
        let id = job(1, 0, 0).env.job_id;
        assert!(
            b.take(id, 1).is_none(),
            "attempt 1 ended; attempt 2 still waits"
        );
        assert!(b.holds(id, 2));
        assert!(b.take(id, 2).is_some());
        assert!(b.is_empty());
    }

    #[test]
    fn the_first_position_follows_what_waits() {
        let ns = Namespace::default_ns();
        let mut b = Backlog::default();
        assert!(b.add(&ns, 1, job(1, 0, 5)));
        assert!(b.add(&ns, 1, job(1, 1, 9)));
        assert!(!b.add(&ns, 1, job(1, 0, 5)), "the same attempt twice");
        assert_eq!(b.first_position(), Some(5));
        b.remove(job(1, 0, 0).env.job_id);
        assert_eq!(b.first_position(), Some(9));
        assert!(b.holds(job(1, 1, 0).env.job_id, 1));
        b.remove(job(1, 1, 0).env.job_id);
        assert!(b.is_empty());
        assert_eq!(b.first_position(), None);
    }
}
