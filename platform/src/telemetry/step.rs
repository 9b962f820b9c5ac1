//! Spans of one step on a job's event (`relay.publish`, `projection.apply`,
//! `dispatcher.dispatch`, `sse.send`) and of an append (`eventstore.append`): each continues
//! the trace its event or caller carries, is never entered and never parents a span in its
//! process, so it is kept out of tracing's registry and written to the batch when dropped. A registry span cost as much again as its export
//! to make and close (ADR 0019).

use std::time::SystemTime;

use super::{
    otlp::{Exporter, Span, Value},
    spans::{self, Ids},
};

/// An open step span; exported (when sampled) as it is dropped.
pub struct StepSpan {
    exporter: &'static Exporter,
    ids: Ids,
    /// All zero when the step starts the trace.
    parent_id: [u8; 8],
    /// Whether the parent is another process's.
    remote: bool,
    name: &'static str,
    start: SystemTime,
    attributes: Vec<(&'static str, Value)>,
}

impl StepSpan {
    /// A span named `name`, the child of the remote span `traceparent` names; a root of its
    /// own when that is missing or malformed (a trace is never worth refusing work for).
    pub(super) fn new(
        exporter: &'static Exporter,
        name: &'static str,
        traceparent: Option<&str>,
    ) -> Self {
        Self::child_of(exporter, name, traceparent.and_then(super::parse), true)
    }

    /// A span named `name`, the child of `parent` (another process's when `remote`), or a
    /// root when there is none.
    pub(super) fn child_of(
        exporter: &'static Exporter,
        name: &'static str,
        parent: Option<Ids>,
        remote: bool,
    ) -> Self {
        Self {
            exporter,
            ids: Ids {
                trace_id: parent.map_or_else(spans::new_trace_id, |p| p.trace_id),
                span_id: spans::new_span_id(),
                sampled: parent.is_none_or(|p| p.sampled),
            },
            parent_id: parent.map_or([0; 8], |p| p.span_id),
            remote: remote && parent.is_some(),
            name,
            start: SystemTime::now(),
            attributes: Vec::with_capacity(6),
        }
    }

    /// Adds a text attribute.
    #[must_use]
    pub fn text(mut self, key: &'static str, value: &str) -> Self {
        self.attributes.push((key, Value::Str(value.to_owned())));
        self
    }

    /// Adds an integer attribute.
    #[must_use]
    pub fn int(mut self, key: &'static str, value: i64) -> Self {
        self.attributes.push((key, Value::Int(value)));
        self
    }

    /// Its W3C `traceparent`, for the next step to continue.
    pub fn traceparent(&self) -> String {
        self.ids.traceparent()
    }
}

impl Drop for StepSpan {
    fn drop(&mut self) {
        if !self.ids.sampled {
            return;
        }
        self.exporter.push(&Span {
            trace_id: self.ids.trace_id,
            span_id: self.ids.span_id,
            parent_id: self.parent_id,
            remote_parent: self.remote,
            name: self.name,
            kind: spans::INTERNAL,
            start_unix_nanos: spans::unix_nanos(self.start),
            end_unix_nanos: spans::unix_nanos(SystemTime::now()),
            attributes: &self.attributes,
        });
    }
}
