//! Spans that are never entered and never parent a span of tracing's in their process: a
//! step on a job's event (`relay.publish`, `projection.apply`, `dispatcher.dispatch`,
//! `sse.send`), an append (`eventstore.append`) and a request's exported span (ADR 0020).
//! Each continues the trace its event, caller or request carries, is kept out of tracing's
//! registry and is written to the batch when dropped: a registry span cost as much again as
//! its export to make and close (ADR 0019).

use std::{borrow::Cow, time::SystemTime};

use super::{
    otlp::{Attr, Exporter, Span},
    spans::{self, Ids},
};

/// Where an attribute's value is: text in the span's one buffer, or a number.
#[derive(Clone, Copy)]
enum Slot {
    Text { start: u32, end: u32 },
    Int(i64),
}

/// An open step span; exported (when sampled) as it is dropped.
pub struct StepSpan {
    exporter: &'static Exporter,
    ids: Ids,
    /// All zero when the step starts the trace.
    parent_id: [u8; 8],
    /// Whether the parent is another process's.
    remote: bool,
    name: Cow<'static, str>,
    /// The OTLP `SpanKind` number.
    kind: u8,
    start: SystemTime,
    attributes: Vec<(&'static str, Slot)>,
    /// Every text attribute's value, one after the other: one allocation per span, not one
    /// per attribute.
    text: String,
}

impl StepSpan {
    /// A span named `name`, the child of the remote span `traceparent` names; a root of its
    /// own when that is missing or malformed (a trace is never worth refusing work for).
    pub(super) fn new(
        exporter: &'static Exporter,
        name: impl Into<Cow<'static, str>>,
        traceparent: Option<&str>,
    ) -> Self {
        Self::child_of(exporter, name, traceparent.and_then(super::parse), true)
    }

    /// A span named `name`, the child of `parent` (another process's when `remote`), or a
    /// root when there is none.
    pub(super) fn child_of(
        exporter: &'static Exporter,
        name: impl Into<Cow<'static, str>>,
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
            name: name.into(),
            kind: spans::INTERNAL,
            start: SystemTime::now(),
            attributes: Vec::with_capacity(6),
            text: String::with_capacity(128),
        }
    }

    /// Adds a text attribute.
    #[must_use]
    pub fn text(mut self, key: &'static str, value: &str) -> Self {
        let slot = self.keep(value);
        self.attributes.push((key, slot));
        self
    }

    /// Adds an integer attribute.
    #[must_use]
    pub fn int(mut self, key: &'static str, value: i64) -> Self {
        self.attributes.push((key, Slot::Int(value)));
        self
    }

    /// Makes it a span of `kind` (an OTLP `SpanKind` number).
    #[must_use]
    pub(super) fn kind(mut self, kind: u8) -> Self {
        self.kind = kind;
        self
    }

    /// Sets text attribute `key`, replacing the value it had: for what is known only later.
    pub fn set_text(&mut self, key: &'static str, value: &str) {
        let slot = self.keep(value);
        self.set(key, slot);
    }

    /// Sets integer attribute `key`, replacing the value it had.
    pub fn set_int(&mut self, key: &'static str, value: i64) {
        self.set(key, Slot::Int(value));
    }

    fn set(&mut self, key: &'static str, slot: Slot) {
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = slot,
            None => self.attributes.push((key, slot)),
        }
    }

    /// Appends `value` to the span's text; a text past 4 GiB is cut to nothing.
    fn keep(&mut self, value: &str) -> Slot {
        let start = u32::try_from(self.text.len()).unwrap_or(u32::MAX);
        let end = u32::try_from(self.text.len() + value.len()).unwrap_or(start);
        if end > start {
            self.text.push_str(value);
        }
        Slot::Text { start, end }
    }

    fn attr(&self, slot: Slot) -> Attr<'_> {
        match slot {
            Slot::Text { start, end } => {
                Attr::Str(self.text.get(start as usize..end as usize).unwrap_or(""))
            }
            Slot::Int(i) => Attr::Int(i),
        }
    }

    /// The text attribute `key`, when it has one.
    pub fn text_of(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find_map(|(k, slot)| match self.attr(*slot) {
                Attr::Str(s) if *k == key => Some(s),
                _ => None,
            })
    }

    /// The span as a parent of an append in this process.
    pub fn as_parent(&self) -> eventstore::trace::Parent<'static> {
        eventstore::trace::Parent::Ids {
            trace_id: self.ids.trace_id,
            span_id: self.ids.span_id,
            sampled: self.ids.sampled,
        }
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
        let attributes = self
            .attributes
            .iter()
            .map(|(k, slot)| (*k, self.attr(*slot)));
        self.exporter.push(
            &Span {
                trace_id: self.ids.trace_id,
                span_id: self.ids.span_id,
                parent_id: self.parent_id,
                remote_parent: self.remote,
                name: &self.name,
                kind: self.kind,
                start_unix_nanos: spans::unix_nanos(self.start),
                end_unix_nanos: spans::unix_nanos(SystemTime::now()),
            },
            attributes,
        );
    }
}
