//! One async mutex per key, created on demand and dropped when nobody holds or waits for it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub(super) struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a command runs on one aggregate.
pub struct Guard {
    _inner: OwnedMutexGuard<()>,
}

impl KeyedLocks {
    pub(super) async fn lock(&self, key: String) -> Guard {
        let lock = {
            let mut map = match self.map.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            if map.len() > 4_096 {
                // Only this map holds an idle lock's Arc.
                map.retain(|_, l| Arc::strong_count(l) > 1);
            }
            map.entry(key).or_default().clone()
        };
        Guard {
            _inner: lock.lock_owned().await,
        }
    }
}
