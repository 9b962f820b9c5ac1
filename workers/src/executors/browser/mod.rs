//! `browser.screenshot`, `browser.pdf` and `browser.extract` on Debian's Chromium through
//! chromiumoxide: a warm pool of browsers, a fresh browser context per job (no cookie,
//! storage or cache shared between jobs), every request fetched behind the SSRF guard, and
//! artifacts stored by SHA-256.

mod network;
pub mod pool;

use std::{path::PathBuf, sync::Arc, time::Duration};

use chromiumoxide::{
    Page,
    cdp::browser_protocol::{
        browser::{BrowserContextId, SetDownloadBehaviorBehavior, SetDownloadBehaviorParams},
        emulation::SetDeviceMetricsOverrideParams,
        fetch::{self, EventRequestPaused, RequestPattern, RequestStage},
        page::{CaptureScreenshotFormat, PrintToPdfParams},
        target::{CreateBrowserContextParams, CreateTargetParams},
    },
    error::CdpError,
    page::ScreenshotParams,
};
use domain::{
    envelope::JobEnvelope,
    payload::{self, BrowserExtract, BrowserPdf, BrowserScreenshot, Payload},
};
use platform::{artifacts::ArtifactStore, settings::BrowserSettings};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use self::{
    network::{Fetcher, Refusals},
    pool::{Instance, LaunchConfig, Pool},
};
use super::{ExecError, Executor};
use crate::ssrf::Guard;

/// The viewport when the payload names none.
const DEFAULT_VIEWPORT: (u32, u32) = (1280, 800);
/// A full-page screenshot stops this far down.
const MAX_FULL_PAGE_HEIGHT: u32 = 16_384;
/// The most of an extract's matches kept (text plus HTML, in bytes): a job's result travels
/// in an event.
const MAX_EXTRACT: usize = 32 * 1024;

/// The browser executor.
#[derive(Clone)]
pub struct BrowserExecutor {
    pool: Arc<Pool>,
    fetcher: Fetcher,
    artifacts: Arc<dyn ArtifactStore>,
    timeout: Duration,
}

/// How a job went wrong inside the browser.
enum Failure {
    /// A verdict on the job.
    Job(ExecError),
    /// A CDP call failed: the browser may be gone.
    Cdp(CdpError),
}

impl From<CdpError> for Failure {
    fn from(e: CdpError) -> Self {
        Self::Cdp(e)
    }
}

impl From<ExecError> for Failure {
    fn from(e: ExecError) -> Self {
        Self::Job(e)
    }
}

impl BrowserExecutor {
    /// An executor on a pool of `settings.pool` browsers with profiles under `profiles`.
    pub fn new(
        settings: &BrowserSettings,
        guard: Guard,
        artifacts: Arc<dyn ArtifactStore>,
        profiles: PathBuf,
    ) -> Self {
        let pool = Pool::new(
            LaunchConfig {
                executable: settings.chromium_path.clone(),
                profiles,
            },
            settings.pool,
        );
        Self {
            pool: Arc::new(pool),
            fetcher: Fetcher {
                guard,
                max_response: settings.max_response,
                timeout: settings.timeout,
                clients: Arc::default(),
            },
            artifacts,
            timeout: settings.timeout,
        }
    }

    /// The pool, to keep warm (see [`Pool::keep_warm`]).
    pub fn pool(&self) -> Arc<Pool> {
        self.pool.clone()
    }

    async fn job(&self, env: &JobEnvelope, cancel: &CancellationToken) -> Result<Value, ExecError> {
        let inst = self
            .pool
            .get()
            .await
            .map_err(|e| ExecError::retryable(e.to_string()))?;
        let ctx = match inst
            .browser
            .create_browser_context(CreateBrowserContextParams::default())
            .await
        {
            Ok(c) => c,
            Err(e) => return Err(self.browser_failed(&inst, e).await),
        };
        // Our own deadline, shorter than the runtime's, so the context is always disposed.
        let outcome = tokio::select! {
            r = tokio::time::timeout(self.timeout, self.in_context(&inst, &ctx, env)) => r,
            () = cancel.cancelled() => Ok(Err(Failure::Job(ExecError::fatal("canceled")))),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            inst.browser.dispose_browser_context(ctx),
        )
        .await;
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Failure::Job(e))) => Err(e),
            Ok(Err(Failure::Cdp(e))) => Err(self.browser_failed(&inst, e).await),
            Err(_) => {
                if !inst.responsive().await {
                    tracing::warn!(message = "A browser hung; replacing it.", job_id = %env.job_id);
                    inst.kill().await;
                }
                Err(ExecError::retryable(format!(
                    "the page did not finish within {} s",
                    self.timeout.as_secs()
                )))
            }
        }
    }

    /// A CDP call failed: a browser that is gone or hung is replaced; either way another
    /// attempt may succeed.
    async fn browser_failed(&self, inst: &Instance, e: CdpError) -> ExecError {
        if inst.responsive().await {
            ExecError::retryable(format!("browser error: {e}"))
        } else {
            tracing::warn!(message = "A browser crashed; replacing it.", error = %e);
            inst.kill().await;
            ExecError::retryable("the browser crashed")
        }
    }

    async fn in_context(
        &self,
        inst: &Instance,
        ctx: &BrowserContextId,
        env: &JobEnvelope,
    ) -> Result<Value, Failure> {
        let task = Task::read(env)?;
        let page = inst
            .browser
            .new_page(
                CreateTargetParams::builder()
                    .url("about:blank")
                    .browser_context_id(ctx.clone())
                    .build()
                    .map_err(ExecError::fatal)?,
            )
            .await?;
        inst.browser
            .execute(
                SetDownloadBehaviorParams::builder()
                    .behavior(SetDownloadBehaviorBehavior::Deny)
                    .browser_context_id(ctx.clone())
                    .build()
                    .map_err(ExecError::fatal)?,
            )
            .await?;
        let (w, h) = task.viewport();
        set_viewport(&page, w, h).await?;
        let refusals = Refusals::default();
        let events = page.event_listener::<EventRequestPaused>().await?;
        let interceptor =
            network::intercept(page.clone(), events, self.fetcher.clone(), refusals.clone());
        let out = self.load_and_run(&page, &task, &refusals).await;
        interceptor.abort();
        let _ = page.close().await;
        out
    }

    async fn load_and_run(
        &self,
        page: &Page,
        task: &Task,
        refusals: &Refusals,
    ) -> Result<Value, Failure> {
        page.execute(
            fetch::EnableParams::builder()
                .pattern(
                    RequestPattern::builder()
                        .url_pattern("*")
                        .request_stage(RequestStage::Request)
                        .build(),
                )
                .build(),
        )
        .await?;
        let loaded = page.goto(task.url()).await;
        if let Some(reason) = refusals.first() {
            return Err(ExecError::fatal(format!("refused: {reason}")).into());
        }
        match loaded {
            Ok(_) => {}
            Err(CdpError::ChromeMessage(m)) => {
                return Err(ExecError::retryable(format!("the page did not load: {m}")).into());
            }
            Err(e) => return Err(e.into()),
        }
        let url = page.url().await?.unwrap_or_default();
        let out = match task {
            Task::Screenshot(p) => self.screenshot(page, p).await?,
            Task::Pdf(_) => {
                let pdf = page
                    .pdf(PrintToPdfParams::builder().print_background(true).build())
                    .await?;
                json!({"artifacts": [self.store("page.pdf", "application/pdf", &pdf).await?]})
            }
            Task::Extract(p) => extract(page, &p.selector).await?,
        };
        // A request refused after load (a late script, an image) also spoils the result.
        if let Some(reason) = refusals.first() {
            return Err(ExecError::fatal(format!("refused: {reason}")).into());
        }
        let mut out = out;
        out["url"] = json!(url);
        Ok(out)
    }

    async fn screenshot(&self, page: &Page, p: &BrowserScreenshot) -> Result<Value, Failure> {
        let (w, mut h) = p.viewport.map_or(DEFAULT_VIEWPORT, |v| (v.width, v.height));
        if p.full_page {
            let metrics = page.layout_metrics().await?;
            let content = metrics.css_content_size.height.ceil();
            h = (content as u32).clamp(1, MAX_FULL_PAGE_HEIGHT);
            set_viewport(page, w, h).await?;
        }
        let png = page
            .screenshot(
                ScreenshotParams::builder()
                    .format(CaptureScreenshotFormat::Png)
                    .build(),
            )
            .await?;
        let artifact = self.store("screenshot.png", "image/png", &png).await?;
        Ok(json!({"width": w, "height": h, "artifacts": [artifact]}))
    }

    async fn store(&self, name: &str, content_type: &str, bytes: &[u8]) -> Result<Value, Failure> {
        let sha = self
            .artifacts
            .put(bytes)
            .await
            .map_err(|e| ExecError::retryable(format!("storing the artifact failed: {e}")))?;
        Ok(json!({
            "name": name,
            "content_type": content_type,
            "sha256": sha,
            "bytes": bytes.len(),
        }))
    }
}

/// The page's viewport, in CSS pixels at scale 1.
async fn set_viewport(page: &Page, w: u32, h: u32) -> Result<(), CdpError> {
    page.execute(SetDeviceMetricsOverrideParams::new(
        i64::from(w),
        i64::from(h),
        1.0,
        false,
    ))
    .await
    .map(|_| ())
}

/// One match of an extract.
#[derive(Deserialize)]
struct Match {
    text: String,
    html: String,
}

/// What the page's engine made of the selector.
#[derive(Deserialize)]
struct Found {
    /// `None` when the selector is not valid CSS.
    matches: Option<Vec<Match>>,
}

/// The text and outer HTML of every element `selector` matches, cut at [`MAX_EXTRACT`].
async fn extract(page: &Page, selector: &str) -> Result<Value, Failure> {
    let quoted = serde_json::to_string(selector).map_err(|e| ExecError::fatal(e.to_string()))?;
    // A selector the page's engine rejects comes back as `matches: null`, not as a throw.
    let js = format!(
        "(() => {{ let m; try {{ m = document.querySelectorAll({quoted}); }} catch (_) {{ return {{ matches: null }}; }} \
         return {{ matches: Array.from(m, e => ({{ text: e.innerText ?? e.textContent ?? '', html: e.outerHTML }})) }}; }})()"
    );
    let found: Found = page
        .evaluate(js)
        .await?
        .into_value()
        .map_err(|e| ExecError::retryable(format!("reading the matches failed: {e}")))?;
    let Some(found) = found.matches else {
        return Err(ExecError::fatal("the selector is not valid CSS").into());
    };
    let count = found.len();
    let mut kept = Vec::new();
    let mut size = 0;
    for m in found {
        size += m.text.len() + m.html.len();
        if size > MAX_EXTRACT {
            break;
        }
        kept.push(json!({"text": m.text, "html": m.html}));
    }
    let truncated = kept.len() < count;
    Ok(json!({"count": count, "matches": kept, "truncated": truncated}))
}

/// A browser job's payload.
enum Task {
    Screenshot(BrowserScreenshot),
    Pdf(BrowserPdf),
    Extract(BrowserExtract),
}

impl Task {
    fn read(env: &JobEnvelope) -> Result<Self, ExecError> {
        fn p<P: Payload>(env: &JobEnvelope) -> Result<P, ExecError> {
            payload::read(&env.payload).map_err(|e| ExecError::fatal(e.to_string()))
        }
        match env.task_type.as_str() {
            "browser.screenshot" => Ok(Self::Screenshot(p(env)?)),
            "browser.pdf" => Ok(Self::Pdf(p(env)?)),
            "browser.extract" => Ok(Self::Extract(p(env)?)),
            other => Err(ExecError::fatal(format!("no executor for {other}"))),
        }
    }

    fn url(&self) -> &str {
        match self {
            Self::Screenshot(p) => &p.url,
            Self::Pdf(p) => &p.url,
            Self::Extract(p) => &p.url,
        }
    }

    fn viewport(&self) -> (u32, u32) {
        match self {
            Self::Screenshot(p) => p.viewport.map_or(DEFAULT_VIEWPORT, |v| (v.width, v.height)),
            _ => DEFAULT_VIEWPORT,
        }
    }
}

impl Executor for BrowserExecutor {
    fn handles(&self, task_type: &str) -> bool {
        matches!(
            task_type,
            "browser.screenshot" | "browser.pdf" | "browser.extract"
        )
    }

    fn timeout(&self, _task_type: &str) -> Duration {
        // Ours first, then time to dispose the context and check the browser.
        self.timeout + Duration::from_secs(15)
    }

    async fn run(&self, env: &JobEnvelope, cancel: &CancellationToken) -> Result<Value, ExecError> {
        let started = std::time::Instant::now();
        let r = self.job(env, cancel).await;
        metrics::histogram!("runledger_browser_job_seconds", "task_type" => env.task_type.to_string())
            .record(started.elapsed().as_secs_f64());
        r
    }
}
