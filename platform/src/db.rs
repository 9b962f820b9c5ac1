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
    /// The database lacks migrations this binary needs.
    #[error(
        "the database lacks {0} migration(s) this version needs: run `runledger migrate` first (or start the role with --migrate)"
    )]
    NotMigrated(usize),
}

/// Connects a pool of at most `max` connections.
///
/// # Errors
/// [`DbError::BadUrl`] or [`DbError::Connect`].
pub async fn connect(url: &Secret, max: u32) -> Result<PgPool, DbError> {
    // Nothing waits for ever: a lock held by a stuck session, a runaway statement, or a
    // transaction left open by a dead task (it would also hold back every reader's snapshot).
    let pool = connect_with(
        url,
        max,
        &[
            ("lock_timeout", "10s"),
            ("statement_timeout", "120s"),
            ("idle_in_transaction_session_timeout", "60s"),
        ],
    )
    .await?;
    crate::metrics::watch_pool(&pool);
    Ok(pool)
}

/// Connects for `runledger migrate`: a migration may rewrite a large table, so statements
/// are not cut short; locks still time out.
///
/// # Errors
/// [`DbError::BadUrl`] or [`DbError::Connect`].
pub async fn connect_for_migrations(url: &Secret) -> Result<PgPool, DbError> {
    connect_with(url, 2, &[("lock_timeout", "60s")]).await
}

/// How long a pooled connection may sit idle before it is pinged before use.
const PING_AFTER_IDLE: Duration = Duration::from_secs(10);

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
        // sqlx pings every connection it hands out: a round trip per acquire, several per
        // job. Only a connection idle for a while is pinged; a busy one that the server has
        // since dropped fails its statement, which every caller already handles (a request
        // answers 5xx and is retried with its idempotency key, a follower reads again).
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < PING_AFTER_IDLE {
                    return Ok(true);
                }
                Ok(sqlx::Connection::ping(conn).await.is_ok())
            })
        })
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

/// How many of this binary's migrations the database has not applied. Migrations the
/// database has and this binary does not know are a newer version's (a rolling deployment):
/// they are expected to keep the schema readable by this one.
///
/// # Errors
/// [`DbError::Connect`] when the database cannot be read.
pub async fn pending(pool: &PgPool) -> Result<usize, DbError> {
    let applied: Vec<i64> =
        match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
        {
            Ok(v) => v,
            // No table: never migrated.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => vec![],
            Err(e) => return Err(DbError::Connect(reason(&e))),
        };
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .count())
}

/// At a role's start: applies the migrations when `migrate` (`--migrate`, for small
/// installs), else refuses to run on a database that lacks some (a rolling deployment runs
/// `runledger migrate` once, before the new replicas).
///
/// # Errors
/// [`DbError::NotMigrated`], or the migration's or connection's error.
pub async fn prepare(pool: &PgPool, migrate: bool) -> Result<(), DbError> {
    if migrate {
        return self::migrate(pool).await;
    }
    match pending(pool).await? {
        0 => Ok(()),
        n => Err(DbError::NotMigrated(n)),
    }
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
