//! Attempts and the retry policy: exponential backoff with jitter, bounded by max attempts.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::ParseError;

/// The number of a run of a job: 1 first, one more on each retry.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "u32", into = "u32")]
#[schemars(extend("minimum" = 1))]
pub struct Attempt(u32);

impl Attempt {
    /// The first run.
    pub const FIRST: Self = Self(1);

    /// Parses an attempt number, which starts at 1.
    ///
    /// # Errors
    /// [`ParseError::Range`] for 0.
    pub fn new(n: u32) -> Result<Self, ParseError> {
        if n == 0 {
            return Err(ParseError::Range {
                field: "attempt",
                min: 1,
                max: u64::from(u32::MAX),
            });
        }
        Ok(Self(n))
    }

    /// The attempt after this one.
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }

    /// The attempt number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Attempt {
    type Error = ParseError;
    fn try_from(n: u32) -> Result<Self, ParseError> {
        Self::new(n)
    }
}

impl From<Attempt> for u32 {
    fn from(a: Attempt) -> u32 {
        a.0
    }
}

/// How many attempts a job gets before it is dead-lettered: 1 to 25.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "u32", into = "u32")]
#[schemars(extend("minimum" = 1, "maximum" = 25))]
pub struct MaxAttempts(u32);

impl MaxAttempts {
    /// The most a client may ask for.
    pub const MAX: u32 = 25;

    /// Parses a bound on attempts.
    ///
    /// # Errors
    /// [`ParseError::Range`] outside 1..=25.
    pub fn new(n: u32) -> Result<Self, ParseError> {
        if !(1..=Self::MAX).contains(&n) {
            return Err(ParseError::Range {
                field: "max_attempts",
                min: 1,
                max: u64::from(Self::MAX),
            });
        }
        Ok(Self(n))
    }

    /// The bound.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Whether `attempt` may be followed by another.
    pub const fn allows_retry_after(self, attempt: Attempt) -> bool {
        attempt.0 < self.0
    }
}

impl Default for MaxAttempts {
    fn default() -> Self {
        Self(5)
    }
}

impl TryFrom<u32> for MaxAttempts {
    type Error = ParseError;
    fn try_from(n: u32) -> Result<Self, ParseError> {
        Self::new(n)
    }
}

impl From<MaxAttempts> for u32 {
    fn from(m: MaxAttempts) -> u32 {
        m.0
    }
}

/// Exponential backoff: the delay after failed attempt `n` is drawn from
/// `[d/2, d]` with `d = min(base · 2^(n-1), cap)`. Half the delay is jitter, so retries of
/// jobs that failed together spread out, and half is kept, so no retry comes at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RetryPolicy {
    /// Delay ceiling after the first failure, in milliseconds.
    pub base_ms: u64,
    /// Largest delay, in milliseconds.
    pub cap_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_ms: 1_000,
            cap_ms: 300_000,
        }
    }
}

impl RetryPolicy {
    /// The delay before the attempt after `failed`; `seed` is the caller's randomness, so the
    /// same inputs always give the same delay.
    pub fn delay(&self, failed: Attempt, seed: u64) -> Duration {
        let shift = failed.get().saturating_sub(1).min(63);
        let ceiling = self.base_ms.saturating_mul(1u64 << shift).min(self.cap_ms);
        let floor = ceiling / 2;
        let span = ceiling - floor;
        let jitter = if span == 0 {
            0
        } else {
            splitmix64(seed ^ u64::from(failed.get())) % (span + 1)
        };
        Duration::from_millis(floor + jitter)
    }
}

/// A small, well-mixed hash of a seed (Steele, Lea, Flood: SplitMix64).
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn attempts_start_at_one() {
        assert!(Attempt::new(0).is_err());
        assert_eq!(Attempt::FIRST.next().get(), 2);
        assert!(serde_json::from_str::<Attempt>("0").is_err());
    }

    #[test]
    fn max_attempts_is_bounded() {
        assert!(MaxAttempts::new(0).is_err());
        assert!(MaxAttempts::new(26).is_err());
        let m = MaxAttempts::new(3).unwrap();
        assert!(m.allows_retry_after(Attempt::new(2).unwrap()));
        assert!(!m.allows_retry_after(Attempt::new(3).unwrap()));
    }

    #[test]
    fn delays_grow_then_cap() {
        let p = RetryPolicy {
            base_ms: 100,
            cap_ms: 1_000,
        };
        let d = |n| p.delay(Attempt::new(n).unwrap(), 7).as_millis();
        assert!((50..=100).contains(&d(1)));
        assert!((100..=200).contains(&d(2)));
        assert!((200..=400).contains(&d(3)));
        assert!((500..=1_000).contains(&d(10)));
        assert!((500..=1_000).contains(&d(u32::MAX)));
    }

    #[test]
    fn jitter_spreads_retries() {
        let p = RetryPolicy::default();
        let delays: std::collections::BTreeSet<_> = (0..50)
            .map(|s| p.delay(Attempt::new(4).unwrap(), s))
            .collect();
        assert!(delays.len() > 40, "only {} distinct delays", delays.len());
    }

    proptest! {
        #[test]
        fn delay_is_deterministic_and_within_bounds(
            base in 1u64..10_000, cap in 1u64..1_000_000, n in 1u32..100, seed: u64,
        ) {
            let p = RetryPolicy { base_ms: base, cap_ms: cap };
            let a = Attempt::new(n).unwrap();
            let d = p.delay(a, seed);
            prop_assert_eq!(d, p.delay(a, seed));
            let ceiling = base.saturating_mul(1u64 << (n - 1).min(63)).min(cap);
            let ms = u64::try_from(d.as_millis()).unwrap();
            prop_assert!(ms <= ceiling && ms >= ceiling / 2);
        }
    }
}
