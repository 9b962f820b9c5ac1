//! The agent's memory on Postgres (`agent_memories`): closest first, and only ever the
//! asking user's rows, however close another user's are.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use platform::testing::TestDb;
use uuid::Uuid;
use workers::executors::agent::memory::{MemoryStore, PgMemory};

#[tokio::test]
async fn postgres_memory_ranks_by_similarity_within_one_user() {
    let db = TestDb::create().await;
    let m = PgMemory(db.pool.clone());
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    m.remember(a, "about cats", &[1.0, 0.0, 0.0]).await.unwrap();
    m.remember(a, "about dogs", &[0.0, 1.0, 0.0]).await.unwrap();
    m.remember(a, "about fish", &[0.0, 0.0, 1.0]).await.unwrap();
    // B's memory is the exact query: it must still never reach A.
    m.remember(b, "b's secret", &[0.9, 0.1, 0.0]).await.unwrap();
    let got = m.closest(a, &[0.9, 0.1, 0.0], 2).await.unwrap();
    let texts: Vec<_> = got.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(texts, ["about cats", "about dogs"]);
    assert!(got[0].score > got[1].score);
    let theirs = m.closest(b, &[1.0, 0.0, 0.0], 10).await.unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].text, "b's secret");
    assert!(
        m.closest(Uuid::new_v4(), &[1.0, 0.0, 0.0], 10)
            .await
            .unwrap()
            .is_empty()
    );
}
