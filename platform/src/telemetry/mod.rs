//! Logs through tracing; traces over OTLP when an endpoint is configured.
//!
//! A job's trace crosses processes in W3C `traceparent` strings: in event metadata, in the
//! envelope's `meta.traceparent`, and in the `traceparent` header of worker reports. Without
//! an endpoint no OpenTelemetry layer is installed and [`traceparent`] is `None`, so nothing
//! is recorded, carried or exported.

mod otlp;
mod spans;
mod step;

use std::sync::{
    OnceLock,
    atomic::{AtomicBool, Ordering},
};

use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*, registry::LookupSpan};

use spans::{Ids, SpanLayer};
pub use step::StepSpan;

static EXPORTER: OnceLock<otlp::Exporter> = OnceLock::new();
/// The crates whose spans make a job's trace.
const OURS: &[&str] = &[
    "runledger",
    "platform",
    "eventstore",
    "command_api",
    "projections",
    "read_api",
    "workers",
];
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Installs JSON logs with `filter` (an `EnvFilter` directive such as `info`), and traces to
/// `otlp` (the collector's base URL, `OTEL_EXPORTER_OTLP_ENDPOINT`) as `service`. A second
/// call is a no-op, so tests may call it freely.
pub fn init(filter: &str, otlp: Option<&str>, service: &str) {
    let filter = EnvFilter::try_new(quiet(filter)).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = fmt::layer()
        .json()
        .with_current_span(true)
        .with_target(true);
    let _ = tracing_subscriber::registry()
        .with(otel_layer(otlp, service))
        .with(logs.with_filter(filter))
        .try_init();
}

/// As [`init`], with compact human-readable logs on standard error, for `runledger dev` in a
/// terminal (standard output carries its banner).
pub fn init_human(filter: &str, otlp: Option<&str>, service: &str) {
    let filter = EnvFilter::try_new(quiet(filter)).unwrap_or_else(|_| EnvFilter::new("warn"));
    let logs = fmt::layer()
        .compact()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = tracing_subscriber::registry()
        .with(otel_layer(otlp, service))
        .with(logs.with_filter(filter))
        .try_init();
}

/// The OpenTelemetry layer, when `otlp` is set: runledger's own spans at info and above
/// (its filter is independent of the log filter, so quiet logs still give whole traces).
fn otel_layer<S>(otlp: Option<&str>, service: &str) -> Option<impl Layer<S>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let base = otlp?;
    if EXPORTER.get().is_some() {
        return None;
    }
    let url = format!("{}/v1/traces", base.trim_end_matches('/'));
    let exporter = otlp::Exporter::start(url, service)
        .map_err(|e| eprintln!("runledger: OTLP exporter not started: {e}"))
        .ok()?;
    if let Err(second) = EXPORTER.set(exporter) {
        second.shutdown();
        return None;
    }
    let exporter = EXPORTER.get()?;
    EXPORTING.store(true, Ordering::Relaxed);
    eventstore::trace::set_append_span(append_span);
    // The hint matters: without one the subscriber's level is TRACE, and libraries that
    // ask before they log (sqlx summarises every query for its debug line) do the work.
    let spans = tracing_subscriber::filter::DynFilterFn::new(move |m, _| ours(m))
        .with_max_level_hint(tracing::level_filters::LevelFilter::INFO)
        .with_callsite_filter(|m| {
            if ours(m) {
                tracing::subscriber::Interest::always()
            } else {
                tracing::subscriber::Interest::never()
            }
        });
    Some(SpanLayer::new(exporter).with_filter(spans))
}

/// Only spans, only runledger's own: log events stay out of the traces (a span event per log
/// line would cost on every request), and so do the libraries' spans and the request's span
/// for log lines (its trace is a [`server_span`]).
fn ours(m: &tracing::Metadata<'_>) -> bool {
    m.is_span()
        && m.name() != crate::http::LOG_SPAN
        && *m.level() <= tracing::Level::INFO
        && OURS.iter().any(|c| m.target().starts_with(c))
}

/// Sends the spans still buffered; call before the process exits.
pub fn shutdown() {
    if let Some(e) = EXPORTER.get() {
        e.shutdown();
    }
}

/// Whether spans are exported: per-event spans of the hot loops exist only then.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The current span's W3C `traceparent`, when traces are exported.
pub fn traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// `span`'s W3C `traceparent`, when traces are exported.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !exporting() {
        return None;
    }
    spans::ids_of(span).map(Ids::traceparent)
}

/// Makes `span` (not yet entered) a child of the remote span `traceparent` names. A missing
/// or malformed value leaves it a root: a trace is never worth refusing work for.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    if !exporting() {
        return;
    }
    if let Some(parent) = traceparent.and_then(parse) {
        spans::set_remote_parent(span, parent);
    }
}

/// A span for one step (`relay.publish`, `projection.apply`, …) of handling job event
/// `event`, in the trace its metadata names: only when traces are exported and the event
/// carries one, so the hot loops make no span otherwise.
pub fn event_span(
    step: &'static str,
    event: &eventstore::reader::RecordedEvent,
) -> Option<StepSpan> {
    // The job's own events make its path through a role; a usage event's span there would
    // double the spans per job and show nothing new (its append is in the trace already).
    if event.aggregate_type != "job" {
        return None;
    }
    // Set only when spans are exported: the metadata is read only then.
    let exporter = EXPORTER.get()?;
    let meta = event.meta();
    let tp = meta.traceparent.as_deref()?;
    Some(
        StepSpan::new(exporter, step, Some(tp))
            .text("event_type", &event.event_type)
            .int("position", event.position)
            .text("job_id", &event.aggregate_id)
            .text(
                "correlation_id",
                meta.correlation_id.as_deref().unwrap_or(""),
            ),
    )
}

/// A span for step `name`, continuing the trace `traceparent` names (a root of its own when
/// that is missing or malformed); `None` when traces are not exported.
pub fn step_span(name: &'static str, traceparent: Option<&str>) -> Option<StepSpan> {
    // Set only when spans are exported.
    let exporter = EXPORTER.get()?;
    Some(StepSpan::new(exporter, name, traceparent))
}

/// The span of a request this process serves (`POST /v1/jobs`, the route's pattern), the
/// child of the caller's `traceparent` header when it sends one; `None` when traces are not
/// exported.
pub fn server_span(method: &str, route: &str, traceparent: Option<&str>) -> Option<StepSpan> {
    let exporter = EXPORTER.get()?;
    Some(
        StepSpan::new(exporter, format!("{method} {route}"), traceparent)
            .kind(spans::SERVER)
            .text("http.request.method", method)
            .text("http.route", route),
    )
}

/// The span of an append: a child of `parent`, the span that asked for it.
fn append_span(
    parent: eventstore::trace::Parent<'_>,
    job_id: &str,
    correlation_id: &str,
    events: usize,
) -> Option<eventstore::trace::Closer> {
    let exporter = EXPORTER.get()?;
    let parent = match parent {
        eventstore::trace::Parent::Current => spans::ids_of(&tracing::Span::current()),
        eventstore::trace::Parent::Traceparent(tp) => parse(tp),
        eventstore::trace::Parent::Ids {
            trace_id,
            span_id,
            sampled,
        } => Some(Ids {
            trace_id,
            span_id,
            sampled,
        }),
    };
    let span = StepSpan::child_of(exporter, "eventstore.append", parent, false)
        .text("job_id", job_id)
        .text("correlation_id", correlation_id)
        .int("events", i64::try_from(events).unwrap_or(i64::MAX));
    Some(Box::new(span))
}

/// Parses a W3C `traceparent` (version 00, or a later one read as 00 as the spec says);
/// `None` when it is malformed or names an all-zero id.
fn parse(value: &str) -> Option<Ids> {
    let b = value.as_bytes();
    let fits = match b.get(..2)? {
        b"00" => b.len() == 55,
        b"ff" => false,
        v => lower_hex(v, &mut [0]).is_some() && (b.len() == 55 || b.get(55) == Some(&b'-')),
    };
    if !fits || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let mut trace_id = [0; 16];
    let mut span_id = [0; 8];
    let mut flags = [0; 1];
    lower_hex(&b[3..35], &mut trace_id)?;
    lower_hex(&b[36..52], &mut span_id)?;
    lower_hex(&b[53..55], &mut flags)?;
    (trace_id != [0; 16] && span_id != [0; 8]).then_some(Ids {
        trace_id,
        span_id,
        sampled: flags[0] & 1 == 1,
    })
}

/// Decodes `text` (twice `out`'s length) into `out`; `None` on anything but lowercase hex,
/// the only hex W3C allows. One pass through a table, without a branch per digit: each
/// event's span parses one on the hot paths.
fn lower_hex(text: &[u8], out: &mut [u8]) -> Option<()> {
    /// Each byte's value as a lowercase hex digit; 0xff (high bits set) for any other byte.
    const NIBBLE: [u8; 256] = {
        let mut t = [0xff; 256];
        let mut i = 0;
        while i < 16 {
            t[b"0123456789abcdef"[i] as usize] = i as u8;
            i += 1;
        }
        t
    };
    let mut seen = 0;
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
        seen |= hi | lo;
        *o = hi << 4 | lo;
    }
    (seen & 0xf0 == 0).then_some(())
}

/// `filter`, with chromiumoxide held to errors unless the filter names it: it warns about
/// every browser dropped without a close and every CDP message it does not know, which the
/// browser pool handles itself.
fn quiet(filter: &str) -> String {
    if filter.contains("chromiumoxide") {
        filter.to_owned()
    } else {
        format!("{filter},chromiumoxide=error")
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn a_w3c_traceparent_parses_and_bad_ones_do_not() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ids = parse(tp).unwrap();
        assert_eq!(
            hex::encode(ids.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(hex::encode(ids.span_id), "00f067aa0ba902b7");
        assert!(ids.sampled);
        assert_eq!(ids.traceparent(), tp);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!parse(unsampled).unwrap().sampled);
        assert_eq!(parse(unsampled).unwrap().traceparent(), unsampled);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736+00f067aa0ba902b7-01",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01é",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later").is_some());
    }
}
