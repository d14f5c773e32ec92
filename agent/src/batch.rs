//! Cumulative samples as read from a source, before any rate is computed.

use std::collections::BTreeMap;

/// Namespace and name of a pod; orders by namespace, then name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
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
    pub pods: BTreeMap<PodRef, BTreeMap<String, Point>>,
}

impl Batch {
    /// Number of container points in the batch.
    pub fn containers(&self) -> usize {
        self.pods.values().map(BTreeMap::len).sum()
    }
}
