//! The cgroup source against the real kernel: a kubepods-like hierarchy
//! under the machine's /sys/fs/cgroup, one process burning a CPU in it,
//! mapped to its pod the way the agent's API watch delivers it.
//! Needs root and a kernel that lets it create cgroups; where the kernel
//! refuses, the test prints `SKIPPED: <the kernel's error>` and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use metrics_agent::batch::PodRef;
use std::sync::Arc;

use metrics_agent::meta::{ApiPods, SlimPod};
use metrics_agent::pods::PodCache;
use metrics_agent::rates::RateStore;
use metrics_agent::source::cgroup::{CgroupSource, Hierarchy};

const ROOT: &str = "/sys/fs/cgroup";

/// CPU the kernel accounted to process `pid` and its reaped children, s.
fn process_cpu_s(pid: u32) -> f64 {
    let stat = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .unwrap();
    let ticks = stat.utime + stat.stime + (stat.cutime + stat.cstime) as u64;
    ticks as f64 / procfs::ticks_per_second() as f64
}

/// Removes the directories it created, deepest first, when dropped.
struct Created(Vec<PathBuf>);

impl Drop for Created {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn mkdirs(base: &Path, rel: &Path, created: &mut Created) -> std::io::Result<PathBuf> {
    let mut cur = base.to_path_buf();
    for part in rel.components() {
        cur.push(part);
        if !cur.exists() {
            std::fs::create_dir(&cur)?;
            created.0.push(cur.clone());
        }
    }
    Ok(cur)
}

/// Enables cpu and memory accounting down to `rel` on cgroup v2.
fn enable_v2_controllers(root: &Path, rel: &Path) {
    let mut cur = root.to_path_buf();
    let _ = std::fs::write(cur.join("cgroup.subtree_control"), "+cpu +memory");
    for part in rel
        .components()
        .take(rel.components().count().saturating_sub(1))
    {
        cur.push(part);
        let _ = std::fs::write(cur.join("cgroup.subtree_control"), "+cpu +memory");
    }
}

fn kernel_working_set(h: &Hierarchy, rel: &Path) -> u64 {
    let (stat, inactive) = match h {
        Hierarchy::V2 { root } => (root.join(rel).join("memory.stat"), "inactive_file"),
        Hierarchy::V1 { memory, .. } => {
            (memory.join(rel).join("memory.stat"), "total_inactive_file")
        }
    };
    let text = std::fs::read_to_string(stat).unwrap();
    let inactive = metrics_agent::source::cgroup::read::keyed(&text, inactive).unwrap();
    kernel_usage(h, rel).saturating_sub(inactive)
}

/// One container cgroup of a kubepods-like pod in the host's hierarchy,
/// and the pod index mapping it as the agent's API watch delivers it. The
/// tests take turns: they share the kubepods parents.
struct KernelContainer {
    source: CgroupSource,
    hierarchy: Hierarchy,
    rel: PathBuf,
    leaves: Vec<PathBuf>,
    cache: PodCache,
    pod: PodRef,
    _created: Created,
}

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Makes the cgroup of container `container` of pod `kernel-test/<name>`
/// (IDs told apart by `tag`); `Err` says why the kernel would not.
async fn kernel_container(
    tag: u16,
    name: &str,
    container: &str,
) -> Result<KernelContainer, String> {
    let source = CgroupSource::new(Path::new(ROOT), Path::new("/proc"))
        .map_err(|e| format!("no cgroup hierarchy under {ROOT}: {e}"))?;
    let hierarchy = source.hierarchy().clone();
    let pid = std::process::id();
    let uid = format!("{tag:04x}{:04x}-0000-4000-8000-{pid:012x}", pid & 0xffff);
    let cid = format!(
        "{:064x}",
        u128::from(pid) << 64 | u128::from(tag) << 16 | 0xbeef
    );
    let rel = PathBuf::from(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
        uid.replace('-', "_")
    ));
    let bases: Vec<PathBuf> = match &hierarchy {
        Hierarchy::V2 { root } => vec![root.clone()],
        Hierarchy::V1 {
            cpuacct, memory, ..
        } => vec![cpuacct.clone(), memory.clone()],
    };
    let mut created = Created(Vec::new());
    let mut leaves = Vec::new();
    for base in &bases {
        let leaf = mkdirs(base, &rel, &mut created)
            .map_err(|e| format!("{e} (creating a cgroup under {})", base.display()))?;
        leaves.push(leaf);
    }
    if let Hierarchy::V2 { root } = &hierarchy {
        enable_v2_controllers(root, &rel);
    }
    // The pod as the API serves it to the agent's watch (no kubelet).
    let api_pod = serde_json::json!({"kind": "Pod", "apiVersion": "v1",
        "metadata": {"uid": uid, "namespace": "kernel-test", "name": name, "resourceVersion": "7"},
        "spec": {"nodeName": "this-node", "containers": [{"name": container, "image": "sh"}]},
        "status": {"containerStatuses": [{"name": container, "containerID": format!("containerd://{cid}"),
            "state": {"running": {"startedAt": "2020-01-01T00:00:00Z"}}}]}
    });
    let slim: SlimPod = serde_json::from_value(api_pod).unwrap();
    let known = Arc::new(ApiPods::default());
    known.replace(vec![slim.info]);
    let mut cache = PodCache::from_api(known);
    cache.refresh(false).await;
    Ok(KernelContainer {
        source,
        hierarchy,
        rel,
        leaves,
        cache,
        pod: PodRef {
            namespace: "kernel-test".into(),
            name: name.into(),
        },
        _created: created,
    })
}

/// Starts `script` under `sh` and moves it into the container's cgroup;
/// the script should wait for a first line on stdin before it does what is
/// to be charged there. `Err` says why the kernel would not.
fn start_in(c: &KernelContainer, script: &str) -> Result<std::process::Child, String> {
    let mut child = std::process::Command::new("sh")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    for leaf in &c.leaves {
        if let Err(e) = std::fs::write(leaf.join("cgroup.procs"), &pid) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{e} (moving a process into {})", leaf.display()));
        }
    }
    Ok(child)
}

/// Writes one line to the child's stdin and waits for one line back.
fn step(child: &mut std::process::Child) -> String {
    use std::io::{BufRead, Write};
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    let out = child.stdout.as_mut().unwrap();
    std::io::BufReader::new(out).read_line(&mut line).unwrap();
    line
}

fn kernel_usage(h: &Hierarchy, rel: &Path) -> u64 {
    let file = match h {
        Hierarchy::V2 { root } => root.join(rel).join("memory.current"),
        Hierarchy::V1 { memory, .. } => memory.join(rel).join("memory.usage_in_bytes"),
    };
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn burner_in_a_real_cgroup_reads_what_the_kernel_accounted() {
    let _turn = TURN.lock().await;
    let c = match kernel_container(0, "burner", "burn").await {
        Ok(c) => c,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    // Waits until it has been moved, then allocates (so the memory is
    // charged to the new cgroup) and spins.
    let mut burner = match start_in(
        &c,
        "read _; x=$(head -c 4000000 /dev/zero | tr '\\0' a); echo ready; while :; do :; done",
    ) {
        Ok(b) => b,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    assert_eq!(step(&mut burner), "ready\n");
    // Each sample reads `memory.stat` as well, so the working set is the
    // kernel's of one moment and can be bracketed by the kernel's own. With
    // the default interval the second sample would reuse the first one's
    // inactive file pages, which the kernel may have moved between its
    // lists since (a few pages, enough to leave a 1 % bracket); when that
    // reading is taken again is the next test's and the unit tests' subject.
    let source = &c.source.clone().with_memory_stat_max_age(Duration::ZERO);
    let (hierarchy, rel, pod) = (&c.hierarchy, &c.rel, &c.pod);
    let index = c.cache.index();
    let burner_pid = burner.id();
    let mut rates = RateStore::new(Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(300));
    let before_first = process_cpu_s(burner_pid);
    let (first, _) = source.sample(index).unwrap();
    let after_first = process_cpu_s(burner_pid);
    rates.store(&first);
    std::thread::sleep(Duration::from_secs(2));
    // The working set moves a little; bracket our reading between the
    // kernel's own just before and just after.
    let ws_before = kernel_working_set(hierarchy, rel);
    let before_second = process_cpu_s(burner_pid);
    let (second, _) = source.sample(index).unwrap();
    let after_second = process_cpu_s(burner_pid);
    let ws_after = kernel_working_set(hierarchy, rel);
    rates.store(&second);

    let _ = burner.kill();
    let _ = burner.wait();

    let usage = rates.pod_usages();
    let u = usage
        .iter()
        .find(|p| *p.namespace == *pod.namespace && *p.name == *pod.name)
        .expect("burner pod reported");
    let cores = u.containers[0].cpu_nanocores as f64 / 1e9;
    println!("hierarchy {}: burner at {cores:.3} cores", hierarchy.name());
    // The CPU the cgroup source read between its two samples is the CPU
    // the kernel accounted to the burner itself (whatever share of a core
    // this machine gave it), within the two readings that bracket each
    // sample and the accounting's tick.
    let c1 = first.pods[pod]["burn"];
    let c2 = second.pods[pod]["burn"];
    let read_s = (c2.cpu_ns - c1.cpu_ns) as f64 / 1e9;
    let tick = 2.0 / procfs::ticks_per_second() as f64;
    let (lo, hi) = (before_second - after_first, after_second - before_first);
    assert!(
        read_s > 0.0 && read_s >= lo - tick && read_s <= hi + tick,
        "cgroup CPU {read_s:.3} s vs the burner's own {lo:.3}..{hi:.3} s"
    );
    // The rate is that CPU over the samples' own interval.
    let kernel_rate = (c2.cpu_ns - c1.cpu_ns) as f64 / (c2.timestamp_ns - c1.timestamp_ns) as f64;
    assert!(
        (cores - kernel_rate).abs() < 0.001,
        "{cores} vs kernel {kernel_rate}"
    );
    let ws = c2.memory_bytes as f64;
    let (lo, hi) = (
        ws_before.min(ws_after) as f64,
        ws_before.max(ws_after) as f64,
    );
    assert!(
        ws > 0.0 && ws >= lo * 0.99 && ws <= hi * 1.01,
        "working set {ws} vs kernel {ws_before}..{ws_after}"
    );
}

/// Page cache written between two samples is inactive file pages: it
/// raises the usage and is no working set. The source reads `memory.stat`
/// again at once for such a move (well within its 10 s interval), so its
/// working set stays the kernel's.
#[tokio::test]
async fn page_cache_written_between_samples_is_not_working_set() {
    let _turn = TURN.lock().await;
    let c = match kernel_container(1, "writer", "write").await {
        Ok(c) => c,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    let file = tempfile::NamedTempFile::new_in(std::env::temp_dir()).unwrap();
    let script = format!(
        "read _; x=$(head -c 2000000 /dev/zero | tr '\\0' a); echo ready; \
         read _; dd if=/dev/zero of={} bs=1M count=16 2>/dev/null; echo written; read _",
        file.path().display()
    );
    let mut writer = match start_in(&c, &script) {
        Ok(w) => w,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    assert_eq!(step(&mut writer), "ready\n");
    let index = c.cache.index();
    let ws = |batch: &metrics_agent::batch::Batch| {
        batch
            .pods
            .get(&c.pod)
            .and_then(|p| p.get("write"))
            .map(|p| p.memory_bytes)
    };
    let (first, _) = c.source.sample(index).unwrap();
    let first_ws = ws(&first).expect("writer sampled");
    let usage_before = kernel_usage(&c.hierarchy, &c.rel);
    assert_eq!(step(&mut writer), "written\n");
    let usage_after = kernel_usage(&c.hierarchy, &c.rel);
    let ws_before = kernel_working_set(&c.hierarchy, &c.rel);
    let (second, _) = c.source.sample(index).unwrap();
    let ws_after = kernel_working_set(&c.hierarchy, &c.rel);
    let _ = writer.kill();
    let _ = writer.wait();

    let second_ws = ws(&second).expect("writer sampled again") as f64;
    println!(
        "hierarchy {}: usage {usage_before} -> {usage_after}, working set {first_ws} -> {second_ws}, kernel {ws_before}..{ws_after}",
        c.hierarchy.name()
    );
    // The write charged the cgroup: the case this test is about happened.
    assert!(
        usage_after >= usage_before + (8 << 20),
        "16 MiB written moved the usage only {usage_before} -> {usage_after}"
    );
    let (lo, hi) = (
        ws_before.min(ws_after) as f64,
        ws_before.max(ws_after) as f64,
    );
    assert!(
        second_ws >= lo * 0.99 - 65536.0 && second_ws <= hi * 1.01 + 65536.0,
        "working set {second_ws} vs kernel {ws_before}..{ws_after} (usage {usage_after})"
    );
}
