//! Node and container usage read straight from the kernel's cgroup files,
//! with the kubelet's definitions, mapped to pods through the pod index.
//! Cgroups of unknown pods are skipped and counted; a pod's sandbox
//! (pause) cgroup is not a container and is skipped too.

pub mod detect;
pub mod layout;
pub mod read;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::batch::{Batch, ByName, Name, PodRef, Point};
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
    /// Longest a container's `memory.stat` reading is used
    /// ([`read::OpenCgroup`]).
    stat_max_age: Duration,
    /// The last walk of the tree, with its cgroups' files kept open.
    walk: Arc<Mutex<Walk>>,
}

/// Default longest use of a `memory.stat` reading: the kubelet's own
/// housekeeping interval, at which its figures for a container refresh.
pub const MEMORY_STAT_MAX_AGE: Duration = Duration::from_secs(10);

/// The last walk of the tree, whose container cgroups keep their files
/// open between samples, and the buffer they are read through.
#[derive(Debug, Default)]
struct Walk {
    buf: Vec<u8>,
    listing: Option<Listing>,
    /// The v1 root cgroup's files, kept open like a container's (the v2
    /// root has no `memory.current` and is read whole each sample).
    root: Option<read::OpenCgroup>,
    /// The host's swap in use from /proc, and when it was read: refreshed
    /// as often as a `memory.stat` reading.
    host_swap: Option<(Instant, u64)>,
}

/// The longest a walk of the tree is reused while nothing says it changed.
const RELIST_AFTER: Duration = Duration::from_secs(60);

/// The container cgroups one walk of the tree found, mapped to containers
/// through one pod index. Samples read these cgroups without walking the
/// tree again until the index changes (a pod came or went, a container
/// started or restarted: the watch sees each), a cgroup fails to read, a
/// running container was not found, or [`RELIST_AFTER`] has passed.
#[derive(Debug)]
struct Listing {
    /// [`PodIndex::version`] of the index it was mapped with.
    index: u64,
    made: Instant,
    /// By pod: each pod's containers are adjacent.
    containers: Vec<Listed>,
    /// Pod cgroups no pod in the index owns.
    unmapped: u64,
    /// Walk again at the next sample.
    stale: bool,
}

#[derive(Debug)]
struct Listed {
    rel: PathBuf,
    pod: PodRef,
    name: Name,
    started_ns: Option<i64>,
    /// Opened at the first read; closed (and the walk made again) when a
    /// read fails, and when a walk no longer finds the cgroup.
    files: Option<read::OpenCgroup>,
}

impl Listing {
    fn fresh(&self, pods: &PodIndex) -> bool {
        !self.stale && self.index == pods.version() && self.made.elapsed() < RELIST_AFTER
    }
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
            stat_max_age: MEMORY_STAT_MAX_AGE,
            walk: Arc::default(),
        })
    }

    /// Reads each container's `memory.stat` again once its reading is
    /// `max_age` old (zero: every sample), and whenever its memory usage
    /// moved by more than 1 MiB or 1/64 since.
    pub fn with_memory_stat_max_age(mut self, max_age: Duration) -> Self {
        self.stat_max_age = max_age;
        self
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// Opens the files of the container cgroup at `rel`.
    fn open(&self, rel: &Path) -> Result<read::OpenCgroup, read::ReadError> {
        match &self.hierarchy {
            Hierarchy::V2 { root } => read::OpenCgroup::v2(&root.join(rel)),
            Hierarchy::V1 {
                cpuacct, memory, ..
            } => read::OpenCgroup::v1(&cpuacct.join(rel), &memory.join(rel)),
        }
    }

    /// Usage of the cgroup at `rel` through its kept-open `files` (opened
    /// on first sight; closed when they fail, to be opened again).
    fn read_kept(
        &self,
        files: &mut Option<read::OpenCgroup>,
        rel: &Path,
        buf: &mut Vec<u8>,
        now: Instant,
    ) -> Result<read::Usage, read::ReadError> {
        let open = match files {
            Some(f) => f,
            None => files.insert(self.open(rel)?),
        };
        let got = open.read(buf, now, self.stat_max_age);
        if got.is_err() {
            *files = None;
        }
        got
    }

    /// Usage of the listed container cgroup `c`.
    fn container_usage(
        &self,
        c: &mut Listed,
        buf: &mut Vec<u8>,
        now: Instant,
    ) -> Result<read::Usage, read::ReadError> {
        self.read_kept(&mut c.files, &c.rel, buf, now)
    }

    /// Where pod cgroups are listed (the CPU tree for v1).
    fn listing_root(&self) -> &Path {
        match &self.hierarchy {
            Hierarchy::V2 { root } => root,
            Hierarchy::V1 { cpuacct, .. } => cpuacct,
        }
    }

    /// Usage of the root cgroup: through kept-open files on v1.
    fn root_usage(&self, walk: &mut Walk, now: Instant) -> Result<read::Usage, read::ReadError> {
        match &self.hierarchy {
            Hierarchy::V2 { root } => read::v2_root(root),
            Hierarchy::V1 { .. } => {
                self.read_kept(&mut walk.root, Path::new(""), &mut walk.buf, now)
            }
        }
    }

    fn node(&self, walk: &mut Walk, started: Instant) -> Result<Point, CgroupError> {
        let now = SystemTime::now();
        match self.root_usage(walk, started) {
            Ok(u) => Ok(Point {
                timestamp_ns: unix_nanos(now),
                cpu_ns: u.cpu_ns,
                memory_bytes: u.working_set,
                // The node's swap is the host's (the v2 root cgroup has
                // no swap file); without /proc, none is known.
                swap_bytes: self.host_swap(walk, started),
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

    /// The host's swap in use, read again when its reading is as old as
    /// a `memory.stat` reading may be.
    fn host_swap(&self, walk: &mut Walk, now: Instant) -> u64 {
        match walk.host_swap {
            Some((at, swap)) if now.saturating_duration_since(at) < self.stat_max_age => swap,
            _ => {
                let swap = self.host.swap_in_use().unwrap_or(0);
                walk.host_swap = Some((now, swap));
                swap
            }
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

    /// Walks the tree for the container cgroups of the pods in `pods`,
    /// keeping the files `old` had open for cgroups still there.
    fn list(&self, pods: &PodIndex, old: Option<Listing>) -> Listing {
        let mut open: HashMap<PathBuf, read::OpenCgroup> = old
            .into_iter()
            .flat_map(|l| l.containers)
            .filter_map(|c| Some((c.rel, c.files?)))
            .collect();
        let base = self.listing_root();
        let mut listing = Listing {
            index: pods.version(),
            made: Instant::now(),
            containers: Vec::new(),
            unmapped: 0,
            stale: false,
        };
        for (rel, uid) in self.pod_dirs() {
            let Some(info) = pods.by_uid(&uid) else {
                listing.unmapped += 1;
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
                let rel = rel.join(&name);
                listing.containers.push(Listed {
                    files: open.remove(&rel),
                    rel,
                    pod: info.pod.clone(),
                    name: Name::from(c.name.as_str()),
                    started_ns: c.started_ns,
                });
            }
        }
        // A running container whose cgroup is not there yet: look again.
        let running = pods
            .pods()
            .iter()
            .flat_map(|p| &p.containers)
            .filter(|c| c.started_ns.is_some())
            .count();
        let found = listing
            .containers
            .iter()
            .filter(|c| c.started_ns.is_some())
            .count();
        listing.stale = found < running;
        listing
    }

    /// One sample of the node and every mapped container.
    pub fn sample(&self, pods: &PodIndex) -> Result<(Batch, DecodeStats), CgroupError> {
        let mut stats = DecodeStats::default();
        let started = Instant::now();
        let mut guard = self.walk.lock().unwrap_or_else(|p| p.into_inner());
        let walk = &mut *guard;
        let mut batch = Batch {
            node: Some(self.node(walk, started)?),
            ..Batch::default()
        };
        let base = self.listing_root();
        let mut listing = match walk.listing.take() {
            Some(l) if l.fresh(pods) => l,
            old => self.list(pods, old),
        };
        stats.unmapped_cgroups = listing.unmapped;
        let mut stale = false;
        let mut containers = listing.containers.iter_mut().peekable();
        while let Some(first) = containers.next() {
            let mut points = ByName::new();
            let pod = first.pod.clone();
            let mut next = Some(first);
            while let Some(c) = next {
                let now = SystemTime::now();
                match self.container_usage(c, &mut walk.buf, started) {
                    Ok(u) if u.cpu_ns == 0 || u.working_set == 0 => {
                        stats.incomplete_containers += 1;
                    }
                    Ok(u) => {
                        let start_ns = c
                            .started_ns
                            .unwrap_or_else(|| created_ns(&base.join(&c.rel)));
                        points.insert(
                            c.name.clone(),
                            Point {
                                timestamp_ns: unix_nanos(now),
                                start_ns,
                                cpu_ns: u.cpu_ns,
                                memory_bytes: u.working_set,
                                swap_bytes: u.swap,
                            },
                        );
                    }
                    Err(e) => {
                        // A container that just exited; its cgroup is going away.
                        tracing::debug!(error = %e, "skipping container cgroup");
                        stats.invalid_samples += 1;
                        stale = true;
                    }
                }
                next = containers.next_if(|n| n.pod == pod);
            }
            if !points.is_empty() {
                batch.pods.insert(pod, points);
            }
        }
        listing.stale |= stale;
        walk.listing = Some(listing);
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
