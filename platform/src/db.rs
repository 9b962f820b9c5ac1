//! The Postgres pool, built here rather than with `default_postgress_pool` (which caps at 10
//! connections and panics), and the migrations under `schemas/migrations/`; the embedded
//! SQLite database of `runledger dev` and its migrations under `schemas/sqlite/`.

use std::{str::FromStr, time::Duration};

use sqlx::{
    ConnectOptions, PgPool, SqlitePool,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use crate::settings::Secret;

/// The migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../schemas/migrations");

/// The embedded default's migrations (SQLite).
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../schemas/sqlite");

/// Errors of connecting or migrating; the URL is never part of the message.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL does not parse.
    #[error("DATABASE_URL does not parse as a Postgres URL")]
    BadUrl,
    /// The server could not be reached or refused us (its reason, said once).
    #[error("cannot connect to Postgres: {0}")]
    Connect(String),
    /// The embedded database could not be opened.
    #[error("cannot open the embedded database {path}: {reason}")]
    Embedded {
        /// Its file.
        path: String,
        /// Why, in SQLite's words (once, not repeated down a chain of wrappers).
        reason: String,
    },
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Connects a pool of at most `max` connections.
///
/// # Errors
/// [`DbError::BadUrl`] or [`DbError::Connect`].
pub async fn connect(url: &Secret, max: u32) -> Result<PgPool, DbError> {
    // Nothing waits for ever: a lock held by a stuck session, a runaway statement, or a
    // transaction left open by a dead task (it would also hold back every reader's snapshot).
    connect_with(
        url,
        max,
        &[
            ("lock_timeout", "10s"),
            ("statement_timeout", "120s"),
            ("idle_in_transaction_session_timeout", "60s"),
        ],
    )
    .await
}

/// Connects for `runledger migrate`: a migration may rewrite a large table, so statements
/// are not cut short; locks still time out.
///
/// # Errors
/// [`DbError::BadUrl`] or [`DbError::Connect`].
pub async fn connect_for_migrations(url: &Secret) -> Result<PgPool, DbError> {
    connect_with(url, 2, &[("lock_timeout", "60s")]).await
}

async fn connect_with(url: &Secret, max: u32, session: &[(&str, &str)]) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(url.expose())
        .map_err(|_| DbError::BadUrl)?
        .application_name("runledger")
        .options(session.iter().copied());
    // One connection first, for the real reason when it fails (a pool only says it timed out).
    let first = tokio::time::timeout(Duration::from_secs(5), options.connect())
        .await
        .map_err(|_| DbError::Connect("no answer within 5 s".into()))?
        .map_err(|e| DbError::Connect(reason(&e)))?;
    drop(first);
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|e| DbError::Connect(reason(&e)))
}

/// A database error's own message, without the wrappers' repetitions.
fn reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_owned(),
        sqlx::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// Applies every pending migration.
///
/// # Errors
/// [`DbError::Migrate`].
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Opens (creating it when missing) and migrates the embedded database: the file
/// `events.db` in `dir`, or a private in-memory database when `dir` is `None`.
///
/// # Errors
/// [`DbError::Embedded`] or [`DbError::Migrate`].
pub async fn open_embedded(dir: Option<&std::path::Path>) -> Result<SqlitePool, DbError> {
    let (options, max, path) = match dir {
        Some(dir) => {
            let path = dir.join("events.db");
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // With WAL, NORMAL survives a crash of the process; only power loss can
                // take the last commits.
                .synchronous(SqliteSynchronous::Normal);
            (options, 4, path.display().to_string())
        }
        // One connection: every connection to `:memory:` would be a database of its own.
        None => (
            SqliteConnectOptions::from_str("sqlite::memory:").map_err(|e| DbError::Embedded {
                path: ":memory:".into(),
                reason: e.to_string(),
            })?,
            1,
            ":memory:".to_owned(),
        ),
    };
    let options = options.busy_timeout(Duration::from_secs(10));
    let open = |max: u32| {
        SqlitePoolOptions::new()
            .max_connections(max)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
    };
    let fail = |e: sqlx::Error| DbError::Embedded {
        path: path.clone(),
        reason: reason(&e),
    };
    if max == 1 {
        let pool = open(1).await.map_err(fail)?;
        SQLITE_MIGRATOR.run(&pool).await?;
        return Ok(pool);
    }
    // One connection first: turning a new file to WAL and migrating it want the file alone
    // (concurrent connections doing it get "database is locked").
    let first = open(1).await.map_err(fail)?;
    SQLITE_MIGRATOR.run(&first).await?;
    first.close().await;
    open(max).await.map_err(fail)
}
