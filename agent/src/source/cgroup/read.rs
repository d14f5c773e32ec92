//! Reading one cgroup's CPU and memory with the kubelet's definitions:
//! CPU is cumulative usage (v2 `cpu.stat usage_usec`, v1 `cpuacct.usage`),
//! the working set is usage minus inactive file pages, floored at 0 (v2
//! `memory.current` − `memory.stat inactive_file`; v1
//! `memory.usage_in_bytes` − `memory.stat total_inactive_file`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// v2 CPU: `cpu.stat usage_usec`, in ns.
fn v2_cpu(dir: &Path) -> Result<u64, ReadError> {
    let (path, text) = read(dir.join("cpu.stat"))?;
    Ok(key(&path, &text, "usage_usec")?.saturating_mul(1_000))
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

/// A move in memory usage since `memory.stat` was last read larger than
/// this makes the next sample read it again at once...
const RESYNC_MIN_BYTES: u64 = 1 << 20;
/// ...or larger than this share (1/64) of the usage at that read.
const RESYNC_SHARE: u64 = 64;

/// The files of one container cgroup, opened once and read again from
/// offset 0 every sample (the kernel regenerates a cgroup file's text on
/// each read), so a sample costs no path walks, opens or closes.
///
/// Every sample reads the CPU counter and the memory usage. `memory.stat`,
/// which costs the kernel several times any other file (it renders some
/// 80 lines), is read only when due: at the first sample, when its reading
/// is `max_age` old, and at once when the usage moved by more than 1 MiB or
/// 1/64 since (page cache filled or reclaimed, which moves the inactive
/// file pages too). In between, the working set is the usage now minus the
/// inactive file pages last read. Swap comes with `memory.stat` (v1
/// `total_swap`; v2 `memory.swap.current`, read at the same time).
#[derive(Debug)]
pub struct OpenCgroup {
    kind: Kind,
    cpu: (PathBuf, File),
    current: (PathBuf, File),
    stat: (PathBuf, File),
    /// v2 `memory.swap.current`; absent without swap accounting.
    swap: Option<(PathBuf, File)>,
    /// What the last read of `memory.stat` gave.
    stat_read: Option<StatReading>,
    /// Share of `max_age` after which the first reading is due again, in
    /// [0.5, 1): spreads the containers listed together over samples.
    first_due: f64,
}

#[derive(Debug, Clone, Copy)]
struct StatReading {
    inactive: u64,
    swap: u64,
    /// The memory usage when it was read.
    usage: u64,
    at: Instant,
    /// Whether it is the cgroup's first reading.
    first: bool,
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

fn number(file: &(PathBuf, File), buf: &mut Vec<u8>, name: &'static str) -> Result<u64, ReadError> {
    let text = pread(file, buf)?;
    text.trim().parse::<u64>().map_err(|_| ReadError::Missing {
        path: file.0.clone(),
        key: name,
    })
}

/// A fixed share in [0.5, 1) picked by `dir`'s name.
fn spread(dir: &Path) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    0.5 + (h.finish() % 1024) as f64 / 2048.0
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
            stat_read: None,
            first_due: spread(dir),
        })
    }

    /// v1: `cpuacct.usage`, `memory.usage_in_bytes`, `memory.stat`.
    pub fn v1(cpuacct_dir: &Path, memory_dir: &Path) -> Result<Self, ReadError> {
        Ok(Self {
            kind: Kind::V1,
            cpu: open(cpuacct_dir.join("cpuacct.usage"))?,
            current: open(memory_dir.join("memory.usage_in_bytes"))?,
            stat: open(memory_dir.join("memory.stat"))?,
            swap: None,
            stat_read: None,
            first_due: spread(memory_dir),
        })
    }

    /// The usage at `now`, read through `buf`, with `memory.stat` read
    /// again when due (see the type's doc; a zero `max_age` reads it every
    /// time, which reads each file as the kubelet's definitions do).
    pub fn read(
        &mut self,
        buf: &mut Vec<u8>,
        now: Instant,
        max_age: Duration,
    ) -> Result<Usage, ReadError> {
        let (cpu_ns, current) = match self.kind {
            Kind::V2 => {
                let text = pread(&self.cpu, buf)?;
                let usec = key(&self.cpu.0, text, "usage_usec")?;
                (
                    usec.saturating_mul(1_000),
                    number(&self.current, buf, "memory.current")?,
                )
            }
            Kind::V1 => (
                number(&self.cpu, buf, "cpuacct.usage")?,
                number(&self.current, buf, "memory.usage_in_bytes")?,
            ),
        };
        let due = self.stat_read.is_none_or(|s| {
            let age = if s.first {
                max_age.mul_f64(self.first_due)
            } else {
                max_age
            };
            now.saturating_duration_since(s.at) >= age
                || current.abs_diff(s.usage) > (s.usage / RESYNC_SHARE).max(RESYNC_MIN_BYTES)
        });
        let stat = match self.stat_read {
            Some(s) if !due => s,
            _ => {
                let reading = self.read_stat(buf, current, now)?;
                self.stat_read = Some(reading);
                reading
            }
        };
        Ok(Usage {
            cpu_ns,
            working_set: current.saturating_sub(stat.inactive),
            swap: stat.swap,
        })
    }

    fn read_stat(
        &self,
        buf: &mut Vec<u8>,
        usage: u64,
        now: Instant,
    ) -> Result<StatReading, ReadError> {
        let text = pread(&self.stat, buf)?;
        let (inactive, swap) = match self.kind {
            Kind::V2 => {
                let inactive = key(&self.stat.0, text, "inactive_file")?;
                let swap = match &self.swap {
                    Some(f) => number(f, buf, "memory.swap.current").unwrap_or(0),
                    None => 0,
                };
                (inactive, swap)
            }
            // Swap is counted in `memory.stat` where the kernel accounts it.
            Kind::V1 => (
                key(&self.stat.0, text, "total_inactive_file")?,
                keyed(text, "total_swap").unwrap_or(0),
            ),
        };
        Ok(StatReading {
            inactive,
            swap,
            usage,
            at: now,
            first: self.stat_read.is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a cgroup whole, file by file, with the kubelet's definitions:
    /// what a kept-open cgroup reading `memory.stat` every time must give.
    fn single(path: PathBuf, name: &'static str) -> Result<u64, ReadError> {
        let (path, text) = read(path)?;
        text.trim()
            .parse()
            .map_err(|_| ReadError::Missing { path, key: name })
    }

    /// v2 container or pod: CPU and `memory.current − inactive_file`.
    fn v2(dir: &Path) -> Result<Usage, ReadError> {
        let current = single(dir.join("memory.current"), "memory.current")?;
        let (path, stat) = read(dir.join("memory.stat"))?;
        let inactive = key(&path, &stat, "inactive_file")?;
        Ok(Usage {
            cpu_ns: v2_cpu(dir)?,
            working_set: current.saturating_sub(inactive),
            swap: single(dir.join("memory.swap.current"), "memory.swap.current").unwrap_or(0),
        })
    }

    /// v1: `cpuacct.usage`, `memory.usage_in_bytes − total_inactive_file`,
    /// swap from `memory.stat`'s `total_swap`.
    fn v1(cpuacct_dir: &Path, memory_dir: &Path) -> Result<Usage, ReadError> {
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
            swap: keyed(&stat, "total_swap").unwrap_or(0),
        })
    }

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
        let mut open = OpenCgroup::v2(d).unwrap();
        let mut buf = Vec::new();
        let every = Duration::ZERO;
        let first = open.read(&mut buf, Instant::now(), every).unwrap();
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
            open.read(&mut buf, Instant::now(), every).unwrap(),
            Usage {
                cpu_ns: 250_000,
                working_set: 8500,
                swap: 0,
            }
        );
        // Swap accounting appears with its file.
        std::fs::write(d.join("memory.swap.current"), "4096\n").unwrap();
        let mut with_swap = OpenCgroup::v2(d).unwrap();
        let now = Instant::now();
        assert_eq!(with_swap.read(&mut buf, now, every).unwrap().swap, 4096);
        assert_eq!(v2(d).unwrap().swap, 4096);
        std::fs::write(d.join("cpu.stat"), "user_usec 1\n").unwrap();
        assert!(open.read(&mut buf, Instant::now(), every).is_err());
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
        let got = OpenCgroup::v2(d)
            .unwrap()
            .read(&mut buf, Instant::now(), Duration::ZERO)
            .unwrap();
        assert_eq!(got.working_set, 4000);
        assert!(buf.len() > stat.len(), "grown to {}", buf.len());
    }

    /// Between reads of `memory.stat` the working set follows the usage;
    /// the file is read again when its reading is `max_age` old, and at
    /// once when the usage moved by more than 1 MiB or 1/64.
    #[test]
    fn memory_stat_is_read_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let write = |usage: u64, inactive: u64| {
            std::fs::write(d.join("cpuacct.usage"), "1000\n").unwrap();
            std::fs::write(d.join("memory.usage_in_bytes"), format!("{usage}\n")).unwrap();
            std::fs::write(
                d.join("memory.stat"),
                format!("inactive_file 0\ntotal_inactive_file {inactive}\ntotal_swap 4096\n"),
            )
            .unwrap();
        };
        let mib = 1u64 << 20;
        write(100 * mib, 10 * mib);
        let mut open = OpenCgroup::v1(d, d).unwrap();
        let mut buf = Vec::new();
        let max_age = Duration::from_secs(10);
        let t0 = Instant::now();
        let ws = |open: &mut OpenCgroup, buf: &mut Vec<u8>, at: Duration| {
            open.read(buf, t0 + at, max_age).unwrap().working_set
        };
        assert_eq!(ws(&mut open, &mut buf, Duration::ZERO), 90 * mib);
        assert_eq!(open.read(&mut buf, t0, max_age).unwrap().swap, 4096);
        // The inactive pages move with the usage still: not seen yet.
        write(100 * mib, 30 * mib);
        assert_eq!(ws(&mut open, &mut buf, Duration::from_secs(4)), 90 * mib);
        // A small move of the usage (anonymous memory) is followed at once.
        write(100 * mib + 4096, 30 * mib);
        assert_eq!(
            ws(&mut open, &mut buf, Duration::from_secs(4)),
            90 * mib + 4096
        );
        // The first reading is due within [0.5, 1) of max_age...
        assert_eq!(ws(&mut open, &mut buf, max_age), 70 * mib + 4096);
        // ...and later ones a whole max_age after the last.
        write(100 * mib, 20 * mib);
        assert_eq!(
            ws(&mut open, &mut buf, max_age + Duration::from_secs(9)),
            70 * mib
        );
        assert_eq!(ws(&mut open, &mut buf, max_age * 2), 80 * mib);
        // Usage moved by over 1 MiB and 1/64: read again at once.
        write(110 * mib, 5 * mib);
        assert_eq!(
            ws(&mut open, &mut buf, max_age * 2 + Duration::from_secs(1)),
            105 * mib
        );
        // A zero max_age reads it every time.
        write(110 * mib, 6 * mib);
        assert_eq!(
            open.read(&mut buf, t0 + max_age * 2, Duration::ZERO)
                .unwrap()
                .working_set,
            104 * mib
        );
        // The one-shot reader agrees with the file as it is now.
        assert_eq!(v1(d, d).unwrap().working_set, 104 * mib);
        assert_eq!(v1(d, d).unwrap().swap, 4096);
    }
}
