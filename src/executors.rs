//! The executors a worker runs, built from the settings: the generic ones always, the browser
//! for the `browser` namespace.

use std::{path::PathBuf, sync::Arc, time::Duration};

use domain::task::Namespace;
use platform::{artifacts::DirStore, settings::Settings};
use tokio_util::sync::CancellationToken;
use workers::{
    executors::{BrowserExecutor, Executors, Generic},
    ssrf::Guard,
};

/// How often the browser pool checks its browsers.
const POOL_CHECK: Duration = Duration::from_secs(5);

/// The executors for workers of `namespaces`; browser profiles go under `profiles`. A browser
/// pool is launched (and kept warm until `shutdown`) only when `browser` is served.
pub fn build(
    s: &Settings,
    namespaces: &[Namespace],
    profiles: PathBuf,
    shutdown: &CancellationToken,
) -> Executors {
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
    Executors {
        generic: Generic::new(guard),
        browser,
    }
}

/// A directory of this process's own for browser profiles.
pub fn temp_profiles() -> PathBuf {
    std::env::temp_dir().join(format!(
        "runledger-browser-{}",
        uuid::Uuid::new_v4().simple()
    ))
}
