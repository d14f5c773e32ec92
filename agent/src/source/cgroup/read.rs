//! Reading one cgroup's CPU and memory with the kubelet's definitions:
//! CPU is cumulative usage (v2 `cpu.stat usage_usec`, v1 `cpuacct.usage`),
//! the working set is usage minus inactive file pages, floored at 0 (v2
//! `memory.current` − `memory.stat inactive_file`; v1
//! `memory.usage_in_bytes` − `memory.stat total_inactive_file`).

use std::fs::File;
use std::os::unix::fs::FileExt;
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

/// Cumulative CPU (ns), working set and swap in use (bytes) of one
/// cgroup; swap is 0 where the kernel has no swap accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub cpu_ns: u64,
    pub working_set: u64,
    pub swap: u64,
}

fn read(path: PathBuf) -> Result<(PathBuf, String), ReadError> {
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok((path, s)),
        Err(source) => Err(ReadError::Io { path, source }),
    }
}

/// Value of `key` in a flat-keyed file (`key value` per line): the first
/// line with that key decides; a malformed value there is no value, never
/// a later line's.
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))?;
    v.trim().parse().ok()
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
        swap: single(dir.join("memory.swap.current"), "memory.swap.current").unwrap_or(0),
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
        swap: 0,
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
    // memsw counts memory and swap together, where swap accounting is on.
    let memsw = single(
        memory_dir.join("memory.memsw.usage_in_bytes"),
        "memory.memsw.usage_in_bytes",
    );
    Ok(Usage {
        cpu_ns,
        working_set: usage.saturating_sub(inactive),
        swap: memsw.map_or(0, |m| m.saturating_sub(usage)),
    })
}

/// The files of one container cgroup, opened once and read again from
/// offset 0 every sample (the kernel regenerates a cgroup file's text on
/// each read), so a sample costs three reads per container and no path
/// walks, opens or closes.
#[derive(Debug)]
pub struct OpenCgroup {
    kind: Kind,
    cpu: (PathBuf, File),
    current: (PathBuf, File),
    stat: (PathBuf, File),
    /// v2 `memory.swap.current`, v1 `memory.memsw.usage_in_bytes`; absent
    /// without swap accounting.
    swap: Option<(PathBuf, File)>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    V2,
    V1,
}

fn open(path: PathBuf) -> Result<(PathBuf, File), ReadError> {
    match File::open(&path) {
        Ok(f) => Ok((path, f)),
        Err(source) => Err(ReadError::Io { path, source }),
    }
}

/// Reads all of `f` from offset 0 into `buf` (kept between calls). A read
/// that leaves room in the buffer has reached the end: the kernel renders
/// a cgroup file whole and hands over as much of it as fits, so one system
/// call per file is the norm, not two.
fn pread<'a>((path, f): &(PathBuf, File), buf: &'a mut Vec<u8>) -> Result<&'a str, ReadError> {
    if buf.len() < 4096 {
        buf.resize(4096, 0);
    }
    let mut n = 0;
    loop {
        if n == buf.len() {
            // Cgroup files are a few KiB; a file that keeps growing is not one.
            if buf.len() >= 1 << 20 {
                break;
            }
            buf.resize(buf.len() * 2, 0);
        }
        match f.read_at(&mut buf[n..], n as u64) {
            Ok(r) => {
                n += r;
                if r == 0 || n < buf.len() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(ReadError::Io {
                    path: path.clone(),
                    source,
                })
            }
        }
    }
    std::str::from_utf8(&buf[..n]).map_err(|_| ReadError::Missing {
        path: path.clone(),
        key: "text",
    })
}

impl OpenCgroup {
    /// v2: `cpu.stat`, `memory.current`, `memory.stat` of `dir`.
    pub fn v2(dir: &Path) -> Result<Self, ReadError> {
        Ok(Self {
            kind: Kind::V2,
            cpu: open(dir.join("cpu.stat"))?,
            current: open(dir.join("memory.current"))?,
            stat: open(dir.join("memory.stat"))?,
            swap: open(dir.join("memory.swap.current")).ok(),
        })
    }

    /// v1: `cpuacct.usage`, `memory.usage_in_bytes`, `memory.stat`.
    pub fn v1(cpuacct_dir: &Path, memory_dir: &Path) -> Result<Self, ReadError> {
        Ok(Self {
            kind: Kind::V1,
            cpu: open(cpuacct_dir.join("cpuacct.usage"))?,
            current: open(memory_dir.join("memory.usage_in_bytes"))?,
            stat: open(memory_dir.join("memory.stat"))?,
            swap: open(memory_dir.join("memory.memsw.usage_in_bytes")).ok(),
        })
    }

    /// The usage now, read through `buf`; the same definitions as [`v2`]
    /// and [`v1`].
    pub fn read(&self, buf: &mut Vec<u8>) -> Result<Usage, ReadError> {
        let number = |file: &(PathBuf, File), buf: &mut Vec<u8>, name: &'static str| {
            let text = pread(file, buf)?;
            text.trim().parse::<u64>().map_err(|_| ReadError::Missing {
                path: file.0.clone(),
                key: name,
            })
        };
        let (cpu_ns, current, inactive_key) = match self.kind {
            Kind::V2 => {
                let text = pread(&self.cpu, buf)?;
                let usec = key(&self.cpu.0, text, "usage_usec")?;
                (
                    usec.saturating_mul(1_000),
                    number(&self.current, buf, "memory.current")?,
                    "inactive_file",
                )
            }
            Kind::V1 => (
                number(&self.cpu, buf, "cpuacct.usage")?,
                number(&self.current, buf, "memory.usage_in_bytes")?,
                "total_inactive_file",
            ),
        };
        let text = pread(&self.stat, buf)?;
        let inactive = key(&self.stat.0, text, inactive_key)?;
        let swap = match (&self.swap, self.kind) {
            (None, _) => 0,
            (Some(f), Kind::V2) => number(f, buf, "memory.swap.current").unwrap_or(0),
            (Some(f), Kind::V1) => number(f, buf, "memory.memsw.usage_in_bytes")
                .map_or(0, |memsw| memsw.saturating_sub(current)),
        };
        Ok(Usage {
            cpu_ns,
            working_set: current.saturating_sub(inactive),
            swap,
        })
    }
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
        // Found by fuzzing: a malformed first line is not skipped for a
        // later one with the same key.
        assert_eq!(keyed("usage_usec 1 15\nusage_usec 1\n", "usage_usec"), None);
    }

    /// A kept-open cgroup reads what the files say now, as the one-shot
    /// readers do, and a removed cgroup is an error, not stale numbers.
    #[test]
    fn open_cgroups_follow_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let write = |cpu_usec: u64, current: u64, inactive: u64| {
            std::fs::write(
                d.join("cpu.stat"),
                format!("usage_usec {cpu_usec}\nuser_usec 1\n"),
            )
            .unwrap();
            std::fs::write(d.join("memory.current"), format!("{current}\n")).unwrap();
            std::fs::write(
                d.join("memory.stat"),
                format!(
                    "anon 1\nfile 2\ninactive_file {inactive}\n{}",
                    "pad 0\n".repeat(900)
                ),
            )
            .unwrap();
        };
        write(100, 5000, 1000);
        let open = OpenCgroup::v2(d).unwrap();
        let mut buf = Vec::new();
        let first = open.read(&mut buf).unwrap();
        assert_eq!(first, v2(d).unwrap());
        assert_eq!(
            first,
            Usage {
                cpu_ns: 100_000,
                working_set: 4000,
                swap: 0,
            }
        );
        // Files rewritten in place (as the kernel regenerates them).
        write(250, 9000, 500);
        assert_eq!(
            open.read(&mut buf).unwrap(),
            Usage {
                cpu_ns: 250_000,
                working_set: 8500,
                swap: 0,
            }
        );
        // Swap accounting appears with its file.
        std::fs::write(d.join("memory.swap.current"), "4096\n").unwrap();
        let with_swap = OpenCgroup::v2(d).unwrap();
        assert_eq!(with_swap.read(&mut buf).unwrap().swap, 4096);
        assert_eq!(v2(d).unwrap().swap, 4096);
        std::fs::write(d.join("cpu.stat"), "user_usec 1\n").unwrap();
        assert!(open.read(&mut buf).is_err());
    }

    /// A file longer than the buffer is read to its end, the buffer grown.
    #[test]
    fn long_files_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("cpu.stat"), "usage_usec 7\n").unwrap();
        std::fs::write(d.join("memory.current"), "5000\n").unwrap();
        let stat = format!("{}inactive_file 1000\n", "pad 0\n".repeat(3000));
        std::fs::write(d.join("memory.stat"), &stat).unwrap();
        let mut buf = Vec::new();
        let got = OpenCgroup::v2(d).unwrap().read(&mut buf).unwrap();
        assert_eq!(got.working_set, 4000);
        assert!(buf.len() > stat.len(), "grown to {}", buf.len());
    }
}
