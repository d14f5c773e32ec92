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

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use xxhash_rust::xxh3::Xxh3;

use crate::report::PodEntry;

/// Namespace → nodes, pod key hash → nodes, and label pair hash → nodes.
/// Nodes are held by a dense id (4 bytes a posting, where a shared name
/// took 16 and a set of them a table each): a pod is almost always on one
/// node, and a label pair of one Deployment on a few.
#[derive(Debug, Default)]
pub struct PodIndex {
    namespaces: DashMap<String, Ids>,
    /// Keyed by a 32-bit hash of (namespace, name) ([`pod_slot`]); a
    /// collision only adds a node to look at, since every hit is checked
    /// in the node's entry. The one node holding the pod, the usual case,
    /// is held in the slot itself (8 bytes a slot: the table has a slot
    /// for every pod of the replica); [`SHARED`] when several nodes hold
    /// the key (a pod moving, or a collision), listed in `pods_shared`.
    pods: DashMap<u32, u32>,
    pods_shared: DashMap<u32, Ids>,
    /// Keyed by a 64-bit hash of (label key, value); a collision only adds
    /// nodes to look at, as for pods.
    labels: DashMap<u64, Ids>,
    ids: RwLock<NodeIds>,
}

/// In `PodIndex::pods`: the key is held by several nodes, listed in
/// `PodIndex::pods_shared`. Never a node's id.
const SHARED: u32 = u32::MAX;

/// Node ids, sorted and distinct; one held inline.
#[derive(Debug, Clone)]
enum Ids {
    One(u32),
    Many(Vec<u32>),
}

impl Default for Ids {
    fn default() -> Self {
        Ids::Many(Vec::new())
    }
}

impl Ids {
    fn as_slice(&self) -> &[u32] {
        match self {
            Ids::One(id) => std::slice::from_ref(id),
            Ids::Many(ids) => ids,
        }
    }

    fn insert(&mut self, id: u32) {
        match self {
            Ids::Many(ids) if ids.is_empty() => *self = Ids::One(id),
            Ids::One(have) if *have == id => {}
            Ids::One(have) => {
                let have = *have;
                *self = Ids::Many(if have < id {
                    vec![have, id]
                } else {
                    vec![id, have]
                });
            }
            Ids::Many(ids) => {
                if let Err(at) = ids.binary_search(&id) {
                    ids.insert(at, id);
                }
            }
        }
    }

    fn remove(&mut self, id: u32) {
        match self {
            Ids::One(have) if *have == id => *self = Ids::default(),
            Ids::One(_) => {}
            Ids::Many(ids) => {
                if let Ok(at) = ids.binary_search(&id) {
                    ids.remove(at);
                    if let [last] = ids[..] {
                        *self = Ids::One(last);
                    } else if ids.capacity() > 2 * ids.len() + 4 {
                        ids.shrink_to_fit();
                    }
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

/// Ids for the names of the nodes with pods in the index; an id is given
/// back when its node's last pod leaves, and used again.
#[derive(Debug, Default)]
struct NodeIds {
    by_name: HashMap<Arc<str>, u32>,
    names: Vec<Option<Arc<str>>>,
    free: Vec<u32>,
}

impl NodeIds {
    fn get_or_add(&mut self, node: &str) -> u32 {
        if let Some(id) = self.by_name.get(node) {
            return *id;
        }
        let name: Arc<str> = Arc::from(node);
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = Some(Arc::clone(&name));
                id
            }
            None => {
                // Ids stay below SHARED; a replica never holds four
                // billion nodes (its store's budget stops far sooner).
                let id =
                    u32::try_from(self.names.len()).map_or(SHARED - 1, |id| id.min(SHARED - 1));
                self.names.push(Some(Arc::clone(&name)));
                id
            }
        };
        self.by_name.insert(name, id);
        id
    }

    fn release(&mut self, node: &str) {
        if let Some(id) = self.by_name.remove(node) {
            if let Some(slot) = self.names.get_mut(id as usize) {
                *slot = None;
                self.free.push(id);
            }
        }
    }
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

/// The key of a pod in the pod table: 32 bits of [`pod_key`]. With
/// 150,000 pods on a replica, a few pairs of pods share one; a lookup of
/// either then also looks at the other's node.
fn pod_slot(namespace: &str, name: &str) -> u32 {
    pod_key(namespace, name) as u32
}

/// Whether one of `pods` has the pod table key `slot`; `slots` holds
/// their keys sorted, computed at the first call.
fn holds_slot(pods: &[PodEntry], slots: &mut Option<Vec<u32>>, slot: u32) -> bool {
    slots
        .get_or_insert_with(|| {
            let mut all: Vec<u32> = pods
                .iter()
                .map(|p| pod_slot(p.namespace(), p.name()))
                .collect();
            all.sort_unstable();
            all
        })
        .binary_search(&slot)
        .is_ok()
}

/// Distinct namespaces of pods sorted by namespace.
fn namespaces(pods: &[PodEntry]) -> impl Iterator<Item = &str> {
    let mut last: Option<&str> = None;
    pods.iter().filter_map(move |p| {
        let ns = p.namespace();
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

/// Takes node `id` out of `key`'s postings, and the key out when none
/// are left.
fn remove_from<K, Q>(map: &DashMap<K, Ids>, key: &Q, id: u32)
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(mut ids) = map.get_mut(key) {
        ids.remove(id);
    }
    map.remove_if(key, |_, ids| ids.is_empty());
}

fn keys(pods: &[PodEntry]) -> impl Iterator<Item = Key<'_>> {
    pods.iter().map(|p| Key(p.namespace(), p.name()))
}

/// A pod's sort key, borrowed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key<'a>(&'a str, &'a str);

impl PodIndex {
    /// Records that `node`'s pods changed from `old` to `new` (either empty
    /// when the node appears or goes). Both are sorted by (namespace, name).
    /// Calls for one node never overlap (the store holds its entry).
    pub fn update(&self, node: &str, old: &[PodEntry], new: &[PodEntry]) {
        let known = self
            .read_ids(|ids| ids.by_name.get(node).copied())
            .flatten();
        let id = match known {
            None if !new.is_empty() => self.write_ids(|ids| ids.get_or_add(node)),
            known => known,
        };
        // A node with no id has nothing in the index.
        let Some(id) = id else {
            return;
        };
        diff(
            namespaces(old),
            namespaces(new),
            |ns| remove_from(&self.namespaces, ns, id),
            |ns| {
                self.namespaces.entry(ns.to_owned()).or_default().insert(id);
            },
        );
        // A pod that left takes the node out of its key only when no pod
        // the node still holds has that key too.
        let mut new_slots = None;
        diff(
            keys(old),
            keys(new),
            |k| {
                let slot = pod_slot(k.0, k.1);
                if !holds_slot(new, &mut new_slots, slot) {
                    self.remove_pod(slot, id);
                }
            },
            |k| self.add_pod(pod_slot(k.0, k.1), id),
        );
        // Old and new entries are both alive here, so a label set of one
        // cannot share an address with a different set of the other.
        if label_sets(old) != label_sets(new) {
            diff(
                label_pairs(old),
                label_pairs(new),
                |k| remove_from(&self.labels, &k, id),
                |k| self.labels.entry(k).or_default().insert(id),
            );
        }
        if new.is_empty() {
            self.write_ids(|ids| ids.release(node));
        }
    }

    /// Records that node `id` holds the pod keyed `key`. The pod slot's
    /// guard is held while `pods_shared` changes, as in every reader: the
    /// two maps are always locked in that order.
    fn add_pod(&self, key: u32, id: u32) {
        match self.pods.entry(key) {
            Entry::Vacant(slot) => {
                slot.insert(id);
            }
            Entry::Occupied(mut slot) => match *slot.get() {
                SHARED => self.pods_shared.entry(key).or_default().insert(id),
                have if have == id => {}
                have => {
                    let mut ids = Ids::One(have);
                    ids.insert(id);
                    self.pods_shared.insert(key, ids);
                    slot.insert(SHARED);
                }
            },
        }
    }

    /// Records that node `id` no longer holds the pod keyed `key`; a key
    /// left with one node goes back to its slot, one left with none leaves.
    fn remove_pod(&self, key: u32, id: u32) {
        let Entry::Occupied(mut slot) = self.pods.entry(key) else {
            return;
        };
        match *slot.get() {
            have if have == id => {
                slot.remove();
            }
            SHARED => {
                // Never written without its list; dropped if ever so.
                let Entry::Occupied(mut shared) = self.pods_shared.entry(key) else {
                    slot.remove();
                    return;
                };
                shared.get_mut().remove(id);
                match *shared.get().as_slice() {
                    [] => {
                        shared.remove();
                        slot.remove();
                    }
                    [one] => {
                        shared.remove();
                        slot.insert(one);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn read_ids<T>(&self, f: impl FnOnce(&NodeIds) -> T) -> Option<T> {
        self.ids.read().ok().map(|ids| f(&ids))
    }

    fn write_ids<T>(&self, f: impl FnOnce(&mut NodeIds) -> T) -> Option<T> {
        self.ids.write().ok().map(|mut ids| f(&mut ids))
    }

    /// The names of `ids` (those still given to a node). Called with a
    /// posting's map guard held: `update` never takes the id lock while
    /// it holds one, so the two cannot wait on each other.
    fn names(&self, ids: Option<&Ids>) -> Vec<Arc<str>> {
        let Some(ids) = ids else {
            return Vec::new();
        };
        self.read_ids(|known| {
            ids.as_slice()
                .iter()
                .filter_map(|id| known.names.get(*id as usize).cloned().flatten())
                .collect()
        })
        .unwrap_or_default()
    }

    /// Nodes holding pods labelled `key=value` (and, on a hash collision,
    /// a few more).
    pub fn nodes_with_label(&self, key: &str, value: &str) -> Vec<Arc<str>> {
        self.names(self.labels.get(&pair_key(key, value)).as_deref())
    }

    /// Nodes holding pods of `namespace`.
    pub fn nodes_with_namespace(&self, namespace: &str) -> Vec<Arc<str>> {
        self.names(self.namespaces.get(namespace).as_deref())
    }

    /// Nodes holding the pod `namespace/name` (usually one; two while it
    /// moves; more only on a hash collision).
    pub fn nodes_with_pod(&self, namespace: &str, name: &str) -> Vec<Arc<str>> {
        let key = pod_slot(namespace, name);
        let Some(slot) = self.pods.get(&key) else {
            return Vec::new();
        };
        match *slot {
            SHARED => self.names(self.pods_shared.get(&key).as_deref()),
            id => self.names(Some(&Ids::One(id))),
        }
    }

    /// Namespaces and pod keys held (for tests and self-metrics).
    pub fn sizes(&self) -> (usize, usize) {
        (self.namespaces.len(), self.pods.len())
    }

    /// True when nothing is indexed: no namespace, pod or label pair, and
    /// no node id given out.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.pods.is_empty()
            && self.pods_shared.is_empty()
            && self.labels.is_empty()
            && self.read_ids(|ids| ids.by_name.is_empty()).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labelset::Labels;
    use metrics_proto::v1::ContainerUsage;

    fn entry(name: &str) -> PodEntry {
        let mut containers = [ContainerUsage {
            name: "app".into(),
            ..Default::default()
        }];
        PodEntry::new("ns", name, Labels::empty(), 1, 1, &mut containers).unwrap()
    }

    /// Two pods of one node whose names share a pod table key: when one
    /// leaves, the node still holds the key for the other.
    #[test]
    fn a_pod_leaving_keeps_a_key_another_pod_of_its_node_shares() {
        let mut seen: HashMap<u32, String> = HashMap::new();
        let (a, b) = (0u64..)
            .find_map(|i| {
                let name = format!("pod-{i}");
                let slot = pod_slot("ns", &name);
                seen.insert(slot, name.clone()).map(|other| (other, name))
            })
            .unwrap();
        let index = PodIndex::default();
        let mut both = vec![entry(&a), entry(&b)];
        both.sort_by(|x, y| x.name().cmp(y.name()));
        index.update("node-1", &[], &both);
        assert_eq!(index.nodes_with_pod("ns", &b).len(), 1);

        let only_b = [entry(&b)];
        index.update("node-1", &both, &only_b);
        let found: Vec<String> = index
            .nodes_with_pod("ns", &b)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(found, ["node-1"], "{b} is still found");

        index.update("node-1", &only_b, &[]);
        assert!(index.nodes_with_pod("ns", &b).is_empty());
        assert!(index.is_empty(), "nothing left");
    }
}
