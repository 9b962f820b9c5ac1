//! runledger's write side: axum handlers that authenticate, validate and execute commands on
//! the event store, and the process manager that settles usage from job outcomes.

pub mod body;
pub mod error;
pub mod jobs;
pub mod process;
pub mod state;
pub mod submit;

use std::sync::Arc;

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use domain::ids::CorrelationId;
use platform::{
    auth::{Authenticator, Principal},
    db,
    problem::Problem,
    settings::Settings,
    store::{EventStore, Metadata},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use state::AppState;

pub use platform::StartError;

/// Connects to Postgres and builds the shared state.
///
/// # Errors
/// [`StartError`].
pub async fn build(settings: Settings) -> Result<AppState, StartError> {
    settings.require_auth()?;
    platform::metrics::handle();
    let pool = db::connect(settings.require_database()?, settings.db_max_connections).await?;
    let auth = Authenticator::new(
        settings.jwt_secret.as_ref(),
        settings.jwks_url.as_deref(),
        &settings.jwt_audience,
    );
    Ok(AppState {
        store: EventStore::new(pool),
        auth: Arc::new(auth),
        settings: Arc::new(settings),
    })
}

/// The routes of the write side.
pub fn router(state: AppState) -> Router {
    let limit = state.settings.body_limit;
    Router::new()
        .route("/v1/jobs", post(submit::submit))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/worker/jobs/{id}/start", post(jobs::start))
        .route("/v1/worker/jobs/{id}/heartbeat", post(jobs::heartbeat))
        .route("/v1/worker/jobs/{id}/complete", post(jobs::complete))
        .route("/v1/worker/jobs/{id}/fail", post(jobs::fail))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(|| async { platform::metrics::render() }))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .route_layer(axum::middleware::from_fn(platform::metrics::track))
        .with_state(state)
}

async fn ready(State(state): State<AppState>) -> Response {
    match sqlx::query("SELECT 1").execute(state.store.pool()).await {
        Ok(_) => "ready".into_response(),
        Err(e) => {
            tracing::warn!(message = "Not ready: database unreachable.", error = %e);
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready")
                .detail("database unreachable")
                .into_response()
        }
    }
}

/// Serves the write side on `listener` and runs the process manager, until `shutdown`.
///
/// # Errors
/// When serving fails.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let pm = tokio::spawn(process::run(
        state.store.clone(),
        state.settings.reservation_timeout,
        shutdown.clone(),
    ));
    let stop = shutdown.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    shutdown.cancel();
    let _ = pm.await;
    Ok(())
}

/// The metadata every command's events carry.
pub fn metadata(correlation_id: &CorrelationId, principal: Principal) -> Metadata {
    let mut m = Metadata::new();
    m.insert("correlation_id".into(), correlation_id.to_string());
    m.insert("actor".into(), principal.user_id.to_string());
    m.insert(
        "role".into(),
        format!("{:?}", principal.role).to_lowercase(),
    );
    m
}
