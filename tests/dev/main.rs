//! `runledger dev` as a child process, as a newcomer runs it: the tour over HTTP and SSE on
//! the embedded default and on the Postgres/NATS/Redis stack, data kept across a restart,
//! the README's own tour, and bad settings refused with one line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent;
mod bad_settings;
mod billing;
mod browser;
mod dashboard;
mod disk_full;
mod fair;
mod fuzz;
mod helpers;
mod openapi;
mod outbound;
mod readme;
mod tour;
