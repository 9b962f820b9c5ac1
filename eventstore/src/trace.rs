//! The spans of appends: made by the process's telemetry when spans are exported, so the
//! store builds no span (and parses no metadata) otherwise, and knows no exporter.

use std::{any::Any, sync::OnceLock};

/// Opens an append's span (a child of `parent`, naming the job, its correlation id and the
/// number of events) and returns what closes it when dropped; `None` when not traced.
pub type AppendSpan =
    fn(parent: Parent<'_>, job_id: &str, correlation_id: &str, events: usize) -> Option<Closer>;

/// The span that asked for an append.
#[derive(Clone, Copy, Debug)]
pub enum Parent<'a> {
    /// The caller's current span.
    Current,
    /// The span this W3C `traceparent` names, in this process (a request's span is not one
    /// of tracing's, so it cannot be current).
    Traceparent(&'a str),
    /// A span in this process, by its ids (a request's exported span): nothing to parse.
    Ids {
        /// The W3C trace id.
        trace_id: [u8; 16],
        /// The span's id.
        span_id: [u8; 8],
        /// Whether the trace is sampled.
        sampled: bool,
    },
}

/// Ends an append's span when dropped.
pub type Closer = Box<dyn Any + Send>;

static APPEND_SPAN: OnceLock<AppendSpan> = OnceLock::new();

/// Traces every append with `open` from now on (spans are exported); the first call wins.
pub fn set_append_span(open: AppendSpan) {
    let _ = APPEND_SPAN.set(open);
}

pub(crate) fn append_span() -> Option<AppendSpan> {
    APPEND_SPAN.get().copied()
}

/// The `job_id` of a usage event's payload (`{"UnitReserved":{"job_id":…}}`).
pub(crate) fn job_in(payload: &str) -> Option<String> {
    // Found in the text: usage events name their job first, and this runs per event.
    const KEY: &str = r#""job_id":""#;
    let at = payload.find(KEY)? + KEY.len();
    let id = payload.get(at..at + 36)?;
    uuid::Uuid::parse_str(id).ok().map(|_| id.to_owned())
}
