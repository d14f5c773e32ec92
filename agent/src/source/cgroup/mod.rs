//! Node and container usage read straight from the kernel's cgroup files,
//! with the kubelet's definitions, mapped to pods through the pod index.
//! Cgroups of unknown pods are skipped and counted; a pod's sandbox
//! (pause) cgroup is not a container and is skipped too.

pub mod detect;
pub mod layout;
pub mod read;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::batch::{Batch, Point};
use crate::pods::PodIndex;
use crate::source::decode::{unix_nanos, DecodeStats};
use crate::source::host::HostSource;

pub use detect::{DetectError, Hierarchy};

/// The node could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error("node usage: {cgroup}; /proc fallback: {proc}")]
    Node {
        cgroup: read::ReadError,
        proc: crate::source::host::HostError,
    },
}

/// Reads one host's cgroup tree.
#[derive(Debug, Clone)]
pub struct CgroupSource {
    hierarchy: Hierarchy,
    host: HostSource,
}

impl CgroupSource {
    /// Detects the hierarchy under `cgroup_root`; `proc_root` backs up the
    /// node figures when the root cgroup lacks them.
    pub fn new(cgroup_root: &Path, proc_root: &Path) -> Result<Self, CgroupError> {
        let hierarchy = detect::detect(cgroup_root)?;
        tracing::info!(hierarchy = hierarchy.name(), root = %cgroup_root.display(), "cgroup hierarchy detected");
        Ok(Self {
            hierarchy,
            host: HostSource::new(proc_root),
        })
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// Usage of the cgroup at `rel` below the hierarchy root(s).
    fn usage(&self, rel: &Path) -> Result<read::Usage, read::ReadError> {
        match &self.hierarchy {
            Hierarchy::V2 { root } if rel.as_os_str().is_empty() => read::v2_root(root),
            Hierarchy::V2 { root } => read::v2(&root.join(rel)),
            Hierarchy::V1 {
                cpuacct, memory, ..
            } => read::v1(&cpuacct.join(rel), &memory.join(rel)),
        }
    }

    /// Where pod cgroups are listed (the CPU tree for v1).
    fn listing_root(&self) -> &Path {
        match &self.hierarchy {
            Hierarchy::V2 { root } => root,
            Hierarchy::V1 { cpuacct, .. } => cpuacct,
        }
    }

    fn node(&self) -> Result<Point, CgroupError> {
        let now = SystemTime::now();
        match self.usage(Path::new("")) {
            Ok(u) => Ok(Point {
                timestamp_ns: unix_nanos(now),
                cpu_ns: u.cpu_ns,
                memory_bytes: u.working_set,
                ..Point::default()
            }),
            Err(cgroup) => match self.host.sample() {
                Ok(b) => b.node.ok_or(CgroupError::Node {
                    cgroup,
                    proc: crate::source::host::HostError::Missing {
                        path: PathBuf::from("/proc"),
                        field: "node sample",
                    },
                }),
                Err(proc) => Err(CgroupError::Node { cgroup, proc }),
            },
        }
    }

    /// Relative paths of pod cgroups with their UIDs.
    fn pod_dirs(&self) -> Vec<(PathBuf, String)> {
        let base = self.listing_root();
        let mut out = Vec::new();
        for top in layout::KUBEPODS_ROOTS {
            let mut dirs = vec![PathBuf::from(top)];
            while let Some(rel) = dirs.pop() {
                for name in subdirs(&base.join(&rel)) {
                    if let Some(uid) = layout::pod_uid(&name) {
                        out.push((rel.join(&name), uid));
                    } else if rel.as_os_str() == top && layout::is_qos_dir(&name) {
                        dirs.push(rel.join(&name));
                    }
                }
            }
        }
        out
    }

    /// One sample of the node and every mapped container.
    pub fn sample(&self, pods: &PodIndex) -> Result<(Batch, DecodeStats), CgroupError> {
        let mut stats = DecodeStats::default();
        let mut batch = Batch {
            node: Some(self.node()?),
            ..Batch::default()
        };
        let base = self.listing_root().to_owned();
        for (rel, uid) in self.pod_dirs() {
            let Some(info) = pods.by_uid(&uid) else {
                stats.unmapped_cgroups += 1;
                continue;
            };
            for name in subdirs(&base.join(&rel)) {
                let Some(id) = layout::container_id(&name) else {
                    continue;
                };
                // Not in the pod's statuses: its sandbox, or not yet known.
                let Some(c) = info.container(id) else {
                    continue;
                };
                let dir = rel.join(&name);
                let now = SystemTime::now();
                let u = match self.usage(&dir) {
                    Ok(u) => u,
                    Err(e) => {
                        // A container that just exited; its cgroup is going away.
                        tracing::debug!(error = %e, "skipping container cgroup");
                        stats.invalid_samples += 1;
                        continue;
                    }
                };
                if u.cpu_ns == 0 || u.working_set == 0 {
                    stats.incomplete_containers += 1;
                    continue;
                }
                let start_ns = c.started_ns.unwrap_or_else(|| created_ns(&base.join(&dir)));
                batch.pods.entry(info.pod.clone()).or_default().insert(
                    c.name.clone(),
                    Point {
                        timestamp_ns: unix_nanos(now),
                        start_ns,
                        cpu_ns: u.cpu_ns,
                        memory_bytes: u.working_set,
                        swap_bytes: 0,
                    },
                );
            }
        }
        Ok((batch, stats))
    }
}

/// Names of the subdirectories of `dir`; empty when it is gone.
fn subdirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// When a cgroup directory appeared (its creation or change time).
fn created_ns(dir: &Path) -> i64 {
    std::fs::metadata(dir)
        .and_then(|m| m.created().or_else(|_| m.modified()))
        .map(unix_nanos)
        .unwrap_or(0)
}
