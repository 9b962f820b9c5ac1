//! runledger's read side: queries over the read models and the per-user SSE stream.

pub mod artifacts;
pub mod audit;
pub mod audit_events;
pub mod dashboard;
pub mod digest;
pub mod jobs;
pub mod state;
pub mod stream;
pub mod usage;
pub mod views;

use std::sync::Arc;

use axum::{Router, extract::State, routing::get};
use eventstore::EventStore;
use platform::{auth::Authenticator, db, notice::NoticeBus, settings::Settings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use state::AppState;
pub use views::{PgViews, ReadModels};

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
    let pool = db::connect(settings.require_database()?, settings.db_max_connections).await?;
    build_on(
        EventStore::new(pool.clone()),
        Arc::new(PgViews(pool)),
        settings,
        bus,
        shutdown,
    )
    .await
}

/// The state over `store` and `views`; the hub follows notices on `bus` until `shutdown`.
///
/// # Errors
/// [`StartError`] when the notice subscription fails.
pub async fn build_on(
    store: EventStore,
    views: Arc<dyn ReadModels>,
    settings: Settings,
    bus: &NoticeBus,
    shutdown: CancellationToken,
) -> Result<AppState, StartError> {
    platform::metrics::handle();
    let auth = Authenticator::from_settings(&settings);
    let hub = stream::Hub::start(bus, shutdown).await?;
    Ok(AppState {
        artifacts: Arc::new(platform::artifacts::DirStore::new(
            settings.artifacts_dir.clone(),
        )),
        views,
        store,
        auth: Arc::new(auth),
        settings: Arc::new(settings),
        hub,
    })
}

/// The routes of the read side, with the operational ones.
pub fn router(state: AppState) -> Router {
    let store = state.store.clone();
    let catalog = state.settings.task_types.clone();
    platform::http::finish(
        routes(state.clone()).merge(
            Router::new()
                .route("/metrics", get(metrics))
                .with_state(state),
        ),
        store,
        &catalog,
    )
}

/// The read side's own routes (`runledger dev` merges them with the write side's).
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/jobs/stream", get(stream::stream))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/artifacts/{name}", get(artifacts::get))
        .route("/v1/usage", get(usage::current))
        .route("/v1/usage/history", get(usage::history))
        .route("/v1/subscription", get(usage::subscription))
        .route("/v1/audit/usage/{user_id}", get(audit::usage))
        .route("/v1/audit/events", get(audit_events::events))
        .route("/v1/audit/digest", get(digest::get))
        .with_state(state)
        .merge(dashboard::routes())
}

/// `/metrics`, with the number of open streams.
pub async fn metrics(State(state): State<AppState>) -> String {
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
