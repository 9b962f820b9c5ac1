//! Flipping any byte of any consumed unit makes verification fail at that unit.

use proptest::prelude::*;

use super::*;
use crate::{
    chain::{
        BreakReason, ChainBreak, ChainHead, GENESIS, canonical_json, check_unit, link_hash,
        link_units, verify_chain, verify_chain_bytes,
    },
    plan::Plan,
    usage::*,
};

/// The canonical bytes of `n` consumed units of one ledger.
fn ledger(n: usize) -> Vec<Vec<u8>> {
    let mut usage = Usage::default();
    let mut units = Vec::new();
    for j in 0..n {
        let id = job_id(j as u128);
        let reserve = UsageCommand::Reserve(ReserveUnit {
            job_id: id,
            user_id: user(),
            period: period(),
            plan: Plan::Pro,
            limit: None,
            now: t0(),
        });
        let commit = UsageCommand::Commit(CommitUnit {
            job_id: id,
            now: later(j as i64),
        });
        for cmd in [reserve, commit] {
            for e in usage.decide(cmd).unwrap() {
                usage.evolve(&e);
                if let UsageEvent::UnitConsumed(u) = e {
                    units.push(canonical_json(&serde_json::to_value(&u).unwrap()).into_bytes());
                }
            }
        }
    }
    units
}

#[test]
fn an_untouched_ledger_verifies() {
    let units = ledger(5);
    let slices: Vec<&[u8]> = units.iter().map(Vec::as_slice).collect();
    let head = verify_chain_bytes(&slices).unwrap();
    assert_eq!(head.units, 5);
}

#[test]
fn a_removed_or_reordered_unit_breaks_the_chain() {
    let units = ledger(4);
    let mut removed: Vec<&[u8]> = units.iter().map(Vec::as_slice).collect();
    removed.remove(1);
    let err = verify_chain_bytes(&removed).unwrap_err();
    assert_eq!((err.index, err.reason), (1, BreakReason::Sequence));
    let mut swapped: Vec<&[u8]> = units.iter().map(Vec::as_slice).collect();
    swapped.swap(2, 3);
    assert_eq!(verify_chain_bytes(&swapped).unwrap_err().index, 2);
}

#[test]
fn a_unit_rewritten_with_a_recomputed_hash_breaks_the_next_link() {
    let units = ledger(3);
    let mut values: Vec<serde_json::Value> = units
        .iter()
        .map(|u| serde_json::from_slice(u).unwrap())
        .collect();
    let mut forged: UnitConsumed = serde_json::from_value(values[1].clone()).unwrap();
    forged.job_id = job_id(99);
    forged.hash = unit_hash(&forged);
    values[1] = serde_json::to_value(&forged).unwrap();
    let err = verify_chain(values.iter()).unwrap_err();
    assert_eq!((err.index, err.reason), (2, BreakReason::Link));
}

/// The chain's rules written plainly, unit by unit, as the oracle of the split verifier:
/// exact fields, then sequence, link, and the hash of the other fields.
fn reference(units: &[serde_json::Value]) -> Result<ChainHead, ChainBreak> {
    const BODY: [&str; 5] = ["consumed_at", "job_id", "period_start", "unit", "user_id"];
    let mut head = ChainHead {
        units: 0,
        hash: GENESIS.to_owned(),
    };
    for (index, unit) in units.iter().enumerate() {
        let job_id = unit
            .get("job_id")
            .and_then(|j| j.as_str())
            .map(str::to_owned);
        let fail = |reason| ChainBreak {
            index,
            job_id: job_id.clone(),
            reason,
        };
        let obj = unit
            .as_object()
            .ok_or_else(|| fail(BreakReason::Malformed))?;
        let prev = obj.get("prev_hash").and_then(|v| v.as_str());
        let hash = obj.get("hash").and_then(|v| v.as_str());
        let (Some(prev), Some(hash)) = (prev, hash) else {
            return Err(fail(BreakReason::Malformed));
        };
        if obj.len() != BODY.len() + 2 || BODY.iter().any(|f| !obj.contains_key(*f)) {
            return Err(fail(BreakReason::Malformed));
        }
        let body: serde_json::Map<String, serde_json::Value> = BODY
            .iter()
            .map(|f| ((*f).to_owned(), obj[*f].clone()))
            .collect();
        if obj["unit"].as_u64() != Some(head.units + 1) {
            return Err(fail(BreakReason::Sequence));
        }
        if prev != head.hash {
            return Err(fail(BreakReason::Link));
        }
        if link_hash(prev, &serde_json::Value::Object(body)) != hash {
            return Err(fail(BreakReason::Hash));
        }
        head = ChainHead {
            units: head.units + 1,
            hash: hash.to_owned(),
        };
    }
    Ok(head)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn flipping_any_byte_fails_at_that_unit(
        n in 1usize..12,
        pick in any::<prop::sample::Index>(),
        pos in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let mut units = ledger(n);
        let i = pick.index(n);
        let p = pos.index(units[i].len());
        units[i][p] ^= mask;
        let slices: Vec<&[u8]> = units.iter().map(Vec::as_slice).collect();
        let err = verify_chain_bytes(&slices).unwrap_err();
        prop_assert_eq!(err.index, i);
    }

    /// Checking units one by one (on any core) then linking them gives the verdict of the
    /// chain's rules written plainly (`reference`), whatever was tampered with.
    #[test]
    fn split_verification_agrees_with_verify_chain(
        n in 0usize..10,
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..7), 0..3),
    ) {
        let units = ledger(n);
        let mut values: Vec<serde_json::Value> =
            units.iter().map(|u| serde_json::from_slice(u).unwrap()).collect();
        for (pick, kind) in edits {
            if values.is_empty() { break; }
            let i = pick.index(values.len());
            match kind {
                0 => { values.remove(i); }
                1 => values[i]["unit"] = serde_json::json!(77),
                2 => values[i]["prev_hash"] = serde_json::json!("00"),
                3 => { values[i].as_object_mut().unwrap().remove("hash"); }
                4 => values[i]["unit"] = serde_json::json!("one"),
                5 => values[i]["extra"] = serde_json::json!(1),
                _ => { let v = values[i].clone(); values.insert(i, v); }
            }
        }
        let whole = reference(&values);
        let split = link_units(values.iter().map(check_unit));
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(whole, verify_chain(values.iter()));
    }
}
