//! Request bodies: size-capped, JSON only, unknown fields refused, all as problem+json.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{StatusCode, header},
};
use platform::problem::Problem;
use serde::de::DeserializeOwned;

/// A JSON body parsed into `T`, with its raw bytes kept for the idempotency hash.
pub struct Json<T> {
    /// The parsed value.
    pub value: T,
    /// The bytes as received.
    pub raw: Bytes,
}

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|ct| ct.starts_with("application/json"));
        if !json_type {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            )
            .detail("send application/json"));
        }
        let raw = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload-too-large",
                    "Payload too large",
                )
                .detail("the body exceeds the size limit")
            } else {
                Problem::bad_request("the body could not be read")
            }
        })?;
        let bad =
            |e: serde_json::Error| Problem::bad_request(clip(&format!("invalid JSON body: {e}")));
        let value = match serde_json::from_slice(&raw) {
            Ok(value) => value,
            // JSON Schema's integers include 3.0; serde's do not. Only a body that failed
            // pays for the second reading.
            Err(first) => {
                let mut json: serde_json::Value = serde_json::from_slice(&raw).map_err(bad)?;
                if !domain::payload::integral_numbers(&mut json) {
                    return Err(bad(first));
                }
                T::deserialize(json).map_err(bad)?
            }
        };
        Ok(Self { value, raw })
    }
}

/// Keeps an error message short: serde may quote a whole field of the input.
fn clip(s: &str) -> String {
    const MAX: usize = 300;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
