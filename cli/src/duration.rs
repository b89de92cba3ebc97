//! Durations and points in time as people type them: `500ms`, `30s`, `5m`,
//! `24h`, `7d`, or an RFC 3339 time.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Parses `500ms`, `30s`, `5m`, `24h` or `7d`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (ms, s, m, h or d)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30s or 5m"))?;
    let seconds_per_unit = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (ms, s, m, h or d)"
            ))
        }
    };
    number
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// A time: RFC 3339, or a duration meaning that long ago.
pub fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let ago = parse(text).map_err(|_| {
        format!("--since {text:?}: expected an RFC 3339 time or a duration such as 30m")
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|ago| Utc::now().checked_sub_signed(ago))
        .ok_or_else(|| format!("--since {text:?} is too far back"))
}

/// `d` as the shortest of the units above, for display.
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        _ if secs == 0 || d.subsec_nanos() != 0 => format!("{}ms", d.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit_and_formats_back() {
        for text in ["500ms", "30s", "5m", "23h", "7d"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }

    #[test]
    fn refuses_missing_or_unknown_units() {
        assert!(parse("30").is_err());
        assert!(parse("5w").is_err());
        assert!(parse("m").is_err());
        assert!(parse_since("yesterday").is_err());
    }

    #[test]
    fn since_accepts_rfc3339_and_durations() {
        let time = parse_since("2026-01-02T03:04:05Z").unwrap();
        assert_eq!(time.to_rfc3339(), "2026-01-02T03:04:05+00:00");
        assert!(parse_since("1h").unwrap() < Utc::now());
    }
}
