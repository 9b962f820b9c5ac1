//! The command API over HTTP against a real Postgres: a fresh database and port per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod billing;
mod bodies;
mod helpers;
mod jobs;
mod matrix;
mod periods;
mod quota;
