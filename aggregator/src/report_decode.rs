//! Decoding a `NodeReport` into one decoded before, keeping its buffers.
//!
//! prost's generated `decode` builds every pod, container and name anew:
//! five allocations a pod, each freed once the report is written into its
//! node's entry, which is all most reports do (`refresh_in_place` reads
//! them and keeps nothing). Here a report is decoded into the strings and
//! lists of an earlier one, taken from a spare kept per thread
//! ([`take_spare`], [`recycle`]), so a report like the one before it
//! allocates nothing. Varints and field keys are read by prost's own
//! readers (`prost::encoding`, which `render_pb.rs` writes with too); the
//! fields are placed here. The result is the message prost decodes from the
//! same bytes, field for field, and so is every refusal: a test compares
//! the two over generated and mangled messages, and the `report` fuzz
//! target does too.

use std::cell::Cell;
use std::collections::HashMap;

use metrics_proto::v1::{ContainerUsage, NodeReport, PodUsage, Usage};
use prost::encoding::{decode_key, decode_varint, WireType};

/// Why bytes are not a `NodeReport`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message ends inside a field")]
    Truncated,
    /// A varint or a field key prost's own readers refuse.
    #[error("{0}")]
    Wire(#[from] prost::DecodeError),
    #[error("field {0}: wrong wire type")]
    WireType(&'static str),
    #[error("field {0}: not UTF-8")]
    Utf8(&'static str),
    #[error("end-group tag without its start")]
    EndGroup,
    #[error("fields nested deeper than {DEPTH} levels")]
    Depth,
}

/// How deep fields may nest (prost's recursion limit, for groups in
/// unknown fields; this schema itself nests three levels).
const DEPTH: u32 = 100;

/// A kept spare is dropped when it holds more than this many bytes, so a
/// thread that once decoded an unusually large report does not hold its
/// size for good.
const SPARE_MAX_BYTES: usize = 256 * 1024;

thread_local! {
    static SPARE: Cell<Option<NodeReport>> = const { Cell::new(None) };
}

/// A report to decode into: this thread's spare, or a new one.
pub fn take_spare() -> NodeReport {
    SPARE.with(Cell::take).unwrap_or_default()
}

/// Keeps `report`'s buffers for the next [`take_spare`] on this thread,
/// unless they are larger than [`SPARE_MAX_BYTES`]. Labels are dropped
/// here, not kept: most reports carry none.
pub fn recycle(mut report: NodeReport) {
    report.node_labels = HashMap::new();
    let mut held = report.pods.capacity() * size_of::<PodUsage>()
        + report.node_name.capacity()
        + report.source.capacity();
    for pod in &mut report.pods {
        if pod.labels.capacity() > 0 {
            pod.labels = HashMap::new();
        }
        held += pod.namespace.capacity()
            + pod.name.capacity()
            + pod.containers.capacity() * size_of::<ContainerUsage>();
        held += pod
            .containers
            .iter()
            .map(|c| c.name.capacity())
            .sum::<usize>();
    }
    if held <= SPARE_MAX_BYTES {
        SPARE.with(|s| s.set(Some(report)));
    }
}

/// Decodes `bytes` into `report`, replacing everything it held and reusing
/// its strings and lists. On an error `report` holds part of the message
/// and is fit only to be decoded into again.
pub fn decode_into(report: &mut NodeReport, mut bytes: &[u8]) -> Result<(), DecodeError> {
    let buf = &mut bytes;
    let mut pods = 0;
    report.protocol_version = 0;
    report.node_name.clear();
    report.sequence = 0;
    report.period_ms = 0;
    report.node_labels.clear();
    report.node = None;
    report.source.clear();
    report.labels_version = 0;
    report.labels_omitted = false;
    report.answer_within_ms = 0;
    while !buf.is_empty() {
        let (tag, wire) = decode_key(buf)?;
        match tag {
            1 => report.protocol_version = varint_field(wire, buf, "protocol_version")? as u32,
            2 => string(wire, buf, &mut report.node_name, "node_name")?,
            3 => report.sequence = varint_field(wire, buf, "sequence")?,
            4 => report.period_ms = varint_field(wire, buf, "period_ms")?,
            5 => map_entry(wire, buf, &mut report.node_labels, DEPTH, "node_labels")?,
            6 => {
                let inner = nested(wire, buf, DEPTH, "node")?;
                usage(report.node.get_or_insert_with(Usage::default), inner)?;
            }
            7 => {
                let inner = nested(wire, buf, DEPTH, "pods")?;
                pod_usage(next_slot(&mut report.pods, &mut pods), inner)?;
            }
            8 => string(wire, buf, &mut report.source, "source")?,
            9 => report.labels_version = varint_field(wire, buf, "labels_version")?,
            10 => report.labels_omitted = varint_field(wire, buf, "labels_omitted")? != 0,
            11 => report.answer_within_ms = varint_field(wire, buf, "answer_within_ms")?,
            _ => skip(wire, tag, buf, DEPTH)?,
        }
    }
    report.pods.truncate(pods);
    Ok(())
}

/// A pod, into one decoded before (fields one level below the report).
fn pod_usage(pod: &mut PodUsage, mut bytes: &[u8]) -> Result<(), DecodeError> {
    let buf = &mut bytes;
    let depth = DEPTH - 1;
    let mut containers = 0;
    pod.namespace.clear();
    pod.name.clear();
    pod.labels.clear();
    pod.timestamp_unix_nanos = 0;
    pod.window_nanos = 0;
    while !buf.is_empty() {
        let (tag, wire) = decode_key(buf)?;
        match tag {
            1 => string(wire, buf, &mut pod.namespace, "namespace")?,
            2 => string(wire, buf, &mut pod.name, "name")?,
            3 => map_entry(wire, buf, &mut pod.labels, depth, "labels")?,
            4 => pod.timestamp_unix_nanos = varint_field(wire, buf, "timestamp_unix_nanos")? as i64,
            5 => pod.window_nanos = varint_field(wire, buf, "window_nanos")? as i64,
            6 => {
                let inner = nested(wire, buf, depth, "containers")?;
                container_usage(next_slot(&mut pod.containers, &mut containers), inner)?;
            }
            _ => skip(wire, tag, buf, depth)?,
        }
    }
    pod.containers.truncate(containers);
    Ok(())
}

/// The element of a repeated field after the `used` ones decoded so far:
/// the one an earlier report left at that place, or a new one.
fn next_slot<'a, T: Default>(list: &'a mut Vec<T>, used: &mut usize) -> &'a mut T {
    if *used == list.len() {
        list.push(T::default());
    }
    *used += 1;
    &mut list[*used - 1]
}

/// A container (two levels below the report).
fn container_usage(c: &mut ContainerUsage, mut bytes: &[u8]) -> Result<(), DecodeError> {
    let buf = &mut bytes;
    c.name.clear();
    c.cpu_nanocores = 0;
    c.memory_working_set_bytes = 0;
    c.swap_bytes = 0;
    while !buf.is_empty() {
        let (tag, wire) = decode_key(buf)?;
        match tag {
            1 => string(wire, buf, &mut c.name, "container name")?,
            2 => c.cpu_nanocores = varint_field(wire, buf, "cpu_nanocores")?,
            3 => c.memory_working_set_bytes = varint_field(wire, buf, "memory_working_set_bytes")?,
            4 => c.swap_bytes = varint_field(wire, buf, "swap_bytes")?,
            _ => skip(wire, tag, buf, DEPTH - 2)?,
        }
    }
    Ok(())
}

/// The node's usage, merged into what an earlier `node` field gave (a
/// message field that appears twice is merged, as protobuf has it).
fn usage(u: &mut Usage, mut bytes: &[u8]) -> Result<(), DecodeError> {
    let buf = &mut bytes;
    while !buf.is_empty() {
        let (tag, wire) = decode_key(buf)?;
        match tag {
            1 => u.timestamp_unix_nanos = varint_field(wire, buf, "timestamp_unix_nanos")? as i64,
            2 => u.window_nanos = varint_field(wire, buf, "window_nanos")? as i64,
            3 => u.cpu_nanocores = varint_field(wire, buf, "cpu_nanocores")?,
            4 => u.memory_working_set_bytes = varint_field(wire, buf, "memory_working_set_bytes")?,
            5 => u.swap_bytes = varint_field(wire, buf, "swap_bytes")?,
            _ => skip(wire, tag, buf, DEPTH - 1)?,
        }
    }
    Ok(())
}

/// One entry of a `map<string, string>` field at `depth`: a key, a value
/// (either may be missing, and is then empty), the last of a key kept.
fn map_entry(
    wire: WireType,
    buf: &mut &[u8],
    map: &mut HashMap<String, String>,
    depth: u32,
    field: &'static str,
) -> Result<(), DecodeError> {
    let mut inner = nested(wire, buf, depth, field)?;
    let (mut k, mut v) = (String::new(), String::new());
    while !inner.is_empty() {
        let (tag, wire) = decode_key(&mut inner)?;
        match tag {
            1 => string(wire, &mut inner, &mut k, field)?,
            2 => string(wire, &mut inner, &mut v, field)?,
            _ => skip(wire, tag, &mut inner, depth - 1)?,
        }
    }
    map.insert(k, v);
    Ok(())
}

/// The bytes of a length-delimited field holding a message, for a field
/// at `depth`.
fn nested<'a>(
    wire: WireType,
    buf: &mut &'a [u8],
    depth: u32,
    field: &'static str,
) -> Result<&'a [u8], DecodeError> {
    if wire != WireType::LengthDelimited {
        return Err(DecodeError::WireType(field));
    }
    if depth == 0 {
        return Err(DecodeError::Depth);
    }
    let len = decode_varint(buf)?;
    take(buf, len)
}

fn string(
    wire: WireType,
    buf: &mut &[u8],
    into: &mut String,
    field: &'static str,
) -> Result<(), DecodeError> {
    if wire != WireType::LengthDelimited {
        return Err(DecodeError::WireType(field));
    }
    let len = decode_varint(buf)?;
    let bytes = take(buf, len)?;
    let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::Utf8(field))?;
    into.clear();
    into.push_str(s);
    Ok(())
}

fn varint_field(wire: WireType, buf: &mut &[u8], field: &'static str) -> Result<u64, DecodeError> {
    if wire != WireType::Varint {
        return Err(DecodeError::WireType(field));
    }
    Ok(decode_varint(buf)?)
}

/// Skips an unknown field (or a group of them) at `depth`.
fn skip(wire: WireType, tag: u32, buf: &mut &[u8], depth: u32) -> Result<(), DecodeError> {
    if depth == 0 {
        return Err(DecodeError::Depth);
    }
    let len = match wire {
        WireType::Varint => decode_varint(buf).map(|_| 0)?,
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::LengthDelimited => decode_varint(buf)?,
        WireType::StartGroup => loop {
            let (inner_tag, inner_wire) = decode_key(buf)?;
            if inner_wire == WireType::EndGroup {
                if inner_tag != tag {
                    return Err(DecodeError::EndGroup);
                }
                break 0;
            }
            skip(inner_wire, inner_tag, buf, depth - 1)?;
        },
        WireType::EndGroup => return Err(DecodeError::EndGroup),
    };
    take(buf, len).map(|_| ())
}

fn take<'a>(buf: &mut &'a [u8], len: u64) -> Result<&'a [u8], DecodeError> {
    let len = usize::try_from(len)
        .ok()
        .filter(|&n| n <= buf.len())
        .ok_or(DecodeError::Truncated)?;
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    /// Any string, UTF-8 of one to four bytes a character included.
    fn text() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-z0-9.-]{0,12}|.{0,4}").unwrap()
    }

    /// Zero (a field left out of the encoding) half the time.
    fn num<T: Arbitrary + Default + Clone + std::fmt::Debug + 'static>() -> impl Strategy<Value = T>
    {
        prop_oneof![Just(T::default()), any::<T>()]
    }

    fn labels() -> impl Strategy<Value = HashMap<String, String>> {
        proptest::collection::hash_map(text(), text(), 0..3)
    }

    fn container() -> impl Strategy<Value = ContainerUsage> {
        (text(), num::<u64>(), num::<u64>(), num::<u64>()).prop_map(|(name, cpu, mem, swap)| {
            ContainerUsage {
                name,
                cpu_nanocores: cpu,
                memory_working_set_bytes: mem,
                swap_bytes: swap,
            }
        })
    }

    fn pod() -> impl Strategy<Value = PodUsage> {
        (
            text(),
            text(),
            labels(),
            num::<i64>(),
            num::<i64>(),
            proptest::collection::vec(container(), 0..4),
        )
            .prop_map(
                |(namespace, name, labels, ts, window, containers)| PodUsage {
                    namespace,
                    name,
                    labels,
                    timestamp_unix_nanos: ts,
                    window_nanos: window,
                    containers,
                },
            )
    }

    fn usage_strategy() -> impl Strategy<Value = Usage> {
        (
            num::<i64>(),
            num::<i64>(),
            num::<u64>(),
            num::<u64>(),
            num::<u64>(),
        )
            .prop_map(|(ts, window, cpu, mem, swap)| Usage {
                timestamp_unix_nanos: ts,
                window_nanos: window,
                cpu_nanocores: cpu,
                memory_working_set_bytes: mem,
                swap_bytes: swap,
            })
    }

    fn report() -> impl Strategy<Value = NodeReport> {
        (
            (num::<u32>(), text(), num::<u64>(), num::<u64>(), labels()),
            proptest::option::of(usage_strategy()),
            proptest::collection::vec(pod(), 0..5),
            (text(), num::<u64>(), any::<bool>(), num::<u64>()),
        )
            .prop_map(
                |((version, node_name, sequence, period, node_labels), node, pods, rest)| {
                    NodeReport {
                        protocol_version: version,
                        node_name,
                        sequence,
                        period_ms: period,
                        node_labels,
                        node,
                        pods,
                        source: rest.0,
                        labels_version: rest.1,
                        labels_omitted: rest.2,
                        answer_within_ms: rest.3,
                    }
                },
            )
    }

    /// What prost's generated decoder and this one make of `bytes`, the
    /// latter decoding into `into` (a report decoded before, or none).
    fn both(bytes: &[u8], into: Option<NodeReport>) -> (Option<NodeReport>, Option<NodeReport>) {
        let prost = NodeReport::decode(bytes).ok();
        let mut ours = into.unwrap_or_default();
        let ours = decode_into(&mut ours, bytes).ok().map(|()| ours);
        (prost, ours)
    }

    /// Bytes of unknown fields of every wire type: a varint, 64 and 32
    /// bits, a length-delimited field and a group holding one of each.
    fn unknown(tag: u32) -> Vec<u8> {
        let mut b = encoded_key(tag, WireType::Varint);
        b.push(0x96);
        b.push(0x01);
        b.extend(encoded_key(tag + 1, WireType::SixtyFourBit));
        b.extend([1; 8]);
        b.extend(encoded_key(tag + 2, WireType::ThirtyTwoBit));
        b.extend([2; 4]);
        b.extend(encoded_key(tag + 3, WireType::LengthDelimited));
        b.extend([2, b'h', b'i']);
        b.extend(encoded_key(tag + 4, WireType::StartGroup));
        b.extend(encoded_key(tag + 5, WireType::Varint));
        b.push(7);
        b.extend(encoded_key(tag + 4, WireType::EndGroup));
        b
    }

    proptest! {
        /// A report decodes as prost decodes it, whatever report its
        /// buffers held before, and with unknown fields of every wire
        /// type beside its own (at the top and in a pod).
        #[test]
        fn decodes_as_prost_into_any_earlier_report(
            r in report(),
            before in proptest::option::of(report()),
            extra in 0..3u8,
        ) {
            let mut bytes = r.encode_to_vec();
            if extra == 1 {
                bytes.extend(unknown(20));
            }
            if extra == 2 && !r.pods.is_empty() {
                // The first pod again, with unknown fields in it: a
                // repeated field's second occurrence is a second pod.
                let mut pod = r.pods[0].encode_to_vec();
                pod.extend(unknown(9));
                prost::encoding::encode_key(7, prost::encoding::WireType::LengthDelimited, &mut bytes);
                prost::encoding::encode_varint(pod.len() as u64, &mut bytes);
                bytes.extend(pod);
            }
            let (prost, ours) = both(&bytes, before);
            prop_assert!(prost.is_some());
            prop_assert_eq!(ours, prost);
        }

        /// Two reports one after the other are one message to protobuf
        /// (scalars: the last; the node's usage: merged; lists: both).
        #[test]
        fn merges_concatenated_reports_as_prost(a in report(), b in report()) {
            let mut bytes = a.encode_to_vec();
            bytes.extend(b.encode_to_vec());
            let (prost, ours) = both(&bytes, None);
            prop_assert!(prost.is_some());
            prop_assert_eq!(ours, prost);
        }

        /// Bytes changed, cut or spliced into a report are refused or
        /// accepted as prost refuses or accepts them, and what is
        /// accepted is the same message.
        #[test]
        fn mangled_bytes_are_read_as_prost_reads_them(
            r in report(),
            before in proptest::option::of(report()),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
        ) {
            let mut bytes = r.encode_to_vec();
            for (at, byte, how) in edits {
                if bytes.is_empty() {
                    bytes.push(byte);
                    continue;
                }
                let i = at.index(bytes.len());
                match how {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => bytes.truncate(i),
                }
            }
            let (prost, ours) = both(&bytes, before);
            prop_assert_eq!(ours, prost);
        }
    }

    fn encoded_key(tag: u32, wire: WireType) -> Vec<u8> {
        let mut b = Vec::new();
        prost::encoding::encode_key(tag, wire, &mut b);
        b
    }

    /// `n` groups of unknown fields nested in one another.
    fn groups(n: u32) -> Vec<u8> {
        let mut b = Vec::new();
        for _ in 0..n {
            b.extend(encoded_key(30, WireType::StartGroup));
        }
        for _ in 0..n {
            b.extend(encoded_key(30, WireType::EndGroup));
        }
        b
    }

    /// `inner` as the bytes of field `tag`.
    fn field(tag: u32, inner: Vec<u8>) -> Vec<u8> {
        let mut b = encoded_key(tag, WireType::LengthDelimited);
        prost::encoding::encode_varint(inner.len() as u64, &mut b);
        b.extend(inner);
        b
    }

    #[test]
    fn nests_unknown_groups_as_deep_as_prost_in_every_message() {
        // Where groups sit, and how many levels the fields around them
        // take: the report, its node usage, a pod, a pod's labels, a
        // container, the node's labels.
        type Wrap = fn(Vec<u8>) -> Vec<u8>;
        let places: [(&str, u32, Wrap); 6] = [
            ("report", 0, |g| g),
            ("node", 1, |g| field(6, g)),
            ("pod", 1, |g| field(7, g)),
            ("pod labels", 2, |g| field(7, field(3, g))),
            ("container", 2, |g| field(7, field(6, g))),
            ("node labels", 1, |g| field(5, g)),
        ];
        for (what, levels, wrap) in places {
            for (n, ok) in [(DEPTH - levels, true), (DEPTH - levels + 1, false)] {
                let (prost, ours) = both(&wrap(groups(n)), None);
                assert_eq!(prost.is_some(), ok, "{what}, {n} groups: prost");
                assert_eq!(ours, prost, "{what}, {n} groups");
            }
        }
    }

    #[test]
    fn refuses_what_prost_refuses_at_the_edges() {
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            (
                "varint of 11 bytes",
                [vec![0x18], vec![0xff; 10], vec![0]].concat(),
                false,
            ),
            (
                "10th varint byte over 1",
                [vec![0x18], vec![0xff; 9], vec![2]].concat(),
                false,
            ),
            (
                "10th varint byte 1",
                [vec![0x18], vec![0xff; 9], vec![1]].concat(),
                true,
            ),
            ("tag 0", vec![0x00, 0x01], false),
            ("wire type 6", vec![0x0e], false),
            (
                "key over 32 bits",
                vec![0x80, 0x80, 0x80, 0x80, 0x10],
                false,
            ),
            ("string as varint", vec![0x10, 0x01], false),
            ("varint as string", vec![0x1a, 0x00], false),
            ("not UTF-8", vec![0x12, 0x01, 0xff], false),
            ("string past the end", vec![0x12, 0x05, b'a'], false),
            ("lone end group", encoded_key(30, WireType::EndGroup), false),
            ("map entry under a varint key", vec![0x28, 0x00], false),
            ("empty map entry", vec![0x2a, 0x00], true),
            ("pod as varint", vec![0x38, 0x00], false),
        ];
        for (what, bytes, ok) in cases {
            let (prost, ours) = both(&bytes, None);
            assert_eq!(prost.is_some(), ok, "{what}: prost");
            assert_eq!(ours, prost, "{what}");
        }
    }

    #[test]
    fn a_report_like_the_last_decodes_into_its_buffers() {
        let pod = |name: &str, cpu| PodUsage {
            namespace: "kube-system".into(),
            name: name.into(),
            containers: vec![ContainerUsage {
                name: "app".into(),
                cpu_nanocores: cpu,
                ..Default::default()
            }],
            ..Default::default()
        };
        let first = NodeReport {
            node_name: "node-1".into(),
            pods: vec![pod("coredns-1", 1), pod("coredns-2", 2)],
            ..Default::default()
        };
        let mut next = first.clone();
        next.pods[1].containers[0].cpu_nanocores = 3;
        let mut report = NodeReport::default();
        decode_into(&mut report, &first.encode_to_vec()).unwrap();
        assert_eq!(report, first);
        let places = (
            report.pods.as_ptr(),
            report.pods[1].name.as_ptr(),
            report.pods[1].containers.as_ptr(),
            report.pods[1].containers[0].name.as_ptr(),
        );
        decode_into(&mut report, &next.encode_to_vec()).unwrap();
        assert_eq!(report, next);
        assert_eq!(
            places,
            (
                report.pods.as_ptr(),
                report.pods[1].name.as_ptr(),
                report.pods[1].containers.as_ptr(),
                report.pods[1].containers[0].name.as_ptr(),
            ),
            "the same buffers hold the new report"
        );
        // Fewer pods: the rest go.
        let one = NodeReport {
            pods: vec![pod("x", 9)],
            ..Default::default()
        };
        decode_into(&mut report, &one.encode_to_vec()).unwrap();
        assert_eq!(report, one);
    }

    #[test]
    fn the_spare_is_kept_per_thread_unless_large() {
        let small = NodeReport {
            node_name: "node-1".into(),
            pods: vec![PodUsage::default(); 4],
            node_labels: [("a".to_string(), "b".to_string())].into(),
            ..Default::default()
        };
        recycle(small);
        let spare = take_spare();
        assert_eq!(spare.pods.len(), 4, "the recycled report comes back");
        assert!(spare.node_labels.is_empty(), "its labels are not kept");
        assert_eq!(take_spare(), NodeReport::default(), "taken once");

        let large = NodeReport {
            pods: vec![
                PodUsage {
                    name: "p".repeat(1024),
                    ..Default::default()
                };
                SPARE_MAX_BYTES / 1024 + 1
            ],
            ..Default::default()
        };
        recycle(large);
        assert_eq!(
            take_spare().pods.capacity(),
            0,
            "a report over {SPARE_MAX_BYTES} bytes is not kept"
        );
    }
}
