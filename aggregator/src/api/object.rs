//! A metrics object read back from its rendered JSON, for what is built
//! from it: watch events, and protobuf from a peer's JSON. List and GET
//! answers in JSON never go through here (they are copied from the
//! rendered bytes), nor do Tables (written from each object's JSON).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::status::ApiError;
use crate::query::Hit;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Set in watch events only: the sample time, ns since the epoch.
    #[serde(
        rename = "resourceVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub resource_version: Option<String>,
    #[serde(rename = "creationTimestamp")]
    pub creation_timestamp: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    pub usage: BTreeMap<String, String>,
}

/// A NodeMetrics (with `usage`) or PodMetrics (with `containers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub metadata: Meta,
    pub timestamp: String,
    pub window: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<Vec<Container>>,
    /// The sample time with its full precision (the JSON has seconds).
    #[serde(skip)]
    pub timestamp_ns: i64,
}

impl Object {
    /// Reads `hit` as answered at `created` (RFC 3339).
    pub fn from_hit(hit: &Hit, created: &str) -> Result<Self, ApiError> {
        let mut json = Vec::with_capacity(hit.rendered.len() + created.len());
        hit.rendered.write_to(&mut json, created);
        let mut o: Object = serde_json::from_slice(&json).map_err(|e| {
            ApiError::Internal(format!("stored object {:?} does not decode: {e}", hit.name))
        })?;
        o.timestamp_ns = hit.timestamp_ns;
        Ok(o)
    }
}
