//! One outbound HTTP hop behind the SSRF guard, shared by `http.request` and the browser:
//! the host is resolved and checked here and the connection pinned to that address (no
//! proxy, no automatic redirect), and a body is read only up to a cap.

use std::{net::SocketAddr, time::Duration};

use crate::{executors::ExecError, ssrf::Guard};

/// A client for one request to `url`, pinned to the address the guard just checked.
///
/// # Errors
/// Fatal for a URL that is not http(s) with a host or whose address is forbidden.
pub async fn pinned_client(
    guard: &Guard,
    url: &reqwest::Url,
    timeout: Duration,
) -> Result<reqwest::Client, ExecError> {
    let (host, addr) = checked_addr(guard, url).await?;
    client_for(&host, addr, timeout)
}

/// `url`'s host and the address to reach it at, checked by the guard.
///
/// # Errors
/// Fatal for a URL that is not http(s) with a host or whose address is forbidden.
pub async fn checked_addr(
    guard: &Guard,
    url: &reqwest::Url,
) -> Result<(String, SocketAddr), ExecError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ExecError::fatal("only http and https URLs are allowed"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| ExecError::fatal("url has no host"))?
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let addr = guard
        .resolve(&host, port)
        .await
        .map_err(|e| ExecError::fatal(e.to_string()))?;
    Ok((host, addr))
}

/// A client that reaches `host` only at `addr` (no proxy, no automatic redirect).
///
/// # Errors
/// Retryable when the client cannot be built.
pub fn client_for(
    host: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<reqwest::Client, ExecError> {
    platform::http_client()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(host, addr)
        .timeout(timeout)
        .build()
        .map_err(|e| ExecError::retryable(e.to_string()))
}

/// Reads at most `cap` bytes, then stops: a huge answer is never held whole. `true` when
/// the body was cut.
///
/// # Errors
/// Retryable when the connection fails while reading.
pub async fn capped_body(
    mut res: reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), ExecError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| ExecError::retryable(format!("reading the answer failed: {e}")))?
    {
        let room = cap - bytes.len();
        if chunk.len() >= room {
            bytes.extend_from_slice(&chunk[..room]);
            // Exactly at the cap: the length header says whether more was coming; without
            // one, reading on could wait for the whole timeout, so it counts as cut.
            let more = chunk.len() > room || res.content_length().is_none_or(|n| n > cap as u64);
            return Ok((bytes, more));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, false))
}
