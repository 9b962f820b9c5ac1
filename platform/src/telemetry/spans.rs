//! The layer that turns runledger's tracing spans into OTLP spans.
//!
//! Each span keeps only what its export needs (ids, name, kind, start and attributes) in one
//! registry extension, and is encoded for export when it closes: nothing happens on enter
//! or exit (ADR 0016, ADR 0018).

use std::{
    borrow::Cow,
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{
    Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{Registry, layer::Context, registry::LookupSpan};

use super::otlp::{Exporter, Span, Value};

/// What a span keeps until it closes.
struct Recorded {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// All zero for a root.
    parent_id: [u8; 8],
    remote_parent: bool,
    sampled: bool,
    name: Cow<'static, str>,
    /// The OTLP `SpanKind` number.
    kind: u8,
    start: SystemTime,
    attributes: Vec<(&'static str, Value)>,
}

/// The span ids a `traceparent` carries on.
#[derive(Clone, Copy)]
pub(super) struct Ids {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl Ids {
    /// The W3C `traceparent` of the span: one allocation, as it is written per event.
    pub fn traceparent(self) -> String {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        // Each slice is exactly twice its bytes' length, so neither encoding can fail.
        let _ = hex::encode_to_slice(self.trace_id, &mut out[3..35]);
        let _ = hex::encode_to_slice(self.span_id, &mut out[36..52]);
        if self.sampled {
            out[54] = b'1';
        }
        // Hex digits and dashes only: always UTF-8.
        std::str::from_utf8(&out)
            .map(str::to_owned)
            .unwrap_or_default()
    }
}

/// Random ids, never all zero (which W3C reserves for "none").
pub(super) fn new_trace_id() -> [u8; 16] {
    rand::random::<u128>().max(1).to_be_bytes()
}

pub(super) fn new_span_id() -> [u8; 8] {
    rand::random::<u64>().max(1).to_be_bytes()
}

pub(super) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Hands every closed, sampled span to the exporter.
pub(super) struct SpanLayer {
    exporter: &'static Exporter,
}

impl SpanLayer {
    pub fn new(exporter: &'static Exporter) -> Self {
        Self { exporter }
    }
}

impl<S> tracing_subscriber::Layer<S> for SpanLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = match attrs.parent() {
            Some(p) => ctx.span(p),
            None if attrs.is_contextual() => ctx.lookup_current(),
            None => None,
        };
        let parent = parent.and_then(|p| p.extensions().get::<Recorded>().map(Recorded::ids));
        let mut recorded = Recorded {
            trace_id: parent.map_or_else(new_trace_id, |p| p.trace_id),
            span_id: new_span_id(),
            parent_id: parent.map_or([0; 8], |p| p.span_id),
            remote_parent: false,
            sampled: parent.is_none_or(|p| p.sampled),
            name: Cow::Borrowed(attrs.metadata().name()),
            kind: INTERNAL,
            start: SystemTime::now(),
            attributes: Vec::with_capacity(attrs.fields().len()),
        };
        attrs.record(&mut recorded);
        span.extensions_mut().insert(recorded);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(recorded) = span.extensions_mut().get_mut::<Recorded>()
        {
            values.record(recorded);
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(r) = span.extensions_mut().remove::<Recorded>() else {
            return;
        };
        if !r.sampled {
            return;
        }
        self.exporter.push(
            &Span {
                trace_id: r.trace_id,
                span_id: r.span_id,
                parent_id: r.parent_id,
                remote_parent: r.remote_parent,
                name: &r.name,
                kind: r.kind,
                start_unix_nanos: unix_nanos(r.start),
                end_unix_nanos: unix_nanos(SystemTime::now()),
            },
            r.attributes.iter().map(|(k, v)| (*k, v.as_attr())),
        );
    }
}

/// OTLP `SpanKind` numbers.
pub(super) const INTERNAL: u8 = 1;
pub(super) const SERVER: u8 = 2;

impl Recorded {
    fn ids(&self) -> Ids {
        Ids {
            trace_id: self.trace_id,
            span_id: self.span_id,
            sampled: self.sampled,
        }
    }

    /// Takes `otel.name` and `otel.kind` as the span's own; gives any other field's text
    /// back (an owned text is moved, never copied).
    fn own<'t>(&mut self, field: &Field, text: Cow<'t, str>) -> Option<Cow<'t, str>> {
        match field.name() {
            "otel.name" => self.name = Cow::Owned(text.into_owned()),
            "otel.kind" => {
                self.kind = match &*text {
                    "server" => SERVER,
                    "client" => 3,
                    "producer" => 4,
                    "consumer" => 5,
                    _ => INTERNAL,
                }
            }
            _ => return Some(text),
        }
        None
    }

    fn set(&mut self, field: &Field, value: Value) {
        let name = field.name();
        match self.attributes.iter_mut().find(|(k, _)| *k == name) {
            Some((_, v)) => *v = value,
            None => self.attributes.push((name, value)),
        }
    }
}

impl Visit for Recorded {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(text) = self.own(field, Cow::Borrowed(value)) {
            self.set(field, Value::Str(text.into_owned()));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, Value::Int(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field, Value::Int(i64::try_from(value).unwrap_or(i64::MAX)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, Value::Bool(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, Value::Double(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if let Some(text) = self.own(field, Cow::Owned(format!("{value:?}"))) {
            self.set(field, Value::Str(text.into_owned()));
        }
    }
}

/// The span ids of `span`, when this process exports it.
pub(super) fn ids_of(span: &tracing::Span) -> Option<Ids> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let span = registry.span(id)?;
        span.extensions().get::<Recorded>().map(Recorded::ids)
    })
    .flatten()
}

/// Makes `span` a child of the remote span `parent` (before it has children of its own).
pub(super) fn set_remote_parent(span: &tracing::Span, parent: Ids) {
    span.with_subscriber(|(id, dispatch)| {
        if let Some(span) = dispatch.downcast_ref::<Registry>().and_then(|r| r.span(id))
            && let Some(r) = span.extensions_mut().get_mut::<Recorded>()
        {
            r.trace_id = parent.trace_id;
            r.parent_id = parent.span_id;
            r.remote_parent = true;
            r.sampled = parent.sampled;
        }
    });
}
