//! The latest report of every node this aggregator receives, keyed by node
//! name, with a cluster-wide index of namespaces and pods (`index.rs`).
//! Reads never block ingest: entries are immutable `Arc`s swapped whole on
//! each report, and expired ones vanish from answers at once and from
//! memory (and the index) at the next sweep.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::api::selector::LabelSelector;
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
    /// Estimated bytes and pods held, over every entry.
    bytes: AtomicUsize,
    pods: AtomicUsize,
}

/// What the store may hold: a global bound on bytes and pods, and a
/// per-node share of the bytes, so that no peer's reports can grow memory
/// past what was configured.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max_bytes: usize,
    pub max_pods: usize,
    pub max_node_bytes: usize,
}

impl Budget {
    /// No bound (tests, standalone).
    pub const UNLIMITED: Budget = Budget {
        max_bytes: usize::MAX,
        max_pods: usize::MAX,
        max_node_bytes: usize::MAX,
    };

    /// `max_bytes` and `max_pods` with each node allowed a 32nd of the bytes.
    pub fn new(max_bytes: usize, max_pods: usize) -> Self {
        Budget {
            max_bytes,
            max_pods,
            max_node_bytes: max_bytes / 32,
        }
    }
}

/// A report the budget has no room for; the node keeps its last entry
/// until it expires.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "report needs about {bytes} bytes; one node may hold {bound} (--max-stored-bytes / 32)"
    )]
    NodeTooLarge { bytes: usize, bound: usize },
    #[error("store full: {held} of {bound} bytes held (--max-stored-bytes); report of {bytes} bytes refused")]
    Bytes {
        bytes: usize,
        held: usize,
        bound: usize,
    },
    #[error("store full: {held} of {bound} pods held (--max-stored-pods); report of {pods} pods refused")]
    Pods {
        pods: usize,
        held: usize,
        bound: usize,
    },
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

    /// The node whose report holds the pod.
    pub fn node(&self) -> &str {
        &self.entry.name
    }

    /// The pod's object, rendered now.
    pub fn render(&self) -> crate::render::Rendered {
        self.pod().render(self.entry.swap)
    }

    /// The pod's object in protobuf form, without its creationTimestamp.
    pub fn render_pb(&self) -> Vec<u8> {
        self.pod().render_pb(self.entry.swap)
    }
}

/// Appends the pods of a live `entry`, of `namespace` only when given.
fn add_pods(out: &mut Vec<PodHit>, entry: &Arc<NodeEntry>, namespace: Option<&str>, now: Instant) {
    if entry.expires <= now {
        return;
    }
    let range = match namespace {
        None => 0..entry.pods.len(),
        Some(ns) => {
            let start = entry.pods.partition_point(|p| p.namespace() < ns);
            let end = entry.pods.partition_point(|p| p.namespace() <= ns);
            start..end
        }
    };
    out.extend(range.map(|index| PodHit {
        entry: Arc::clone(entry),
        index,
    }));
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the node's entry, with no bound.
    pub fn insert(&self, entry: NodeEntry) {
        let _ = self.insert_within(entry, &Budget::UNLIMITED);
    }

    /// Replaces the node's entry if `budget` has room for it (counting the
    /// entry it replaces as freed); else keeps the old one. Checked under
    /// the node's lock; replicas ingesting many nodes at once may pass
    /// the global bound by at most one report each.
    pub fn insert_within(&self, entry: NodeEntry, budget: &Budget) -> Result<(), BudgetError> {
        let bytes = entry.footprint();
        let pods = entry.pods.len();
        if bytes > budget.max_node_bytes {
            return Err(BudgetError::NodeTooLarge {
                bytes,
                bound: budget.max_node_bytes,
            });
        }
        let slot = self.nodes.entry(entry.name.clone());
        let (old_bytes, old_pods) = match &slot {
            Entry::Occupied(o) => (o.get().footprint(), o.get().pods.len()),
            Entry::Vacant(_) => (0, 0),
        };
        let held = self.bytes.load(Ordering::Relaxed);
        if held.saturating_sub(old_bytes).saturating_add(bytes) > budget.max_bytes {
            return Err(BudgetError::Bytes {
                bytes,
                held,
                bound: budget.max_bytes,
            });
        }
        let held_pods = self.pods.load(Ordering::Relaxed);
        if held_pods.saturating_sub(old_pods).saturating_add(pods) > budget.max_pods {
            return Err(BudgetError::Pods {
                pods,
                held: held_pods,
                bound: budget.max_pods,
            });
        }
        if entry.node.is_some() || !entry.pods.is_empty() {
            self.has_data.store(true, Ordering::Relaxed);
        }
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.bytes.fetch_sub(old_bytes, Ordering::Relaxed);
        self.pods.fetch_add(pods, Ordering::Relaxed);
        self.pods.fetch_sub(old_pods, Ordering::Relaxed);
        match slot {
            Entry::Occupied(mut o) => {
                self.index.update(&entry.name, &o.get().pods, &entry.pods);
                o.insert(Arc::new(entry));
            }
            Entry::Vacant(v) => {
                self.index.update(&entry.name, &[], &entry.pods);
                v.insert(Arc::new(entry));
            }
        }
        Ok(())
    }

    /// Runs `update` on `node`'s entry in place, unless a reader holds
    /// that entry: readers take a reference of their own, so an entry
    /// no one else holds can change without any reader seeing it change.
    /// `update` must leave the entry's footprint, pods' keys and label
    /// sets as they were (the budget and the index are not told), or
    /// return false having changed nothing. False when the node has no
    /// entry, a reader holds it, or `update` returned false.
    pub fn update_in_place(&self, node: &str, update: impl FnOnce(&mut NodeEntry) -> bool) -> bool {
        let Some(mut slot) = self.nodes.get_mut(node) else {
            return false;
        };
        Arc::get_mut(&mut slot).is_some_and(update)
    }

    /// Estimated bytes and number of pods held.
    pub fn held(&self) -> (usize, usize) {
        (
            self.bytes.load(Ordering::Relaxed),
            self.pods.load(Ordering::Relaxed),
        )
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

    /// Every live entry, with node usage or not, in no particular order.
    pub fn entries(&self, now: Instant) -> Vec<Arc<NodeEntry>> {
        self.nodes
            .iter()
            .filter(|e| e.expires > now)
            .map(|e| Arc::clone(e.value()))
            .collect()
    }

    /// Live pods, optionally of one namespace, in no particular order; a
    /// pod reported by two nodes (it moved) appears twice, and
    /// `query::merge` keeps the freshest copy while it orders the answer.
    /// A namespace visits only the nodes the index lists for it.
    pub fn pods(&self, namespace: Option<&str>, now: Instant) -> Vec<PodHit> {
        match namespace {
            None => {
                let mut out = Vec::new();
                self.nodes
                    .iter()
                    .for_each(|e| add_pods(&mut out, e.value(), None, now));
                out
            }
            Some(ns) => self.pods_on(&self.index.nodes_with_namespace(ns), namespace, now),
        }
    }

    /// [`pods`](Self::pods) that may match `selector`: when it requires
    /// one of some label pairs (`key=value`, `key in (...)`), only the
    /// nodes the index lists for those pairs are visited (or the
    /// namespace's, when fewer). Every pod that matches is returned; the
    /// caller still applies the selector to each.
    pub fn pods_for_selector(
        &self,
        namespace: Option<&str>,
        selector: &LabelSelector,
        now: Instant,
    ) -> Vec<PodHit> {
        let narrowest = selector
            .required_pairs()
            .map(|(key, values)| {
                let mut nodes: Vec<Arc<str>> = values
                    .iter()
                    .flat_map(|v| self.index.nodes_with_label(key, v))
                    .collect();
                nodes.sort_unstable();
                nodes.dedup();
                nodes
            })
            .min_by_key(Vec::len);
        let namespace_nodes = namespace.map(|ns| self.index.nodes_with_namespace(ns));
        let nodes = match (narrowest, namespace_nodes) {
            (Some(by_label), Some(by_ns)) if by_ns.len() <= by_label.len() => by_ns,
            (Some(by_label), _) => by_label,
            (None, Some(by_ns)) => by_ns,
            (None, None) => return self.pods(None, now),
        };
        self.pods_on(&nodes, namespace, now)
    }

    /// Live pods on `nodes`, of `namespace` only when given.
    fn pods_on(&self, nodes: &[Arc<str>], namespace: Option<&str>, now: Instant) -> Vec<PodHit> {
        let mut out = Vec::new();
        for node in nodes {
            if let Some(e) = self.nodes.get(&**node) {
                add_pods(&mut out, e.value(), namespace, now);
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
                .binary_search_by(|p| (p.namespace(), p.name()).cmp(&key))
            {
                out.push(PodHit { entry, index });
            }
        }
        out
    }

    /// Live nodes with usage and live containers: metrics-server's
    /// storage points. Walks every entry; for scrapes.
    pub fn points(&self, now: Instant) -> (usize, usize) {
        let (mut nodes, mut containers) = (0, 0);
        for e in self.nodes.iter().filter(|e| e.expires > now) {
            nodes += usize::from(e.node.is_some());
            containers += e.pods.iter().map(|p| p.container_count()).sum::<usize>();
        }
        (nodes, containers)
    }

    /// Namespaces and pod keys in the index.
    pub fn index_sizes(&self) -> (usize, usize) {
        self.index.sizes()
    }

    /// True when the index holds nothing (for tests).
    pub fn index_is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Drops expired entries; returns how many went.
    pub fn sweep(&self, now: Instant) -> usize {
        let before = self.nodes.len();
        self.nodes.retain(|name, e| {
            let keep = e.expires > now;
            if !keep {
                self.index.update(name, &e.pods, &[]);
                self.bytes.fetch_sub(e.footprint(), Ordering::Relaxed);
                self.pods.fetch_sub(e.pods.len(), Ordering::Relaxed);
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
    use crate::labelset::Labels;
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
                swap_bytes: 0,
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
                    h.pod().namespace(),
                    h.pod().name(),
                    h.pod().timestamp_ns
                )
            })
            .collect();
        names.sort();
        names
    }

    fn pods_named(prefix: &str, n: usize) -> Vec<(String, String, i64)> {
        (0..n)
            .map(|i| ("ns".to_string(), format!("{prefix}-{i}"), 1))
            .collect()
    }

    fn entry(node: &str, pods: &[(String, String, i64)], t0: Instant) -> NodeEntry {
        let pods: Vec<(&str, &str, i64)> = pods
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), *c))
            .collect();
        to_entry(report(node, &pods), None, t0, 3).unwrap()
    }

    #[test]
    fn an_entry_holds_each_pods_names_and_containers_sorted() {
        let mut r = report("n1", &[("ns-b", "web-1", 1), ("ns-a", "db-0", 1)]);
        let node = r.node_name.as_ptr();
        r.pods[0].containers = ["sidecar", "app", "init-x"]
            .iter()
            .zip(0..)
            .map(|(n, i)| ContainerUsage {
                name: (*n).into(),
                cpu_nanocores: 10 + i,
                memory_working_set_bytes: 100 + i,
                swap_bytes: 1000 + i,
            })
            .collect();
        let e = to_entry(r, None, Instant::now(), 3).unwrap();
        // The node's name is the report's own string, not a copy.
        assert_eq!(e.name.as_ptr(), node);
        let keys: Vec<(&str, &str)> = e.pods.iter().map(|p| (p.namespace(), p.name())).collect();
        assert_eq!(keys, [("ns-a", "db-0"), ("ns-b", "web-1")]);
        let web = &e.pods[1];
        assert_eq!(web.container_count(), 3);
        let got: Vec<(&str, u64, u64, u64)> = web
            .containers()
            .map(|c| {
                (
                    c.name,
                    c.cpu_nanocores,
                    c.memory_working_set_bytes,
                    c.swap_bytes,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("app", 11, 101, 1001),
                ("init-x", 12, 102, 1002),
                ("sidecar", 10, 100, 1000)
            ]
        );
        let db: Vec<&str> = e.pods[0].containers().map(|c| c.name).collect();
        assert_eq!(db, ["c"]);
    }

    #[test]
    fn a_pod_entry_refuses_names_it_cannot_keep_apart() {
        let one = |name: &str| {
            vec![ContainerUsage {
                name: name.into(),
                ..Default::default()
            }]
        };
        let new = |ns: &str, name: &str, c: &str| {
            PodEntry::new(ns, name, Labels::empty(), 1, 1, &mut one(c))
        };
        let long = "n".repeat(256);
        for (ns, name, c) in [
            ("ns", "a/b", "c"),
            ("a/b", "p", "c"),
            ("ns", "p", "x/y"),
            (long.as_str(), "p", "c"),
            ("ns", long.as_str(), "c"),
        ] {
            assert!(new(ns, name, c).is_none(), "{ns} {name} {c}");
        }
        let kept = new("ns", "p", "c").unwrap();
        assert_eq!((kept.namespace(), kept.name()), ("ns", "p"));
    }

    #[test]
    fn the_budget_bounds_bytes_pods_and_each_node_and_frees_what_goes() {
        let store = Store::new();
        let t0 = Instant::now();
        let ten = entry("a", &pods_named("p", 10), t0).footprint();
        // Room for about three ten-pod nodes; a node may hold a 32nd...
        let mut budget = Budget::new(ten * 3 + ten / 2, 25);
        // ...so that share is refused first.
        assert!(matches!(
            store.insert_within(entry("a", &pods_named("p", 10), t0), &budget),
            Err(BudgetError::NodeTooLarge { .. })
        ));
        assert_eq!(store.held(), (0, 0));
        budget.max_node_bytes = ten * 2;
        for n in ["a", "b"] {
            store
                .insert_within(entry(n, &pods_named(n, 10), t0), &budget)
                .unwrap_or_else(|e| panic!("{n}: {e}"));
        }
        // Pods: 20 held, 10 more would pass 25. Refused, nothing changes.
        let before = store.held();
        let err = store
            .insert_within(entry("c", &pods_named("c", 10), t0), &budget)
            .unwrap_err();
        assert!(
            matches!(
                err,
                BudgetError::Pods {
                    held: 20,
                    bound: 25,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(store.held(), before);
        assert!(store.node("c", t0).is_none());
        // Bytes: with room for pods, a third node fits, a fourth does not.
        budget.max_pods = 100;
        store
            .insert_within(entry("c", &pods_named("c", 10), t0), &budget)
            .unwrap();
        let before = store.held();
        assert!(before.0 <= budget.max_bytes);
        let err = store
            .insert_within(entry("d", &pods_named("d", 10), t0), &budget)
            .unwrap_err();
        assert!(matches!(err, BudgetError::Bytes { .. }), "{err}");
        assert_eq!(store.held(), before);
        assert!(store.node("d", t0).is_none());
        // A node's new report replaces its old one: the old bytes count as
        // freed, so a same-size report fits again.
        store
            .insert_within(entry("a", &pods_named("x", 10), t0), &budget)
            .unwrap();
        assert_eq!(store.held(), before);
        let hits = names(&store.pods(Some("ns"), t0));
        assert_eq!(hits.iter().filter(|n| n.starts_with("ns/x-")).count(), 10);
        assert_eq!(hits.iter().filter(|n| n.starts_with("ns/a-")).count(), 0);
        // Expiry gives everything back.
        assert_eq!(store.sweep(t0 + Duration::from_secs(10)), 3);
        assert_eq!(store.held(), (0, 0));
        store
            .insert_within(entry("d", &pods_named("d", 10), t0), &budget)
            .unwrap();
    }

    #[test]
    fn entries_expire_after_their_periods() {
        let store = Store::new();
        let t0 = Instant::now();
        store.insert(to_entry(report("n1", &[]), None, t0, 3).unwrap());
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
                report("n1", &[("b", "x", 5), ("a", "z", 5), ("a", "y", 5)]),
                None,
                t0,
                3,
            )
            .unwrap(),
        );
        // The pod moved: n2 has a fresher copy of b/x; both are returned
        // (query::merge keeps the fresher).
        store.insert(to_entry(report("n2", &[("b", "x", 9), ("c", "w", 1)]), None, t0, 3).unwrap());
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
        store.insert(to_entry(report("n1", &[("a", "x", 1), ("b", "y", 1)]), None, t0, 3).unwrap());
        store.insert(to_entry(report("n2", &[("b", "z", 1)]), None, t0, 3).unwrap());
        assert_eq!(store.index_sizes(), (2, 3));
        assert_eq!(names(&store.pod("b", "y", t0)), ["b/y@1"]);
        assert!(store.pod("b", "x", t0).is_empty());
        // b/y moves from n1 to n2; namespace b leaves n1.
        store.insert(to_entry(report("n1", &[("a", "x", 2)]), None, t0, 3).unwrap());
        store.insert(to_entry(report("n2", &[("b", "z", 2), ("b", "y", 2)]), None, t0, 3).unwrap());
        assert_eq!(names(&store.pod("b", "y", t0)), ["b/y@2"]);
        assert_eq!(names(&store.pods(Some("b"), t0)), ["b/y@2", "b/z@2"]);
        assert_eq!(store.index_sizes(), (2, 3));
        // n2 expires (a 1 s period here): its pods leave answers, then
        // the index at the sweep.
        store.insert(
            to_entry(
                report("n1", &[("a", "x", 3)]),
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

    fn labelled_report(node: &str, pods: &[(usize, usize, Option<usize>)], ts: i64) -> NodeReport {
        let mut r = report(node, &[]);
        r.pods = pods
            .iter()
            .map(|(ns, p, app)| PodUsage {
                namespace: format!("ns{ns}"),
                name: format!("p{p}"),
                labels: app
                    .map(|a| [("app".to_owned(), format!("a{a}"))].into_iter().collect())
                    .unwrap_or_default(),
                timestamp_unix_nanos: ts,
                window_nanos: 1,
                containers: vec![ContainerUsage {
                    name: "c".into(),
                    ..Default::default()
                }],
            })
            .collect();
        r.pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        r.pods
            .dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        r
    }

    proptest::proptest! {
        /// After any sequence of reports (labels changing, pods coming and
        /// going, nodes expiring), the pods a selector's label lookup
        /// yields that match it equal those of a scan of every node.
        #[test]
        fn label_lookups_equal_a_full_scan(
            reports in proptest::collection::vec(
                (0..4usize, proptest::collection::vec((0..2usize, 0..4usize, proptest::option::of(0..3usize)), 0..6)),
                1..30,
            )
        ) {
            let store = Store::new();
            let t0 = Instant::now();
            for (i, (node, pods)) in reports.iter().enumerate() {
                let r = labelled_report(&format!("n{node}"), pods, i as i64 + 1);
                store.insert(to_entry(r, None, t0, 3).unwrap());
            }
            // One node expires and is swept: its pairs leave the index.
            let first = store.nodes.iter().next().map(|e| e.key().clone());
            if let Some(first) = first {
                let mut gone = to_entry(report(&first, &[]), None, t0, 3).unwrap();
                gone.expires = t0;
                store.insert(gone);
                store.sweep(t0 + Duration::from_millis(1));
            }
            let now = t0;
            for sel in ["app=a0", "app in (a1,a2)", "app=a9", "app", "app!=a0", ""] {
                let selector = LabelSelector::parse(sel).unwrap();
                let matching = |hits: Vec<PodHit>| -> Vec<String> {
                    let kept: Vec<PodHit> = hits
                        .into_iter()
                        .filter(|h| selector.matches_with(|k| h.pod().labels.get(k)))
                        .collect();
                    names(&kept)
                };
                for ns in [None, Some("ns0"), Some("ns1")] {
                    let all: Vec<PodHit> = store
                        .pods(None, now)
                        .into_iter()
                        .filter(|h| ns.is_none_or(|n| h.pod().namespace() == n))
                        .collect();
                    proptest::prop_assert_eq!(
                        matching(store.pods_for_selector(ns, &selector, now)),
                        matching(all),
                        "{} in {:?}", sel, ns
                    );
                }
            }
            // Every node gone: nothing is left in the index, no posting
            // and no node id.
            store.sweep(t0 + Duration::from_secs(3600));
            proptest::prop_assert!(store.index_is_empty());
        }
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
                store.insert(to_entry(report(&format!("n{node}"), &refs), None, t0, 3).unwrap());
            }
            let all = store.pods(None, t0);
            for ns in 0..3 {
                let ns = format!("ns{ns}");
                let mut want: Vec<PodHit> =
                    all.iter().filter(|h| h.pod().namespace() == ns).cloned().collect();
                proptest::prop_assert_eq!(names(&store.pods(Some(&ns), t0)), names(&want));
                for p in 0..5 {
                    let name = format!("p{p}");
                    want = all
                        .iter()
                        .filter(|h| h.pod().namespace() == ns && h.pod().name() == name)
                        .cloned()
                        .collect();
                    proptest::prop_assert_eq!(names(&store.pod(&ns, &name, t0)), names(&want));
                }
            }
            // Every node gone: no pod key is left, shared or not.
            store.sweep(t0 + Duration::from_secs(3600));
            proptest::prop_assert!(store.index_is_empty());
        }
    }
}
