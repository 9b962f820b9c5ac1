//! Given/when/then tests of every command, and property tests of the invariants.

mod chain_props;
#[cfg(feature = "cqrs")]
mod cqrs;
mod job;
mod report;
mod subscription;
mod time_props;
mod usage;
mod usage_props;

use std::fmt::Debug;

use chrono::{DateTime, Duration, Utc};

use crate::{
    event::Decider,
    ids::{CorrelationId, JobId, UserId},
    period::BillingPeriod,
    usage::UsageKey,
};

/// `given(events).when(command).then(expected events)` or `.then_err(expected error)`.
pub struct Given<D: Decider> {
    state: D,
}

pub fn given<D: Decider>(events: impl IntoIterator<Item = impl Into<D::Event>>) -> Given<D> {
    let events: Vec<D::Event> = events.into_iter().map(Into::into).collect();
    Given {
        state: D::replay(events.iter()),
    }
}

pub struct When<D: Decider> {
    result: Result<Vec<D::Event>, D::Error>,
}

impl<D: Decider> Given<D> {
    pub fn when(self, command: impl Into<D::Command>) -> When<D> {
        When {
            result: self.state.decide(command.into()),
        }
    }
}

impl<D: Decider> When<D>
where
    D::Event: PartialEq + Debug,
    D::Error: PartialEq + Debug,
{
    #[track_caller]
    pub fn then(self, expected: Vec<D::Event>) {
        assert_eq!(self.result, Ok(expected));
    }

    #[track_caller]
    pub fn then_err(self, expected: D::Error) {
        assert_eq!(self.result, Err(expected));
    }

    /// The events, for assertions on single fields.
    #[track_caller]
    pub fn events(self) -> Vec<D::Event> {
        match self.result {
            Ok(events) => events,
            Err(e) => panic!("expected events, got {e:?}"),
        }
    }
}

pub fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

pub fn t0() -> DateTime<Utc> {
    at("2026-11-10T12:00:00Z")
}

pub fn later(secs: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(secs)
}

pub fn user() -> UserId {
    UserId::parse("0b5c8f6e-2f1d-4c1a-9a61-3f3f0b7a1e01").unwrap()
}

pub fn other_user() -> UserId {
    UserId::parse("0b5c8f6e-2f1d-4c1a-9a61-3f3f0b7a1e02").unwrap()
}

pub fn job_id(n: u128) -> JobId {
    JobId::from_uuid(uuid::Uuid::from_u128(
        0x1000_0000_0000_4000_8000_0000_0000_0000 + n,
    ))
}

pub fn period() -> BillingPeriod {
    BillingPeriod::calendar_month(t0())
}

pub fn usage_key() -> UsageKey {
    UsageKey::new(user(), &period())
}

pub fn corr() -> CorrelationId {
    CorrelationId::parse("corr-1").unwrap()
}
