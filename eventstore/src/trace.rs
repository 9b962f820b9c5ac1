//! Whether appends are traced: set by the process's telemetry when spans are exported, so
//! the store builds no span (and parses no metadata) otherwise.

use std::sync::atomic::{AtomicBool, Ordering};

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Turns the append spans on (spans are exported) or off.
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

pub(crate) fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The `job_id` of a usage event's payload (`{"UnitReserved":{"job_id":…}}`).
pub(crate) fn job_in(payload: &str) -> Option<String> {
    // Found in the text: usage events name their job first, and this runs per event.
    const KEY: &str = r#""job_id":""#;
    let at = payload.find(KEY)? + KEY.len();
    let id = payload.get(at..at + 36)?;
    uuid::Uuid::parse_str(id).ok().map(|_| id.to_owned())
}
