//! A bearer token kept in a file (a projected ServiceAccount token, which
//! the kubelet rewrites before it expires), as the `authorization` value of
//! gRPC calls. The file is read again once the copy in memory is older
//! than `MAX_AGE`, so callers may ask per call without per-call I/O.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};

/// How long a read token is used before the file is read again.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// The token file could not be turned into a header.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("reading token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The content is not a valid header value.
    #[error("token file {0}: not a valid header value")]
    Invalid(PathBuf),
}

/// One token file and its last good read.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<(Instant, MetadataValue<Ascii>)>>,
}

impl TokenFile {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            cached: Mutex::new(None),
        }
    }

    /// `Bearer <token>`, from memory when read within `MAX_AGE`.
    pub async fn authorization(&self) -> Result<MetadataValue<Ascii>, TokenError> {
        let fresh = |g: &Option<(Instant, MetadataValue<Ascii>)>| {
            g.as_ref()
                .filter(|(at, _)| at.elapsed() < MAX_AGE)
                .map(|(_, v)| v.clone())
        };
        let cached = match self.cached.lock() {
            Ok(g) => fresh(&g),
            Err(poisoned) => fresh(&poisoned.into_inner()),
        };
        if let Some(v) = cached {
            return Ok(v);
        }
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|source| TokenError::Read {
                path: self.path.clone(),
                source,
            })?;
        let value: MetadataValue<Ascii> = format!("Bearer {}", text.trim())
            .parse()
            .map_err(|_| TokenError::Invalid(self.path.clone()))?;
        let entry = Some((Instant::now(), value.clone()));
        match self.cached.lock() {
            Ok(mut g) => *g = entry,
            Err(poisoned) => *poisoned.into_inner() = entry,
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_once_per_max_age() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap_or_else(|e| panic!("{e}"));
        let t = TokenFile::new(&path);
        let v = t.authorization().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.to_str().ok(), Some("Bearer first"));
        std::fs::write(&path, "second").unwrap_or_else(|e| panic!("{e}"));
        let v = t.authorization().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.to_str().ok(), Some("Bearer first"), "served from memory");
        let missing = TokenFile::new(&dir.path().join("nope"));
        assert!(matches!(
            missing.authorization().await,
            Err(TokenError::Read { .. })
        ));
        std::fs::write(&path, "bad\ntoken").unwrap_or_else(|e| panic!("{e}"));
        let fresh = TokenFile::new(&path);
        assert!(matches!(
            fresh.authorization().await,
            Err(TokenError::Invalid(_))
        ));
    }
}
