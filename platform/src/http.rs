//! What every HTTP role serves besides its own routes: `/healthz`, `/readyz` (database
//! reachable), `/openapi.json`, problem+json for unknown routes and methods, and per-route
//! latency metrics.

use axum::{
    Router,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};

use bytes::Bytes;
use domain::task::TaskCatalog;

use eventstore::EventStore;

use crate::problem::Problem;

/// The request's span, made by [`crate::metrics::track`]: handlers record into it, parent
/// what they start on it, and answer inside it ([`RequestSpan::answer`]). The request's
/// future is not instrumented with it, which entered and left it on each of its ~16 polls:
/// a third of what traces cost per submission (ADR 0018).
#[derive(Clone, Debug)]
pub struct RequestSpan(pub tracing::Span);

impl RequestSpan {
    /// `outcome` as a response; a failure's is made inside the span, so its log line carries
    /// the request's fields (`job_id`, `correlation_id`, route). A success logs nothing
    /// there, and entering the span costs on every request when traces are exported.
    pub fn answer<T: IntoResponse, E: IntoResponse>(&self, outcome: Result<T, E>) -> Response {
        match outcome {
            Ok(ok) => ok.into_response(),
            Err(e) => self.0.in_scope(|| e.into_response()),
        }
    }
}

impl std::ops::Deref for RequestSpan {
    type Target = tracing::Span;
    fn deref(&self) -> &tracing::Span {
        &self.0
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
            .unwrap_or_else(|| Self(tracing::Span::none())))
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
