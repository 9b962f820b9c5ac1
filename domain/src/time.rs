//! Event times written and read without chrono's general machinery: every event is written
//! once and read by every follower, and chrono's `Display`-based writer and its general
//! RFC 3339 parser (a `Parsed` of every field, then its consistency checks) were the largest
//! part of encoding and decoding a payload. The shape chrono writes is written and read by
//! position, byte for byte the same; anything else goes to chrono, so what is written and
//! accepted is unchanged.
//!
//! On a field: `#[serde(serialize_with = "crate::time::write", deserialize_with =
//! "crate::time::read")]`, or `write_opt`/`read_opt` (with `default`) on an `Option`.

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, TimeZone, Timelike, Utc};
use serde::{Deserializer, Serialize, Serializer, de};

/// The longest text [`written_as`] makes: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const LONGEST: usize = 30;

/// `t` as chrono's serde writes it (`2026-12-07T10:00:00.123Z`: the fraction in 3, 6 or 9
/// digits when there is one), written in `out`; `None` for a leap second or a year outside
/// 0..=9999, left to chrono.
fn written_as<'a>(t: &DateTime<Utc>, out: &'a mut [u8; LONGEST]) -> Option<&'a str> {
    let (date, time) = (t.date_naive(), t.time());
    let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = time.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let put = |out: &mut [u8], mut n: u32| {
        for b in out.iter_mut().rev() {
            // A digit: n % 10 < 10.
            *b = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    *out = *b"0000-00-00T00:00:00.000000000Z";
    put(&mut out[0..4], year);
    put(&mut out[5..7], date.month());
    put(&mut out[8..10], date.day());
    put(&mut out[11..13], time.hour());
    put(&mut out[14..16], time.minute());
    put(&mut out[17..19], time.second());
    let (fraction, digits) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    let end = if digits == 0 {
        19
    } else {
        put(&mut out[20..20 + digits], fraction);
        20 + digits
    };
    out[end] = b'Z';
    // Digits and separators only: always UTF-8.
    std::str::from_utf8(&out[..=end]).ok()
}

/// Appends `t` to the second (`2026-12-01T00:00:00Z`, chrono's `%Y-%m-%dT%H:%M:%SZ`) to
/// `out`: usage ledgers are named by their period's start, on every submission.
pub fn push_seconds(out: &mut String, t: &DateTime<Utc>) {
    let mut text = [0; LONGEST];
    let whole = t
        .with_nanosecond(0)
        .filter(|_| t.nanosecond() < 1_000_000_000);
    match whole.and_then(|w| written_as(&w, &mut text)) {
        Some(s) => out.push_str(s),
        None => {
            use std::fmt::Write;
            let _ = write!(out, "{}", t.format("%Y-%m-%dT%H:%M:%SZ"));
        }
    }
}

/// For `serialize_with`: writes `t` exactly as chrono's serde does.
///
/// # Errors
/// The serializer's.
pub fn write<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut out = [0; LONGEST];
    match written_as(t, &mut out) {
        Some(text) => s.serialize_str(text),
        None => t.serialize(s),
    }
}

/// For `serialize_with` on an `Option<DateTime<Utc>>`.
///
/// # Errors
/// The serializer's.
pub fn write_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&Written(t)),
        None => s.serialize_none(),
    }
}

struct Written<'a>(&'a DateTime<Utc>);

impl Serialize for Written<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write(self.0, s)
    }
}

/// Parses an RFC 3339 time as chrono's `DateTime<Utc>` deserializer does.
///
/// # Errors
/// chrono's, when `text` is not an RFC 3339 time.
pub fn parse(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    written(text).map_or_else(|| text.parse(), Ok)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, as chrono writes a `DateTime<Utc>`; `None` for any
/// other shape (offsets, leap seconds, lowercase letters, spaces), left to chrono.
fn written(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    let (head, tail) = b.split_at_checked(19)?;
    if head[4] != b'-'
        || head[7] != b'-'
        || head[10] != b'T'
        || head[13] != b':'
        || head[16] != b':'
    {
        return None;
    }
    let num = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let nanos = match tail {
        [b'Z'] => 0,
        [b'.', fraction @ .., b'Z'] if (1..=9).contains(&fraction.len()) => {
            num(fraction)? * 10u32.pow(9 - u32::try_from(fraction.len()).ok()?)
        }
        _ => return None,
    };
    let year = i32::try_from(num(&head[0..4])?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, num(&head[5..7])?, num(&head[8..10])?)?;
    let second = num(&head[17..19])?;
    if second > 59 {
        return None;
    }
    let time =
        NaiveTime::from_hms_nano_opt(num(&head[11..13])?, num(&head[14..16])?, second, nanos)?;
    Some(Utc.from_utc_datetime(&date.and_time(time)))
}

struct Visitor;

impl de::Visitor<'_> for Visitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an RFC 3339 time")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        parse(v).map_err(E::custom)
    }
}

/// For `deserialize_with`: reads a time as chrono's serde does.
///
/// # Errors
/// When the value is not an RFC 3339 time.
pub fn read<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    d.deserialize_str(Visitor)
}

/// For `deserialize_with` on an `Option<DateTime<Utc>>`, with `default` (so a missing field
/// is `None`, as without the attribute).
///
/// # Errors
/// When the value is neither null nor an RFC 3339 time.
pub fn read_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    struct Opt;
    impl<'de> de::Visitor<'de> for Opt {
        type Value = Option<DateTime<Utc>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 time or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            read(d).map(Some)
        }
    }
    d.deserialize_option(Opt)
}
