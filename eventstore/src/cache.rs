//! Loaded aggregates kept between commands. A command takes its aggregate out (no copy of a
//! ledger that may hold thousands of jobs), evolves it in place and puts it back after the
//! commit. Coherent within a process because every command holds the aggregate's lock; a
//! conflict with another process leaves the entry out, so the next command reloads.

use std::{any::Any, collections::HashMap};

use super::{Loaded, StoredAggregate};

/// At this many entries the cache starts over; a reload costs one snapshot read.
const MAX_ENTRIES: usize = 100_000;

type Entries = HashMap<(&'static str, String), Box<dyn Any + Send + Sync>>;

#[derive(Default)]
pub(super) struct Cache {
    map: std::sync::Mutex<Entries>,
}

impl Cache {
    pub(super) fn take<A: StoredAggregate>(&self, t: &'static str, id: &str) -> Option<Loaded<A>> {
        let entry = self.map.lock().ok()?.remove(&(t, id.to_owned()))?;
        entry.downcast::<Loaded<A>>().ok().map(|b| *b)
    }

    /// A copy of the entry, left in place: for states read and not appended to.
    pub(super) fn copy<A: StoredAggregate>(&self, t: &'static str, id: &str) -> Option<Loaded<A>> {
        let map = self.map.lock().ok()?;
        map.get(&(t, id.to_owned()))?
            .downcast_ref::<Loaded<A>>()
            .cloned()
    }

    pub(super) fn put<A: StoredAggregate>(&self, t: &'static str, id: &str, loaded: Loaded<A>) {
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert((t, id.to_owned()), Box::new(loaded));
        }
    }

    pub(super) fn remove(&self, t: &'static str, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&(t, id.to_owned()));
        }
    }
}
