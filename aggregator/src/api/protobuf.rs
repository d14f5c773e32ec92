//! Kubernetes' protobuf representation (`application/vnd.kubernetes.protobuf`):
//! the 4-byte magic `k8s\0`, then a `runtime.Unknown` whose `raw` is the
//! metrics.k8s.io/v1beta1 message. Field numbers are those of
//! k8s.io/metrics' and k8s.io/apimachinery's `generated.proto`.

use std::collections::BTreeMap;

use prost::Message;

use crate::api::object::Object;
use crate::query::Kind;

/// What every Kubernetes protobuf body starts with.
pub const MAGIC: &[u8; 4] = b"k8s\0";

#[derive(Clone, PartialEq, Message)]
pub struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    pub api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub kind: Option<String>,
}

/// runtime.Unknown: the envelope.
#[derive(Clone, PartialEq, Message)]
pub struct Unknown {
    #[prost(message, optional, tag = "1")]
    pub type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub raw: Option<Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    pub content_encoding: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub content_type: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Time {
    #[prost(int64, optional, tag = "1")]
    pub seconds: Option<i64>,
    #[prost(int32, optional, tag = "2")]
    pub nanos: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Duration {
    #[prost(int64, optional, tag = "1")]
    pub duration: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Quantity {
    #[prost(string, optional, tag = "1")]
    pub string: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub namespace: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub resource_version: Option<String>,
    #[prost(message, optional, tag = "8")]
    pub creation_timestamp: Option<Time>,
    #[prost(btree_map = "string, string", tag = "11")]
    pub labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ListMeta {
    #[prost(string, optional, tag = "2")]
    pub resource_version: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ContainerMetrics {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(btree_map = "string, message", tag = "2")]
    pub usage: BTreeMap<String, Quantity>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeMetrics {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    pub timestamp: Option<Time>,
    #[prost(message, optional, tag = "3")]
    pub window: Option<Duration>,
    #[prost(btree_map = "string, message", tag = "4")]
    pub usage: BTreeMap<String, Quantity>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PodMetrics {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    pub timestamp: Option<Time>,
    #[prost(message, optional, tag = "3")]
    pub window: Option<Duration>,
    #[prost(message, repeated, tag = "4")]
    pub containers: Vec<ContainerMetrics>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeMetricsList {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ListMeta>,
    #[prost(message, repeated, tag = "2")]
    pub items: Vec<NodeMetrics>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PodMetricsList {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ListMeta>,
    #[prost(message, repeated, tag = "2")]
    pub items: Vec<PodMetrics>,
}

fn time(unix_nanos: i64) -> Time {
    Time {
        seconds: Some(unix_nanos.div_euclid(1_000_000_000)),
        nanos: i32::try_from(unix_nanos.rem_euclid(1_000_000_000)).ok(),
    }
}

fn quantities(usage: &BTreeMap<String, String>) -> BTreeMap<String, Quantity> {
    usage
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Quantity {
                    string: Some(v.clone()),
                },
            )
        })
        .collect()
}

fn meta(o: &Object) -> ObjectMeta {
    ObjectMeta {
        name: Some(o.metadata.name.clone()),
        namespace: o.metadata.namespace.clone(),
        resource_version: o.metadata.resource_version.clone(),
        creation_timestamp: metrics_proto::time::parse_rfc3339(&o.metadata.creation_timestamp)
            .map(time),
        labels: o.metadata.labels.clone(),
        annotations: BTreeMap::new(),
    }
}

fn window(o: &Object) -> Option<Duration> {
    let d = metrics_proto::duration::parse_duration(&o.window).ok()?;
    Some(Duration {
        duration: i64::try_from(d.as_nanos()).ok(),
    })
}

fn node(o: &Object) -> NodeMetrics {
    NodeMetrics {
        metadata: Some(meta(o)),
        timestamp: Some(time(o.timestamp_ns)),
        window: window(o),
        usage: o.usage.as_ref().map(quantities).unwrap_or_default(),
    }
}

fn pod(o: &Object) -> PodMetrics {
    PodMetrics {
        metadata: Some(meta(o)),
        timestamp: Some(time(o.timestamp_ns)),
        window: window(o),
        containers: o
            .containers
            .iter()
            .flatten()
            .map(|c| ContainerMetrics {
                name: Some(c.name.clone()),
                usage: quantities(&c.usage),
            })
            .collect(),
    }
}

fn envelope(kind: &str, raw: Vec<u8>) -> Vec<u8> {
    envelope_as(GROUP_VERSION, kind, raw)
}

const GROUP_VERSION: &str = "metrics.k8s.io/v1beta1";

fn envelope_as(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.to_owned()),
            kind: Some(kind.to_owned()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = Vec::with_capacity(MAGIC.len() + unknown.encoded_len());
    out.extend_from_slice(MAGIC);
    unknown.encode_raw(&mut out);
    out
}

/// A NodeMetricsList or PodMetricsList built from decoded objects: the
/// reference `render_pb.rs` is checked against.
#[cfg(test)]
pub fn list(kind: Kind, objects: &[Object]) -> Vec<u8> {
    let metadata = Some(ListMeta {
        resource_version: Some(String::new()),
    });
    match kind {
        Kind::Nodes => envelope(
            "NodeMetricsList",
            NodeMetricsList {
                metadata,
                items: objects.iter().map(node).collect(),
            }
            .encode_to_vec(),
        ),
        Kind::Pods => envelope(
            "PodMetricsList",
            PodMetricsList {
                metadata,
                items: objects.iter().map(pod).collect(),
            }
            .encode_to_vec(),
        ),
    }
}

/// One NodeMetrics or PodMetrics message, without the envelope.
pub fn item(kind: Kind, o: &Object) -> Vec<u8> {
    match kind {
        Kind::Nodes => node(o).encode_to_vec(),
        Kind::Pods => pod(o).encode_to_vec(),
    }
}

/// One NodeMetrics or PodMetrics.
pub fn object(kind: Kind, o: &Object) -> Vec<u8> {
    match kind {
        Kind::Nodes => envelope("NodeMetrics", node(o).encode_to_vec()),
        Kind::Pods => envelope("PodMetrics", pod(o).encode_to_vec()),
    }
}

/// meta/v1 WatchEvent: the event type and the object, itself a whole
/// enveloped protobuf body.
#[derive(Clone, PartialEq, Message)]
pub struct WatchEvent {
    #[prost(string, optional, tag = "1")]
    pub r#type: Option<String>,
    #[prost(message, optional, tag = "2")]
    pub object: Option<RawExtension>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RawExtension {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub raw: Option<Vec<u8>>,
}

/// meta/v1 Status, for ERROR events.
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ListMeta>,
    #[prost(string, optional, tag = "2")]
    pub status: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub message: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub reason: Option<String>,
    #[prost(int32, optional, tag = "6")]
    pub code: Option<i32>,
}

/// One frame of a protobuf watch (`;stream=watch`): a 4-byte big-endian
/// length, then the WatchEvent in its envelope, whose object is `object`
/// (an enveloped body from [`object`], [`bookmark`] or [`status`]).
pub fn watch_frame(event_type: &str, object: Vec<u8>) -> Vec<u8> {
    let event = WatchEvent {
        r#type: Some(event_type.to_owned()),
        object: Some(RawExtension { raw: Some(object) }),
    };
    let body = envelope("WatchEvent", event.encode_to_vec());
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A BOOKMARK event's object: only `metadata.resourceVersion` (and
/// `annotations`) set.
pub fn bookmark(
    kind: Kind,
    resource_version: &str,
    annotations: &BTreeMap<String, String>,
) -> Vec<u8> {
    let metadata = Some(ObjectMeta {
        resource_version: Some(resource_version.to_owned()),
        annotations: annotations.clone(),
        ..ObjectMeta::default()
    });
    match kind {
        Kind::Nodes => envelope(
            "NodeMetrics",
            NodeMetrics {
                metadata,
                ..NodeMetrics::default()
            }
            .encode_to_vec(),
        ),
        Kind::Pods => envelope(
            "PodMetrics",
            PodMetrics {
                metadata,
                ..PodMetrics::default()
            }
            .encode_to_vec(),
        ),
    }
}

/// A Status (apiVersion v1) for an ERROR event.
pub fn status(code: u16, reason: &str, message: &str) -> Vec<u8> {
    let s = Status {
        metadata: Some(ListMeta::default()),
        status: Some("Failure".to_owned()),
        message: Some(message.to_owned()),
        reason: Some(reason.to_owned()),
        code: Some(i32::from(code)),
    };
    envelope_as("v1", "Status", s.encode_to_vec())
}
