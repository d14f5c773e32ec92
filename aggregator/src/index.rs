//! Cluster-wide lookups over this replica's nodes: which nodes hold pods of
//! a namespace, which hold a given pod, and which hold pods carrying a
//! given label pair. A namespaced list (the HPA's query) visits only the
//! nodes running that namespace, a pod GET only the node running the pod,
//! and a list with a `key=value` or `key in (...)` selector only the nodes
//! with pods carrying one of those pairs, never every node.
//!
//! The index is updated from the difference between a node's previous and
//! new entry; both keep their pods sorted by (namespace, name), so the
//! difference is one merge walk, and a report whose pods did not change
//! (the usual case) writes nothing. Label pairs are looked at only when
//! the node's label sets changed (pods share interned sets, so comparing
//! their addresses is enough).

use std::cell::OnceCell;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;

use dashmap::DashMap;
use xxhash_rust::xxh3::Xxh3;

use crate::report::PodEntry;

/// Namespace → nodes, and pod key hash → nodes.
#[derive(Debug, Default)]
pub struct PodIndex {
    namespaces: DashMap<String, HashSet<Arc<str>>>,
    /// Keyed by a 64-bit hash of (namespace, name); a collision only adds a
    /// node to look at, since every hit is checked in the node's entry.
    pods: DashMap<u64, Vec<Arc<str>>>,
    /// Keyed by a 64-bit hash of (label key, value); a collision only adds
    /// nodes to look at, as for pods.
    labels: DashMap<u64, HashSet<Arc<str>>>,
}

fn pair_key(key: &str, value: &str) -> u64 {
    pod_key(key, value)
}

/// Addresses of the distinct label sets of `pods`, sorted.
fn label_sets(pods: &[PodEntry]) -> Vec<usize> {
    let mut sets: Vec<usize> = pods
        .iter()
        .map(|p| Arc::as_ptr(&p.labels) as usize)
        .collect();
    sets.sort_unstable();
    sets.dedup();
    sets
}

/// Hashes of the distinct label pairs of `pods`, sorted.
fn label_pairs(pods: &[PodEntry]) -> Vec<u64> {
    let mut seen: HashSet<usize> = HashSet::new();
    let mut pairs = Vec::new();
    for p in pods {
        if seen.insert(Arc::as_ptr(&p.labels) as usize) {
            pairs.extend(p.labels.iter().map(|(k, v)| pair_key(k, v)));
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// 64-bit hash of a pod's namespace and name.
pub fn pod_key(namespace: &str, name: &str) -> u64 {
    let mut h = Xxh3::new();
    h.update(namespace.as_bytes());
    h.update(&[0]);
    h.update(name.as_bytes());
    h.digest()
}

/// Distinct namespaces of pods sorted by namespace.
fn namespaces(pods: &[PodEntry]) -> impl Iterator<Item = &str> {
    let mut last: Option<&str> = None;
    pods.iter().filter_map(move |p| {
        let ns = p.namespace.as_str();
        if last == Some(ns) {
            None
        } else {
            last = Some(ns);
            Some(ns)
        }
    })
}

/// Calls `gone` for items only in `old` and `added` for items only in
/// `new`; both sorted ascending and free of duplicates.
fn diff<T: Ord + Copy>(
    old: impl IntoIterator<Item = T>,
    new: impl IntoIterator<Item = T>,
    mut gone: impl FnMut(T),
    mut added: impl FnMut(T),
) {
    let (mut old, mut new) = (old.into_iter(), new.into_iter());
    let (mut o, mut n) = (old.next(), new.next());
    loop {
        match (o, n) {
            (None, None) => return,
            (Some(a), None) => {
                gone(a);
                o = old.next();
            }
            (None, Some(b)) => {
                added(b);
                n = new.next();
            }
            (Some(a), Some(b)) => match a.cmp(&b) {
                Ordering::Less => {
                    gone(a);
                    o = old.next();
                }
                Ordering::Greater => {
                    added(b);
                    n = new.next();
                }
                Ordering::Equal => {
                    o = old.next();
                    n = new.next();
                }
            },
        }
    }
}

fn keys(pods: &[PodEntry]) -> impl Iterator<Item = Key<'_>> {
    pods.iter().map(|p| Key(&p.namespace, &p.name))
}

/// A pod's sort key, borrowed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key<'a>(&'a str, &'a str);

impl PodIndex {
    /// Records that `node`'s pods changed from `old` to `new` (either empty
    /// when the node appears or goes). Both are sorted by (namespace, name).
    pub fn update(&self, node: &str, old: &[PodEntry], new: &[PodEntry]) {
        // One shared copy of the node's name for every entry added now.
        let shared: OnceCell<Arc<str>> = OnceCell::new();
        let name = || Arc::clone(shared.get_or_init(|| Arc::from(node)));
        diff(
            namespaces(old),
            namespaces(new),
            |ns| self.remove_namespace(ns, node),
            |ns| {
                self.namespaces
                    .entry(ns.to_owned())
                    .or_default()
                    .insert(name());
            },
        );
        diff(
            keys(old),
            keys(new),
            |k| self.remove_pod(pod_key(k.0, k.1), node),
            |k| {
                let mut nodes = self.pods.entry(pod_key(k.0, k.1)).or_default();
                if !nodes.iter().any(|n| &**n == node) {
                    // Almost always the only one: no room for more.
                    nodes.reserve_exact(1);
                    nodes.push(name());
                }
            },
        );
        // Old and new entries are both alive here, so a label set of one
        // cannot share an address with a different set of the other.
        if label_sets(old) != label_sets(new) {
            diff(
                label_pairs(old),
                label_pairs(new),
                |k| {
                    if let Some(mut nodes) = self.labels.get_mut(&k) {
                        nodes.remove(node);
                    }
                    self.labels.remove_if(&k, |_, nodes| nodes.is_empty());
                },
                |k| {
                    self.labels.entry(k).or_default().insert(name());
                },
            );
        }
    }

    /// Nodes holding pods labelled `key=value` (and, on a hash collision,
    /// a few more).
    pub fn nodes_with_label(&self, key: &str, value: &str) -> Vec<Arc<str>> {
        self.labels
            .get(&pair_key(key, value))
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn remove_namespace(&self, ns: &str, node: &str) {
        if let Some(mut nodes) = self.namespaces.get_mut(ns) {
            nodes.remove(node);
        }
        self.namespaces.remove_if(ns, |_, nodes| nodes.is_empty());
    }

    fn remove_pod(&self, key: u64, node: &str) {
        if let Some(mut nodes) = self.pods.get_mut(&key) {
            nodes.retain(|n| &**n != node);
        }
        self.pods.remove_if(&key, |_, nodes| nodes.is_empty());
    }

    /// Nodes holding pods of `namespace`.
    pub fn nodes_with_namespace(&self, namespace: &str) -> Vec<Arc<str>> {
        self.namespaces
            .get(namespace)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Nodes holding the pod `namespace/name` (usually one; two while it
    /// moves; more only on a hash collision).
    pub fn nodes_with_pod(&self, namespace: &str, name: &str) -> Vec<Arc<str>> {
        self.pods
            .get(&pod_key(namespace, name))
            .map(|n| n.clone())
            .unwrap_or_default()
    }

    /// Namespaces and pod keys held (for tests and self-metrics).
    pub fn sizes(&self) -> (usize, usize) {
        (self.namespaces.len(), self.pods.len())
    }
}
