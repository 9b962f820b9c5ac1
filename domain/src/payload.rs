//! The payload of each built-in task type: one type per task, checked when the job is
//! submitted (so a bad payload neither holds a unit nor reaches a worker) and read by the
//! executor. Their JSON Schemas go to `schemas/payloads/` and the OpenAPI document.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{error::ParseError, task::TaskType};

/// The longest `sleep`, in milliseconds.
pub const MAX_SLEEP_MS: u32 = 300_000;
/// The longest URL a task may name, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// The most headers an `http.request` may set.
pub const MAX_HEADERS: usize = 32;
/// The longest request body an `http.request` may send, in characters (so that the whole
/// submission stays within the default 64 KiB body limit).
pub const MAX_REQUEST_BODY: usize = 32 * 1024;
/// An `http.request` timeout's bounds, in milliseconds.
pub const HTTP_TIMEOUT_MS: (u32, u32) = (100, 60_000);
/// An `http.request` timeout when none is given, in milliseconds.
pub const HTTP_DEFAULT_TIMEOUT_MS: u32 = 10_000;
/// The largest browser viewport side, in CSS pixels.
pub const MAX_VIEWPORT: u32 = 4096;
/// The longest agent prompt, in bytes.
pub const MAX_PROMPT: usize = 32 * 1024;
/// The most steps an agent may take.
pub const MAX_AGENT_STEPS: u32 = 32;

/// `noop`: nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Noop {}

/// `sleep`: waits `ms` milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sleep {
    /// How long, 0 to 300000.
    #[schemars(range(max = 300_000))]
    pub ms: u32,
}

/// The methods `http.request` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum HttpMethod {
    #[default]
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl HttpMethod {
    /// The method as sent.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Options => "OPTIONS",
        }
    }
}

/// `http.request`: one outbound call behind the SSRF guard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpRequest {
    /// `GET` when absent.
    #[serde(default)]
    pub method: HttpMethod,
    /// An `http` or `https` URL with a host.
    #[schemars(length(min = 1, max = 2048), regex(pattern = URL_PATTERN))]
    pub url: String,
    /// Header names are RFC 9110 tokens; values are visible ASCII, spaces and tabs.
    #[serde(default)]
    #[schemars(extend(
        "maxProperties" = 32,
        "propertyNames" = {"pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$"},
        "additionalProperties" = {"type": "string", "maxLength": 8192, "pattern": "^[\\t\\x20-\\x7e]*$"}
    ))]
    pub headers: BTreeMap<String, String>,
    /// Sent as is (UTF-8), at most 32768 characters.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub body: Option<String>,
    /// 100 to 60000; 10000 when absent.
    #[serde(default)]
    #[schemars(range(min = 100, max = 60_000))]
    pub timeout_ms: Option<u32>,
}

/// A browser viewport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Viewport {
    /// 1 to 4096.
    #[schemars(range(min = 1, max = 4096))]
    pub width: u32,
    /// 1 to 4096.
    #[schemars(range(min = 1, max = 4096))]
    pub height: u32,
}

/// `browser.screenshot`: a PNG of a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrowserScreenshot {
    /// An `http` or `https` URL with a host.
    #[schemars(length(min = 1, max = 2048), regex(pattern = URL_PATTERN))]
    pub url: String,
    /// The whole page rather than the viewport.
    #[serde(default)]
    pub full_page: bool,
    /// 1280×800 when absent.
    #[serde(default)]
    pub viewport: Option<Viewport>,
}

/// `browser.pdf`: a PDF of a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrowserPdf {
    /// An `http` or `https` URL with a host.
    #[schemars(length(min = 1, max = 2048), regex(pattern = URL_PATTERN))]
    pub url: String,
}

/// `browser.extract`: the text and HTML of the elements a CSS selector matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrowserExtract {
    /// An `http` or `https` URL with a host.
    #[schemars(length(min = 1, max = 2048), regex(pattern = URL_PATTERN))]
    pub url: String,
    /// A CSS selector, 1 to 1024 characters.
    #[schemars(length(min = 1, max = 1024))]
    pub selector: String,
}

/// The tools an agent may be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[allow(missing_docs)]
pub enum AgentTool {
    #[serde(rename = "http.request")]
    HttpRequest,
    #[serde(rename = "memory.search")]
    MemorySearch,
}

/// `agent.run`: an LLM agent with tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentRun {
    /// The user's request, 1 to 32768 characters.
    #[schemars(length(min = 1, max = 32768))]
    pub prompt: String,
    /// A system prompt, at most 32768 characters.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub system: Option<String>,
    /// The tools offered; all when absent.
    #[serde(default)]
    #[schemars(extend("uniqueItems" = true))]
    pub tools: Option<Vec<AgentTool>>,
    /// 1 to 32.
    #[serde(default)]
    #[schemars(range(min = 1, max = 32))]
    pub max_steps: Option<u32>,
}

/// A payload type that checks what its schema cannot say in serde alone.
pub trait Payload: DeserializeOwned + JsonSchema {
    /// The task type it belongs to.
    const TASK: &'static str;
    /// Bounds serde does not enforce.
    ///
    /// # Errors
    /// The first rule broken, as text.
    fn check(&self) -> Result<(), String>;
}

/// The URL syntax every task checks, as its schema states it: printable ASCII (IRIs
/// percent-encoded), `http` or `https`, a host that starts with a letter, a digit or `[`.
/// What the syntax lets through and no URL parser takes fails the attempt, not the submit.
pub const URL_PATTERN: &str = r"^[hH][tT][tT][pP][sS]?://[A-Za-z0-9\[][!-~]*$";

fn check_url(url: &str) -> Result<(), String> {
    if url.is_empty() || url.len() > MAX_URL_LEN {
        return Err(format!("url must be 1 to {MAX_URL_LEN} characters long"));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err("url must be an http or https URL".to_owned());
    };
    if !rest
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'[')
    {
        return Err("url must name a host".to_owned());
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "url must be printable ASCII without spaces (percent-encode the rest)".to_owned(),
        );
    }
    Ok(())
}

/// Lengths as JSON Schema counts them: in characters.
fn chars(s: &str) -> usize {
    s.chars().count()
}

impl Payload for Noop {
    const TASK: &'static str = "noop";
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Payload for Sleep {
    const TASK: &'static str = "sleep";
    fn check(&self) -> Result<(), String> {
        if self.ms > MAX_SLEEP_MS {
            return Err(format!("ms must be at most {MAX_SLEEP_MS}"));
        }
        Ok(())
    }
}

/// Whether `name` is an RFC 9110 token of at most 128 bytes.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Payload for HttpRequest {
    const TASK: &'static str = "http.request";
    fn check(&self) -> Result<(), String> {
        check_url(&self.url)?;
        if self.headers.len() > MAX_HEADERS {
            return Err(format!("at most {MAX_HEADERS} headers"));
        }
        for (name, value) in &self.headers {
            if !is_header_name(name) {
                return Err(format!("`{name}` is not a valid header name"));
            }
            if value.len() > 8192
                || value
                    .bytes()
                    .any(|b| b != b'\t' && !(0x20..0x7f).contains(&b))
            {
                return Err(format!(
                    "the value of header `{name}` must be at most 8192 bytes of visible ASCII"
                ));
            }
        }
        if self
            .body
            .as_ref()
            .is_some_and(|b| chars(b) > MAX_REQUEST_BODY)
        {
            return Err(format!(
                "body must be at most {MAX_REQUEST_BODY} characters"
            ));
        }
        let (lo, hi) = HTTP_TIMEOUT_MS;
        if self.timeout_ms.is_some_and(|t| !(lo..=hi).contains(&t)) {
            return Err(format!("timeout_ms must be between {lo} and {hi}"));
        }
        Ok(())
    }
}

fn check_viewport(v: Option<Viewport>) -> Result<(), String> {
    match v {
        Some(v)
            if !(1..=MAX_VIEWPORT).contains(&v.width)
                || !(1..=MAX_VIEWPORT).contains(&v.height) =>
        {
            Err(format!(
                "viewport sides must be between 1 and {MAX_VIEWPORT}"
            ))
        }
        _ => Ok(()),
    }
}

impl Payload for BrowserScreenshot {
    const TASK: &'static str = "browser.screenshot";
    fn check(&self) -> Result<(), String> {
        check_url(&self.url)?;
        check_viewport(self.viewport)
    }
}

impl Payload for BrowserPdf {
    const TASK: &'static str = "browser.pdf";
    fn check(&self) -> Result<(), String> {
        check_url(&self.url)
    }
}

impl Payload for BrowserExtract {
    const TASK: &'static str = "browser.extract";
    fn check(&self) -> Result<(), String> {
        check_url(&self.url)?;
        if self.selector.is_empty() || chars(&self.selector) > 1024 {
            return Err("selector must be 1 to 1024 characters long".to_owned());
        }
        Ok(())
    }
}

impl Payload for AgentRun {
    const TASK: &'static str = "agent.run";
    fn check(&self) -> Result<(), String> {
        if self.prompt.is_empty() || chars(&self.prompt) > MAX_PROMPT {
            return Err(format!("prompt must be 1 to {MAX_PROMPT} characters long"));
        }
        if self.system.as_ref().is_some_and(|s| chars(s) > MAX_PROMPT) {
            return Err(format!(
                "system must be at most {MAX_PROMPT} characters long"
            ));
        }
        if let Some(tools) = &self.tools {
            let mut seen = tools.clone();
            seen.sort_by_key(|t| *t as u8);
            seen.dedup();
            if seen.len() != tools.len() {
                return Err("tools must not repeat".to_owned());
            }
        }
        if self
            .max_steps
            .is_some_and(|s| !(1..=MAX_AGENT_STEPS).contains(&s))
        {
            return Err(format!("max_steps must be between 1 and {MAX_AGENT_STEPS}"));
        }
        Ok(())
    }
}

/// Turns numbers such as `3.0` into `3` throughout `v`: JSON Schema counts them as integers,
/// serde's integer types would refuse them. Whether it changed anything.
pub fn integral_numbers(v: &mut Value) -> bool {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                // Exact below 2^53; larger floats stay floats and are refused where an
                // integer is wanted.
                #[allow(clippy::cast_possible_truncation)]
                let i = f as i64;
                *v = Value::from(i);
                return true;
            }
            false
        }
        Value::Array(items) => items.iter_mut().fold(false, |c, i| integral_numbers(i) | c),
        Value::Object(map) => map.values_mut().fold(false, |c, i| integral_numbers(i) | c),
        _ => false,
    }
}

/// Reads and checks a built-in task's payload.
///
/// # Errors
/// [`ParseError::Payload`] with the reason.
pub fn read<P: Payload>(payload: &Value) -> Result<P, ParseError> {
    let refuse = |reason: String| ParseError::Payload {
        task_type: P::TASK.to_owned(),
        reason,
    };
    let p: P = match P::deserialize(payload) {
        Ok(p) => p,
        // Only a payload that failed is copied to read `3.0` as an integer.
        Err(first) => {
            let mut normalized = payload.clone();
            if !integral_numbers(&mut normalized) {
                return Err(refuse(first.to_string()));
            }
            P::deserialize(normalized).map_err(|e| refuse(e.to_string()))?
        }
    };
    p.check().map_err(refuse)?;
    Ok(p)
}

/// Checks `payload` against `task_type`'s rules. A task type configured for workers written
/// elsewhere has no schema here: its payload is theirs to check.
///
/// # Errors
/// [`ParseError::Payload`] with the reason.
pub fn validate(task_type: &TaskType, payload: &Value) -> Result<(), ParseError> {
    match task_type.as_str() {
        Noop::TASK => read::<Noop>(payload).map(drop),
        Sleep::TASK => read::<Sleep>(payload).map(drop),
        HttpRequest::TASK => read::<HttpRequest>(payload).map(drop),
        BrowserScreenshot::TASK => read::<BrowserScreenshot>(payload).map(drop),
        BrowserPdf::TASK => read::<BrowserPdf>(payload).map(drop),
        BrowserExtract::TASK => read::<BrowserExtract>(payload).map(drop),
        AgentRun::TASK => read::<AgentRun>(payload).map(drop),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(task: &str, payload: Value) -> Result<(), String> {
        validate(&TaskType::parse(task).unwrap(), &payload).map_err(|e| e.to_string())
    }

    #[test]
    fn the_payloads_the_outside_test_found_are_refused() {
        assert!(check("sleep", json!({"ms": 10})).is_ok());
        assert!(check("sleep", json!({"ms": 300_000})).is_ok());
        assert!(
            check("sleep", json!({"ms": 94.0})).is_ok(),
            "3.0 is an integer"
        );
        for bad in [
            json!({"ms": -1}),
            json!({"ms": 300_001}),
            json!({"ms": 10, "extra": 1}),
            json!({}),
            json!("10"),
            json!({"ms": 1.5}),
            json!({"ms": 1e300}),
        ] {
            let e = check("sleep", bad.clone()).unwrap_err();
            assert!(e.starts_with("payload for sleep"), "{bad}: {e}");
        }
    }

    #[test]
    fn noop_takes_an_empty_object_only() {
        assert!(check("noop", json!({})).is_ok());
        assert!(check("noop", json!({"x": 1})).is_err());
        assert!(check("noop", json!(null)).is_err());
    }

    #[test]
    fn http_requests_are_checked_before_a_worker_sees_them() {
        assert!(check("http.request", json!({"url": "https://example.com/a?b"})).is_ok());
        assert!(
            check(
                "http.request",
                json!({"method": "POST", "url": "http://example.com", "headers": {"X-A": "b"},
                       "body": "x", "timeout_ms": 100})
            )
            .is_ok()
        );
        for bad in [
            json!({"url": "ftp://example.com"}),
            json!({"url": "file:///etc/passwd"}),
            json!({"url": "http://"}),
            json!({"url": "http:// example.com"}),
            json!({"url": "http://\u{e6}.example"}),
            json!({"url": "http://a.example/\u{18}"}),
            json!({"url": "https://example.com", "method": "TRACE"}),
            json!({"url": "https://example.com", "headers": {"bad name": "x"}}),
            json!({"url": "https://example.com", "headers": {"X-A": "a\r\nb"}}),
            json!({"url": "https://example.com", "timeout_ms": 99}),
            json!({"url": "https://example.com", "timeout_ms": 60_001}),
            json!({"url": "https://example.com", "body": "x".repeat(MAX_REQUEST_BODY + 1)}),
            json!({"url": format!("https://example.com/{}", "a".repeat(MAX_URL_LEN))}),
        ] {
            assert!(check("http.request", bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn browser_and_agent_payloads_have_bounds() {
        assert!(
            check(
                "browser.screenshot",
                json!({"url": "https://a.example", "viewport": {"width": 800, "height": 600}})
            )
            .is_ok()
        );
        assert!(
            check(
                "browser.screenshot",
                json!({"url": "https://a.example", "viewport": {"width": 0, "height": 600}})
            )
            .is_err()
        );
        assert!(check("browser.extract", json!({"url": "https://a.example"})).is_err());
        assert!(check("browser.pdf", json!({"url": "https://a.example"})).is_ok());
        assert!(check("agent.run", json!({"prompt": "hi", "max_steps": 3})).is_ok());
        assert!(check("agent.run", json!({"prompt": ""})).is_err());
        assert!(check("agent.run", json!({"prompt": "x", "max_steps": 33})).is_err());
        assert!(
            check(
                "agent.run",
                json!({"prompt": "x", "tools": ["http.request", "http.request"]})
            )
            .is_err()
        );
        assert!(check("agent.run", json!({"prompt": "x", "tools": ["shell"]})).is_err());
    }

    #[test]
    fn configured_task_types_keep_their_own_payloads() {
        assert!(check("image.resize", json!({"anything": [1, 2]})).is_ok());
    }
}
