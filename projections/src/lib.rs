//! runledger's read models, each built from the ordered event log with its checkpoint stored
//! in the same transaction as its rows (an event's effect lands exactly once), rebuildable
//! from position 0 into fresh tables swapped in atomically; and the relay that publishes the
//! log to NATS JetStream.
//!
//! Projections read the event store directly, not JetStream (docs/adr/0003): one hop less on
//! the way to SSE, and a rebuild reads the store in any case.

pub mod jobs;
pub mod memory;
pub mod rebuild;
pub mod relay;
pub mod runner;
pub mod subscriptions;
pub mod usage;

use std::str::FromStr;

use eventstore::reader::RecordedEvent;
use platform::notice::Notice;
use sqlx::PgConnection;

/// A projection's failure; the batch is rolled back and redone.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An event does not decode.
    #[error("event at position {position} does not decode: {source}")]
    Decode {
        /// Its position.
        position: i64,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An aggregate id of the wrong shape.
    #[error("event at position {position} has a malformed aggregate id")]
    BadId {
        /// Its position.
        position: i64,
    },
    /// Another rebuild of the same projection is running.
    #[error("a rebuild of {0} is already running")]
    RebuildRunning(&'static str),
}

/// The events of `aggregate_type` in `events`, each with its aggregate id as a UUID (jobs and
/// subscriptions are keyed by one) and decoded.
///
/// # Errors
/// [`ProjectionError::Decode`] or [`ProjectionError::BadId`], naming the position.
pub(crate) fn decode<'a, T: serde::de::DeserializeOwned>(
    events: &'a [RecordedEvent],
    aggregate_type: &str,
) -> Result<Vec<(&'a RecordedEvent, uuid::Uuid, T)>, ProjectionError> {
    events
        .iter()
        .filter(|e| e.aggregate_type == aggregate_type)
        .map(|e| {
            let event = e.decode().map_err(|source| ProjectionError::Decode {
                position: e.position,
                source,
            })?;
            let id =
                uuid::Uuid::parse_str(&e.aggregate_id).map_err(|_| ProjectionError::BadId {
                    position: e.position,
                })?;
            Ok((e, id, event))
        })
        .collect()
}

/// The read models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    /// Job views, changes and per-user stream positions.
    Jobs,
    /// Usage per billing period.
    Usage,
    /// Subscriptions.
    Subscriptions,
}

impl Projection {
    /// Every projection.
    pub const ALL: [Self; 3] = [Self::Jobs, Self::Usage, Self::Subscriptions];

    /// Its name: the checkpoint's, and `runledger projections rebuild NAME`'s.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Jobs => "jobs",
            Self::Usage => "usage",
            Self::Subscriptions => "subscriptions",
        }
    }

    /// The tables it owns.
    pub const fn tables(self) -> &'static [&'static str] {
        match self {
            Self::Jobs => jobs::TABLES,
            Self::Usage => usage::TABLES,
            Self::Subscriptions => subscriptions::TABLES,
        }
    }

    /// The advisory lock a rebuild of this projection holds from start to swap: one at a
    /// time.
    pub const fn rebuild_lock_key(self) -> i64 {
        self.lock_key() + 100
    }

    /// The advisory lock that one batch of it holds (so a swap or a second runner waits).
    pub const fn lock_key(self) -> i64 {
        7_245_037_300
            + match self {
                Self::Jobs => 1,
                Self::Usage => 2,
                Self::Subscriptions => 3,
            }
    }

    /// Applies a batch to its tables named with `suffix` (`""` live, `_rebuild` while
    /// rebuilding); returns the change notices to publish after commit. `warm`: the live
    /// runner's job rows ([`jobs::Warm`]).
    ///
    /// # Errors
    /// [`ProjectionError`].
    pub async fn apply(
        self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
        suffix: &str,
        warm: Option<&mut jobs::Warm>,
    ) -> Result<Vec<Notice>, ProjectionError> {
        match self {
            Self::Jobs => jobs::apply(conn, events, suffix, warm).await,
            Self::Usage => usage::apply(conn, events, suffix).await.map(|()| vec![]),
            Self::Subscriptions => subscriptions::apply(conn, events, suffix)
                .await
                .map(|()| vec![]),
        }
    }
}

impl FromStr for Projection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown projection `{s}` (jobs, usage, subscriptions)"))
    }
}
