//! Node usage read straight from `/proc`, with the kubelet's definitions:
//! CPU is the time all CPUs spent not idle (user, nice, system, irq,
//! softirq, steal; guest time is inside user), and the working set is
//! anonymous memory plus file pages minus inactive file pages, which is
//! `AnonPages + Active(file)` in `/proc/meminfo`. Swap in use is
//! `SwapTotal - SwapFree`, what the kubelet reports for the node (the root
//! cgroup has no swap file of its own on cgroup v2).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use procfs::prelude::*;

use crate::batch::{Batch, Point};
use crate::source::decode::unix_nanos;

/// Failures reading `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file could not be read or parsed.
    #[error("reading {path}: {source}")]
    Proc {
        path: PathBuf,
        #[source]
        source: procfs::ProcError,
    },
    /// A field the working set needs is missing (very old kernel).
    #[error("{path} has no {field}")]
    Missing { path: PathBuf, field: &'static str },
}

/// Reads the node's own cumulative CPU and working set.
#[derive(Debug, Clone)]
pub struct HostSource {
    proc_root: PathBuf,
}

impl HostSource {
    /// `proc_root` is where the host's procfs is mounted (`/proc`).
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
        }
    }

    /// One sample of the node.
    pub fn sample(&self) -> Result<Batch, HostError> {
        let now = SystemTime::now();
        let cpu_ns = self.cpu_ns()?;
        let (memory_bytes, swap_bytes) = self.memory()?;
        Ok(Batch {
            node: Some(Point {
                timestamp_ns: unix_nanos(now),
                start_ns: 0,
                cpu_ns,
                memory_bytes,
                swap_bytes,
            }),
            ..Batch::default()
        })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.proc_root.join(name)
    }

    fn cpu_ns(&self) -> Result<u64, HostError> {
        let path = self.file("stat");
        let stats = procfs::KernelStats::from_file(&path, procfs::current_system_info())
            .map_err(|source| proc_err(&path, source))?;
        let t = &stats.total;
        let ticks = t.user
            + t.nice
            + t.system
            + t.irq.unwrap_or(0)
            + t.softirq.unwrap_or(0)
            + t.steal.unwrap_or(0);
        let tps = procfs::ticks_per_second().max(1);
        Ok(ticks.saturating_mul(1_000_000_000 / tps))
    }

    /// Working set and swap in use, bytes.
    fn memory(&self) -> Result<(u64, u64), HostError> {
        let path = self.file("meminfo");
        let info = procfs::Meminfo::from_file(&path).map_err(|source| proc_err(&path, source))?;
        let swap = info.swap_total.saturating_sub(info.swap_free);
        let anon = info.anon_pages.ok_or_else(|| HostError::Missing {
            path: path.clone(),
            field: "AnonPages",
        })?;
        let active_file = info.active_file.ok_or(HostError::Missing {
            path,
            field: "Active(file)",
        })?;
        Ok((anon + active_file, swap))
    }

    /// Swap in use on the node, bytes.
    pub fn swap_in_use(&self) -> Result<u64, HostError> {
        self.memory().map(|(_, swap)| swap)
    }
}

fn proc_err(path: &Path, source: procfs::ProcError) -> HostError {
    HostError::Proc {
        path: path.to_owned(),
        source,
    }
}
