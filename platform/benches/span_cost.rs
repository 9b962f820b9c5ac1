//! What one traced step of a job costs with traces exported: `telemetry::event_span` (the
//! relay's, projections' and dispatcher's per-event span, parented by the event's
//! `traceparent`), made and dropped, and the `traceparent` of it taken (what the next step
//! carries on), exported over OTLP/HTTP to a local sink that answers 200.
//!
//!     cargo bench -p platform --bench span_cost
//!
//! Prints the calling thread's time per span and the process's CPU per span (the exporter's
//! threads included), so a change to the spans can be weighed without the whole stack.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use eventstore::reader::RecordedEvent;
use platform::telemetry;

const SPANS: usize = 200_000;
/// Bytes of OTLP the sink received: a span the exporter dropped (its queue full) would show.
static RECEIVED: AtomicUsize = AtomicUsize::new(0);

/// An OTLP collector stand-in: reads each request's body, answers 200, keeps the connection.
fn sink() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut out = conn;
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    RECEIVED.fetch_add(length, Ordering::Relaxed);
                    if reader.read_exact(&mut body).is_err()
                        || out
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// CPU seconds of this process so far (all threads), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    platform::install_crypto();
    telemetry::init("error", Some(&sink()), "span-cost");
    let event = RecordedEvent {
        position: 1,
        event_id: uuid::Uuid::new_v4(),
        recorded_at: chrono::Utc::now(),
        aggregate_type: "job".into(),
        aggregate_id: uuid::Uuid::new_v4().to_string(),
        sequence: 1,
        event_type: "JobSubmitted".into(),
        event_version: "1".into(),
        payload: "{}".into(),
        metadata: serde_json::json!({
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "correlation_id": uuid::Uuid::new_v4().to_string(),
        })
        .to_string(),
    };
    let cpu0 = cpu_seconds();
    let mut on_thread = std::time::Duration::ZERO;
    // Paced in rounds of 1,000 spans so the exporter's queue (2,048) never overflows; only
    // the rounds are timed.
    for _ in 0..SPANS / 1_000 {
        std::thread::sleep(std::time::Duration::from_millis(5));
        let t0 = Instant::now();
        for _ in 0..1_000 {
            let span = telemetry::event_span("relay.publish", &event).expect("exporting");
            std::hint::black_box(span.traceparent());
        }
        on_thread += t0.elapsed();
    }
    telemetry::shutdown();
    let cpu = cpu_seconds() - cpu0;
    println!("span_cost: {SPANS} event spans, exported over OTLP/HTTP to a local sink");
    println!(
        "  calling thread     {:.2} µs per span",
        on_thread.as_secs_f64() * 1e6 / SPANS as f64
    );
    println!(
        "  process CPU        {:.2} µs per span (exporter and sink threads included)",
        cpu * 1e6 / SPANS as f64
    );
    println!(
        "  exported           {:.0} bytes of OTLP per span",
        RECEIVED.load(Ordering::Relaxed) as f64 / SPANS as f64
    );
}
