//! UTC timestamps in milliseconds: RFC 3339 formatting and parsing, and
//! short durations such as `90s`, `15m`, `1h`, `7d`.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimeError {
    #[error("invalid time {0:?}: expected RFC 3339 (2026-12-04T20:00:00Z) or milliseconds since the Unix epoch")]
    Timestamp(String),
    #[error(
        "invalid duration {0:?}: expected a number with a unit s, m, h or d, such as 15m or 1h"
    )]
    Duration(String),
}

/// Formats milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Parses RFC 3339 (`Z` or a numeric offset, optional fraction) or a plain
/// integer of milliseconds since the epoch.
pub fn parse_timestamp(text: &str) -> Result<u64, TimeError> {
    let err = || TimeError::Timestamp(text.to_owned());
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| err());
    }

    let bytes = text.as_bytes();
    if bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
    {
        return Err(err());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, TimeError> {
        let part = text.get(range).ok_or_else(err)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        part.parse().map_err(|_| err())
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if bytes[13] != b':'
        || bytes[16] != b':'
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(err());
    }

    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse().map_err(|_| err())?;
        rest = &fraction[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && &rest[3..4] == ":" =>
        {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let hours: i64 = rest[1..3].parse().map_err(|_| err())?;
            let minutes: i64 = rest[4..6].parse().map_err(|_| err())?;
            sign * (hours * 3600 + minutes * 60)
        }
        _ => return Err(err()),
    };

    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    if secs < 0 {
        return Err(err());
    }
    Ok((secs * 1000 + millis) as u64)
}

/// Parses a duration such as `30s`, `15m`, `1h` or `7d` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, TimeError> {
    let err = || TimeError::Duration(text.to_owned());
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (digits, unit) = text.split_at(split);
    let count: u64 = digits.parse().map_err(|_| err())?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(err()),
    };
    count.checked_mul(unit_ms).ok_or_else(err)
}

// Day-count conversions for the proleptic Gregorian calendar, after Howard
// Hinnant's `days_from_civil` / `civil_from_days` algorithms.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips() {
        let ms = 1_796_414_400_123;
        assert_eq!(parse_timestamp(&format_ms(ms)).unwrap(), ms);
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn timestamp_forms_parse() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(parse_timestamp("1970-01-01T01:00:01+01:00").unwrap(), 1000);
        assert_eq!(parse_timestamp("1970-01-01T00:00:01.5Z").unwrap(), 1500);
        assert_eq!(parse_timestamp("12345").unwrap(), 12345);
        assert_eq!(
            parse_timestamp("2024-02-29T00:00:00Z").unwrap(),
            1_709_164_800_000
        );
    }

    #[test]
    fn bad_timestamps_are_rejected() {
        for text in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-01-01",
            "2024-01-01T00:00:00",
        ] {
            assert!(parse_timestamp(text).is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_ms("90s").unwrap(), 90_000);
        assert_eq!(parse_duration_ms("1h").unwrap(), 3_600_000);
        assert_eq!(parse_duration_ms("2d").unwrap(), 172_800_000);
        assert!(parse_duration_ms("1").is_err());
        assert!(parse_duration_ms("h").is_err());
        assert!(parse_duration_ms("5 weeks").is_err());
    }
}
