//! Operations: one trace per job across the roles apart (an OTLP receiver written here),
//! the metrics that alerts and dashboards name, and the deployment files under `deploy/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../faults/stack.rs"]
#[allow(dead_code)]
mod stack;

mod deploy;
mod helpers;
mod metrics;
mod otlp;
mod traces;
