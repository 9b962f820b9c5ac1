//! runledger's business core: the Job, Usage and Subscription aggregates, their commands and
//! events, plans, billing periods, the job envelope, the retry policy and the usage hash chain.
//!
//! Pure: no I/O, no clock, no randomness. Time, ids, the user's plan and limit arrive inside
//! each command. Every rule is a [`Decider`]: `decide(&state, command) -> events` and
//! `evolve(state, event)`. With the `cqrs` feature the aggregates also implement cqrs-es's
//! `Aggregate` by delegating to those two functions.
//!
//! # Layout
//! - [`ids`], [`task`], [`plan`], [`period`], [`retry`]: values parsed at the edge.
//! - [`job`], [`usage`], [`subscription`], [`customer`]: the aggregates; [`report`]: usage
//!   reported to Stripe, recorded on the subscription.
//! - [`chain`]: the usage ledger's hash chain and its verifier.
//! - [`process`]: which usage command follows which job event.
//! - [`payload`]: each built-in task's payload, checked at submit.
//! - [`envelope`]: what workers receive; [`schema`]: the JSON Schemas.
//! - [`time`]: event times read back without chrono's general parser.

pub mod chain;
#[cfg(feature = "cqrs")]
pub mod concurrency;
pub mod cqrs;
pub mod customer;
pub mod envelope;
pub mod error;
pub mod event;
pub mod ids;
pub mod job;
pub mod payload;
pub mod period;
pub mod plan;
pub mod process;
pub mod report;
pub mod retry;
pub mod schema;
pub mod subscription;
pub mod task;
pub mod time;
pub mod usage;

#[cfg(test)]
mod tests;

pub use event::Decider;
