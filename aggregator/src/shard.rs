//! This replica's view of the replica set: members, replication factor and
//! the shard map built from them. Shared by ingest (what to store, which
//! map to send) and queries (whom to ask), and swapped whole when
//! `--peers-file` changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use metrics_proto::ring;
use metrics_proto::v1::ShardMap;

/// One view of the replica set.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    pub self_id: String,
    /// (ID, gRPC URL) of every member, this one included.
    pub members: Vec<(String, String)>,
    pub map: ShardMap,
}

impl Shard {
    pub fn new(self_id: String, members: Vec<(String, String)>, replication: usize) -> Self {
        Self::with_generation(self_id, members, replication, 0)
    }

    /// A view from a membership source that orders its changes.
    pub fn with_generation(
        self_id: String,
        members: Vec<(String, String)>,
        replication: usize,
        generation: u64,
    ) -> Self {
        let mut map = ring::shard_map(&members, replication);
        map.generation = generation;
        Self {
            self_id,
            members,
            map,
        }
    }

    pub fn replication(&self) -> usize {
        self.map.replication_factor as usize
    }

    pub fn member_ids(&self) -> Vec<&str> {
        self.members.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Whether this replica is in the set (else it is a standby).
    pub fn is_member(&self) -> bool {
        self.members.iter().any(|(id, _)| *id == self.self_id)
    }

    /// Whether this replica owns `node`.
    pub fn owns(&self, node: &str) -> bool {
        ring::owns(&self.member_ids(), node, self.replication(), &self.self_id)
    }

    /// IDs of `node`'s owners.
    pub fn owners(&self, node: &str) -> Vec<String> {
        ring::owners(&self.member_ids(), node, self.replication())
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
}

/// The current view, swapped whole on change.
#[derive(Debug, Clone)]
pub struct SharedShard(Arc<RwLock<Arc<Shard>>>);

impl SharedShard {
    pub fn new(shard: Shard) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(shard))))
    }

    /// The view in force now.
    pub fn get(&self) -> Arc<Shard> {
        match self.0.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the view.
    pub fn set(&self, shard: Shard) {
        let new = Arc::new(shard);
        match self.0.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

/// A peers file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PeersFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {entry:?} is not ID=https://HOST:PORT")]
    Entry { path: PathBuf, entry: String },
}

/// Members from a peers file: `ID=URL` entries separated by newlines or
/// commas; blank lines and `#` comments are ignored. A replica the file
/// does not list yet is a standby: it owns nothing and still answers
/// queries, so a new replica is listed only once it runs.
pub fn read_peers_file(path: &Path) -> Result<Vec<(String, String)>, PeersFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PeersFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut members = Vec::new();
    for entry in text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        match entry.split_once('=') {
            Some((id, url))
                if !id.is_empty()
                    && (url.starts_with("https://") || url.starts_with("http://")) =>
            {
                members.push((id.to_owned(), url.to_owned()));
            }
            _ => {
                return Err(PeersFileError::Entry {
                    path: path.to_owned(),
                    entry: entry.to_owned(),
                })
            }
        }
    }
    Ok(members)
}

/// Re-reads `path` every `every` and swaps in a changed member list; a
/// broken file keeps the current view and is logged.
pub async fn watch_peers_file(
    path: PathBuf,
    shared: SharedShard,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    let mut broken = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let current = shared.get();
        match read_peers_file(&path) {
            Ok(members) if members != current.members => {
                let next = Shard::new(current.self_id.clone(), members, current.replication());
                tracing::info!(
                    version = next.map.version,
                    members = next.members.len(),
                    listed = next.is_member(),
                    "replica set changed"
                );
                shared.set(next);
                broken = false;
            }
            Ok(_) => broken = false,
            Err(e) => {
                if !broken {
                    tracing::warn!(error = %e, "keeping the current replica set");
                }
                broken = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_file_formats() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("peers");
        std::fs::write(
            &p,
            "# replicas\na=https://h:1\nb=https://h:2, c=http://h:3\n\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let m = read_peers_file(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.len(), 3);
        let standby = Shard::new("z".into(), m, 1);
        assert!(!standby.is_member());
        assert!(!standby.owns("node-1"), "a standby owns nothing");
        std::fs::write(&p, "a=ftp://h:1\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            read_peers_file(&p),
            Err(PeersFileError::Entry { .. })
        ));
    }
}
