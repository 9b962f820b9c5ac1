//! A submission's own concurrency group: at most `limit` running jobs of one user share a
//! `key` (one export per customer of theirs at a time, say).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 64;
/// The largest limit a key may carry.
pub const MAX_LIMIT: u32 = 1_000;

/// A job's concurrency group within its owner's jobs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct ConcurrencyGroup {
    /// Letters, digits and `.`, `_`, `-`, `:`; 1 to 64 bytes.
    #[schemars(length(min = 1, max = 64))]
    pub key: String,
    /// At most this many of the user's jobs with this key run at once (1 to 1,000).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: u32,
}

/// Why a concurrency key or limit is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConcurrencyError {
    /// Empty, too long, or with a character outside the allowed set.
    #[error("concurrency_key must be 1 to {MAX_KEY_LEN} letters, digits, '.', '_', '-' or ':'")]
    BadKey,
    /// Outside 1 to `MAX_LIMIT`.
    #[error("concurrency_limit must be 1 to {MAX_LIMIT}")]
    BadLimit,
    /// A limit without a key.
    #[error("concurrency_limit needs a concurrency_key")]
    LimitWithoutKey,
}

impl ConcurrencyGroup {
    /// The group of `key` (if any) with `limit` (default 1).
    ///
    /// # Errors
    /// [`ConcurrencyError`].
    pub fn parse(key: Option<&str>, limit: Option<u32>) -> Result<Option<Self>, ConcurrencyError> {
        let Some(key) = key else {
            return match limit {
                Some(_) => Err(ConcurrencyError::LimitWithoutKey),
                None => Ok(None),
            };
        };
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key.chars().all(allowed) {
            return Err(ConcurrencyError::BadKey);
        }
        let limit = limit.unwrap_or(1);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ConcurrencyError::BadLimit);
        }
        Ok(Some(Self {
            key: key.to_owned(),
            limit,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_limits_are_checked() {
        assert_eq!(ConcurrencyGroup::parse(None, None), Ok(None));
        assert_eq!(
            ConcurrencyGroup::parse(Some("export:42"), None),
            Ok(Some(ConcurrencyGroup {
                key: "export:42".into(),
                limit: 1
            }))
        );
        assert_eq!(
            ConcurrencyGroup::parse(Some("a"), Some(5)).map(|g| g.map(|g| g.limit)),
            Ok(Some(5))
        );
        for bad in ["", "with space", "ü", &"k".repeat(65)] {
            assert_eq!(
                ConcurrencyGroup::parse(Some(bad), None),
                Err(ConcurrencyError::BadKey)
            );
        }
        assert_eq!(
            ConcurrencyGroup::parse(Some("a"), Some(0)),
            Err(ConcurrencyError::BadLimit)
        );
        assert_eq!(
            ConcurrencyGroup::parse(Some("a"), Some(1_001)),
            Err(ConcurrencyError::BadLimit)
        );
        assert_eq!(
            ConcurrencyGroup::parse(None, Some(2)),
            Err(ConcurrencyError::LimitWithoutKey)
        );
    }
}
