//! A bearer token kept in a file (a projected ServiceAccount token, which
//! the kubelet rewrites before it expires), as the `authorization` value of
//! gRPC calls and of the agent's requests to its kubelet. The file is read
//! again once the copy in memory is older than its max age, or after the
//! token was refused, so callers may ask per call without per-call I/O.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::HeaderValue;
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
    max_age: Duration,
    cached: Mutex<Option<(Instant, HeaderValue)>>,
}

impl TokenFile {
    /// Read again once the copy in memory is [`MAX_AGE`] old.
    pub fn new(path: &Path) -> Self {
        Self::with_max_age(path, MAX_AGE)
    }

    /// Read again once the copy in memory is `max_age` old.
    pub fn with_max_age(path: &Path, max_age: Duration) -> Self {
        Self {
            path: path.to_owned(),
            max_age,
            cached: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<(Instant, HeaderValue)>> {
        match self.cached.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// `Bearer <token>` as a (sensitive) header value, from memory when
    /// read within the max age; `None` when the file does not exist (not
    /// remembered: a file that appears is read at the next call).
    pub fn bearer(&self) -> Result<Option<HeaderValue>, TokenError> {
        let mut cached = self.lock();
        if let Some((at, value)) = cached.as_ref() {
            if at.elapsed() < self.max_age {
                return Ok(Some(value.clone()));
            }
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TokenError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mut value = HeaderValue::try_from(format!("Bearer {}", text.trim()))
            .map_err(|_| TokenError::Invalid(self.path.clone()))?;
        value.set_sensitive(true);
        *cached = Some((Instant::now(), value.clone()));
        Ok(Some(value))
    }

    /// [`TokenFile::bearer`] as the `authorization` value of a gRPC call;
    /// a missing file is an error.
    pub async fn authorization(&self) -> Result<MetadataValue<Ascii>, TokenError> {
        let value = self.bearer()?.ok_or_else(|| TokenError::Read {
            path: self.path.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        MetadataValue::try_from(value.as_bytes())
            .map_err(|_| TokenError::Invalid(self.path.clone()))
    }

    /// The token was refused: read the file again at the next call.
    pub fn forget(&self) {
        *self.lock() = None;
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
