//! Signed audit digests: per closed ledger, its unit count and chain head replayed from the
//! raw events, signed with Ed25519 (`RUNLEDGER_AUDIT_SIGNING_KEY`). Kept elsewhere, a digest
//! makes truncation detectable: a dropped tail changes the count, a consistent rewrite of
//! events and projection changes the head, and neither can be re-signed without the key.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Query, State},
    http::StatusCode,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use domain::usage::Usage;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use eventstore::{EventStore, StoreError};
use platform::{
    auth::{Principal, Role},
    problem::Problem,
    settings::Secret,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    audit::{AuditError, ledgers_starting_in, month_start, replay_month},
    state::AppState,
    views::ReadModels,
};

/// One closed ledger, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerDigest {
    /// The user.
    pub user_id: Uuid,
    /// The period's first instant.
    pub period_start: DateTime<Utc>,
    /// The period's end.
    pub period_end: DateTime<Utc>,
    /// Units consumed.
    pub units: u64,
    /// The last unit's hash (the genesis hash for none).
    pub chain_head: String,
    /// Ed25519 over [`LedgerDigest::message`], base64.
    pub signature: String,
}

impl LedgerDigest {
    /// The signed bytes: every field but the signature, one per line, versioned.
    pub fn message(&self) -> String {
        format!(
            "runledger-digest-v1\n{}\n{}\n{}\n{}\n{}",
            self.user_id,
            self.period_start.to_rfc3339(),
            self.period_end.to_rfc3339(),
            self.units,
            self.chain_head
        )
    }
}

/// A month's digests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Digest {
    /// `Ed25519`.
    pub algorithm: String,
    /// The verifying key, base64 (32 bytes).
    pub public_key: String,
    /// `YYYY-MM`: ledgers starting that month.
    pub period: String,
    /// When it was made.
    pub generated_at: DateTime<Utc>,
    /// The closed ledgers whose chain verified, signed.
    pub ledgers: Vec<LedgerDigest>,
    /// Ledgers left unsigned (still open, or a broken chain), and why.
    pub unsigned: Vec<Unsigned>,
}

/// A ledger not signed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unsigned {
    /// The user.
    pub user_id: Uuid,
    /// The period's first instant.
    pub period_start: DateTime<Utc>,
    /// `open` or `chain_broken`.
    pub reason: String,
}

/// Why a digest cannot be made or checked.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// No signing key configured.
    #[error("RUNLEDGER_AUDIT_SIGNING_KEY is not set")]
    NoKey,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The replay failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The period is not `YYYY-MM`.
    #[error("period must be YYYY-MM")]
    Period,
}

/// The signing key from its base64 seed.
///
/// # Errors
/// [`DigestError::NoKey`] when absent or not a 32-byte seed (settings refuse that earlier).
pub fn signing_key(secret: Option<&Secret>) -> Result<SigningKey, DigestError> {
    let seed = secret
        .and_then(|s| STANDARD.decode(s.expose()).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or(DigestError::NoKey)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The digests of the ledgers starting in `month` (`YYYY-MM`), of one user or of all, as of
/// `now`: each replayed from the raw events (found there, not in the projection).
///
/// # Errors
/// [`DigestError`].
pub async fn make(
    store: &EventStore,
    views: &dyn ReadModels,
    key: &SigningKey,
    month: &str,
    user: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<Digest, DigestError> {
    let start = month_start(month).ok_or(DigestError::Period)?;
    let ledgers = ledgers_starting_in(store, start, user).await?;
    let mut digest = Digest {
        algorithm: "Ed25519".into(),
        public_key: STANDARD.encode(key.verifying_key().as_bytes()),
        period: month.to_owned(),
        generated_at: now,
        ledgers: Vec::new(),
        unsigned: Vec::new(),
    };
    for (u, ids) in ledgers {
        let rows = replay_month(store, views, u, start).await?;
        for (period_start, id) in ids {
            let ledger = store.load_fresh::<Usage>(&id).await?;
            let Some(state) = ledger.state.state() else {
                continue;
            };
            let row = rows
                .iter()
                .find(|r| r["period_start"] == serde_json::json!(period_start));
            let unsigned = |reason: &str| Unsigned {
                user_id: u,
                period_start,
                reason: reason.to_owned(),
            };
            if state.period.end > now {
                digest.unsigned.push(unsigned("open"));
                continue;
            }
            let (Some(units), Some(head)) = (
                row.and_then(|r| r["consumed"].as_u64()),
                row.and_then(|r| r["chain_head"].as_str()),
            ) else {
                digest.unsigned.push(unsigned("chain_broken"));
                continue;
            };
            let mut d = LedgerDigest {
                user_id: u,
                period_start,
                period_end: state.period.end,
                units,
                chain_head: head.to_owned(),
                signature: String::new(),
            };
            d.signature = STANDARD.encode(key.sign(d.message().as_bytes()).to_bytes());
            digest.ledgers.push(d);
        }
    }
    Ok(digest)
}

/// Whether `d` is signed by `public_key` (base64).
pub fn signed_by(d: &LedgerDigest, public_key: &str) -> bool {
    let key = STANDARD
        .decode(public_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok());
    let sig = STANDARD
        .decode(&d.signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b));
    match (key, sig) {
        (Some(k), Some(s)) => k.verify(d.message().as_bytes(), &s).is_ok(),
        _ => false,
    }
}

/// `GET /v1/audit/digest?period=YYYY-MM[&user=UUID]` (auditor or admin).
///
/// # Errors
/// 403 for other roles, 400 on bad parameters, 503 without a signing key, 500.
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Digest>, Problem> {
    if !matches!(principal.role, Role::Auditor | Role::Admin) {
        return Err(Problem::forbidden("digests need an auditor token"));
    }
    let key = signing_key(state.settings.audit_key.as_ref()).map_err(|_| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "digest-disabled",
            "Audit signing is not configured",
        )
        .detail("this deployment has no RUNLEDGER_AUDIT_SIGNING_KEY")
    })?;
    let month = params
        .get("period")
        .ok_or_else(|| Problem::bad_request("period=YYYY-MM is required"))?;
    let user = params
        .get("user")
        .map(|u| Uuid::parse_str(u).map_err(|_| Problem::bad_request("user must be a UUID")))
        .transpose()?;
    make(
        &state.store,
        state.views.as_ref(),
        &key,
        month,
        user,
        Utc::now(),
    )
    .await
    .map(Json)
    .map_err(|e| match e {
        DigestError::Period => Problem::bad_request("period must be YYYY-MM"),
        e => {
            tracing::error!(message = "Digest failed.", error = %e);
            Problem::internal()
        }
    })
}
