//! runledger's workers: the dispatcher that keeps the Redis `jobs:<namespace>:<type>`
//! contract filled from the event log, the worker runtime that pulls envelopes, runs them and
//! reports outcomes through a port, and the executors.

pub mod dispatcher;
pub mod executors;
pub mod fair;
pub mod local;
pub mod outbound;
pub mod queue;
pub mod report;
pub mod runtime;
pub mod ssrf;
