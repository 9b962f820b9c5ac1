//! Plans and their usage limits.

use std::{fmt, str::FromStr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a customer pays for; it caps completed jobs per billing period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Plan {
    /// The plan of every user without a subscription.
    #[default]
    Free,
    /// The paid plan with a larger limit.
    Pro,
    /// No limit.
    Enterprise,
}

impl Plan {
    /// The plan's name as the API writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Free => "FREE",
            Self::Pro => "PRO",
            Self::Enterprise => "ENTERPRISE",
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Plan {
    type Err = UnknownPlan;
    fn from_str(s: &str) -> Result<Self, UnknownPlan> {
        match s.to_ascii_uppercase().as_str() {
            "FREE" => Ok(Self::Free),
            "PRO" => Ok(Self::Pro),
            "ENTERPRISE" => Ok(Self::Enterprise),
            _ => Err(UnknownPlan(s.to_owned())),
        }
    }
}

/// A plan name that is none of FREE, PRO, ENTERPRISE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown plan `{0}`")]
pub struct UnknownPlan(pub String);

/// The configured limits (`RUNLEDGER_FREE_LIMIT`, `RUNLEDGER_PRO_LIMIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Units a FREE user may consume in a period.
    pub free: u64,
    /// Units a PRO user may consume in a period.
    pub pro: u64,
}

impl Default for PlanLimits {
    fn default() -> Self {
        Self {
            free: 100,
            pro: 10_000,
        }
    }
}

impl PlanLimits {
    /// The limit of `plan`; `None` is unlimited.
    pub const fn limit(&self, plan: Plan) -> Option<u64> {
        match plan {
            Plan::Free => Some(self.free),
            Plan::Pro => Some(self.pro),
            Plan::Enterprise => None,
        }
    }
}

/// How many jobs of one user may hold a dispatch slot at once (queued in Redis or running),
/// per plan: `RUNLEDGER_FREE_CONCURRENCY`, `RUNLEDGER_PRO_CONCURRENCY`,
/// `RUNLEDGER_ENTERPRISE_CONCURRENCY`; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanConcurrency {
    /// FREE (default 2).
    pub free: Option<u32>,
    /// PRO (default 20).
    pub pro: Option<u32>,
    /// ENTERPRISE (default unlimited).
    pub enterprise: Option<u32>,
}

impl Default for PlanConcurrency {
    fn default() -> Self {
        Self {
            free: Some(2),
            pro: Some(20),
            enterprise: None,
        }
    }
}

impl PlanConcurrency {
    /// The concurrency limit of `plan`; `None` is unlimited.
    pub const fn limit(&self, plan: Plan) -> Option<u32> {
        match plan {
            Plan::Free => self.free,
            Plan::Pro => self.pro,
            Plan::Enterprise => self.enterprise,
        }
    }
}

/// A user's share of dispatch turns when several have jobs ready, per plan
/// (`RUNLEDGER_FREE_WEIGHT`, …; defaults 1, 2, 4): a turn hands out up to `weight` jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanWeights {
    /// FREE (default 1).
    pub free: u32,
    /// PRO (default 2).
    pub pro: u32,
    /// ENTERPRISE (default 4).
    pub enterprise: u32,
}

impl Default for PlanWeights {
    fn default() -> Self {
        Self {
            free: 1,
            pro: 2,
            enterprise: 4,
        }
    }
}

impl PlanWeights {
    /// The weight of `plan` (at least 1).
    pub fn weight(&self, plan: Plan) -> u32 {
        match plan {
            Plan::Free => self.free,
            Plan::Pro => self.pro,
            Plan::Enterprise => self.enterprise,
        }
        .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_configuration_and_enterprise_is_unlimited() {
        let limits = PlanLimits::default();
        assert_eq!(limits.limit(Plan::Free), Some(100));
        assert_eq!(limits.limit(Plan::Pro), Some(10_000));
        assert_eq!(limits.limit(Plan::Enterprise), None);
        let limits = PlanLimits { free: 3, pro: 7 };
        assert_eq!(limits.limit(Plan::Free), Some(3));
        assert_eq!(limits.limit(Plan::Pro), Some(7));
    }

    #[test]
    fn concurrency_and_weights_default_per_plan() {
        let c = PlanConcurrency::default();
        assert_eq!(c.limit(Plan::Free), Some(2));
        assert_eq!(c.limit(Plan::Pro), Some(20));
        assert_eq!(c.limit(Plan::Enterprise), None);
        let w = PlanWeights::default();
        assert_eq!(
            [Plan::Free, Plan::Pro, Plan::Enterprise].map(|p| w.weight(p)),
            [1, 2, 4]
        );
        let zero = PlanWeights { free: 0, ..w };
        assert_eq!(zero.weight(Plan::Free), 1);
    }

    #[test]
    fn plans_serialize_in_capitals() {
        assert_eq!(serde_json::to_string(&Plan::Pro).unwrap(), "\"PRO\"");
        assert_eq!("enterprise".parse::<Plan>(), Ok(Plan::Enterprise));
        assert!("gold".parse::<Plan>().is_err());
    }
}
