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
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    aud: String,
    exp: u64,
    iat: u64,
}

/// Validates bearer tokens.
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    jwks: Option<Jwks>,
    audience: String,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256", &self.hs256.is_some())
            .field("jwks", &self.jwks.as_ref().map(|j| &j.url))
            .field("audience", &self.audience)
            .finish()
    }
}

impl Authenticator {
    /// Accepts HS256 tokens signed with `secret` and/or tokens signed by a key of the JWKS at
    /// `jwks_url`, for `audience`.
    pub fn new(secret: Option<&Secret>, jwks_url: Option<&str>, audience: &str) -> Self {
        Self {
            hs256: secret.map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
            jwks: jwks_url.map(Jwks::new),
            audience: audience.to_owned(),
        }
    }

    /// Refetches the JWKS for an unknown `kid` at most once per `interval`
    /// (default [`JWKS_REFRESH_MIN`]).
    #[must_use]
    pub fn with_jwks_refresh_interval(mut self, interval: Duration) -> Self {
        if let Some(j) = self.jwks.as_mut() {
            j.refresh_min = interval;
        }
        self
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "sub", "aud"]);
        v.validate_nbf = true;
        v.leeway = 30;
        v
    }

    /// The principal of a valid token.
    ///
    /// # Errors
    /// Why it is refused.
    pub async fn validate(&self, token: &str) -> Result<Principal, AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        let (key, alg) = match header.alg {
            Algorithm::HS256 => (
                self.hs256.clone().ok_or(AuthError::Algorithm)?,
                Algorithm::HS256,
            ),
            _ => {
                let jwks = self.jwks.as_ref().ok_or(AuthError::Algorithm)?;
                let kid = header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
                let (key, alg) = jwks.key(kid).await?;
                if alg != header.alg {
                    return Err(AuthError::Algorithm);
                }
                (key, alg)
            }
        };
        let data =
            decode::<Claims>(token, &key, &self.validation(alg)).map_err(|_| AuthError::Invalid)?;
        let user_id = UserId::parse(&data.claims.sub).map_err(|_| AuthError::Claims)?;
        let role = Role::from_claim(data.claims.role.as_deref()).ok_or(AuthError::Claims)?;
        Ok(Principal { user_id, role })
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
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub: sub.to_string(),
        role: Some(role.claim().to_owned()),
        aud: audience.to_owned(),
        iat: now,
        exp: now + ttl.as_secs(),
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
}

/// Keys from a JWKS URL, each pinned to one algorithm.
struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, (DecodingKey, Algorithm)>>,
    last_fetch: Mutex<Option<Instant>>,
    refresh_min: Duration,
}

/// A refetch for an unknown `kid` happens at most this often, so forged kids cannot flood
/// the key server.
pub const JWKS_REFRESH_MIN: Duration = Duration::from_secs(10);

impl Jwks {
    fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            client: crate::http_client()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            keys: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(None),
            refresh_min: JWKS_REFRESH_MIN,
        }
    }

    async fn key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), AuthError> {
        if let Some(k) = self.keys.read().await.get(kid) {
            return Ok(k.clone());
        }
        self.refresh().await;
        self.keys
            .read()
            .await
            .get(kid)
            .cloned()
            .ok_or(AuthError::UnknownKey)
    }

    async fn refresh(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.refresh_min) {
            return;
        }
        *last = Some(Instant::now());
        let fetched = async {
            self.client
                .get(&self.url)
                .send()
                .await?
                .error_for_status()?
                .json::<JwkSet>()
                .await
        }
        .await;
        match fetched {
            Ok(set) => {
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
                *self.keys.write().await = keys;
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

    #[tokio::test]
    async fn a_minted_token_validates_with_its_role() {
        let auth = Authenticator::new(Some(&secret()), None, "authenticated");
        let t = mint(
            &secret(),
            "authenticated",
            user(),
            Role::Worker,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(
            auth.validate(&t).await,
            Ok(Principal {
                user_id: user(),
                role: Role::Worker
            })
        );
    }

    #[tokio::test]
    async fn wrong_audience_and_wrong_secret_are_refused() {
        let auth = Authenticator::new(Some(&secret()), None, "authenticated");
        let t = mint(
            &secret(),
            "other",
            user(),
            Role::Customer,
            Duration::from_secs(60),
        )
        .unwrap();
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

    #[tokio::test]
    async fn alg_none_and_garbage_are_refused() {
        let auth = Authenticator::new(Some(&secret()), None, "authenticated");
        // {"alg":"none","typ":"JWT"} . {"sub":..., "aud":"authenticated","exp":9999999999}
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiI4ZDBmM2U1Mi04YTRjLTRmNDMtOWM1Mi0xZjNiMWEyYzNkNGUiLCJhdWQiOiJhdXRoZW50aWNhdGVkIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(auth.validate(none).await, Err(AuthError::Malformed));
        assert_eq!(auth.validate("not.a.jwt").await, Err(AuthError::Malformed));
    }
}
