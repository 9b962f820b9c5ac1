//! The checked-in JSON Schemas under `schemas/` are exactly what the types generate.

use std::path::Path;

#[test]
fn checked_in_schemas_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let mut drifted = Vec::new();
    for file in domain::schema::all() {
        let on_disk = std::fs::read_to_string(dir.join(&file.path)).unwrap_or_default();
        if on_disk != file.json {
            drifted.push(file.path);
        }
    }
    assert!(
        drifted.is_empty(),
        "schemas drifted from the types; run `cargo run -- schemas write`: {drifted:?}"
    );
}

#[test]
fn every_event_type_has_a_schema() {
    let paths: Vec<String> = domain::schema::all().into_iter().map(|f| f.path).collect();
    let types = domain::job::JobEvent::EVENT_TYPES
        .iter()
        .chain(domain::usage::UsageEvent::EVENT_TYPES)
        .chain(domain::subscription::SubscriptionEvent::EVENT_TYPES);
    for t in types {
        assert!(
            paths.contains(&format!("events/{t}.json")),
            "no schema for {t}"
        );
    }
}
