//! Turns a kubelet `/metrics/resource` payload into a [`Batch`], with
//! metrics-server's reading of each series.
//!
//! Differences from metrics-server, on purpose: a sample that is malformed,
//! negative, NaN or infinite, or a container series without its `namespace`,
//! `pod` and `container` labels, is dropped alone and counted; and a container
//! reporting zero CPU or zero memory (e.g. a finished init container) is
//! dropped alone instead of taking its whole pod with it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use crate::batch::{Batch, Names, PodRef, Point};
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
}

impl<'a> Containers<'a> {
    /// Sized up front, so the map is not grown and rehashed on the way.
    fn with_capacity(n: usize) -> Self {
        Containers {
            points: Vec::with_capacity(n),
            by_key: HashMap::with_capacity_and_hasher(n, Default::default()),
            texts: Vec::with_capacity(n),
            next: 0,
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
    ) -> Option<(usize, Result<Sample<'a>, &'static str>)> {
        for at in [self.next, 0] {
            let Some(&(text, slot)) = self.texts.get(at) else {
                continue;
            };
            if let Some(sample) = prom::parse_with_labels(line, name_end, text) {
                self.next = at + 1;
                return Some((slot, sample));
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
}

/// Decodes a payload. Samples without a timestamp get `default_time` (the
/// moment the request was sent). Only the series metrics-server reads are
/// parsed; the other lines are skipped at their name.
pub fn decode(body: &str, default_time: SystemTime) -> (Batch, DecodeStats) {
    decode_with(body, default_time, &mut Names::default())
}

/// [`decode`], taking the batch's names from `names` (a source keeps them
/// from one period to the next and ends each period with
/// [`Names::end_period`]).
pub fn decode_with(
    body: &str,
    default_time: SystemTime,
    names: &mut Names,
) -> (Batch, DecodeStats) {
    let default_ns = unix_nanos(default_time);
    let mut stats = DecodeStats::default();
    let mut node = Partial::default();
    // Sized from the payload: a container takes at least three lines of
    // about 100 bytes.
    let expected = (body.len() / BYTES_PER_CONTAINER).min(MAX_PRESIZED);
    let mut containers = Containers::with_capacity(expected);
    for line in prom::wanted_lines(body, classify) {
        let (is_node, field) = line.kind;
        // A container series' line whose label text is that of a line
        // before it (the kubelet writes each container's series in the
        // same order) is matched whole: its labels are not read again.
        let known = match (is_node, line.name_end) {
            (false, Some(end)) => containers.recognise(line.text, end),
            _ => None,
        };
        let (slot, sample) = match known {
            Some((slot, Ok(sample))) => (Some(slot), sample),
            Some((_, Err(reason))) => {
                tracing::debug!(error = %line.error(reason), "malformed kubelet metrics line");
                stats.malformed_lines += 1;
                continue;
            }
            None => match line.parse() {
                Ok(sample) => (None, sample),
                Err(e) => {
                    tracing::debug!(error = %e, "malformed kubelet metrics line");
                    stats.malformed_lines += 1;
                    continue;
                }
            },
        };
        if !sample.value.is_finite() || sample.value < 0.0 {
            stats.invalid_samples += 1;
            stats.problem(&sample, &format!("unusable value {}", sample.value));
            continue;
        }
        let ts = sample
            .timestamp_ms
            .and_then(|ms| ms.checked_mul(1_000_000))
            .unwrap_or(default_ns);
        if is_node {
            if !apply(&mut node, field, sample.value, ts) {
                stats.duplicate(&sample);
            }
            continue;
        }
        let slot = match slot {
            Some(slot) => slot,
            None => match containers.slot(&sample) {
                Some(slot) => slot,
                None => {
                    stats.invalid_samples += 1;
                    stats.problem(&sample, "no namespace, pod or container label");
                    continue;
                }
            },
        };
        if !apply(containers.partial(slot), field, sample.value, ts) {
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
    let mut sorted = containers.points;
    sorted.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    let mut sorted = sorted.into_iter().peekable();
    while let Some(((namespace, pod, name), partial)) = sorted.next() {
        let mut complete = BTreeMap::new();
        let mut add = |name: Cow<'_, str>, partial: Partial| match partial.complete() {
            Some(point) => {
                complete.insert(names.get(&name), point);
            }
            None => {
                tracing::debug!(pod = %format_args!("{namespace}/{pod}"), container = %name, "dropping container with zero CPU or memory");
                stats.incomplete_containers += 1;
            }
        };
        add(name, partial);
        while let Some(((_, _, name), partial)) =
            sorted.next_if(|((n, p, _), _)| *n == namespace && *p == pod)
        {
            add(name, partial);
        }
        if !complete.is_empty() {
            let pod = PodRef {
                namespace: names.get(&namespace),
                name: names.get(&pod),
            };
            batch.pods.insert(pod, complete);
        }
    }
    (batch, stats)
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
