//! RFC 9457 problem details: every error an HTTP role returns.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// An `application/problem+json` body. `type` is a stable URN that clients match on.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// `urn:runledger:problem:<slug>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short, fixed summary of the type.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong this time; never a secret, never a database message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Extra members, flattened into the body (boxed: a problem travels in every `Err`).
    #[serde(flatten, skip_serializing_if = "no_members")]
    pub extra: Box<serde_json::Map<String, serde_json::Value>>,
}

fn no_members(m: &serde_json::Map<String, serde_json::Value>) -> bool {
    m.is_empty()
}

impl Problem {
    /// A problem of type `urn:runledger:problem:<slug>`.
    pub fn new(status: StatusCode, slug: &str, title: &'static str) -> Self {
        Self {
            type_uri: format!("urn:runledger:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail: None,
            extra: Box::default(),
        }
    }

    /// Adds the detail line.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds an extension member.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// The opaque 500: the cause goes to the log, not to the client.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
        )
    }

    /// 401 for any token that does not validate.
    pub fn unauthorized(detail: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized").detail(detail)
    }

    /// 403: a valid token without the role the route needs.
    pub fn forbidden(detail: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(detail)
    }

    /// 404.
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found")
            .detail(format!("{what} not found"))
    }

    /// 400 for a body or parameter that does not parse.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid request",
        )
        .detail(detail)
    }

    /// The status as a `StatusCode`.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut res = (status, body).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}
