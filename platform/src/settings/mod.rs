//! Typed settings from environment variables, validated before anything starts.

mod billing;
mod dispatch;
mod executors;
pub mod table;

pub use billing::Billing;
pub use dispatch::DispatchSettings;
pub use executors::{BrowserSettings, LlmProvider, LlmSettings};

use std::{collections::HashMap, fmt, net::SocketAddr, time::Duration};

use domain::{plan::PlanLimits, task::TaskCatalog, task::TaskType};
use thiserror::Error;

/// A value that must never reach a log line: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A setting with a bad value: the variable and what is wrong, never the value of a secret.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{var}: {problem}")]
pub struct SettingsError {
    /// The environment variable.
    pub var: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// Everything a role may need; each role checks the parts it uses with its own `require_*`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `DATABASE_URL`.
    pub database_url: Option<Secret>,
    /// `RUNLEDGER_DB_MAX_CONNECTIONS` (default 32).
    pub db_max_connections: u32,
    /// `RUNLEDGER_ADDR` (default 127.0.0.1:8080).
    pub addr: SocketAddr,
    /// `RUNLEDGER_JWT_SECRET`: the HS256 secret.
    pub jwt_secret: Option<Secret>,
    /// `RUNLEDGER_JWKS_URL`: asymmetric keys.
    pub jwks_url: Option<String>,
    /// `RUNLEDGER_JWT_AUDIENCE` (default `authenticated`).
    pub jwt_audience: String,
    /// `RUNLEDGER_JWT_ISSUER`: when set, customers' tokens must carry this `iss`.
    pub jwt_issuer: Option<String>,
    /// `RUNLEDGER_SERVICE_JWT_SECRET`: when set (or the service JWKS), service roles come
    /// only from tokens signed with it, never from the customers' issuer.
    pub service_jwt_secret: Option<Secret>,
    /// `RUNLEDGER_SERVICE_JWKS_URL`: asymmetric keys for service-role tokens.
    pub service_jwks_url: Option<String>,
    /// `RUNLEDGER_FREE_LIMIT`, `RUNLEDGER_PRO_LIMIT`.
    pub limits: PlanLimits,
    /// Built-ins plus `RUNLEDGER_TASK_TYPES` (comma-separated).
    pub task_types: TaskCatalog,
    /// `RUNLEDGER_BODY_LIMIT` in bytes (default 65536).
    pub body_limit: usize,
    /// `RUNLEDGER_RESERVATION_TIMEOUT_SECS` (default 300): the sweeper's cutoff.
    pub reservation_timeout: Duration,
    /// `RUNLEDGER_JOB_LEASE_SECS` (default 60, 5 to 86400): a running attempt with no start
    /// or heartbeat for this long is failed as retryable by the process manager.
    pub job_lease: Duration,
    /// `RUNLEDGER_RECONCILE_GRACE_SECS` (default 30, 1 to 3600): a waiting job that no queue
    /// has held for this long is pushed again by the dispatcher.
    pub reconcile_grace: Duration,
    /// `RUNLEDGER_LOG`: a tracing filter (default `info` for the roles, `warn` for
    /// `runledger dev`); see [`Settings::log_filter_or`].
    pub log_filter: Option<String>,
    /// `RUNLEDGER_DATA_DIR` (default `./.runledger`): where `runledger dev` keeps its events.
    pub data_dir: std::path::PathBuf,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the OpenTelemetry collector's OTLP/HTTP base URL; traces
    /// are exported (HTTP/protobuf, to `/v1/traces`) only when it is set.
    pub otlp_endpoint: Option<String>,
    /// `RUNLEDGER_SSE_HEARTBEAT_SECS` (default 15): comment lines that keep idle streams open.
    pub sse_heartbeat: Duration,
    /// `RUNLEDGER_CHANGES_RETENTION_HOURS` (default 168, 1 to 8760): how long the SSE replay
    /// log (`job_changes`) keeps a change. A `Last-Event-ID` older than that gets a `reset`.
    pub changes_retention: Duration,
    /// `NATS_URL`: the event bus and change notices.
    pub nats_url: Option<String>,
    /// `RUNLEDGER_NATS_PREFIX`: prepended to subjects and stream names (empty by default),
    /// so several deployments or tests can share one server.
    pub nats_prefix: String,
    /// `REDIS_URL`: the job queues; several comma-separated URLs name a Redis Cluster's
    /// seed nodes.
    pub redis_url: Option<String>,
    /// `RUNLEDGER_REDIS_CLUSTER` (default false): `REDIS_URL` is a cluster even with one
    /// seed node.
    pub redis_cluster: bool,
    /// `RUNLEDGER_COMMAND_URL`: where a worker reports outcomes.
    pub command_url: Option<String>,
    /// `RUNLEDGER_WORKER_TOKEN`: the worker's service token (else minted from the secret).
    pub worker_token: Option<Secret>,
    /// `RUNLEDGER_HTTP_ALLOW`: CIDRs `http.request` may reach although private or loopback.
    pub http_allow: Vec<String>,
    /// Stripe billing, when `STRIPE_SECRET_KEY` is set.
    pub billing: Option<Billing>,
    /// `RUNLEDGER_AUDIT_SIGNING_KEY`: signs audit digests.
    pub audit_key: Option<Secret>,
    /// Fair dispatch: concurrency and weights per plan, the ready queues' window.
    pub dispatch: DispatchSettings,
    /// The browser executor.
    pub browser: BrowserSettings,
    /// The agent executor, when `RUNLEDGER_LLM_MODEL` is set.
    pub llm: Option<LlmSettings>,
    /// `RUNLEDGER_ARTIFACTS_DIR` (default `artifacts` under `RUNLEDGER_DATA_DIR`, itself
    /// `./.runledger` by default): where workers put artifacts and the read side finds them.
    pub artifacts_dir: std::path::PathBuf,
}

impl Settings {
    /// Reads the process environment.
    ///
    /// # Errors
    /// The first variable with a bad value.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(&std::env::vars().collect())
    }

    /// Reads settings from a map of variables (the environment, or a test's).
    ///
    /// # Errors
    /// The first variable with a bad value.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, SettingsError> {
        let get = |k: &str| vars.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let database_url = match get("DATABASE_URL") {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Some(Secret::new(url))
            }
            Some(_) => return Err(bad("DATABASE_URL", "must start with postgres://")),
            None => None,
        };
        let addr = match get("RUNLEDGER_ADDR") {
            Some(a) => a.parse().map_err(|_| {
                bad(
                    "RUNLEDGER_ADDR",
                    "must be host:port, such as 127.0.0.1:8080",
                )
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let jwks_url = match get("RUNLEDGER_JWKS_URL") {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => Some(u.to_owned()),
            Some(_) => return Err(bad("RUNLEDGER_JWKS_URL", "must be an http(s) URL")),
            None => None,
        };
        let jwt_secret = secret(get("RUNLEDGER_JWT_SECRET"), "RUNLEDGER_JWT_SECRET")?;
        let service_jwt_secret = secret(
            get("RUNLEDGER_SERVICE_JWT_SECRET"),
            "RUNLEDGER_SERVICE_JWT_SECRET",
        )?;
        let service_jwks_url = match get("RUNLEDGER_SERVICE_JWKS_URL") {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => Some(u.to_owned()),
            Some(_) => return Err(bad("RUNLEDGER_SERVICE_JWKS_URL", "must be an http(s) URL")),
            None => None,
        };
        if jwt_secret.is_some() && jwt_secret == service_jwt_secret {
            return Err(bad(
                "RUNLEDGER_SERVICE_JWT_SECRET",
                "must differ from RUNLEDGER_JWT_SECRET",
            ));
        }
        let defaults = PlanLimits::default();
        let limits = PlanLimits {
            free: number(
                get("RUNLEDGER_FREE_LIMIT"),
                "RUNLEDGER_FREE_LIMIT",
                defaults.free,
            )?,
            pro: number(
                get("RUNLEDGER_PRO_LIMIT"),
                "RUNLEDGER_PRO_LIMIT",
                defaults.pro,
            )?,
        };
        let mut extra = Vec::new();
        for t in get("RUNLEDGER_TASK_TYPES")
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.is_empty())
        {
            extra.push(
                TaskType::parse(t.trim())
                    .map_err(|e| bad("RUNLEDGER_TASK_TYPES", &e.to_string()))?,
            );
        }
        let body_limit = number(get("RUNLEDGER_BODY_LIMIT"), "RUNLEDGER_BODY_LIMIT", 65_536)?;
        if !(1_024..=16 * 1_024 * 1_024).contains(&body_limit) {
            return Err(bad(
                "RUNLEDGER_BODY_LIMIT",
                "must be between 1024 and 16777216",
            ));
        }
        let db_max_connections = number(
            get("RUNLEDGER_DB_MAX_CONNECTIONS"),
            "RUNLEDGER_DB_MAX_CONNECTIONS",
            32,
        )?;
        if !(2..=1_000).contains(&db_max_connections) {
            return Err(bad(
                "RUNLEDGER_DB_MAX_CONNECTIONS",
                "must be between 2 and 1000",
            ));
        }
        let retention_hours = number(
            get("RUNLEDGER_CHANGES_RETENTION_HOURS"),
            "RUNLEDGER_CHANGES_RETENTION_HOURS",
            168,
        )?;
        if !(1..=8_760).contains(&retention_hours) {
            return Err(bad(
                "RUNLEDGER_CHANGES_RETENTION_HOURS",
                "must be between 1 and 8760",
            ));
        }
        let changes_retention = Duration::from_secs(retention_hours * 3_600);
        let nats_url = match get("NATS_URL") {
            Some(u) if u.starts_with("nats://") || u.starts_with("tls://") => Some(u.to_owned()),
            Some(_) => return Err(bad("NATS_URL", "must start with nats:// or tls://")),
            None => None,
        };
        let nats_prefix = match get("RUNLEDGER_NATS_PREFIX") {
            None => String::new(),
            Some(p)
                if p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
            {
                format!("{p}.")
            }
            Some(_) => {
                return Err(bad(
                    "RUNLEDGER_NATS_PREFIX",
                    "may hold only letters, digits, _ and -",
                ));
            }
        };
        let redis_url = match get("REDIS_URL") {
            Some(u)
                if u.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .all(|n| n.starts_with("redis://") || n.starts_with("rediss://"))
                    && !u.trim().is_empty() =>
            {
                Some(u.to_owned())
            }
            Some(_) => {
                return Err(bad(
                    "REDIS_URL",
                    "must be redis:// or rediss:// URLs (several, comma-separated: a cluster's nodes)",
                ));
            }
            None => None,
        };
        let redis_cluster = match get("RUNLEDGER_REDIS_CLUSTER") {
            None | Some("" | "0" | "false") => false,
            Some("1" | "true") => true,
            Some(_) => return Err(bad("RUNLEDGER_REDIS_CLUSTER", "must be true or false")),
        };
        let command_url = match get("RUNLEDGER_COMMAND_URL") {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                Some(u.trim_end_matches('/').to_owned())
            }
            Some(_) => return Err(bad("RUNLEDGER_COMMAND_URL", "must be an http(s) URL")),
            None => None,
        };
        let mut http_allow = Vec::new();
        for cidr in get("RUNLEDGER_HTTP_ALLOW")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            let ok = cidr.split_once('/').is_some_and(|(ip, len)| {
                ip.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128)
            });
            if !ok {
                return Err(bad(
                    "RUNLEDGER_HTTP_ALLOW",
                    "must be comma-separated CIDRs such as 127.0.0.1/32",
                ));
            }
            http_allow.push(cidr.to_owned());
        }
        let otlp_endpoint = match get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                Some(u.trim_end_matches('/').to_owned())
            }
            Some(_) => return Err(bad("OTEL_EXPORTER_OTLP_ENDPOINT", "must be an http(s) URL")),
            None => None,
        };
        let owned = |k: &str| get(k).map(str::to_owned);
        let billing = billing::billing(&owned)?;
        let audit_key = billing::audit_key(owned("RUNLEDGER_AUDIT_SIGNING_KEY"))?;
        let browser = executors::browser(&owned)?;
        let llm = executors::llm(&owned)?;
        let dispatch = dispatch::dispatch(&owned)?;
        Ok(Self {
            dispatch,
            browser,
            llm,
            artifacts_dir: get("RUNLEDGER_ARTIFACTS_DIR").map_or_else(
                || {
                    std::path::PathBuf::from(get("RUNLEDGER_DATA_DIR").unwrap_or("./.runledger"))
                        .join("artifacts")
                },
                std::path::PathBuf::from,
            ),
            billing,
            audit_key,
            redis_url,
            redis_cluster,
            command_url,
            worker_token: get("RUNLEDGER_WORKER_TOKEN").map(Secret::new),
            http_allow,
            nats_url,
            nats_prefix,
            database_url,
            db_max_connections: u32::try_from(db_max_connections).unwrap_or(32),
            addr,
            jwt_secret,
            jwks_url,
            jwt_audience: get("RUNLEDGER_JWT_AUDIENCE")
                .unwrap_or("authenticated")
                .to_owned(),
            jwt_issuer: get("RUNLEDGER_JWT_ISSUER")
                .filter(|i| !i.is_empty())
                .map(str::to_owned),
            service_jwt_secret,
            service_jwks_url,
            limits,
            task_types: TaskCatalog::with_extra(extra),
            body_limit: usize::try_from(body_limit).unwrap_or(65_536),
            reservation_timeout: Duration::from_secs(number(
                get("RUNLEDGER_RESERVATION_TIMEOUT_SECS"),
                "RUNLEDGER_RESERVATION_TIMEOUT_SECS",
                300,
            )?),
            job_lease: Duration::from_secs(within(
                number(
                    get("RUNLEDGER_JOB_LEASE_SECS"),
                    "RUNLEDGER_JOB_LEASE_SECS",
                    60,
                )?,
                "RUNLEDGER_JOB_LEASE_SECS",
                5..=86_400,
            )?),
            reconcile_grace: Duration::from_secs(within(
                number(
                    get("RUNLEDGER_RECONCILE_GRACE_SECS"),
                    "RUNLEDGER_RECONCILE_GRACE_SECS",
                    30,
                )?,
                "RUNLEDGER_RECONCILE_GRACE_SECS",
                1..=3_600,
            )?),
            log_filter: get("RUNLEDGER_LOG").map(str::to_owned),
            data_dir: std::path::PathBuf::from(get("RUNLEDGER_DATA_DIR").unwrap_or("./.runledger")),
            otlp_endpoint,
            sse_heartbeat: Duration::from_secs(
                number(
                    get("RUNLEDGER_SSE_HEARTBEAT_SECS"),
                    "RUNLEDGER_SSE_HEARTBEAT_SECS",
                    15,
                )?
                .clamp(1, 300),
            ),
            changes_retention,
        })
    }

    /// The log filter: `RUNLEDGER_LOG`, else `default`.
    pub fn log_filter_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.log_filter.as_deref().unwrap_or(default)
    }

    /// Installs logs (JSON) and, with `OTEL_EXPORTER_OTLP_ENDPOINT`, traces for `role`.
    pub fn init_telemetry(&self, role: &str) {
        crate::telemetry::init(
            self.log_filter_or("info"),
            self.otlp_endpoint.as_deref(),
            &format!("runledger-{role}"),
        );
    }

    /// The database URL, for roles that need Postgres.
    ///
    /// # Errors
    /// When `DATABASE_URL` is not set.
    pub fn require_database(&self) -> Result<&Secret, SettingsError> {
        self.database_url
            .as_ref()
            .ok_or_else(|| bad("DATABASE_URL", "is required by this role"))
    }

    /// The NATS URL, for roles that need the bus.
    ///
    /// # Errors
    /// When `NATS_URL` is not set.
    pub fn require_nats(&self) -> Result<&str, SettingsError> {
        self.nats_url
            .as_deref()
            .ok_or_else(|| bad("NATS_URL", "is required by this role"))
    }

    /// The Redis URL, for roles that use the queues.
    ///
    /// # Errors
    /// When `REDIS_URL` is not set.
    pub fn require_redis(&self) -> Result<&str, SettingsError> {
        self.redis_url
            .as_deref()
            .ok_or_else(|| bad("REDIS_URL", "is required by this role"))
    }

    /// The billing settings, for the billing role.
    ///
    /// # Errors
    /// When `STRIPE_SECRET_KEY` is not set.
    pub fn require_billing(&self) -> Result<&Billing, SettingsError> {
        self.billing
            .as_ref()
            .ok_or_else(|| bad("STRIPE_SECRET_KEY", "is required by this role"))
    }

    /// Checks that some way to validate tokens is configured.
    ///
    /// # Errors
    /// When neither `RUNLEDGER_JWT_SECRET` nor `RUNLEDGER_JWKS_URL` is set.
    pub fn require_auth(&self) -> Result<(), SettingsError> {
        if self.jwt_secret.is_none() && self.jwks_url.is_none() {
            return Err(bad(
                "RUNLEDGER_JWT_SECRET",
                "set it (or RUNLEDGER_JWKS_URL) so tokens can be validated",
            ));
        }
        Ok(())
    }
}

/// A signing secret: at least 32 bytes.
fn secret(value: Option<&str>, var: &'static str) -> Result<Option<Secret>, SettingsError> {
    match value {
        Some(s) if s.len() < 32 => Err(bad(var, "must be at least 32 bytes")),
        s => Ok(s.map(Secret::new)),
    }
}

fn bad(var: &'static str, problem: &str) -> SettingsError {
    SettingsError {
        var,
        problem: problem.to_owned(),
    }
}

fn number(v: Option<&str>, var: &'static str, default: u64) -> Result<u64, SettingsError> {
    v.map_or(Ok(default), |s| {
        s.trim()
            .parse()
            .map_err(|_| bad(var, "must be a whole number"))
    })
}

fn within(
    n: u64,
    var: &'static str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, SettingsError> {
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(bad(
            var,
            &format!("must be between {} and {}", range.start(), range.end()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_hold_without_variables() {
        let s = Settings::from_vars(&HashMap::new()).unwrap();
        assert_eq!(s.limits, PlanLimits::default());
        assert_eq!(s.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.jwt_audience, "authenticated");
        assert!(s.require_database().is_err());
        assert!(s.require_auth().is_err());
    }

    #[test]
    fn bad_values_name_the_variable_and_never_echo_secrets() {
        let e = Settings::from_vars(&vars(&[("RUNLEDGER_FREE_LIMIT", "ten")])).unwrap_err();
        assert_eq!(e.var, "RUNLEDGER_FREE_LIMIT");
        let e =
            Settings::from_vars(&vars(&[("DATABASE_URL", "mysql://u:hunter2@x/db")])).unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
        let e =
            Settings::from_vars(&vars(&[("RUNLEDGER_JWT_SECRET", "short-secret")])).unwrap_err();
        assert!(!e.to_string().contains("short-secret"));
        assert!(Settings::from_vars(&vars(&[("RUNLEDGER_ADDR", "nope")])).is_err());
        for hours in ["0", "8761", "a week"] {
            let e = Settings::from_vars(&vars(&[("RUNLEDGER_CHANGES_RETENTION_HOURS", hours)]))
                .unwrap_err();
            assert_eq!(e.var, "RUNLEDGER_CHANGES_RETENTION_HOURS");
        }
        assert!(Settings::from_vars(&vars(&[("RUNLEDGER_TASK_TYPES", "Bad Type")])).is_err());
        let e = Settings::from_vars(&vars(&[("STRIPE_SECRET_KEY", "sk_test_abc")])).unwrap_err();
        assert_eq!(e.var, "STRIPE_WEBHOOK_SECRET");
        let e = Settings::from_vars(&vars(&[("STRIPE_SECRET_KEY", "pk_test_abc")])).unwrap_err();
        assert!(!e.to_string().contains("pk_test_abc"));
        let e =
            Settings::from_vars(&vars(&[("RUNLEDGER_AUDIT_SIGNING_KEY", "c2hvcnQ=")])).unwrap_err();
        assert_eq!(e.var, "RUNLEDGER_AUDIT_SIGNING_KEY");
    }

    #[test]
    fn billing_is_on_with_a_key_a_webhook_secret_and_a_price() {
        let s = Settings::from_vars(&vars(&[
            ("STRIPE_SECRET_KEY", "sk_test_abc"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_abc"),
            ("STRIPE_PRICE_PRO", "price_pro"),
            ("STRIPE_API_BASE", "http://127.0.0.1:9"),
        ]))
        .unwrap();
        let b = s.require_billing().unwrap();
        assert_eq!(b.api_base, "http://127.0.0.1:9/");
        assert_eq!(b.meter_event_name, "runledger_jobs");
        assert!(!format!("{s:?}").contains("sk_test_abc"));
        assert!(
            Settings::from_vars(&HashMap::new())
                .unwrap()
                .billing
                .is_none()
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Settings::from_vars(&vars(&[
            ("RUNLEDGER_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("DATABASE_URL", "postgres://u:pw@h/db"),
        ]))
        .unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("0123456789abcdef") && !dbg.contains("pw@"));
    }
}
