//! Every request a page makes is paused (CDP `Fetch`), fetched by the worker behind the SSRF
//! guard (resolved, checked and pinned, one hop at a time, so each redirect is checked too),
//! and fulfilled from what came back, cut at a size cap. Chromium itself never connects
//! anywhere. A request refused by the guard, the cap, a non-HTTP scheme or a download is
//! recorded: a page that needed one is not rendered.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use chromiumoxide::{
    Page,
    cdp::browser_protocol::{
        fetch::{EventRequestPaused, FailRequestParams, FulfillRequestParams, HeaderEntry},
        network::{ErrorReason, GetCookiesParams},
    },
    listeners::EventStream,
};
use futures::StreamExt;

use crate::{executors::ExecError, outbound, ssrf::Guard};

/// Request headers the worker sets itself or that must not be forwarded.
const DROP_REQUEST: [&str; 5] = [
    "accept-encoding",
    "connection",
    "content-length",
    "host",
    "proxy-connection",
];
/// Response headers that describe the wire, not the content Chromium receives.
const DROP_RESPONSE: [&str; 5] = [
    "connection",
    "content-encoding",
    "content-length",
    "keep-alive",
    "transfer-encoding",
];

/// How the page's requests are fetched.
#[derive(Clone)]
pub struct Fetcher {
    /// The SSRF guard.
    pub guard: Guard,
    /// The most one response may carry.
    pub max_response: usize,
    /// One request's limit.
    pub timeout: Duration,
    /// Clients by host and checked address: building one (TLS roots) costs more than a
    /// page's small request, and a pinned client is only ever reused for that same pair.
    pub clients: Arc<Mutex<HashMap<(String, SocketAddr), reqwest::Client>>>,
}

/// Cached clients at most; the cache starts over beyond.
const MAX_CLIENTS: usize = 256;

impl Fetcher {
    async fn client(&self, url: &reqwest::Url) -> Result<reqwest::Client, ExecError> {
        let (host, addr) = outbound::checked_addr(&self.guard, url).await?;
        let key = (host, addr);
        if let Some(c) = self.clients.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(c);
        }
        let c = outbound::client_for(&key.0, addr, self.timeout)?;
        if let Ok(mut m) = self.clients.lock() {
            if m.len() >= MAX_CLIENTS {
                m.clear();
            }
            m.insert(key, c.clone());
        }
        Ok(c)
    }
}

/// Requests refused while a page loaded, as reasons.
#[derive(Clone, Default)]
pub struct Refusals(Arc<Mutex<Vec<String>>>);

impl Refusals {
    fn push(&self, reason: String) {
        if let Ok(mut v) = self.0.lock() {
            v.push(reason);
        }
    }

    /// The first refusal, if any.
    pub fn first(&self) -> Option<String> {
        self.0.lock().ok().and_then(|v| v.first().cloned())
    }
}

/// Answers `page`'s paused requests until the page goes; abort the task to stop sooner.
pub fn intercept(
    page: Page,
    mut events: EventStream<EventRequestPaused>,
    fetcher: Fetcher,
    refusals: Refusals,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut running = tokio::task::JoinSet::new();
        while let Some(ev) = events.next().await {
            let (page, fetcher, refusals) = (page.clone(), fetcher.clone(), refusals.clone());
            running.spawn(async move { answer(&page, &ev, &fetcher, &refusals).await });
            while running.try_join_next().is_some() {}
        }
    })
}

/// Why a request was not fulfilled.
enum Refused {
    /// By a rule: recorded, and the page is not rendered.
    Rule(String),
    /// The destination failed (down, slow): the request fails as it would in any browser.
    Network,
}

async fn answer(page: &Page, ev: &EventRequestPaused, fetcher: &Fetcher, refusals: &Refusals) {
    let id = ev.request_id.clone();
    let outcome = fetch(page, ev, fetcher).await;
    let sent = match outcome {
        Ok(fulfill) => page.execute(fulfill).await.map(|_| ()),
        Err(Refused::Rule(reason)) => {
            refusals.push(reason);
            page.execute(FailRequestParams::new(id, ErrorReason::BlockedByClient))
                .await
                .map(|_| ())
        }
        Err(Refused::Network) => page
            .execute(FailRequestParams::new(id, ErrorReason::ConnectionFailed))
            .await
            .map(|_| ()),
    };
    if let Err(e) = sent {
        tracing::debug!(message = "A paused request could not be answered.", error = %e);
    }
}

async fn fetch(
    page: &Page,
    ev: &EventRequestPaused,
    fetcher: &Fetcher,
) -> Result<FulfillRequestParams, Refused> {
    let shown: String = ev.request.url.chars().take(200).collect();
    let url = reqwest::Url::parse(&ev.request.url)
        .map_err(|_| Refused::Rule(format!("{shown}: not a URL")))?;
    let client = fetcher
        .client(&url)
        .await
        .map_err(|e| Refused::Rule(format!("{shown}: {}", e.message)))?;
    let method = reqwest::Method::from_bytes(ev.request.method.as_bytes())
        .map_err(|_| Refused::Rule(format!("{shown}: bad method")))?;
    let mut req = client.request(method, url.clone());
    let mut has_cookie = false;
    if let Some(headers) = ev.request.headers.inner().as_object() {
        for (name, value) in headers {
            let lower = name.to_ascii_lowercase();
            if DROP_REQUEST.contains(&lower.as_str()) {
                continue;
            }
            has_cookie |= lower == "cookie";
            if let Some(v) = value.as_str() {
                req = req.header(name.as_str(), v);
            }
        }
    }
    // The page's own cookies (its context is fresh per job), as the browser would send them.
    if !has_cookie
        && let Ok(c) = page
            .execute(GetCookiesParams {
                urls: Some(vec![ev.request.url.clone()]),
            })
            .await
        && !c.result.cookies.is_empty()
    {
        let line = c
            .result
            .cookies
            .iter()
            .map(|c| format!("{}={}", c.name, c.value))
            .collect::<Vec<_>>()
            .join("; ");
        req = req.header("cookie", line);
    }
    if let Some(entries) = &ev.request.post_data_entries {
        let mut body = Vec::new();
        for e in entries {
            if let Some(b) = &e.bytes
                && let Ok(bytes) = B64.decode(AsRef::<str>::as_ref(b))
            {
                body.extend_from_slice(&bytes);
            }
        }
        req = req.body(body);
    }
    let res = req.send().await.map_err(|_| Refused::Network)?;
    let status = res.status();
    if status.is_redirection()
        && let Some(loc) = res.headers().get(reqwest::header::LOCATION)
    {
        let next = loc.to_str().ok().and_then(|l| url.join(l).ok());
        if !next.is_some_and(|n| matches!(n.scheme(), "http" | "https")) {
            return Err(Refused::Rule(format!(
                "{shown}: redirects outside http and https"
            )));
        }
    }
    let attachment = res
        .headers()
        .get(reqwest::header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("attachment")
        });
    if attachment {
        return Err(Refused::Rule(format!("{shown}: downloads are not allowed")));
    }
    let headers: Vec<HeaderEntry> = res
        .headers()
        .iter()
        .filter(|(n, _)| !DROP_RESPONSE.contains(&n.as_str()))
        .filter_map(|(n, v)| {
            Some(HeaderEntry {
                name: n.as_str().to_owned(),
                value: v.to_str().ok()?.to_owned(),
            })
        })
        .collect();
    let (body, cut) = outbound::capped_body(res, fetcher.max_response)
        .await
        .map_err(|_| Refused::Network)?;
    if cut {
        return Err(Refused::Rule(format!(
            "{shown}: the response is over {} bytes",
            fetcher.max_response
        )));
    }
    let mut fulfill = FulfillRequestParams::new(ev.request_id.clone(), i64::from(status.as_u16()));
    fulfill.response_headers = Some(headers);
    fulfill.body = Some(B64.encode(body).into());
    Ok(fulfill)
}
