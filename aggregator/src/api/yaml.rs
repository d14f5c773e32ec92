//! JSON values written as block YAML, the way kube-apiserver answers
//! `Accept: application/yaml`: mapping keys sorted, strings plain where YAML
//! reads them back as the same string, double-quoted otherwise.

use std::fmt::Write;

use serde_json::{json, Value};

use crate::api::status::ApiError;
use crate::query::Hit;

/// `v` as a YAML document.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => mapping(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => sequence(&mut out, a, 0),
        other => {
            scalar(&mut out, other);
            out.push('\n');
        }
    }
    out
}

/// A list of `hits` (a `list_kind`, e.g. `PodMetricsList`) as a YAML
/// document, each object with `created` as its creationTimestamp: the
/// document [`to_yaml`] writes for the list's JSON, written one object at
/// a time instead of from the whole list held as values (for every pod of
/// a large cluster, many times the answer's size).
pub fn list(list_kind: &str, hits: &[Hit], created: &str) -> Result<String, ApiError> {
    // Keys in order: apiVersion, items, kind, metadata.
    let mut out = to_yaml(&json!({ "apiVersion": "metrics.k8s.io/v1beta1" }));
    if hits.is_empty() {
        out.push_str("items: []\n");
    } else {
        out.push_str("items:\n");
        let mut json = Vec::new();
        for h in hits {
            json.clear();
            h.rendered.write_to(&mut json, created);
            let v: Value = serde_json::from_slice(&json).map_err(|e| {
                ApiError::Internal(format!("stored object {:?} does not decode: {e}", h.name))
            })?;
            sequence(&mut out, std::slice::from_ref(&v), 0);
        }
    }
    out.push_str(&to_yaml(&json!({ "kind": list_kind, "metadata": {} })));
    Ok(out)
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn mapping(out: &mut String, m: &serde_json::Map<String, Value>, level: usize) {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    for k in keys {
        indent(out, level);
        string(out, k);
        out.push(':');
        child(out, &m[k], level);
    }
}

fn sequence(out: &mut String, a: &[Value], level: usize) {
    for v in a {
        indent(out, level);
        out.push('-');
        match v {
            // A mapping in a sequence starts on the dash's line.
            Value::Object(m) if !m.is_empty() => {
                let mut nested = String::new();
                mapping(&mut nested, m, level + 2);
                out.push(' ');
                out.push_str(&nested[level + 2..]);
            }
            _ => child(out, v, level),
        }
    }
}

/// What follows `key:` or `-`: a nested block on the next lines, or a
/// scalar on this one.
fn child(out: &mut String, v: &Value, level: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            mapping(out, m, level + 2);
        }
        // kube-apiserver (sigs.k8s.io/yaml) does not indent sequences
        // under their key.
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            sequence(out, a, level);
        }
        other => {
            out.push(' ');
            scalar(out, other);
            out.push('\n');
        }
    }
}

fn scalar(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => string(out, s),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

/// Plain when unambiguous, else a JSON string (a valid YAML double-quoted
/// scalar).
fn string(out: &mut String, s: &str) {
    if plain_is_safe(s) {
        out.push_str(s);
    } else {
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

/// Whether `s` written plain reads back as the same string: only
/// name-like characters, starting with a letter or a digit, and none of the
/// words, numbers, dates or other forms YAML resolves to another type (a
/// leading digit needs a letter that makes it no number, as in `15s`).
fn plain_is_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !first.is_ascii_alphanumeric()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    if first.is_ascii_digit() {
        let has_letter = lower.chars().any(|c| c.is_ascii_alphabetic());
        let exponent = lower.split_once('e').is_some_and(|(m, e)| {
            !m.is_empty()
                && m.chars().all(|c| c.is_ascii_digit() || c == '.')
                && !e.trim_start_matches(['+', '-']).is_empty()
                && e.trim_start_matches(['+', '-'])
                    .chars()
                    .all(|c| c.is_ascii_digit())
        });
        return has_letter && !exponent && !["0x", "0o", "0b"].iter().any(|p| lower.starts_with(p));
    }
    const WORDS: [&str; 12] = [
        "true", "false", "null", "yes", "no", "on", "off", "y", "n", "nan", "inf", "infinity",
    ];
    !WORDS.contains(&lower.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_written_object_by_object_is_the_whole_lists_document() {
        use crate::api::list_body::ListBody;
        use crate::labelset::Labels;
        use crate::render::Rendered;
        use std::collections::HashMap;

        let labels = Labels::new(&HashMap::from([
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "007".to_string()),
        ]))
        .unwrap();
        let u = metrics_proto::v1::Usage {
            timestamp_unix_nanos: 1_700_000_000_000_000_000,
            window_nanos: 15_000_000_000,
            cpu_nanocores: 1_500_000,
            memory_working_set_bytes: 3 << 20,
            swap_bytes: 0,
        };
        let hit = |name: &str, rendered: Rendered| Hit {
            namespace: String::new(),
            name: name.to_owned(),
            node: String::new(),
            timestamp_ns: u.timestamp_unix_nanos,
            rendered,
            pb: None,
        };
        let hits = [
            hit("a", crate::render::node_metrics("a", &labels, &u, false)),
            hit(
                "b",
                crate::render::node_metrics("b", &Labels::empty(), &u, true),
            ),
            hit(
                "true",
                crate::render::node_metrics("true", &labels, &u, false),
            ),
        ];
        let created = "2026-11-30T06:00:00Z";
        for n in [0, 1, 3] {
            let whole = ListBody::new("NodeMetricsList", &hits[..n], created.to_owned()).collect();
            let whole: Value = serde_json::from_slice(&whole).unwrap();
            let want = to_yaml(&whole);
            assert_eq!(list("NodeMetricsList", &hits[..n], created).unwrap(), want);
        }
        let bad = [hit("x", Rendered::from_parts("{\"metadata\":", ""))];
        assert!(matches!(
            list("NodeMetricsList", &bad, created),
            Err(ApiError::Internal(_))
        ));
    }

    #[test]
    fn ambiguous_strings_are_quoted() {
        for s in [
            "15s",
            "100m",
            "1Mi",
            "web-1",
            "app.kubernetes.io/name",
            "v1beta1",
        ] {
            assert!(plain_is_safe(s), "{s}");
        }
        for s in [
            "",
            "007",
            "1e3",
            "1.5E-2",
            "0x1f",
            "true",
            "No",
            "~",
            "-a",
            "2022-01-27T18:48:33Z",
            "a b",
            "a:b",
            ".5",
        ] {
            assert!(!plain_is_safe(s), "{s}");
        }
    }

    #[test]
    fn layout_as_kube_apiserver_writes_it() {
        let v = serde_json::json!({
            "kind": "PodMetricsList",
            "metadata": {},
            "items": [{
                "metadata": {"name": "web-1", "labels": {"app": "web", "on": "true", "n": "007"}},
                "containers": [{"name": "c", "usage": {"cpu": "100m", "memory": "1Mi"}}],
                "window": "15s",
            }],
        });
        let want = "\
items:
- containers:
  - name: c
    usage:
      cpu: 100m
      memory: 1Mi
  metadata:
    labels:
      app: web
      \"n\": \"007\"
      \"on\": \"true\"
    name: web-1
  window: 15s
kind: PodMetricsList
metadata: {}
";
        assert_eq!(to_yaml(&v), want);
    }
}
