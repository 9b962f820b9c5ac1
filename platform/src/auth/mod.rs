//! Bearer JWTs: HS256 with a shared secret (Supabase-style), or asymmetric keys from a JWKS
//! URL, cached and refreshed on an unknown `kid`. The algorithm is pinned per key and never
//! taken from the token; the token never reaches a log line or an error.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{extract::FromRequestParts, http::request::Parts};
use domain::ids::UserId;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm},
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};

use crate::{problem::Problem, settings::Secret};

mod verified;

/// Who is calling: a customer, or a service role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `role` absent or `authenticated`: a customer acting on their own jobs.
    Customer,
    /// Runs jobs and reports outcomes.
    Worker,
    /// Reads the event history.
    Auditor,
    /// Operates the platform.
    Admin,
}

impl Role {
    /// Parses the `role` claim; `None` for a role this platform does not know.
    pub fn from_claim(claim: Option<&str>) -> Option<Self> {
        match claim {
            None | Some("authenticated") | Some("customer") => Some(Self::Customer),
            Some("worker") => Some(Self::Worker),
            Some("auditor") => Some(Self::Auditor),
            Some("admin") => Some(Self::Admin),
            Some(_) => None,
        }
    }

    /// The claim value a minted token carries.
    pub const fn claim(self) -> &'static str {
        match self {
            Self::Customer => "authenticated",
            Self::Worker => "worker",
            Self::Auditor => "auditor",
            Self::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_claim(Some(s))
            .ok_or_else(|| format!("unknown role `{s}` (authenticated, worker, auditor, admin)"))
    }
}

/// A caller whose token validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    /// The `sub` claim.
    pub user_id: UserId,
    /// The `role` claim.
    pub role: Role,
}

/// Why a token was refused. Each is a 401; the messages are fixed texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// Not a JWT.
    #[error("malformed token")]
    Malformed,
    /// An algorithm no configured key accepts (including `none` and key confusion).
    #[error("token algorithm not accepted")]
    Algorithm,
    /// No key for the token's `kid`.
    #[error("unknown signing key")]
    UnknownKey,
    /// Bad signature, expired, not yet valid, wrong audience, or missing claims.
    #[error("invalid token")]
    Invalid,
    /// `sub` is not a UUID or `role` is unknown.
    #[error("invalid subject or role")]
    Claims,
    /// A service role in a token from the customers' issuer, when service roles have their
    /// own keys.
    #[error("this issuer may not grant a service role")]
    ServiceRole,
}

/// What is read from a validated token. `aud` (a string or an array), `exp`, `nbf` and `iss`
/// are checked by the validation itself; `iat` is optional, as RFC 7519 makes it.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    role: Option<String>,
    /// Read again only to know how long a verified token may be remembered.
    #[serde(default)]
    exp: Option<f64>,
}

/// What a minted token carries.
#[derive(Debug, Serialize)]
struct Minted<'a> {
    sub: String,
    role: &'a str,
    aud: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    iat: u64,
    exp: u64,
}

/// Keys of one issuer: an HS256 secret and/or a JWKS.
struct Keys {
    hs256: Option<DecodingKey>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
}

impl Keys {
    fn new(secret: Option<&Secret>, jwks_url: Option<&str>, issuer: Option<&str>) -> Self {
        Self {
            hs256: secret.map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
            jwks: jwks_url.map(Jwks::new),
            issuer: issuer.map(str::to_owned),
        }
    }

    fn is_empty(&self) -> bool {
        self.hs256.is_none() && self.jwks.is_none()
    }

    /// The key that may verify a token with `header`, if this issuer has one.
    async fn key(
        &self,
        header: &jsonwebtoken::Header,
    ) -> Result<(DecodingKey, Algorithm), AuthError> {
        match header.alg {
            Algorithm::HS256 => Ok((
                self.hs256.clone().ok_or(AuthError::Algorithm)?,
                Algorithm::HS256,
            )),
            _ => {
                let jwks = self.jwks.as_ref().ok_or(AuthError::Algorithm)?;
                let kid = header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
                let (key, alg) = jwks.key(kid).await?;
                if alg != header.alg {
                    return Err(AuthError::Algorithm);
                }
                Ok((key, alg))
            }
        }
    }
}

/// Validates bearer tokens: the customers' issuer, and optionally a separate one for the
/// service roles.
pub struct Authenticator {
    customers: Keys,
    services: Option<Keys>,
    audience: String,
    verified: verified::Verified,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256", &self.customers.hs256.is_some())
            .field("jwks", &self.customers.jwks.as_ref().map(|j| &j.url))
            .field("issuer", &self.customers.issuer)
            .field("separate_service_keys", &self.services.is_some())
            .field("audience", &self.audience)
            .finish()
    }
}

impl Authenticator {
    /// Accepts HS256 tokens signed with `secret` and/or tokens signed by a key of the JWKS at
    /// `jwks_url`, for `audience`, any role.
    pub fn new(secret: Option<&Secret>, jwks_url: Option<&str>, audience: &str) -> Self {
        Self {
            customers: Keys::new(secret, jwks_url, None),
            services: None,
            audience: audience.to_owned(),
            verified: verified::Verified::default(),
        }
    }

    /// As the settings say: the customers' keys and issuer, and the service roles' own keys
    /// when `RUNLEDGER_SERVICE_JWT_SECRET` or `RUNLEDGER_SERVICE_JWKS_URL` is set (then the
    /// customers' issuer can no longer grant a service role).
    pub fn from_settings(s: &crate::settings::Settings) -> Self {
        let services = Keys::new(
            s.service_jwt_secret.as_ref(),
            s.service_jwks_url.as_deref(),
            None,
        );
        Self {
            customers: Keys::new(
                s.jwt_secret.as_ref(),
                s.jwks_url.as_deref(),
                s.jwt_issuer.as_deref(),
            ),
            services: (!services.is_empty()).then_some(services),
            audience: s.jwt_audience.clone(),
            verified: verified::Verified::default(),
        }
    }

    /// Only tokens whose `iss` is `issuer` (from the customers' keys).
    #[must_use]
    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.customers.issuer = Some(issuer.to_owned());
        self
    }

    /// Service roles only from a token signed with `secret`.
    #[must_use]
    pub fn with_service_secret(mut self, secret: &Secret) -> Self {
        self.services = Some(Keys::new(Some(secret), None, None));
        self
    }

    /// Refetches the JWKS for an unknown `kid` at most once per `interval`
    /// (default [`JWKS_REFRESH_MIN`]).
    #[must_use]
    pub fn with_jwks_refresh_interval(mut self, interval: Duration) -> Self {
        for keys in std::iter::once(&mut self.customers).chain(self.services.as_mut()) {
            if let Some(j) = keys.jwks.as_mut() {
                j.refresh_min = interval;
            }
        }
        self
    }

    fn validation(&self, alg: Algorithm, issuer: Option<&str>) -> Validation {
        let mut v = Validation::new(alg);
        v.set_audience(&[&self.audience]);
        let mut required = vec!["exp", "sub", "aud"];
        if let Some(iss) = issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        v.validate_nbf = true;
        v.leeway = 30;
        v
    }

    async fn verify(
        &self,
        keys: &Keys,
        token: &str,
        header: &jsonwebtoken::Header,
    ) -> Result<Claims, AuthError> {
        let (key, alg) = keys.key(header).await?;
        decode::<Claims>(token, &key, &self.validation(alg, keys.issuer.as_deref()))
            .map(|d| d.claims)
            .map_err(|_| AuthError::Invalid)
    }

    /// The principal of a valid token.
    ///
    /// # Errors
    /// Why it is refused.
    pub async fn validate(&self, token: &str) -> Result<Principal, AuthError> {
        if let Some(principal) = self.verified.get(token) {
            return Ok(principal);
        }
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        let (claims, from_services) = match &self.services {
            None => (self.verify(&self.customers, token, &header).await?, false),
            Some(services) => match self.verify(services, token, &header).await {
                Ok(c) => (c, true),
                Err(service_err) => match self.verify(&self.customers, token, &header).await {
                    Ok(c) => (c, false),
                    // The customers' answer unless only the service keys could have known it.
                    Err(AuthError::Algorithm | AuthError::UnknownKey) => return Err(service_err),
                    Err(e) => return Err(e),
                },
            },
        };
        let user_id = UserId::parse(&claims.sub).map_err(|_| AuthError::Claims)?;
        let role = Role::from_claim(claims.role.as_deref()).ok_or(AuthError::Claims)?;
        if self.services.is_some() && !from_services && role != Role::Customer {
            return Err(AuthError::ServiceRole);
        }
        let principal = Principal { user_id, role };
        if header.alg == Algorithm::HS256
            && let Some(exp) = claims.exp
        {
            self.verified.put(token, principal, exp);
        }
        Ok(principal)
    }
}

/// Issues an HS256 token for `sub` with `role`, valid for `ttl`.
///
/// # Errors
/// When signing fails.
pub fn mint(
    secret: &Secret,
    audience: &str,
    sub: UserId,
    role: Role,
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    Minter {
        secret: secret.clone(),
        audience: audience.to_owned(),
        issuer: None,
    }
    .mint(sub, role, ttl)
}

/// Signs tokens the way a deployment's settings ask: the right secret for the role, with
/// the configured audience and issuer.
#[derive(Clone)]
pub struct Minter {
    /// The HS256 secret.
    pub secret: Secret,
    /// `aud`.
    pub audience: String,
    /// `iss`, when the validators check it.
    pub issuer: Option<String>,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// From the settings, for `role`: service roles use `RUNLEDGER_SERVICE_JWT_SECRET` when
    /// it is set (without the customers' issuer), else `RUNLEDGER_JWT_SECRET`. `None` when
    /// the needed secret is not configured.
    pub fn for_role(s: &crate::settings::Settings, role: Role) -> Option<Self> {
        let separate = s.service_jwt_secret.is_some() || s.service_jwks_url.is_some();
        if role != Role::Customer && separate {
            return Some(Self {
                secret: s.service_jwt_secret.clone()?,
                audience: s.jwt_audience.clone(),
                issuer: None,
            });
        }
        Some(Self {
            secret: s.jwt_secret.clone()?,
            audience: s.jwt_audience.clone(),
            issuer: s.jwt_issuer.clone(),
        })
    }

    /// A token for `sub` with `role`, valid for `ttl`.
    ///
    /// # Errors
    /// When signing fails.
    pub fn mint(
        &self,
        sub: UserId,
        role: Role,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Minted {
            sub: sub.to_string(),
            role: role.claim(),
            aud: &self.audience,
            iss: self.issuer.as_deref(),
            iat: now,
            exp: now + ttl.as_secs(),
        };
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(self.secret.expose().as_bytes()),
        )
    }
}

/// Keys from a JWKS URL, each pinned to one algorithm, kept as long as the answer's
/// `Cache-Control: max-age` says (within bounds): then fetched again, so a key the provider
/// removed stops working.
struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<Fetched>,
    last_fetch: Mutex<Option<Instant>>,
    refresh_min: Duration,
}

#[derive(Default)]
struct Fetched {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    expires: Option<Instant>,
}

/// A refetch for an unknown `kid` happens at most this often, so forged kids cannot flood
/// the key server.
pub const JWKS_REFRESH_MIN: Duration = Duration::from_secs(10);

/// How long keys are kept when the answer has no `max-age`.
pub const JWKS_DEFAULT_TTL: Duration = Duration::from_secs(600);

/// The longest keys are kept, whatever `max-age` says.
pub const JWKS_MAX_TTL: Duration = Duration::from_secs(86_400);

/// How long expired keys still serve while the provider cannot be reached.
pub const JWKS_STALE_GRACE: Duration = Duration::from_secs(3_600);

/// The key set's lifetime from a `Cache-Control` value: `max-age`, bounded; nothing for
/// `no-store`/`no-cache` beyond the refetch floor.
fn ttl(cache_control: Option<&str>, floor: Duration) -> Duration {
    let Some(cc) = cache_control else {
        return JWKS_DEFAULT_TTL;
    };
    let mut ttl = JWKS_DEFAULT_TTL;
    for directive in cc.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return floor;
        }
        if let Some(v) = lower.strip_prefix("max-age=")
            && let Ok(secs) = v.trim_matches('"').parse::<u64>()
        {
            ttl = Duration::from_secs(secs);
        }
    }
    ttl.clamp(floor, JWKS_MAX_TTL)
}

impl Jwks {
    fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            client: crate::http_client()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            keys: RwLock::new(Fetched::default()),
            last_fetch: Mutex::new(None),
            refresh_min: JWKS_REFRESH_MIN,
        }
    }

    async fn key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), AuthError> {
        {
            let fetched = self.keys.read().await;
            let fresh = fetched.expires.is_some_and(|e| Instant::now() < e);
            if fresh && let Some(k) = fetched.keys.get(kid) {
                return Ok(k.clone());
            }
        }
        self.refresh().await;
        let fetched = self.keys.read().await;
        if fetched
            .expires
            .is_some_and(|e| Instant::now() >= e + JWKS_STALE_GRACE)
        {
            // Long expired and the provider unreachable: keys it may have removed are not
            // trusted any longer.
            return Err(AuthError::UnknownKey);
        }
        fetched.keys.get(kid).cloned().ok_or(AuthError::UnknownKey)
    }

    async fn refresh(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.refresh_min) {
            return;
        }
        *last = Some(Instant::now());
        let fetched = async {
            let res = self
                .client
                .get(&self.url)
                .send()
                .await?
                .error_for_status()?;
            let cache_control = res
                .headers()
                .get(reqwest::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let set = res.json::<JwkSet>().await?;
            Ok::<_, reqwest::Error>((set, cache_control))
        }
        .await;
        match fetched {
            Ok((set, cache_control)) => {
                let keys = set
                    .keys
                    .iter()
                    .filter_map(|jwk| {
                        let kid = jwk.common.key_id.clone()?;
                        let alg = pinned_algorithm(jwk)?;
                        let key = DecodingKey::from_jwk(jwk).ok()?;
                        Some((kid, (key, alg)))
                    })
                    .collect();
                let ttl = ttl(cache_control.as_deref(), self.refresh_min);
                *self.keys.write().await = Fetched {
                    keys,
                    expires: Some(Instant::now() + ttl),
                };
            }
            Err(e) => tracing::warn!(message = "JWKS fetch failed.", error = %e),
        }
    }
}

/// The one algorithm a JWK may verify: its `alg` if it names an asymmetric one that fits the
/// key type, else the key type's usual algorithm. Symmetric keys in a JWKS are ignored.
fn pinned_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type),
        Some(KeyAlgorithm::HS256 | KeyAlgorithm::HS384 | KeyAlgorithm::HS512) => None,
        Some(k) => {
            let alg: Algorithm = k.to_string().parse().ok()?;
            (alg.family() == by_type.family()).then_some(alg)
        }
    }
}

/// What an extractor needs from the router state.
pub trait HasAuthenticator {
    /// The authenticator.
    fn authenticator(&self) -> &Arc<Authenticator>;
}

impl<S> FromRequestParts<S> for Principal
where
    S: HasAuthenticator + Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Problem::unauthorized(&AuthError::Missing.to_string()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| Problem::unauthorized(&AuthError::Missing.to_string()))?;
        state
            .authenticator()
            .validate(token.trim())
            .await
            .map_err(|e| Problem::unauthorized(&e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("test-secret-test-secret-test-secret!")
    }

    fn user() -> UserId {
        UserId::parse("8d0f3e52-8a4c-4f43-9c52-1f3b1a2c3d4e").unwrap()
    }

    /// A token for `user()` signed with `secret()`, valid for a minute.
    fn token(audience: &str, role: Role) -> String {
        mint(&secret(), audience, user(), role, Duration::from_secs(60)).unwrap()
    }

    #[tokio::test]
    async fn a_minted_token_validates_with_its_role() {
        let auth = Authenticator::new(Some(&secret()), None, "authenticated");
        let t = token("authenticated", Role::Worker);
        assert_eq!(
            auth.validate(&t).await,
            Ok(Principal {
                user_id: user(),
                role: Role::Worker
            })
        );
    }

    #[tokio::test]
    async fn a_remembered_token_is_still_its_exact_bytes() {
        let auth = Authenticator::new(Some(&secret()), None, "authenticated");
        let t = token("authenticated", Role::Customer);
        let principal = auth.validate(&t).await.unwrap();
        assert_eq!(auth.verified.get(&t), Some(principal), "remembered");
        assert_eq!(auth.validate(&t).await, Ok(principal));
        // Another signature on the same header and claims is not the remembered token.
        let (signed, _) = t.rsplit_once('.').unwrap();
        let forged = format!("{signed}.{}", "A".repeat(43));
        assert_eq!(auth.validate(&forged).await, Err(AuthError::Invalid));
        assert_eq!(auth.verified.get(&forged), None);
    }

    #[test]
    fn a_remembered_token_expires_with_its_exp() {
        let v = verified::Verified::default();
        let p = Principal {
            user_id: user(),
            role: Role::Customer,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        v.put("expired", p, now - 1.0);
        assert_eq!(v.get("expired"), None);
        v.put("ending", p, now + 0.05);
        assert_eq!(v.get("ending"), Some(p));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(v.get("ending"), None, "past its exp");
    }

    #[tokio::test]
    async fn wrong_audience_and_wrong_secret_are_refused() {
        let auth = Authenticator::new(Some(&secret()), None, "authenticated");
        let t = token("other", Role::Customer);
        assert_eq!(auth.validate(&t).await, Err(AuthError::Invalid));
        let other = Secret::new("another-secret-another-secret-another");
        let t = mint(
            &other,
            "authenticated",
            user(),
            Role::Customer,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(auth.validate(&t).await, Err(AuthError::Invalid));
    }

    #[test]
    fn jwks_lifetime_follows_cache_control_within_bounds() {
        let floor = Duration::from_secs(10);
        assert_eq!(ttl(None, floor), JWKS_DEFAULT_TTL);
        assert_eq!(
            ttl(Some("public, max-age=300"), floor),
            Duration::from_secs(300)
        );
        assert_eq!(
            ttl(Some("max-age=1"), floor),
            floor,
            "never below the floor"
        );
        assert_eq!(ttl(Some("max-age=99999999"), floor), JWKS_MAX_TTL);
        assert_eq!(ttl(Some("no-store"), floor), floor);
        assert_eq!(ttl(Some("max-age=abc"), floor), JWKS_DEFAULT_TTL);
    }

    #[tokio::test]
    async fn a_token_without_iat_or_with_an_aud_array_validates() {
        let auth = Authenticator::new(Some(&secret()), None, "authenticated");
        let exp = jsonwebtoken::get_current_timestamp() + 60;
        let claims = serde_json::json!({
            "sub": user().to_string(), "aud": ["x", "authenticated"], "exp": exp,
        });
        let t = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret().expose().as_bytes()),
        )
        .unwrap();
        assert_eq!(auth.validate(&t).await.map(|p| p.role), Ok(Role::Customer));
    }

    #[tokio::test]
    async fn alg_none_and_garbage_are_refused() {
        let auth = Authenticator::new(Some(&secret()), None, "authenticated");
        // {"alg":"none","typ":"JWT"} . {"sub":..., "aud":"authenticated","exp":9999999999}
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiI4ZDBmM2U1Mi04YTRjLTRmNDMtOWM1Mi0xZjNiMWEyYzNkNGUiLCJhdWQiOiJhdXRoZW50aWNhdGVkIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(auth.validate(none).await, Err(AuthError::Malformed));
        assert_eq!(auth.validate("not.a.jwt").await, Err(AuthError::Malformed));
    }
}
