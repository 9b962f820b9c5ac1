//! `noop`, `sleep` {ms}, and `http.request` {method, url, headers, body, timeout_ms} behind
//! the SSRF guard, following redirects by hand so each hop is checked.

use std::{collections::BTreeMap, time::Duration};

use domain::envelope::JobEnvelope;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{ExecError, Executor};
use crate::ssrf::Guard;

const MAX_SLEEP_MS: u64 = 300_000;
const MAX_REDIRECTS: usize = 5;
const MAX_BODY: usize = 64 * 1024;

/// The generic executors.
#[derive(Clone, Default)]
pub struct Generic {
    guard: Guard,
}

impl Generic {
    /// With the SSRF guard's allow-list.
    pub fn new(guard: Guard) -> Self {
        Self { guard }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepPayload {
    ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpPayload {
    #[serde(default = "get")]
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn get() -> String {
    "GET".to_owned()
}

fn payload<T: serde::de::DeserializeOwned>(env: &JobEnvelope) -> Result<T, ExecError> {
    serde_json::from_value(env.payload.clone())
        .map_err(|e| ExecError::fatal(format!("bad payload: {e}")))
}

impl Executor for Generic {
    fn handles(&self, task_type: &str) -> bool {
        matches!(task_type, "noop" | "sleep" | "http.request")
    }

    fn timeout(&self, task_type: &str) -> Duration {
        match task_type {
            "sleep" => Duration::from_millis(MAX_SLEEP_MS + 1_000),
            _ => Duration::from_secs(60),
        }
    }

    async fn run(&self, env: &JobEnvelope, cancel: &CancellationToken) -> Result<Value, ExecError> {
        match env.task_type.as_str() {
            "noop" => Ok(json!({})),
            "sleep" => {
                let p: SleepPayload = payload(env)?;
                if p.ms > MAX_SLEEP_MS {
                    return Err(ExecError::fatal(format!(
                        "ms must be at most {MAX_SLEEP_MS}"
                    )));
                }
                tokio::select! {
                    () = cancel.cancelled() => Err(ExecError::fatal("canceled")),
                    () = tokio::time::sleep(Duration::from_millis(p.ms)) => Ok(json!({"slept_ms": p.ms})),
                }
            }
            "http.request" => {
                let p: HttpPayload = payload(env)?;
                tokio::select! {
                    () = cancel.cancelled() => Err(ExecError::fatal("canceled")),
                    r = self.http(p) => r,
                }
            }
            other => Err(ExecError::fatal(format!("no executor for {other}"))),
        }
    }
}

impl Generic {
    async fn http(&self, p: HttpPayload) -> Result<Value, ExecError> {
        let method = reqwest::Method::from_bytes(p.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| ExecError::fatal("bad method"))?;
        let timeout = Duration::from_millis(p.timeout_ms.unwrap_or(10_000).clamp(100, 60_000));
        let mut url = reqwest::Url::parse(&p.url).map_err(|_| ExecError::fatal("bad url"))?;
        let mut method = method;
        let mut body = p.body;
        for _ in 0..=MAX_REDIRECTS {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ExecError::fatal("only http and https URLs are allowed"));
            }
            let host = url
                .host_str()
                .ok_or_else(|| ExecError::fatal("url has no host"))?
                .to_owned();
            let port = url.port_or_known_default().unwrap_or(80);
            let addr = self
                .guard
                .resolve(&host, port)
                .await
                .map_err(|e| ExecError::fatal(e.to_string()))?;
            // Pinned to the address just checked; no automatic redirects.
            let client = platform::http_client()
                .redirect(reqwest::redirect::Policy::none())
                .resolve(&host, addr)
                .timeout(timeout)
                .build()
                .map_err(|e| ExecError::retryable(e.to_string()))?;
            let mut req = client.request(method.clone(), url.clone());
            for (k, v) in &p.headers {
                req = req.header(k, v);
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let res = req.send().await.map_err(|e| {
                if e.is_timeout() {
                    ExecError::retryable("request timed out")
                } else {
                    ExecError::retryable(format!("request failed: {e}"))
                }
            })?;
            let status = res.status();
            if status.is_redirection() {
                let location = res
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| ExecError::fatal("redirect without Location"))?;
                url = url
                    .join(location)
                    .map_err(|_| ExecError::fatal("bad redirect"))?;
                if status == reqwest::StatusCode::SEE_OTHER {
                    method = reqwest::Method::GET;
                    body = None;
                }
                continue;
            }
            let mut bytes = res
                .bytes()
                .await
                .map_err(|e| ExecError::retryable(e.to_string()))?
                .to_vec();
            bytes.truncate(MAX_BODY);
            let out = json!({"status": status.as_u16(), "body": String::from_utf8_lossy(&bytes)});
            return if status.is_server_error() {
                Err(ExecError::retryable(format!("server answered {status}")))
            } else {
                Ok(out)
            };
        }
        Err(ExecError::fatal("too many redirects"))
    }
}
