//! The read models' rows, and their in-memory tables for the embedded default: under
//! `runledger dev` the projections fold the log into [`MemoryViews`] at start and then live,
//! so the read side needs no database of its own (the events, in SQLite, are the data that
//! survives a restart). Storage only: what goes in is decided by the projections.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::RwLock,
};

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::notice::JobChange;

/// The latest view of one job.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JobView {
    /// The job.
    pub id: Uuid,
    /// Its owner.
    pub user_id: Uuid,
    /// Its task type.
    pub task_type: String,
    /// Its status.
    pub status: String,
    /// Attempts started.
    pub attempts: i32,
    /// Its correlation id.
    pub correlation_id: String,
    /// Submitted at.
    pub created_at: DateTime<Utc>,
    /// Last changed at.
    pub updated_at: DateTime<Utc>,
    /// The result, once completed.
    pub result: Option<Value>,
    /// The last error.
    pub error: Option<String>,
    /// Position of the last event applied.
    pub position: i64,
}

/// Units of one user in one billing period.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageView {
    /// Period start.
    pub period_start: DateTime<Utc>,
    /// Period end.
    pub period_end: DateTime<Utc>,
    /// The plan the units were reserved under.
    pub plan: String,
    /// The plan's limit then (`None`: unlimited).
    pub unit_limit: Option<i64>,
    /// Reserved, not yet settled.
    pub reserved: i64,
    /// Consumed.
    pub consumed: i64,
    /// Released.
    pub released: i64,
    /// Hash of the last consumed unit.
    pub chain_head: String,
    /// Whether the period was closed.
    pub closed: bool,
}

/// One user's paid subscription.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SubscriptionView {
    /// The plan.
    pub plan: String,
    /// `active`, `past_due` or `ended`.
    pub status: String,
    /// Current period start.
    pub period_start: DateTime<Utc>,
    /// Current period end.
    pub period_end: DateTime<Utc>,
}

/// The read models as in-memory tables.
#[derive(Debug, Default)]
pub struct Tables {
    /// Job views by id.
    pub jobs: HashMap<Uuid, JobView>,
    /// Each user's jobs, ordered by (created_at, id).
    pub by_user: HashMap<Uuid, BTreeSet<(DateTime<Utc>, Uuid)>>,
    /// Each user's changes by position.
    pub changes: HashMap<Uuid, BTreeMap<i64, JobChange>>,
    /// Each user's last change position.
    pub streams: HashMap<Uuid, i64>,
    /// Usage by (user, period start).
    pub usage: BTreeMap<(Uuid, DateTime<Utc>), UsageView>,
    /// Subscriptions by user.
    pub subscriptions: HashMap<Uuid, SubscriptionView>,
    /// Stripe customers by user.
    pub customers: HashMap<Uuid, String>,
    /// The last position applied.
    pub position: i64,
    /// Changes at or below this position may have been dropped by retention.
    pub trimmed_through: i64,
}

/// The in-memory read models, shared by the projections (writing) and the read API.
#[derive(Debug, Default)]
pub struct MemoryViews {
    tables: RwLock<Tables>,
}

impl MemoryViews {
    /// Runs `f` on the tables for writing.
    pub fn write<T>(&self, f: impl FnOnce(&mut Tables) -> T) -> T {
        let mut t = match self.tables.write() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        f(&mut t)
    }

    /// Runs `f` on the tables for reading.
    pub fn read<T>(&self, f: impl FnOnce(&Tables) -> T) -> T {
        let t = match self.tables.read() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        f(&t)
    }

    /// The last position applied.
    pub fn position(&self) -> i64 {
        self.read(|t| t.position)
    }

    /// One of `user`'s jobs.
    pub fn job(&self, user: Uuid, id: Uuid) -> Option<JobView> {
        self.read(|t| t.jobs.get(&id).filter(|j| j.user_id == user).cloned())
    }

    /// Up to `limit` of `user`'s jobs, newest first, before `cursor`, with `status`.
    pub fn jobs(
        &self,
        user: Uuid,
        status: Option<&str>,
        cursor: Option<(DateTime<Utc>, Uuid)>,
        limit: usize,
    ) -> Vec<JobView> {
        self.read(|t| {
            let Some(ids) = t.by_user.get(&user) else {
                return vec![];
            };
            let below = match cursor {
                Some(c) => ids.range(..c),
                None => ids.range(..),
            };
            below
                .rev()
                .filter_map(|(_, id)| t.jobs.get(id))
                .filter(|j| status.is_none_or(|s| j.status == s))
                .take(limit)
                .cloned()
                .collect()
        })
    }

    /// How many of `user`'s jobs have `status`, only those before `before` when given.
    pub fn count(&self, user: Uuid, status: &str, before: Option<(DateTime<Utc>, Uuid)>) -> i64 {
        self.read(|t| {
            let Some(ids) = t.by_user.get(&user) else {
                return 0;
            };
            let below = match before {
                Some(c) => ids.range(..c),
                None => ids.range(..),
            };
            let n = below
                .filter_map(|(_, id)| t.jobs.get(id))
                .filter(|j| j.status == status)
                .count();
            i64::try_from(n).unwrap_or(i64::MAX)
        })
    }

    /// `user`'s usage in the period starting at `start`.
    pub fn usage(&self, user: Uuid, start: DateTime<Utc>) -> Option<UsageView> {
        self.read(|t| t.usage.get(&(user, start)).cloned())
    }

    /// `user`'s periods, newest first, at most `limit`.
    pub fn usage_history(&self, user: Uuid, limit: usize) -> Vec<UsageView> {
        self.read(|t| {
            t.usage
                .range((user, DateTime::<Utc>::MIN_UTC)..=(user, DateTime::<Utc>::MAX_UTC))
                .rev()
                .take(limit)
                .map(|(_, u)| u.clone())
                .collect()
        })
    }

    /// `user`'s subscription.
    pub fn subscription(&self, user: Uuid) -> Option<SubscriptionView> {
        self.read(|t| t.subscriptions.get(&user).cloned())
    }

    /// `user`'s Stripe customer, linked at checkout.
    pub fn customer(&self, user: Uuid) -> Option<String> {
        self.read(|t| t.customers.get(&user).cloned())
    }

    /// Drops changes last updated before `cutoff` (retention); returns how many.
    pub fn trim(&self, cutoff: DateTime<Utc>) -> usize {
        self.write(|t| {
            let mut dropped = 0;
            let mut through = t.trimmed_through;
            for changes in t.changes.values_mut() {
                changes.retain(|p, c| {
                    let keep = c.updated_at >= cutoff;
                    if !keep {
                        dropped += 1;
                        through = through.max(*p);
                    }
                    keep
                });
            }
            t.changes.retain(|_, c| !c.is_empty());
            t.trimmed_through = through;
            dropped
        })
    }

    /// Changes at or below this position may have been dropped by retention.
    pub fn trimmed_through(&self) -> i64 {
        self.read(|t| t.trimmed_through)
    }

    /// `user`'s last change position (0: none).
    pub fn stream_position(&self, user: Uuid) -> i64 {
        self.read(|t| t.streams.get(&user).copied().unwrap_or(0))
    }

    /// Up to `limit` of `user`'s changes after `position`.
    pub fn changes_after(&self, user: Uuid, position: i64, limit: usize) -> Vec<JobChange> {
        self.read(|t| {
            t.changes.get(&user).map_or_else(Vec::new, |c| {
                c.range(position + 1..)
                    .take(limit)
                    .map(|(_, c)| c.clone())
                    .collect()
            })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn change(position: i64, at: DateTime<Utc>) -> JobChange {
        JobChange {
            position,
            id: Uuid::nil(),
            status: "queued".into(),
            attempts: 0,
            updated_at: at,
            traceparent: None,
            correlation_id: None,
        }
    }

    #[test]
    fn trimming_drops_old_changes_and_moves_the_mark() {
        let views = MemoryViews::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Utc::now();
        let old = now - chrono::Duration::hours(2);
        views.write(|t| {
            t.changes.insert(
                a,
                BTreeMap::from([(1, change(1, old)), (4, change(4, now))]),
            );
            t.changes.insert(b, BTreeMap::from([(2, change(2, old))]));
        });
        assert_eq!(views.trim(now - chrono::Duration::hours(1)), 2);
        assert_eq!(views.trimmed_through(), 2);
        assert_eq!(views.changes_after(a, 0, 10), vec![change(4, now)]);
        assert!(views.changes_after(b, 0, 10).is_empty());
        // Nothing old left: the mark stays.
        assert_eq!(views.trim(now - chrono::Duration::hours(1)), 0);
        assert_eq!(views.trimmed_through(), 2);
    }
}
