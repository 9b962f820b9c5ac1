//! Per-user agent memory: each finished run kept with its embedding, searched by cosine
//! similarity in the worker (no vector extension is installable here), always within one
//! user's rows. Exposed to rig as a `VectorStoreIndex` bound to one user.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use rig_core::{
    DynModel,
    operation::Embedding as EmbeddingOp,
    vector_store::{
        VectorSearchIdResult, VectorSearchRequest, VectorSearchResult, VectorStoreError,
        VectorStoreIndex, request::Filter,
    },
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::RwLock;
use uuid::Uuid;

/// The most rows of one user a search reads (the newest).
const MAX_SCANNED: i64 = 10_000;

/// One remembered text and how close it is to a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Recalled {
    /// Cosine similarity, -1 to 1.
    pub score: f64,
    /// The memory's id.
    pub id: Uuid,
    /// What was remembered.
    pub text: String,
}

/// Why memory could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("agent memory: {0}")]
pub struct MemoryError(#[from] sqlx::Error);

/// Where memories are kept.
#[async_trait]
pub trait MemoryStore: Send + Sync + 'static {
    /// Keeps `text` with its embedding for `user`.
    async fn remember(&self, user: Uuid, text: &str, embedding: &[f32]) -> Result<(), MemoryError>;

    /// `user`'s `n` memories closest to `embedding`, closest first.
    async fn closest(
        &self,
        user: Uuid,
        embedding: &[f32],
        n: usize,
    ) -> Result<Vec<Recalled>, MemoryError>;
}

/// Cosine similarity; 0 when either side is empty or zero or they differ in width.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

fn rank(
    rows: impl Iterator<Item = (Uuid, String, Vec<f32>)>,
    q: &[f32],
    n: usize,
) -> Vec<Recalled> {
    let mut all: Vec<Recalled> = rows
        .map(|(id, text, e)| Recalled {
            score: cosine(q, &e),
            id,
            text,
        })
        .collect();
    all.sort_by(|a, b| b.score.total_cmp(&a.score));
    all.truncate(n);
    all
}

/// Memories in Postgres (`agent_memories`).
#[derive(Clone)]
pub struct PgMemory(pub sqlx::PgPool);

#[async_trait]
impl MemoryStore for PgMemory {
    async fn remember(&self, user: Uuid, text: &str, embedding: &[f32]) -> Result<(), MemoryError> {
        sqlx::query(
            "INSERT INTO agent_memories (id, user_id, text, embedding) VALUES ($1, $2, $3, $4)",
        )
        .bind(Uuid::new_v4())
        .bind(user)
        .bind(text)
        .bind(embedding)
        .execute(&self.0)
        .await?;
        Ok(())
    }

    async fn closest(
        &self,
        user: Uuid,
        embedding: &[f32],
        n: usize,
    ) -> Result<Vec<Recalled>, MemoryError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, text, embedding FROM agent_memories WHERE user_id = $1 \
             ORDER BY created_at DESC LIMIT $2",
        )
        .bind(user)
        .bind(MAX_SCANNED)
        .fetch_all(&self.0)
        .await?;
        Ok(rank(rows.into_iter(), embedding, n))
    }
}

/// Memories in this process (`runledger dev` without `DATABASE_URL`): gone at exit.
#[derive(Default)]
pub struct MemMemory(RwLock<HashMap<Uuid, Vec<Row>>>);

/// A memory: its id, text and embedding.
type Row = (Uuid, String, Vec<f32>);

#[async_trait]
impl MemoryStore for MemMemory {
    async fn remember(&self, user: Uuid, text: &str, embedding: &[f32]) -> Result<(), MemoryError> {
        self.0.write().await.entry(user).or_default().push((
            Uuid::new_v4(),
            text.to_owned(),
            embedding.to_vec(),
        ));
        Ok(())
    }

    async fn closest(
        &self,
        user: Uuid,
        embedding: &[f32],
        n: usize,
    ) -> Result<Vec<Recalled>, MemoryError> {
        let all = self.0.read().await;
        let rows = all.get(&user).map(Vec::as_slice).unwrap_or_default();
        Ok(rank(rows.iter().cloned(), embedding, n))
    }
}

/// One user's memories as rig's vector-store index: the query is embedded, then searched
/// among that user's rows only. Documents are `{"text": …}`.
#[derive(Clone)]
pub struct UserMemory {
    /// The store.
    pub store: Arc<dyn MemoryStore>,
    /// Whose memories.
    pub user: Uuid,
    /// Embeds queries.
    pub embedder: DynModel<EmbeddingOp>,
}

impl UserMemory {
    async fn search(&self, query: &str, n: u64) -> Result<Vec<Recalled>, VectorStoreError> {
        let e = self.embedder.embed_text(query).await?;
        let v: Vec<f32> = e.vec.iter().map(|x| *x as f32).collect();
        self.store
            .closest(self.user, &v, usize::try_from(n).unwrap_or(usize::MAX))
            .await
            .map_err(VectorStoreError::datastore)
    }
}

impl VectorStoreIndex for UserMemory {
    type Filter = Filter<serde_json::Value>;

    async fn top_n<T: DeserializeOwned + Send>(
        &self,
        req: VectorSearchRequest<Self::Filter>,
    ) -> Result<Vec<VectorSearchResult<T>>, VectorStoreError> {
        let mut out = Vec::new();
        for r in self.search(req.query(), req.samples()).await? {
            out.push(VectorSearchResult {
                score: r.score,
                id: r.id.to_string(),
                document: serde_json::from_value(json!({"text": r.text}))?,
            });
        }
        Ok(out)
    }

    async fn top_n_ids(
        &self,
        req: VectorSearchRequest<Self::Filter>,
    ) -> Result<Vec<VectorSearchIdResult>, VectorStoreError> {
        Ok(self
            .search(req.query(), req.samples())
            .await?
            .into_iter()
            .map(|r| VectorSearchIdResult {
                score: r.score,
                id: r.id.to_string(),
            })
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closest_first_and_only_the_users_own() {
        let m = MemMemory::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        m.remember(a, "cats", &[1.0, 0.0]).await.unwrap();
        m.remember(a, "dogs", &[0.0, 1.0]).await.unwrap();
        m.remember(b, "b's cats", &[1.0, 0.0]).await.unwrap();
        let got = m.closest(a, &[0.9, 0.1], 5).await.unwrap();
        let texts: Vec<_> = got.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(texts, ["cats", "dogs"]);
        assert!(
            m.closest(Uuid::new_v4(), &[1.0, 0.0], 5)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(cosine(&[1.0, 0.0], &[2.0, 0.0]), 1.0);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
    }
}
