//! `GET /v1/jobs/{id}/artifacts/{name}`: an artifact the job's result lists, to the job's
//! owner only (anyone else gets the same 404 as for a job that does not exist).

use axum::{
    body::Body,
    extract::{Path, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use platform::{auth::Principal, problem::Problem};
use uuid::Uuid;

use crate::state::{AppState, customer, internal};

/// The artifact's bytes with the content type its job recorded.
///
/// # Errors
/// 404 (no such job for this user, or no such artifact), or 500.
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let user = customer(principal)?;
    let id = Uuid::parse_str(&id).map_err(|_| Problem::not_found("artifact"))?;
    let job = state
        .views
        .job(user, id)
        .await
        .map_err(|e| internal(&e))?
        .ok_or_else(|| Problem::not_found("artifact"))?;
    let listed = job
        .result
        .as_ref()
        .and_then(|r| r.get("artifacts"))
        .and_then(|a| a.as_array())
        .and_then(|a| a.iter().find(|x| x["name"] == name.as_str()))
        .ok_or_else(|| Problem::not_found("artifact"))?;
    let (Some(sha), Some(content_type)) =
        (listed["sha256"].as_str(), listed["content_type"].as_str())
    else {
        return Err(Problem::not_found("artifact"));
    };
    let bytes = state.artifacts.get(sha).await.map_err(|e| {
        tracing::error!(message = "Reading an artifact failed.", error = %e);
        Problem::internal()
    })?;
    let Some(bytes) = bytes else {
        tracing::warn!(message = "A job lists an artifact the store does not have.", job_id = %id, sha256 = sha);
        return Err(Problem::not_found("artifact"));
    };
    let content_type = HeaderValue::from_str(content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=86400, immutable"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("sandbox"),
            ),
        ],
        Body::from(bytes),
    )
        .into_response())
}
