//! Two-point rate computation with metrics-server's rules.
//!
//! For the node and for every container the store keeps the latest sample
//! (`last`) and the one before it (`prev`). Usage is `Δcpu / window` between
//! them and the memory of `last`. The rules, applied per point on [`store`]:
//!
//! * a point newer than `last` moves `last` to `prev`; a point that is not
//!   newer changes nothing except that `prev` is dropped when it is not older
//!   than the new point;
//! * a container that started ≥ 10 s and < one resolution before its sample
//!   gets a synthetic `prev` at its start time with zero CPU;
//! * a container whose start time is not before `last`'s timestamp restarted:
//!   it starts over with no `prev`;
//! * containers and pods missing from a batch are forgotten.
//!
//! On [`RateStore::report`] a pair with a decreasing CPU counter, a
//! decreasing start time or a non-positive window is skipped with a log
//! line; a pod is reported only when every one of its containers has a pair,
//! and carries the timestamp and window of its earliest container.
//!
//! [`store`]: RateStore::store

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_proto::v1::{ContainerUsage, PodUsage, Usage};

use crate::batch::{Batch, ByName, Name, PodRef, Point};

/// Youngest container age, in ns, for which a synthetic start point is used;
/// below it the rate would be too noisy.
const FRESH_CONTAINER_MIN_NS: i64 = 10_000_000_000;

#[derive(Debug, Clone, Copy, Default)]
struct Pair {
    last: Point,
    prev: Option<Point>,
}

/// Why a pair gave no usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error("start time decreased")]
    StartTimeDecreased,
    #[error("cumulative CPU decreased")]
    CpuDecreased,
    #[error("window is not positive")]
    EmptyWindow,
}

/// Computes usage from two samples. Mirrors metrics-server's arithmetic so
/// both give the same nanocores for the same input.
pub fn usage(last: &Point, prev: &Point) -> Result<Usage, PairError> {
    if last.start_ns < prev.start_ns {
        return Err(PairError::StartTimeDecreased);
    }
    if last.cpu_ns < prev.cpu_ns {
        return Err(PairError::CpuDecreased);
    }
    let window = last.timestamp_ns.saturating_sub(prev.timestamp_ns);
    if window <= 0 {
        return Err(PairError::EmptyWindow);
    }
    // Go's Duration.Seconds(): whole seconds plus the fraction, as f64.
    let seconds = (window / 1_000_000_000) as f64 + (window % 1_000_000_000) as f64 / 1e9;
    let cpu = (last.cpu_ns - prev.cpu_ns) as f64 / seconds;
    Ok(Usage {
        timestamp_unix_nanos: last.timestamp_ns,
        window_nanos: window,
        cpu_nanocores: cpu as u64,
        memory_working_set_bytes: last.memory_bytes,
        swap_bytes: last.swap_bytes,
    })
}

/// Decides the pair after a new point arrives for a series that has `old`.
fn advance(old: Option<&Pair>, new: Point) -> Pair {
    let Some(old) = old else {
        return Pair {
            last: new,
            prev: None,
        };
    };
    if new.timestamp_ns > old.last.timestamp_ns {
        return Pair {
            last: new,
            prev: Some(old.last),
        };
    }
    Pair {
        last: old.last,
        prev: old.prev.filter(|p| p.timestamp_ns < new.timestamp_ns),
    }
}

/// The pair after `new` arrives for a container that had `old`.
fn next_pair(resolution_ns: i64, old: Option<&Pair>, new: Point) -> Pair {
    let age = new.timestamp_ns.saturating_sub(new.start_ns);
    if new.start_ns < new.timestamp_ns && age < resolution_ns && age >= FRESH_CONTAINER_MIN_NS {
        return Pair {
            last: new,
            prev: Some(Point {
                timestamp_ns: new.start_ns,
                cpu_ns: 0,
                ..new
            }),
        };
    }
    match old {
        Some(pair) if new.start_ns < pair.last.timestamp_ns => advance(Some(pair), new),
        _ => advance(None, new),
    }
}

/// The last two samples of one node and its containers.
#[derive(Debug, Default)]
pub struct RateStore {
    resolution_ns: i64,
    node: Option<Pair>,
    pods: HashMap<PodRef, Kept, foldhash::fast::RandomState>,
    /// Counts the batches stored; each pod of a batch is marked with it.
    stamp: u64,
}

/// One pod's pairs, marked with the last batch that had the pod.
#[derive(Debug, Default)]
struct Kept {
    stamp: u64,
    pairs: ByName<Pair>,
}

impl RateStore {
    /// `resolution` is the sampling period (metrics-server's
    /// `--metric-resolution`).
    pub fn new(resolution: Duration) -> Self {
        Self {
            resolution_ns: i64::try_from(resolution.as_nanos()).unwrap_or(i64::MAX),
            ..Self::default()
        }
    }

    /// Folds a new batch in; see the module doc for the rules.
    pub fn store(&mut self, batch: &Batch) {
        self.node = batch.node.map(|p| advance(self.node.as_ref(), p));
        // Updated in place: in steady state (the same pods and containers
        // as last period) a period allocates nothing here, and a pod's
        // containers are matched by their place, their names being the
        // ones the source shared last period.
        let resolution_ns = self.resolution_ns;
        self.stamp = self.stamp.wrapping_add(1);
        let stamp = self.stamp;
        for (pod, containers) in &batch.pods {
            let kept = match self.pods.get_mut(pod) {
                Some(kept) => kept,
                None => self.pods.entry(pod.clone()).or_default(),
            };
            kept.stamp = stamp;
            let pairs = &mut kept.pairs;
            let same = pairs.len() == containers.len()
                && pairs
                    .keys()
                    .zip(containers.keys())
                    .all(|(a, b)| Arc::ptr_eq(a, b) || a == b);
            if same {
                for ((_, pair), (_, &new)) in pairs.iter_mut().zip(containers.iter()) {
                    *pair = next_pair(resolution_ns, Some(pair), new);
                }
                continue;
            }
            pairs.retain(|name, _| containers.contains_key(name));
            for (name, &new) in containers {
                match pairs.get_mut(name) {
                    Some(pair) => *pair = next_pair(resolution_ns, Some(pair), new),
                    None => {
                        pairs.insert(name.clone(), next_pair(resolution_ns, None, new));
                    }
                }
            }
        }
        // Pods the batch did not have are forgotten.
        self.pods.retain(|_, kept| kept.stamp == stamp);
    }

    /// Node usage, when the node has a valid pair.
    pub fn node_usage(&self) -> Option<Usage> {
        let pair = self.node?;
        match usage(&pair.last, &pair.prev?) {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::warn!(error = %e, "skipping node usage");
                None
            }
        }
    }

    /// Pod usages, sorted by namespace and name, containers by name.
    pub fn pod_usages(&self) -> Vec<PodUsage> {
        self.pod_usages_into(Vec::new())
    }

    /// [`pod_usages`](Self::pod_usages), reusing what `spare` (the usages
    /// of an earlier period, sorted as they are made) holds: a pod found in
    /// it keeps its names, and its container list when the containers are
    /// the same. So a period with the pods of the one before allocates no
    /// name. Anything else in `spare` is dropped.
    pub fn pod_usages_into(&self, spare: Vec<PodUsage>) -> Vec<PodUsage> {
        fn key_of(p: &PodUsage) -> (&str, &str) {
            (p.namespace.as_str(), p.name.as_str())
        }
        let mut pods: Vec<_> = self.pods.iter().collect();
        pods.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut spare = spare.into_iter().peekable();
        let mut out = Vec::with_capacity(pods.len());
        let mut usages: Vec<(&Name, Usage)> = Vec::new();
        'pods: for (pod, kept) in pods {
            usages.clear();
            for (name, pair) in &kept.pairs {
                let Some(prev) = pair.prev else {
                    continue 'pods;
                };
                match usage(&pair.last, &prev) {
                    Ok(u) => usages.push((name, u)),
                    Err(e) => {
                        tracing::warn!(error = %e, pod = %format_args!("{}/{}", pod.namespace, pod.name), container = %name, "skipping container usage");
                    }
                }
            }
            // The earliest container times the pod.
            let Some((_, first)) = usages.iter().min_by_key(|(_, u)| u.timestamp_unix_nanos) else {
                continue;
            };
            let (timestamp_unix_nanos, window_nanos) =
                (first.timestamp_unix_nanos, first.window_nanos);
            let key = (&*pod.namespace, &*pod.name);
            while spare.next_if(|p| key_of(p) < key).is_some() {}
            let mut p = spare
                .next_if(|p| key_of(p) == key)
                .unwrap_or_else(|| PodUsage {
                    namespace: String::from(&*pod.namespace),
                    name: String::from(&*pod.name),
                    ..PodUsage::default()
                });
            p.labels.clear();
            p.timestamp_unix_nanos = timestamp_unix_nanos;
            p.window_nanos = window_nanos;
            let same = p.containers.len() == usages.len()
                && p.containers
                    .iter()
                    .zip(&usages)
                    .all(|(c, (n, _))| c.name == ***n);
            if !same {
                p.containers = usages
                    .iter()
                    .map(|(name, _)| ContainerUsage {
                        name: String::from(&***name),
                        ..ContainerUsage::default()
                    })
                    .collect();
            }
            for (c, (_, u)) in p.containers.iter_mut().zip(&usages) {
                c.cpu_nanocores = u.cpu_nanocores;
                c.memory_working_set_bytes = u.memory_working_set_bytes;
                c.swap_bytes = u.swap_bytes;
            }
            out.push(p);
        }
        out
    }
}
