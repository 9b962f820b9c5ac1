//! OTLP/HTTP export in protobuf, without the SDK's pipeline: a span is encoded once, as it
//! closes, straight into the pending batch; a thread of its own posts each batch to
//! `<endpoint>/v1/traces` (ADR 0018). The SDK's path copied each span about six times and
//! encoded it through an intermediate message tree: most of what a traced job cost.

use std::{
    cell::RefCell,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

/// Spans per request, as the SDK's default batch.
const BATCH: usize = 512;
/// Spans held while the collector is slow or away; more are dropped (and counted).
const QUEUE: usize = 8_192;
/// The longest a closed span waits for its batch.
const DELAY: Duration = Duration::from_secs(1);
/// A request the collector has not answered by then is given up (its spans counted dropped).
const TIMEOUT: Duration = Duration::from_secs(10);

/// An attribute's value, owned.
pub(super) enum Value {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl Value {
    pub(super) fn as_attr(&self) -> Attr<'_> {
        match self {
            Self::Str(s) => Attr::Str(s),
            Self::Int(i) => Attr::Int(*i),
            Self::Double(d) => Attr::Double(*d),
            Self::Bool(b) => Attr::Bool(*b),
        }
    }
}

/// An attribute's value as encoded, borrowed from wherever the span keeps it.
#[derive(Clone, Copy)]
pub(super) enum Attr<'a> {
    Str(&'a str),
    Int(i64),
    Double(f64),
    Bool(bool),
}

/// What one span is on the wire.
pub(super) struct Span<'a> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero for a root.
    pub parent_id: [u8; 8],
    pub remote_parent: bool,
    pub name: &'a str,
    /// The OTLP `SpanKind` number (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: u8,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
}

/// Takes encoded spans and posts them in batches from its own thread.
pub(super) struct Exporter {
    shared: Arc<Shared>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

struct Shared {
    pending: Mutex<Pending>,
    ready: Condvar,
}

#[derive(Default)]
struct Pending {
    /// Each span as field 2 (`spans`) of a `ScopeSpans`: tag, length, message.
    body: Vec<u8>,
    spans: usize,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Exporter {
    /// Starts the export thread, posting to `url` (the full `/v1/traces` URL) as `service`.
    pub fn start(url: String, service: &str) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            ready: Condvar::new(),
        });
        let head = request_head(service);
        let thread = thread::Builder::new().name("otlp-export".into()).spawn({
            let shared = shared.clone();
            move || run(&shared, &url, &head)
        })?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Adds `span` with its `attributes` to the pending batch; dropped (and counted) when
    /// the queue is full.
    pub fn push<'v>(&self, span: &Span<'_>, attributes: impl Iterator<Item = (&'v str, Attr<'v>)>) {
        thread_local! {
            static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            encode_span(scratch, span, attributes);
            let mut p = self.shared.lock();
            if p.spans >= QUEUE {
                drop(p);
                metrics::counter!("runledger_trace_spans_dropped_total").increment(1);
                return;
            }
            bytes(&mut p.body, 2, scratch);
            p.spans += 1;
            if p.spans == BATCH {
                self.shared.ready.notify_one();
            }
        });
    }

    /// Posts what is pending and stops the thread.
    pub fn shutdown(&self) {
        self.shared.lock().stop = true;
        self.shared.ready.notify_one();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, url: &str, head: &[u8]) {
    let client = match reqwest::blocking::Client::builder()
        .timeout(TIMEOUT)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("runledger: OTLP export not started: {e}");
            return;
        }
    };
    let mut last_warning: Option<Instant> = None;
    loop {
        let (spans, count, stop) = {
            let deadline = Instant::now() + DELAY;
            let mut p = shared.lock();
            while p.spans < BATCH && !p.stop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                p = shared
                    .ready
                    .wait_timeout(p, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            // The next batch starts as large as this one: spans are not copied as it grows.
            let room = p.body.capacity();
            (
                std::mem::replace(&mut p.body, Vec::with_capacity(room)),
                std::mem::take(&mut p.spans),
                p.stop,
            )
        };
        if count > 0 {
            let outcome = client
                .post(url)
                .header("content-type", "application/x-protobuf")
                .body(request(head, &spans))
                .send()
                .map_err(|e| e.without_url().to_string())
                .and_then(|r| {
                    let status = r.status();
                    if status.is_success() {
                        Ok(())
                    } else {
                        Err(format!("the collector answered {status}"))
                    }
                });
            match outcome {
                Ok(()) => metrics::counter!("runledger_trace_spans_exported_total")
                    .increment(count as u64),
                Err(error) => {
                    metrics::counter!("runledger_trace_spans_dropped_total")
                        .increment(count as u64);
                    // Once a minute at most: a collector that is away must not flood the logs.
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        last_warning = Some(Instant::now());
                        tracing::warn!(message = "Spans not exported.", spans = count, error);
                    }
                }
            }
        }
        if stop {
            return;
        }
    }
}

/// The `ExportTraceServiceRequest` around the encoded spans: one resource, one scope.
fn request(head: &[u8], spans: &[u8]) -> Vec<u8> {
    let scope_spans = SCOPE.len() + spans.len();
    let resource_spans = head.len() + 1 + varint_len(scope_spans as u64) + scope_spans;
    let mut out = Vec::with_capacity(resource_spans + 8);
    tag(&mut out, 1, LEN);
    varint(&mut out, resource_spans as u64);
    out.extend_from_slice(head);
    tag(&mut out, 2, LEN);
    varint(&mut out, scope_spans as u64);
    out.extend_from_slice(SCOPE);
    out.extend_from_slice(spans);
    out
}

/// `ScopeSpans.scope`: an `InstrumentationScope` named `runledger`.
const SCOPE: &[u8] = &[
    0x0a, 11, 0x0a, 9, b'r', b'u', b'n', b'l', b'e', b'd', b'g', b'e', b'r',
];

/// `ResourceSpans.resource`: the service's name and the SDK attributes collectors expect.
fn request_head(service: &str) -> Vec<u8> {
    let attributes = [
        ("service.name", Value::Str(service.to_owned())),
        ("telemetry.sdk.language", Value::Str("rust".into())),
        ("telemetry.sdk.name", Value::Str("runledger".into())),
    ];
    let mut resource = Vec::new();
    for (k, v) in &attributes {
        key_value(&mut resource, 1, k, v.as_attr());
    }
    let mut out = Vec::new();
    bytes(&mut out, 1, &resource);
    out
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Bit 8 of `Span.flags`: whether the parent is remote is known; bit 9: it is.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;
/// W3C trace flags: sampled (only sampled spans are exported).
const SAMPLED: u32 = 0x01;

fn encode_span<'v>(
    out: &mut Vec<u8>,
    s: &Span<'_>,
    attributes: impl Iterator<Item = (&'v str, Attr<'v>)>,
) {
    // Room for the fixed fields; attributes reserve their own.
    out.reserve(80 + s.name.len());
    bytes(out, 1, &s.trace_id);
    bytes(out, 2, &s.span_id);
    if s.parent_id != [0; 8] {
        bytes(out, 4, &s.parent_id);
    }
    bytes(out, 5, s.name.as_bytes());
    if s.kind != 0 {
        tag(out, 6, VARINT);
        varint(out, u64::from(s.kind));
    }
    tag(out, 7, FIXED64);
    out.extend_from_slice(&s.start_unix_nanos.to_le_bytes());
    tag(out, 8, FIXED64);
    out.extend_from_slice(&s.end_unix_nanos.to_le_bytes());
    for (k, v) in attributes {
        key_value(out, 9, k, v);
    }
    let remote = if s.parent_id == [0; 8] {
        0
    } else if s.remote_parent {
        HAS_IS_REMOTE | IS_REMOTE
    } else {
        HAS_IS_REMOTE
    };
    tag(out, 16, FIXED32);
    out.extend_from_slice(&(SAMPLED | remote).to_le_bytes());
}

/// A `KeyValue` as field `field` of its message.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: Attr<'_>) {
    let any = match value {
        Attr::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
        Attr::Bool(_) => 2,
        Attr::Int(i) => 1 + varint_len(i as u64),
        Attr::Double(_) => 9,
    };
    let kv = 1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any as u64) + any;
    out.reserve(kv + 2);
    tag(out, field, LEN);
    varint(out, kv as u64);
    bytes(out, 1, key.as_bytes());
    tag(out, 2, LEN);
    varint(out, any as u64);
    match value {
        Attr::Str(s) => bytes(out, 1, s.as_bytes()),
        Attr::Bool(b) => {
            tag(out, 2, VARINT);
            out.push(u8::from(b));
        }
        Attr::Int(i) => {
            tag(out, 3, VARINT);
            // Protobuf's int64 is the two's complement as an unsigned varint.
            varint(out, i as u64);
        }
        Attr::Double(d) => {
            tag(out, 4, FIXED64);
            out.extend_from_slice(&d.to_bits().to_le_bytes());
        }
    }
}

#[inline]
fn bytes(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    tag(out, field, LEN);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

#[inline]
fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field << 3 | u32::from(wire)));
}

#[inline]
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value,
    };
    use prost::Message;

    #[test]
    fn a_batch_decodes_as_the_collector_reads_it() {
        let attributes = [
            ("job_id", Value::Str("j-1".into())),
            ("position", Value::Int(300)),
            ("negative", Value::Int(-2)),
            ("ratio", Value::Double(0.5)),
            ("retried", Value::Bool(true)),
        ];
        let attributes = || attributes.iter().map(|(k, v)| (*k, v.as_attr()));
        let span = Span {
            trace_id: [7; 16],
            span_id: [8; 8],
            parent_id: [9; 8],
            remote_parent: true,
            name: "POST /v1/jobs",
            kind: 2,
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_000_500_000,
        };
        let mut spans = Vec::new();
        for s in [
            &span,
            &Span {
                parent_id: [0; 8],
                ..span
            },
        ] {
            let mut one = Vec::new();
            encode_span(&mut one, s, attributes());
            bytes(&mut spans, 2, &one);
        }
        let req =
            ExportTraceServiceRequest::decode(&request(&request_head("svc"), &spans)[..]).unwrap();
        let rs = &req.resource_spans[0];
        let service = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "runledger");
        let (child, root) = (&ss.spans[0], &ss.spans[1]);
        assert_eq!(child.trace_id, vec![7; 16]);
        assert_eq!(child.span_id, vec![8; 8]);
        assert_eq!(child.parent_span_id, vec![9; 8]);
        assert_eq!(child.name, "POST /v1/jobs");
        assert_eq!(child.kind, 2);
        assert_eq!(
            child.end_time_unix_nano - child.start_time_unix_nano,
            500_000
        );
        assert_eq!(child.flags, 0x301);
        assert!(root.parent_span_id.is_empty());
        assert_eq!(root.flags, 0x01);
        let values: Vec<_> = child
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.clone().unwrap().value.unwrap()))
            .collect();
        assert_eq!(
            values,
            [
                ("job_id", any_value::Value::StringValue("j-1".into())),
                ("position", any_value::Value::IntValue(300)),
                ("negative", any_value::Value::IntValue(-2)),
                ("ratio", any_value::Value::DoubleValue(0.5)),
                ("retried", any_value::Value::BoolValue(true)),
            ]
        );
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }
}
