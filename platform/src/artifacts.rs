//! Artifacts (screenshots, PDFs) kept by the SHA-256 of their bytes: workers put them, the
//! read side serves them to the job's owner. One trait, so an S3-compatible store can stand
//! beside the directory store without touching either side.

use std::{
    io,
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

/// Where artifacts live.
#[async_trait]
pub trait ArtifactStore: Send + Sync + 'static {
    /// Stores `bytes`; returns their SHA-256 in lowercase hex. Storing the same bytes twice
    /// is one object.
    async fn put(&self, bytes: &[u8]) -> io::Result<String>;

    /// The bytes stored under `sha256`, if any.
    async fn get(&self, sha256: &str) -> io::Result<Option<Vec<u8>>>;
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `s` is a SHA-256 in lowercase hex (and so safe as a file name).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Artifacts as files under a directory: `<dir>/<first two hex digits>/<sha256>`.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// A store rooted at `dir` (created on first write, 0700).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(&sha256[..2]).join(sha256)
    }
}

#[async_trait]
impl ArtifactStore for DirStore {
    async fn put(&self, bytes: &[u8]) -> io::Result<String> {
        let sha = sha256_hex(bytes);
        let path = self.path(&sha);
        if tokio::fs::try_exists(&path).await? {
            return Ok(sha);
        }
        let parent = self.dir.join(&sha[..2]);
        create_private_dir(&self.dir).await?;
        create_private_dir(&parent).await?;
        // Written aside then renamed: a reader never sees half a file, and two writers of
        // the same bytes both end with the whole one.
        let tmp = parent.join(format!(".{sha}.{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::write(&tmp, bytes).await?;
        tokio::fs::rename(&tmp, &path).await?;
        Ok(sha)
    }

    async fn get(&self, sha256: &str) -> io::Result<Option<Vec<u8>>> {
        if !is_sha256(sha256) {
            return Ok(None);
        }
        match tokio::fs::read(self.path(sha256)).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

async fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut b = tokio::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    b.mode(0o700);
    b.create(dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_bytes_one_object_and_unknown_names_are_absent() {
        let dir = std::env::temp_dir().join(format!("rl-art-{}", uuid::Uuid::new_v4().simple()));
        let store = DirStore::new(&dir);
        let a = store.put(b"png bytes").await.unwrap();
        let b = store.put(b"png bytes").await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a, sha256_hex(b"png bytes"));
        assert_eq!(store.get(&a).await.unwrap().unwrap(), b"png bytes");
        assert_eq!(store.get(&"0".repeat(64)).await.unwrap(), None);
        assert_eq!(store.get("../../etc/passwd").await.unwrap(), None);
        let files = std::fs::read_dir(dir.join(&a[..2])).unwrap().count();
        assert_eq!(files, 1, "no temporary file is left behind");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
