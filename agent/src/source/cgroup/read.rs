//! Reading one cgroup's CPU and memory with the kubelet's definitions:
//! CPU is cumulative usage (v2 `cpu.stat usage_usec`, v1 `cpuacct.usage`),
//! the working set is usage minus inactive file pages, floored at 0 (v2
//! `memory.current` − `memory.stat inactive_file`; v1
//! `memory.usage_in_bytes` − `memory.stat total_inactive_file`).

use std::path::{Path, PathBuf};

/// A cgroup file that is missing or unreadable.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no {key} (or not a number)")]
    Missing { path: PathBuf, key: &'static str },
}

/// Cumulative CPU (ns) and working set (bytes) of one cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub cpu_ns: u64,
    pub working_set: u64,
}

fn read(path: PathBuf) -> Result<(PathBuf, String), ReadError> {
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok((path, s)),
        Err(source) => Err(ReadError::Io { path, source }),
    }
}

/// Value of `key` in a flat-keyed file (`key value` per line).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn key(path: &Path, text: &str, key: &'static str) -> Result<u64, ReadError> {
    keyed(text, key).ok_or_else(|| ReadError::Missing {
        path: path.to_owned(),
        key,
    })
}

fn single(path: PathBuf, name: &'static str) -> Result<u64, ReadError> {
    let (path, text) = read(path)?;
    text.trim()
        .parse()
        .map_err(|_| ReadError::Missing { path, key: name })
}

/// v2 CPU: `cpu.stat usage_usec`, in ns.
pub fn v2_cpu(dir: &Path) -> Result<u64, ReadError> {
    let (path, text) = read(dir.join("cpu.stat"))?;
    Ok(key(&path, &text, "usage_usec")?.saturating_mul(1_000))
}

/// v2 container or pod: CPU and `memory.current − inactive_file`.
pub fn v2(dir: &Path) -> Result<Usage, ReadError> {
    let current = single(dir.join("memory.current"), "memory.current")?;
    let (path, stat) = read(dir.join("memory.stat"))?;
    let inactive = key(&path, &stat, "inactive_file")?;
    Ok(Usage {
        cpu_ns: v2_cpu(dir)?,
        working_set: current.saturating_sub(inactive),
    })
}

/// v2 root, which has no `memory.current`: `anon + file − inactive_file`
/// from the root `memory.stat`.
pub fn v2_root(root: &Path) -> Result<Usage, ReadError> {
    let (path, stat) = read(root.join("memory.stat"))?;
    let anon = key(&path, &stat, "anon")?;
    let file = key(&path, &stat, "file")?;
    let inactive = key(&path, &stat, "inactive_file")?;
    Ok(Usage {
        cpu_ns: v2_cpu(root)?,
        working_set: (anon + file).saturating_sub(inactive),
    })
}

/// v1: `cpuacct.usage` from the cpuacct tree, memory from the memory tree.
pub fn v1(cpuacct_dir: &Path, memory_dir: &Path) -> Result<Usage, ReadError> {
    let cpu_ns = single(cpuacct_dir.join("cpuacct.usage"), "cpuacct.usage")?;
    let usage = single(
        memory_dir.join("memory.usage_in_bytes"),
        "memory.usage_in_bytes",
    )?;
    let (path, stat) = read(memory_dir.join("memory.stat"))?;
    let inactive = key(&path, &stat, "total_inactive_file")?;
    Ok(Usage {
        cpu_ns,
        working_set: usage.saturating_sub(inactive),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files() {
        let text = "usage_usec 100\nuser_usec 60\nsystem_usec 40\n";
        assert_eq!(keyed(text, "usage_usec"), Some(100));
        assert_eq!(keyed(text, "usage"), None);
        assert_eq!(keyed("inactive_file x\n", "inactive_file"), None);
    }
}
