//! Booking lengths written the Go way (`90m`, `1h30m`, `45s`), as in `spec.duration`.

use std::time::Duration;

/// Why a duration string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: write it like 30m, 2h or 1h30m (units h, m, s)")]
pub struct InvalidDuration(pub String);

/// Parses a sequence of `<number><unit>` pairs with units `h`, `m`, `s` (whole numbers).
/// The CRD's CEL rule accepts the same language, so a stored object always parses.
pub fn parse(text: &str) -> Result<Duration, InvalidDuration> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse("2h0m10s"), Ok(Duration::from_secs(7210)));
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
            assert!(parse(s).is_err(), "{s:?}");
        }
    }
}
