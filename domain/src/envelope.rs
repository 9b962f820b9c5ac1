//! The job envelope: what a worker in any language receives from the queue.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    ids::{CorrelationId, JobId, UserId},
    retry::Attempt,
    task::TaskType,
};

/// `{"job_id","attempt","correlation_id","task_type","meta":{"user_id"},"payload"}`, in that
/// order: the byte layout is a contract with workers outside this codebase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobEnvelope {
    /// The job.
    pub job_id: JobId,
    /// 1 on the first run, one more on each retry.
    pub attempt: Attempt,
    /// Carried into every event, log line and span of the job.
    pub correlation_id: CorrelationId,
    /// Selects the executor.
    pub task_type: TaskType,
    /// Who the job belongs to.
    pub meta: EnvelopeMeta,
    /// The executor's input, as submitted.
    pub payload: serde_json::Value,
}

/// The envelope's `meta` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EnvelopeMeta {
    /// The job's owner.
    pub user_id: UserId,
    /// The W3C trace context of the dispatch (`00-<trace id>-<span id>-<flags>`), present
    /// when traces are exported: a worker in any language continues the job's trace from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_bytes_match_the_contract() {
        let env = JobEnvelope {
            job_id: JobId::parse("11111111-2222-4333-8444-555555555555").unwrap(),
            attempt: Attempt::FIRST,
            correlation_id: CorrelationId::parse("req-1").unwrap(),
            task_type: TaskType::parse("browser.screenshot").unwrap(),
            meta: EnvelopeMeta {
                user_id: UserId::parse("66666666-7777-4888-9999-000000000000").unwrap(),
                traceparent: None,
            },
            payload: serde_json::json!({"url": "http://example.test/"}),
        };
        let bytes = serde_json::to_string(&env).unwrap();
        assert_eq!(
            bytes,
            r#"{"job_id":"11111111-2222-4333-8444-555555555555","attempt":1,"correlation_id":"req-1","task_type":"browser.screenshot","meta":{"user_id":"66666666-7777-4888-9999-000000000000"},"payload":{"url":"http://example.test/"}}"#
        );
        let back: JobEnvelope = serde_json::from_str(&bytes).unwrap();
        assert_eq!(back, env);
    }
}
