//! Each user's plan, as the dispatcher needs it for concurrency and turn weights: loaded
//! from the user's Subscription, kept a minute, dropped when the log shows it changed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use domain::{ids::UserId, plan::Plan, subscription::Subscription};
use eventstore::{EventStore, StoreError};

const KEEP: Duration = Duration::from_secs(60);

/// A shared cache of plans.
#[derive(Clone)]
pub struct Plans {
    store: EventStore,
    cache: Arc<Mutex<HashMap<UserId, (Plan, Instant)>>>,
}

impl Plans {
    /// Plans read from `store`.
    pub fn new(store: EventStore) -> Self {
        Self {
            store,
            cache: Arc::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, (Plan, Instant)>> {
        match self.cache.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// `user`'s plan now.
    ///
    /// # Errors
    /// When the subscription cannot be loaded.
    pub async fn get(&self, user: UserId) -> Result<Plan, StoreError> {
        if let Some((plan, at)) = self.cache().get(&user)
            && at.elapsed() < KEEP
        {
            return Ok(*plan);
        }
        let plan = self
            .store
            .load_fresh::<Subscription>(&user.to_string())
            .await?
            .state
            .plan_at(Utc::now());
        self.cache().insert(user, (plan, Instant::now()));
        Ok(plan)
    }

    /// Forgets `user`'s plan (its subscription changed).
    pub fn forget(&self, user: UserId) {
        self.cache().remove(&user);
    }
}
