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
    pub pods: BTreeMap<PodRef, BTreeMap<Name, Point>>,
}

impl Batch {
    /// Number of container points in the batch.
    pub fn containers(&self) -> usize {
        self.pods.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
