//! The cgroup source on fake trees for each hierarchy, driver and runtime:
//! every QoS class found, sandboxes and CRI-O monitors skipped, unknown
//! pods counted, numbers read with the kubelet's definitions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use metrics_agent::batch::PodRef;
use metrics_agent::pods::PodIndex;
use metrics_agent::source::cgroup::CgroupSource;
use metrics_agent::source::kubelet::parse_pod_list;
use metrics_e2e::cgroupfs::{Driver, FakeCgroups, Layout, Qos, Runtime};

const S: u64 = 1_000_000_000;
const MIB: u64 = 1 << 20;

fn id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

const U1: &str = "11111111-1111-4111-8111-111111111111";
const U2: &str = "22222222-2222-4222-8222-222222222222";
const U3: &str = "33333333-3333-4333-8333-333333333333";
const U4: &str = "44444444-4444-4444-8444-444444444444";

/// (uid, namespace, name, qos, [(container, id byte, cpu_ns, working set)])
type PodSpec = (
    &'static str,
    &'static str,
    &'static str,
    Qos,
    Vec<(&'static str, u8, u64, u64)>,
);

fn pods() -> Vec<PodSpec> {
    vec![
        (
            U1,
            "ns-a",
            "g",
            Qos::Guaranteed,
            vec![("app", 1, 5 * S, 100 * MIB)],
        ),
        (
            U2,
            "ns-a",
            "b",
            Qos::Burstable,
            vec![
                ("web", 2, 7 * S, 50 * MIB + 4096),
                ("sidecar", 3, S / 2, 20 * MIB),
            ],
        ),
        (
            U3,
            "ns-b",
            "e",
            Qos::BestEffort,
            vec![("job", 4, 3 * S, 12_533_760)],
        ),
    ]
}

fn pod_list(t: &FakeCgroups) -> String {
    let items: Vec<serde_json::Value> = pods()
        .iter()
        .map(|(uid, ns, name, _, cs)| {
            serde_json::json!({
                "metadata": {"uid": uid, "namespace": ns, "name": name, "labels": {"app": name}},
                "status": {"phase": "Running", "containerStatuses": cs.iter().map(|(c, i, _, _)| serde_json::json!({
                    "name": c,
                    "containerID": t.status_id(&id(*i)),
                    "state": {"running": {"startedAt": "2021-10-03T09:18:32Z"}},
                })).collect::<Vec<_>>()}
            })
        })
        .collect();
    serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
        .to_string()
}

fn build(root: &Path, layout: Layout, driver: Driver, runtime: Runtime) -> FakeCgroups {
    let t = FakeCgroups::new(root, layout, driver, runtime);
    t.set_node(123_456 * 1000, 3 * 1024 * MIB);
    for (uid, _, _, qos, cs) in pods() {
        let pod = t.pod_rel(qos, uid);
        t.set(&pod, 99 * S, 999 * MIB);
        for (_, i, cpu, ws) in cs {
            t.set(&t.container_rel(&pod, &id(i)), cpu, ws);
        }
        // The sandbox: a container cgroup no status names.
        t.set(&t.container_rel(&pod, &id(0xee)), S, MIB);
        if runtime == Runtime::Crio {
            let conmon = pod.join(format!(
                "crio-conmon-{}{}",
                id(2),
                if driver == Driver::Systemd {
                    ".scope"
                } else {
                    ""
                }
            ));
            t.set(&conmon, S, MIB);
        }
    }
    // A pod the kubelet does not list.
    let unknown = t.pod_rel(Qos::Burstable, U4);
    t.set(&t.container_rel(&unknown, &id(5)), S, MIB);
    t
}

fn check(layout: Layout, driver: Driver, runtime: Runtime, want_name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let t = build(dir.path(), layout, driver, runtime);
    let source = CgroupSource::new(dir.path(), Path::new("/proc")).unwrap();
    assert_eq!(source.hierarchy().name(), want_name);
    let index = PodIndex::new(parse_pod_list(pod_list(&t).as_bytes()).unwrap());
    let (batch, stats) = source.sample(&index).unwrap();

    let node = batch.node.unwrap();
    assert_eq!(node.cpu_ns, 123_456_000);
    assert_eq!(node.memory_bytes, 3 * 1024 * MIB);
    assert_eq!(stats.unmapped_cgroups, 1, "the unlisted pod");
    assert_eq!(batch.pods.len(), 3);
    for (_, ns, name, _, cs) in pods() {
        let got = &batch.pods[&PodRef {
            namespace: ns.into(),
            name: name.into(),
        }];
        let names: Vec<&str> = got.keys().map(|k| &**k).collect();
        let mut want: Vec<&str> = cs.iter().map(|c| c.0).collect();
        want.sort_unstable();
        assert_eq!(
            names, want,
            "{ns}/{name}: sandbox and conmon are not containers"
        );
        for (c, _, cpu, ws) in cs {
            let p = got[c];
            assert_eq!((p.cpu_ns, p.memory_bytes), (cpu, ws), "{ns}/{name}/{c}");
            assert_eq!(
                p.start_ns,
                1_633_252_712 * S as i64,
                "start time from the pod status"
            );
            assert!(p.timestamp_ns > p.start_ns);
        }
    }
}

#[test]
fn v2_systemd_containerd() {
    check(Layout::V2, Driver::Systemd, Runtime::Containerd, "v2");
}

#[test]
fn v2_cgroupfs_crio() {
    check(Layout::V2, Driver::Cgroupfs, Runtime::Crio, "v2");
}

#[test]
fn v1_cgroupfs_docker() {
    check(Layout::V1, Driver::Cgroupfs, Runtime::Docker, "v1");
}

#[test]
fn hybrid_systemd_containerd() {
    check(
        Layout::Hybrid,
        Driver::Systemd,
        Runtime::Containerd,
        "hybrid",
    );
}

#[test]
fn v1_systemd_crio() {
    check(Layout::V1, Driver::Systemd, Runtime::Crio, "v1");
}

#[test]
fn zero_memory_container_is_dropped_alone() {
    let dir = tempfile::tempdir().unwrap();
    let t = build(dir.path(), Layout::V2, Driver::Systemd, Runtime::Containerd);
    let pod = t.pod_rel(Qos::Burstable, U2);
    t.set(&t.container_rel(&pod, &id(3)), S, 0);
    let source = CgroupSource::new(dir.path(), Path::new("/proc")).unwrap();
    let index = PodIndex::new(parse_pod_list(pod_list(&t).as_bytes()).unwrap());
    let (batch, stats) = source.sample(&index).unwrap();
    let b = &batch.pods[&PodRef {
        namespace: "ns-a".into(),
        name: "b".into(),
    }];
    assert_eq!(b.keys().map(|k| &**k).collect::<Vec<_>>(), ["web"]);
    assert_eq!(stats.incomplete_containers, 1);
}

#[test]
fn no_hierarchy_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = CgroupSource::new(dir.path(), Path::new("/proc")).unwrap_err();
    assert!(err.to_string().contains("no cgroup v2 tree"), "{err}");
}

/// The pod list of [`pods`] plus `extra` pods, each with one running
/// container `(uid, name, container id byte)` in namespace `ns-x`.
fn index_with(t: &FakeCgroups, extra: &[(&str, &str, u8)]) -> PodIndex {
    let mut list: serde_json::Value = serde_json::from_str(&pod_list(t)).unwrap();
    for (uid, name, i) in extra {
        list["items"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "metadata": {"uid": uid, "namespace": "ns-x", "name": name},
                "status": {"phase": "Running", "containerStatuses": [{
                    "name": "c",
                    "containerID": t.status_id(&id(*i)),
                    "state": {"running": {"startedAt": "2021-10-03T09:18:32Z"}},
                }]}
            }));
    }
    PodIndex::new(parse_pod_list(list.to_string().as_bytes()).unwrap())
}

fn has(batch: &metrics_agent::batch::Batch, name: &str) -> bool {
    batch.pods.contains_key(&PodRef {
        namespace: "ns-x".into(),
        name: name.into(),
    })
}

/// Samples reuse one walk of the tree while the pod index is the same, and
/// walk it again when the index changes, when a listed cgroup fails to
/// read, or while a running container's cgroup is missing.
#[test]
fn the_tree_is_walked_again_only_when_something_changed() {
    const U5: &str = "55555555-5555-4555-8555-555555555555";
    const U6: &str = "66666666-6666-4666-8666-666666666666";
    let dir = tempfile::tempdir().unwrap();
    let t = build(dir.path(), Layout::V2, Driver::Systemd, Runtime::Containerd);
    let source = CgroupSource::new(dir.path(), Path::new("/proc")).unwrap();
    let index = index_with(&t, &[]);
    let (batch, stats) = source.sample(&index).unwrap();
    assert_eq!((batch.pods.len(), stats.unmapped_cgroups), (3, 1));

    // A pod no index knows appears: the same index, the same walk.
    let p5 = t.pod_rel(Qos::Burstable, U5);
    t.set(&t.container_rel(&p5, &id(0x55)), S, MIB);
    let (batch, stats) = source.sample(&index).unwrap();
    assert_eq!((batch.pods.len(), stats.unmapped_cgroups), (3, 1));

    // The watch brings it: a new index, a new walk.
    let index = index_with(&t, &[(U5, "five", 0x55)]);
    let (batch, stats) = source.sample(&index).unwrap();
    assert!(has(&batch, "five"));
    assert_eq!((batch.pods.len(), stats.unmapped_cgroups), (4, 1));

    // Its container restarts: the old cgroup goes, which the next read
    // finds (the kernel fails reads of a removed cgroup's open files; here
    // the file is emptied first); the new one is found once the index
    // names it.
    let old = dir.path().join(t.container_rel(&p5, &id(0x55)));
    metrics_e2e::cgroupfs::write_in_place(&old.join("cpu.stat"), "");
    std::fs::remove_dir_all(&old).unwrap();
    t.set(&t.container_rel(&p5, &id(0x56)), 2 * S, MIB);
    let (batch, stats) = source.sample(&index).unwrap();
    assert!(!has(&batch, "five"));
    assert_eq!(stats.invalid_samples, 1, "the cgroup that went");
    let (batch, stats) = source.sample(&index).unwrap();
    assert!(!has(&batch, "five"), "the index does not name it yet");
    assert_eq!(stats.invalid_samples, 0, "walked again");
    let index = index_with(&t, &[(U5, "five", 0x56)]);
    let (batch, _) = source.sample(&index).unwrap();
    assert_eq!(
        batch.pods[&PodRef {
            namespace: "ns-x".into(),
            name: "five".into()
        }]["c"]
            .cpu_ns,
        2 * S
    );

    // The index names a running container before its cgroup exists: every
    // sample walks again until it is there.
    let index = index_with(&t, &[(U5, "five", 0x56), (U6, "six", 0x66)]);
    let (batch, _) = source.sample(&index).unwrap();
    assert!(!has(&batch, "six"));
    let p6 = t.pod_rel(Qos::Burstable, U6);
    t.set(&t.container_rel(&p6, &id(0x66)), S, MIB);
    let (batch, _) = source.sample(&index).unwrap();
    assert!(has(&batch, "six"));
    assert_eq!(batch.pods.len(), 5);
}
