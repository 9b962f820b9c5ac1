//! A warm pool of Chromium processes. Each slot holds one browser; a browser whose CDP
//! connection ends (a crash) or that stops answering (a hang) is killed and replaced, and the
//! jobs it held fail as retryable.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chromiumoxide::{Browser, BrowserConfig};
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// How long a live browser may take to answer a ping before it is presumed hung.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// One running Chromium.
pub struct Instance {
    /// The CDP client.
    pub browser: Browser,
    pid: Option<u32>,
    /// Fires when the CDP connection ended or the browser was found hung.
    pub dead: CancellationToken,
    handler: tokio::task::JoinHandle<()>,
    profile: PathBuf,
}

impl Instance {
    /// Kills the process now (the `Browser` also kills it when the last job lets go).
    pub async fn kill(&self) {
        self.dead.cancel();
        if let Some(pid) = self.pid {
            let _ = tokio::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .await;
        }
    }

    /// Whether it answers a CDP call in time.
    pub async fn responsive(&self) -> bool {
        !self.dead.is_cancelled()
            && matches!(
                tokio::time::timeout(PING_TIMEOUT, self.browser.version()).await,
                Ok(Ok(_))
            )
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.handler.abort();
        // The process is killed with the `Browser`; its profile goes with it.
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// How browsers are launched.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// The Chromium binary.
    pub executable: PathBuf,
    /// A directory of this pool's own: each browser gets a profile under it.
    pub profiles: PathBuf,
}

/// The pool.
pub struct Pool {
    cfg: LaunchConfig,
    slots: Vec<Mutex<Option<Arc<Instance>>>>,
    next: AtomicUsize,
}

/// Why no browser could be had.
#[derive(Debug, thiserror::Error)]
#[error("cannot start Chromium at {path}: {reason}")]
pub struct LaunchError {
    path: String,
    reason: String,
}

impl Pool {
    /// A pool of `size` browsers, launched on first use or by [`Pool::warm`].
    pub fn new(cfg: LaunchConfig, size: usize) -> Self {
        Self {
            cfg,
            slots: (0..size.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A live browser, round-robin over the slots; a dead one is replaced first.
    ///
    /// # Errors
    /// When Chromium cannot be started.
    pub async fn get(&self) -> Result<Arc<Instance>, LaunchError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slot(i).await
    }

    async fn slot(&self, i: usize) -> Result<Arc<Instance>, LaunchError> {
        let mut slot = self.slots[i].lock().await;
        if let Some(inst) = slot.as_ref().filter(|b| !b.dead.is_cancelled()) {
            return Ok(inst.clone());
        }
        if let Some(old) = slot.take() {
            old.kill().await;
        }
        let inst = Arc::new(self.launch(i).await?);
        *slot = Some(inst.clone());
        metrics::counter!("runledger_browser_launches_total").increment(1);
        Ok(inst)
    }

    /// Launches every slot, then keeps them: every `every`, a dead browser is replaced and
    /// one that does not answer is killed and replaced. Ends with `shutdown`.
    pub async fn keep_warm(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        loop {
            for i in 0..self.slots.len() {
                let current = self.slots[i].lock().await.clone();
                if let Some(inst) = current
                    && !inst.dead.is_cancelled()
                    && !inst.responsive().await
                {
                    tracing::warn!(message = "A browser stopped answering; replacing it.");
                    inst.kill().await;
                }
                if let Err(e) = self.slot(i).await {
                    tracing::error!(message = "Browser pool cannot launch Chromium.", error = %e);
                }
            }
            let live = self.live().await;
            metrics::gauge!("runledger_browser_pool_live").set(live as f64);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
        for s in &self.slots {
            if let Some(inst) = s.lock().await.take() {
                inst.kill().await;
            }
        }
    }

    /// How many slots hold a live browser.
    pub async fn live(&self) -> usize {
        let mut n = 0;
        for s in &self.slots {
            if s.lock()
                .await
                .as_ref()
                .is_some_and(|b| !b.dead.is_cancelled())
            {
                n += 1;
            }
        }
        n
    }

    async fn launch(&self, i: usize) -> Result<Instance, LaunchError> {
        let err = |reason: String| LaunchError {
            path: self.cfg.executable.display().to_string(),
            reason,
        };
        let profile = self
            .cfg
            .profiles
            .join(format!("{i}-{}", uuid::Uuid::new_v4().simple()));
        let config = BrowserConfig::builder()
            .chrome_executable(&self.cfg.executable)
            .user_data_dir(&profile)
            .new_headless_mode()
            .no_sandbox()
            .viewport(None)
            .request_timeout(Duration::from_secs(20))
            .launch_timeout(Duration::from_secs(20))
            .args(HARDENING)
            .args(SWITCHES)
            .build()
            .map_err(err)?;
        let (mut browser, mut handler) = Browser::launch(config)
            .await
            .map_err(|e| err(e.to_string()))?;
        let pid = browser.get_mut_child().and_then(|c| c.as_mut_inner().id());
        let dead = CancellationToken::new();
        let flag = dead.clone();
        let handler = tokio::spawn(async move {
            // Any error here is the CDP connection failing: the browser is gone.
            while let Some(Ok(())) = handler.next().await {}
            flag.cancel();
        });
        Ok(Instance {
            browser,
            pid,
            dead,
            handler,
            profile,
        })
    }
}

/// Flags beyond chromiumoxide's defaults, as (flag, value). Every request a page makes is
/// fetched by the worker (request interception); anything that escapes interception
/// (WebSockets, a service worker's fetches, WebRTC) goes to a proxy that does not exist,
/// loopback included, so it fails instead of reaching the network unchecked.
const HARDENING: [(&str, &str); 6] = [
    ("proxy-server", "http://127.0.0.1:1"),
    ("proxy-bypass-list", "<-loopback>"),
    ("force-webrtc-ip-handling-policy", "disable_non_proxied_udp"),
    // Frames stay in the page's process, so its interception sees their requests too.
    ("disable-features", "IsolateOrigins"),
    ("disable-features", "site-per-process"),
    ("disable-features", "HttpsUpgrades"),
];

/// Flags without a value.
const SWITCHES: [&str; 4] = [
    "disable-site-isolation-trials",
    "dns-prefetch-disable",
    "no-first-run",
    "disable-gpu",
];
