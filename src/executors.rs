//! The executors a worker runs, built from the settings: the generic ones always, the browser
//! for the `browser` namespace, the agent for `default` when a model is configured.

use std::{path::PathBuf, sync::Arc, time::Duration};

use domain::task::Namespace;
use platform::{artifacts::DirStore, settings::Settings};
use tokio_util::sync::CancellationToken;
use workers::{
    executors::{
        AgentExecutor, BrowserExecutor, Executors, Generic,
        agent::memory::{MemMemory, MemoryStore, PgMemory},
    },
    ssrf::Guard,
};

/// How often the browser pool checks its browsers.
const POOL_CHECK: Duration = Duration::from_secs(5);

/// The executors for workers of `namespaces`; browser profiles go under `profiles`. A browser
/// pool is launched (and kept warm until `shutdown`) only when `browser` is served.
///
/// # Errors
/// When `DATABASE_URL` is set for the agent's memory and Postgres cannot be reached, or the
/// model client cannot be built.
pub async fn build(
    s: &Settings,
    namespaces: &[Namespace],
    profiles: PathBuf,
    shutdown: &CancellationToken,
) -> anyhow::Result<Executors> {
    let guard = Guard::new(&s.http_allow);
    let serves_browser = namespaces.contains(&Namespace::browser());
    if serves_browser && !s.browser.chromium_path.exists() {
        tracing::warn!(
            message = "No Chromium: browser jobs will fail. Install chromium or set RUNLEDGER_CHROMIUM_PATH.",
            path = %s.browser.chromium_path.display()
        );
    }
    let browser = (serves_browser && s.browser.chromium_path.exists()).then(|| {
        let b = BrowserExecutor::new(
            &s.browser,
            guard.clone(),
            Arc::new(DirStore::new(s.artifacts_dir.clone())),
            profiles,
        );
        tokio::spawn(b.pool().keep_warm(POOL_CHECK, shutdown.clone()));
        b
    });
    let generic = Generic::new(guard);
    let agent = match &s.llm {
        Some(llm) if namespaces.contains(&Namespace::default_ns()) => {
            let memory: Arc<dyn MemoryStore> = match &s.database_url {
                Some(url) => Arc::new(PgMemory(platform::db::connect(url, 4).await?)),
                None => Arc::new(MemMemory::default()),
            };
            Some(AgentExecutor::new(llm, memory, generic.clone())?)
        }
        _ => None,
    };
    Ok(Executors {
        generic,
        browser,
        agent,
    })
}

/// A directory of this process's own for browser profiles.
pub fn temp_profiles() -> PathBuf {
    std::env::temp_dir().join(format!(
        "runledger-browser-{}",
        uuid::Uuid::new_v4().simple()
    ))
}
