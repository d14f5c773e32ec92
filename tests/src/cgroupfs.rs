//! Fake cgroup trees in a temp dir, laid out as the kubelet and runtimes
//! lay them out, with files in the kernel's formats (taken from the shared
//! cgroup fixtures). Values change in place, as the kernel's files do under
//! a descriptor a reader keeps open (see [`write_in_place`]).

use std::path::{Path, PathBuf};

use crate::fixtures::fixture;

/// Which hierarchy the tree imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    V2,
    V1,
    Hybrid,
}

/// The kubelet's cgroup driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

/// The container runtime naming container cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    Crio,
    Docker,
}

/// Pod QoS class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// A fake cgroup tree.
#[derive(Debug, Clone)]
pub struct FakeCgroups {
    pub root: PathBuf,
    pub layout: Layout,
    pub driver: Driver,
    pub runtime: Runtime,
    templates: Templates,
}

/// The kernel-format files values are written into, read once.
#[derive(Debug, Clone)]
struct Templates {
    cpu_stat: String,
    memory_stat_v2: String,
    memory_stat_v1: String,
}

/// Replaces the values of `keys` in a flat-keyed template, keeping every
/// other line as the kernel writes it.
fn with_values(template: &str, values: &[(&str, u64)]) -> String {
    let mut out: String = template
        .lines()
        .map(|l| {
            let key = l.split(' ').next().unwrap_or("");
            match values.iter().find(|(k, _)| *k == key) {
                Some((k, v)) => format!("{k} {v}\n"),
                None => format!("{l}\n"),
            }
        })
        .collect();
    for (k, v) in values {
        if !template.lines().any(|l| l.split(' ').next() == Some(k)) {
            out.push_str(&format!("{k} {v}\n"));
        }
    }
    out
}

/// Writes `text` to `path` atomically.
/// Rewrites an existing file in place (same inode, so a descriptor kept
/// open reads the new text, as with cgroupfs), in one write at offset 0; a
/// text shorter than the file is padded with blank lines, so a reader sees
/// the old text or the new one, never a truncated file. A file that does
/// not exist yet is created atomically.
pub fn write_in_place(path: &Path, text: &str) {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) else {
        return write_atomic(path, text);
    };
    let old = f.metadata().map_or(0, |m| m.len() as usize);
    let mut bytes = text.as_bytes().to_vec();
    if bytes.len() < old {
        bytes.resize(old, b'\n');
    }
    f.write_all_at(&bytes, 0)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Writes `text` to `path` through a temporary file and a rename, so a
/// reader opening the path sees the old file or the new one.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename {}: {e}", path.display()));
}

impl FakeCgroups {
    /// An empty tree with root files in place.
    pub fn new(root: &Path, layout: Layout, driver: Driver, runtime: Runtime) -> Self {
        let t = Self {
            root: root.to_owned(),
            layout,
            driver,
            runtime,
            templates: Templates {
                cpu_stat: fixture("cgroup-v2/cpu.stat"),
                memory_stat_v2: fixture("cgroup-v2/memory.stat"),
                memory_stat_v1: fixture("cgroup-v1/memory.stat.keys-synthetic"),
            },
        };
        match layout {
            Layout::V2 => write_in_place(
                &root.join("cgroup.controllers"),
                "cpuset cpu io memory pids\n",
            ),
            Layout::V1 | Layout::Hybrid => {
                std::fs::create_dir_all(root.join("cpu,cpuacct")).unwrap_or_else(|e| panic!("{e}"));
                std::fs::create_dir_all(root.join("memory")).unwrap_or_else(|e| panic!("{e}"));
                if layout == Layout::Hybrid {
                    write_in_place(&root.join("unified/cgroup.controllers"), "");
                }
            }
        }
        t.set_node(1_000_000_000, 1 << 30);
        t
    }

    /// Root directories holding CPU and memory accounting.
    fn bases(&self) -> (PathBuf, PathBuf) {
        match self.layout {
            Layout::V2 => (self.root.clone(), self.root.clone()),
            _ => (self.root.join("cpu,cpuacct"), self.root.join("memory")),
        }
    }

    /// Sets the node's cumulative CPU (ns, a multiple of 1000 for v2) and
    /// working set.
    pub fn set_node(&self, cpu_ns: u64, working_set: u64) {
        let (cpu, mem) = self.bases();
        match self.layout {
            Layout::V2 => {
                write_in_place(
                    &cpu.join("cpu.stat"),
                    &with_values(&self.templates.cpu_stat, &[("usage_usec", cpu_ns / 1000)]),
                );
                // anon + file − inactive_file = working_set
                let inactive = 5_307_346_944;
                let file = inactive + 1_179_316_224;
                let anon = working_set.saturating_sub(file - inactive);
                let stat = with_values(
                    &self.templates.memory_stat_v2,
                    &[
                        ("anon", anon),
                        ("file", file),
                        ("inactive_file", inactive),
                        ("active_file", file - inactive),
                    ],
                );
                write_in_place(&mem.join("memory.stat"), &stat);
            }
            _ => self.write_v1(&cpu, &mem, cpu_ns, working_set),
        }
    }

    fn write_v1(&self, cpu: &Path, mem: &Path, cpu_ns: u64, working_set: u64) {
        let inactive = 30 * 4096;
        write_in_place(&cpu.join("cpuacct.usage"), &format!("{cpu_ns}\n"));
        write_in_place(
            &mem.join("memory.usage_in_bytes"),
            &format!("{}\n", working_set + inactive),
        );
        let stat = with_values(
            &self.templates.memory_stat_v1,
            &[("total_inactive_file", inactive)],
        );
        write_in_place(&mem.join("memory.stat"), &stat);
    }

    /// Relative path of a pod's cgroup.
    pub fn pod_rel(&self, qos: Qos, uid: &str) -> PathBuf {
        let under = uid.replace('-', "_");
        match (self.driver, qos) {
            (Driver::Cgroupfs, Qos::Guaranteed) => PathBuf::from(format!("kubepods/pod{uid}")),
            (Driver::Cgroupfs, Qos::Burstable) => {
                PathBuf::from(format!("kubepods/burstable/pod{uid}"))
            }
            (Driver::Cgroupfs, Qos::BestEffort) => {
                PathBuf::from(format!("kubepods/besteffort/pod{uid}"))
            }
            (Driver::Systemd, Qos::Guaranteed) => {
                PathBuf::from(format!("kubepods.slice/kubepods-pod{under}.slice"))
            }
            (Driver::Systemd, Qos::Burstable) => PathBuf::from(format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under}.slice"
            )),
            (Driver::Systemd, Qos::BestEffort) => PathBuf::from(format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{under}.slice"
            )),
        }
    }

    /// Relative path of a container's cgroup inside `pod_rel`.
    pub fn container_rel(&self, pod_rel: &Path, id: &str) -> PathBuf {
        let name = match (self.driver, self.runtime) {
            (Driver::Systemd, Runtime::Containerd) => format!("cri-containerd-{id}.scope"),
            (Driver::Systemd, Runtime::Crio) => format!("crio-{id}.scope"),
            (Driver::Systemd, Runtime::Docker) => format!("docker-{id}.scope"),
            (Driver::Cgroupfs, Runtime::Crio) => format!("crio-{id}"),
            (Driver::Cgroupfs, _) => id.to_string(),
        };
        pod_rel.join(name)
    }

    /// The `containerID` a pod status shows for `id` under this runtime.
    pub fn status_id(&self, id: &str) -> String {
        let scheme = match self.runtime {
            Runtime::Containerd => "containerd",
            Runtime::Crio => "cri-o",
            Runtime::Docker => "docker",
        };
        format!("{scheme}://{id}")
    }

    /// Creates or updates a cgroup at `rel` with cumulative CPU (ns) and a
    /// working set (bytes).
    pub fn set(&self, rel: &Path, cpu_ns: u64, working_set: u64) {
        let (cpu, mem) = self.bases();
        match self.layout {
            Layout::V2 => {
                let dir = cpu.join(rel);
                write_in_place(
                    &dir.join("cpu.stat"),
                    &with_values(&self.templates.cpu_stat, &[("usage_usec", cpu_ns / 1000)]),
                );
                let inactive = 4096 * 7;
                write_in_place(
                    &dir.join("memory.current"),
                    &format!("{}\n", working_set + inactive),
                );
                let stat = with_values(
                    &self.templates.memory_stat_v2,
                    &[("inactive_file", inactive)],
                );
                write_in_place(&dir.join("memory.stat"), &stat);
            }
            _ => self.write_v1(&cpu.join(rel), &mem.join(rel), cpu_ns, working_set),
        }
    }
}
