//! Decoding real kubelet payloads gives metrics-server's expected points.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, UNIX_EPOCH};

use metrics_agent::batch::PodRef;
use metrics_agent::source::decode::{decode, decode_with, DecodeMemory};
use metrics_e2e::fixtures::fixture;

const SINGLE: &str = "kubelet-metrics-resource/kind-k8s-1.21_single-pod_with-pod-metrics.prom";
const SEVENTY: &str = "kubelet-metrics-resource/kind-k8s-1.21_70pods.prom";

fn ms(ms: i64) -> i64 {
    ms * 1_000_000
}

#[test]
fn single_pod_payload_matches_metrics_server_decode() {
    let (batch, stats) = decode(&fixture(SINGLE), UNIX_EPOCH);
    let node = batch.node.expect("node point");
    // 2021-10-03T09:36:49.720Z
    assert_eq!(node.timestamp_ns, ms(1_633_253_809_720));
    assert_eq!(node.cpu_ns, 357_354_910_000);
    assert_eq!(node.memory_bytes, 1_616_273_408);

    assert_eq!(batch.pods.len(), 1);
    let pod = PodRef {
        namespace: "kube-system".into(),
        name: "coredns-558bd4d5db-4dpjz".into(),
    };
    let c = batch.pods[&pod]["coredns"];
    // 2021-10-03T09:36:52.125Z, started 09:18:32Z
    assert_eq!(c.timestamp_ns, ms(1_633_253_812_125));
    assert_eq!(c.cpu_ns, 4_710_169_000);
    assert_eq!(c.memory_bytes, 12_533_760);
    assert_eq!(c.start_ns, 1_633_252_712 * 1_000_000_000);
    assert_eq!(stats.malformed_lines + stats.invalid_samples, 0);
}

#[test]
fn seventy_pod_payload_yields_one_node_and_seventy_pods() {
    let text = fixture(SEVENTY);
    let (batch, stats) = decode(&text, UNIX_EPOCH);
    assert!(batch.node.is_some());
    // Independent oracle: distinct (namespace, pod) of container CPU series.
    let oracle: BTreeSet<(String, String)> = text
        .lines()
        .filter(|l| l.starts_with("container_cpu_usage_seconds_total{"))
        .map(|l| {
            let get = |k: &str| {
                let start = l.find(&format!("{k}=\"")).unwrap() + k.len() + 2;
                l[start..start + l[start..].find('"').unwrap()].to_string()
            };
            (get("namespace"), get("pod"))
        })
        .collect();
    assert_eq!(oracle.len(), 70);
    let got: BTreeSet<(String, String)> = batch
        .pods
        .keys()
        .map(|p| (p.namespace.to_string(), p.name.to_string()))
        .collect();
    assert_eq!(got, oracle);
    assert_eq!(stats.malformed_lines + stats.invalid_samples, 0);
}

#[test]
fn samples_without_timestamp_use_request_time() {
    let text = "node_cpu_usage_seconds_total 10\nnode_memory_working_set_bytes 2048\n";
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let (batch, _) = decode(text, t);
    assert_eq!(
        batch.node.unwrap().timestamp_ns,
        1_700_000_000 * 1_000_000_000
    );
}

#[test]
fn stable_payload_and_bad_lines_lose_only_themselves() {
    let text = r#"# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 100.5 1700000000000
node_memory_working_set_bytes 1e+09 1700000000000
container_cpu_usage_seconds_total{container="app",namespace="ns",pod="p"} 2 1700000000000
container_memory_working_set_bytes{container="app",namespace="ns",pod="p"} 4096 1700000000000
container_cpu_usage_seconds_total{container="done",namespace="ns",pod="p"} 0 1700000000000
container_memory_working_set_bytes{container="done",namespace="ns",pod="p"} 0 1700000000000
container_cpu_usage_seconds_total{container="x",namespace="ns",pod="q" 3 1700000000000
container_memory_working_set_bytes{container="y",pod="q"} 3 1700000000000
container_cpu_usage_seconds_total{container="z",namespace="ns",pod="q"} NaN 1700000000000
some_future_family{a="b"} 1
"#;
    let (batch, stats) = decode(text, UNIX_EPOCH);
    assert_eq!(batch.node.unwrap().cpu_ns, 100_500_000_000);
    // "done" had zero CPU and memory: dropped alone, "app" stays.
    let p = &batch.pods[&PodRef {
        namespace: "ns".into(),
        name: "p".into(),
    }];
    assert_eq!(p.keys().map(|k| &**k).collect::<Vec<_>>(), ["app"]);
    assert_eq!(stats.incomplete_containers, 1);
    assert_eq!(stats.malformed_lines, 1);
    assert_eq!(stats.invalid_samples, 2);
    assert_eq!(batch.pods.len(), 1);
}

#[test]
fn node_without_memory_is_dropped() {
    let (batch, stats) = decode("node_cpu_usage_seconds_total 10 1000\n", UNIX_EPOCH);
    assert!(batch.node.is_none());
    assert_eq!(stats.incomplete_node, 1);
}

/// Lines in another order than the kubelet's defeat the decoder's match of
/// a line's label text against the lines before it, so each payload read
/// in its own order, reversed and interleaved must give the same batch.
#[test]
fn payloads_decode_the_same_in_any_line_order() {
    for name in [
        SEVENTY,
        "kubelet-real-1.36/metrics-resource.1.prom",
        "kubelet-real-1.36/metrics-resource.2.prom",
    ] {
        let text = fixture(name);
        let lines: Vec<&str> = text.lines().collect();
        let reversed = lines.iter().rev().copied().collect::<Vec<_>>().join("\n");
        let (even, odd): (Vec<_>, Vec<_>) = lines.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let interleaved = odd
            .into_iter()
            .chain(even)
            .map(|(_, l)| *l)
            .collect::<Vec<_>>()
            .join("\n");
        let (want, want_stats) = decode(&text, UNIX_EPOCH);
        assert!(want.containers() > 0, "{name}");
        for other in [reversed, interleaved] {
            let (got, stats) = decode(&other, UNIX_EPOCH);
            assert_eq!(got, want, "{name}");
            assert_eq!(stats, want_stats, "{name}");
        }
    }
}

/// A line whose label text only starts like an earlier line's, or names
/// the same container in other words, is read in full: a label more, the
/// labels in another order, an escaped value.
#[test]
fn lines_like_an_earlier_one_are_read_in_full() {
    let body = "\
container_cpu_usage_seconds_total{container=\"a\",namespace=\"n\",pod=\"p\"} 1 1000
container_cpu_usage_seconds_total{container=\"b\",namespace=\"n\",pod=\"p\"} 2 1000
container_memory_working_set_bytes{container=\"a\",namespace=\"n\",pod=\"p\",x=\"}\"} 10 1000
container_memory_working_set_bytes{namespace=\"n\",pod=\"p\",container=\"b\"} 20 1000
container_start_time_seconds{container=\"a\",namespace=\"n\",pod=\"p\"} 5 1000
container_start_time_seconds{container=\"\\b\",namespace=\"n\",pod=\"p\"} 6 1000
container_swap_usage_bytes{container=\"a\",namespace=\"n\",pod=\"p\"} 7 1000
container_swap_usage_bytes{container=\"b\",namespace=\"n\",pod=\"p\"} x 1000
";
    let (batch, stats) = decode(body, UNIX_EPOCH);
    let pod = &batch.pods[&PodRef {
        namespace: "n".into(),
        name: "p".into(),
    }];
    let (a, b) = (pod["a"], pod["b"]);
    assert_eq!(
        (a.cpu_ns, a.memory_bytes, a.swap_bytes),
        (1_000_000_000, 10, 7)
    );
    assert_eq!(a.start_ns, 5_000_000_000);
    assert_eq!(
        (b.cpu_ns, b.memory_bytes, b.swap_bytes),
        (2_000_000_000, 20, 0)
    );
    // `\b` unescapes to `b`: the same container, by name.
    assert_eq!(b.start_ns, 6_000_000_000);
    assert_eq!(stats.malformed_lines, 1, "{stats:?}");
    assert_eq!(stats.duplicate_samples, 0, "{stats:?}");
}

/// A payload read against the shape of the one before gives what a full
/// decode of it gives, and so does every payload that differs from its
/// predecessor: new values, a container gone or added, a line malformed,
/// an unusable value, lines in another order.
#[test]
fn payloads_read_against_the_last_ones_shape_decode_as_in_full() {
    for name in [
        SINGLE,
        SEVENTY,
        "kubelet-real-1.36/metrics-resource.1.prom",
        "kubelet-real-1.36/metrics-resource.2.prom",
    ] {
        let text = fixture(name);
        let lines: Vec<&str> = text.lines().collect();
        let container_lines: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].starts_with("container_"))
            .collect();
        let edit = |at: usize, f: &dyn Fn(&str) -> String| {
            let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            l[at] = f(&l[at]);
            l.join("\n")
        };
        // New values: every number after the labels doubled in its last digit.
        let moved = text.replace("} 1", "} 2").replace("} 0.", "} 0.9");
        let first = container_lines[0];
        let last = *container_lines.last().unwrap();
        let without_last: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != last)
            .map(|(_, l)| *l)
            .collect::<Vec<_>>()
            .join("\n");
        let with_more = format!(
            "{text}\ncontainer_cpu_usage_seconds_total{{container=\"new\",namespace=\"n\",pod=\"p\"}} 1 1000\ncontainer_memory_working_set_bytes{{container=\"new\",namespace=\"n\",pod=\"p\"}} 5 1000\n"
        );
        let malformed = edit(first, &|l| {
            format!(
                "{} x",
                l.rsplit_once(' ').unwrap().0.rsplit_once(' ').unwrap().0
            )
        });
        let unusable = edit(last, &|l| {
            let (head, ts) = l.rsplit_once(' ').unwrap();
            format!("{} NaN {ts}", head.rsplit_once(' ').unwrap().0)
        });
        // Every line of the first container unusable: it is not one of
        // the payload's containers at all.
        let labels =
            &lines[first][lines[first].find('{').unwrap()..=lines[first].find('}').unwrap()];
        let gone: String = lines
            .iter()
            .map(|l| match l.split_once(labels) {
                Some((series, rest)) => {
                    let ts = rest.trim().split_once(' ').map_or("", |(_, t)| t);
                    format!("{series}{labels} NaN {ts}")
                }
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let reversed = lines.iter().rev().copied().collect::<Vec<_>>().join("\n");
        let sequence = [
            text.clone(),
            text.clone(),
            moved,
            text.clone(),
            without_last,
            text.clone(),
            with_more,
            text.clone(),
            malformed.clone(),
            malformed,
            unusable.clone(),
            unusable,
            text.clone(),
            gone.clone(),
            gone,
            reversed.clone(),
            reversed,
            text.clone(),
        ];
        let mut memory = DecodeMemory::default();
        for (i, payload) in sequence.iter().enumerate() {
            let (got, stats) = decode_with(payload, UNIX_EPOCH, &mut memory);
            memory.end_period();
            let (want, want_stats) = decode(payload, UNIX_EPOCH);
            assert_eq!(got, want, "{name}, payload {i}");
            assert_eq!(stats, want_stats, "{name}, payload {i}");
        }
        // The repeats were read by shape: the second payload, the text
        // after each changed one's full decode, and the repeated edits.
        assert!(
            memory.read_by_shape() >= 10,
            "{name}: {} payloads read by shape",
            memory.read_by_shape()
        );
    }
}
