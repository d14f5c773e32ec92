//! Server-side Tables (`meta.k8s.io` Table), what `kubectl get` shows:
//! metrics-server's columns, Name, one per resource in name order (a pod's
//! is the sum over its containers) and Window, with each row's object as
//! `includeObject` asks.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::api::negotiate::TableVersion;
use crate::api::object::Object;
use crate::api::status::ApiError;
use crate::format::{cpu_quantity, memory_quantity, parse_quantity_nanos};
use crate::query::{Hit, Kind};
use crate::render::kind_prefix;

/// What each row carries besides its cells (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    None,
    /// A PartialObjectMetadata (kube-apiserver's default).
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(v: &str) -> Result<Self, ApiError> {
        match v {
            "None" => Ok(Self::None),
            "" | "Metadata" => Ok(Self::Metadata),
            "Object" => Ok(Self::Object),
            other => Err(ApiError::BadRequest(format!(
                "unrecognized includeObject value: {other:?}"
            ))),
        }
    }
}

fn quantity(resource: &str, nanos: i128) -> String {
    let units = |n: i128| u64::try_from(n.max(0)).unwrap_or(u64::MAX);
    if resource == "cpu" {
        cpu_quantity(units(nanos))
    } else {
        memory_quantity(units(nanos / 1_000_000_000))
    }
}

/// A string of the object's JSON, borrowed from it unless it had escapes.
#[derive(Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// Resources by name, in a usage object.
type Usage<'a> = BTreeMap<Str<'a>, Str<'a>>;

/// What a row takes from an object's JSON; the rest is skipped unread.
#[derive(Deserialize)]
struct Source<'a> {
    #[serde(borrow)]
    metadata: &'a RawValue,
    #[serde(borrow)]
    window: Cow<'a, str>,
    #[serde(default, borrow)]
    usage: Option<Usage<'a>>,
    #[serde(default, borrow)]
    containers: Option<Vec<ContainerSource<'a>>>,
}

#[derive(Deserialize)]
struct ContainerSource<'a> {
    #[serde(borrow)]
    usage: Usage<'a>,
}

#[derive(Deserialize)]
struct Name<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

impl Source<'_> {
    /// Usage summed over the object: the node's own, or its containers'
    /// (metrics-server's Table rule), in nano-units by resource name.
    fn totals(&self) -> BTreeMap<&str, i128> {
        let mut total = BTreeMap::new();
        let parts: Box<dyn Iterator<Item = &Usage<'_>>> = match (&self.usage, &self.containers) {
            (Some(u), _) => Box::new(std::iter::once(u)),
            (None, Some(cs)) => Box::new(cs.iter().map(|c| &c.usage)),
            (None, None) => Box::new(std::iter::empty()),
        };
        for usage in parts {
            for (Str(name), Str(q)) in usage {
                let v = parse_quantity_nanos(q).unwrap_or(0);
                let sum: &mut i128 = total.entry(name.as_ref()).or_default();
                *sum = sum.saturating_add(v);
            }
        }
        total
    }
}

/// A Table written row by row, each row straight from its object's JSON:
/// the answer's bytes and one object at a time in memory, never a tree of
/// every row (a list of every pod of a large cluster as `serde_json`
/// values took twenty times the bytes it answered with).
pub struct Table {
    version: TableVersion,
    object_kind: &'static str,
    include: IncludeObject,
    /// The resource columns, from the first row; None before it.
    resources: Option<Vec<String>>,
    out: Vec<u8>,
    rows: usize,
}

impl Table {
    /// An empty Table of `kind` objects; `capacity` bytes reserved.
    pub fn new(version: TableVersion, kind: Kind, include: IncludeObject, capacity: usize) -> Self {
        Self {
            version,
            object_kind: match kind {
                Kind::Nodes => "NodeMetrics",
                Kind::Pods => "PodMetrics",
            },
            include,
            resources: None,
            out: Vec::with_capacity(capacity),
            rows: 0,
        }
    }

    /// Adds the row of one NodeMetrics or PodMetrics object, given as its
    /// JSON (a list item, without `kind` and `apiVersion`, or a whole
    /// object).
    pub fn row(&mut self, object: &[u8]) -> Result<(), ApiError> {
        let src: Source<'_> = serde_json::from_slice(object)
            .map_err(|e| ApiError::Internal(format!("stored object does not decode: {e}")))?;
        let name: Name<'_> = serde_json::from_str(src.metadata.get())
            .map_err(|e| ApiError::Internal(format!("stored object has no name: {e}")))?;
        let totals = src.totals();
        let resources = match &self.resources {
            Some(r) => r,
            None => {
                let r: Vec<String> = totals.keys().map(|k| (*k).to_owned()).collect();
                self.start(&r);
                &*self.resources.insert(r)
            }
        };
        let out = &mut self.out;
        out.extend_from_slice(if self.rows == 0 { b"{" } else { b",{" });
        self.rows += 1;
        out.extend_from_slice(b"\"cells\":[");
        json_string(out, &name.name);
        for r in resources {
            out.push(b',');
            let q = quantity(r, totals.get(r.as_str()).copied().unwrap_or(0));
            json_string(out, &q);
        }
        out.push(b',');
        // Already a Go duration string, as metrics-server's cell is.
        json_string(out, &src.window);
        out.push(b']');
        match self.include {
            IncludeObject::None => {}
            IncludeObject::Metadata => {
                out.extend_from_slice(
                    b",\"object\":{\"kind\":\"PartialObjectMetadata\",\"apiVersion\":\"",
                );
                out.extend_from_slice(self.version.api_version().as_bytes());
                out.extend_from_slice(b"\",\"metadata\":");
                out.extend_from_slice(src.metadata.get().as_bytes());
                out.push(b'}');
            }
            IncludeObject::Object => {
                out.extend_from_slice(b",\"object\":");
                match kind_prefix(object, self.object_kind) {
                    Some(prefix) => {
                        out.extend_from_slice(prefix.as_bytes());
                        out.extend_from_slice(object.get(1..).unwrap_or_default());
                    }
                    None => out.extend_from_slice(object),
                }
            }
        }
        out.push(b'}');
        Ok(())
    }

    /// Everything before the first row.
    fn start(&mut self, resources: &[String]) {
        let mut columns = vec![json!({
            "name": "Name", "type": "string", "format": "name",
            "description": "Name of the resource", "priority": 0,
        })];
        for r in resources {
            columns.push(json!({
                "name": r, "type": "string", "format": "quantity", "description": "", "priority": 0,
            }));
        }
        columns.push(json!({
            "name": "Window", "type": "string", "format": "duration", "description": "", "priority": 0,
        }));
        self.out
            .extend_from_slice(b"{\"kind\":\"Table\",\"apiVersion\":\"");
        self.out
            .extend_from_slice(self.version.api_version().as_bytes());
        self.out
            .extend_from_slice(b"\",\"metadata\":{},\"columnDefinitions\":");
        // Values built here always serialize.
        self.out
            .extend_from_slice(&serde_json::to_vec(&columns).unwrap_or_default());
        self.out.extend_from_slice(b",\"rows\":[");
    }

    /// The Table as JSON; with no rows, cpu and memory columns.
    pub fn finish(mut self) -> Vec<u8> {
        if self.resources.is_none() {
            self.start(&["cpu".to_owned(), "memory".to_owned()]);
        }
        self.out.extend_from_slice(b"]}");
        self.out
    }
}

/// Appends `s` as a JSON string.
fn json_string(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The Table of `hits` (of `kind`), each object with `created` as its
/// creationTimestamp.
pub fn of_hits(
    version: TableVersion,
    kind: Kind,
    hits: &[Hit],
    created: &str,
    include: IncludeObject,
) -> Result<Vec<u8>, ApiError> {
    // Rows are about as long as the objects they show.
    let capacity = hits
        .iter()
        .map(|h| h.rendered.len() + created.len())
        .sum::<usize>();
    let mut table = Table::new(version, kind, include, capacity.saturating_add(1024));
    let mut json = Vec::new();
    for h in hits {
        json.clear();
        h.rendered.write_to(&mut json, created);
        table.row(&json)?;
    }
    Ok(table.finish())
}

/// The Table of one object (a watch event's).
pub fn of_object(
    version: TableVersion,
    kind: Kind,
    object: &Object,
    include: IncludeObject,
) -> Result<Vec<u8>, ApiError> {
    let json = serde_json::to_vec(object)
        .map_err(|e| ApiError::Internal(format!("object does not encode: {e}")))?;
    let mut table = Table::new(version, kind, include, 2 * json.len() + 1024);
    table.row(&json)?;
    Ok(table.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labelset::Labels;
    use crate::render::{self, Rendered};
    use crate::report::Container;
    use metrics_proto::v1::Usage;
    use serde_json::Value;

    const CREATED: &str = "2026-11-30T06:00:00Z";

    fn hit(namespace: &str, name: &str, rendered: Rendered) -> Hit {
        Hit {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node: String::new(),
            timestamp_ns: 1_700_000_000_000_000_000,
            rendered,
            pb: None,
        }
    }

    fn pod(name: &str, labels: &[(&str, &str)], containers: &[(&str, u64, u64)]) -> Hit {
        let labels = Labels::new(
            &labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
        .unwrap();
        let cs: Vec<Container<'_>> = containers
            .iter()
            .map(|&(name, cpu, mem)| Container {
                name,
                cpu_nanocores: cpu,
                memory_working_set_bytes: mem,
                swap_bytes: 0,
            })
            .collect();
        let r = render::pod_object(
            "team-a",
            name,
            &labels,
            1_700_000_000_000_000_000,
            15_500_000_000,
            cs.iter().copied(),
            cs.len(),
            false,
        );
        hit("team-a", name, r)
    }

    fn table(hits: &[Hit], include: IncludeObject) -> Value {
        let bytes = of_hits(TableVersion::V1, Kind::Pods, hits, CREATED, include).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn column_names(t: &Value) -> Vec<&str> {
        let columns = t["columnDefinitions"].as_array().unwrap();
        columns
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    }

    fn list_item(h: &Hit) -> Value {
        let mut out = Vec::new();
        h.rendered.write_to(&mut out, CREATED);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn rows_carry_summed_usage_and_the_object_asked_for() {
        let hits = [
            pod(
                "web-1",
                &[("app", "web"), ("tier", "front")],
                &[("nginx", 1_500_000, 3 << 20), ("sidecar", 500_000, 1 << 20)],
            ),
            pod("db-\"0\"", &[], &[("pg", 250_000_000, 1 << 30)]),
        ];
        let t = table(&hits, IncludeObject::Metadata);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(column_names(&t), ["Name", "cpu", "memory", "Window"]);
        let rows = t["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        // A pod's cells are its containers' sums (metrics-server's rule).
        assert_eq!(
            rows[0]["cells"],
            serde_json::json!(["web-1", "2m", "4Mi", "15.5s"])
        );
        // Names needing escapes come back unchanged.
        assert_eq!(
            rows[1]["cells"],
            serde_json::json!(["db-\"0\"", "250m", "1Gi", "15.5s"])
        );
        for (row, h) in rows.iter().zip(&hits) {
            let object = &row["object"];
            assert_eq!(object["kind"], "PartialObjectMetadata");
            assert_eq!(object["apiVersion"], "meta.k8s.io/v1");
            assert_eq!(object["metadata"], list_item(h)["metadata"]);
            assert_eq!(object.as_object().unwrap().len(), 3, "{object}");
        }
        assert_eq!(rows[0]["object"]["metadata"]["labels"]["tier"], "front");

        let t = table(&hits, IncludeObject::Object);
        for (row, h) in t["rows"].as_array().unwrap().iter().zip(&hits) {
            let mut want = list_item(h);
            let w = want.as_object_mut().unwrap();
            w.insert("kind".into(), "PodMetrics".into());
            w.insert("apiVersion".into(), "metrics.k8s.io/v1beta1".into());
            assert_eq!(row["object"], want);
        }

        let t = table(&hits, IncludeObject::None);
        for row in t["rows"].as_array().unwrap() {
            assert_eq!(row.as_object().unwrap().len(), 1, "{row}");
        }
    }

    #[test]
    fn columns_follow_the_first_row_and_an_empty_table_has_cpu_and_memory() {
        let u = Usage {
            timestamp_unix_nanos: 1_700_000_000_000_000_000,
            window_nanos: 30_000_000_000,
            cpu_nanocores: 487_558_164,
            memory_working_set_bytes: 749_785_088,
            swap_bytes: 4096,
        };
        let node = hit(
            "",
            "node-a",
            render::node_metrics("node-a", &Labels::empty(), &u, true),
        );
        let bytes = of_hits(
            TableVersion::V1beta1,
            Kind::Nodes,
            std::slice::from_ref(&node),
            CREATED,
            IncludeObject::Object,
        )
        .unwrap();
        let t: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1beta1");
        assert_eq!(
            column_names(&t),
            ["Name", "cpu", "memory", "swap", "Window"]
        );
        assert_eq!(
            t["rows"][0]["cells"],
            serde_json::json!(["node-a", "487558164n", "732212Ki", "4Ki", "30s"])
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "NodeMetrics");

        let empty: Value = serde_json::from_slice(
            &of_hits(
                TableVersion::V1,
                Kind::Pods,
                &[],
                CREATED,
                IncludeObject::Metadata,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(empty["rows"], serde_json::json!([]));
        assert_eq!(empty["columnDefinitions"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn a_watch_events_object_keeps_its_resource_version() {
        let h = pod("web-1", &[("app", "web")], &[("nginx", 1, 1)]);
        let mut o = Object::from_hit(&h, CREATED).unwrap();
        o.metadata.resource_version = Some("42".into());
        let bytes = of_object(TableVersion::V1, Kind::Pods, &o, IncludeObject::Metadata).unwrap();
        let t: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(t["rows"][0]["object"]["metadata"]["resourceVersion"], "42");
        assert_eq!(t["rows"][0]["cells"][0], "web-1");
    }

    #[test]
    fn escaped_strings_read_as_their_text() {
        let mut t = Table::new(TableVersion::V1, Kind::Nodes, IncludeObject::None, 0);
        t.row(br#"{"metadata":{"name":"n\u0031"},"window":"1\u0035s","usage":{"c\u0070u":"1\u006d","memory":"1Ki"}}"#)
            .unwrap();
        let t: Value = serde_json::from_slice(&t.finish()).unwrap();
        assert_eq!(
            t["rows"][0]["cells"],
            serde_json::json!(["n1", "1m", "1Ki", "15s"])
        );
    }

    #[test]
    fn an_object_that_does_not_decode_is_an_error_not_a_row() {
        let mut t = Table::new(TableVersion::V1, Kind::Pods, IncludeObject::Metadata, 0);
        for bad in [
            &b"{\"metadata\":{\"name\":\"a\"}"[..],
            b"{\"metadata\":{},\"window\":\"1s\"}",
            b"[]",
            b"",
        ] {
            assert!(
                matches!(t.row(bad), Err(ApiError::Internal(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let t: Value = serde_json::from_slice(&t.finish()).unwrap();
        assert_eq!(t["rows"], serde_json::json!([]));
    }
}
