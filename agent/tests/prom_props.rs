//! Properties of the text parser: no input makes it panic, and samples
//! written in the exposition format read back exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::UNIX_EPOCH;

use metrics_agent::source::decode::decode;
use metrics_agent::source::prom::{parse_line, samples};
use proptest::prelude::*;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = samples(&text).count();
        let _ = decode(&text, UNIX_EPOCH);
    }

    #[test]
    fn near_miss_lines_never_panic(text in r#"[a-z_]{1,8}(\{[a-z]{1,3}="[^"\n]{0,6}"?[,}]{0,2})? ?[-+0-9.eEInfNa]{0,8} ?[0-9-]{0,5}"#) {
        let _ = parse_line(&text);
    }

    #[test]
    fn written_samples_read_back(
        name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
        labels in proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,8}", any::<String>(), 0..8),
        value in any::<f64>().prop_filter("finite", |v| v.is_finite()),
        ts in proptest::option::of(any::<i64>()),
    ) {
        let body: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
        let mut line = name.clone();
        if !body.is_empty() {
            line.push('{');
            line.push_str(&body.join(","));
            line.push('}');
        }
        line.push_str(&format!(" {value:e}"));
        if let Some(ts) = ts {
            line.push_str(&format!(" {ts}"));
        }
        let s = parse_line(&line).unwrap();
        prop_assert_eq!(s.name, name.as_str());
        prop_assert_eq!(s.value, value);
        prop_assert_eq!(s.timestamp_ms, ts);
        for (k, v) in &labels {
            prop_assert_eq!(s.label(k).unwrap(), v.as_str());
        }
    }
}
