//! Debian's Chromium driven over CDP (chromiumoxide): one browser per test, its own profile,
//! closed at the end; a failing check saves a screenshot of every open page first.

use std::{
    panic::AssertUnwindSafe,
    path::PathBuf,
    time::{Duration, Instant},
};

use chromiumoxide::{Browser, BrowserConfig, Page, page::ScreenshotParams};
use futures::{FutureExt, StreamExt};
use serde_json::Value;

pub struct Ui {
    browser: Browser,
    handler: tokio::task::JoinHandle<()>,
    profile: PathBuf,
    name: &'static str,
}

impl Ui {
    /// A headless Chromium for test `name`; it reaches loopback only.
    pub async fn launch(name: &'static str) -> Self {
        let exe =
            std::env::var("RUNLEDGER_CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let profile = std::env::temp_dir().join(format!(
            "runledger-ui-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let config = BrowserConfig::builder()
            .chrome_executable(exe)
            .user_data_dir(&profile)
            .new_headless_mode()
            .no_sandbox()
            .viewport(None)
            .window_size(1280, 900)
            .request_timeout(Duration::from_secs(30))
            .launch_timeout(Duration::from_secs(30))
            // Anything but loopback fails: the dashboard must need no other origin.
            .arg(("host-resolver-rules", "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"))
            .args([
                "no-first-run",
                "disable-gpu",
                "disable-background-networking",
            ])
            .build()
            .unwrap();
        let (browser, mut events) = Browser::launch(config).await.unwrap();
        let handler = tokio::spawn(async move { while let Some(Ok(())) = events.next().await {} });
        Self {
            browser,
            handler,
            profile,
            name,
        }
    }

    /// A new tab at `url`, loaded.
    pub async fn open(&self, url: &str) -> Page {
        let page = self.browser.new_page(url).await.unwrap();
        page.wait_for_navigation().await.unwrap();
        page
    }

    /// Runs `check`; when it panics, screenshots every open page under the test's output
    /// (`<target>/tmp/dashboard/<test>-<n>.png`) before the panic goes on.
    pub async fn check<F: Future<Output = ()>>(&self, check: F) {
        if let Err(panic) = AssertUnwindSafe(check).catch_unwind().await {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
            let _ = std::fs::create_dir_all(&dir);
            for (i, page) in self
                .browser
                .pages()
                .await
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let path = dir.join(format!("{}-{i}.png", self.name));
                let shot = ScreenshotParams::builder().full_page(true).build();
                match page.save_screenshot(shot, &path).await {
                    Ok(_) => eprintln!("screenshot of the failing page: {}", path.display()),
                    Err(e) => eprintln!("no screenshot of page {i}: {e}"),
                }
            }
            std::panic::resume_unwind(panic);
        }
    }

    /// Closes the browser and waits for it to exit.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.browser.close()).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.browser.wait()).await;
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        self.handler.abort();
        // A test that failed before `close`: no Chromium process of this profile stays behind.
        let needle = self.profile.display().to_string();
        let _ = std::process::Command::new("pkill")
            .args(["-KILL", "-f", &needle])
            .status();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The value of the JS expression `js` (a promise is awaited).
pub async fn js(page: &Page, js: &str) -> Value {
    page.evaluate(js)
        .await
        .unwrap_or_else(|e| panic!("{js}: {e}"))
        .into_value::<Value>()
        .unwrap_or(Value::Null)
}

/// Waits up to `secs` for the JS expression `cond` to be true.
/// Waits until the page's live stream is connected.
pub async fn until_live(page: &Page) {
    until(
        page,
        15,
        "document.querySelector('#live').textContent === 'live'",
    )
    .await;
}

/// Waits until the jobs table shows exactly `n` completed rows.
pub async fn until_completed_rows(page: &Page, secs: u64, n: usize) {
    let cond = format!(
        "document.querySelectorAll('#jobs tbody tr[data-status=completed]').length === {n}"
    );
    until(page, secs, &cond).await;
}

pub async fn until(page: &Page, secs: u64, cond: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        // Between two documents the page has no context to evaluate in: not yet.
        let done = page
            .evaluate(cond)
            .await
            .ok()
            .and_then(|r| r.into_value::<Value>().ok());
        if done == Some(Value::Bool(true)) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for `{cond}`");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The text of the element `selector`.
pub async fn text(page: &Page, selector: &str) -> String {
    let sel = serde_json::to_string(selector).unwrap();
    js(
        page,
        &format!("document.querySelector({sel})?.textContent ?? ''"),
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

/// The rows of the jobs table: (id, status), top to bottom.
pub async fn rows(page: &Page) -> Vec<(String, String)> {
    let v = js(
        page,
        "[...document.querySelectorAll('#jobs tbody tr')].map(r => [r.dataset.id, r.dataset.status])",
    )
    .await;
    serde_json::from_value(v).unwrap()
}

/// Records, in the page, when each (job, status) first shows in the jobs table: `window.seen`
/// holds `[id, status, epoch ms]`.
pub async fn record_rows(page: &Page) {
    js(
        page,
        "(() => { window.seen = []; const keys = new Set(); const tbody = document.querySelector('#jobs tbody');
          new MutationObserver(() => { const t = Date.now();
            for (const r of tbody.children) { const k = r.dataset.id + ' ' + r.dataset.status;
              if (!keys.has(k)) { keys.add(k); window.seen.push([r.dataset.id, r.dataset.status, t]); } } })
          .observe(tbody, { subtree: true, childList: true, attributes: true, characterData: true }); return true; })()",
    )
    .await;
}

/// `window.seen` (see [`record_rows`]).
pub async fn seen(page: &Page) -> Vec<(String, String, i64)> {
    serde_json::from_value(js(page, "window.seen").await).unwrap()
}
