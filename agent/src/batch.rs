//! Cumulative samples as read from a source, before any rate is computed.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// A namespace, pod or container name. Shared: a source that sees the
/// same pods every period hands out the same names ([`Names`]) instead of
/// copying them from its input each time.
pub type Name = Arc<str>;

/// Namespace and name of a pod; orders by namespace, then name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: Name,
    pub name: Name,
}

/// The names a source gave out last period and this one, so that a name
/// read again is shared instead of copied. Holds at most two periods'
/// names: those not asked for in a period are let go at its end.
#[derive(Debug, Default)]
pub struct Names {
    last: HashSet<Name, foldhash::fast::RandomState>,
    now: HashSet<Name, foldhash::fast::RandomState>,
}

impl Names {
    /// The shared name equal to `s`.
    pub fn get(&mut self, s: &str) -> Name {
        if let Some(n) = self.now.get(s) {
            return n.clone();
        }
        let n = self.last.get(s).cloned().unwrap_or_else(|| Name::from(s));
        self.now.insert(n.clone());
        n
    }

    /// Ends a period: names not asked for since the last call go.
    pub fn end_period(&mut self) {
        std::mem::swap(&mut self.last, &mut self.now);
        self.now.clear();
    }

    /// True when no name is held.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty() && self.now.is_empty()
    }
}

/// One cumulative sample of a node or container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Point {
    /// When the sample was taken, ns since the epoch.
    pub timestamp_ns: i64,
    /// When the container started, ns since the epoch (0 when unknown, and
    /// for nodes). Cumulative CPU is zero at that moment.
    pub start_ns: i64,
    /// CPU time used since start, ns (core-nanoseconds).
    pub cpu_ns: u64,
    /// Working set, bytes.
    pub memory_bytes: u64,
    /// Swap in use, bytes (kept, not served yet).
    pub swap_bytes: u64,
}

/// Everything one read of a source produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub node: Option<Point>,
    /// Containers by pod, then by container name.
    pub pods: BTreeMap<PodRef, ByName<Point>>,
}

impl Batch {
    /// Number of container points in the batch.
    pub fn containers(&self) -> usize {
        self.pods.values().map(ByName::len).sum()
    }
}

/// One pod's containers, or anything kept per container, by name, in
/// name order. A pod has a handful of containers, so this is one sorted
/// vector: a map node per pod would be several times the size of what it
/// holds, allocated and walked again every period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByName<V> {
    entries: Vec<(Name, V)>,
}

impl<V> Default for ByName<V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<V> ByName<V> {
    pub fn new() -> Self {
        Self::default()
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(n, _)| (**n).cmp(name))
    }

    /// Sets `name`'s value; returns the one it replaces.
    pub fn insert(&mut self, name: Name, value: V) -> Option<V> {
        match self.find(&name) {
            Ok(i) => self
                .entries
                .get_mut(i)
                .map(|(_, v)| std::mem::replace(v, value)),
            Err(i) => {
                self.entries.insert(i, (name, value));
                None
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&V> {
        let i = self.find(name).ok()?;
        self.entries.get(i).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        let i = self.find(name).ok()?;
        self.entries.get_mut(i).map(|(_, v)| v)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Name, &V)> + Clone {
        self.entries.iter().map(|(n, v)| (n, v))
    }

    /// Entries in name order, values mutable.
    pub fn iter_mut(&mut self) -> impl ExactSizeIterator<Item = (&Name, &mut V)> {
        self.entries.iter_mut().map(|(n, v)| (&*n, v))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &Name> + Clone {
        self.entries.iter().map(|(n, _)| n)
    }

    pub fn values(&self) -> impl ExactSizeIterator<Item = &V> + Clone {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Keeps the entries `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&Name, &mut V) -> bool) {
        self.entries.retain_mut(|(n, v)| keep(n, v));
    }
}

impl<V> std::ops::Index<&str> for ByName<V> {
    type Output = V;

    /// Like a map's index: panics when `name` is absent (tests).
    fn index(&self, name: &str) -> &V {
        match self.get(name) {
            Some(v) => v,
            None => panic!("no container named {name:?}"),
        }
    }
}

impl<V> FromIterator<(Name, V)> for ByName<V> {
    /// Like a map's: a name given twice keeps its last value.
    fn from_iter<I: IntoIterator<Item = (Name, V)>>(iter: I) -> Self {
        let mut out = Self::new();
        for (n, v) in iter {
            out.insert(n, v);
        }
        out
    }
}

impl<'a, V> IntoIterator for &'a ByName<V> {
    type Item = (&'a Name, &'a V);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (Name, V)>, fn(&'a (Name, V)) -> (&'a Name, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        fn pair<N, V>((n, v): &(N, V)) -> (&N, &V) {
            (n, v)
        }
        self.entries.iter().map(pair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever order names are inserted in, and whatever is replaced or
    /// dropped, lookups and iteration agree with an ordered map's.
    #[test]
    fn by_name_behaves_as_an_ordered_map() {
        let names = ["sidecar", "app", "init", "app", "zz", "a", "sidecar", "m"];
        let mut ours = ByName::new();
        let mut map = BTreeMap::new();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(
                ours.insert(Name::from(*n), i),
                map.insert(Name::from(*n), i),
                "{n}"
            );
            assert!(ours.iter().map(|(n, v)| (n.clone(), *v)).eq(map.clone()));
        }
        assert_eq!(ours.len(), map.len());
        for n in ["app", "zz", "nope", ""] {
            assert_eq!(ours.get(n), map.get(n));
            assert_eq!(ours.contains_key(n), map.contains_key(n));
        }
        if let Some(v) = ours.get_mut("m") {
            *v = 100;
        }
        map.insert(Name::from("m"), 100);
        ours.retain(|n, v| {
            *v += 1;
            &**n != "app"
        });
        map.retain(|n, v| {
            *v += 1;
            &**n != "app"
        });
        assert!(ours.iter().map(|(n, v)| (n.clone(), *v)).eq(map.clone()));
        assert_eq!(ours["zz"], map["zz"]);
        let collected: ByName<usize> = names.iter().map(|n| (Name::from(*n), n.len())).collect();
        let want: BTreeMap<Name, usize> = names.iter().map(|n| (Name::from(*n), n.len())).collect();
        assert!(collected.iter().map(|(n, v)| (n.clone(), *v)).eq(want));
    }

    #[test]
    fn names_are_shared_across_one_period_and_let_go_after_two() {
        let mut names = Names::default();
        let a = names.get("kube-system");
        assert!(Arc::ptr_eq(&a, &names.get("kube-system")), "same period");
        names.end_period();
        let b = names.get("kube-system");
        assert!(Arc::ptr_eq(&a, &b), "asked for again the next period");
        assert_eq!(&*b, "kube-system");
        names.get("default");
        names.end_period();
        names.end_period();
        assert!(names.is_empty(), "not asked for in a whole period");
        assert!(!Arc::ptr_eq(&a, &names.get("kube-system")));
    }
}
