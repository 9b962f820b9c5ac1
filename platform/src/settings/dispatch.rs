//! The dispatcher's fairness: concurrency limits and turn weights per plan, and how many
//! envelopes a ready queue may hold at once.

use domain::plan::{PlanConcurrency, PlanWeights};

use super::{SettingsError, bad, number, within};

/// How the dispatcher shares the workers between users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchSettings {
    /// `RUNLEDGER_FREE_CONCURRENCY`, `RUNLEDGER_PRO_CONCURRENCY`,
    /// `RUNLEDGER_ENTERPRISE_CONCURRENCY` (defaults 2, 20, `unlimited`; 1 to 100000 or
    /// `unlimited`): a user's jobs queued in Redis or running at once.
    pub concurrency: PlanConcurrency,
    /// `RUNLEDGER_FREE_WEIGHT`, `RUNLEDGER_PRO_WEIGHT`, `RUNLEDGER_ENTERPRISE_WEIGHT`
    /// (defaults 1, 2, 4; 1 to 100): jobs a user gets per turn of the round-robin.
    pub weights: PlanWeights,
    /// `RUNLEDGER_DISPATCH_WINDOW` (default 32, 1 to 10000): envelopes a ready queue holds at
    /// most; the rest wait in the dispatcher's per-user backlog, so a newly arriving user's
    /// job waits behind at most this many.
    pub window: usize,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            concurrency: PlanConcurrency::default(),
            weights: PlanWeights::default(),
            window: 32,
        }
    }
}

/// Reads the dispatch settings.
pub(super) fn dispatch(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<DispatchSettings, SettingsError> {
    let d = DispatchSettings::default();
    let limit = |var: &'static str, default: Option<u32>| match get(var).as_deref().map(str::trim) {
        Some("unlimited") => Ok(None),
        None | Some("") => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .map(Some)
            .ok_or_else(|| {
                bad(
                    var,
                    "must be a whole number from 1 to 100000, or `unlimited`",
                )
            }),
    };
    let weight = |var: &'static str, default: u32| {
        within(
            number(get(var).as_deref(), var, default.into())?,
            var,
            1..=100,
        )
        .map(|n| u32::try_from(n).unwrap_or(1))
    };
    Ok(DispatchSettings {
        concurrency: PlanConcurrency {
            free: limit("RUNLEDGER_FREE_CONCURRENCY", d.concurrency.free)?,
            pro: limit("RUNLEDGER_PRO_CONCURRENCY", d.concurrency.pro)?,
            enterprise: limit("RUNLEDGER_ENTERPRISE_CONCURRENCY", d.concurrency.enterprise)?,
        },
        weights: PlanWeights {
            free: weight("RUNLEDGER_FREE_WEIGHT", d.weights.free)?,
            pro: weight("RUNLEDGER_PRO_WEIGHT", d.weights.pro)?,
            enterprise: weight("RUNLEDGER_ENTERPRISE_WEIGHT", d.weights.enterprise)?,
        },
        window: usize::try_from(within(
            number(
                get("RUNLEDGER_DISPATCH_WINDOW").as_deref(),
                "RUNLEDGER_DISPATCH_WINDOW",
                32,
            )?,
            "RUNLEDGER_DISPATCH_WINDOW",
            1..=10_000,
        )?)
        .unwrap_or(32),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<DispatchSettings, SettingsError> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        dispatch(&|k| vars.get(k).cloned())
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(read(&[]), Ok(DispatchSettings::default()));
        let s = read(&[
            ("RUNLEDGER_FREE_CONCURRENCY", "5"),
            ("RUNLEDGER_PRO_CONCURRENCY", "unlimited"),
            ("RUNLEDGER_ENTERPRISE_CONCURRENCY", "300"),
            ("RUNLEDGER_PRO_WEIGHT", "3"),
            ("RUNLEDGER_DISPATCH_WINDOW", "8"),
        ])
        .unwrap();
        assert_eq!(s.concurrency.free, Some(5));
        assert_eq!(s.concurrency.pro, None);
        assert_eq!(s.concurrency.enterprise, Some(300));
        assert_eq!(s.weights.pro, 3);
        assert_eq!(s.window, 8);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("RUNLEDGER_FREE_CONCURRENCY", "0"),
            ("RUNLEDGER_PRO_CONCURRENCY", "lots"),
            ("RUNLEDGER_FREE_WEIGHT", "0"),
            ("RUNLEDGER_DISPATCH_WINDOW", "0"),
        ] {
            assert_eq!(read(&[(var, value)]).unwrap_err().var, var);
        }
    }
}
