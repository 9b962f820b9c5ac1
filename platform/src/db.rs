//! The Postgres pool, built here rather than with `default_postgress_pool` (which caps at 10
//! connections and panics), and the migrations under `schemas/migrations/`.

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::settings::Secret;

/// The migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../schemas/migrations");

/// Errors of connecting or migrating; the URL is never part of the message.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL does not parse.
    #[error("DATABASE_URL does not parse as a Postgres URL")]
    BadUrl,
    /// The server could not be reached or refused us.
    #[error("cannot connect to Postgres: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Connects a pool of at most `max` connections.
///
/// # Errors
/// [`DbError::BadUrl`] or [`DbError::Connect`].
pub async fn connect(url: &Secret, max: u32) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(url.expose()).map_err(|_| DbError::BadUrl)?;
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.application_name("runledger"))
        .await
        .map_err(DbError::Connect)
}

/// Applies every pending migration.
///
/// # Errors
/// [`DbError::Migrate`].
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
