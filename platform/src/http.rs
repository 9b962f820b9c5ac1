//! What every HTTP role serves besides its own routes: `/healthz`, `/readyz` (database
//! reachable), `/openapi.json`, problem+json for unknown routes and methods, and per-route
//! latency metrics.

use std::sync::{Arc, Mutex, PoisonError};

use axum::{
    Router,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};

use bytes::Bytes;
use domain::task::TaskCatalog;

use eventstore::EventStore;

use crate::{problem::Problem, telemetry::StepSpan};

/// The name of a request's span for log lines; its trace is a separate, exported span.
pub const LOG_SPAN: &str = "request";

/// The request's spans, made by [`crate::metrics::track`]: handlers record the job's ids
/// into them, carry their `traceparent` on, and answer inside them ([`RequestSpan::answer`]).
/// Two spans: one of tracing's for log lines' fields (disabled when logs are quieter than
/// info), and the exported one, kept out of tracing's registry, which cost a registry span's
/// making, recording and closing on every request (ADR 0020).
#[derive(Clone)]
pub struct RequestSpan {
    log: tracing::Span,
    trace: Option<Arc<Mutex<StepSpan>>>,
}

impl RequestSpan {
    /// A request's spans: `log` for its log lines, `trace` exported when traces are.
    pub fn new(log: tracing::Span, trace: Option<StepSpan>) -> Self {
        Self {
            log,
            trace: trace.map(|t| Arc::new(Mutex::new(t))),
        }
    }

    /// For a command not served over HTTP (a worker's report in process): the caller's span
    /// stands for the request's.
    pub fn within(span: tracing::Span) -> Self {
        Self {
            log: span,
            trace: None,
        }
    }

    /// The span log lines of the request are made in.
    pub fn log(&self) -> &tracing::Span {
        &self.log
    }

    /// Records text field `key` (declared on the log span: `job_id`, `correlation_id`).
    pub fn record(&self, key: &'static str, value: &str) {
        self.log.record(key, value);
        self.with_trace(|t| t.set_text(key, value));
    }

    /// Records integer field `key`.
    pub fn record_int(&self, key: &'static str, value: i64) {
        self.log.record(key, value);
        self.with_trace(|t| t.set_int(key, value));
    }

    /// The W3C `traceparent` of the request's exported span, for what it causes to carry on;
    /// `None` when traces are not exported.
    pub fn traceparent(&self) -> Option<String> {
        match &self.trace {
            Some(t) => Some(
                t.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .traceparent(),
            ),
            None => crate::telemetry::traceparent_of(&self.log),
        }
    }

    /// The request's exported span as the parent of an append it asks for; `None` when
    /// traces are not exported or the request's span is tracing's.
    pub fn parent(&self) -> Option<eventstore::trace::Parent<'static>> {
        self.trace
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(PoisonError::into_inner).as_parent())
    }

    fn with_trace(&self, f: impl FnOnce(&mut StepSpan)) {
        if let Some(t) = &self.trace {
            f(&mut t.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }

    /// `outcome` as a response; a failure's is made inside the log span, so its log line
    /// carries the request's fields (`job_id`, `correlation_id`, route). A success logs
    /// nothing there.
    pub fn answer<T: IntoResponse, E: IntoResponse>(&self, outcome: Result<T, E>) -> Response {
        match outcome {
            Ok(ok) => ok.into_response(),
            Err(e) => self.log.in_scope(|| e.into_response()),
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestSpan {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Self>()
            .cloned()
            .unwrap_or_else(|| Self::within(tracing::Span::none())))
    }
}

/// Adds the operational routes, the fallbacks and the metrics layer to `router`; the
/// OpenAPI document names the task types of `catalog`.
pub fn finish<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    store: EventStore,
    catalog: &TaskCatalog,
) -> Router<S> {
    let doc = served_openapi(catalog);
    router
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(move || ready(store.clone())))
        .route("/openapi.json", get(move || openapi(doc.clone())))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            )
        })
        .route_layer(axum::middleware::from_fn(crate::metrics::track))
}

/// The HTTP surface, checked against the routes by `tests/dev/openapi.rs`.
pub const OPENAPI: &str = include_str!("../../schemas/openapi.json");

/// [`OPENAPI`] as this deployment serves it.
fn served_openapi(catalog: &TaskCatalog) -> Bytes {
    let Ok(doc) = serde_json::from_str(OPENAPI) else {
        return Bytes::from_static(OPENAPI.as_bytes());
    };
    let doc = domain::schema::for_catalog(doc, &catalog.extra());
    serde_json::to_vec(&doc).map_or_else(|_| Bytes::from_static(OPENAPI.as_bytes()), Bytes::from)
}

async fn openapi(doc: Bytes) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc,
    )
        .into_response()
}

async fn ready(store: EventStore) -> Response {
    match store.ping().await {
        Ok(_) => "ready".into_response(),
        Err(e) => {
            tracing::warn!(message = "Not ready: database unreachable.", error = %e);
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready")
                .detail("database unreachable")
                .into_response()
        }
    }
}
