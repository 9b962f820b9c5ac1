//! The command API's one error type, with every mapping to HTTP in one `match`.

use axum::{
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use domain::{
    error::ParseError,
    job::{ConflictKind, JobError},
    usage::UsageError,
};
use eventstore::StoreError;
use platform::problem::Problem;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Already a problem (auth, body parsing).
    #[error("{0:?}")]
    Problem(Problem),
    /// A value that does not parse.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The Job aggregate refused.
    #[error(transparent)]
    Job(#[from] JobError),
    /// The Usage aggregate refused.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The same Idempotency-Key with another request.
    #[error("idempotency key reused with a different request")]
    KeyReused,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        Self::Problem(p)
    }
}

fn conflict_title(kind: ConflictKind) -> &'static str {
    match kind {
        ConflictKind::JobExists => "Job already submitted",
        ConflictKind::StaleAttempt => "Stale attempt",
        ConflictKind::StartedElsewhere => "Attempt runs elsewhere",
        ConflictKind::NotRunning => "Job not running",
        ConflictKind::Finished => "Job already finished",
        ConflictKind::LeaseAlive => "Attempt still alive",
        ConflictKind::NotDue => "Job not due yet",
    }
}

fn conflict(slug: &str, title: &'static str, detail: String) -> Problem {
    Problem::new(StatusCode::CONFLICT, slug, title).detail(detail)
}

impl ApiError {
    /// The problem+json this error answers with, over HTTP or to an in-process caller.
    pub fn problem(self) -> Problem {
        match self {
            Self::Problem(p) => p,
            Self::Parse(e) => Problem::bad_request(e.to_string()),
            Self::Job(e) => {
                let Some(kind) = e.conflict() else {
                    return Problem::not_found("job");
                };
                let p = conflict(kind.slug(), conflict_title(kind), e.to_string());
                match e {
                    JobError::StaleAttempt { current, got } => p
                        .with("current_attempt", current)
                        .with("reported_attempt", got),
                    // Not `status`: RFC 9457 gives that member the HTTP status.
                    JobError::Finished { status } => p.with("job_status", status.as_str()),
                    JobError::NotDue { not_before } => p.with(
                        "not_before",
                        not_before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    ),
                    _ => p,
                }
            }
            Self::Usage(e) => match e {
                UsageError::QuotaExceeded {
                    limit,
                    consumed,
                    reserved,
                } => Problem::new(
                    StatusCode::PAYMENT_REQUIRED,
                    "quota-exceeded",
                    "Plan limit reached",
                )
                .detail(e.to_string())
                .with("limit", limit)
                .with("consumed", consumed)
                .with("reserved", reserved),
                other => {
                    tracing::error!(message = "Unexpected usage refusal.", error = %other);
                    conflict("usage-conflict", "Usage ledger refused", other.to_string())
                }
            },
            Self::KeyReused => conflict(
                "idempotency-key-reused",
                "Idempotency key reused",
                "this Idempotency-Key was used with a different request".to_owned(),
            ),
            Self::Store(StoreError::Contention(what)) => {
                tracing::warn!(message = "Command gave up under contention.", aggregate = %what);
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "contention",
                    "Too much contention",
                )
                .detail("retry the request")
            }
            Self::Store(StoreError::StorageFull) => Problem::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage-full",
                "The event store is full",
            )
            .detail("nothing was saved; retry once space is freed"),
            Self::Store(StoreError::OutcomeUnknown) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome-unknown",
                "Outcome unknown",
            )
            .detail(
                "the connection to the event store broke while committing: the request may or may \
                 not have been applied; retry it with the same Idempotency-Key to learn which",
            ),
            Self::Store(e @ (StoreError::Database(_) | StoreError::WriterStopped)) => {
                tracing::error!(message = "Store failure; nothing was saved.", error = %e);
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    "The event store is unavailable",
                )
                .detail("nothing was saved; retry the request")
            }
            Self::Store(e) => {
                tracing::error!(message = "Store failure.", error = %e);
                Problem::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let contention = [":contention", ":store-unavailable", ":outcome-unknown"]
            .iter()
            .any(|k| problem.type_uri.ends_with(k));
        let mut res = problem.into_response();
        if contention {
            res.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(e: StoreError) -> (u16, String) {
        let p = ApiError::Store(e).problem();
        (
            p.status,
            p.type_uri.rsplit(':').next().unwrap_or("").to_owned(),
        )
    }

    #[test]
    fn store_failures_say_whether_anything_was_saved() {
        assert_eq!(
            answer(StoreError::Invariant(
                "job submission produced no event".into()
            )),
            (500, "internal".to_owned()),
            "a broken invariant is opaque, not an invitation to retry"
        );
        assert_eq!(
            answer(StoreError::StorageFull),
            (507, "storage-full".to_owned())
        );
        assert_eq!(
            answer(StoreError::OutcomeUnknown),
            (503, "outcome-unknown".to_owned())
        );
        assert_eq!(
            answer(StoreError::WriterStopped),
            (503, "store-unavailable".to_owned())
        );
        assert_eq!(
            answer(StoreError::Contention("usage/x".into())),
            (503, "contention".to_owned())
        );
    }
}
