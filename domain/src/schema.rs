//! JSON Schemas of the envelope, every command and every event, generated from the types.
//! `runledger schemas write` writes them under `schemas/`; a test fails when they drift.

use schemars::{JsonSchema, schema_for};

use crate::{
    customer::{self, *},
    envelope::JobEnvelope,
    job::{self, *},
    payload::{
        AgentRun, BrowserExtract, BrowserPdf, BrowserScreenshot, HttpRequest, Noop, Payload, Sleep,
    },
    report::{self, *},
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

/// `value` pretty-printed with the keys of every object sorted, whatever order serde_json's
/// map keeps (a dependency turns on its `preserve_order`), so the files never churn.
pub fn pretty<T: serde::Serialize>(value: &T) -> String {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(
                    entries.into_iter().map(|(k, v)| (k, sorted(v))).collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sorted).collect())
            }
            other => other,
        }
    }
    let value = serde_json::to_value(value).unwrap_or_default();
    let mut json = serde_json::to_string_pretty(&sorted(value)).unwrap_or_default();
    json.push('\n');
    json
}

fn file<T: JsonSchema>(path: String) -> SchemaFile {
    SchemaFile {
        path,
        json: pretty(&schema_for!(T)),
    }
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
    SchemaFile {
        path: format!("events/{event_type}.json"),
        json: pretty(&schema),
    }
}

/// A payload's schema, self-contained (no `$defs`), so it can sit in the OpenAPI document.
fn payload_schema<P: Payload>() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<P>().to_value();
    if let Some(map) = schema.as_object_mut() {
        map.remove("$schema");
        map.insert("x-task-type".to_owned(), P::TASK.into());
    }
    schema
}

/// Each built-in task type with its payload's schema.
pub fn payloads() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (Noop::TASK, payload_schema::<Noop>()),
        (Sleep::TASK, payload_schema::<Sleep>()),
        (HttpRequest::TASK, payload_schema::<HttpRequest>()),
        (
            BrowserScreenshot::TASK,
            payload_schema::<BrowserScreenshot>(),
        ),
        (BrowserPdf::TASK, payload_schema::<BrowserPdf>()),
        (BrowserExtract::TASK, payload_schema::<BrowserExtract>()),
        (AgentRun::TASK, payload_schema::<AgentRun>()),
    ]
}

/// `Payload.sleep` and so on: the OpenAPI component name of a task type's payload.
pub fn payload_component(task: &str) -> String {
    format!("Payload.{task}")
}

/// The OpenAPI document with its generated parts put in: each payload's schema, and
/// `SubmitJob` as one variant per built-in task type (its `task_type` constant, its
/// payload) plus one for task types configured for workers written elsewhere.
pub fn openapi(mut doc: serde_json::Value) -> serde_json::Value {
    use serde_json::json;
    let common = json!({
        "correlation_id": {
            "type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]+$",
            "description": "Printable ASCII without spaces; the X-Correlation-Id header when absent, else generated"
        },
        "run_at": {
            "type": "string", "format": "date-time",
            "description": "RFC 3339; at most 366 days ahead; past or absent: at once"
        },
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 25, "default": 3},
        "concurrency_key": {
            "type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9._:-]+$",
            "description": "At most concurrency_limit of the caller's running jobs share this key"
        },
        "concurrency_limit": {
            "type": "integer", "minimum": 1, "maximum": 1000, "default": 1,
            "description": "Only with concurrency_key"
        }
    });
    let payloads = payloads();
    let variant = |task_type: serde_json::Value, payload: serde_json::Value| {
        let mut properties = common.clone();
        properties["task_type"] = task_type;
        properties["payload"] = payload;
        json!({
            "type": "object",
            "required": ["task_type", "payload"],
            "additionalProperties": false,
            "properties": properties,
            // A limit names its key's group: one without a key is refused. Both spellings,
            // for 2020-12 validators and for generators that read the older one.
            "dependentRequired": {"concurrency_limit": ["concurrency_key"]},
            "dependencies": {"concurrency_limit": ["concurrency_key"]},
        })
    };
    let mut variants: Vec<serde_json::Value> = payloads
        .iter()
        .map(|(task, _)| {
            variant(
                json!({"const": task}),
                json!({"$ref": format!("#/components/schemas/{}", payload_component(task))}),
            )
        })
        .collect();
    let builtin: Vec<&str> = payloads.iter().map(|(t, _)| *t).collect();
    let mut configured = variant(
        json!({
            "type": "string", "minLength": 1, "maxLength": 64,
            "pattern": "^[a-z0-9_]+(\\.[a-z0-9_]+)*$",
            "not": {"enum": builtin},
            "description": "A task type listed in RUNLEDGER_TASK_TYPES (any other is refused with 400)"
        }),
        json!({"description": "Checked by the workers that run this task type"}),
    );
    configured["x-configured-task-types"] = true.into();
    variants.push(configured);
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut())
    else {
        return doc;
    };
    for (task, schema) in payloads {
        schemas.insert(payload_component(task), schema);
    }
    schemas.insert(
        "SubmitJob".to_owned(),
        json!({
            "description": "A job: a built-in task type with its payload, or a configured one",
            "oneOf": variants,
        }),
    );
    doc
}

/// The document a deployment serves: `SubmitJob`'s variant for configured task types
/// names exactly the ones `extra` lists, or is gone when there are none.
pub fn for_catalog(mut doc: serde_json::Value, extra: &[&str]) -> serde_json::Value {
    let Some(variants) = doc
        .pointer_mut("/components/schemas/SubmitJob/oneOf")
        .and_then(|v| v.as_array_mut())
    else {
        return doc;
    };
    let configured = |v: &serde_json::Value| v.get("x-configured-task-types").is_some();
    if extra.is_empty() {
        variants.retain(|v| !configured(v));
    } else if let Some(v) = variants.iter_mut().find(|v| configured(v)) {
        v["properties"]["task_type"] = serde_json::json!({
            "enum": extra,
            "description": "A task type configured with RUNLEDGER_TASK_TYPES",
        });
    }
    doc
}

/// Every schema file, in a stable order.
pub fn all() -> Vec<SchemaFile> {
    let mut out = vec![file::<JobEnvelope>("envelope.json".to_owned())];
    for (task, schema) in payloads() {
        out.push(SchemaFile {
            path: format!("payloads/{task}.json"),
            json: pretty(&schema),
        });
    }
    out.extend(files!("commands":
        job::SubmitJob, job::StartJob, job::HeartbeatJob, job::CompleteJob, job::FailJob,
        job::ExpireJob,
        job::CancelJob, usage::ReserveUnit, usage::CommitUnit, usage::ReleaseUnit,
        usage::ClosePeriod, subscription::ApplyStripeEvent, subscription::LinkCustomer,
        report::BeginReport, report::FinishReport, customer::ClaimCustomer,
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
        CustomerLinked,
        UsageReportBegun,
        UsageReported,
        CustomerClaimed,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_document_names_the_configured_task_types_or_none() {
        let doc = openapi(serde_json::json!({"components": {"schemas": {}}}));
        let variants = |d: &serde_json::Value| {
            d.pointer("/components/schemas/SubmitJob/oneOf")
                .and_then(|v| v.as_array())
                .map_or(0, Vec::len)
        };
        assert_eq!(variants(&doc), payloads().len() + 1);
        assert!(doc.pointer("/components/schemas/Payload.sleep").is_some());
        let none = for_catalog(doc.clone(), &[]);
        assert_eq!(variants(&none), payloads().len());
        let some = for_catalog(doc, &["image.resize"]);
        assert_eq!(variants(&some), payloads().len() + 1);
        let last = some
            .pointer("/components/schemas/SubmitJob/oneOf")
            .and_then(|v| v.as_array())
            .and_then(|v| v.last())
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            last["properties"]["task_type"]["enum"],
            serde_json::json!(["image.resize"])
        );
    }
}
