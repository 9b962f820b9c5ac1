//! The usage ledger's hash chain: each consumed unit carries
//! `hash = SHA-256(prev_hash ‖ canonical JSON of the unit)`, so editing, removing or
//! reordering any unit breaks every link after it.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev_hash` of a period's first unit.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The fields of a unit that its hash covers besides `prev_hash`.
const BODY_FIELDS: [&str; 5] = ["consumed_at", "job_id", "period_start", "unit", "user_id"];

/// JSON with object keys sorted and no white space: one byte sequence per value.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    // Only JSON text was written: valid UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// A JSON string or scalar, as serde_json writes it (into a `Vec`, which cannot fail).
fn write_json<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, value);
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(k, out);
                out.push(b':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        other => write_json(other, out),
    }
}

/// The hash of a unit whose body (the fields other than the two hashes) is `body`.
pub fn link_hash(prev_hash: &str, body: &Value) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical_json(body).as_bytes());
    hex::encode(h.finalize())
}

/// Where and why a chain fails verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger chain broken at unit index {index}: {reason}")]
pub struct ChainBreak {
    /// 0-based position of the first bad unit.
    pub index: usize,
    /// The job of that unit, when it could be read.
    pub job_id: Option<String>,
    /// What is wrong.
    pub reason: BreakReason,
}

/// What is wrong with a unit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakReason {
    /// Not JSON, or not in canonical form (its bytes were changed).
    #[error("not canonical JSON")]
    NotCanonical,
    /// A field is missing, extra, or of the wrong type.
    #[error("malformed unit")]
    Malformed,
    /// Its `unit` number is not one more than the previous unit's.
    #[error("unit number out of sequence")]
    Sequence,
    /// Its `prev_hash` is not the previous unit's hash.
    #[error("prev_hash does not match the previous unit")]
    Link,
    /// Its `hash` is not the hash of its contents.
    #[error("hash does not match the unit's contents")]
    Hash,
}

/// The verified end of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// How many units the chain holds.
    pub units: u64,
    /// The last unit's hash ([`GENESIS`] when empty).
    pub hash: String,
}

/// Verifies a period's consumed units, given as the JSON of their `UnitConsumed` events in
/// ledger order.
///
/// # Errors
/// The first unit that fails, and why.
pub fn verify_chain<'a>(
    units: impl IntoIterator<Item = &'a Value>,
) -> Result<ChainHead, ChainBreak> {
    link_units(units.into_iter().map(check_unit))
}

/// Verifies units given as the exact bytes that were recorded: any byte changed, even one
/// that parses to an equal value, fails at that unit.
///
/// # Errors
/// The first unit that fails, and why.
pub fn verify_chain_bytes(units: &[&[u8]]) -> Result<ChainHead, ChainBreak> {
    let mut values = Vec::with_capacity(units.len());
    for (index, bytes) in units.iter().enumerate() {
        let parsed: Option<Value> = serde_json::from_slice(bytes).ok();
        match parsed {
            Some(v) if canonical_json(&v).as_bytes() == *bytes => values.push(v),
            _ => {
                return Err(ChainBreak {
                    index,
                    job_id: None,
                    reason: BreakReason::NotCanonical,
                });
            }
        }
    }
    verify_chain(values.iter())
}

/// One unit checked on its own: its shape and its own hash. What links it to its
/// neighbours (sequence, `prev_hash`) is [`link_units`]'s. Independent per unit, so a long
/// chain can be checked on several cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUnit {
    /// Its `unit` number.
    pub unit: u64,
    /// Its `prev_hash`.
    pub prev_hash: String,
    /// Its `hash`.
    pub hash: String,
    /// Its `job_id`, for a break report.
    pub job_id: Option<String>,
    /// Whether `hash` is the hash of its other fields.
    pub hash_ok: bool,
}

/// Checks one unit's shape and hash.
///
/// # Errors
/// [`BreakReason::Malformed`], with the unit's job id when it has one.
pub fn check_unit(unit: &Value) -> Result<CheckedUnit, (Option<String>, BreakReason)> {
    let job_id = unit
        .get("job_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let malformed = || (job_id.clone(), BreakReason::Malformed);
    let obj = unit.as_object().ok_or_else(malformed)?;
    let prev = obj.get("prev_hash").and_then(Value::as_str);
    let hash = obj.get("hash").and_then(Value::as_str);
    let (Some(prev), Some(hash)) = (prev, hash) else {
        return Err(malformed());
    };
    if obj.len() != BODY_FIELDS.len() + 2 || BODY_FIELDS.iter().any(|f| !obj.contains_key(*f)) {
        return Err(malformed());
    }
    // Not a number: never the next one, so a sequence break, as `verify_chain` says.
    let n = obj.get("unit").and_then(Value::as_u64).unwrap_or(0);
    // The canonical body written straight from the unit: its fields, sorted, no copies.
    let mut body = Vec::with_capacity(256);
    body.push(b'{');
    for (i, field) in BODY_FIELDS.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        write_json(*field, &mut body);
        body.push(b':');
        if let Some(v) = obj.get(*field) {
            write_canonical(v, &mut body);
        }
    }
    body.push(b'}');
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(&body);
    Ok(CheckedUnit {
        unit: n,
        prev_hash: prev.to_owned(),
        hash_ok: hex::encode(h.finalize()) == hash,
        hash: hash.to_owned(),
        job_id,
    })
}

/// Links units checked by [`check_unit`], in ledger order: in turn each unit's sequence,
/// its link to the previous hash, then its own hash.
///
/// # Errors
/// The first unit that fails, and why.
pub fn link_units(
    units: impl IntoIterator<Item = Result<CheckedUnit, (Option<String>, BreakReason)>>,
) -> Result<ChainHead, ChainBreak> {
    let mut head = ChainHead {
        units: 0,
        hash: GENESIS.to_owned(),
    };
    for (index, checked) in units.into_iter().enumerate() {
        let u = checked.map_err(|(job_id, reason)| ChainBreak {
            index,
            job_id,
            reason,
        })?;
        let fail = |reason| ChainBreak {
            index,
            job_id: u.job_id.clone(),
            reason,
        };
        if u.unit != head.units + 1 {
            return Err(fail(BreakReason::Sequence));
        }
        if u.prev_hash != head.hash {
            return Err(fail(BreakReason::Link));
        }
        if !u.hash_ok {
            return Err(fail(BreakReason::Hash));
        }
        head = ChainHead {
            units: head.units + 1,
            hash: u.hash,
        };
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v = json!({"b": 1, "a": {"d": [true, null], "c": "x"}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":"x","d":[true,null]},"b":1}"#
        );
    }

    #[test]
    fn empty_chain_is_genesis() {
        let head = verify_chain(std::iter::empty()).unwrap();
        assert_eq!(
            head,
            ChainHead {
                units: 0,
                hash: GENESIS.into()
            }
        );
    }

    #[test]
    fn link_hash_is_sha256_of_prev_and_body() {
        let body = json!({"a": 1});
        let mut h = Sha256::new();
        h.update(GENESIS.as_bytes());
        h.update(br#"{"a":1}"#);
        assert_eq!(link_hash(GENESIS, &body), hex::encode(h.finalize()));
    }
}
