//! Durations written for people: `"250ms"`, `"90s"`, `"5m"`, `"1h30m"`, `"5d"`.
//!
//! A bare number is refused (is `10` seconds or milliseconds?), and so are fractions and
//! spaces, so that every spelling has one meaning.

use std::fmt;
use std::time::Duration;

use serde::Deserializer;

/// Parse a duration written for people: one or more `<integer><unit>` parts, units `ms`, `s`,
/// `m`, `h`, `d`, e.g. `"250ms"`, `"90s"`, `"5m"`, `"1h30m"`, `"5d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let expected = "expected a whole number and a unit (ms, s, m, h, d), e.g. \"90s\", \"5m\", \"1h30m\"";
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty duration: {expected}"));
    }
    let mut rest = t;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{s:?} is not a duration: {expected}"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("{s:?} is too large a duration"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let ms_per_unit: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("{s:?} has no unit: {expected}")),
            other => return Err(format!("{s:?} has an unknown unit {other:?}: {expected}")),
        };
        rest = &rest[unit_len..];
        let ms = n.checked_mul(ms_per_unit).ok_or_else(|| format!("{s:?} is too large a duration"))?;
        total = total.checked_add(Duration::from_millis(ms)).ok_or_else(|| format!("{s:?} is too large a duration"))?;
    }
    Ok(total)
}

/// The shortest exact spelling of a duration in the units [`parse_duration`] reads.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms > 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Serde `deserialize_with` for a [`Duration`] field written as [`parse_duration`] reads it; a
/// bare number is refused with a hint to add a unit.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"90s\", \"5m\", \"1h\", \"5d\" or \"250ms\"")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Duration, E> {
            parse_duration(s).map_err(E::custom)
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Duration, E> {
            Err(E::custom(format!("a bare number ({n}) has no unit: write a duration string such as \"{n}s\"")))
        }
    }
    d.deserialize_any(V)
}

/// [`deserialize`] for an `Option<Duration>` field (with `#[serde(default)]`: absent is `None`).
pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("250ms"), Duration::from_millis(250));
        assert_eq!(d("90s"), Duration::from_secs(90));
        assert_eq!(d("5m"), Duration::from_secs(300));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(d("5d"), Duration::from_secs(5 * 86_400));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d(" 0s "), Duration::ZERO);
        for bad in ["", "5", "s", "5x", "1.5h", "-5s", "5 s", "5S", "99999999999999999999s", "999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        for v in [Duration::from_millis(250), Duration::from_secs(90), Duration::from_secs(3600), Duration::ZERO] {
            assert_eq!(parse_duration(&format_duration(v)).unwrap(), v);
        }
    }
}
