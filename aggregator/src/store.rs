//! The latest report of every node this aggregator receives, keyed by node
//! name. Reads never block ingest: entries are immutable `Arc`s swapped
//! whole on each report, and expired ones vanish from answers at once and
//! from memory at the next sweep.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::report::{NodeEntry, PodEntry};

/// Node name → latest entry.
#[derive(Debug, Default)]
pub struct Store {
    nodes: DashMap<String, Arc<NodeEntry>>,
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
        self.nodes.insert(entry.name.clone(), Arc::new(entry));
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
    pub fn pods(&self, namespace: Option<&str>, now: Instant) -> Vec<PodHit> {
        let mut out = Vec::new();
        for e in self.nodes.iter() {
            if e.expires <= now {
                continue;
            }
            let entry = e.value();
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
        }
        out
    }

    /// Drops expired entries; returns how many went.
    pub fn sweep(&self, now: Instant) -> usize {
        let before = self.nodes.len();
        self.nodes.retain(|_, e| e.expires > now);
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
}
