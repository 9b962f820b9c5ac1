//! Change notices: after a projection commits, one message per user whose jobs changed, so
//! the read side can push SSE events without polling. Carried by NATS core subjects
//! `<prefix>notices.<user_id>`, or in process when no NATS is configured.

use std::sync::Arc;

use async_trait::async_trait;
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
    /// The span that projected it, when traces are exported: the SSE event joins the job's
    /// trace. Only in notices; a change read back from the read model has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The job's correlation id, with `traceparent` (for the SSE event's span).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
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

/// The transport seam of change notices: NATS core subjects between processes, or a
/// broadcast channel within one (`runledger dev`).
#[async_trait]
pub trait NoticeTransport: Send + Sync + 'static {
    /// Publishes; a notice that cannot be sent is logged and dropped (listeners recover
    /// missed changes from the read model).
    async fn publish(&self, notice: Notice);

    /// Every notice for every user, from now on.
    async fn subscribe(
        &self,
    ) -> Result<BoxStream<'static, Arc<Notice>>, async_nats::SubscribeError>;
}

/// Where notices go: a shared handle to a [`NoticeTransport`].
#[derive(Clone)]
pub struct NoticeBus(Arc<dyn NoticeTransport>);

impl NoticeBus {
    /// Notices over NATS core subjects `<prefix>notices.<user_id>`.
    pub fn nats(client: async_nats::Client, prefix: String) -> Self {
        Self(Arc::new(NatsNotices { client, prefix }))
    }

    /// An in-process bus.
    pub fn local() -> Self {
        Self(Arc::new(LocalNotices(broadcast::channel(4_096).0)))
    }

    /// Publishes `notice`.
    pub async fn publish(&self, notice: Notice) {
        self.0.publish(notice).await;
    }

    /// Every notice for every user, from now on.
    ///
    /// # Errors
    /// When the NATS subscription fails.
    pub async fn subscribe(
        &self,
    ) -> Result<BoxStream<'static, Arc<Notice>>, async_nats::SubscribeError> {
        self.0.subscribe().await
    }
}

/// NATS core subjects.
struct NatsNotices {
    client: async_nats::Client,
    prefix: String,
}

#[async_trait]
impl NoticeTransport for NatsNotices {
    async fn publish(&self, notice: Notice) {
        let subject = format!("{}notices.{}", self.prefix, notice.user_id);
        match serde_json::to_vec(&notice) {
            Ok(body) => {
                if let Err(e) = self.client.publish(subject, body.into()).await {
                    tracing::warn!(message = "Notice not published.", error = %e);
                }
            }
            Err(e) => tracing::error!(message = "Notice not encoded.", error = %e),
        }
    }

    async fn subscribe(
        &self,
    ) -> Result<BoxStream<'static, Arc<Notice>>, async_nats::SubscribeError> {
        let sub = self
            .client
            .subscribe(format!("{}notices.>", self.prefix))
            .await?;
        Ok(sub
            .filter_map(|m| async move {
                serde_json::from_slice::<Notice>(&m.payload)
                    .ok()
                    .map(Arc::new)
            })
            .boxed())
    }
}

/// A broadcast channel in this process.
struct LocalNotices(broadcast::Sender<Arc<Notice>>);

#[async_trait]
impl NoticeTransport for LocalNotices {
    async fn publish(&self, notice: Notice) {
        let _ = self.0.send(Arc::new(notice));
    }

    async fn subscribe(
        &self,
    ) -> Result<BoxStream<'static, Arc<Notice>>, async_nats::SubscribeError> {
        let rx = self.0.subscribe();
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
