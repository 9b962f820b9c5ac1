//! Change notices: after a projection commits, one message per user whose jobs changed, so
//! the read side can push SSE events without polling. Carried by NATS core subjects
//! `<prefix>notices.<user_id>`, or in process when no NATS is configured.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{StreamExt, stream::BoxStream};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

/// One visible change of one job: an SSE event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobChange {
    /// The global position of the event behind it (the SSE `id`).
    pub position: i64,
    /// The job.
    pub id: Uuid,
    /// Its status after the change.
    pub status: String,
    /// Attempts started so far.
    pub attempts: i32,
    /// When it changed.
    pub updated_at: DateTime<Utc>,
}

/// Every change of one user's jobs in one projection commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// The user.
    pub user_id: Uuid,
    /// The position of this user's previous change (0: none). A listener that last saw a
    /// different position missed a notice and reads the gap from the read model.
    pub prev: i64,
    /// The changes, in position order.
    pub changes: Vec<JobChange>,
}

/// Where notices go.
#[derive(Clone)]
pub enum NoticeBus {
    /// NATS core subjects.
    Nats {
        /// The client.
        client: async_nats::Client,
        /// Subject prefix (empty by default).
        prefix: String,
    },
    /// In this process only.
    Local(broadcast::Sender<Arc<Notice>>),
}

impl NoticeBus {
    /// An in-process bus.
    pub fn local() -> Self {
        Self::Local(broadcast::channel(4_096).0)
    }

    /// Publishes; a notice that cannot be sent is logged and dropped (listeners recover
    /// missed changes from the read model).
    pub async fn publish(&self, notice: Notice) {
        match self {
            Self::Nats { client, prefix } => {
                let subject = format!("{prefix}notices.{}", notice.user_id);
                match serde_json::to_vec(&notice) {
                    Ok(body) => {
                        if let Err(e) = client.publish(subject, body.into()).await {
                            tracing::warn!(message = "Notice not published.", error = %e);
                        }
                    }
                    Err(e) => tracing::error!(message = "Notice not encoded.", error = %e),
                }
            }
            Self::Local(tx) => {
                let _ = tx.send(Arc::new(notice));
            }
        }
    }

    /// Every notice for every user, from now on.
    ///
    /// # Errors
    /// When the NATS subscription fails.
    pub async fn subscribe(
        &self,
    ) -> Result<BoxStream<'static, Arc<Notice>>, async_nats::SubscribeError> {
        match self {
            Self::Nats { client, prefix } => {
                let sub = client.subscribe(format!("{prefix}notices.>")).await?;
                Ok(sub
                    .filter_map(|m| async move {
                        serde_json::from_slice::<Notice>(&m.payload)
                            .ok()
                            .map(Arc::new)
                    })
                    .boxed())
            }
            Self::Local(tx) => {
                let rx = tx.subscribe();
                Ok(futures::stream::unfold(rx, |mut rx| async move {
                    loop {
                        match rx.recv().await {
                            Ok(n) => return Some((n, rx)),
                            Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                })
                .boxed())
            }
        }
    }
}
