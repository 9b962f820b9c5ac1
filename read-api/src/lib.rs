//! runledger's read side: queries over the read models and the per-user SSE stream.

pub mod jobs;
pub mod state;
pub mod stream;
pub mod usage;

use std::sync::Arc;

use axum::{Router, extract::State, routing::get};
use platform::{auth::Authenticator, db, notice::NoticeBus, settings::Settings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use state::AppState;

pub use platform::StartError;

/// Builds the state on `bus`; the hub follows notices until `shutdown`.
///
/// # Errors
/// [`StartError`].
pub async fn build(
    settings: Settings,
    bus: &NoticeBus,
    shutdown: CancellationToken,
) -> Result<AppState, StartError> {
    settings.require_auth()?;
    platform::metrics::handle();
    let pool = db::connect(settings.require_database()?, settings.db_max_connections).await?;
    let auth = Authenticator::new(
        settings.jwt_secret.as_ref(),
        settings.jwks_url.as_deref(),
        &settings.jwt_audience,
    );
    let hub = stream::Hub::start(bus, shutdown).await?;
    Ok(AppState {
        pool,
        auth: Arc::new(auth),
        settings: Arc::new(settings),
        hub,
    })
}

/// The routes of the read side.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/jobs/stream", get(stream::stream))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/usage", get(usage::current))
        .route("/v1/usage/history", get(usage::history))
        .route("/v1/subscription", get(usage::subscription))
        .route("/metrics", get(metrics));
    platform::http::finish(routes, state.pool.clone()).with_state(state)
}

async fn metrics(State(state): State<AppState>) -> String {
    ::metrics::gauge!("runledger_sse_streams").set(state.hub.streams() as f64);
    platform::metrics::render()
}

/// Serves the read side on `listener` until `shutdown`.
///
/// # Errors
/// When serving fails.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
