//! Loaded aggregates kept between commands. Coherent within a process because every command
//! holds the aggregate's lock; a conflict with another process evicts the entry.

use std::{any::Any, collections::HashMap, sync::Arc};

use super::{Loaded, StoredAggregate};

/// At this many entries the cache starts over; a reload costs one snapshot read.
const MAX_ENTRIES: usize = 100_000;

type Entries = HashMap<(&'static str, String), Arc<dyn Any + Send + Sync>>;

#[derive(Default)]
pub(super) struct Cache {
    map: std::sync::Mutex<Entries>,
}

impl Cache {
    pub(super) fn get<A: StoredAggregate>(&self, t: &'static str, id: &str) -> Option<Loaded<A>> {
        let map = self.map.lock().ok()?;
        let entry = map.get(&(t, id.to_owned()))?;
        entry.downcast_ref::<Loaded<A>>().cloned()
    }

    pub(super) fn put<A: StoredAggregate>(&self, t: &'static str, id: &str, loaded: Loaded<A>) {
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert((t, id.to_owned()), Arc::new(loaded));
        }
    }

    pub(super) fn remove(&self, t: &'static str, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&(t, id.to_owned()));
        }
    }
}
