//! Test helpers: each test owns a fresh Postgres database, migrated, dropped at the end.

use sqlx::{Connection, PgConnection, PgPool};

use crate::{db, settings::Secret};

/// Where tests create their databases: `RUNLEDGER_TEST_DATABASE_URL`, else a local server.
pub fn admin_url() -> String {
    std::env::var("RUNLEDGER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database created for one test.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    /// A pool on it, already migrated.
    pub pool: PgPool,
    name: String,
}

impl TestDb {
    /// Creates and migrates a new database.
    ///
    /// # Panics
    /// When Postgres is not reachable: the test cannot run.
    #[allow(clippy::expect_used)]
    pub async fn create() -> Self {
        let admin = admin_url();
        let name = format!("rl_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("Postgres for tests (scripts/test starts it)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => admin.clone(),
        };
        let pool = db::connect(&Secret::new(url.clone()), 40)
            .await
            .expect("connect test database");
        db::migrate(&pool).await.expect("migrate test database");
        Self { url, pool, name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async: use a thread with its own small runtime. The pool is not
        // closed (its connections belong to the test's runtime, blocked here); FORCE ends them.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}
