//! Cost of one agent period on a real kubelet payload: decode the 70-pod
//! `/metrics/resource` fixture and fold it into the rate store.
//! Run: `cargo bench -p metrics-agent --bench collect`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, UNIX_EPOCH};

use divan::Bencher;
use metrics_agent::rates::RateStore;
use metrics_agent::source::decode::{decode, decode_with, DecodeMemory};

fn main() {
    divan::main();
}

fn payload() -> String {
    metrics_e2e::fixtures::fixture("kubelet-metrics-resource/kind-k8s-1.21_70pods.prom")
}

#[divan::bench]
fn decode_70_pods(bencher: Bencher) {
    let text = payload();
    bencher
        .counter(divan::counter::BytesCount::new(text.len()))
        .bench(|| decode(divan::black_box(&text), UNIX_EPOCH));
}

/// The same payload read against the shape the one before it left, as a
/// kubelet source reads each period while the node's pods stay the same.
#[divan::bench]
fn decode_70_pods_again(bencher: Bencher) {
    let text = payload();
    let mut memory = DecodeMemory::default();
    decode_with(&text, UNIX_EPOCH, &mut memory);
    bencher
        .counter(divan::counter::BytesCount::new(text.len()))
        .bench_local(|| {
            let decoded = decode_with(divan::black_box(&text), UNIX_EPOCH, &mut memory);
            memory.end_period();
            decoded
        });
    assert!(memory.read_by_shape() > 0);
}

#[divan::bench]
fn decode_and_rates_70_pods(bencher: Bencher) {
    let text = payload();
    let mut rates = RateStore::new(Duration::from_secs(15));
    bencher.bench_local(|| {
        let (batch, _) = decode(divan::black_box(&text), UNIX_EPOCH);
        rates.store(&batch);
        (rates.node_usage(), rates.pod_usages().len())
    });
}

/// One cgroup sample of a 110-pod node (220 containers, cgroup v2, systemd,
/// containerd) in a temp dir, mapped through a pod index; with each
/// container's `memory.stat` read every sample (0) and at the default
/// `--cgroup-memory-stat-interval` (10 s, so once in these samples).
#[divan::bench(args = [0, 10])]
fn cgroup_sample_110_pods(bencher: Bencher, memory_stat_max_age_s: u64) {
    use metrics_agent::pods::PodIndex;
    use metrics_agent::source::cgroup::CgroupSource;
    use metrics_agent::source::kubelet::parse_pod_list;
    use metrics_e2e::cgroupfs::{Driver, FakeCgroups, Layout, Qos, Runtime};
    use metrics_e2e::kubelet::{container_id, pod_list, pod_uid, FakeContainer, FakeNode, FakePod};

    let dir = tempfile::tempdir().unwrap();
    let node = FakeNode {
        cores: 1.0,
        memory: 4 << 30,
        pods: (0..110)
            .map(|i| FakePod {
                uid: pod_uid(&format!("p{i}")),
                namespace: format!("ns-{}", i % 10),
                name: format!("app-{i}"),
                labels: Default::default(),
                containers: ["main", "sidecar"]
                    .iter()
                    .map(|c| FakeContainer {
                        name: c.to_string(),
                        id: container_id(&format!("{i}/{c}")),
                        cores: 0.01,
                        memory: 64 << 20,
                    })
                    .collect(),
            })
            .collect(),
        extra_lines: vec![],
    };
    let tree = FakeCgroups::new(dir.path(), Layout::V2, Driver::Systemd, Runtime::Containerd);
    for p in &node.pods {
        let pod = tree.pod_rel(Qos::Burstable, &p.uid);
        for c in &p.containers {
            tree.set(&tree.container_rel(&pod, &c.id), 5_000_000_000, c.memory);
        }
    }
    let index = PodIndex::new(parse_pod_list(pod_list(&node, 0.0).as_bytes()).unwrap());
    let source = CgroupSource::new(dir.path(), std::path::Path::new("/proc"))
        .unwrap()
        .with_memory_stat_max_age(std::time::Duration::from_secs(memory_stat_max_age_s));
    bencher.bench_local(|| source.sample(&index).unwrap().0.containers());
}
