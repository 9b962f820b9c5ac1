//! The in-process job queue of the embedded default (`runledger dev`): the same at-most-once
//! push per (job, attempt), scheduling and cancel as the Redis contract, in memory. It does
//! not outlive the process: the dispatcher refills it from the log at start.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use domain::{envelope::JobEnvelope, ids::JobId, task::Namespace};
use tokio::sync::Notify;

use crate::queue::JobQueue;

#[derive(Default)]
struct Inner {
    ready: HashMap<Namespace, VecDeque<JobEnvelope>>,
    /// By (due ms, arrival), so equal due times keep their order.
    scheduled: BTreeMap<(i64, u64), (Namespace, JobEnvelope)>,
    pushed: HashSet<(JobId, u32)>,
    arrivals: u64,
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
        if !inner.pushed.insert((env.job_id, env.attempt.get())) {
            return false;
        }
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
        if inner.pushed.contains(&(env.job_id, env.attempt.get()))
            || inner
                .scheduled
                .values()
                .any(|(_, e)| e.job_id == env.job_id && e.attempt == env.attempt)
        {
            return Ok(());
        }
        inner.arrivals += 1;
        let key = (due_ms, inner.arrivals);
        inner.scheduled.insert(key, (ns.clone(), env.clone()));
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
        inner.scheduled.retain(|_, (_, e)| e.job_id != env.job_id);
        Ok(())
    }

    async fn promote(&mut self, ns: &Namespace) -> redis::RedisResult<usize> {
        let now = chrono::Utc::now().timestamp_millis();
        let due: Vec<JobEnvelope> = {
            let mut inner = self.inner();
            let keys: Vec<(i64, u64)> = inner
                .scheduled
                .range(..(now + 1, 0))
                .filter(|(_, (n, _))| n == ns)
                .map(|(k, _)| *k)
                .collect();
            keys.iter()
                .filter_map(|k| inner.scheduled.remove(k).map(|(_, e)| e))
                .collect()
        };
        Ok(due.iter().filter(|env| self.push(ns, env)).count())
    }

    async fn depth(&mut self, ns: &Namespace) -> redis::RedisResult<(i64, i64)> {
        let inner = self.inner();
        let ready = inner.ready.get(ns).map_or(0, VecDeque::len);
        let scheduled = inner.scheduled.values().filter(|(n, _)| n == ns).count();
        Ok((ready as i64, scheduled as i64))
    }
}
