//! metrics-server's two-point rules, one case per rule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, UNIX_EPOCH};

use metrics_agent::batch::{Batch, ByName, PodRef, Point};
use metrics_agent::rates::{usage, PairError, RateStore};
use metrics_agent::source::decode::decode;
use metrics_e2e::fixtures::fixture;

const S: i64 = 1_000_000_000;
const T0: i64 = 1_700_000_000 * S;

fn pt(ts: i64, start: i64, cpu: u64, mem: u64) -> Point {
    Point {
        timestamp_ns: ts,
        start_ns: start,
        cpu_ns: cpu,
        memory_bytes: mem,
        swap_bytes: 0,
    }
}

type Containers<'a> = &'a [(&'a str, Point)];

fn batch(node: Option<Point>, pods: &[(&str, Containers<'_>)]) -> Batch {
    Batch {
        node,
        pods: pods
            .iter()
            .map(|(p, cs)| {
                let cs: ByName<Point> = cs.iter().map(|(c, pt)| ((*c).into(), *pt)).collect();
                let pod = PodRef {
                    namespace: "ns".into(),
                    name: (*p).into(),
                };
                (pod, cs)
            })
            .collect(),
    }
}

fn store() -> RateStore {
    RateStore::new(Duration::from_secs(15))
}

#[test]
fn node_rate_over_window() {
    let mut s = store();
    s.store(&batch(Some(pt(T0, 0, 10 * S as u64, 100)), &[]));
    assert_eq!(s.node_usage(), None, "one point is no pair");
    s.store(&batch(Some(pt(T0 + 15 * S, 0, 13 * S as u64, 200)), &[]));
    let u = s.node_usage().unwrap();
    assert_eq!(u.cpu_nanocores, 200_000_000);
    assert_eq!(u.window_nanos, 15 * S);
    assert_eq!(u.timestamp_unix_nanos, T0 + 15 * S);
    assert_eq!(u.memory_working_set_bytes, 200);
}

#[test]
fn same_or_older_timestamp_keeps_the_pair() {
    let mut s = store();
    s.store(&batch(Some(pt(T0, 0, 1_000, 1)), &[]));
    s.store(&batch(Some(pt(T0 + 10 * S, 0, 2_000, 2)), &[]));
    let before = s.node_usage().unwrap();
    s.store(&batch(Some(pt(T0 + 10 * S, 0, 2_000, 2)), &[]));
    assert_eq!(s.node_usage().unwrap(), before, "repeat of last");
    s.store(&batch(Some(pt(T0 + 5 * S, 0, 1_500, 9)), &[]));
    assert_eq!(
        s.node_usage().unwrap(),
        before,
        "older than last, newer than prev"
    );
    s.store(&batch(Some(pt(T0 - S, 0, 500, 9)), &[]));
    assert_eq!(s.node_usage(), None, "older than prev drops prev");
}

#[test]
fn decreasing_counter_or_start_time_drops_the_pair() {
    assert_eq!(
        usage(&pt(T0 + S, 0, 10, 1), &pt(T0, 0, 20, 1)),
        Err(PairError::CpuDecreased)
    );
    assert_eq!(
        usage(&pt(T0 + S, 5, 30, 1), &pt(T0, 6, 20, 1)),
        Err(PairError::StartTimeDecreased)
    );
    assert_eq!(
        usage(&pt(T0, 0, 30, 1), &pt(T0, 0, 20, 1)),
        Err(PairError::EmptyWindow)
    );
    let mut s = store();
    s.store(&batch(Some(pt(T0, 0, 5_000, 1)), &[]));
    s.store(&batch(Some(pt(T0 + S, 0, 4_000, 1)), &[]));
    assert_eq!(s.node_usage(), None);
}

#[test]
fn cpu_arithmetic_matches_go() {
    // Δcpu / Duration.Seconds(), truncated: 7 ns over 3.000000001 s.
    let u = usage(&pt(T0 + 3 * S + 1, 0, 7, 1), &pt(T0, 0, 0, 1)).unwrap();
    assert_eq!(u.cpu_nanocores, (7.0f64 / (3.0 + 1.0 / 1e9)) as u64);
    // 1.5 cores over 20.064 s.
    let u = usage(
        &pt(T0 + 20_064_000_000, 0, 30_096_000_000, 1),
        &pt(T0, 0, 0, 1),
    )
    .unwrap();
    assert_eq!(u.cpu_nanocores, 1_500_000_000);
}

#[test]
fn container_pairs_and_pod_timestamp_is_earliest() {
    let start = T0 - 3600 * S;
    let mut s = store();
    s.store(&batch(
        None,
        &[(
            "p",
            &[("a", pt(T0, start, 0, 10)), ("b", pt(T0 + S, start, 0, 20))],
        )],
    ));
    assert!(s.pod_usages().is_empty());
    s.store(&batch(
        None,
        &[(
            "p",
            &[
                ("a", pt(T0 + 10 * S, start, S as u64, 11)),
                ("b", pt(T0 + 12 * S, start, S as u64 / 2, 21)),
            ],
        )],
    ));
    let pods = s.pod_usages();
    assert_eq!(pods.len(), 1);
    let p = &pods[0];
    assert_eq!((p.namespace.as_str(), p.name.as_str()), ("ns", "p"));
    assert_eq!(p.timestamp_unix_nanos, T0 + 10 * S, "earliest container");
    assert_eq!(p.window_nanos, 10 * S);
    let cpu: Vec<_> = p
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.cpu_nanocores))
        .collect();
    assert_eq!(cpu, [("a", 100_000_000), ("b", 45_454_545)]);
}

#[test]
fn restarted_container_gets_no_pair_and_hides_its_pod() {
    let mut s = store();
    let old_start = T0 - 100 * S;
    s.store(&batch(
        None,
        &[("p", &[("a", pt(T0, old_start, 5 * S as u64, 1))])],
    ));
    s.store(&batch(
        None,
        &[("p", &[("a", pt(T0 + 15 * S, old_start, 6 * S as u64, 1))])],
    ));
    assert_eq!(s.pod_usages().len(), 1);
    // Restarted at exactly the last timestamp: start >= last.ts.
    s.store(&batch(
        None,
        &[("p", &[("a", pt(T0 + 30 * S, T0 + 15 * S, S as u64, 1))])],
    ));
    assert!(s.pod_usages().is_empty());
    s.store(&batch(
        None,
        &[("p", &[("a", pt(T0 + 45 * S, T0 + 15 * S, 2 * S as u64, 1))])],
    ));
    assert_eq!(s.pod_usages()[0].containers[0].cpu_nanocores, 66_666_666);
}

#[test]
fn fresh_container_uses_its_start_time() {
    let mut s = store();
    // Started 12 s before its first sample: 10 s <= age < 15 s resolution.
    s.store(&batch(
        None,
        &[("p", &[("a", pt(T0, T0 - 12 * S, 3 * S as u64, 7))])],
    ));
    let pods = s.pod_usages();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].containers[0].cpu_nanocores, 250_000_000);
    assert_eq!(pods[0].window_nanos, 12 * S);
    assert_eq!(pods[0].timestamp_unix_nanos, T0);
    // Younger than 10 s: no synthetic point.
    let mut s = store();
    s.store(&batch(
        None,
        &[("p", &[("a", pt(T0, T0 - 9 * S, 3 * S as u64, 7))])],
    ));
    assert!(s.pod_usages().is_empty());
}

#[test]
fn new_container_in_known_pod_hides_the_pod_until_paired() {
    let start = T0 - 3600 * S;
    let mut s = store();
    s.store(&batch(None, &[("p", &[("a", pt(T0, start, 1, 1))])]));
    let two = |ts| [("a", pt(ts, start, 2, 1)), ("b", pt(ts, start, 2, 1))];
    s.store(&batch(None, &[("p", &two(T0 + 15 * S))]));
    assert!(s.pod_usages().is_empty());
    s.store(&batch(None, &[("p", &two(T0 + 30 * S))]));
    assert_eq!(s.pod_usages()[0].containers.len(), 2);
    // A pod missing from a batch is forgotten.
    s.store(&batch(None, &[]));
    s.store(&batch(
        None,
        &[("p", &[("a", pt(T0 + 60 * S, start, 4, 1))])],
    ));
    assert!(s.pod_usages().is_empty());
}

#[test]
fn pods_missing_from_a_batch_are_forgotten_and_the_rest_keep_their_pairs() {
    let start = T0 - 3600 * S;
    let mut s = store();
    let at = |k: i64| [("c", pt(T0 + k * 15 * S, start, k as u64 + 1, 1))];
    let names =
        |s: &RateStore| -> Vec<String> { s.pod_usages().into_iter().map(|p| p.name).collect() };
    s.store(&batch(None, &[("a", &at(0)), ("c", &at(0)), ("e", &at(0))]));
    s.store(&batch(None, &[("a", &at(1)), ("c", &at(1)), ("e", &at(1))]));
    assert_eq!(names(&s), ["a", "c", "e"]);
    // `a` and `e` left out, `b` and `d` new among the ones that stay.
    s.store(&batch(None, &[("b", &at(2)), ("c", &at(2)), ("d", &at(2))]));
    assert_eq!(names(&s), ["c"], "only `c` has a pair");
    s.store(&batch(
        None,
        &[
            ("a", &at(3)),
            ("b", &at(3)),
            ("c", &at(3)),
            ("d", &at(3)),
            ("e", &at(3)),
        ],
    ));
    assert_eq!(names(&s), ["b", "c", "d"], "`a` and `e` started over");
    let c = &s.pod_usages()[1];
    assert_eq!(c.timestamp_unix_nanos, T0 + 45 * S);
    assert_eq!(c.window_nanos, 15 * S, "`c` kept its pair throughout");
    s.store(&batch(None, &[]));
    assert!(
        s.pod_usages().is_empty(),
        "an empty batch forgets every pod"
    );
}

#[test]
fn container_missing_from_a_batch_is_forgotten_while_its_pod_stays() {
    let start = T0 - 3600 * S;
    let mut s = store();
    let two = |ts, cpu| [("a", pt(ts, start, cpu, 1)), ("b", pt(ts, start, cpu, 1))];
    s.store(&batch(None, &[("p", &two(T0, 1))]));
    s.store(&batch(None, &[("p", &two(T0 + 15 * S, 2))]));
    assert_eq!(s.pod_usages()[0].containers.len(), 2);
    // `b` is left out once: `a` alone makes the pod.
    s.store(&batch(
        None,
        &[("p", &[("a", pt(T0 + 30 * S, start, 3, 1))])],
    ));
    let only_a = s.pod_usages();
    assert_eq!(only_a[0].containers.len(), 1);
    assert_eq!(only_a[0].containers[0].name, "a");
    // Back again, `b` has no earlier sample: the pod waits for its pair.
    s.store(&batch(None, &[("p", &two(T0 + 45 * S, 4))]));
    assert!(s.pod_usages().is_empty());
    s.store(&batch(None, &[("p", &two(T0 + 60 * S, 5))]));
    assert_eq!(s.pod_usages()[0].containers.len(), 2);
}

/// A container replaced by one of another name in the same place (as
/// many containers as before) is not taken for the one it replaced.
#[test]
fn container_replaced_in_its_place_starts_over() {
    let start = T0 - 3600 * S;
    let mut s = store();
    let pod = |ts: i64, cpu: u64, second: &'static str| {
        [
            ("a", pt(ts, start, cpu, 1)),
            (second, pt(ts, start, cpu, 1)),
        ]
    };
    let g = S as u64;
    s.store(&batch(None, &[("p", &pod(T0, g, "b"))]));
    s.store(&batch(None, &[("p", &pod(T0 + 15 * S, 2 * g, "b"))]));
    let names = |s: &RateStore| -> Vec<String> {
        s.pod_usages()
            .iter()
            .flat_map(|p| p.containers.iter().map(|c| c.name.clone()))
            .collect()
    };
    assert_eq!(names(&s), ["a", "b"]);
    // `b` gone, `c` new where it was: `c` has no earlier sample, so the
    // pod waits for its pair; `a` keeps its own.
    s.store(&batch(None, &[("p", &pod(T0 + 30 * S, 3 * g, "c"))]));
    assert!(s.pod_usages().is_empty(), "`c` is not `b`");
    s.store(&batch(None, &[("p", &pod(T0 + 45 * S, 9 * g / 2, "c"))]));
    assert_eq!(names(&s), ["a", "c"]);
    let p = &s.pod_usages()[0];
    assert_eq!(p.window_nanos, 15 * S);
    // 1.5 s of CPU over 15 s; paired with `b`'s sample it would be 2.5 s
    // over 30 s.
    assert_eq!(
        p.containers[1].cpu_nanocores, 100_000_000,
        "`c` paired with its own sample, not `b`'s"
    );
}

#[test]
fn fixture_pair_gives_exact_rates() {
    // The same payload 15 s later with every counter advanced by 1.5 s.
    let first = fixture("kubelet-metrics-resource/kind-k8s-1.21_single-pod_with-pod-metrics.prom");
    let second: String = first
        .lines()
        .map(|l| {
            if l.starts_with("node_cpu_usage_seconds_total ") {
                "node_cpu_usage_seconds_total 358.85491 1633253824720".to_string()
            } else if l.starts_with("node_memory_working_set_bytes ") {
                "node_memory_working_set_bytes 1.616273408e+09 1633253824720".to_string()
            } else if l.starts_with("container_cpu_usage_seconds_total{") {
                l.replace("4.710169 1633253812125", "6.210169 1633253827125")
            } else if l.starts_with("container_memory_working_set_bytes{") {
                l.replace("1633253812125", "1633253827125")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut s = store();
    s.store(&decode(&first, UNIX_EPOCH).0);
    s.store(&decode(&second, UNIX_EPOCH).0);
    let node = s.node_usage().unwrap();
    assert_eq!(node.window_nanos, 15 * S);
    assert_eq!(node.cpu_nanocores, 100_000_000);
    let pods = s.pod_usages();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].containers[0].cpu_nanocores, 100_000_000);
    assert_eq!(pods[0].containers[0].memory_working_set_bytes, 12_533_760);
}

/// Reusing an earlier period's usages changes nothing in the answer,
/// whatever they hold; and in steady state the names are the ones reused.
#[test]
fn usages_made_from_spare_ones_equal_fresh_ones() {
    let mut rates = store();
    let b = |t: i64, cpu: u64, extra: bool| {
        let mut pods: Vec<(&str, Containers<'_>)> = vec![];
        let a = [
            ("app", pt(T0 + t * S, T0 - 100 * S, cpu, 10)),
            ("side", pt(T0 + t * S, T0 - 100 * S, cpu / 2, 20)),
        ];
        let c = [("web", pt(T0 + t * S + 1, T0 - 100 * S, cpu * 3, 30))];
        let d = [("db", pt(T0 + t * S, T0 - 100 * S, cpu, 40))];
        pods.push(("a", &a));
        pods.push(("c", &c));
        if extra {
            pods.push(("d", &d));
        }
        batch(None, &pods)
    };
    rates.store(&b(0, S as u64, true));
    rates.store(&b(15, 3 * S as u64, true));
    let fresh = rates.pod_usages();
    assert_eq!(fresh.len(), 3);

    // Steady state: last period's usages, with older values.
    let mut spare = fresh.clone();
    for p in &mut spare {
        p.timestamp_unix_nanos = 1;
        for c in &mut p.containers {
            c.cpu_nanocores = 1;
        }
    }
    let names: Vec<*const u8> = spare.iter().map(|p| p.name.as_ptr()).collect();
    let reused = rates.pod_usages_into(spare);
    assert_eq!(reused, fresh);
    let after: Vec<*const u8> = reused.iter().map(|p| p.name.as_ptr()).collect();
    assert_eq!(after, names, "names reused, not copied");

    // Pods gone, pods new, containers renamed or added, labels left over,
    // an order that is not sorted: still the fresh answer.
    let mut odd = fresh.clone();
    odd[0].containers[0].name = "other".into();
    let copy = odd[1].containers[0].clone();
    odd[1].containers.push(copy);
    odd[1].labels.insert("app".into(), "x".into());
    odd.remove(2);
    let mut gone = fresh[0].clone();
    gone.name = "b".into();
    odd.insert(1, gone);
    assert_eq!(rates.pod_usages_into(odd.clone()), fresh);
    odd.reverse();
    assert_eq!(rates.pod_usages_into(odd), fresh);

    // A pod that left is not brought back by a spare that has it.
    rates.store(&b(30, 5 * S as u64, false));
    let now = rates.pod_usages();
    assert_eq!(now.len(), 2);
    assert_eq!(rates.pod_usages_into(fresh), now);
}

/// A report lists its pods by namespace, then name, and each pod's
/// containers by name: the order the aggregator's in-place write checks
/// first, and the one the load generator sends.
#[test]
fn usages_are_sorted_by_namespace_and_name_containers_by_name() {
    let start = T0 - 3600 * S;
    let pods = [
        ("kube-system", "coredns-7db6d8ff4d-x2kqp"),
        ("default", "web-2"),
        ("default", "web-10"),
        ("apps", "api-b"),
        ("apps", "api-a"),
        ("zeta", "a"),
    ];
    let containers = ["sidecar", "app", "istio-proxy", "zz", "aa"];
    let at = |t: i64, cpu: u64| Batch {
        node: None,
        pods: pods
            .iter()
            .map(|(ns, name)| {
                let pod = PodRef {
                    namespace: (*ns).into(),
                    name: (*name).into(),
                };
                let cs: ByName<Point> = containers
                    .iter()
                    .map(|c| ((*c).into(), pt(t, start, cpu, 10)))
                    .collect();
                (pod, cs)
            })
            .collect(),
    };
    let mut s = store();
    s.store(&at(T0, 0));
    s.store(&at(T0 + 15 * S, S as u64));
    let got = s.pod_usages();
    assert_eq!(got.len(), pods.len());
    let keys: Vec<(&str, &str)> = got
        .iter()
        .map(|p| (p.namespace.as_str(), p.name.as_str()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted);
    for p in &got {
        let names: Vec<&str> = p.containers.iter().map(|c| c.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "{}/{}", p.namespace, p.name);
        assert_eq!(names.len(), containers.len());
    }
}
