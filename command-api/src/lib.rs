//! runledger's write side: axum handlers that authenticate, validate and execute commands on
//! the event store, and the process manager that settles usage from job outcomes.

pub mod billing;
pub mod body;
pub mod error;
pub mod gates;
pub mod jobs;
pub mod process;
pub mod state;
pub mod submit;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};
use domain::ids::CorrelationId;
use eventstore::{EventStore, Metadata};
use platform::{
    auth::{Authenticator, Principal},
    db,
    settings::Settings,
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
    Ok(build_on(EventStore::new(pool), settings))
}

/// The shared state on `store`.
pub fn build_on(store: EventStore, settings: Settings) -> AppState {
    let auth = Authenticator::from_settings(&settings);
    AppState {
        store,
        auth: Arc::new(auth),
        settings: Arc::new(settings),
    }
}

/// The routes of the write side, with the operational ones.
pub fn router(state: AppState) -> Router {
    let store = state.store.clone();
    let catalog = state.settings.task_types.clone();
    platform::http::finish(
        routes(state).route("/metrics", get(|| async { platform::metrics::render() })),
        store,
        &catalog,
    )
}

/// The write side's own routes (`runledger dev` merges them with the read side's).
pub fn routes(state: AppState) -> Router {
    let limit = state.settings.body_limit;
    Router::new()
        .route("/v1/jobs", post(submit::submit))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route(
            "/v1/worker/jobs/{id}/start",
            post(jobs::worker_report::<jobs::StartBody>),
        )
        .route(
            "/v1/worker/jobs/{id}/heartbeat",
            post(jobs::worker_report::<jobs::HeartbeatBody>),
        )
        .route(
            "/v1/worker/jobs/{id}/complete",
            post(jobs::worker_report::<jobs::CompleteBody>),
        )
        .route(
            "/v1/worker/jobs/{id}/fail",
            post(jobs::worker_report::<jobs::FailBody>),
        )
        .route("/v1/billing/checkout", post(billing::checkout))
        .layer(DefaultBodyLimit::max(limit))
        .merge(
            Router::new()
                .route("/v1/billing/webhook", post(billing::webhook))
                .layer(DefaultBodyLimit::max(billing::WEBHOOK_BODY_LIMIT)),
        )
        .with_state(state)
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
        process::Timeouts::of(&state.settings),
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

/// The metadata every command's events carry: who, the correlation id, and `span`'s
/// `traceparent` when traces are exported (the job's trace goes on from the events).
pub fn metadata(
    correlation_id: &CorrelationId,
    principal: Principal,
    span: &platform::http::RequestSpan,
) -> Metadata {
    // Sized for its four entries: growing past three rehashed on every command.
    let mut m = Metadata::with_capacity(4);
    if let Some(tp) = span.traceparent() {
        m.insert("traceparent".into(), tp);
    }
    m.insert("correlation_id".into(), correlation_id.to_string());
    m.insert("actor".into(), principal.user_id.to_string());
    m.insert(
        "role".into(),
        format!("{:?}", principal.role).to_lowercase(),
    );
    m
}
