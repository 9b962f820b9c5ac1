//! Errors of parsing values at the edge. Each aggregate has its own rejection enum.

use thiserror::Error;

/// A value from outside that does not fit its type.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Not a UUID.
    #[error("{field} must be a UUID")]
    Uuid {
        /// Which value.
        field: &'static str,
    },
    /// Empty or too long.
    #[error("{field} must be 1 to {max} bytes long")]
    Length {
        /// Which value.
        field: &'static str,
        /// The longest accepted length.
        max: usize,
    },
    /// Characters outside the allowed set.
    #[error("{field} has characters outside its allowed set")]
    Charset {
        /// Which value.
        field: &'static str,
    },
    /// A number outside its range.
    #[error("{field} must be between {min} and {max}")]
    Range {
        /// Which value.
        field: &'static str,
        /// Lowest accepted.
        min: u64,
        /// Highest accepted.
        max: u64,
    },
    /// A task type that no executor runs.
    #[error("unknown task type `{0}`")]
    UnknownTaskType(String),
    /// A period that is not `YYYY-MM`.
    #[error("period must be YYYY-MM")]
    Month,
    /// A payload its task type does not accept.
    #[error("payload for {task_type}: {reason}")]
    Payload {
        /// The task type.
        task_type: String,
        /// The rule broken.
        reason: String,
    },
}
