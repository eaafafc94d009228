//! Times and durations as people read and write them, in one place: booking lengths
//! written the Go way (`90m`, `1h30m`, `45s`, as in `spec.duration`), parsed and printed,
//! and the short UTC times and hour counts of messages, tables and reports.

use std::fmt::Write as _;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// Why a duration string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: write it like 30m, 2h or 1h30m (units h, m, s)")]
pub struct InvalidDuration(pub String);

/// Parses a sequence of `<number><unit>` pairs with units `h`, `m`, `s` (whole numbers).
/// The CRD's CEL rule accepts the same language, so a stored object always parses.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidDuration> {
    let bad = || InvalidDuration(text.to_owned());
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit = match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// A duration the way `spec.duration` and `idleTimeout` are written: `2h`, `1h30m`, `45s`
/// (what [`parse_duration`] reads back).
pub fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if m > 0 {
        let _ = write!(out, "{m}m");
    }
    if sec > 0 || out.is_empty() {
        let _ = write!(out, "{sec}s");
    }
    out
}

/// A booking length as people read it in messages (`of 4h`, `of 1h 30m`), or that it has
/// none.
pub fn show_length(duration: Option<Duration>) -> String {
    match duration.and_then(|d| SignedDuration::try_from(d).ok()) {
        Some(d) => format!("of {d:#}"),
        None => "with no end".to_owned(),
    }
}

/// `t` to the minute, UTC, as in messages about periods and stops: `2026-12-01T00:00Z`.
pub fn short_utc(t: Timestamp) -> String {
    t.to_zoned(TimeZone::UTC)
        .strftime("%Y-%m-%dT%H:%MZ")
        .to_string()
}

/// A time as people read it in messages about windows: minutes when the seconds are zero
/// (`2026-12-01T13:00Z`), seconds otherwise.
pub fn show_time(t: Timestamp) -> String {
    if t.as_second() % 60 == 0 && t.subsec_nanosecond() == 0 {
        t.strftime("%Y-%m-%dT%H:%MZ").to_string()
    } else {
        t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    }
}

/// The calendar month (UTC) of `t` as usage records and reports name it: `2026-11`.
pub fn month_of(t: Timestamp) -> String {
    t.to_zoned(TimeZone::UTC).strftime("%Y-%m").to_string()
}

/// Reads an optional timestamp that the apiserver may have let through malformed: it
/// accepts an array for a nullable `date-time` string (seen with Kubernetes 1.37), and one
/// object the controller cannot decode would stop its watch of every GpuInstance. Such a
/// value reads as absent; a string that is no RFC 3339 time (the schema refuses those) is
/// an error as before.
pub fn lenient_timestamp<'de, D>(d: D) -> Result<Option<Timestamp>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::Deserialize;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
        _ => Ok(None),
    }
}

/// A count of hours for messages: whole numbers without decimals (`100`), others with
/// one (`3.5`), so that limits read as written and figures stay short.
pub fn hours_text(h: f64) -> String {
    if h.fract() == 0.0 && h.abs() < 1e15 {
        format!("{h:.0}")
    } else {
        format!("{h:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("2h0m10s"), Ok(Duration::from_secs(7210)));
    }

    #[test]
    fn rejects_what_the_crd_rejects() {
        for s in [
            "",
            "10",
            "h",
            "1.5h",
            "1d",
            "-1h",
            "1h 30m",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?}");
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn texts_for_people() {
        assert_eq!(short_utc(ts("2026-12-01T00:00:59Z")), "2026-12-01T00:00Z");
        assert_eq!(show_time(ts("2026-12-01T13:00:00Z")), "2026-12-01T13:00Z");
        assert_eq!(
            show_time(ts("2026-12-01T13:00:05Z")),
            "2026-12-01T13:00:05Z"
        );
        assert_eq!(month_of(ts("2026-11-30T23:59:59Z")), "2026-11");
        assert_eq!(hours_text(100.0), "100");
        assert_eq!(hours_text(3.5), "3.5");
        assert_eq!(hours_text(3.46), "3.5");
    }

    #[test]
    fn go_durations_read_back() {
        for secs in [0, 1, 59, 60, 3600, 5400, 7210, 86_400 * 30] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse_duration(&go_duration(d)), Ok(d), "{secs}");
        }
        assert_eq!(go_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(show_length(Some(Duration::from_secs(5400))), "of 1h 30m");
        assert_eq!(show_length(None), "with no end");
    }

    #[test]
    fn a_start_time_the_apiserver_let_through_malformed_reads_as_absent() {
        let spec = |t: serde_json::Value| {
            serde_json::from_value::<crate::v1::GpuInstanceSpec>(serde_json::json!({
                "gpu": {"model": "M", "count": 1}, "image": "x", "duration": "1h", "startTime": t}))
        };
        assert_eq!(
            spec(serde_json::json!(["a", 1, null])).unwrap().start_time,
            None
        );
        assert_eq!(spec(serde_json::json!(null)).unwrap().start_time, None);
        let at = spec(serde_json::json!("2026-12-01T13:00:00Z"))
            .unwrap()
            .start_time;
        assert_eq!(at, Some("2026-12-01T13:00:00Z".parse().unwrap()));
        assert!(spec(serde_json::json!("not a time")).is_err());
    }
}
