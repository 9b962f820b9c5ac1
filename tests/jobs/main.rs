//! Jobs run end to end: command API → event store → dispatcher → Redis → workers (in process,
//! as a child process, and in Python) → outcomes → usage. Real Postgres and redis-server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cluster;
mod fair;
mod faults;
mod helpers;
mod python;
mod runs;
