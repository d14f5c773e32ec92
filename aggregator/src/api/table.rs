//! Server-side Tables (`meta.k8s.io` Table), what `kubectl get` shows:
//! metrics-server's columns, Name, one per resource in name order (a pod's
//! is the sum over its containers) and Window, with each row's object as
//! `includeObject` asks.

use serde_json::{json, Value};

use crate::api::negotiate::TableVersion;
use crate::api::object::Object;
use crate::api::status::ApiError;
use crate::format::{cpu_quantity, memory_quantity};
use crate::query::Kind;

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

/// The Table of `objects` (of `kind`), as JSON.
pub fn render(
    version: TableVersion,
    kind: Kind,
    objects: &[Object],
    include: IncludeObject,
) -> Vec<u8> {
    let resources: Vec<String> = objects
        .first()
        .map(|o| o.total_usage().keys().map(|k| (*k).to_owned()).collect())
        .unwrap_or_else(|| vec!["cpu".to_owned(), "memory".to_owned()]);
    let mut columns = vec![json!({
        "name": "Name", "type": "string", "format": "name",
        "description": "Name of the resource", "priority": 0,
    })];
    for r in &resources {
        columns.push(json!({
            "name": r, "type": "string", "format": "quantity", "description": "", "priority": 0,
        }));
    }
    columns.push(json!({
        "name": "Window", "type": "string", "format": "duration", "description": "", "priority": 0,
    }));
    let object_kind = match kind {
        Kind::Nodes => "NodeMetrics",
        Kind::Pods => "PodMetrics",
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let total = o.total_usage();
            let mut cells = vec![Value::from(o.metadata.name.clone())];
            for r in &resources {
                cells.push(quantity(r, total.get(r.as_str()).copied().unwrap_or(0)).into());
            }
            // Already a Go duration string, as metrics-server's cell is.
            cells.push(o.window.clone().into());
            let mut row = json!({ "cells": cells });
            let object = match include {
                IncludeObject::None => None,
                IncludeObject::Metadata => Some(json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": version.api_version(),
                    "metadata": o.metadata,
                })),
                IncludeObject::Object => serde_json::to_value(o).ok().map(|mut v| {
                    if let Some(m) = v.as_object_mut() {
                        m.insert("kind".into(), object_kind.into());
                        m.insert("apiVersion".into(), "metrics.k8s.io/v1beta1".into());
                    }
                    v
                }),
            };
            if let (Some(object), Some(r)) = (object, row.as_object_mut()) {
                r.insert("object".into(), object);
            }
            row
        })
        .collect();
    let table = json!({
        "kind": "Table",
        "apiVersion": version.api_version(),
        "metadata": {},
        "columnDefinitions": columns,
        "rows": rows,
    });
    serde_json::to_vec(&table).unwrap_or_default()
}
