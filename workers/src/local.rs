//! The in-process job queue of the embedded default (`runledger dev`): the same at-most-once
//! push per (job, attempt), scheduling and cancel as the Redis contract, in memory. It does
//! not outlive the process: the dispatcher refills it from the log at start.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use domain::{
    concurrency::ConcurrencyGroup,
    envelope::JobEnvelope,
    ids::{JobId, UserId},
    task::Namespace,
};
use tokio::sync::Notify;

use crate::queue::{Claim, Ended, Held, JobQueue, Slot};

#[derive(Default)]
struct Inner {
    ready: HashMap<Namespace, VecDeque<JobEnvelope>>,
    /// By (due ms, arrival), so equal due times keep their order.
    scheduled: BTreeMap<(i64, u64), (Namespace, JobEnvelope)>,
    /// The highest attempt of each live job handed out (attempts only grow).
    pushed: HashMap<JobId, u32>,
    /// The attempt of each job waiting in `scheduled`, and its key there.
    waiting: HashMap<JobId, (u32, (i64, u64))>,
    arrivals: u64,
    /// The jobs holding each user's slots, and each (user, group)'s.
    slots: HashMap<UserId, HashSet<JobId>>,
    groups: HashMap<(UserId, String), HashSet<JobId>>,
}

impl Inner {
    /// Forgets what was pushed or scheduled for `job`.
    fn drop_records(&mut self, job: JobId) {
        self.pushed.remove(&job);
        if let Some((_, key)) = self.waiting.remove(&job) {
            self.scheduled.remove(&key);
        }
    }
}

/// Ready and scheduled envelopes per namespace, shared by the dispatcher and the workers of
/// this process.
#[derive(Default)]
pub struct LocalQueue {
    inner: Mutex<Inner>,
    wakers: Mutex<HashMap<Namespace, Arc<Notify>>>,
}

impl LocalQueue {
    /// An empty queue.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn waker(&self, ns: &Namespace) -> Arc<Notify> {
        let mut w = match self.wakers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        w.entry(ns.clone()).or_default().clone()
    }

    /// Waits for the next ready envelope of `ns`.
    pub async fn pull(&self, ns: &Namespace) -> JobEnvelope {
        let waker = self.waker(ns);
        loop {
            let woken = waker.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(env) = self.inner().ready.get_mut(ns).and_then(VecDeque::pop_front) {
                return env;
            }
            woken.await;
        }
    }

    /// Puts an envelope a worker could not start back at the head of `ns`.
    pub fn give_back(&self, ns: &Namespace, env: JobEnvelope) {
        self.inner()
            .ready
            .entry(ns.clone())
            .or_default()
            .push_front(env);
        self.waker(ns).notify_one();
    }

    fn push(&self, ns: &Namespace, env: &JobEnvelope) -> bool {
        let mut inner = self.inner();
        let attempt = env.attempt.get();
        if inner.pushed.get(&env.job_id).is_some_and(|a| *a >= attempt) {
            return false;
        }
        inner.pushed.insert(env.job_id, attempt);
        inner
            .ready
            .entry(ns.clone())
            .or_default()
            .push_back(env.clone());
        drop(inner);
        self.waker(ns).notify_one();
        true
    }
}

impl JobQueue for Arc<LocalQueue> {
    fn durable(&self) -> bool {
        false
    }

    async fn push_ready(
        &mut self,
        ns: &Namespace,
        env: &JobEnvelope,
        _bytes: &str,
    ) -> redis::RedisResult<bool> {
        Ok(self.push(ns, env))
    }

    async fn schedule(
        &mut self,
        ns: &Namespace,
        env: &JobEnvelope,
        _bytes: &str,
        due_ms: i64,
    ) -> redis::RedisResult<()> {
        let mut inner = self.inner();
        if inner
            .pushed
            .get(&env.job_id)
            .is_some_and(|a| *a >= env.attempt.get())
            || inner
                .waiting
                .get(&env.job_id)
                .is_some_and(|(a, _)| *a >= env.attempt.get())
        {
            return Ok(());
        }
        inner.arrivals += 1;
        let key = (due_ms, inner.arrivals);
        inner.scheduled.insert(key, (ns.clone(), env.clone()));
        inner.waiting.insert(env.job_id, (env.attempt.get(), key));
        Ok(())
    }

    async fn withdraw(
        &mut self,
        ns: &Namespace,
        env: &JobEnvelope,
        _bytes: &str,
    ) -> redis::RedisResult<()> {
        let mut inner = self.inner();
        if let Some(q) = inner.ready.get_mut(ns) {
            q.retain(|e| e.job_id != env.job_id);
        }
        if let Some((_, key)) = inner.waiting.remove(&env.job_id) {
            inner.scheduled.remove(&key);
        }
        Ok(())
    }

    async fn take_due(&mut self, ns: &Namespace) -> redis::RedisResult<Vec<JobEnvelope>> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut inner = self.inner();
        let keys: Vec<(i64, u64)> = inner
            .scheduled
            .range(..(now + 1, 0))
            .filter(|(_, (n, _))| n == ns)
            .map(|(k, _)| *k)
            .collect();
        let due: Vec<JobEnvelope> = keys
            .iter()
            .filter_map(|k| inner.scheduled.remove(k).map(|(_, e)| e))
            .collect();
        for e in &due {
            inner.waiting.remove(&e.job_id);
        }
        Ok(due)
    }

    async fn forget(
        &mut self,
        _namespaces: &[Namespace],
        ended: &[Ended],
    ) -> redis::RedisResult<()> {
        let mut inner = self.inner();
        // Only a job that is over: a failed attempt's record keeps an older attempt from
        // being pushed after its retry.
        for e in ended.iter().filter(|e| e.job_over) {
            inner.drop_records(e.job);
        }
        Ok(())
    }

    async fn held(&mut self, _namespaces: &[Namespace]) -> redis::RedisResult<Option<Held>> {
        Ok(None)
    }

    async fn repush(
        &mut self,
        ns: &Namespace,
        env: &JobEnvelope,
        bytes: &str,
        due_ms: Option<i64>,
    ) -> redis::RedisResult<()> {
        self.inner().drop_records(env.job_id);
        match due_ms {
            Some(due) => self.schedule(ns, env, bytes, due).await,
            None => self.push_ready(ns, env, bytes).await.map(|_| ()),
        }
    }

    async fn depth(&mut self, ns: &Namespace) -> redis::RedisResult<(i64, i64)> {
        let inner = self.inner();
        let ready = inner.ready.get(ns).map_or(0, VecDeque::len);
        let scheduled = inner.scheduled.values().filter(|(n, _)| n == ns).count();
        Ok((ready as i64, scheduled as i64))
    }

    async fn waiting(&mut self, ns: &Namespace) -> redis::RedisResult<usize> {
        Ok(self.inner().ready.get(ns).map_or(0, VecDeque::len))
    }

    async fn claim(
        &mut self,
        user: UserId,
        job: JobId,
        limit: Option<u32>,
        group: Option<&ConcurrencyGroup>,
    ) -> redis::RedisResult<Claim> {
        let mut inner = self.inner();
        let inner = &mut *inner;
        let held = inner.slots.entry(user).or_default();
        let group_key = group.map(|g| (user, g.key.clone()));
        if held.contains(&job) {
            if let Some(k) = group_key {
                inner.groups.entry(k).or_default().insert(job);
            }
            return Ok(Claim::Held);
        }
        if limit.is_some_and(|l| held.len() >= l as usize) {
            return Ok(Claim::UserFull);
        }
        if let (Some(k), Some(g)) = (group_key, group) {
            let members = inner.groups.entry(k).or_default();
            if !members.contains(&job) && members.len() >= g.limit as usize {
                return Ok(Claim::GroupFull);
            }
            members.insert(job);
        }
        held.insert(job);
        Ok(Claim::Held)
    }

    async fn release(&mut self, slots: &[Slot]) -> redis::RedisResult<()> {
        let mut inner = self.inner();
        for s in slots {
            if let Some(held) = inner.slots.get_mut(&s.user) {
                held.remove(&s.job);
                if held.is_empty() {
                    inner.slots.remove(&s.user);
                }
            }
            if let Some(key) = &s.group {
                let k = (s.user, key.clone());
                if let Some(members) = inner.groups.get_mut(&k) {
                    members.remove(&s.job);
                    if members.is_empty() {
                        inner.groups.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    async fn slots(&mut self, user: UserId) -> redis::RedisResult<Vec<JobId>> {
        Ok(self
            .inner()
            .slots
            .get(&user)
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use domain::{
        envelope::EnvelopeMeta,
        ids::{CorrelationId, UserId},
        retry::Attempt,
        task::TaskType,
    };

    use super::*;

    fn env(job: JobId, attempt: u32) -> JobEnvelope {
        JobEnvelope {
            job_id: job,
            attempt: Attempt::new(attempt).unwrap(),
            correlation_id: CorrelationId::parse("c-1").unwrap(),
            task_type: TaskType::parse("noop").unwrap(),
            meta: EnvelopeMeta {
                user_id: UserId::from_uuid(uuid::Uuid::new_v4()),
                traceparent: None,
            },
            payload: serde_json::json!({}),
        }
    }

    fn job() -> JobId {
        JobId::from_uuid(uuid::Uuid::new_v4())
    }

    #[tokio::test]
    async fn each_attempt_is_handed_out_at_most_once() {
        let mut q = LocalQueue::new();
        let ns = Namespace::default_ns();
        let j = job();
        assert!(q.push_ready(&ns, &env(j, 1), "").await.unwrap());
        assert!(!q.push_ready(&ns, &env(j, 1), "").await.unwrap());
        assert_eq!(q.pull(&ns).await.attempt.get(), 1);
        // Redelivered after it was pulled: still not again.
        assert!(!q.push_ready(&ns, &env(j, 1), "").await.unwrap());
        assert!(q.push_ready(&ns, &env(j, 2), "").await.unwrap());
        assert_eq!(q.depth(&ns).await.unwrap(), (1, 0));
    }

    #[tokio::test]
    async fn scheduled_envelopes_are_promoted_when_due_once() {
        let mut q = LocalQueue::new();
        let ns = Namespace::default_ns();
        let (due, later) = (job(), job());
        let now = chrono::Utc::now().timestamp_millis();
        q.schedule(&ns, &env(due, 2), "", now - 1).await.unwrap();
        q.schedule(&ns, &env(due, 2), "", now - 1).await.unwrap();
        q.schedule(&ns, &env(later, 1), "", now + 60_000)
            .await
            .unwrap();
        assert_eq!(q.depth(&ns).await.unwrap(), (0, 2));
        let taken = q.take_due(&ns).await.unwrap();
        assert_eq!(taken.iter().map(|e| e.job_id).collect::<Vec<_>>(), [due]);
        assert!(q.take_due(&ns).await.unwrap().is_empty());
        assert_eq!(q.depth(&ns).await.unwrap(), (0, 1));
    }

    #[tokio::test]
    async fn a_withdrawn_job_is_neither_ready_nor_scheduled() {
        let mut q = LocalQueue::new();
        let ns = Namespace::default_ns();
        let (ready, waiting) = (job(), job());
        q.push_ready(&ns, &env(ready, 1), "").await.unwrap();
        q.schedule(&ns, &env(waiting, 1), "", 0).await.unwrap();
        q.withdraw(&ns, &env(ready, 1), "").await.unwrap();
        q.withdraw(&ns, &env(waiting, 1), "").await.unwrap();
        assert_eq!(q.depth(&ns).await.unwrap(), (0, 0));
        assert!(q.take_due(&ns).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn slots_hold_the_limits_and_a_claim_counts_once() {
        let mut q = LocalQueue::new();
        let user = UserId::from_uuid(uuid::Uuid::new_v4());
        let group = ConcurrencyGroup {
            key: "k".into(),
            limit: 1,
        };
        let (a, b, c) = (job(), job(), job());
        assert_eq!(
            q.claim(user, a, Some(2), Some(&group)).await.unwrap(),
            Claim::Held
        );
        assert_eq!(
            q.claim(user, a, Some(2), Some(&group)).await.unwrap(),
            Claim::Held
        );
        assert_eq!(
            q.claim(user, b, Some(2), Some(&group)).await.unwrap(),
            Claim::GroupFull
        );
        assert_eq!(q.claim(user, b, Some(2), None).await.unwrap(), Claim::Held);
        assert_eq!(
            q.claim(user, c, Some(2), None).await.unwrap(),
            Claim::UserFull
        );
        assert_eq!(q.slots(user).await.unwrap().len(), 2);
        q.release(&[Slot {
            user,
            job: a,
            group: Some("k".into()),
        }])
        .await
        .unwrap();
        assert_eq!(
            q.claim(user, c, Some(2), Some(&group)).await.unwrap(),
            Claim::Held
        );
    }

    #[tokio::test]
    async fn a_waiting_pull_wakes_on_push_and_namespaces_are_apart() {
        let mut q = LocalQueue::new();
        let (ns, other) = (Namespace::default_ns(), Namespace::browser());
        let puller = {
            let q = q.clone();
            let ns = ns.clone();
            tokio::spawn(async move { q.pull(&ns).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let j = job();
        q.push_ready(&other, &env(job(), 1), "").await.unwrap();
        q.push_ready(&ns, &env(j, 1), "").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), puller)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.job_id, j);
        assert_eq!(q.depth(&other).await.unwrap(), (1, 0));
    }
}
