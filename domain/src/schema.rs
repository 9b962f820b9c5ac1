//! JSON Schemas of the envelope, every command and every event, generated from the types.
//! `runledger schemas write` writes them under `schemas/`; a test fails when they drift.

use schemars::{JsonSchema, schema_for};

use crate::{
    envelope::JobEnvelope,
    job::{self, *},
    subscription::{self, *},
    usage::{self, *},
};

/// One schema file: its path under `schemas/` and its pretty-printed JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFile {
    /// Path relative to `schemas/`, such as `events/JobSubmitted.json`.
    pub path: String,
    /// The schema, pretty-printed, with a final newline.
    pub json: String,
}

fn file<T: JsonSchema>(path: String) -> SchemaFile {
    let schema = schema_for!(T);
    let mut json = serde_json::to_string_pretty(&schema).unwrap_or_default();
    json.push('\n');
    SchemaFile { path, json }
}

macro_rules! files {
    ($dir:literal: $($t:ty),+ $(,)?) => {
        vec![$(file::<$t>(format!("{}/{}.json", $dir, stringify!($t).rsplit("::").next().unwrap_or_default()))),+]
    };
}

/// An event's schema, marked with the `event_type` and `event_version` stored beside it.
fn event_file<T: JsonSchema>(event_type: &str) -> SchemaFile {
    let mut schema = schema_for!(T);
    schema.insert("x-event-type".to_owned(), event_type.into());
    schema.insert(
        "x-event-version".to_owned(),
        crate::event::EVENT_VERSION.into(),
    );
    let mut json = serde_json::to_string_pretty(&schema).unwrap_or_default();
    json.push('\n');
    SchemaFile {
        path: format!("events/{event_type}.json"),
        json,
    }
}

/// Every schema file, in a stable order.
pub fn all() -> Vec<SchemaFile> {
    let mut out = vec![file::<JobEnvelope>("envelope.json".to_owned())];
    out.extend(files!("commands":
        job::SubmitJob, job::StartJob, job::HeartbeatJob, job::CompleteJob, job::FailJob,
        job::ExpireJob,
        job::CancelJob, usage::ReserveUnit, usage::CommitUnit, usage::ReleaseUnit,
        usage::ClosePeriod, subscription::ApplyStripeEvent,
    ));
    macro_rules! events {
        ($($t:ident),+ $(,)?) => { vec![$(event_file::<$t>(stringify!($t))),+] };
    }
    out.extend(events!(
        JobSubmitted,
        JobStarted,
        JobHeartbeat,
        JobCompleted,
        JobFailed,
        JobRetryScheduled,
        JobDeadLettered,
        JobCanceled,
        UnitReserved,
        UnitConsumed,
        UnitReleased,
        PeriodClosed,
        SubscriptionChanged,
        SubscriptionEnded,
        InvoicePaid,
        PaymentFailed,
        StripeEventSkipped,
    ));
    out
}
