//! The Usage aggregate: one user's ledger for one billing period. Units are reserved at
//! submission, consumed when the job completes, released when it cannot complete.
//!
//! The state holds only what is in flight (open reservations) and counts: its size and its
//! snapshot do not grow with the month. A job is reserved at most once because its
//! reservation commits in the same transaction as the job's first event, which the store
//! keys uniquely (ADR 0014); consuming or releasing takes the reservation out, so each
//! reservation settles once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    chain::{self, GENESIS},
    event::{Decider, event_enum},
    ids::{JobId, UserId},
    period::BillingPeriod,
    plan::Plan,
};

/// Names one Usage aggregate: a user and the start of one of their billing periods.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct UsageKey {
    /// The user.
    pub user_id: UserId,
    /// The first instant of the period.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub period_start: DateTime<Utc>,
}

impl UsageKey {
    /// The key of `user`'s ledger for `period`.
    pub fn new(user_id: UserId, period: &BillingPeriod) -> Self {
        Self {
            user_id,
            period_start: period.start,
        }
    }

    /// Reads an aggregate id back; `None` for one that is not a usage key.
    pub fn from_aggregate_id(id: &str) -> Option<Self> {
        let (user, start) = id.split_once(':')?;
        let user_id = UserId::parse(user).ok()?;
        let period_start = DateTime::parse_from_rfc3339(start)
            .ok()?
            .with_timezone(&Utc);
        let key = Self {
            user_id,
            period_start,
        };
        (key.aggregate_id() == id).then_some(key)
    }

    /// The prefix of every ledger id of `user`.
    pub fn prefix_of(user: UserId) -> String {
        format!("{user}:")
    }

    /// The aggregate id in the event store: `<user uuid>:<period start, RFC 3339 seconds>`.
    pub fn aggregate_id(&self) -> String {
        let mut id = String::with_capacity(57);
        let mut user = uuid::Uuid::encode_buffer();
        id.push_str(self.user_id.as_uuid().hyphenated().encode_lower(&mut user));
        id.push(':');
        crate::time::push_seconds(&mut id, &self.period_start);
        id
    }
}

/// Hold a unit for a job about to be submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReserveUnit {
    /// The job.
    pub job_id: JobId,
    /// Its owner.
    pub user_id: UserId,
    /// The period the job is submitted in.
    pub period: BillingPeriod,
    /// The user's plan now.
    pub plan: Plan,
    /// That plan's configured limit; `None` is unlimited.
    pub limit: Option<u64>,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub now: DateTime<Utc>,
}

/// Count the unit of a completed job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CommitUnit {
    /// The job.
    pub job_id: JobId,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub now: DateTime<Utc>,
}

/// Why a reservation is given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The job was canceled.
    Canceled,
    /// The job ran out of attempts or failed fatally.
    DeadLettered,
    /// The job was never submitted (a crash between reservation and submission).
    Orphaned,
}

/// Give back the unit of a job that will not complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReleaseUnit {
    /// The job.
    pub job_id: JobId,
    /// Why.
    pub reason: ReleaseReason,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub now: DateTime<Utc>,
}

/// Stop taking reservations in the period (billing has read it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClosePeriod {
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub now: DateTime<Utc>,
}

/// Every command of the Usage aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[allow(missing_docs)]
pub enum UsageCommand {
    Reserve(ReserveUnit),
    Commit(CommitUnit),
    Release(ReleaseUnit),
    Close(ClosePeriod),
}

/// A unit is held for a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UnitReserved {
    /// The job.
    pub job_id: JobId,
    /// The user.
    pub user_id: UserId,
    /// The period.
    pub period: BillingPeriod,
    /// The plan at reservation.
    pub plan: Plan,
    /// The plan's limit at reservation; `None` is unlimited.
    pub limit: Option<u64>,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub reserved_at: DateTime<Utc>,
}

/// A completed job's unit is counted: one link of the ledger's hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnitConsumed {
    /// The user.
    pub user_id: UserId,
    /// The period's first instant.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub period_start: DateTime<Utc>,
    /// The job.
    pub job_id: JobId,
    /// 1 for the period's first unit, one more for each next.
    pub unit: u64,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub consumed_at: DateTime<Utc>,
    /// The previous unit's hash, or the genesis hash.
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and the canonical JSON of the other fields.
    pub hash: String,
}

/// A reservation is given back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UnitReleased {
    /// The job.
    pub job_id: JobId,
    /// Why.
    pub reason: ReleaseReason,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub released_at: DateTime<Utc>,
}

/// The period takes no more reservations; jobs already holding one may still complete in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PeriodClosed {
    /// Units consumed at closing.
    pub units: u64,
    /// Reservations still open at closing.
    pub pending: u64,
    /// When.
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    pub closed_at: DateTime<Utc>,
}

event_enum!(
    /// Every event of the Usage aggregate.
    UsageEvent {
        UnitReserved,
        UnitConsumed,
        UnitReleased,
        PeriodClosed,
    }
);

/// Why the Usage aggregate refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UsageError {
    /// The plan's limit is reached: HTTP 402.
    #[error("plan limit of {limit} units reached ({consumed} consumed, {reserved} reserved)")]
    QuotaExceeded {
        /// The limit.
        limit: u64,
        /// Units consumed.
        consumed: u64,
        /// Units held by jobs in flight.
        reserved: u64,
    },
    /// The period is closed for new reservations.
    #[error("the billing period is closed")]
    PeriodClosed,
    /// The reservation names another user or period than this ledger's, or a time outside it.
    #[error("the reservation does not belong to this ledger's user and period")]
    WrongLedger,
    /// No open reservation for this job: never made, or already consumed or released.
    #[error("no open reservation for job {0}")]
    NotReserved(JobId),
}

/// The state of a ledger that has seen a reservation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageState {
    /// The user.
    pub user_id: UserId,
    /// The period.
    pub period: BillingPeriod,
    /// The plan at the latest reservation.
    pub plan: Plan,
    /// The limit at the latest reservation.
    pub limit: Option<u64>,
    /// Open reservations and when each was made.
    pub reserved: BTreeMap<JobId, DateTime<Utc>>,
    /// Units consumed. Snapshots written before this was a count held the consumed jobs'
    /// ids; those read as their number.
    #[serde(deserialize_with = "count::deserialize")]
    pub consumed: u64,
    /// The last consumed unit's hash.
    pub chain_head: String,
    /// Whether the period takes no more reservations.
    pub closed: bool,
}

impl UsageState {
    /// Units consumed.
    pub fn consumed_units(&self) -> u64 {
        self.consumed
    }

    /// Units held by jobs in flight.
    pub fn reserved_units(&self) -> u64 {
        self.reserved.len() as u64
    }
}

/// The Usage aggregate; its default is a ledger with no reservation yet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    state: Option<UsageState>,
}

impl Usage {
    /// The ledger's state, `None` before the first reservation.
    pub fn state(&self) -> Option<&UsageState> {
        self.state.as_ref()
    }

    /// Reservations older than `cutoff`: candidates for the sweeper, which releases those
    /// whose job was never submitted.
    pub fn reservations_before(&self, cutoff: DateTime<Utc>) -> Vec<JobId> {
        self.state.as_ref().map_or_else(Vec::new, |s| {
            s.reserved
                .iter()
                .filter(|(_, at)| **at < cutoff)
                .map(|(id, _)| *id)
                .collect()
        })
    }

    fn reserve(&self, c: ReserveUnit) -> Result<Vec<UsageEvent>, UsageError> {
        if !c.period.contains(c.now) {
            return Err(UsageError::WrongLedger);
        }
        if let Some(s) = &self.state {
            // A ledger is its user and its period's start. Its end may be a guess (a paid
            // period rolled forward before the renewal arrived): a reservation that carries
            // the real end corrects it instead of being refused or forking a second ledger.
            if s.user_id != c.user_id || s.period.start != c.period.start {
                return Err(UsageError::WrongLedger);
            }
            if s.reserved.contains_key(&c.job_id) {
                return Ok(vec![]);
            }
            if s.closed {
                return Err(UsageError::PeriodClosed);
            }
            if let Some(limit) = c.limit {
                let (consumed, reserved) = (s.consumed_units(), s.reserved_units());
                if consumed + reserved >= limit {
                    return Err(UsageError::QuotaExceeded {
                        limit,
                        consumed,
                        reserved,
                    });
                }
            }
        } else if c.limit == Some(0) {
            return Err(UsageError::QuotaExceeded {
                limit: 0,
                consumed: 0,
                reserved: 0,
            });
        }
        Ok(vec![
            UnitReserved {
                job_id: c.job_id,
                user_id: c.user_id,
                period: c.period,
                plan: c.plan,
                limit: c.limit,
                reserved_at: c.now,
            }
            .into(),
        ])
    }

    fn commit(&self, c: CommitUnit) -> Result<Vec<UsageEvent>, UsageError> {
        let s = self
            .state
            .as_ref()
            .ok_or(UsageError::NotReserved(c.job_id))?;
        // A settled reservation is gone: a second commit or a commit after a release is
        // refused as not reserved, and counts nothing.
        if !s.reserved.contains_key(&c.job_id) {
            return Err(UsageError::NotReserved(c.job_id));
        }
        Ok(vec![consumed_unit(s, c.job_id, c.now).into()])
    }

    fn release(&self, c: ReleaseUnit) -> Result<Vec<UsageEvent>, UsageError> {
        let s = self
            .state
            .as_ref()
            .ok_or(UsageError::NotReserved(c.job_id))?;
        if !s.reserved.contains_key(&c.job_id) {
            return Err(UsageError::NotReserved(c.job_id));
        }
        Ok(vec![
            UnitReleased {
                job_id: c.job_id,
                reason: c.reason,
                released_at: c.now,
            }
            .into(),
        ])
    }
}

/// The next link of the chain for `job_id`.
fn consumed_unit(s: &UsageState, job_id: JobId, now: DateTime<Utc>) -> UnitConsumed {
    let mut unit = UnitConsumed {
        user_id: s.user_id,
        period_start: s.period.start,
        job_id,
        unit: s.consumed_units() + 1,
        consumed_at: now,
        prev_hash: s.chain_head.clone(),
        hash: String::new(),
    };
    unit.hash = unit_hash(&unit);
    unit
}

/// The hash `unit` should carry, from its other fields.
pub fn unit_hash(unit: &UnitConsumed) -> String {
    let body = serde_json::json!({
        "consumed_at": unit.consumed_at,
        "job_id": unit.job_id,
        "period_start": unit.period_start,
        "unit": unit.unit,
        "user_id": unit.user_id,
    });
    chain::link_hash(&unit.prev_hash, &body)
}

impl Decider for Usage {
    type Command = UsageCommand;
    type Event = UsageEvent;
    type Error = UsageError;

    fn decide(&self, command: UsageCommand) -> Result<Vec<UsageEvent>, UsageError> {
        match command {
            UsageCommand::Reserve(c) => self.reserve(c),
            UsageCommand::Commit(c) => self.commit(c),
            UsageCommand::Release(c) => self.release(c),
            UsageCommand::Close(c) => match &self.state {
                Some(s) if s.closed => Ok(vec![]),
                Some(s) => Ok(vec![
                    PeriodClosed {
                        units: s.consumed_units(),
                        pending: s.reserved_units(),
                        closed_at: c.now,
                    }
                    .into(),
                ]),
                // A period nobody used is closed by having no ledger: nothing to record.
                None => Ok(vec![]),
            },
        }
    }

    fn evolve(&mut self, event: &UsageEvent) {
        match event {
            UsageEvent::UnitReserved(e) => {
                let s = self.state.get_or_insert_with(|| UsageState {
                    user_id: e.user_id,
                    period: e.period,
                    plan: e.plan,
                    limit: e.limit,
                    reserved: BTreeMap::new(),
                    consumed: 0,
                    chain_head: GENESIS.to_owned(),
                    closed: false,
                });
                s.period = e.period;
                s.plan = e.plan;
                s.limit = e.limit;
                s.reserved.insert(e.job_id, e.reserved_at);
            }
            UsageEvent::UnitConsumed(e) => {
                if let Some(s) = self.state.as_mut() {
                    s.reserved.remove(&e.job_id);
                    s.consumed += 1;
                    s.chain_head.clone_from(&e.hash);
                }
            }
            UsageEvent::UnitReleased(e) => {
                if let Some(s) = self.state.as_mut() {
                    s.reserved.remove(&e.job_id);
                }
            }
            UsageEvent::PeriodClosed(_) => {
                if let Some(s) = self.state.as_mut() {
                    s.closed = true;
                }
            }
        }
    }
}

/// Reads a count written as a number, or as the list of what it counted.
mod count {
    use std::fmt;

    use serde::{
        Deserializer,
        de::{IgnoredAny, SeqAccess, Visitor},
    };

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Count)
    }

    struct Count;

    impl<'de> Visitor<'de> for Count {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a count or a list")
        }

        fn visit_u64<E>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
            let mut n = 0;
            while seq.next_element::<IgnoredAny>()?.is_some() {
                n += 1;
            }
            Ok(n)
        }
    }
}
