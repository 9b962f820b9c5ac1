//! Event times written and read by position give exactly what chrono's serde gives: the same
//! bytes for every time, the same time (or refusal) for every text.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use proptest::prelude::*;

use crate::time::parse;

fn chrono(text: &str) -> Option<DateTime<Utc>> {
    text.parse().ok()
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Times {
    #[serde(
        serialize_with = "crate::time::write",
        deserialize_with = "crate::time::read"
    )]
    at: DateTime<Utc>,
    #[serde(
        default,
        serialize_with = "crate::time::write_opt",
        deserialize_with = "crate::time::read_opt"
    )]
    run_at: Option<DateTime<Utc>>,
}

/// The same fields as chrono's serde writes and reads them.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct ChronoTimes {
    at: DateTime<Utc>,
    run_at: Option<DateTime<Utc>>,
}

proptest! {
    #[test]
    fn every_written_time_reads_back_as_chrono_reads_it(
        secs in 0i64..253_402_300_799,
        nanos in 0u32..1_000_000_000,
        digits in prop::sample::select(vec![
            SecondsFormat::Secs, SecondsFormat::Millis, SecondsFormat::Micros,
            SecondsFormat::Nanos, SecondsFormat::AutoSi,
        ]),
    ) {
        let t = Utc.timestamp_opt(secs, nanos).unwrap();
        let text = t.to_rfc3339_opts(digits, true);
        prop_assert_eq!(parse(&text).ok(), chrono(&text));
        // The way events are written: chrono's serde.
        let json = serde_json::to_string(&t).unwrap();
        let read: Times = serde_json::from_str(&format!(r#"{{"at":{json},"run_at":{json}}}"#)).unwrap();
        prop_assert_eq!(read.at, t);
        prop_assert_eq!(read.run_at, Some(t));
    }

    #[test]
    fn every_time_is_written_as_chrono_writes_it(
        // Years 0 to 9999 and beyond on both sides, leap seconds included.
        secs in -62_200_000_000i64..253_500_000_000,
        nanos in prop::sample::select(vec![0u32, 1, 999, 1_000, 120_000_000, 123_456_000, 999_999_999, 1_000_000_000, 1_500_000_000]),
        anywhere in 0u32..1_000_000_000,
        leap in any::<bool>(),
    ) {
        let secs = if leap { secs - secs.rem_euclid(60) + 59 } else { secs };
        for n in [nanos, anywhere] {
            let Some(t) = Utc.timestamp_opt(secs, n).single() else { continue };
            let ours = serde_json::to_string(&Times { at: t, run_at: Some(t) }).unwrap();
            let theirs = serde_json::to_string(&ChronoTimes { at: t, run_at: Some(t) }).unwrap();
            prop_assert_eq!(&ours, &theirs);
            let back: Times = serde_json::from_str(&ours).unwrap();
            prop_assert_eq!(back.at, t);
        }
    }

    #[test]
    fn a_time_to_the_second_is_what_chrono_formats(
        secs in -62_200_000_000i64..253_500_000_000,
        nanos in 0u32..2_000_000_000,
    ) {
        let secs = if nanos >= 1_000_000_000 { secs - secs.rem_euclid(60) + 59 } else { secs };
        if let Some(t) = Utc.timestamp_opt(secs, nanos).single() {
            let mut ours = String::from("u:");
            crate::time::push_seconds(&mut ours, &t);
            prop_assert_eq!(ours, format!("u:{}", t.format("%Y-%m-%dT%H:%M:%SZ")));
        }
    }

    #[test]
    fn any_text_reads_as_chrono_reads_it(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,11})?([Zz]|[+-][0-9]{2}:[0-9]{2})?") {
        prop_assert_eq!(parse(&text).ok(), chrono(&text));
    }
}

#[test]
fn other_shapes_go_to_chrono_and_bad_ones_fail() {
    for text in [
        "2026-12-07T23:59:60Z",
        "2026-12-07T23:59:60.5Z",
        "2026-12-07T10:00:00+01:00",
        "2026-12-07t10:00:00z",
        "2026-12-07 10:00:00Z",
        "2026-12-07T10:00:00.1234567891Z",
        "2026-12-07T10:00:00.Z",
        "2026-02-30T10:00:00Z",
        "2026-12-07T24:00:00Z",
        "+2026-12-07T10:00:00Z",
        "2026-12-07T10:00:00",
        "2026-12-07T10:00Z",
        "",
        "２０２６-12-07T10:00:00Z",
    ] {
        assert_eq!(parse(text).ok(), chrono(text), "{text}");
    }
    let none = Times {
        at: Utc.timestamp_opt(1_765_000_000, 120_000).unwrap(),
        run_at: None,
    };
    let text = serde_json::to_string(&none).unwrap();
    assert_eq!(
        text,
        serde_json::to_string(&ChronoTimes {
            at: none.at,
            run_at: None
        })
        .unwrap()
    );
    assert_eq!(serde_json::from_str::<Times>(&text).unwrap(), none);
    let missing: Times = serde_json::from_str(r#"{"at":"2026-12-07T10:00:00Z"}"#).unwrap();
    assert_eq!(missing.run_at, None);
    let null: Times =
        serde_json::from_str(r#"{"at":"2026-12-07T10:00:00Z","run_at":null}"#).unwrap();
    assert_eq!(null.run_at, None);
    for bad in [
        r#"{"at":"2026-13-07T10:00:00Z"}"#,
        r#"{"at":17}"#,
        r#"{"at":"2026-12-07T10:00:00Z","run_at":"soon"}"#,
    ] {
        assert!(serde_json::from_str::<Times>(bad).is_err(), "{bad}");
    }
}
