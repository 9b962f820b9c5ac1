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
    fn plans_serialize_in_capitals() {
        assert_eq!(serde_json::to_string(&Plan::Pro).unwrap(), "\"PRO\"");
        assert_eq!("enterprise".parse::<Plan>(), Ok(Plan::Enterprise));
        assert!("gold".parse::<Plan>().is_err());
    }
}
