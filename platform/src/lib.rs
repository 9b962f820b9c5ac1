//! What every runledger role shares and no business rule: typed settings, telemetry, JWT
//! auth, the Postgres and SQLite pools and migrations (the event store is the `eventstore` crate),
//! the in-memory read-model tables, change notices, the problem+json error type, and graceful
//! shutdown.

pub mod artifacts;
pub mod auth;
pub mod db;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod notice;
pub mod problem;
pub mod settings;
pub mod shutdown;
#[cfg(feature = "testing")]
pub mod stripe_fake;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod views;
pub mod wake;

/// Why a role could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is missing or bad.
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    /// Postgres could not be reached or migrated.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// The change-notice subscription failed.
    #[error("cannot subscribe to change notices: {0}")]
    Bus(#[from] async_nats::SubscribeError),
    /// The listener failed.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

/// A `reqwest` client builder with the process's TLS crypto provider installed: every TLS
/// client of the project starts here, whichever part of it runs first.
pub fn http_client() -> reqwest::ClientBuilder {
    install_crypto();
    // No proxy from HTTP(S)_PROXY: a proxy would resolve names itself and bypass the
    // executors' pinned, checked addresses.
    reqwest::Client::builder().no_proxy()
}

/// Installs rustls's ring provider for the process; TLS clients (JWKS, Stripe) need one.
/// A second call is a no-op.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
