//! Stripe's webhook signature: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`,
//! checked in constant time, within a 300 s tolerance either way.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a signature's timestamp may be from now, in seconds (Stripe's default).
pub const TOLERANCE_SECS: i64 = 300;

/// Why a signature is refused; the detail never names the secret or the expected value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `t=` or no `v1=` in the header, or not numbers/hex.
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    /// The timestamp is outside the tolerance: a replay, or a clock far off.
    #[error("the signature's timestamp is outside the 300 s tolerance")]
    Expired,
    /// No `v1` signature matches.
    #[error("no signature matches the body")]
    Mismatch,
}

/// Checks `header` against `body` signed with `secret`, at `now` (unix seconds).
///
/// # Errors
/// [`SignatureError`].
pub fn verify(body: &[u8], header: &str, secret: &str, now: i64) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", sig)) => {
                candidates.push(hex::decode(sig).map_err(|_| SignatureError::Malformed)?)
            }
            _ => {}
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now - t).abs() > TOLERANCE_SECS {
        return Err(SignatureError::Expired);
    }
    for sig in candidates {
        // `verify_slice` compares in constant time.
        if mac(secret, t, body).verify_slice(&sig).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// The `Stripe-Signature` value Stripe would send for `body` at `t` (tests, `billing` docs).
pub fn sign(body: &[u8], secret: &str, t: i64) -> String {
    let sig = mac(secret, t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(sig))
}

fn mac(secret: &str, t: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";

    #[test]
    fn a_signature_made_with_the_secret_verifies() {
        let h = sign(b"{}", SECRET, 1_000);
        assert_eq!(verify(b"{}", &h, SECRET, 1_100), Ok(()));
        // Stripe may send several v1 values during a secret roll: any match is enough.
        let rolled = format!("t=1000,v1={},{}", "00".repeat(32), &h[7..]);
        assert_eq!(verify(b"{}", &rolled, SECRET, 1_000), Ok(()));
    }

    #[test]
    fn tampering_an_old_timestamp_or_a_bad_header_is_refused() {
        let h = sign(b"{}", SECRET, 1_000);
        assert_eq!(
            verify(b"{ }", &h, SECRET, 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"{}", &h, "whsec_other", 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"{}", &h, SECRET, 1_301),
            Err(SignatureError::Expired)
        );
        assert_eq!(verify(b"{}", &h, SECRET, 699), Err(SignatureError::Expired));
        for bad in ["", "t=1000", "v1=00", "t=x,v1=00", "t=1000,v1=zz"] {
            assert_eq!(
                verify(b"{}", bad, SECRET, 1_000),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }
}
