//! Tokens already verified with a shared secret, so a client's next request with the same
//! token skips the signature and the claims' parsing (a sixth of the command API's work per
//! submission, callgrind). Only HS256: a shared secret does not rotate while the process
//! runs, whereas a JWKS key may leave its set, and its tokens must then stop as the set is
//! refetched.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::Principal;

/// How many tokens are remembered; past it the expired ones go, then all.
const CAPACITY: usize = 10_000;
/// The longest a verified token is remembered, whatever its `exp`.
const LONGEST: Duration = Duration::from_secs(300);

#[derive(Default)]
pub(super) struct Verified {
    tokens: Mutex<HashMap<Box<str>, (Principal, Instant)>>,
}

impl Verified {
    /// The principal of `token` when it was verified and has not expired since.
    pub fn get(&self, token: &str) -> Option<Principal> {
        let tokens = self.tokens.lock().ok()?;
        let (principal, until) = tokens.get(token)?;
        (Instant::now() < *until).then_some(*principal)
    }

    /// Remembers `token`, verified as `principal`, until its `exp` (seconds since the epoch).
    pub fn put(&self, token: &str, principal: Principal, exp: f64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let left = exp - now;
        if !left.is_finite() || left <= 0.0 {
            return;
        }
        let until = Instant::now() + Duration::from_secs_f64(left).min(LONGEST);
        let Ok(mut tokens) = self.tokens.lock() else {
            return;
        };
        if tokens.len() >= CAPACITY {
            let now = Instant::now();
            tokens.retain(|_, (_, until)| *until > now);
            if tokens.len() >= CAPACITY {
                tokens.clear();
            }
        }
        tokens.insert(token.into(), (principal, until));
    }
}
