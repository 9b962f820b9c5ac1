//! Identifiers and bounded strings, parsed once at the edge.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ParseError;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
            JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps a UUID.
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// The wrapped UUID.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// Parses the textual UUID form.
            ///
            /// # Errors
            /// [`ParseError::Uuid`] when `s` is not a UUID.
            pub fn parse(s: &str) -> Result<Self, ParseError> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| ParseError::Uuid { field: stringify!($name) })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A customer: the `sub` of their JWT.
    UserId
);
uuid_id!(
    /// One job, chosen by the command side at submission.
    JobId
);

/// A string of printable ASCII with a length bound, the shape shared by correlation ids,
/// worker ids and Stripe object ids.
fn bounded_token(field: &'static str, s: &str, max: usize) -> Result<String, ParseError> {
    if s.is_empty() || s.len() > max {
        return Err(ParseError::Length { field, max });
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ParseError::Charset { field });
    }
    Ok(s.to_owned())
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
        )]
        #[serde(try_from = "String", into = "String")]
        #[schemars(extend("minLength" = 1, "maxLength" = $max, "pattern" = "^[!-~]+$"))]
        pub struct $name(String);

        impl $name {
            /// The longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Parses a value: 1 to `MAX_LEN` printable ASCII characters, no spaces.
            ///
            /// # Errors
            /// [`ParseError::Length`] or [`ParseError::Charset`].
            pub fn parse(s: &str) -> Result<Self, ParseError> {
                bounded_token(stringify!($name), s, $max).map(Self)
            }

            /// The value as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, ParseError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

token_id!(
    /// Follows a job through every event, log line and span (`X-Correlation-Id`).
    CorrelationId,
    128
);
token_id!(
    /// Names the worker process that runs an attempt.
    WorkerId,
    128
);
token_id!(
    /// A Stripe event id (`evt_…`), applied at most once.
    StripeEventId,
    255
);
token_id!(
    /// A Stripe object id: customer (`cus_…`), subscription (`sub_…`) or invoice (`in_…`).
    StripeObjectId,
    255
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bounded_and_printable() {
        assert!(CorrelationId::parse("req-42").is_ok());
        assert_eq!(
            CorrelationId::parse(""),
            Err(ParseError::Length {
                field: "CorrelationId",
                max: 128
            })
        );
        assert!(CorrelationId::parse(&"a".repeat(129)).is_err());
        assert_eq!(
            CorrelationId::parse("has space"),
            Err(ParseError::Charset {
                field: "CorrelationId"
            })
        );
        assert!(WorkerId::parse("w\n1").is_err());
    }

    #[test]
    fn tokens_refuse_bad_values_when_deserialized() {
        assert!(serde_json::from_str::<WorkerId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<WorkerId>("\"not ok\"").is_err());
    }

    #[test]
    fn uuid_ids_round_trip() {
        let id = JobId::parse("5f0c6c43-54a3-4a55-9a2d-0b7f6b7e1c11").unwrap();
        assert_eq!(id.to_string(), "5f0c6c43-54a3-4a55-9a2d-0b7f6b7e1c11");
        assert!(UserId::parse("nope").is_err());
    }
}
