//! Property tests of the parsers that take outside input: whatever bytes arrive, they
//! answer a value or an error — never a panic — and what they accept keeps their limits.

use kiln_core::junit;
use kiln_core::{Millis, NewEvent, Pipeline};
use proptest::prelude::*;

/// XML-ish text: the report's element names, attributes, entities, CDATA and junk.
fn xmlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("<testsuites>".to_owned()),
        Just("</testsuites>".to_owned()),
        Just("<testsuite name=\"s\">".to_owned()),
        Just("</testsuite>".to_owned()),
        Just("<testcase name=\"t\" classname=\"c\" time=\"0.5\">".to_owned()),
        Just("<testcase name='x' time='1e400'/>".to_owned()),
        Just("</testcase>".to_owned()),
        Just("<failure message=\"m &amp; n\">".to_owned()),
        Just("</failure>".to_owned()),
        Just("<error/>".to_owned()),
        Just("<skipped/>".to_owned()),
        Just("<![CDATA[ <x> ]]>".to_owned()),
        Just("&lt;&#0;&#x1F600;&bogus;".to_owned()),
        Just("<!DOCTYPE x>".to_owned()),
        Just("<?xml version=\"1.0\"?>".to_owned()),
        "[a-z<>/=\"' &;#]{0,12}",
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn junit_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = junit::parse(&bytes);
    }

    #[test]
    fn junit_never_panics_and_keeps_its_limits(text in xmlish()) {
        if let Ok(cases) = junit::parse(text.as_bytes()) {
            prop_assert!(cases.len() <= junit::MAX_CASES);
            for case in cases {
                prop_assert!(!case.name.contains('\0') && !case.suite.contains('\0'));
                prop_assert!(case.name.len() <= junit::MAX_NAME_BYTES + 3);
                prop_assert!(case.duration_ms.is_none_or(|ms| ms >= 0));
                if let Some(message) = &case.message {
                    prop_assert!(!message.contains('\0'));
                }
            }
        }
    }

    #[test]
    fn events_never_panic(json in "\\PC{0,200}") {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&json) {
            let _ = NewEvent::from_json(&value, "");
        }
    }

    #[test]
    fn event_metrics_are_checked(name in "\\PC{0,120}", value in any::<f64>()) {
        let event = serde_json::json!({"runId": "r1", "event": "bundle_measured", "metrics": {name.clone(): value}});
        if let Ok(parsed) = NewEvent::from_json(&event, "") {
            let metrics = parsed.metrics.unwrap();
            let kept = metrics.get(&name).copied().unwrap();
            prop_assert!(kept.is_finite() && kept.abs() <= 1e15);
            prop_assert!(kiln_core::event::valid_metric_name(&name));
        }
    }

    #[test]
    fn instants_never_panic_and_round_trip(text in "\\PC{0,40}", millis in 0i64..4_102_444_800_000) {
        let _ = Millis::parse_rfc3339(&text);
        prop_assert_eq!(Millis::parse_rfc3339(&Millis(millis).to_rfc3339()), Some(Millis(millis)));
    }

    #[test]
    fn pipelines_never_panic(yaml in "\\PC{0,300}") {
        let _ = Pipeline::parse(&yaml);
    }
}
