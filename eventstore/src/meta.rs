//! What a follower takes from an event's metadata: the correlation id and the `traceparent`,
//! borrowed from the stored text.

use std::borrow::Cow;

/// The names a follower reads in an event's metadata.
#[derive(Debug, Default, PartialEq, serde::Deserialize)]
pub struct Meta<'a> {
    /// The job's correlation id.
    #[serde(borrow)]
    pub correlation_id: Option<Cow<'a, str>>,
    /// The W3C `traceparent` of the span that made the event, when it was traced.
    #[serde(borrow)]
    pub traceparent: Option<Cow<'a, str>>,
}

impl<'a> Meta<'a> {
    /// The names in `text`, a metadata object's JSON; none when it is not one.
    pub fn of(text: &'a str) -> Self {
        flat(text).unwrap_or_else(|| serde_json::from_str(text).unwrap_or_default())
    }
}

/// Reads the shape runledger writes, one object of strings without escapes, by scanning
/// it: serde's derived reader cost each traced event ~2k instructions in every follower.
/// `None` for anything else (escapes, other values, duplicate names, bad JSON), which
/// serde then reads as before.
fn flat(text: &str) -> Option<Meta<'_>> {
    let b = text.as_bytes();
    let mut meta = Meta::default();
    let mut i = after_space(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = after_space(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (after_space(b, i + 1) == b.len()).then_some(meta);
    }
    loop {
        let (name, next) = plain_string(text, i)?;
        i = after_space(b, next);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let (value, next) = plain_string(text, after_space(b, i + 1))?;
        let slot = match name {
            "correlation_id" => &mut meta.correlation_id,
            "traceparent" => &mut meta.traceparent,
            _ => &mut None,
        };
        // serde refuses a duplicate field: so must this reader, to give the same answer.
        if slot.replace(Cow::Borrowed(value)).is_some() {
            return None;
        }
        i = after_space(b, next);
        match b.get(i) {
            Some(b',') => i = after_space(b, i + 1),
            Some(b'}') => return (after_space(b, i + 1) == b.len()).then_some(meta),
            _ => return None,
        }
    }
}

/// The string starting at `i` and the index after it, when it has no escape or control
/// character.
fn plain_string(text: &str, i: usize) -> Option<(&str, usize)> {
    let b = text.as_bytes();
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let end = start + memchr::memchr2(b'"', b'\\', b.get(start..)?)?;
    // Without an early exit the check runs on whole words; a control character is rare.
    let controls = b[start..end]
        .iter()
        .fold(false, |seen, &c| seen | (c < 0x20));
    if controls {
        return None;
    }
    if b[end] != b'"' {
        return None;
    }
    // Quotes are ASCII: both ends are character boundaries.
    Some((text.get(start..end)?, end + 1))
}

/// The first index at or after `i` that is not JSON whitespace.
fn after_space(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn serde(text: &str) -> Meta<'_> {
        serde_json::from_str(text).unwrap_or_default()
    }

    #[test]
    fn reads_what_the_command_api_writes() {
        let text = r#"{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","correlation_id":"c-1","actor":"u","role":"customer"}"#;
        let m = flat(text).unwrap();
        assert_eq!(
            m.traceparent.as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(m.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(Meta::of(text), m);
    }

    #[test]
    fn leaves_other_shapes_to_serde() {
        for text in [
            r#"{"correlation_id":"a\"b"}"#,
            r#"{"correlation_id":"c","n":1}"#,
            r#"{"correlation_id":"c","correlation_id":"d"}"#,
            r#"{"correlation_id":"c",}"#,
            r#"{"correlation_id":"c"} x"#,
            "[]",
            "",
        ] {
            assert_eq!(flat(text), None, "{text}");
        }
        assert_eq!(
            Meta::of(r#"{"correlation_id":"a\"b"}"#)
                .correlation_id
                .as_deref(),
            Some("a\"b")
        );
        assert_eq!(
            Meta::of(r#"{"correlation_id":"c","n":{"x":[1]}}"#)
                .correlation_id
                .as_deref(),
            Some("c")
        );
        assert_eq!(Meta::of("not json"), Meta::default());
    }

    /// JSON-ish text built from pieces that make valid and invalid objects alike.
    fn texts() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just(",".to_owned()),
            Just(":".to_owned()),
            Just(" ".to_owned()),
            Just("\"correlation_id\"".to_owned()),
            Just("\"traceparent\"".to_owned()),
            Just("\"actor\"".to_owned()),
            Just("1".to_owned()),
            "\"[a-z\\\\\"\u{1}é-]{0,6}\"",
        ];
        prop::collection::vec(piece, 0..14).prop_map(|p| p.concat())
    }

    /// Objects of names and strings, as metadata is written, in any order.
    fn objects() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("correlation_id".to_owned()),
            Just("traceparent".to_owned()),
            "[a-z_]{1,8}",
        ];
        prop::collection::vec((name, "[ -~é\u{1}]{0,12}"), 0..5).prop_map(|entries| {
            let body: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}:{}", serde_json::json!(k), serde_json::json!(v)))
                .collect();
            format!("{{{}}}", body.join(","))
        })
    }

    proptest! {
        #[test]
        fn agrees_with_serde_on_any_text(text in texts()) {
            prop_assert_eq!(Meta::of(&text), serde(&text));
        }

        #[test]
        fn agrees_with_serde_on_objects(text in objects()) {
            prop_assert_eq!(Meta::of(&text), serde(&text));
        }
    }
}
