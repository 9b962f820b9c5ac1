//! The read path end to end: command API → event store → projections → notices over NATS →
//! read API and SSE; and the relay to JetStream. Real Postgres, real nats-server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod equivalence;
mod helpers;
mod read;
mod recovery;
mod retention;
mod streams;
mod warm;
