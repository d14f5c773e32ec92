//! Cost of one agent period on a real kubelet payload: decode the 70-pod
//! `/metrics/resource` fixture and fold it into the rate store.
//! Run: `cargo bench -p metrics-agent --bench collect`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, UNIX_EPOCH};

use divan::Bencher;
use metrics_agent::rates::RateStore;
use metrics_agent::source::decode::decode;

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
