//! `noop`, `sleep` {ms}, and `http.request` {method, url, headers, body, timeout_ms} behind
//! the SSRF guard, following redirects by hand so each hop is checked.

use std::time::Duration;

use domain::{
    envelope::JobEnvelope,
    payload::{self, HttpRequest, MAX_SLEEP_MS, Payload, Sleep},
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{ExecError, Executor};
use crate::{outbound, ssrf::Guard};

const MAX_REDIRECTS: usize = 5;
/// The most of a response body kept; reading stops there.
const MAX_BODY: usize = 64 * 1024;

/// Headers that carry the caller's credentials: never sent on to another origin.
const CREDENTIALS: [&str; 4] = ["authorization", "cookie", "cookie2", "proxy-authorization"];

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

/// The submit side checked it already; an envelope from elsewhere is checked again.
fn read<P: Payload>(env: &JobEnvelope) -> Result<P, ExecError> {
    payload::read(&env.payload).map_err(|e| ExecError::fatal(e.to_string()))
}

impl Executor for Generic {
    fn handles(&self, task_type: &str) -> bool {
        matches!(task_type, "noop" | "sleep" | "http.request")
    }

    fn timeout(&self, task_type: &str) -> Duration {
        match task_type {
            "sleep" => Duration::from_millis(u64::from(MAX_SLEEP_MS) + 1_000),
            _ => Duration::from_secs(60),
        }
    }

    async fn run(&self, env: &JobEnvelope, cancel: &CancellationToken) -> Result<Value, ExecError> {
        match env.task_type.as_str() {
            "noop" => Ok(json!({})),
            "sleep" => {
                let p: Sleep = read(env)?;
                tokio::select! {
                    () = cancel.cancelled() => Err(ExecError::fatal("canceled")),
                    () = tokio::time::sleep(Duration::from_millis(u64::from(p.ms))) => Ok(json!({"slept_ms": p.ms})),
                }
            }
            "http.request" => {
                let p: HttpRequest = read(env)?;
                tokio::select! {
                    () = cancel.cancelled() => Err(ExecError::fatal("canceled")),
                    r = self.http(p) => r,
                }
            }
            other => Err(ExecError::fatal(format!("no executor for {other}"))),
        }
    }
}

/// The request's headers; a name or value that is not valid HTTP is the payload's fault.
fn headers(p: &HttpRequest) -> Result<HeaderMap, ExecError> {
    let mut out = HeaderMap::new();
    for (k, v) in &p.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ExecError::fatal(format!("`{k}` is not a valid header name")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| ExecError::fatal(format!("the value of header `{k}` is not valid")))?;
        out.append(name, value);
    }
    Ok(out)
}

fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

impl Generic {
    pub(crate) async fn http(&self, p: HttpRequest) -> Result<Value, ExecError> {
        let (lo, hi) = payload::HTTP_TIMEOUT_MS;
        let timeout_ms = p
            .timeout_ms
            .unwrap_or(payload::HTTP_DEFAULT_TIMEOUT_MS)
            .clamp(lo, hi);
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        let mut headers = headers(&p)?;
        let mut url = reqwest::Url::parse(&p.url).map_err(|_| ExecError::fatal("bad url"))?;
        let mut method = reqwest::Method::from_bytes(p.method.as_str().as_bytes())
            .map_err(|_| ExecError::fatal("bad method"))?;
        let mut body = p.body;
        for _ in 0..=MAX_REDIRECTS {
            let client = outbound::pinned_client(&self.guard, &url, timeout).await?;
            let mut req = client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
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
                let next = url
                    .join(location)
                    .map_err(|_| ExecError::fatal("bad redirect"))?;
                if !same_origin(&url, &next) {
                    for name in CREDENTIALS {
                        headers.remove(name);
                    }
                }
                url = next;
                if status == reqwest::StatusCode::SEE_OTHER
                    || (matches!(status.as_u16(), 301 | 302) && method == reqwest::Method::POST)
                {
                    method = reqwest::Method::GET;
                    body = None;
                }
                continue;
            }
            let (bytes, truncated) = outbound::capped_body(res, MAX_BODY).await?;
            let out = json!({
                "status": status.as_u16(),
                "body": String::from_utf8_lossy(&bytes),
                "truncated": truncated,
            });
            return if status.is_server_error() {
                Err(ExecError::retryable(format!("server answered {status}")))
            } else {
                Ok(out)
            };
        }
        Err(ExecError::fatal("too many redirects"))
    }
}
