//! Turns a kubelet `/metrics/resource` payload into a [`Batch`], with
//! metrics-server's reading of each series.
//!
//! Differences from metrics-server, on purpose: a sample that is malformed,
//! negative, NaN or infinite, or a container series without its `namespace`,
//! `pod` and `container` labels, is dropped alone and counted; and a container
//! reporting zero CPU or zero memory (e.g. a finished init container) is
//! dropped alone instead of taking its whole pod with it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::SystemTime;

use crate::batch::{Batch, ByName, Name, Names, PodRef, Point};
use crate::source::prom::{self, Sample};

/// Payload bytes per container, for sizing the map up front: the
/// kubelet writes three series per container, each line about 100 bytes.
const BYTES_PER_CONTAINER: usize = 300;

/// Most containers the map is sized for before any is read (a node runs
/// at most a few hundred pods); more still fit, by growing.
const MAX_PRESIZED: usize = 4096;

/// Most problem series named per payload, for logs.
pub const MAX_PROBLEMS: usize = 32;

/// What decoding had to drop, for logs and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Lines of the series read that are not valid exposition format
    /// (lines of other series are skipped unread).
    pub malformed_lines: u64,
    /// Samples of known series with unusable values or labels.
    pub invalid_samples: u64,
    /// Containers dropped because their CPU or memory was zero.
    pub incomplete_containers: u64,
    /// 1 when the node point was dropped (no timestamp, zero CPU or memory).
    pub incomplete_node: u64,
    /// Pod cgroups whose UID matched no known pod (cgroup source).
    pub unmapped_cgroups: u64,
    /// Samples of a series already seen in the payload (the last one is
    /// used, as metrics-server does).
    pub duplicate_samples: u64,
    /// The series behind the invalid and duplicate samples (at most
    /// [`MAX_PROBLEMS`]), each as `name{labels}: what`, for logs.
    pub problems: Vec<String>,
}

impl DecodeStats {
    fn duplicate(&mut self, sample: &Sample<'_>) {
        self.duplicate_samples += 1;
        self.problem(sample, "repeated; the last value is used");
    }

    fn problem(&mut self, sample: &Sample<'_>, what: &str) {
        if self.problems.len() < MAX_PROBLEMS {
            let labels: String = sample.raw_labels().chars().take(200).collect();
            self.problems
                .push(format!("{}{{{labels}}}: {what}", sample.name));
        }
    }
}

/// Partial point while series are collected.
#[derive(Default, Clone, Copy)]
struct Partial {
    /// Fields already set, one bit per [`Field`].
    seen: u8,
    timestamp_ns: Option<i64>,
    start_ns: i64,
    cpu_ns: u64,
    memory_bytes: u64,
    swap_bytes: u64,
}

impl Partial {
    fn complete(&self) -> Option<Point> {
        let timestamp_ns = self.timestamp_ns?;
        (self.cpu_ns != 0 && self.memory_bytes != 0).then_some(Point {
            timestamp_ns,
            start_ns: self.start_ns,
            cpu_ns: self.cpu_ns,
            memory_bytes: self.memory_bytes,
            swap_bytes: self.swap_bytes,
        })
    }
}

#[derive(Clone, Copy)]
enum Field {
    Cpu,
    Memory,
    Swap,
    Start,
}

fn classify(name: &str) -> Option<(bool, Field)> {
    Some(match name {
        "node_cpu_usage_seconds_total" => (true, Field::Cpu),
        "node_memory_working_set_bytes" => (true, Field::Memory),
        "node_swap_usage_bytes" => (true, Field::Swap),
        "container_cpu_usage_seconds_total" => (false, Field::Cpu),
        "container_memory_working_set_bytes" => (false, Field::Memory),
        "container_swap_usage_bytes" => (false, Field::Swap),
        "container_start_time_seconds" => (false, Field::Start),
        _ => return None,
    })
}

pub use metrics_proto::time::unix_nanos;

/// Sets `field`; false when it was already set (a duplicate series).
fn apply(p: &mut Partial, field: Field, value: f64, timestamp_ns: i64) -> bool {
    let bit = 1u8 << (field as u8);
    let first = p.seen & bit == 0;
    p.seen |= bit;
    match field {
        // `as` truncates toward zero like Go's float-to-integer conversion.
        Field::Cpu => p.cpu_ns = (value * 1e9) as u64,
        Field::Memory => p.memory_bytes = value as u64,
        // Only the series metrics-server reads (CPU and memory) time a
        // point: a swap sample taken at another moment must not move the
        // window of the CPU rate.
        Field::Swap => {
            p.swap_bytes = value as u64;
            return first;
        }
        Field::Start => {
            p.start_ns = (value * 1e9) as i64;
            return first;
        }
    }
    p.timestamp_ns = Some(timestamp_ns);
    first
}

/// Namespace, pod and container of a container series, borrowed from the
/// payload unless a value carries escapes.
type ContainerKey<'a> = (Cow<'a, str>, Cow<'a, str>, Cow<'a, str>);

fn container_key<'a>(s: &Sample<'a>) -> Option<ContainerKey<'a>> {
    let [namespace, pod, container] = s.labels(["namespace", "pod", "container"]);
    let (namespace, pod, container) = (namespace?, pod?, container?);
    if namespace.is_empty() || pod.is_empty() || container.is_empty() {
        return None;
    }
    Some((namespace, pod, container))
}

/// The containers of one payload as they are read: each one's point, found
/// by its names, and by the exact label text of the lines already read.
struct Containers<'a> {
    /// Each container's names and point, in the order first read.
    points: Vec<(ContainerKey<'a>, Partial)>,
    /// Names → index in `points`. Keys borrow from the payload: a
    /// container's names are copied once, into the batch, however many
    /// series name it. foldhash, seeded per map, hashes the three names a
    /// fraction of SipHash's cost.
    by_key: HashMap<ContainerKey<'a>, usize, foldhash::fast::RandomState>,
    /// Label texts read so far with the container each names, in the
    /// order first read.
    texts: Vec<(&'a str, usize)>,
    /// The entry of `texts` the next line is expected to repeat.
    next: usize,
    /// Every container line's label text and container, in payload order,
    /// while each has been resolved to a container ([`Shape`]).
    lines: Option<Vec<(&'a str, usize)>>,
}

impl<'a> Containers<'a> {
    /// Sized up front, so the map is not grown and rehashed on the way.
    fn with_capacity(n: usize) -> Self {
        Containers {
            points: Vec::with_capacity(n),
            by_key: HashMap::with_capacity_and_hasher(n, Default::default()),
            texts: Vec::with_capacity(n),
            next: 0,
            lines: Some(Vec::with_capacity(n * 3)),
        }
    }

    /// The line's container and sample when its label text is the one
    /// expected next (the next of the series before, or the first again
    /// at the start of a series); `None` when it is not (the line is then
    /// parsed in full).
    fn recognise(
        &mut self,
        line: &'a str,
        name_end: usize,
    ) -> Option<(usize, &'a str, Result<Sample<'a>, &'static str>)> {
        for at in [self.next, 0] {
            let Some(&(text, slot)) = self.texts.get(at) else {
                continue;
            };
            if let Some(sample) = prom::parse_with_labels(line, name_end, text) {
                self.next = at + 1;
                return Some((slot, text, sample));
            }
        }
        None
    }

    /// The container a fully parsed sample names, added when new; `None`
    /// without its `namespace`, `pod` and `container` labels.
    fn slot(&mut self, sample: &Sample<'a>) -> Option<usize> {
        let key = container_key(sample)?;
        let slot = match self.by_key.get(&key) {
            Some(&slot) => slot,
            None => {
                let slot = self.points.len();
                self.by_key.insert(key.clone(), slot);
                self.points.push((key, Partial::default()));
                slot
            }
        };
        // Remembered only while the label texts are few enough to scan:
        // a payload of other shapes still decodes, by names.
        if self.texts.len() < MAX_PRESIZED {
            self.texts.push((sample.raw_labels(), slot));
            self.next = self.texts.len();
        }
        Some(slot)
    }

    fn partial(&mut self, slot: usize) -> &mut Partial {
        &mut self.points[slot].1
    }

    /// Notes the container line with label text `text` as `slot`'s.
    fn line(&mut self, text: &'a str, slot: usize) {
        if let Some(lines) = &mut self.lines {
            lines.push((text, slot));
        }
    }

    /// Notes a container line no container was found for: this payload
    /// leaves no [`Shape`].
    fn unresolved(&mut self) {
        self.lines = None;
    }
}

/// The container lines of the last payload decoded in full: each line's
/// label text with its container, in payload order, and each container's
/// names. A kubelet writes the same lines in the same order every period
/// while its pods stay the same, so the next payload is first read against
/// this: each line's label text compared whole with the one remembered at
/// its place, only its value read, its container known without a lookup,
/// and the batch built from names already shared. A line that differs
/// (a pod or container came or went) sends the payload down the full
/// decode, which remembers its shape in turn.
#[derive(Debug)]
struct Shape {
    /// The label texts, back to back.
    text: String,
    /// Per container line: where its label text ends in `text`, and its
    /// container (an index into `containers`).
    lines: Vec<(u32, u32)>,
    /// Each container's pod and name.
    containers: Vec<(PodRef, Name)>,
    /// Containers in the batch's order (by namespace, pod, container).
    order: Vec<u32>,
}

/// What a kubelet source keeps from one payload to the next: the names it
/// gave out ([`Names`]) and the shape of the last payload ([`Shape`]).
#[derive(Debug, Default)]
pub struct DecodeMemory {
    names: Names,
    shape: Option<Shape>,
    /// Payloads read against a shape.
    by_shape: u64,
}

impl DecodeMemory {
    /// Ends a period: names not asked for in it go (those of the shape
    /// stay with it).
    pub fn end_period(&mut self) {
        self.names.end_period();
    }

    /// How many payloads were read against the shape of the one before.
    pub fn read_by_shape(&self) -> u64 {
        self.by_shape
    }
}

/// Decodes a payload. Samples without a timestamp get `default_time` (the
/// moment the request was sent). Only the series metrics-server reads are
/// parsed; the other lines are skipped at their name.
pub fn decode(body: &str, default_time: SystemTime) -> (Batch, DecodeStats) {
    decode_with(body, default_time, &mut DecodeMemory::default())
}

/// [`decode`], with what the payload before it left in `memory` (a source
/// keeps it from one period to the next and ends each period with
/// [`DecodeMemory::end_period`]): a payload with the same lines as the
/// last is read against their shape, any other in full. Both give the same
/// batch and counts.
pub fn decode_with(
    body: &str,
    default_time: SystemTime,
    memory: &mut DecodeMemory,
) -> (Batch, DecodeStats) {
    if let Some(shape) = &memory.shape {
        if let Some(decoded) = decode_known(body, default_time, shape) {
            memory.by_shape += 1;
            return decoded;
        }
    }
    let (decoded, shape) = decode_full(body, default_time, &mut memory.names);
    memory.shape = shape;
    decoded
}

/// Reads a node line (the node's own series) into `node`.
fn node_line(
    line: &prom::WantedLine<'_, (bool, Field)>,
    node: &mut Partial,
    default_ns: i64,
    stats: &mut DecodeStats,
) {
    let sample = match line.parse() {
        Ok(sample) => sample,
        Err(e) => {
            tracing::debug!(error = %e, "malformed kubelet metrics line");
            stats.malformed_lines += 1;
            return;
        }
    };
    if let Some((value, ts)) = usable(&sample, default_ns, stats) {
        if !apply(node, line.kind.1, value, ts) {
            stats.duplicate(&sample);
        }
    }
}

/// The sample's value and time, or `None` (counted) when the value is not
/// a finite, non-negative number.
fn usable(sample: &Sample<'_>, default_ns: i64, stats: &mut DecodeStats) -> Option<(f64, i64)> {
    if !sample.value.is_finite() || sample.value < 0.0 {
        stats.invalid_samples += 1;
        stats.problem(sample, &format!("unusable value {}", sample.value));
        return None;
    }
    let ts = sample
        .timestamp_ms
        .and_then(|ms| ms.checked_mul(1_000_000))
        .unwrap_or(default_ns);
    Some((sample.value, ts))
}

/// A container's point into its pod's map, or counted as incomplete.
fn complete_into(
    complete: &mut ByName<Point>,
    pod: &PodRef,
    name: &Name,
    partial: &Partial,
    stats: &mut DecodeStats,
) {
    match partial.complete() {
        Some(point) => {
            complete.insert(name.clone(), point);
        }
        None => {
            tracing::debug!(pod = %format_args!("{}/{}", pod.namespace, pod.name), container = %name, "dropping container with zero CPU or memory");
            stats.incomplete_containers += 1;
        }
    }
}

/// Reads `body` against the last payload's `shape`; `None` as soon as a
/// container line is not the one remembered at its place, or lines are
/// missing.
fn decode_known(
    body: &str,
    default_time: SystemTime,
    shape: &Shape,
) -> Option<(Batch, DecodeStats)> {
    let default_ns = unix_nanos(default_time);
    let mut stats = DecodeStats::default();
    let mut node = Partial::default();
    let mut partials = vec![Partial::default(); shape.containers.len()];
    let mut at = 0;
    let mut start = 0;
    for line in prom::wanted_lines(body, classify) {
        let (is_node, field) = line.kind;
        if is_node {
            node_line(&line, &mut node, default_ns, &mut stats);
            continue;
        }
        let &(end, slot) = shape.lines.get(at)?;
        let text = shape.text.get(start..end as usize)?;
        let sample = prom::parse_with_labels(line.text, line.name_end?, text)?;
        at += 1;
        start = end as usize;
        let sample = match sample {
            Ok(sample) => sample,
            Err(reason) => {
                tracing::debug!(error = %line.error(reason), "malformed kubelet metrics line");
                stats.malformed_lines += 1;
                continue;
            }
        };
        let Some((value, ts)) = usable(&sample, default_ns, &mut stats) else {
            continue;
        };
        let partial = partials.get_mut(slot as usize)?;
        if !apply(partial, field, value, ts) {
            stats.duplicate(&sample);
        }
    }
    if at != shape.lines.len() {
        return None;
    }
    let mut batch = Batch {
        node: node.complete(),
        ..Batch::default()
    };
    if batch.node.is_none() {
        stats.incomplete_node = 1;
    }
    let mut order = shape.order.iter().map(|&i| i as usize).peekable();
    while let Some(first) = order.next() {
        let (pod, _) = shape.containers.get(first)?;
        let mut complete = ByName::new();
        let mut group = Some(first);
        while let Some(i) = group {
            let (_, name) = shape.containers.get(i)?;
            let partial = partials.get(i)?;
            // As the full decode: a container none of whose samples was
            // usable is not one of this payload's.
            if partial.seen != 0 {
                complete_into(&mut complete, pod, name, partial, &mut stats);
            }
            group = order.next_if(|&j| shape.containers.get(j).is_some_and(|(p, _)| p == pod));
        }
        if !complete.is_empty() {
            batch.pods.insert(pod.clone(), complete);
        }
    }
    Some((batch, stats))
}

/// Decodes `body` with no shape to go by; returns the shape it leaves when
/// every container line named a container. Cold: a source runs it when
/// its node's pods change, not every period.
#[cold]
fn decode_full(
    body: &str,
    default_time: SystemTime,
    names: &mut Names,
) -> ((Batch, DecodeStats), Option<Shape>) {
    let default_ns = unix_nanos(default_time);
    let mut stats = DecodeStats::default();
    let mut node = Partial::default();
    // Sized from the payload: a container takes at least three lines of
    // about 100 bytes.
    let expected = (body.len() / BYTES_PER_CONTAINER).min(MAX_PRESIZED);
    let mut containers = Containers::with_capacity(expected);
    for line in prom::wanted_lines(body, classify) {
        let (is_node, field) = line.kind;
        if is_node {
            node_line(&line, &mut node, default_ns, &mut stats);
            continue;
        }
        // A container series' line whose label text is that of a line
        // before it (the kubelet writes each container's series in the
        // same order) is matched whole: its labels are not read again.
        let known = match line.name_end {
            Some(end) => containers.recognise(line.text, end),
            None => None,
        };
        let (slot, sample) = match known {
            Some((slot, _, Ok(sample))) => (Some(slot), sample),
            Some((slot, text, Err(reason))) => {
                containers.line(text, slot);
                tracing::debug!(error = %line.error(reason), "malformed kubelet metrics line");
                stats.malformed_lines += 1;
                continue;
            }
            None => match line.parse() {
                Ok(sample) => (None, sample),
                Err(e) => {
                    containers.unresolved();
                    tracing::debug!(error = %e, "malformed kubelet metrics line");
                    stats.malformed_lines += 1;
                    continue;
                }
            },
        };
        let Some((value, ts)) = usable(&sample, default_ns, &mut stats) else {
            match slot {
                Some(slot) => containers.line(sample.raw_labels(), slot),
                None => containers.unresolved(),
            }
            continue;
        };
        let slot = match slot {
            Some(slot) => slot,
            None => match containers.slot(&sample) {
                Some(slot) => slot,
                None => {
                    containers.unresolved();
                    stats.invalid_samples += 1;
                    stats.problem(&sample, "no namespace, pod or container label");
                    continue;
                }
            },
        };
        containers.line(sample.raw_labels(), slot);
        if !apply(containers.partial(slot), field, value, ts) {
            stats.duplicate(&sample);
        }
    }

    let mut batch = Batch {
        node: node.complete(),
        ..Batch::default()
    };
    if batch.node.is_none() {
        stats.incomplete_node = 1;
    }
    let points = &containers.points;
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_unstable_by(|&a, &b| points[a].0.cmp(&points[b].0));
    // Each container's shared names, by its place in `points`.
    let mut named: Vec<Option<(PodRef, Name)>> = vec![None; points.len()];
    let mut sorted = order.iter().copied().peekable();
    while let Some(first) = sorted.next() {
        let (namespace, pod_name, _) = &points[first].0;
        let pod = PodRef {
            namespace: names.get(namespace),
            name: names.get(pod_name),
        };
        let mut complete = ByName::new();
        let mut group = Some(first);
        while let Some(i) = group {
            let ((_, _, name), partial) = &points[i];
            let name = names.get(name);
            complete_into(&mut complete, &pod, &name, partial, &mut stats);
            named[i] = Some((pod.clone(), name));
            group = sorted.next_if(|&j| {
                let (n, p, _) = &points[j].0;
                n == namespace && p == pod_name
            });
        }
        if !complete.is_empty() {
            batch.pods.insert(pod, complete);
        }
    }
    let shape = containers.lines.take().and_then(|lines| {
        let mut text = String::with_capacity(lines.iter().map(|(t, _)| t.len()).sum());
        let mut ends = Vec::with_capacity(lines.len());
        for (t, slot) in lines {
            text.push_str(t);
            ends.push((u32::try_from(text.len()).ok()?, u32::try_from(slot).ok()?));
        }
        Some(Shape {
            text,
            lines: ends,
            containers: named.into_iter().collect::<Option<Vec<_>>>()?,
            order: order
                .into_iter()
                .map(u32::try_from)
                .collect::<Result<_, _>>()
                .ok()?,
        })
    });
    ((batch, stats), shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPEATED: &str = "\
container_cpu_usage_seconds_total{container=\"app\",namespace=\"ns\",pod=\"p\"} 1 1700000000000
container_cpu_usage_seconds_total{container=\"app\",namespace=\"ns\",pod=\"p\"} 2 1700000000000
container_memory_working_set_bytes{container=\"app\",namespace=\"ns\",pod=\"p\"} NaN 1700000000000
container_memory_working_set_bytes{container=\"app\",namespace=\"ns\",pod=\"p\"} 1024 1700000000000
node_cpu_usage_seconds_total 5 1700000000000
node_memory_working_set_bytes 4096 1700000000000
node_memory_working_set_bytes 8192 1700000000000
";

    /// A swap sample newer or older than the CPU and memory samples does
    /// not change the point's time.
    #[test]
    fn swap_samples_do_not_time_a_point() {
        for swap_ts in ["1700000009000", "1600000000000"] {
            let body = format!(
                "node_cpu_usage_seconds_total 5 1700000000000\n\
                 node_memory_working_set_bytes 4096 1700000000000\n\
                 node_swap_usage_bytes 10 {swap_ts}\n\
                 container_cpu_usage_seconds_total{{container=\"app\",namespace=\"ns\",pod=\"p\"}} 1 1700000001000\n\
                 container_memory_working_set_bytes{{container=\"app\",namespace=\"ns\",pod=\"p\"}} 1024 1700000001000\n\
                 container_swap_usage_bytes{{container=\"app\",namespace=\"ns\",pod=\"p\"}} 7 {swap_ts}\n"
            );
            let (batch, _) = decode(&body, SystemTime::now());
            let node = batch.node.unwrap();
            assert_eq!(
                node.timestamp_ns, 1_700_000_000_000_000_000,
                "swap at {swap_ts}"
            );
            assert_eq!(node.swap_bytes, 10);
            let pod = PodRef {
                namespace: "ns".into(),
                name: "p".into(),
            };
            let c = batch.pods[&pod]["app"];
            assert_eq!(
                c.timestamp_ns, 1_700_000_001_000_000_000,
                "swap at {swap_ts}"
            );
            assert_eq!(c.swap_bytes, 7);
        }
    }

    #[test]
    fn repeated_and_unusable_series_are_counted_and_named() {
        let (batch, stats) = decode(REPEATED, SystemTime::now());
        assert_eq!(stats.duplicate_samples, 2, "{stats:?}");
        assert_eq!(stats.invalid_samples, 1, "{stats:?}");
        // The last value wins, as in metrics-server.
        let pod = PodRef {
            namespace: "ns".into(),
            name: "p".into(),
        };
        assert_eq!(batch.pods[&pod]["app"].cpu_ns, 2_000_000_000);
        assert_eq!(batch.node.unwrap().memory_bytes, 8192);
        assert_eq!(stats.problems.len(), 3, "{:?}", stats.problems);
        assert!(stats.problems[0].starts_with(
            "container_cpu_usage_seconds_total{container=\"app\",namespace=\"ns\",pod=\"p\"}: repeated"
        ), "{:?}", stats.problems);
        assert!(
            stats.problems[1].contains("unusable value NaN"),
            "{:?}",
            stats.problems
        );
        assert!(stats.problems[2].starts_with("node_memory_working_set_bytes{}: repeated"));
        // Bounded however many there are.
        let many = REPEATED.repeat(100);
        let (_, stats) = decode(&many, SystemTime::now());
        assert_eq!(stats.problems.len(), MAX_PROBLEMS);
        assert!(stats.duplicate_samples > 100);
    }
}
