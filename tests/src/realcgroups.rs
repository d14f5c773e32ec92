//! A node's pod and container cgroups made in this host's real cgroup
//! hierarchy (needs root), each container holding one sleeping process
//! that joined it before `exec`, so its CPU and memory are charged there
//! and non-zero. The agent reads the kernel's own files, not copies.
//! Everything made is removed on drop: processes killed, cgroups removed
//! leaf first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

use crate::cgroupfs::{Driver, FakeCgroups, Layout, Qos, Runtime};

const MOUNT: &str = "/sys/fs/cgroup";

/// Cgroups made for one benchmark, and the root to give the agent.
pub struct RealCgroups {
    /// What `--cgroup-root` should be: the v2 parent cgroup, or (v1) a
    /// directory linking `cpuacct` and `memory` to the parents made in
    /// those hierarchies.
    pub root: PathBuf,
    /// "v2" or "v1".
    pub hierarchy: &'static str,
    /// Parent cgroups made, one per hierarchy.
    bases: Vec<PathBuf>,
    /// Every cgroup made, parents before children.
    made: Vec<PathBuf>,
    procs: Vec<Child>,
    /// Names pods and containers as the kubelet and containerd do.
    names: FakeCgroups,
}

impl RealCgroups {
    /// Parents named `name` in each hierarchy this host mounts; `dir` holds
    /// the v1 links.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let names_dir = dir.join("names");
        let names = FakeCgroups::new(&names_dir, Layout::V2, Driver::Systemd, Runtime::Containerd);
        let mount = Path::new(MOUNT);
        let (hierarchy, bases, root) = if mount.join("cgroup.controllers").is_file() {
            let base = mount.join(name);
            ("v2", vec![base.clone()], base)
        } else {
            let cpuacct = ["cpuacct", "cpu,cpuacct"]
                .iter()
                .map(|d| mount.join(d))
                .find(|d| d.join("cpuacct.usage").is_file())
                .context("no cgroup v1 cpuacct hierarchy")?;
            let memory = mount.join("memory");
            if !memory.join("memory.usage_in_bytes").is_file() {
                bail!("no cgroup v1 memory hierarchy");
            }
            let root = dir.join("cgroup-root");
            std::fs::create_dir_all(&root)?;
            std::os::unix::fs::symlink(cpuacct.join(name), root.join("cpuacct"))?;
            std::os::unix::fs::symlink(memory.join(name), root.join("memory"))?;
            ("v1", vec![cpuacct.join(name), memory.join(name)], root)
        };
        let mut t = Self {
            root,
            hierarchy,
            bases: bases.clone(),
            made: Vec::new(),
            procs: Vec::new(),
            names,
        };
        for base in &bases {
            t.mkdir(base)?;
        }
        Ok(t)
    }

    fn mkdir(&mut self, dir: &Path) -> anyhow::Result<()> {
        if dir.exists() {
            return Ok(());
        }
        std::fs::create_dir(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        self.made.push(dir.to_owned());
        if self.hierarchy == "v2" {
            // Children get the cpu and memory controllers (v2 turns them
            // on per level; processes live only in leaves).
            if let Some(parent) = dir.parent() {
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+cpu +memory");
            }
        }
        Ok(())
    }

    /// Makes the cgroup of container `id` of the Burstable pod `uid`
    /// (systemd driver, containerd names) and starts its process.
    pub fn add_container(&mut self, uid: &str, id: &str) -> anyhow::Result<()> {
        let pod = self.names.pod_rel(Qos::Burstable, uid);
        let rel = self.names.container_rel(&pod, id);
        let mut joins = Vec::new();
        for base in self.bases.clone() {
            let mut dir = base.clone();
            for part in rel.components() {
                dir.push(part);
                self.mkdir(&dir)?;
            }
            joins.push(dir.join("cgroup.procs"));
        }
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"for f in "$@"; do echo $$ > "$f" || exit 1; done; exec sleep 100000"#)
            .arg("sh")
            .args(&joins)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting a container's process")?;
        self.procs.push(child);
        Ok(())
    }
}

impl Drop for RealCgroups {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        for dir in self.made.iter().rev() {
            // A cgroup whose last process just exited may take a moment to
            // become removable.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}
