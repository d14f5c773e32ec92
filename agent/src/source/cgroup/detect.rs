//! Which cgroup hierarchy a host runs, from an injectable root: unified
//! (v2), legacy (v1), or hybrid (v1 controllers plus an empty v2 mount,
//! read as v1).

use std::path::{Path, PathBuf};

/// Where CPU and memory accounting live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2: one tree.
    V2 { root: PathBuf },
    /// cgroup v1 (or hybrid): separate cpuacct and memory trees.
    V1 {
        cpuacct: PathBuf,
        memory: PathBuf,
        hybrid: bool,
    },
}

impl Hierarchy {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Hierarchy::V2 { .. } => "v2",
            Hierarchy::V1 { hybrid: false, .. } => "v1",
            Hierarchy::V1 { hybrid: true, .. } => "hybrid",
        }
    }
}

/// No usable hierarchy under the root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no cgroup v2 tree or v1 cpuacct and memory controllers under {0}")]
pub struct DetectError(pub PathBuf);

/// Detects the hierarchy mounted at `root` (normally `/sys/fs/cgroup`).
pub fn detect(root: &Path) -> Result<Hierarchy, DetectError> {
    if root.join("cgroup.controllers").is_file() {
        return Ok(Hierarchy::V2 {
            root: root.to_owned(),
        });
    }
    let cpuacct = ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.join("cpuacct.usage").is_file());
    let memory = root.join("memory");
    match cpuacct {
        Some(cpuacct) if memory.join("memory.usage_in_bytes").is_file() => Ok(Hierarchy::V1 {
            cpuacct,
            memory,
            hybrid: root.join("unified/cgroup.controllers").is_file(),
        }),
        _ => Err(DetectError(root.to_owned())),
    }
}
