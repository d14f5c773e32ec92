//! Checking a NodeReport from the network and turning it into a store entry
//! (with every object rendered once).

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_proto::v1::{ContainerUsage, NodeReport, PodUsage, Usage};
use metrics_proto::{MAX_PODS_PER_REPORT, PROTOCOL_VERSION};

use crate::labelset::{self, LabelError, Labels, Resolved};
use crate::render::{self, Rendered};

/// Shortest and longest period an agent may announce, in ms.
const PERIOD_MS: std::ops::RangeInclusive<u64> =
    metrics_proto::MIN_PERIOD.as_millis() as u64..=metrics_proto::MAX_PERIOD.as_millis() as u64;

/// Why a report was refused; sent back in its Ack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("protocol version {0} not supported (want {PROTOCOL_VERSION})")]
    Version(u32),
    #[error("invalid node name {0:?}")]
    NodeName(String),
    #[error("stream is bound to node {bound:?}, report is for {got:?}")]
    WrongNode { bound: String, got: String },
    #[error("period {0} ms outside 1s..10m")]
    Period(u64),
    #[error("node usage: {0}")]
    NodeUsage(&'static str),
    #[error("node usage: {0}")]
    Clock(String),
    #[error(transparent)]
    Labels(#[from] LabelError),
    #[error("replica {shard} does not own node {node:?}; report to its owners from the shard map")]
    NotOwner { node: String, shard: String },
    #[error(transparent)]
    Budget(#[from] crate::store::BudgetError),
}

/// One pod as stored, compactly: its names in one string and its
/// containers' usage in one slice, two allocations a pod.
#[derive(Debug)]
pub struct PodEntry {
    /// `namespace/name/container/container...`, the containers sorted by
    /// name. None of the names can hold a `/` (each passed the DNS name
    /// checks), so the separators are unambiguous.
    names: Box<str>,
    pub labels: Arc<Labels>,
    pub timestamp_ns: i64,
    pub window_ns: i64,
    /// The containers' usage, in the order of their names in `names`.
    usage: Box<[ContainerStat]>,
    /// Length of the namespace, then of the name (both DNS subdomains, at
    /// most 253 bytes).
    ns_len: u8,
    name_len: u8,
}

/// One container's usage as stored; its name is kept in its pod's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContainerStat {
    cpu_nanocores: u64,
    memory_working_set_bytes: u64,
    swap_bytes: u64,
}

/// One container of a stored pod, as answers render it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Container<'a> {
    pub name: &'a str,
    pub cpu_nanocores: u64,
    pub memory_working_set_bytes: u64,
    pub swap_bytes: u64,
}

impl<'a> Container<'a> {
    /// A container as the agent reported it.
    pub fn of(c: &'a ContainerUsage) -> Self {
        Container {
            name: &c.name,
            cpu_nanocores: c.cpu_nanocores,
            memory_working_set_bytes: c.memory_working_set_bytes,
            swap_bytes: c.swap_bytes,
        }
    }
}

/// What a name in [`PodEntry::names`] cannot hold.
const SEP: char = '/';

/// Bookkeeping per stored pod beyond its strings: the entry itself, the
/// label set's offsets, and its keys in the index.
const POD_OVERHEAD: usize = 168;
const CONTAINER_OVERHEAD: usize = 25;
const NODE_OVERHEAD: usize = 512;

impl PodEntry {
    /// A pod from its checked parts ([`check_pod`]: the names are DNS
    /// names, so none holds a `/` and none is over 253 bytes); `containers`
    /// in any order. None when a name breaks that.
    pub fn new(
        namespace: &str,
        name: &str,
        labels: Arc<Labels>,
        timestamp_ns: i64,
        window_ns: i64,
        containers: &mut [ContainerUsage],
    ) -> Option<Self> {
        let ns_len = u8::try_from(namespace.len()).ok()?;
        let name_len = u8::try_from(name.len()).ok()?;
        containers.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let all = || {
            std::iter::once(namespace)
                .chain(std::iter::once(name))
                .chain(containers.iter().map(|c| c.name.as_str()))
        };
        if all().any(|n| n.contains(SEP)) {
            return None;
        }
        let size = all().map(|n| n.len() + 1).sum::<usize>();
        let mut names = String::with_capacity(size);
        for n in all() {
            if !names.is_empty() {
                names.push(SEP);
            }
            names.push_str(n);
        }
        let usage = containers
            .iter()
            .map(|c| ContainerStat {
                cpu_nanocores: c.cpu_nanocores,
                memory_working_set_bytes: c.memory_working_set_bytes,
                swap_bytes: c.swap_bytes,
            })
            .collect();
        Some(PodEntry {
            names: names.into_boxed_str(),
            labels,
            timestamp_ns,
            window_ns,
            usage,
            ns_len,
            name_len,
        })
    }

    pub fn namespace(&self) -> &str {
        self.names.get(..usize::from(self.ns_len)).unwrap_or("")
    }

    pub fn name(&self) -> &str {
        let start = usize::from(self.ns_len) + 1;
        self.names
            .get(start..start + usize::from(self.name_len))
            .unwrap_or("")
    }

    /// How many containers the pod has.
    pub fn container_count(&self) -> usize {
        self.usage.len()
    }

    /// The containers, sorted by name.
    pub fn containers(&self) -> impl Iterator<Item = Container<'_>> {
        let start = usize::from(self.ns_len) + usize::from(self.name_len) + 2;
        let names = self.names.get(start..).unwrap_or("").split(SEP);
        names.zip(self.usage.iter()).map(|(name, u)| Container {
            name,
            cpu_nanocores: u.cpu_nanocores,
            memory_working_set_bytes: u.memory_working_set_bytes,
            swap_bytes: u.swap_bytes,
        })
    }

    /// The containers' names, in the stored (sorted) order.
    fn container_names(&self) -> impl Iterator<Item = &str> {
        self.containers().map(|c| c.name)
    }

    /// Whether this pod is `namespace/name`: the lengths kept beside the
    /// entry are compared before the names' bytes.
    fn is(&self, namespace: &str, name: &str) -> bool {
        let (ns, n) = (usize::from(self.ns_len), usize::from(self.name_len));
        let names = self.names.as_bytes();
        ns == namespace.len()
            && n == name.len()
            && names.get(..ns) == Some(namespace.as_bytes())
            && names.get(ns + 1..ns + 1 + n) == Some(name.as_bytes())
    }

    /// Whether `p` lists this pod's containers in the stored order: its
    /// container names, joined by the separator, are the stored ones. (The
    /// stored names hold no separator, so a joined list that equals them
    /// with as many names is them, name by name.)
    fn lists_in_order(&self, p: &PodUsage) -> bool {
        let start = usize::from(self.ns_len) + usize::from(self.name_len) + 2;
        let Some(mut rest) = self.names.as_bytes().get(start..) else {
            return false;
        };
        for (i, c) in p.containers.iter().enumerate() {
            if i > 0 {
                match rest.split_first() {
                    Some((&b, r)) if b == SEP as u8 => rest = r,
                    _ => return false,
                }
            }
            match rest.strip_prefix(c.name.as_bytes()) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        rest.is_empty()
    }

    /// Where each of `p`'s containers is stored: `Some(None)` when `p`
    /// lists them in the stored order, `Some(Some(..))` with their places
    /// when it lists a few ([`FEW_TO_MATCH`]) in another; None when they
    /// are not this pod's containers, each once. When it answers `Some`,
    /// `p`'s container names are this pod's, which passed [`check_pod`].
    fn container_places(&self, p: &PodUsage) -> Option<ContainerPlaces> {
        if p.containers.len() != self.usage.len() {
            return None;
        }
        if self.lists_in_order(p) {
            return Some(None);
        }
        if p.containers.len() > FEW_TO_MATCH {
            return None;
        }
        let mut places = [0u8; FEW_TO_MATCH];
        // A name listed twice would leave another container unwritten.
        let mut taken = [false; FEW_TO_MATCH];
        for (slot, c) in places.iter_mut().zip(&p.containers) {
            let at = self.container_names().position(|have| have == c.name)?;
            let seen = taken.get_mut(at)?;
            if std::mem::replace(seen, true) {
                return None;
            }
            *slot = u8::try_from(at).ok()?;
        }
        Some(Some(places))
    }

    /// Overwrites the usage and times with `p`'s, whose containers are at
    /// `places` ([`PodEntry::container_places`] found them).
    fn set_usage(&mut self, p: &PodUsage, places: ContainerPlaces) {
        self.timestamp_ns = p.timestamp_unix_nanos;
        self.window_ns = p.window_nanos;
        for (i, c) in p.containers.iter().enumerate() {
            let at = match places {
                None => Some(i),
                Some(places) => places.get(i).map(|&at| usize::from(at)),
            };
            if let Some(have) = at.and_then(|at| self.usage.get_mut(at)) {
                *have = ContainerStat {
                    cpu_nanocores: c.cpu_nanocores,
                    memory_working_set_bytes: c.memory_working_set_bytes,
                    swap_bytes: c.swap_bytes,
                };
            }
        }
    }

    /// Estimated bytes held for this pod: its names and containers, and
    /// its labels (counted whole even when shared with other pods).
    pub fn footprint(&self) -> usize {
        self.names.len()
            + self.labels.json().len()
            + CONTAINER_OVERHEAD * self.usage.len()
            + POD_OVERHEAD
    }

    /// The PodMetrics object, rendered now (objects are stored as values
    /// and rendered only when an answer includes them); with `swap` in
    /// each container's usage when `swap`.
    pub fn render(&self, swap: bool) -> Rendered {
        render::pod_object(
            self.namespace(),
            self.name(),
            &self.labels,
            self.timestamp_ns,
            self.window_ns,
            self.containers(),
            self.container_count(),
            swap,
        )
    }

    /// The PodMetrics object in protobuf form, without its
    /// creationTimestamp (`render_pb.rs`).
    pub fn render_pb(&self, swap: bool) -> Vec<u8> {
        crate::render_pb::pod_metrics(
            self.namespace(),
            self.name(),
            &self.labels,
            self.timestamp_ns,
            self.window_ns,
            self.containers(),
            self.container_count(),
            swap,
        )
    }
}

/// The latest report of one node, ready to serve.
#[derive(Debug)]
pub struct NodeEntry {
    pub name: String,
    pub labels: Arc<Labels>,
    /// Sample time of the node usage, ns since the epoch.
    pub timestamp_ns: i64,
    /// Node usage, when the report had it.
    pub node: Option<Usage>,
    /// Sorted by namespace, then name.
    pub pods: Vec<PodEntry>,
    pub received: Instant,
    pub expires: Instant,
    /// Whether this node's objects show `swap` beside cpu and memory.
    pub swap: bool,
    /// [`NodeEntry::footprint`], computed once.
    bytes: usize,
}

impl NodeEntry {
    /// Estimated bytes held for this node and its pods.
    pub fn footprint(&self) -> usize {
        self.bytes
    }

    /// The NodeMetrics object, rendered now; None without node usage.
    pub fn render(&self) -> Option<Rendered> {
        let u = self.node.as_ref()?;
        Some(render::node_metrics(&self.name, &self.labels, u, self.swap))
    }

    /// The NodeMetrics object in protobuf form, without its
    /// creationTimestamp; None without node usage.
    pub fn render_pb(&self) -> Option<Vec<u8>> {
        let u = self.node.as_ref()?;
        Some(crate::render_pb::node_metrics(
            &self.name,
            &self.labels,
            u,
            self.swap,
        ))
    }

    fn measure(&self) -> usize {
        self.name.len()
            + self.labels.json().len()
            + NODE_OVERHEAD
            + self.pods.iter().map(PodEntry::footprint).sum::<usize>()
    }
}

pub use metrics_proto::checks::is_dns_subdomain;
use metrics_proto::checks::{check_node_usage, check_pod, check_pod_values, pod_key};

/// How far ahead of this replica's clock a sample time may be.
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(30);

/// The oldest sample time accepted is the expiry (period × expiry periods),
/// but never less than this: the kubelet's stats can lag its scrape by a
/// housekeeping interval (10–15 s), which short periods would otherwise
/// refuse.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(60);

/// The sample-time check of a report with period `period_ms`: against
/// `wall_ns` when given ([`check_clock`], the oldest accepted being the
/// expiry but at least [`MIN_MAX_AGE`]), none otherwise.
fn sample_clock(
    period_ms: u64,
    expiry_periods: u32,
    wall_ns: Option<i64>,
) -> impl Fn(i64) -> Result<(), String> {
    let max_age = (Duration::from_millis(period_ms) * expiry_periods).max(MIN_MAX_AGE);
    move |ts| wall_ns.map_or(Ok(()), |now| check_clock(ts, now, max_age))
}

/// Refuses a sample time more than [`MAX_FUTURE_SKEW`] ahead of `now_ns`
/// or older than `max_age` (the expiry): such a value would outrank or
/// outlive every honest one.
fn check_clock(ts: i64, now_ns: i64, max_age: Duration) -> Result<(), String> {
    let ahead = ts.saturating_sub(now_ns);
    if ahead > MAX_FUTURE_SKEW.as_nanos() as i64 {
        return Err(format!(
            "sample time {} s ahead of this replica's clock (more than {} s of skew)",
            ahead / 1_000_000_000,
            MAX_FUTURE_SKEW.as_secs()
        ));
    }
    let behind = now_ns.saturating_sub(ts);
    if behind > max_age.as_nanos() as i64 {
        return Err(format!(
            "sample time {} s old, past the expiry of {} s",
            behind / 1_000_000_000,
            max_age.as_secs()
        ));
    }
    Ok(())
}

/// Validates `report` (for a stream bound to `bound`, if any), with the
/// labels it carries, and builds the entry; `expiry_periods` periods
/// without a report expire it.
pub fn to_entry(
    report: NodeReport,
    bound: Option<&str>,
    now: Instant,
    expiry_periods: u32,
) -> Result<NodeEntry, ReportError> {
    let labels = labelset::carried(&report, None)?;
    to_entry_with(report, labels, bound, now, None, expiry_periods).map(|(e, _)| e)
}

/// What kind of part of a report was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Pod,
    NodeLabels,
    PodsOverLimit,
}

impl Part {
    /// The `part` label of its counter.
    pub fn label(self) -> &'static str {
        match self {
            Part::Pod => "pod",
            Part::NodeLabels => "node_labels",
            Part::PodsOverLimit => "pods_over_limit",
        }
    }
}

/// A part of an accepted report that was left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub part: Part,
    /// `namespace/name` of a pod, or what else was dropped.
    pub what: String,
    pub reason: String,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.reason)
    }
}

/// [`to_entry`] with the report's labels already resolved (one per pod,
/// in order; a stream's cache supplies those a report left out). What is
/// wrong with the report as a whole refuses it; what is wrong with one pod
/// (or with the node's labels) drops that part alone, listed in the answer.
/// With `wall_ns` (this replica's clock, ns since the epoch) sample times
/// are also checked against it. The entry takes its names from `report`.
pub fn to_entry_with(
    report: NodeReport,
    labels: Resolved,
    bound: Option<&str>,
    now: Instant,
    wall_ns: Option<i64>,
    expiry_periods: u32,
) -> Result<(NodeEntry, Vec<Dropped>), ReportError> {
    if report.protocol_version != PROTOCOL_VERSION {
        return Err(ReportError::Version(report.protocol_version));
    }
    if !is_dns_subdomain(&report.node_name) {
        return Err(ReportError::NodeName(
            report.node_name.chars().take(64).collect(),
        ));
    }
    if let Some(b) = bound.filter(|b| *b != report.node_name) {
        return Err(ReportError::WrongNode {
            bound: b.to_owned(),
            got: report.node_name.clone(),
        });
    }
    if !PERIOD_MS.contains(&report.period_ms) {
        return Err(ReportError::Period(report.period_ms));
    }
    let clock = sample_clock(report.period_ms, expiry_periods, wall_ns);
    let mut dropped = Vec::new();
    let Resolved {
        node: labels,
        node_error,
        pods: pod_labels,
    } = labels;
    if let Some(reason) = node_error {
        dropped.push(Dropped {
            part: Part::NodeLabels,
            what: "node labels".into(),
            reason,
        });
    }
    if report.pods.len() > MAX_PODS_PER_REPORT {
        dropped.push(Dropped {
            part: Part::PodsOverLimit,
            what: format!("{} pods", report.pods.len() - MAX_PODS_PER_REPORT),
            reason: format!("over the limit of {MAX_PODS_PER_REPORT} pods per node"),
        });
    }
    let (node, timestamp_ns) = match &report.node {
        Some(u) => {
            check_node_usage(u).map_err(ReportError::NodeUsage)?;
            clock(u.timestamp_unix_nanos).map_err(ReportError::Clock)?;
            (Some(*u), u.timestamp_unix_nanos)
        }
        None => (None, 0),
    };
    let NodeReport {
        node_name,
        period_ms,
        pods: report_pods,
        ..
    } = report;
    let mut pods = Vec::with_capacity(report_pods.len().min(MAX_PODS_PER_REPORT));
    for (mut p, labels) in report_pods
        .into_iter()
        .zip(pod_labels)
        .take(MAX_PODS_PER_REPORT)
    {
        let labels = match labels.map_err(|r| r.to_string()).and_then(|l| {
            check_pod(&p)?;
            clock(p.timestamp_unix_nanos)?;
            Ok(l)
        }) {
            Ok(l) => l,
            Err(reason) => {
                dropped.push(Dropped {
                    part: Part::Pod,
                    what: pod_key(&p),
                    reason,
                });
                continue;
            }
        };
        let Some(entry) = PodEntry::new(
            &p.namespace,
            &p.name,
            labels,
            p.timestamp_unix_nanos,
            p.window_nanos,
            &mut p.containers,
        ) else {
            // check_pod refuses every name PodEntry cannot hold.
            dropped.push(Dropped {
                part: Part::Pod,
                what: pod_key(&p),
                reason: "invalid namespace, name or container name".into(),
            });
            continue;
        };
        pods.push(entry);
    }
    pods.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
    pods.dedup_by(|b, a| a.namespace() == b.namespace() && a.name() == b.name());
    let period = Duration::from_millis(period_ms);
    let mut entry = NodeEntry {
        name: node_name,
        labels,
        timestamp_ns,
        node,
        pods,
        received: now,
        expires: now + period * expiry_periods,
        swap: false,
        bytes: 0,
    };
    entry.bytes = entry.measure();
    Ok((entry, dropped))
}

/// Where a pod's containers are stored: `None` in the order listed, else
/// the place of each listed one ([`PodEntry::container_places`]).
type ContainerPlaces = Option<[u8; FEW_TO_MATCH]>;

/// Containers listed in another order than the stored one are matched
/// by name when a pod has at most this many; a pod with more is built
/// anew (its matching would cost the square of its containers).
const FEW_TO_MATCH: usize = 8;

/// Writes `report`'s usage and times over `entry` in place when the report
/// holds what `entry` holds apart from them: the same node, node labels
/// and usage fields, the same pods (in any order) with the same containers
/// and label sets, and nothing [`to_entry_with`] would refuse or leave
/// out. Returns false, with `entry` untouched, otherwise; the report is
/// then built into a new entry.
///
/// Nearly every report of a stream after its first is such a report.
/// Built anew, each would allocate every pod's names and counters again
/// and free the last ones, and the allocator's pages would hold freed
/// blocks between the live ones; in place, no pod allocates, and the
/// index has nothing to update (no key or label set changed).
pub fn refresh_in_place(
    entry: &mut NodeEntry,
    report: &NodeReport,
    labels: &Resolved,
    bound: Option<&str>,
    now: Instant,
    wall_ns: Option<i64>,
    expiry_periods: u32,
) -> bool {
    let same_node = report.protocol_version == PROTOCOL_VERSION
        && report.node_name == entry.name
        && bound.is_none_or(|b| b == report.node_name)
        && PERIOD_MS.contains(&report.period_ms)
        && labels.node_error.is_none()
        && Arc::ptr_eq(&labels.node, &entry.labels)
        && report.node.is_some() == entry.node.is_some()
        && report.pods.len() == entry.pods.len()
        && labels.pods.len() == report.pods.len();
    if !same_node {
        return false;
    }
    let clock = sample_clock(report.period_ms, expiry_periods, wall_ns);
    if let Some(u) = &report.node {
        if check_node_usage(u).is_err() || clock(u.timestamp_unix_nanos).is_err() {
            return false;
        }
    }
    let Some(mut pods) = stored_places(&entry.pods, &report.pods) else {
        return false;
    };
    // The names are the stored pod's, which passed `check_pod` when they
    // were stored: only the values are checked again.
    for ((p, l), (at, containers)) in report.pods.iter().zip(&labels.pods).zip(&mut pods) {
        let Some(have) = entry.pods.get(*at) else {
            return false;
        };
        if !l.as_ref().is_ok_and(|l| Arc::ptr_eq(l, &have.labels)) {
            return false;
        }
        let Some(places) = have.container_places(p) else {
            return false;
        };
        if check_pod_values(p).is_err() || clock(p.timestamp_unix_nanos).is_err() {
            return false;
        }
        *containers = places;
    }
    entry.node = report.node;
    entry.timestamp_ns = report.node.map_or(0, |u| u.timestamp_unix_nanos);
    for (p, &(at, containers)) in report.pods.iter().zip(&pods) {
        if let Some(have) = entry.pods.get_mut(at) {
            have.set_usage(p, containers);
        }
    }
    entry.received = now;
    entry.expires = now + Duration::from_millis(report.period_ms) * expiry_periods;
    true
}

/// Where each of `pods` is in `stored` (sorted by namespace and name),
/// when `pods` are exactly the stored pods, each once, in any order; each
/// beside a slot for its containers' places ([`PodEntry::container_places`],
/// `None` until the caller matches them).
fn stored_places(stored: &[PodEntry], pods: &[PodUsage]) -> Option<Vec<(usize, ContainerPlaces)>> {
    if pods.len() != stored.len() {
        return None;
    }
    let mut places = Vec::with_capacity(pods.len());
    for (i, p) in pods.iter().enumerate() {
        let key = (p.namespace.as_str(), p.name.as_str());
        let at = match stored.get(i) {
            Some(have) if have.is(key.0, key.1) => i,
            _ => stored
                .binary_search_by(|have| (have.namespace(), have.name()).cmp(&key))
                .ok()?,
        };
        places.push((at, None));
    }
    // Sorted reports (the agent's) are told apart at once; others must
    // name every stored pod once.
    if !places.windows(2).all(|w| w[0].0 < w[1].0) {
        let mut seen: Vec<usize> = places.iter().map(|&(at, _)| at).collect();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != stored.len() {
            return None;
        }
    }
    Some(places)
}
