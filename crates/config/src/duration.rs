//! Durations as operators write them: `200ms`, `9s`, `1.5s`, `2m`, `1h`.

use std::time::Duration;

/// Parses a duration with a unit suffix (`ms`, `s`, `m`, `h`). A bare number
/// is refused, since it is ambiguous between seconds and milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} has no unit; write it like 200ms, 9s, 2m or 1h"))?;
    let (num, unit) = t.split_at(split);
    let nanos_per_unit: u128 = match unit.trim() {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        other => {
            return Err(format!(
                "{text:?} has unknown unit {other:?}; use ms, s, m or h"
            ))
        }
    };
    let bad = || format!("{text:?} is not a duration; write it like 200ms, 9s, 2m or 1h");
    let (whole, frac) = match num.split_once('.') {
        Some((w, f)) => (w, f),
        None => (num, ""),
    };
    if whole.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 9 {
        return Err(bad());
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac_nanos: u128 = if frac.is_empty() {
        0
    } else {
        let digits: u128 = frac.parse().map_err(|_| bad())?;
        digits * nanos_per_unit / 10u128.pow(frac.len() as u32)
    };
    let nanos = whole
        .checked_mul(nanos_per_unit)
        .and_then(|n| n.checked_add(frac_nanos))
        .filter(|n| *n <= u64::MAX as u128)
        .ok_or_else(|| format!("{text:?} is too long"))?;
    Ok(Duration::from_nanos(nanos as u64))
}

/// Formats a duration the way it would be written in the config.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}us", d.as_micros())
    } else if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = [
            ("200ms", 200),
            ("9s", 9000),
            ("1.5s", 1500),
            (".5s", 500),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("0s", 0),
            (" 3s ", 3000),
        ];
        for (t, ms) in ok {
            assert_eq!(parse_duration(t), Ok(Duration::from_millis(ms)), "{t}");
        }
        for (t, want) in [
            ("90", "has no unit"),
            ("5d", "unknown unit"),
            ("1.2.3s", "not a duration"),
            ("s", "not a duration"),
            ("-1s", "has unknown unit"),
            ("99999999999999999999h", "too long"),
        ] {
            let err = parse_duration(t).unwrap_err();
            assert!(err.contains(want), "{t}: {err}");
        }
    }

    #[test]
    fn format_round_trips() {
        for t in ["200ms", "9s", "2m", "1h", "0s", "1500ms"] {
            assert_eq!(format_duration(parse_duration(t).unwrap()), t);
        }
    }
}
