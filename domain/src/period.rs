//! Billing periods: calendar months (UTC) on FREE, Stripe's period on paid plans.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::ParseError;

/// A half-open interval `[start, end)` of time in which usage is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct BillingPeriod {
    /// First instant of the period.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub start: DateTime<Utc>,
    /// First instant after the period.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub end: DateTime<Utc>,
}

impl BillingPeriod {
    /// A period from Stripe; `None` unless `start < end`.
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> Option<Self> {
        (start < end).then_some(Self { start, end })
    }

    /// The calendar month (UTC) that contains `at`.
    pub fn calendar_month(at: DateTime<Utc>) -> Self {
        let month = Month {
            year: at.year(),
            month: at.month(),
        };
        month.period()
    }

    /// Whether `at` falls in the period.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.end
    }

    /// The period of the same length that contains `at`, stepping forward from this one.
    /// Stands in for a paid period whose renewal webhook has not arrived yet.
    pub fn rolled_forward_to(&self, at: DateTime<Utc>) -> Self {
        if at < self.end {
            return *self;
        }
        let len = self.end - self.start;
        let steps = (at - self.start).num_seconds() / len.num_seconds().max(1);
        let start = self.start + len * i32::try_from(steps).unwrap_or(i32::MAX);
        Self {
            start,
            end: start + len,
        }
    }
}

/// A calendar month, written `YYYY-MM` (audit filters, report rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    year: i32,
    month: u32,
}

impl Month {
    /// Parses `YYYY-MM`.
    ///
    /// # Errors
    /// [`ParseError::Month`].
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let (y, m) = s.split_once('-').ok_or(ParseError::Month)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(ParseError::Month);
        }
        let year = y.parse().map_err(|_| ParseError::Month)?;
        let month = m.parse().map_err(|_| ParseError::Month)?;
        if !(1..=12).contains(&month) {
            return Err(ParseError::Month);
        }
        Ok(Self { year, month })
    }

    /// The month that contains `at`.
    pub fn of(at: DateTime<Utc>) -> Self {
        Self {
            year: at.year(),
            month: at.month(),
        }
    }

    /// The month after this one.
    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The month as a UTC billing period.
    pub fn period(self) -> BillingPeriod {
        BillingPeriod {
            start: self.first_instant(),
            end: self.next().first_instant(),
        }
    }

    fn first_instant(self) -> DateTime<Utc> {
        let date = NaiveDate::from_ymd_opt(self.year, self.month, 1).unwrap_or(NaiveDate::MIN);
        Utc.from_utc_datetime(&date.and_time(chrono::NaiveTime::MIN))
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn calendar_months_are_utc_and_half_open() {
        let p = BillingPeriod::calendar_month(t("2026-12-31T23:59:59Z"));
        assert_eq!(p.start, t("2026-12-01T00:00:00Z"));
        assert_eq!(p.end, t("2027-01-01T00:00:00Z"));
        assert!(p.contains(t("2026-12-01T00:00:00Z")));
        assert!(!p.contains(t("2027-01-01T00:00:00Z")));
        let feb = BillingPeriod::calendar_month(t("2028-02-10T00:00:00Z"));
        assert_eq!(feb.end - feb.start, chrono::Duration::days(29));
    }

    #[test]
    fn months_parse_and_print() {
        let m = Month::parse("2026-11").unwrap();
        assert_eq!(m.to_string(), "2026-11");
        assert_eq!(m.next().to_string(), "2026-12");
        assert_eq!(
            Month::parse("2026-12").unwrap().next().to_string(),
            "2027-01"
        );
        for bad in ["2026-13", "2026-1", "26-01", "2026/01", "x"] {
            assert_eq!(Month::parse(bad), Err(ParseError::Month), "{bad}");
        }
    }

    #[test]
    fn stripe_periods_roll_forward_by_their_length() {
        let p = BillingPeriod::new(t("2026-01-10T00:00:00Z"), t("2026-02-10T00:00:00Z")).unwrap();
        assert_eq!(p.rolled_forward_to(t("2026-01-20T00:00:00Z")), p);
        let next = p.rolled_forward_to(t("2026-02-10T00:00:00Z"));
        assert_eq!(next.start, p.end);
        assert!(next.contains(t("2026-02-10T00:00:00Z")));
        let later = p.rolled_forward_to(t("2026-06-01T00:00:00Z"));
        assert!(later.contains(t("2026-06-01T00:00:00Z")));
        assert!(BillingPeriod::new(p.end, p.start).is_none());
    }
}
