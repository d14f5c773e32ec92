//! Properties of the wire formatting, checked against an independent
//! quantity parser: every served value parses back to exactly what was
//! measured, and selectors never panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use metrics_aggregator::api::selector::{FieldSelector, LabelSelector};
use metrics_aggregator::format::{cpu_quantity, memory_quantity};
use metrics_e2e::quantity;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    #[test]
    fn memory_round_trips_exactly(bytes in 0u64..(1 << 62)) {
        let q = memory_quantity(bytes);
        prop_assert_eq!(quantity::bytes(&q), Some(bytes), "{}", q);
    }

    #[test]
    fn cpu_round_trips(nanocores in 0u64..(1 << 60)) {
        let q = cpu_quantity(nanocores);
        let back = quantity::parse(&q).unwrap();
        let want = nanocores as f64 / 1e9;
        prop_assert!((back - want).abs() <= want * 1e-12 + 1e-18, "{} -> {} want {}", q, back, want);
        // Canonical: no trailing zeros before a suffix that could absorb them.
        let digits: String = q.chars().take_while(|c| c.is_ascii_digit()).collect();
        prop_assert!(q == "0" || !digits.ends_with("000"), "{}", q);
    }

    #[test]
    fn selectors_never_panic(s in any::<String>()) {
        let _ = LabelSelector::parse(&s);
        let _ = FieldSelector::parse(&s);
    }

    #[test]
    fn selector_like_text_never_panics(s in r"[!a-z=,() ]{0,24}(in|notin)?[ (a-z,)]{0,10}") {
        if let Ok(sel) = LabelSelector::parse(&s) {
            let _ = sel.matches(&Default::default());
        }
    }
}
