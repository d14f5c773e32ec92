//! The latest report of every node this aggregator receives, keyed by node
//! name, with a cluster-wide index of namespaces and pods (`index.rs`).
//! Reads never block ingest: entries are immutable `Arc`s swapped whole on
//! each report, and expired ones vanish from answers at once and from
//! memory (and the index) at the next sweep.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::index::PodIndex;
use crate::report::{NodeEntry, PodEntry};

/// Node name → latest entry.
#[derive(Debug, Default)]
pub struct Store {
    nodes: DashMap<String, Arc<NodeEntry>>,
    /// Updated under the node's map entry lock, so it follows the entries
    /// in the order they were stored.
    index: PodIndex,
    has_data: AtomicBool,
}

/// A pod found by a query: its node entry and its index there.
#[derive(Debug, Clone)]
pub struct PodHit {
    entry: Arc<NodeEntry>,
    index: usize,
}

impl PodHit {
    pub fn pod(&self) -> &PodEntry {
        &self.entry.pods[self.index]
    }
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the node's entry.
    pub fn insert(&self, entry: NodeEntry) {
        if entry.node.is_some() || !entry.pods.is_empty() {
            self.has_data.store(true, Ordering::Relaxed);
        }
        match self.nodes.entry(entry.name.clone()) {
            Entry::Occupied(mut o) => {
                self.index.update(&entry.name, &o.get().pods, &entry.pods);
                o.insert(Arc::new(entry));
            }
            Entry::Vacant(v) => {
                self.index.update(&entry.name, &[], &entry.pods);
                v.insert(Arc::new(entry));
            }
        }
    }

    /// True once any report with usage has arrived.
    pub fn has_data(&self) -> bool {
        self.has_data.load(Ordering::Relaxed)
    }

    /// Number of nodes held, expired ones included until the next sweep.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Live entry of one node.
    pub fn node(&self, name: &str, now: Instant) -> Option<Arc<NodeEntry>> {
        self.nodes
            .get(name)
            .map(|e| Arc::clone(e.value()))
            .filter(|e| e.expires > now)
    }

    /// Live node entries with node usage, in no particular order.
    pub fn nodes(&self, now: Instant) -> Vec<Arc<NodeEntry>> {
        self.nodes
            .iter()
            .filter(|e| e.expires > now && e.node.is_some())
            .map(|e| Arc::clone(e.value()))
            .collect()
    }

    /// Live pods, optionally of one namespace, in no particular order; a
    /// pod reported by two nodes (it moved) appears twice, and
    /// `query::merge` keeps the freshest copy while it orders the answer.
    /// A namespace visits only the nodes the index lists for it.
    pub fn pods(&self, namespace: Option<&str>, now: Instant) -> Vec<PodHit> {
        let mut out = Vec::new();
        let mut add = |entry: &Arc<NodeEntry>| {
            if entry.expires <= now {
                return;
            }
            let range = match namespace {
                None => 0..entry.pods.len(),
                Some(ns) => {
                    let start = entry.pods.partition_point(|p| p.namespace.as_str() < ns);
                    let end = entry.pods.partition_point(|p| p.namespace.as_str() <= ns);
                    start..end
                }
            };
            out.extend(range.map(|index| PodHit {
                entry: Arc::clone(entry),
                index,
            }));
        };
        match namespace {
            None => self.nodes.iter().for_each(|e| add(e.value())),
            Some(ns) => {
                for node in self.index.nodes_with_namespace(ns) {
                    if let Some(e) = self.nodes.get(&*node) {
                        add(e.value());
                    }
                }
            }
        }
        out
    }

    /// Live copies of the pod `namespace/name` (one per node reporting it),
    /// found through the index.
    pub fn pod(&self, namespace: &str, name: &str, now: Instant) -> Vec<PodHit> {
        let mut out = Vec::new();
        for node in self.index.nodes_with_pod(namespace, name) {
            let Some(entry) = self.nodes.get(&*node).map(|e| Arc::clone(e.value())) else {
                continue;
            };
            if entry.expires <= now {
                continue;
            }
            let key = (namespace, name);
            if let Ok(index) = entry
                .pods
                .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&key))
            {
                out.push(PodHit { entry, index });
            }
        }
        out
    }

    /// Namespaces and pod keys in the index.
    pub fn index_sizes(&self) -> (usize, usize) {
        self.index.sizes()
    }

    /// Drops expired entries; returns how many went.
    pub fn sweep(&self, now: Instant) -> usize {
        let before = self.nodes.len();
        self.nodes.retain(|name, e| {
            let keep = e.expires > now;
            if !keep {
                self.index.update(name, &e.pods, &[]);
            }
            keep
        });
        before - self.nodes.len()
    }

    /// Sweeps every `every` until cancelled.
    pub async fn sweep_loop(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let gone = self.sweep(Instant::now());
            if gone > 0 {
                tracing::info!(expired = gone, "expired nodes without recent reports");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::to_entry;
    use metrics_proto::v1::{ContainerUsage, NodeReport, PodUsage, Usage};

    fn report(node: &str, pods: &[(&str, &str, i64)]) -> NodeReport {
        NodeReport {
            protocol_version: metrics_proto::PROTOCOL_VERSION,
            node_name: node.into(),
            period_ms: 1_000,
            node: Some(Usage {
                timestamp_unix_nanos: 1,
                window_nanos: 1,
                cpu_nanocores: 1,
                memory_working_set_bytes: 1,
            }),
            pods: pods
                .iter()
                .map(|(ns, name, ts)| PodUsage {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    timestamp_unix_nanos: *ts,
                    window_nanos: 1,
                    containers: vec![ContainerUsage {
                        name: "c".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn names(hits: &[PodHit]) -> Vec<String> {
        let mut names: Vec<String> = hits
            .iter()
            .map(|h| {
                format!(
                    "{}/{}@{}",
                    h.pod().namespace,
                    h.pod().name,
                    h.pod().timestamp_ns
                )
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn entries_expire_after_their_periods() {
        let store = Store::new();
        let t0 = Instant::now();
        store.insert(to_entry(&report("n1", &[]), None, t0, 3).unwrap());
        assert!(store
            .node("n1", t0 + Duration::from_millis(2_999))
            .is_some());
        assert!(store.node("n1", t0 + Duration::from_secs(3)).is_none());
        assert_eq!(store.nodes(t0 + Duration::from_secs(3)).len(), 0);
        assert_eq!(store.sweep(t0 + Duration::from_secs(2)), 0);
        assert_eq!(store.sweep(t0 + Duration::from_secs(3)), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn pods_by_namespace_with_every_copy() {
        let store = Store::new();
        let t0 = Instant::now();
        store.insert(
            to_entry(
                &report("n1", &[("b", "x", 5), ("a", "z", 5), ("a", "y", 5)]),
                None,
                t0,
                3,
            )
            .unwrap(),
        );
        // The pod moved: n2 has a fresher copy of b/x; both are returned
        // (query::merge keeps the fresher).
        store
            .insert(to_entry(&report("n2", &[("b", "x", 9), ("c", "w", 1)]), None, t0, 3).unwrap());
        assert_eq!(
            names(&store.pods(None, t0)),
            ["a/y@5", "a/z@5", "b/x@5", "b/x@9", "c/w@1"]
        );
        assert_eq!(names(&store.pods(Some("a"), t0)), ["a/y@5", "a/z@5"]);
        assert_eq!(names(&store.pods(Some("b"), t0)), ["b/x@5", "b/x@9"]);
        assert!(store.pods(Some("zz"), t0).is_empty());
    }

    #[test]
    fn namespace_and_pod_lookups_follow_moves_and_expiry() {
        let store = Store::new();
        let t0 = Instant::now();
        store
            .insert(to_entry(&report("n1", &[("a", "x", 1), ("b", "y", 1)]), None, t0, 3).unwrap());
        store.insert(to_entry(&report("n2", &[("b", "z", 1)]), None, t0, 3).unwrap());
        assert_eq!(store.index_sizes(), (2, 3));
        assert_eq!(names(&store.pod("b", "y", t0)), ["b/y@1"]);
        assert!(store.pod("b", "x", t0).is_empty());
        // b/y moves from n1 to n2; namespace b leaves n1.
        store.insert(to_entry(&report("n1", &[("a", "x", 2)]), None, t0, 3).unwrap());
        store
            .insert(to_entry(&report("n2", &[("b", "z", 2), ("b", "y", 2)]), None, t0, 3).unwrap());
        assert_eq!(names(&store.pod("b", "y", t0)), ["b/y@2"]);
        assert_eq!(names(&store.pods(Some("b"), t0)), ["b/y@2", "b/z@2"]);
        assert_eq!(store.index_sizes(), (2, 3));
        // n2 expires (a 1 s period here): its pods leave answers, then
        // the index at the sweep.
        store.insert(
            to_entry(
                &report("n1", &[("a", "x", 3)]),
                None,
                t0 + Duration::from_secs(2),
                3,
            )
            .unwrap(),
        );
        let later = t0 + Duration::from_secs(4);
        assert!(store.pod("b", "y", later).is_empty());
        assert!(store.pods(Some("b"), later).is_empty());
        assert_eq!(store.sweep(later), 1);
        assert_eq!(store.index_sizes(), (1, 1));
        assert_eq!(names(&store.pod("a", "x", later)), ["a/x@3"]);
    }

    proptest::proptest! {
        /// After any sequence of reports, every namespace and pod lookup
        /// through the index equals a scan of every node.
        #[test]
        fn index_lookups_equal_a_full_scan(
            reports in proptest::collection::vec(
                (0..4usize, proptest::collection::vec((0..3usize, 0..5usize), 0..6)),
                1..30,
            )
        ) {
            let store = Store::new();
            let t0 = Instant::now();
            for (i, (node, pods)) in reports.iter().enumerate() {
                let pods: Vec<(String, String, i64)> = pods
                    .iter()
                    .map(|(ns, p)| (format!("ns{ns}"), format!("p{p}"), i as i64 + 1))
                    .collect();
                let refs: Vec<(&str, &str, i64)> =
                    pods.iter().map(|(a, b, t)| (a.as_str(), b.as_str(), *t)).collect();
                store.insert(to_entry(&report(&format!("n{node}"), &refs), None, t0, 3).unwrap());
            }
            let all = store.pods(None, t0);
            for ns in 0..3 {
                let ns = format!("ns{ns}");
                let mut want: Vec<PodHit> =
                    all.iter().filter(|h| h.pod().namespace == ns).cloned().collect();
                proptest::prop_assert_eq!(names(&store.pods(Some(&ns), t0)), names(&want));
                for p in 0..5 {
                    let name = format!("p{p}");
                    want = all
                        .iter()
                        .filter(|h| h.pod().namespace == ns && h.pod().name == name)
                        .cloned()
                        .collect();
                    proptest::prop_assert_eq!(names(&store.pod(&ns, &name, t0)), names(&want));
                }
            }
        }
    }
}
