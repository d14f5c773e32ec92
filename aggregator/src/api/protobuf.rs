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
    #[prost(message, optional, tag = "8")]
    pub creation_timestamp: Option<Time>,
    #[prost(btree_map = "string, string", tag = "11")]
    pub labels: BTreeMap<String, String>,
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
        creation_timestamp: metrics_proto::time::parse_rfc3339(&o.metadata.creation_timestamp)
            .map(time),
        labels: o.metadata.labels.clone(),
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
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some("metrics.k8s.io/v1beta1".to_owned()),
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

/// A NodeMetricsList or PodMetricsList.
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

/// One NodeMetrics or PodMetrics.
pub fn object(kind: Kind, o: &Object) -> Vec<u8> {
    match kind {
        Kind::Nodes => envelope("NodeMetrics", node(o).encode_to_vec()),
        Kind::Pods => envelope("PodMetrics", pod(o).encode_to_vec()),
    }
}
