//! A fake Stripe API server for tests, speaking Stripe's wire protocol.
//!
//! Requests are form-encoded (`application/x-www-form-urlencoded`, bracket keys such as
//! `metadata[user_id]` or `line_items[0][price]`), answers are JSON objects complete enough for
//! async-stripe `=1.0.0-rc.10` (API version `2026-09-30.endive`) to parse into its typed structs,
//! and errors use Stripe's envelope `{"error":{"type":..,"message":..,"code":..,"param":..}}` with
//! Stripe's status codes. Every request needs `Authorization: Bearer <secret_key()>` (HTTP Basic
//! with the key as user name works too), else 401.
//!
//! Served:
//! - `POST /v1/customers`
//! - `POST /v1/checkout/sessions`
//! - `POST /v1/billing/meter_events`
//! - `GET /v1/billing/meters`, `GET /v1/billing/meters/{id}`
//! - `GET /v1/billing/meters/{id}/event_summaries`
//!
//! Any other path answers Stripe's 404 "Unrecognized request URL".
//!
//! Behaviour copied from Stripe (see each item's docs for details):
//! - `Idempotency-Key` on a POST: the first result that got past parameter validation is saved;
//!   the same key with the same parameters replays it (header `Idempotent-Replayed: true`), with
//!   other parameters or on another endpoint it is a 400 `idempotency_error`.
//! - Meter events: a reused `identifier` is refused with 400 `invalid_request_error`, message
//!   `An event already exists with identifier <id>.`, no `code`, `Stripe-Should-Retry: false`; the
//!   event is recorded once. `timestamp` must be within the past 35 days and at most 5 minutes in
//!   the future. Unlike Stripe, identifiers are remembered for the fake's whole life (Stripe
//!   promises "at least 24 hours") and aggregation is immediate (Stripe's is eventually consistent).
//! - Event summaries need minute-aligned `start_time`/`end_time` (hour/day-aligned with
//!   `value_grouping_window`), and sum the events with `start_time <= timestamp < end_time`.
//!
//! Where the fake is its own judge: unknown top-level parameters get Stripe's 400
//! `parameter_unknown`; a checkout `customer` must have been created by this fake and each line
//! item needs `price`/`price_data`, and `quantity` is optional (prices themselves are not checked); a meter
//! event without `payload[stripe_customer_id]` or a numeric `payload[value]` is refused at once
//! (Stripe accepts it and reports it later, asynchronously); the wording of the misaligned
//! summary-time and future-timestamp errors is the fake's (Stripe's status and `param` only).
//!
//! Webhooks: [`webhook_event`] builds complete signed-ready Event payloads and [`sign`] builds the
//! `Stripe-Signature` header; neither needs a server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::Rng as _;
use rand::distr::Alphanumeric;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

/// The Stripe API version the fake's objects and webhook events are shaped for.
pub const API_VERSION: &str = "2026-09-30.endive";

const PAST_WINDOW_SECS: i64 = 35 * 24 * 60 * 60;
const FUTURE_WINDOW_SECS: i64 = 5 * 60;

/// One endpoint of the fake, for counting calls with [`FakeStripe::calls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/customers`.
    CreateCustomer,
    /// `POST /v1/checkout/sessions`.
    CreateCheckoutSession,
    /// `POST /v1/billing/meter_events`.
    CreateMeterEvent,
    /// `GET /v1/billing/meters`.
    ListMeters,
    /// `GET /v1/billing/meters/{id}`.
    RetrieveMeter,
    /// `GET /v1/billing/meters/{id}/event_summaries`.
    ListMeterEventSummaries,
    /// Any other method and path (answered 404).
    Unknown,
}

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Self::CreateCustomer => "POST /v1/customers",
            Self::CreateCheckoutSession => "POST /v1/checkout/sessions",
            Self::CreateMeterEvent => "POST /v1/billing/meter_events",
            Self::ListMeters => "GET /v1/billing/meters",
            Self::RetrieveMeter => "GET /v1/billing/meters/:id",
            Self::ListMeterEventSummaries => "GET /v1/billing/meters/:id/event_summaries",
            Self::Unknown => "unknown",
        }
    }
}

/// A customer the fake created.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerRecord {
    /// Its id, `cus_...`.
    pub id: String,
    /// `email`, when sent.
    pub email: Option<String>,
    /// `name`, when sent.
    pub name: Option<String>,
    /// The `metadata[...]` sent.
    pub metadata: BTreeMap<String, String>,
    /// When it was created (Unix seconds).
    pub created: i64,
}

/// A checkout session the fake created.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckoutSessionRecord {
    /// Its id, `cs_test_...`.
    pub id: String,
    /// The hosted page URL it answered.
    pub url: String,
    /// The decoded form parameters as sent, in order (e.g. `("line_items[0][price]", "price_x")`).
    pub params: Vec<(String, String)>,
}

impl CheckoutSessionRecord {
    /// The value of one form parameter, e.g. `param("subscription_data[metadata][user_id]")`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A meter event the fake recorded (each identifier at most once).
#[derive(Debug, Clone, PartialEq)]
pub struct MeterEventRecord {
    /// The event's `identifier` (sent, or generated when absent).
    pub identifier: String,
    /// Its `event_name`.
    pub event_name: String,
    /// `payload[stripe_customer_id]`.
    pub customer: String,
    /// `payload[value]`, parsed.
    pub value: f64,
    /// Its `timestamp` (sent, or the time of the call).
    pub timestamp: i64,
}

#[derive(Debug, Clone)]
struct MeterDef {
    id: String,
    event_name: String,
    created: i64,
}

#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    body: String,
    headers: Vec<(String, String)>,
}

impl Reply {
    fn ok(body: &Value) -> Self {
        Self {
            status: 200,
            body: body.to_string(),
            headers: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

#[derive(Debug)]
struct IdempotencyEntry {
    endpoint: Endpoint,
    params: Vec<(String, String)>,
    reply: Reply,
}

/// What a handler did past parameter validation: the reply saved for idempotent replays and the
/// reply sent now (they differ only when a fault is injected after the commit).
struct Executed {
    saved: Reply,
    sent: Reply,
}

impl Executed {
    fn same(reply: Reply) -> Self {
        Self {
            saved: reply.clone(),
            sent: reply,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    secret_key: String,
    meters: Vec<MeterDef>,
    customers: Vec<CustomerRecord>,
    checkout_sessions: Vec<CheckoutSessionRecord>,
    meter_events: Vec<MeterEventRecord>,
    identifiers: HashSet<String>,
    idempotency: HashMap<String, IdempotencyEntry>,
    calls: HashMap<Endpoint, usize>,
    fail_next_meter_events: usize,
    reject_next_meter_events: usize,
    now: Option<i64>,
}

impl Inner {
    fn now(&self) -> i64 {
        self.now.unwrap_or_else(|| chrono::Utc::now().timestamp())
    }
}

type Shared = Arc<Mutex<Inner>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running fake Stripe server, bound to `127.0.0.1` on a free port. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeStripe {
    addr: SocketAddr,
    secret_key: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeStripe {
    /// Starts a fake with one active meter (`sum` of `payload[value]`, customer mapped by
    /// `payload[stripe_customer_id]`) for `meter_event_name`, serving on the current tokio runtime.
    ///
    /// # Panics
    /// When no local port can be bound: the test cannot run.
    pub async fn start(meter_event_name: &str) -> Self {
        Self::start_with_meters(&[meter_event_name]).await
    }

    /// Starts a fake with one active meter per event name (see [`FakeStripe::start`]).
    ///
    /// # Panics
    /// When no local port can be bound: the test cannot run.
    #[allow(clippy::expect_used)]
    pub async fn start_with_meters(meter_event_names: &[&str]) -> Self {
        let now = chrono::Utc::now().timestamp();
        let secret_key = format!("sk_test_{}", random_token(24));
        let meters = meter_event_names
            .iter()
            .map(|name| MeterDef {
                id: format!("mtr_test_{}", random_token(24)),
                event_name: (*name).to_owned(),
                created: now,
            })
            .collect();
        let shared: Shared = Arc::new(Mutex::new(Inner {
            secret_key: secret_key.clone(),
            meters,
            ..Inner::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the fake Stripe server");
        let addr = listener
            .local_addr()
            .expect("local address of the fake Stripe server");
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::warn!(%error, "fake Stripe server stopped");
            }
        });
        Self {
            addr,
            secret_key,
            shared,
            task,
        }
    }

    /// The base URL for the client, with its trailing slash: `http://127.0.0.1:PORT/`
    /// (async-stripe's `ClientBuilder::new(key).url(..)` appends `v1/...` to it).
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The secret key the fake accepts (`sk_test_...`).
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The id (`mtr_test_...`) of the meter for `event_name`, if the fake has one.
    pub fn meter_id(&self, event_name: &str) -> Option<String> {
        lock(&self.shared)
            .meters
            .iter()
            .find(|m| m.event_name == event_name)
            .map(|m| m.id.clone())
    }

    /// Customers created so far, oldest first (idempotent replays create none).
    pub fn customers(&self) -> Vec<CustomerRecord> {
        lock(&self.shared).customers.clone()
    }

    /// How many customers were created.
    pub fn customer_count(&self) -> usize {
        lock(&self.shared).customers.len()
    }

    /// Checkout sessions created so far, oldest first.
    pub fn checkout_sessions(&self) -> Vec<CheckoutSessionRecord> {
        lock(&self.shared).checkout_sessions.clone()
    }

    /// Meter events recorded so far, oldest first; an identifier appears at most once.
    pub fn meter_events(&self) -> Vec<MeterEventRecord> {
        lock(&self.shared).meter_events.clone()
    }

    /// The sum of the recorded meter event values of `customer` (all meters, all times).
    pub fn usage_total(&self, customer: &str) -> f64 {
        lock(&self.shared)
            .meter_events
            .iter()
            .filter(|e| e.customer == customer)
            .map(|e| e.value)
            .sum()
    }

    /// How many requests reached `endpoint`, whatever their answer (401s, errors and replays too).
    pub fn calls(&self, endpoint: Endpoint) -> usize {
        lock(&self.shared)
            .calls
            .get(&endpoint)
            .copied()
            .unwrap_or(0)
    }

    /// The next `n` meter-event calls that pass validation are RECORDED, their success saved for
    /// idempotent replay, and then answered `500 api_error`: Stripe committed, the caller never
    /// heard. A retry under the same `Idempotency-Key` replays the success; a retry under a new key
    /// (or none) with the same `identifier` gets the duplicate-identifier 400.
    pub fn fail_next_meter_events(&self, n: usize) {
        lock(&self.shared).fail_next_meter_events = n;
    }

    /// The next `n` meter-event calls that pass validation are answered `500 api_error` WITHOUT
    /// recording anything (nor saving an idempotent result): a retry may succeed.
    pub fn reject_next_meter_events(&self, n: usize) {
        lock(&self.shared).reject_next_meter_events = n;
    }

    /// Fixes the fake's clock (Unix seconds) used for `created` and the meter-event timestamp
    /// window; `None` returns to the system clock.
    pub fn set_now(&self, now: Option<i64>) {
        lock(&self.shared).now = now;
    }
}

fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut inner = lock(&shared);
        dispatch(&mut inner, &method, &uri, &headers, &body)
    };
    into_response(reply)
}

fn into_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        HeaderName::from_static("request-id"),
        HeaderValue::from_str(&format!("req_{}", random_token(14)))
            .unwrap_or_else(|_| HeaderValue::from_static("req_fake")),
    );
    headers.insert(
        HeaderName::from_static("stripe-version"),
        HeaderValue::from_static(API_VERSION),
    );
    for (name, value) in &reply.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    (status, headers, reply.body).into_response()
}

fn route(method: &Method, path: &str) -> (Endpoint, Option<String>) {
    let path = path.trim_end_matches('/');
    match (method.as_str(), path) {
        ("POST", "/v1/customers") => (Endpoint::CreateCustomer, None),
        ("POST", "/v1/checkout/sessions") => (Endpoint::CreateCheckoutSession, None),
        ("POST", "/v1/billing/meter_events") => (Endpoint::CreateMeterEvent, None),
        ("GET", "/v1/billing/meters") => (Endpoint::ListMeters, None),
        ("GET", _) => {
            let Some(rest) = path.strip_prefix("/v1/billing/meters/") else {
                return (Endpoint::Unknown, None);
            };
            match rest.split_once('/') {
                None if !rest.is_empty() => (Endpoint::RetrieveMeter, Some(rest.to_owned())),
                Some((id, "event_summaries")) if !id.is_empty() => {
                    (Endpoint::ListMeterEventSummaries, Some(id.to_owned()))
                }
                _ => (Endpoint::Unknown, None),
            }
        }
        _ => (Endpoint::Unknown, None),
    }
}

fn dispatch(
    inner: &mut Inner,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    let (endpoint, id) = route(method, uri.path());
    *inner.calls.entry(endpoint).or_insert(0) += 1;

    if let Some(reply) = check_auth(&inner.secret_key, headers) {
        return reply;
    }
    if endpoint == Endpoint::Unknown {
        return stripe_error(
            404,
            "invalid_request_error",
            format!(
                "Unrecognized request URL ({}: {}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.",
                method.as_str(),
                uri.path()
            ),
            None,
            None,
        );
    }

    let params = if *method == Method::POST {
        parse_form(body)
    } else {
        parse_form(uri.query().unwrap_or("").as_bytes())
    };

    let idempotency_key = if *method == Method::POST {
        headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    } else {
        None
    };
    let mut sorted_params = params.clone();
    sorted_params.sort();
    if let Some(key) = &idempotency_key
        && let Some(entry) = inner.idempotency.get(key)
    {
        if entry.endpoint != endpoint {
            return stripe_error(
                400,
                "idempotency_error",
                format!(
                    "Keys for idempotent requests can only be used for the same endpoint they were first used for ('{}' vs '{}'). Try using a key other than '{key}' if you meant to execute a different request.",
                    entry.endpoint.label(),
                    endpoint.label()
                ),
                None,
                None,
            );
        }
        if entry.params != sorted_params {
            return stripe_error(
                400,
                "idempotency_error",
                format!(
                    "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
                ),
                None,
                None,
            );
        }
        return entry
            .reply
            .clone()
            .header("idempotency-key", key.clone())
            .header("idempotent-replayed", "true");
    }

    let id = id.unwrap_or_default();
    let outcome = match endpoint {
        Endpoint::CreateCustomer => create_customer(inner, &params),
        Endpoint::CreateCheckoutSession => create_checkout_session(inner, &params),
        Endpoint::CreateMeterEvent => create_meter_event(inner, &params),
        Endpoint::ListMeters => list_meters(inner, &params),
        Endpoint::RetrieveMeter => retrieve_meter(inner, &id, &params),
        Endpoint::ListMeterEventSummaries => list_event_summaries(inner, &id, &params),
        Endpoint::Unknown => Err(stripe_error(
            404,
            "invalid_request_error",
            "Unrecognized request URL".to_owned(),
            None,
            None,
        )),
    };
    match outcome {
        Err(reply) => reply,
        Ok(executed) => match idempotency_key {
            Some(key) => {
                inner.idempotency.insert(
                    key.clone(),
                    IdempotencyEntry {
                        endpoint,
                        params: sorted_params,
                        reply: executed.saved,
                    },
                );
                executed.sent.header("idempotency-key", key)
            }
            None => executed.sent,
        },
    }
}

fn check_auth(secret_key: &str, headers: &HeaderMap) -> Option<Reply> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(header) = header else {
        return Some(stripe_error(
            401,
            "invalid_request_error",
            "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/.".to_owned(),
            None,
            None,
        ));
    };
    let provided = if let Some(token) = header.strip_prefix("Bearer ") {
        token.trim().to_owned()
    } else if let Some(encoded) = header.strip_prefix("Basic ") {
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .map(|user_pass| user_pass.split(':').next().unwrap_or("").to_owned())
            .unwrap_or_default()
    } else {
        String::new()
    };
    if provided == secret_key {
        return None;
    }
    let shown = match (
        provided.get(..8),
        provided.get(provided.len().saturating_sub(4)..),
    ) {
        (Some(head), Some(tail)) if provided.len() > 12 => format!("{head}****{tail}"),
        _ => "****".to_owned(),
    };
    Some(stripe_error(
        401,
        "invalid_request_error",
        format!("Invalid API Key provided: {shown}"),
        None,
        None,
    ))
}

/// Stripe's error envelope.
fn stripe_error(
    status: u16,
    kind: &str,
    message: String,
    code: Option<&str>,
    param: Option<&str>,
) -> Reply {
    let mut error = Map::new();
    error.insert("type".to_owned(), Value::from(kind));
    error.insert("message".to_owned(), Value::from(message));
    if let Some(code) = code {
        error.insert("code".to_owned(), Value::from(code));
        error.insert(
            "doc_url".to_owned(),
            Value::from(format!(
                "https://stripe.com/docs/error-codes/{}",
                code.replace('_', "-")
            )),
        );
    }
    if let Some(param) = param {
        error.insert("param".to_owned(), Value::from(param));
    }
    error.insert(
        "request_log_url".to_owned(),
        Value::from(format!(
            "https://dashboard.stripe.com/test/logs/req_{}",
            random_token(14)
        )),
    );
    Reply {
        status,
        body: json!({ "error": error }).to_string(),
        headers: Vec::new(),
    }
}

fn missing(param: &str) -> Reply {
    stripe_error(
        400,
        "invalid_request_error",
        format!("Missing required param: {param}."),
        Some("parameter_missing"),
        Some(param),
    )
}

fn api_error() -> Reply {
    stripe_error(
        500,
        "api_error",
        "An unknown error occurred while processing your request (injected by the fake)."
            .to_owned(),
        None,
        None,
    )
}

// ---------------------------------------------------------------------------------------------
// Form decoding

fn parse_form(raw: &[u8]) -> Vec<(String, String)> {
    raw.split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut parts = pair.splitn(2, |b| *b == b'=');
            let key = percent_decode(parts.next().unwrap_or_default());
            let value = percent_decode(parts.next().unwrap_or_default());
            (key, value)
        })
        .collect()
}

fn percent_decode(input: &[u8]) -> String {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < input.len() => {
                let hex = std::str::from_utf8(&input[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn get<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `prefix[k]=v` pairs as a map (only one bracket level below `prefix`).
fn bracket_map(params: &[(String, String)], prefix: &str) -> BTreeMap<String, String> {
    params
        .iter()
        .filter_map(|(k, v)| {
            let inner = k
                .strip_prefix(prefix)?
                .strip_prefix('[')?
                .strip_suffix(']')?;
            (!inner.contains('[') && !inner.contains(']')).then(|| (inner.to_owned(), v.clone()))
        })
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

fn top_level(key: &str) -> &str {
    key.split('[').next().unwrap_or(key)
}

fn reject_unknown(params: &[(String, String)], allowed: &[&str]) -> Result<(), Reply> {
    for (key, _) in params {
        let top = top_level(key);
        if !allowed.contains(&top) {
            return Err(stripe_error(
                400,
                "invalid_request_error",
                format!("Received unknown parameter: {top}"),
                Some("parameter_unknown"),
                Some(top),
            ));
        }
    }
    Ok(())
}

fn parse_int(params: &[(String, String)], key: &str) -> Result<Option<i64>, Reply> {
    match get(params, key) {
        None | Some("") => Ok(None),
        Some(raw) => raw.parse::<i64>().map(Some).map_err(|_| {
            stripe_error(
                400,
                "invalid_request_error",
                format!("Invalid integer: {raw}"),
                Some("parameter_invalid_integer"),
                Some(key),
            )
        }),
    }
}

fn string_map_value(map: &BTreeMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect(),
    )
}

fn opt_str(value: Option<&str>) -> Value {
    value.map_or(Value::Null, Value::from)
}

// ---------------------------------------------------------------------------------------------
// Customers

const CUSTOMER_PARAMS: &[&str] = &[
    "address",
    "balance",
    "business_name",
    "cash_balance",
    "coupon",
    "description",
    "email",
    "expand",
    "individual_name",
    "invoice_prefix",
    "invoice_settings",
    "metadata",
    "name",
    "next_invoice_sequence",
    "payment_method",
    "phone",
    "preferred_locales",
    "promotion_code",
    "shipping",
    "source",
    "tax",
    "tax_exempt",
    "tax_id_data",
    "test_clock",
    "validate",
];

fn create_customer(inner: &mut Inner, params: &[(String, String)]) -> Result<Executed, Reply> {
    reject_unknown(params, CUSTOMER_PARAMS)?;
    let now = inner.now();
    let record = CustomerRecord {
        id: format!("cus_{}", random_token(14)),
        email: get(params, "email")
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        name: get(params, "name")
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        metadata: bracket_map(params, "metadata"),
        created: now,
    };
    let object = merged(vec![
        json!({
            "id": record.id,
            "object": "customer",
            "address": null,
            "balance": 0,
            "created": now,
            "currency": null,
            "customer_account": null,
            "default_source": null,
            "delinquent": false,
            "description": opt_str(get(params, "description")),
            "discount": null,
            "email": record.email,
            "invoice_prefix": random_token(8).to_uppercase(),
            "invoice_settings": {
                "custom_fields": null,
                "default_payment_method": null,
                "footer": null,
                "rendering_options": null
            },
            "livemode": false
        }),
        json!({
            "metadata": string_map_value(&record.metadata),
            "name": record.name,
            "next_invoice_sequence": 1,
            "phone": opt_str(get(params, "phone")),
            "preferred_locales": [],
            "shipping": null,
            "tax_exempt": "none",
            "test_clock": null
        }),
    ]);
    inner.customers.push(record);
    Ok(Executed::same(Reply::ok(&object)))
}

// ---------------------------------------------------------------------------------------------
// Checkout sessions

const CHECKOUT_PARAMS: &[&str] = &[
    "adaptive_pricing",
    "after_expiration",
    "allow_promotion_codes",
    "allowed_payment_method_types",
    "automatic_tax",
    "billing_address_collection",
    "branding_settings",
    "cancel_url",
    "client_reference_id",
    "consent_collection",
    "currency",
    "custom_fields",
    "custom_text",
    "customer",
    "customer_account",
    "customer_creation",
    "customer_email",
    "customer_update",
    "discounts",
    "excluded_payment_method_types",
    "expand",
    "expires_at",
    "integration_identifier",
    "invoice_creation",
    "line_items",
    "locale",
    "managed_payments",
    "metadata",
    "mode",
    "name_collection",
    "optional_items",
    "origin_context",
    "payment_intent_data",
    "payment_method_collection",
    "payment_method_configuration",
    "payment_method_data",
    "payment_method_options",
    "payment_method_types",
    "permissions",
    "phone_number_collection",
    "redirect_on_completion",
    "return_url",
    "saved_payment_method_options",
    "setup_intent_data",
    "shipping_address_collection",
    "shipping_options",
    "submit_type",
    "subscription_data",
    "success_url",
    "tax_id_collection",
    "ui_mode",
    "wallet_options",
];

fn create_checkout_session(
    inner: &mut Inner,
    params: &[(String, String)],
) -> Result<Executed, Reply> {
    reject_unknown(params, CHECKOUT_PARAMS)?;
    let mode = get(params, "mode")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| missing("mode"))?;
    if !matches!(mode, "payment" | "setup" | "subscription") {
        return Err(stripe_error(
            400,
            "invalid_request_error",
            format!(
                "Invalid mode: must be one of payment, setup, or subscription (received {mode})"
            ),
            None,
            Some("mode"),
        ));
    }
    let customer = get(params, "customer").filter(|c| !c.is_empty());
    if let Some(customer) = customer
        && !inner.customers.iter().any(|c| c.id == customer)
    {
        return Err(stripe_error(
            400,
            "invalid_request_error",
            format!("No such customer: '{customer}'"),
            Some("resource_missing"),
            Some("customer"),
        ));
    }
    // Line items: indices present, each with a price (or price_data) and a quantity.
    let mut indices: Vec<usize> = params
        .iter()
        .filter_map(|(k, _)| {
            k.strip_prefix("line_items[")?
                .split(']')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    indices.sort_unstable();
    indices.dedup();
    if mode != "setup" && indices.is_empty() {
        return Err(missing("line_items"));
    }
    for i in &indices {
        let has_price = get(params, &format!("line_items[{i}][price]"))
            .is_some_and(|p| !p.is_empty())
            || params
                .iter()
                .any(|(k, _)| k.starts_with(&format!("line_items[{i}][price_data]")));
        if !has_price {
            return Err(stripe_error(
                400,
                "invalid_request_error",
                format!("You must specify either `price` or `price_data` for `line_items[{i}]`."),
                Some("parameter_missing"),
                Some(&format!("line_items[{i}][price]")),
            ));
        }
        // A metered price takes no quantity; the fake does not know which prices are.
        if get(params, &format!("line_items[{i}][quantity]")).is_some() {
            parse_int(params, &format!("line_items[{i}][quantity]"))?;
        }
    }
    let now = inner.now();
    let id = format!("cs_test_a1{}", random_token(56));
    let url = format!("https://checkout.stripe.com/c/pay/{id}");
    let object = merged(vec![
        json!({
            "id": id,
            "object": "checkout.session",
            "adaptive_pricing": null,
            "after_expiration": null,
            "allow_promotion_codes": null,
            "amount_subtotal": null,
            "amount_total": null,
            "automatic_tax": { "enabled": false, "liability": null, "provider": null, "status": null },
            "billing_address_collection": null,
            "cancel_url": opt_str(get(params, "cancel_url")),
            "client_reference_id": opt_str(get(params, "client_reference_id")),
            "client_secret": null,
            "collected_information": null,
            "consent": null,
            "consent_collection": null
        }),
        json!({
            "created": now,
            "currency": null,
            "currency_conversion": null,
            "custom_fields": [],
            "custom_text": {
                "after_submit": null,
                "shipping_address": null,
                "submit": null,
                "terms_of_service_acceptance": null
            },
            "customer": customer,
            "customer_account": null,
            "customer_creation": if customer.is_some() { Value::Null } else { Value::from("if_required") },
            "customer_details": null,
            "customer_email": opt_str(get(params, "customer_email")),
            "discounts": [],
            "expires_at": parse_int(params, "expires_at")?.unwrap_or(now + 24 * 60 * 60),
            "invoice": null,
            "invoice_creation": null,
            "livemode": false
        }),
        json!({
            "locale": opt_str(get(params, "locale")),
            "metadata": string_map_value(&bracket_map(params, "metadata")),
            "mode": mode,
            "origin_context": null,
            "payment_intent": null,
            "payment_link": null,
            "payment_method_collection": if mode == "payment" { Value::Null } else { Value::from("always") },
            "payment_method_configuration_details": null,
            "payment_method_options": {},
            "payment_method_types": ["card"],
            "payment_status": if mode == "setup" { "no_payment_required" } else { "unpaid" },
            "permissions": null,
            "phone_number_collection": { "enabled": false },
            "recovered_from": null,
            "saved_payment_method_options": null
        }),
        json!({
            "setup_intent": null,
            "shipping_address_collection": null,
            "shipping_cost": null,
            "shipping_options": [],
            "status": "open",
            "submit_type": null,
            "subscription": null,
            "success_url": opt_str(get(params, "success_url")),
            "total_details": null,
            "ui_mode": "hosted_page",
            "url": url,
            "wallet_options": null
        }),
    ]);
    inner.checkout_sessions.push(CheckoutSessionRecord {
        id,
        url,
        params: params.to_vec(),
    });
    Ok(Executed::same(Reply::ok(&object)))
}

// ---------------------------------------------------------------------------------------------
// Meter events

const METER_EVENT_PARAMS: &[&str] = &["event_name", "expand", "identifier", "payload", "timestamp"];

fn create_meter_event(inner: &mut Inner, params: &[(String, String)]) -> Result<Executed, Reply> {
    reject_unknown(params, METER_EVENT_PARAMS)?;
    let event_name = get(params, "event_name")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| missing("event_name"))?;
    let payload = bracket_map(params, "payload");
    if payload.is_empty() {
        return Err(missing("payload"));
    }
    if !inner.meters.iter().any(|m| m.event_name == event_name) {
        return Err(stripe_error(
            400,
            "invalid_request_error",
            format!(
                "Invalid event_name: {event_name}. No active meter found with this event name."
            ),
            None,
            Some("event_name"),
        ));
    }
    // Stripe reports a payload without customer or value asynchronously (meter error reports);
    // the fake refuses it at once so a test sees the mistake.
    let customer = payload
        .get("stripe_customer_id")
        .cloned()
        .ok_or_else(|| missing("payload[stripe_customer_id]"))?;
    let raw_value = payload
        .get("value")
        .cloned()
        .ok_or_else(|| missing("payload[value]"))?;
    let value = raw_value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| {
            stripe_error(
                400,
                "invalid_request_error",
                format!("Invalid payload[value]: {raw_value} is not a number"),
                None,
                Some("payload[value]"),
            )
        })?;
    let now = inner.now();
    let timestamp = parse_int(params, "timestamp")?.unwrap_or(now);
    if timestamp < now - PAST_WINDOW_SECS {
        return Err(stripe_error(
            400,
            "invalid_request_error",
            format!(
                "The event timestamp cannot be more than 35 days in past. Expected a timestamp greater than or equal to {}.",
                now - PAST_WINDOW_SECS
            ),
            None,
            Some("timestamp"),
        ));
    }
    if timestamp > now + FUTURE_WINDOW_SECS {
        return Err(stripe_error(
            400,
            "invalid_request_error",
            format!(
                "The event timestamp cannot be more than 5 minutes in the future. Expected a timestamp less than or equal to {}.",
                now + FUTURE_WINDOW_SECS
            ),
            None,
            Some("timestamp"),
        ));
    }
    let identifier = get(params, "identifier")
        .filter(|v| !v.is_empty())
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);

    if inner.reject_next_meter_events > 0 {
        inner.reject_next_meter_events -= 1;
        return Err(api_error());
    }
    if inner.identifiers.contains(&identifier) {
        let reply = stripe_error(
            400,
            "invalid_request_error",
            format!("An event already exists with identifier {identifier}."),
            None,
            None,
        )
        .header("stripe-should-retry", "false");
        return Ok(Executed::same(reply));
    }
    inner.identifiers.insert(identifier.clone());
    inner.meter_events.push(MeterEventRecord {
        identifier: identifier.clone(),
        event_name: event_name.to_owned(),
        customer,
        value,
        timestamp,
    });
    let object = json!({
        "object": "billing.meter_event",
        "created": now,
        "event_name": event_name,
        "identifier": identifier,
        "livemode": false,
        "payload": string_map_value(&payload),
        "timestamp": timestamp
    });
    let saved = Reply::ok(&object);
    if inner.fail_next_meter_events > 0 {
        inner.fail_next_meter_events -= 1;
        return Ok(Executed {
            saved,
            sent: api_error(),
        });
    }
    Ok(Executed::same(saved))
}

// ---------------------------------------------------------------------------------------------
// Meters and summaries

fn meter_object(meter: &MeterDef) -> Value {
    json!({
        "id": meter.id,
        "object": "billing.meter",
        "created": meter.created,
        "customer_mapping": { "event_payload_key": "stripe_customer_id", "type": "by_id" },
        "default_aggregation": { "formula": "sum" },
        "display_name": meter.event_name,
        "event_name": meter.event_name,
        "event_time_window": null,
        "livemode": false,
        "status": "active",
        "status_transitions": { "deactivated_at": null },
        "updated": meter.created,
        "value_settings": { "event_payload_key": "value" }
    })
}

fn list_value(data: Vec<Value>, has_more: bool, url: &str) -> Value {
    json!({ "object": "list", "data": data, "has_more": has_more, "url": url })
}

fn page_limit(params: &[(String, String)]) -> Result<usize, Reply> {
    match parse_int(params, "limit")? {
        None => Ok(10),
        Some(n) if (1..=100).contains(&n) => Ok(usize::try_from(n).unwrap_or(10)),
        Some(n) => Err(stripe_error(
            400,
            "invalid_request_error",
            format!("Invalid limit: must be between 1 and 100 (received {n})"),
            Some("parameter_invalid_integer"),
            Some("limit"),
        )),
    }
}

/// Applies `starting_after` / `ending_before` / `limit` to items identified by `id_of`.
fn paginate(items: Vec<Value>, params: &[(String, String)]) -> Result<(Vec<Value>, bool), Reply> {
    let limit = page_limit(params)?;
    let id_of = |v: &Value| v.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
    let mut items = items;
    if let Some(after) = get(params, "starting_after").filter(|v| !v.is_empty()) {
        let pos = items
            .iter()
            .position(|v| id_of(v) == after)
            .map_or(items.len(), |p| p + 1);
        items = items.split_off(pos);
    } else if let Some(before) = get(params, "ending_before").filter(|v| !v.is_empty()) {
        let pos = items.iter().position(|v| id_of(v) == before).unwrap_or(0);
        items.truncate(pos);
        let skip = items.len().saturating_sub(limit);
        let has_more = skip > 0;
        return Ok((items.split_off(skip), has_more));
    }
    let has_more = items.len() > limit;
    items.truncate(limit);
    Ok((items, has_more))
}

const LIST_PARAMS: &[&str] = &[
    "ending_before",
    "expand",
    "limit",
    "starting_after",
    "status",
];

fn list_meters(inner: &mut Inner, params: &[(String, String)]) -> Result<Executed, Reply> {
    reject_unknown(params, LIST_PARAMS)?;
    let status = get(params, "status").unwrap_or("");
    let items: Vec<Value> = if status.is_empty() || status == "active" {
        inner.meters.iter().map(meter_object).collect()
    } else {
        Vec::new()
    };
    let (data, has_more) = paginate(items, params)?;
    Ok(Executed::same(Reply::ok(&list_value(
        data,
        has_more,
        "/v1/billing/meters",
    ))))
}

fn no_such_meter(id: &str) -> Reply {
    stripe_error(
        404,
        "invalid_request_error",
        format!("No such billing meter: '{id}'"),
        Some("resource_missing"),
        Some("id"),
    )
}

fn retrieve_meter(
    inner: &mut Inner,
    id: &str,
    params: &[(String, String)],
) -> Result<Executed, Reply> {
    reject_unknown(params, &["expand"])?;
    let meter = inner
        .meters
        .iter()
        .find(|m| m.id == id)
        .ok_or_else(|| no_such_meter(id))?;
    Ok(Executed::same(Reply::ok(&meter_object(meter))))
}

const SUMMARY_PARAMS: &[&str] = &[
    "customer",
    "end_time",
    "ending_before",
    "expand",
    "limit",
    "start_time",
    "starting_after",
    "value_grouping_window",
];

fn list_event_summaries(
    inner: &mut Inner,
    id: &str,
    params: &[(String, String)],
) -> Result<Executed, Reply> {
    reject_unknown(params, SUMMARY_PARAMS)?;
    let meter = inner
        .meters
        .iter()
        .find(|m| m.id == id)
        .cloned()
        .ok_or_else(|| no_such_meter(id))?;
    let customer = get(params, "customer")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| missing("customer"))?;
    let start = parse_int(params, "start_time")?.ok_or_else(|| missing("start_time"))?;
    let end = parse_int(params, "end_time")?.ok_or_else(|| missing("end_time"))?;
    let window = match get(params, "value_grouping_window").unwrap_or("") {
        "" => None,
        "hour" => Some(3600),
        "day" => Some(86_400),
        other => {
            return Err(stripe_error(
                400,
                "invalid_request_error",
                format!(
                    "Invalid value_grouping_window: must be one of day or hour (received {other})"
                ),
                None,
                Some("value_grouping_window"),
            ));
        }
    };
    let align = window.unwrap_or(60);
    let unit = match align {
        3600 => "hour",
        86_400 => "day",
        _ => "minute",
    };
    for (name, value) in [("start_time", start), ("end_time", end)] {
        if value.rem_euclid(align) != 0 {
            return Err(stripe_error(
                400,
                "invalid_request_error",
                format!("{name} must be aligned with {unit} boundaries (received {value})."),
                None,
                Some(name),
            ));
        }
    }
    if start >= end {
        return Err(stripe_error(
            400,
            "invalid_request_error",
            format!("start_time ({start}) must be before end_time ({end})."),
            None,
            Some("start_time"),
        ));
    }
    let sum = |from: i64, to: i64| -> f64 {
        inner
            .meter_events
            .iter()
            .filter(|e| e.event_name == meter.event_name && e.customer == customer)
            .filter(|e| e.timestamp >= from && e.timestamp < to)
            .map(|e| e.value)
            .sum()
    };
    let summary = |from: i64, to: i64| -> Value {
        let digest = Sha256::digest(format!("{}|{customer}|{from}|{to}", meter.id).as_bytes());
        json!({
            "id": format!("mtrusg_test_{}", &hex::encode(digest)[..40]),
            "object": "billing.meter_event_summary",
            "aggregated_value": sum(from, to),
            "end_time": to,
            "livemode": false,
            "meter": meter.id,
            "start_time": from
        })
    };
    let items: Vec<Value> = match window {
        None => vec![summary(start, end)],
        Some(step) => {
            // Newest window first, as Stripe lists them.
            let mut out = Vec::new();
            let mut to = end;
            while to > start {
                out.push(summary(to - step, to));
                to -= step;
            }
            out
        }
    };
    let (data, has_more) = paginate(items, params)?;
    let url = format!("/v1/billing/meters/{}/event_summaries", meter.id);
    Ok(Executed::same(Reply::ok(&list_value(data, has_more, &url))))
}

// ---------------------------------------------------------------------------------------------
// Webhooks

/// Which webhook event [`webhook_event`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookKind {
    /// `checkout.session.completed` (a subscription-mode session, paid).
    CheckoutSessionCompleted,
    /// `customer.subscription.created`.
    CustomerSubscriptionCreated,
    /// `customer.subscription.updated`.
    CustomerSubscriptionUpdated,
    /// `customer.subscription.deleted` (`ended_at`/`canceled_at` set to `created`).
    CustomerSubscriptionDeleted,
    /// `invoice.paid` (invoice status `paid`).
    InvoicePaid,
    /// `invoice.payment_failed` (invoice status `open`, nothing paid).
    InvoicePaymentFailed,
}

impl WebhookKind {
    /// The event's `type`, e.g. `invoice.paid`.
    pub fn event_type(self) -> &'static str {
        match self {
            Self::CheckoutSessionCompleted => "checkout.session.completed",
            Self::CustomerSubscriptionCreated => "customer.subscription.created",
            Self::CustomerSubscriptionUpdated => "customer.subscription.updated",
            Self::CustomerSubscriptionDeleted => "customer.subscription.deleted",
            Self::InvoicePaid => "invoice.paid",
            Self::InvoicePaymentFailed => "invoice.payment_failed",
        }
    }
}

/// What a webhook event is about. Ids of the other objects in it are derived from these
/// (subscription item `si_<suffix of subscription>`, invoice `in_<suffix of event_id>`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookParams {
    /// The event id, `evt_...`.
    pub event_id: String,
    /// The event's `created` (Unix seconds); also the objects' `created`.
    pub created: i64,
    /// The customer id, `cus_...`.
    pub customer: String,
    /// The subscription id, `sub_...`.
    pub subscription: String,
    /// The price id of the single subscription item, `price_...`.
    pub price: String,
    /// The product of that price, `prod_...`.
    pub product: String,
    /// The subscription's `status` (`active`, `past_due`, `canceled`, ...).
    pub status: String,
    /// `metadata.user_id` of the subscription (and of the invoice's subscription details and
    /// `client_reference_id` of the checkout session); `None` leaves metadata empty.
    pub user_id: Option<String>,
    /// The subscription item's `current_period_start` (and the invoice line's `period.start`).
    pub period_start: i64,
    /// The subscription item's `current_period_end` (and the invoice line's `period.end`).
    pub period_end: i64,
    /// Unit amount of the price and amount of the invoice / session, in cents (USD).
    pub amount: i64,
    /// When set, the price is metered on this meter (`mtr_...`) and the item has no quantity.
    pub meter: Option<String>,
}

impl WebhookParams {
    /// Parameters for `customer`'s `subscription` to `price`: a fresh `evt_` id, created now,
    /// status `active`, a 30-day period starting now, 2000 cents, no user id, licensed price.
    pub fn new(customer: &str, subscription: &str, price: &str) -> Self {
        let now = chrono::Utc::now().timestamp();
        Self {
            event_id: format!("evt_{}", random_token(24)),
            created: now,
            customer: customer.to_owned(),
            subscription: subscription.to_owned(),
            price: price.to_owned(),
            product: "prod_fake".to_owned(),
            status: "active".to_owned(),
            user_id: None,
            period_start: now,
            period_end: now + 30 * 24 * 60 * 60,
            amount: 2000,
            meter: None,
        }
    }

    fn metadata(&self) -> Value {
        match &self.user_id {
            Some(user_id) => json!({ "user_id": user_id }),
            None => json!({}),
        }
    }

    fn suffix(id: &str) -> &str {
        id.split_once('_').map_or(id, |(_, rest)| rest)
    }

    fn item_id(&self) -> String {
        format!("si_{}", Self::suffix(&self.subscription))
    }
}

fn price_object(p: &WebhookParams) -> Value {
    let usage_type = if p.meter.is_some() {
        "metered"
    } else {
        "licensed"
    };
    merged(vec![
        json!({
            "id": p.price,
            "object": "price",
            "active": true,
            "billing_scheme": "per_unit",
            "created": p.created,
            "currency": "usd",
            "custom_unit_amount": null,
            "livemode": false,
            "lookup_key": null,
            "metadata": {},
            "nickname": null,
            "product": p.product,
            "recurring": {
                "interval": "month",
                "interval_count": 1,
                "meter": p.meter,
                "trial_period_days": null,
                "usage_type": usage_type
            },
            "tax_behavior": "unspecified",
            "tiers_mode": null
        }),
        json!({
            "transform_quantity": null,
            "type": "recurring",
            "unit_amount": p.amount,
            "unit_amount_decimal": p.amount.to_string()
        }),
    ])
}

fn plan_object(p: &WebhookParams) -> Value {
    let usage_type = if p.meter.is_some() {
        "metered"
    } else {
        "licensed"
    };
    merged(vec![
        json!({
            "id": p.price,
            "object": "plan",
            "active": true,
            "amount": p.amount,
            "amount_decimal": p.amount.to_string(),
            "billing_scheme": "per_unit",
            "created": p.created,
            "currency": "usd",
            "interval": "month",
            "interval_count": 1,
            "livemode": false,
            "metadata": {},
            "meter": p.meter,
            "nickname": null,
            "product": p.product
        }),
        json!({
            "tiers_mode": null,
            "transform_usage": null,
            "trial_period_days": null,
            "usage_type": usage_type
        }),
    ])
}

fn subscription_object(p: &WebhookParams, deleted: bool) -> Value {
    let ended = if deleted {
        Value::from(p.created)
    } else {
        Value::Null
    };
    let quantity = if p.meter.is_some() {
        Value::Null
    } else {
        Value::from(1)
    };
    merged(vec![
        json!({
            "id": p.subscription,
            "object": "subscription",
            "application": null,
            "application_fee_percent": null,
            "automatic_tax": { "disabled_reason": null, "enabled": false, "liability": null },
            "billing_cycle_anchor": p.period_start,
            "billing_cycle_anchor_config": null,
            "billing_mode": {
                "flexible": { "proration_discounts": "included" },
                "type": "flexible",
                "updated_at": p.created
            },
            "billing_schedules": [],
            "billing_thresholds": null,
            "cancel_at": null,
            "cancel_at_period_end": false,
            "canceled_at": ended,
            "cancellation_details": {
                "comment": null,
                "feedback": null,
                "reason": if deleted { Value::from("cancellation_requested") } else { Value::Null }
            },
            "collection_method": "charge_automatically"
        }),
        json!({
            "created": p.created,
            "currency": "usd",
            "customer": p.customer,
            "customer_account": null,
            "days_until_due": null,
            "default_payment_method": null,
            "default_source": null,
            "default_tax_rates": [],
            "description": null,
            "discounts": [],
            "ended_at": ended,
            "invoice_settings": { "account_tax_ids": null, "issuer": { "type": "self" } },
            "items": {
                "object": "list",
                "data": [{
                    "id": p.item_id(),
                    "object": "subscription_item",
                    "billing_thresholds": null,
                    "created": p.created,
                    "current_period_end": p.period_end,
                    "current_period_start": p.period_start,
                    "discounts": [],
                    "metadata": {},
                    "plan": plan_object(p),
                    "price": price_object(p),
                    "quantity": quantity,
                    "subscription": p.subscription,
                    "tax_rates": []
                }],
                "has_more": false,
                "total_count": 1,
                "url": format!("/v1/subscription_items?subscription={}", p.subscription)
            },
            "latest_invoice": format!("in_{}", WebhookParams::suffix(&p.event_id)),
            "livemode": false
        }),
        json!({
            "metadata": p.metadata(),
            "next_pending_invoice_item_invoice": null,
            "on_behalf_of": null,
            "pause_collection": null,
            "payment_settings": {
                "payment_method_options": null,
                "payment_method_types": null,
                "save_default_payment_method": "off"
            },
            "pending_invoice_item_interval": null,
            "pending_setup_intent": null,
            "pending_update": null,
            "schedule": null,
            "start_date": p.period_start,
            "status": p.status,
            "test_clock": null,
            "transfer_data": null,
            "trial_end": null,
            "trial_settings": { "end_behavior": { "missing_payment_method": "create_invoice" } }
        }),
        json!({
            "trial_start": null
        }),
    ])
}

fn invoice_object(p: &WebhookParams, paid: bool) -> Value {
    let id = format!("in_{}", WebhookParams::suffix(&p.event_id));
    let amount_paid = if paid { p.amount } else { 0 };
    let quantity = if p.meter.is_some() {
        Value::Null
    } else {
        Value::from(1)
    };
    merged(vec![
        json!({
            "id": id,
            "object": "invoice",
            "account_country": "US",
            "account_name": "Fake Stripe account",
            "account_tax_ids": null,
            "amount_due": p.amount,
            "amount_overpaid": 0,
            "amount_paid": amount_paid,
            "amount_remaining": p.amount - amount_paid,
            "amount_shipping": 0,
            "application": null,
            "attempt_count": 1,
            "attempted": true,
            "auto_advance": !paid,
            "automatic_tax": {
                "disabled_reason": null,
                "enabled": false,
                "liability": null,
                "provider": null,
                "status": null
            }
        }),
        json!({
            "automatically_finalizes_at": null,
            "billing_reason": "subscription_cycle",
            "collection_method": "charge_automatically",
            "confirmation_secret": null,
            "created": p.created,
            "currency": "usd",
            "custom_fields": null,
            "customer": p.customer,
            "customer_account": null,
            "customer_address": null,
            "customer_email": null,
            "customer_name": null,
            "customer_phone": null,
            "customer_shipping": null,
            "customer_tax_exempt": "none"
        }),
        json!({
            "customer_tax_ids": [],
            "default_payment_method": null,
            "default_source": null,
            "default_tax_rates": [],
            "description": null,
            "discounts": [],
            "due_date": null,
            "effective_at": p.created,
            "ending_balance": 0,
            "footer": null,
            "from_invoice": null,
            "hosted_invoice_url": format!("https://invoice.stripe.com/i/acct_fake/test_{}", WebhookParams::suffix(&id)),
            "invoice_pdf": format!("https://pay.stripe.com/invoice/acct_fake/test_{}/pdf", WebhookParams::suffix(&id)),
            "issuer": { "type": "self" },
            "last_finalization_error": null
        }),
        json!({
            "latest_revision": null,
            "lines": {
                "object": "list",
                "data": [{
                    "id": format!("il_{}", WebhookParams::suffix(&p.event_id)),
                    "object": "line_item",
                    "amount": p.amount,
                    "currency": "usd",
                    "description": "1 × Fake product",
                    "discount_amounts": [],
                    "discountable": true,
                    "discounts": [],
                    "invoice": id,
                    "livemode": false,
                    "metadata": p.metadata(),
                    "parent": {
                        "invoice_item_details": null,
                        "subscription_item_details": {
                            "invoice_item": null,
                            "proration": false,
                            "proration_details": { "credited_items": null },
                            "subscription": p.subscription,
                            "subscription_item": p.item_id()
                        },
                        "type": "subscription_item_details"
                    },
                    "period": { "end": p.period_end, "start": p.period_start },
                    "pretax_credit_amounts": [],
                    "pricing": {
                        "price_details": { "price": p.price, "product": p.product },
                        "type": "price_details",
                        "unit_amount_decimal": p.amount.to_string()
                    },
                    "quantity": quantity,
                    "subtotal": p.amount,
                    "taxes": []
                }],
                "has_more": false,
                "total_count": 1,
                "url": format!("/v1/invoices/{id}/lines")
            },
            "livemode": false,
            "metadata": {},
            "next_payment_attempt": if paid { Value::Null } else { Value::from(p.created + 3 * 24 * 60 * 60) },
            "number": format!("FAKE-{:04}", p.created.rem_euclid(10_000)),
            "on_behalf_of": null,
            "parent": {
                "quote_details": null,
                "subscription_details": {
                    "metadata": p.metadata(),
                    "subscription": p.subscription,
                    "subscription_proration_date": null
                },
                "type": "subscription_details"
            },
            "payment_settings": {
                "default_mandate": null,
                "payment_method_options": null,
                "payment_method_types": null
            },
            "period_end": p.period_start,
            "period_start": p.period_start,
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "receipt_number": null,
            "rendering": null
        }),
        json!({
            "shipping_cost": null,
            "shipping_details": null,
            "starting_balance": 0,
            "statement_descriptor": null,
            "status": if paid { "paid" } else { "open" },
            "status_transitions": {
                "finalized_at": p.created,
                "marked_uncollectible_at": null,
                "paid_at": if paid { Value::from(p.created) } else { Value::Null },
                "voided_at": null
            },
            "subtotal": p.amount,
            "subtotal_excluding_tax": p.amount,
            "test_clock": null,
            "total": p.amount,
            "total_discount_amounts": [],
            "total_excluding_tax": p.amount,
            "total_pretax_credit_amounts": [],
            "total_taxes": [],
            "webhooks_delivered_at": p.created
        }),
    ])
}

fn checkout_session_object(p: &WebhookParams) -> Value {
    merged(vec![
        json!({
            "id": format!("cs_test_a1{}", WebhookParams::suffix(&p.event_id)),
            "object": "checkout.session",
            "adaptive_pricing": null,
            "after_expiration": null,
            "allow_promotion_codes": null,
            "amount_subtotal": p.amount,
            "amount_total": p.amount,
            "automatic_tax": { "enabled": false, "liability": null, "provider": null, "status": null },
            "billing_address_collection": null,
            "cancel_url": "https://example.test/billing/cancel",
            "client_reference_id": p.user_id,
            "client_secret": null,
            "collected_information": null,
            "consent": null,
            "consent_collection": null
        }),
        json!({
            "created": p.created,
            "currency": "usd",
            "currency_conversion": null,
            "custom_fields": [],
            "custom_text": {
                "after_submit": null,
                "shipping_address": null,
                "submit": null,
                "terms_of_service_acceptance": null
            },
            "customer": p.customer,
            "customer_account": null,
            "customer_creation": null,
            "customer_details": {
                "address": null,
                "business_name": null,
                "email": "customer@example.test",
                "individual_name": null,
                "name": null,
                "phone": null,
                "tax_exempt": "none",
                "tax_ids": []
            },
            "customer_email": null,
            "discounts": [],
            "expires_at": p.created + 24 * 60 * 60,
            "invoice": format!("in_{}", WebhookParams::suffix(&p.event_id)),
            "invoice_creation": null,
            "livemode": false
        }),
        json!({
            "locale": null,
            "metadata": {},
            "mode": "subscription",
            "origin_context": null,
            "payment_intent": null,
            "payment_link": null,
            "payment_method_collection": "always",
            "payment_method_configuration_details": null,
            "payment_method_options": {},
            "payment_method_types": ["card"],
            "payment_status": "paid",
            "permissions": null,
            "phone_number_collection": { "enabled": false },
            "recovered_from": null,
            "saved_payment_method_options": null
        }),
        json!({
            "setup_intent": null,
            "shipping_address_collection": null,
            "shipping_cost": null,
            "shipping_options": [],
            "status": "complete",
            "submit_type": null,
            "subscription": p.subscription,
            "success_url": "https://example.test/billing/success",
            "total_details": { "amount_discount": 0, "amount_shipping": 0, "amount_tax": 0 },
            "ui_mode": "hosted_page",
            "url": null,
            "wallet_options": null
        }),
    ])
}

/// A complete Stripe Event payload (JSON text) of `kind`, as Stripe would POST it to a webhook
/// endpoint for API version [`API_VERSION`]. Sign it with [`sign`].
pub fn webhook_event(kind: WebhookKind, params: &WebhookParams) -> String {
    let object = match kind {
        WebhookKind::CheckoutSessionCompleted => checkout_session_object(params),
        WebhookKind::CustomerSubscriptionCreated | WebhookKind::CustomerSubscriptionUpdated => {
            subscription_object(params, false)
        }
        WebhookKind::CustomerSubscriptionDeleted => subscription_object(params, true),
        WebhookKind::InvoicePaid => invoice_object(params, true),
        WebhookKind::InvoicePaymentFailed => invoice_object(params, false),
    };
    let mut data = Map::new();
    data.insert("object".to_owned(), object);
    if kind == WebhookKind::CustomerSubscriptionUpdated {
        data.insert(
            "previous_attributes".to_owned(),
            json!({ "status": "incomplete" }),
        );
    }
    json!({
        "id": params.event_id,
        "object": "event",
        "api_version": API_VERSION,
        "created": params.created,
        "data": data,
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": kind.event_type()
    })
    .to_string()
}

/// The `Stripe-Signature` header for `payload` signed with the endpoint `secret` at `timestamp`:
/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<payload>")>`.
///
/// # Panics
/// Never: HMAC accepts keys of any length.
#[allow(clippy::expect_used)]
pub fn sign(payload: &str, secret: &str, timestamp: i64) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(format!("{timestamp}.{payload}").as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Merges JSON objects: big objects are written in parts to stay under `json!`'s recursion limit.
fn merged(parts: Vec<Value>) -> Value {
    let mut out = Map::new();
    for part in parts {
        if let Value::Object(map) = part {
            out.extend(map);
        }
    }
    Value::Object(out)
}
