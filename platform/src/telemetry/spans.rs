//! The layer that turns runledger's tracing spans into OpenTelemetry spans for the SDK's
//! batch processor and the OTLP exporter.
//!
//! Each span keeps only what its export needs (ids, name, kind, start, attributes) in one
//! registry extension, and becomes the SDK's `SpanData` when it closes: no SDK span, context
//! or builder per span and nothing on enter or exit (ADR 0016).

use std::{borrow::Cow, fmt, time::SystemTime};

use opentelemetry::InstrumentationScope;
use opentelemetry::{
    KeyValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks,
    SpanProcessor,
};
use tracing::{
    Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{Registry, layer::Context, registry::LookupSpan};

/// What a span keeps until it closes.
struct Recorded {
    trace_id: TraceId,
    span_id: SpanId,
    parent_id: SpanId,
    remote_parent: bool,
    sampled: bool,
    name: Cow<'static, str>,
    kind: SpanKind,
    start: SystemTime,
    attributes: Vec<KeyValue>,
}

/// The span ids a `traceparent` carries on.
#[derive(Clone, Copy)]
pub(super) struct Ids {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

impl Ids {
    /// The W3C `traceparent` of the span (written by hand: one per event carried on).
    pub fn traceparent(self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id.to_bytes());
        out.push('-');
        push_hex(&mut out, &self.span_id.to_bytes());
        out.push_str(if self.sampled { "-01" } else { "-00" });
        out
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// Hands every closed span to `processor`.
pub(super) struct SpanLayer {
    processor: &'static BatchSpanProcessor,
    scope: InstrumentationScope,
    ids: RandomIdGenerator,
}

impl SpanLayer {
    pub fn new(processor: &'static BatchSpanProcessor) -> Self {
        Self {
            processor,
            scope: InstrumentationScope::builder("runledger").build(),
            ids: RandomIdGenerator::default(),
        }
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
            trace_id: parent.map_or_else(|| self.ids.new_trace_id(), |p| p.trace_id),
            span_id: self.ids.new_span_id(),
            parent_id: parent.map_or(SpanId::INVALID, |p| p.span_id),
            remote_parent: false,
            sampled: parent.is_none_or(|p| p.sampled),
            name: Cow::Borrowed(attrs.metadata().name()),
            kind: SpanKind::Internal,
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
        self.processor.on_end(SpanData {
            span_context: SpanContext::new(
                r.trace_id,
                r.span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: r.parent_id,
            parent_span_is_remote: r.remote_parent,
            span_kind: r.kind,
            name: r.name,
            start_time: r.start,
            end_time: SystemTime::now(),
            attributes: r.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: self.scope.clone(),
        });
    }
}

impl Recorded {
    fn ids(&self) -> Ids {
        Ids {
            trace_id: self.trace_id,
            span_id: self.span_id,
            sampled: self.sampled,
        }
    }

    /// Takes `otel.name` and `otel.kind` as the span's own; `false` for any other field.
    fn own(&mut self, field: &Field, text: &str) -> bool {
        match field.name() {
            "otel.name" => self.name = Cow::Owned(text.to_owned()),
            "otel.kind" => {
                self.kind = match text {
                    "server" => SpanKind::Server,
                    "client" => SpanKind::Client,
                    "producer" => SpanKind::Producer,
                    "consumer" => SpanKind::Consumer,
                    _ => SpanKind::Internal,
                }
            }
            _ => return false,
        }
        true
    }

    fn set(&mut self, field: &Field, value: opentelemetry::Value) {
        let name = field.name();
        match self
            .attributes
            .iter_mut()
            .find(|kv| kv.key.as_str() == name)
        {
            Some(kv) => kv.value = value,
            None => self.attributes.push(KeyValue::new(name, value)),
        }
    }
}

impl Visit for Recorded {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.own(field, value) {
            self.set(field, value.to_owned().into());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field, i64::try_from(value).unwrap_or(i64::MAX).into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if !self.own(field, &text) {
            self.set(field, text.into());
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
