//! metrics.k8s.io/v1beta1 objects in Kubernetes' protobuf form, written
//! straight from stored values (no JSON in between), for lists and GETs
//! asked for as `application/vnd.kubernetes.protobuf`.
//!
//! An object is written without its creationTimestamp (the response
//! time); the answer appends a second `metadata` field holding only that
//! time. Protobuf merges repeated occurrences of a message field, so
//! decoders (Go's generated code, prost) read one ObjectMeta with every
//! field. Field numbers are those of k8s.io/metrics' and
//! k8s.io/apimachinery's `generated.proto`.

use prost::encoding::{encode_key, encode_varint, WireType};

use crate::format::{write_cpu_quantity, write_memory_quantity};
use crate::labelset::Labels;
use crate::report::Container;

fn bytes_field(out: &mut Vec<u8>, tag: u32, b: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

fn varint_field(out: &mut Vec<u8>, tag: u32, v: u64) {
    encode_key(tag, WireType::Varint, out);
    encode_varint(v, out);
}

/// A length-delimited field whose content `f` writes in place.
fn nested(out: &mut Vec<u8>, tag: u32, f: impl FnOnce(&mut Vec<u8>)) {
    encode_key(tag, WireType::LengthDelimited, out);
    let at = out.len();
    out.push(0);
    f(out);
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
    } else {
        let mut prefix = Vec::with_capacity(4);
        encode_varint(len as u64, &mut prefix);
        out.splice(at..at + 1, prefix);
    }
}

/// meta/v1 Time: seconds and nanoseconds.
fn time(out: &mut Vec<u8>, tag: u32, unix_nanos: i64) {
    nested(out, tag, |t| {
        varint_field(t, 1, unix_nanos.div_euclid(1_000_000_000) as u64);
        varint_field(t, 2, unix_nanos.rem_euclid(1_000_000_000) as u64);
    });
}

fn metadata(out: &mut Vec<u8>, namespace: Option<&str>, name: &str, labels: &Labels) {
    let entries = labels.protobuf();
    let len = field_len(name.len()) + namespace.map_or(0, |ns| field_len(ns.len())) + entries.len();
    encode_key(1, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
    bytes_field(out, 1, name.as_bytes());
    if let Some(ns) = namespace {
        bytes_field(out, 3, ns.as_bytes());
    }
    out.extend_from_slice(entries);
}

/// `labels` as ObjectMeta's map entries (field 11), in key order.
pub fn label_entries(labels: &Labels) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in labels.iter() {
        nested(&mut out, 11, |e| {
            bytes_field(e, 1, k.as_bytes());
            bytes_field(e, 2, v.as_bytes());
        });
    }
    out
}

fn times(out: &mut Vec<u8>, timestamp_ns: i64, window_ns: i64) {
    time(out, 2, timestamp_ns);
    nested(out, 3, |d| varint_field(d, 1, window_ns as u64));
}

/// `usage` entries (map<string, Quantity>) in key order under `tag`.
fn usage(out: &mut Vec<u8>, tag: u32, cpu: u64, memory: u64, swap: Option<u64>, q: &mut String) {
    let mut entry = |out: &mut Vec<u8>, key: &str, write: &dyn Fn(&mut String)| {
        q.clear();
        write(q);
        nested(out, tag, |e| {
            bytes_field(e, 1, key.as_bytes());
            nested(e, 2, |v| bytes_field(v, 1, q.as_bytes()));
        });
    };
    entry(out, "cpu", &|s| write_cpu_quantity(s, cpu));
    entry(out, "memory", &|s| write_memory_quantity(s, memory));
    if let Some(swap) = swap {
        entry(out, "swap", &|s| write_memory_quantity(s, swap));
    }
}

/// A NodeMetrics without its creationTimestamp.
pub fn node_metrics(
    name: &str,
    labels: &Labels,
    u: &metrics_proto::v1::Usage,
    swap: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + name.len() + labels.json().len());
    let mut q = String::with_capacity(24);
    metadata(&mut out, None, name, labels);
    times(&mut out, u.timestamp_unix_nanos, u.window_nanos);
    usage(
        &mut out,
        4,
        u.cpu_nanocores,
        u.memory_working_set_bytes,
        swap.then_some(u.swap_bytes),
        &mut q,
    );
    out
}

/// A PodMetrics without its creationTimestamp; `containers` in the order
/// given.
#[allow(clippy::too_many_arguments)]
pub fn pod_metrics<'a>(
    namespace: &str,
    name: &str,
    labels: &Labels,
    timestamp_ns: i64,
    window_ns: i64,
    containers: impl Iterator<Item = Container<'a>>,
    count: usize,
    swap: bool,
) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(128 + namespace.len() + name.len() + labels.json().len() + 64 * count);
    let mut q = String::with_capacity(24);
    metadata(&mut out, Some(namespace), name, labels);
    times(&mut out, timestamp_ns, window_ns);
    for c in containers {
        nested(&mut out, 4, |m| {
            bytes_field(m, 1, c.name.as_bytes());
            usage(
                m,
                2,
                c.cpu_nanocores,
                c.memory_working_set_bytes,
                swap.then_some(c.swap_bytes),
                &mut q,
            );
        });
    }
    out
}

/// What every object of one answer ends with: a `metadata` holding only
/// the creationTimestamp, `created_ns` (whole seconds, as JSON has it).
pub fn created(created_ns: i64) -> Vec<u8> {
    let whole = created_ns - created_ns.rem_euclid(1_000_000_000);
    let mut out = Vec::with_capacity(16);
    nested(&mut out, 1, |m| time(m, 8, whole));
    out
}

/// Length of a length-delimited field holding `len` bytes, `tag` < 16.
fn field_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// The `k8s\0` envelope around a body of `raw_len` bytes that `raw`
/// writes: runtime.Unknown{typeMeta, raw, contentEncoding: "",
/// contentType: ""}.
pub fn envelope(kind: &str, raw_len: usize, raw: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    const GROUP_VERSION: &str = "metrics.k8s.io/v1beta1";
    let type_meta = field_len(GROUP_VERSION.len()) + field_len(kind.len());
    let mut out = Vec::with_capacity(4 + field_len(type_meta) + field_len(raw_len) + 4);
    out.extend_from_slice(b"k8s\0");
    nested(&mut out, 1, |t| {
        bytes_field(t, 1, GROUP_VERSION.as_bytes());
        bytes_field(t, 2, kind.as_bytes());
    });
    encode_key(2, WireType::LengthDelimited, &mut out);
    encode_varint(raw_len as u64, &mut out);
    let start = out.len();
    raw(&mut out);
    debug_assert_eq!(out.len() - start, raw_len);
    bytes_field(&mut out, 3, b"");
    bytes_field(&mut out, 4, b"");
    out
}

/// A NodeMetricsList or PodMetricsList of `items` (objects without their
/// creationTimestamp), each given `created` (from [`created`]).
pub fn list(list_kind: &str, items: &[&[u8]], created: &[u8]) -> Vec<u8> {
    // metadata: ListMeta{resourceVersion: ""}.
    const LIST_META: &[u8] = &[0x0a, 0x02, 0x12, 0x00];
    let raw_len = LIST_META.len()
        + items
            .iter()
            .map(|i| field_len(i.len() + created.len()))
            .sum::<usize>();
    envelope(list_kind, raw_len, |out| {
        out.extend_from_slice(LIST_META);
        for item in items {
            encode_key(2, WireType::LengthDelimited, out);
            encode_varint((item.len() + created.len()) as u64, out);
            out.extend_from_slice(item);
            out.extend_from_slice(created);
        }
    })
}

/// One object as a whole answer.
pub fn object(kind: &str, item: &[u8], created: &[u8]) -> Vec<u8> {
    envelope(kind, item.len() + created.len(), |out| {
        out.extend_from_slice(item);
        out.extend_from_slice(created);
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost::Message;

    use super::*;
    use crate::api::object::Object;
    use crate::api::protobuf::{self as reference, NodeMetricsList, PodMetricsList, Unknown};
    use crate::query::{Hit, Kind};
    use metrics_proto::v1::Usage;

    const CREATED_NS: i64 = 1_700_000_123_000_000_000;

    fn decode<M: Message + Default>(body: &[u8]) -> (Unknown, M) {
        assert_eq!(&body[..4], b"k8s\0");
        let u = Unknown::decode(&body[4..]).unwrap();
        let m = M::decode(u.raw.as_deref().unwrap()).unwrap();
        (u, m)
    }

    fn object(json: crate::render::Rendered, ts: i64) -> Object {
        let hit = Hit {
            namespace: String::new(),
            name: String::new(),
            node: String::new(),
            timestamp_ns: ts,
            rendered: json,
            pb: None,
        };
        Object::from_hit(&hit, &crate::format::rfc3339(CREATED_NS)).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> std::sync::Arc<Labels> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Labels::new(&map).unwrap()
    }

    #[test]
    fn pods_decode_as_the_reference_encoding_of_the_json_objects() {
        use metrics_proto::v1::ContainerUsage;
        let l = labels(&[("app", "web"), ("pod-template-hash", "5d8f"), ("a.b/c", "")]);
        // Long enough that nested lengths need two varint bytes.
        let containers: Vec<ContainerUsage> = (0..4)
            .map(|i| ContainerUsage {
                name: format!("container-{i}-{}", "x".repeat(40)),
                cpu_nanocores: 123_456_789 * (i + 1),
                memory_working_set_bytes: (1 << 30) + i * 4096 + 17,
                swap_bytes: i * 1024,
            })
            .collect();
        let cs = || containers.iter().map(Container::of);
        for swap in [false, true] {
            let pods = [
                ("team-a", "web-1", 1_700_000_000_123_456_789, 15_500_000_000),
                ("team-b", "db-0", 1_700_000_001_000_000_000, 30_000_000_000),
            ];
            let ours: Vec<Vec<u8>> = pods
                .iter()
                .map(|(ns, n, ts, w)| pod_metrics(ns, n, &l, *ts, *w, cs(), containers.len(), swap))
                .collect();
            let objects: Vec<Object> = pods
                .iter()
                .map(|(ns, n, ts, w)| {
                    let json =
                        crate::render::pod_object(ns, n, &l, *ts, *w, cs(), containers.len(), swap);
                    object(json, *ts)
                })
                .collect();
            let items: Vec<&[u8]> = ours.iter().map(Vec::as_slice).collect();
            let got = list("PodMetricsList", &items, &created(CREATED_NS));
            let want = reference::list(Kind::Pods, &objects);
            let (gu, g) = decode::<PodMetricsList>(&got);
            let (wu, w) = decode::<PodMetricsList>(&want);
            assert_eq!(g, w);
            assert_eq!(gu.type_meta, wu.type_meta);
            assert_eq!(
                (gu.content_encoding, gu.content_type),
                (wu.content_encoding, wu.content_type)
            );
            assert_eq!(g.items[0].containers.len(), 4);
            // A single object decodes as the reference's too.
            let one = super::object("PodMetrics", &ours[1], &created(CREATED_NS));
            let (_, g) = decode::<reference::PodMetrics>(&one);
            let (_, w) =
                decode::<reference::PodMetrics>(&reference::object(Kind::Pods, &objects[1]));
            assert_eq!(g, w);
        }
    }

    #[test]
    fn nodes_decode_as_the_reference_encoding_of_the_json_objects() {
        let l = labels(&[("kubernetes.io/hostname", "n1")]);
        let u = Usage {
            timestamp_unix_nanos: 1_700_000_000_999_999_999,
            window_nanos: 20_123_000_000,
            cpu_nanocores: u64::MAX - 5,
            memory_working_set_bytes: 7,
            swap_bytes: 1 << 40,
        };
        for swap in [false, true] {
            let ours = node_metrics("n1", &l, &u, swap);
            let o = object(
                crate::render::node_metrics("n1", &l, &u, swap),
                u.timestamp_unix_nanos,
            );
            let got = list("NodeMetricsList", &[&ours], &created(CREATED_NS));
            let (_, g) = decode::<NodeMetricsList>(&got);
            let (_, w) = decode::<NodeMetricsList>(&reference::list(Kind::Nodes, &[o]));
            assert_eq!(g, w);
        }
    }

    #[test]
    fn an_empty_list_is_the_reference_empty_list() {
        assert_eq!(
            list("PodMetricsList", &[], &created(CREATED_NS)),
            reference::list(Kind::Pods, &[])
        );
    }
}
