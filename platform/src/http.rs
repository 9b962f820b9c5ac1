//! What every HTTP role serves besides its own routes: `/healthz`, `/readyz` (database
//! reachable), problem+json for unknown routes and methods, and per-route latency metrics.

use axum::{
    Router,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use sqlx::PgPool;

use crate::problem::Problem;

/// Adds the operational routes, the fallbacks and the metrics layer to `router`.
pub fn finish<S: Clone + Send + Sync + 'static>(router: Router<S>, pool: PgPool) -> Router<S> {
    router
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(move || ready(pool.clone())))
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

async fn ready(pool: PgPool) -> Response {
    match sqlx::query("SELECT 1").execute(&pool).await {
        Ok(_) => "ready".into_response(),
        Err(e) => {
            tracing::warn!(message = "Not ready: database unreachable.", error = %e);
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready")
                .detail("database unreachable")
                .into_response()
        }
    }
}
