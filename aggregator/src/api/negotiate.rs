//! Which representation an answer takes, from the `Accept` header, as
//! kube-apiserver negotiates it: clauses tried in order of their `q` value
//! (ties in the order given), wildcards, and the `as`/`g`/`v` parameters
//! that ask for a server-side Table.

use http::header::ACCEPT;
use http::HeaderMap;

use crate::api::status::ApiError;

pub const JSON: &str = "application/json";
pub const YAML: &str = "application/yaml";
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// A representation this server writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    Protobuf,
    /// `meta.k8s.io` Table, in JSON, of the given version.
    Table(TableVersion),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableVersion {
    V1,
    V1beta1,
}

impl TableVersion {
    pub fn api_version(self) -> &'static str {
        match self {
            TableVersion::V1 => "meta.k8s.io/v1",
            TableVersion::V1beta1 => "meta.k8s.io/v1beta1",
        }
    }

    fn version(self) -> &'static str {
        match self {
            TableVersion::V1 => "v1",
            TableVersion::V1beta1 => "v1beta1",
        }
    }
}

impl Format {
    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> String {
        match self {
            Format::Json => JSON.to_owned(),
            Format::Yaml => YAML.to_owned(),
            Format::Protobuf => PROTOBUF.to_owned(),
            Format::Table(v) => format!("{JSON};as=Table;v={};g=meta.k8s.io", v.version()),
        }
    }
}

/// The format for the request's `Accept` header(s); none, or an empty one,
/// means JSON. Nothing acceptable is a 406.
pub fn negotiate(headers: &HeaderMap) -> Result<Format, ApiError> {
    let mut clauses: Vec<(f32, &str)> = Vec::new();
    for value in headers.get_all(ACCEPT) {
        let Ok(text) = value.to_str() else {
            return Err(ApiError::NotAcceptable);
        };
        for clause in text.split(',') {
            if clause.trim().is_empty() {
                continue;
            }
            clauses.push((quality(clause), clause));
        }
    }
    if clauses.is_empty() {
        return Ok(Format::Json);
    }
    // Stable: equal q values keep the client's order.
    clauses.sort_by(|a, b| b.0.total_cmp(&a.0));
    clauses
        .into_iter()
        .filter(|(q, _)| *q > 0.0)
        .find_map(|(_, clause)| matches(clause))
        .ok_or(ApiError::NotAcceptable)
}

/// The clause's `q` (1 when absent; 0, never chosen, when malformed).
fn quality(clause: &str) -> f32 {
    for param in clause.split(';').skip(1) {
        if let Some((k, v)) = param.split_once('=') {
            if k.trim().eq_ignore_ascii_case("q") {
                return match v.trim().parse::<f32>() {
                    Ok(q) if (0.0..=1.0).contains(&q) => q,
                    _ => 0.0,
                };
            }
        }
    }
    1.0
}

/// What one media range asks for, if this server writes it.
fn matches(clause: &str) -> Option<Format> {
    let mut parts = clause.split(';');
    let media = parts.next()?.trim().to_ascii_lowercase();
    let (mut as_kind, mut group, mut version) = (None, None, None);
    for param in parts {
        let Some((k, v)) = param.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            "as" => as_kind = Some(v.to_owned()),
            "g" => group = Some(v.to_owned()),
            "v" => version = Some(v.to_owned()),
            // q, pretty, stream and extensions do not change the answer.
            _ => {}
        }
    }
    if let Some(kind) = as_kind {
        // Only a Table is offered as another kind, and only in JSON.
        if kind != "Table" || group.as_deref() != Some("meta.k8s.io") || media != JSON {
            return None;
        }
        return match version.as_deref() {
            Some("v1") => Some(Format::Table(TableVersion::V1)),
            Some("v1beta1") => Some(Format::Table(TableVersion::V1beta1)),
            _ => None,
        };
    }
    match media.as_str() {
        JSON | "*/*" | "application/*" => Some(Format::Json),
        YAML => Some(Format::Yaml),
        PROTOBUF => Some(Format::Protobuf),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(accept: &[&str]) -> Result<Format, ApiError> {
        let mut h = HeaderMap::new();
        for a in accept {
            h.append(ACCEPT, a.parse().unwrap());
        }
        negotiate(&h)
    }

    #[test]
    fn what_real_clients_send() {
        // No header (kube-apiserver's probes, curl).
        assert_eq!(pick(&[]), Ok(Format::Json));
        // kubectl top and the HPA.
        assert_eq!(
            pick(&["application/vnd.kubernetes.protobuf, */*"]),
            Ok(Format::Protobuf)
        );
        // kubectl get --raw.
        assert_eq!(pick(&["application/json, */*"]), Ok(Format::Json));
        // kubectl get.
        assert_eq!(
            pick(&["application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"]),
            Ok(Format::Table(TableVersion::V1))
        );
        assert_eq!(pick(&["application/yaml"]), Ok(Format::Yaml));
    }

    #[test]
    fn q_values_order_the_clauses() {
        assert_eq!(
            pick(&["application/json;q=0.5, application/yaml"]),
            Ok(Format::Yaml)
        );
        assert_eq!(
            pick(&["application/yaml;q=0.1, application/json;q=0.9"]),
            Ok(Format::Json)
        );
        // q=0 means "not this".
        assert_eq!(
            pick(&["application/json;q=0"]),
            Err(ApiError::NotAcceptable)
        );
        // Equal q: the client's order.
        assert_eq!(
            pick(&["application/yaml, application/json"]),
            Ok(Format::Yaml)
        );
    }

    #[test]
    fn unknown_kinds_and_types_fall_through_or_406() {
        assert_eq!(
            pick(&[
                "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io, application/json"
            ]),
            Ok(Format::Json)
        );
        assert_eq!(
            pick(&["application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io, application/json;as=Table;v=v1beta1;g=meta.k8s.io"]),
            Ok(Format::Table(TableVersion::V1beta1))
        );
        assert_eq!(pick(&["text/html"]), Err(ApiError::NotAcceptable));
        assert_eq!(
            pick(&["application/json;as=Table;v=v2;g=meta.k8s.io"]),
            Err(ApiError::NotAcceptable)
        );
        assert_eq!(pick(&["text/plain", "application/*"]), Ok(Format::Json));
    }
}
