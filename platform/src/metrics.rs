//! Prometheus metrics: one recorder per process, rendered by an HTTP route.

use std::sync::{Mutex, OnceLock};

use axum::{Router, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static POOLS: Mutex<Vec<sqlx::PgPool>> = Mutex::new(Vec::new());

/// Bucket bounds (seconds) of every `*_seconds` histogram: from a fast API call to a slow
/// browser or agent job, so alerts can take quantiles across replicas.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.2, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Installs the recorder (once) and returns the handle that renders `/metrics`.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// Exposes counter `name` with `labels` at 0 before its first event, so a rate or an alert
/// on it has a series to work with from the start (rather than none until it first fails).
pub fn zero(name: &'static str, labels: &[(&'static str, &'static str)]) {
    // Recorded nowhere before the recorder exists.
    handle();
    let labels: Vec<metrics::Label> = labels
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, *v))
        .collect();
    metrics::counter!(name, labels).increment(0);
}

/// Reports `pool`'s use on `/metrics` (`runledger_db_pool_connections{state}` and
/// `runledger_db_pool_max_connections`, summed over the process's pools).
pub fn watch_pool(pool: &sqlx::PgPool) {
    if let Ok(mut pools) = POOLS.lock() {
        pools.retain(|p| !p.is_closed());
        pools.push(pool.clone());
    }
}

/// The text exposition of every metric, with this process's resident memory and pools.
pub fn render() -> String {
    if let Some(rss) = resident_bytes() {
        metrics::gauge!("runledger_process_resident_bytes").set(rss as f64);
    }
    if let Ok(pools) = POOLS.lock()
        && !pools.is_empty()
    {
        let (mut size, mut idle, mut max) = (0u64, 0u64, 0u64);
        for p in pools.iter().filter(|p| !p.is_closed()) {
            size += u64::from(p.size());
            idle += p.num_idle() as u64;
            max += u64::from(p.options().get_max_connections());
        }
        let busy = size.saturating_sub(idle);
        metrics::gauge!("runledger_db_pool_connections", "state" => "in_use").set(busy as f64);
        metrics::gauge!("runledger_db_pool_connections", "state" => "idle").set(idle as f64);
        metrics::gauge!("runledger_db_pool_max_connections").set(max as f64);
    }
    handle().map(|h| h.render()).unwrap_or_default()
}

/// This process's resident set size (Linux), from `/proc/self/status`.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1_024)
}

/// Serves `/metrics` and `/healthz` for roles without an API of their own, until `shutdown`.
///
/// # Errors
/// When serving fails.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    handle();
    let app = Router::new()
        .route("/metrics", get(|| async { render() }))
        .route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Middleware recording `runledger_http_request_duration_seconds{method, route, status}`,
/// with the matched route pattern (not the raw path, so ids do not explode the labels); and
/// the request's span, a child of the caller's `traceparent` header when it sends one, handed
/// to the handlers as a [`crate::http::RequestSpan`]: they fill in its `job_id` and
/// `correlation_id` when they know them.
pub async fn track(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let log = tracing::info_span!(
        crate::http::LOG_SPAN,
        http.request.method = method.as_str(),
        http.route = route.as_str(),
        http.response.status_code = tracing::field::Empty,
        job_id = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
    );
    let trace = crate::telemetry::server_span(
        &method,
        &route,
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    let span = crate::http::RequestSpan::new(log, trace);
    let started = std::time::Instant::now();
    req.extensions_mut().insert(span.clone());
    let res = next.run(req).await;
    span.record_int(
        "http.response.status_code",
        i64::from(res.status().as_u16()),
    );
    // The exported span ends here, with the handler's copies already dropped.
    drop(span);
    metrics::histogram!(
        "runledger_http_request_duration_seconds",
        "method" => method,
        "route" => route,
        "status" => res.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    res
}
