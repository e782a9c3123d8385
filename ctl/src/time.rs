//! Timestamps as patronictl prints and parses them: `timestamp()` (local time, 5 fractional
//! digits), `--scheduled` parsing (ISO 8601, local time zone when none is given) and Python's
//! `datetime.isoformat()`.

use std::sync::OnceLock;

use chrono::{DateTime, FixedOffset, Local, NaiveDate, NaiveDateTime, TimeZone, Timelike};
use regex::Regex;

/// patronictl's `timestamp(precision)`: `%Y-%m-%d %H:%M:%S.%f` cut to `precision - 7`
/// characters from the end (6 → five fractional digits, 0 → none).
pub fn format_timestamp(now: NaiveDateTime, precision: usize) -> String {
    let full = now.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    let cut = 7 - precision.min(7);
    full[..full.len() - cut].to_string()
}

/// `timestamp(precision)` for the current local time.
pub fn timestamp(precision: usize) -> String {
    format_timestamp(Local::now().naive_local(), precision)
}

/// Python's `datetime.isoformat()` of an aware datetime: microseconds only when non-zero,
/// offset as `+HH:MM`.
pub fn isoformat(dt: &DateTime<FixedOffset>) -> String {
    let mut s = dt.format("%Y-%m-%dT%H:%M:%S").to_string();
    let micros = dt.nanosecond() / 1000;
    if micros != 0 {
        s.push_str(&format!(".{micros:06}"));
    }
    let off = dt.offset().local_minus_utc();
    let sign = if off < 0 { '-' } else { '+' };
    let off = off.abs();
    s.push_str(&format!("{sign}{:02}:{:02}", off / 3600, (off % 3600) / 60));
    if off % 60 != 0 {
        s.push_str(&format!(":{:02}", off % 60));
    }
    s
}

/// Re-renders a stored timestamp the way Patroni shows it after `dateutil.parser.parse(...)
/// .isoformat()`; unparsable text is returned unchanged.
pub fn python_isoformat(text: &str) -> String {
    match parse_iso(text, &FixedOffset::east_opt(0).expect("zero offset")) {
        Some(dt) => isoformat(&dt),
        None => text.to_string(),
    }
}

fn iso_regex() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(
            r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})(?:[Tt ]+(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?\s*(?:([Zz]|UTC|[+-]\d{1,2}(?::?\d{2})?))?\s*$",
        )
        .expect("regex")
    })
}

/// Parses an ISO 8601 timestamp; without a zone the given default offset's zone applies.
fn parse_iso(text: &str, default: &FixedOffset) -> Option<DateTime<FixedOffset>> {
    parse_iso_with(text, |naive| default.from_local_datetime(&naive).single())
}

fn parse_iso_with(
    text: &str,
    local: impl Fn(NaiveDateTime) -> Option<DateTime<FixedOffset>>,
) -> Option<DateTime<FixedOffset>> {
    let c = iso_regex().captures(text)?;
    let num = |i: usize| c.get(i).map(|m| m.as_str().parse::<u32>().ok());
    let date = NaiveDate::from_ymd_opt(c[1].parse().ok()?, c[2].parse().ok()?, c[3].parse().ok()?)?;
    let h = num(4).unwrap_or(Some(0))?;
    let mi = num(5).unwrap_or(Some(0))?;
    let s = num(6).unwrap_or(Some(0))?;
    let micros = match c.get(7) {
        Some(f) => {
            let digits: String = f.as_str().chars().chain("000000".chars()).take(6).collect();
            digits.parse::<u32>().ok()?
        }
        None => 0,
    };
    let naive = date.and_hms_micro_opt(h, mi, s, micros)?;
    match c.get(8).map(|m| m.as_str()) {
        None => local(naive),
        Some("Z" | "z" | "UTC") => Some(
            FixedOffset::east_opt(0)?
                .from_local_datetime(&naive)
                .single()?,
        ),
        Some(tz) => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            let body: String = tz[1..].chars().filter(|c| *c != ':').collect();
            let (hh, mm) = if body.len() <= 2 {
                (body.parse::<i32>().ok()?, 0)
            } else {
                let (a, b) = body.split_at(body.len() - 2);
                (a.parse::<i32>().ok()?, b.parse::<i32>().ok()?)
            };
            let off = FixedOffset::east_opt(sign * (hh * 3600 + mm * 60))?;
            off.from_local_datetime(&naive).single()
        }
    }
}

/// patronictl's `parse_scheduled`: `None` for absent, empty or `now`; otherwise the timestamp
/// (local time zone when none is given) or patronictl's error text.
pub fn parse_scheduled(text: Option<&str>) -> Result<Option<DateTime<FixedOffset>>, String> {
    let Some(t) = text else { return Ok(None) };
    if t.is_empty() || t == "now" {
        return Ok(None);
    }
    parse_iso_with(t, |naive| {
        Local
            .from_local_datetime(&naive)
            .earliest()
            .map(|d| d.fixed_offset())
    })
    .map(Some)
    .ok_or_else(|| {
        format!(
            "Unable to parse scheduled timestamp ({t}). It should be in an unambiguous format (e.g. ISO 8601)"
        )
    })
}

/// `(datetime.now() + timedelta(hours=1)).strftime('%Y-%m-%dT%H:%M')`: the example in the
/// "When should the ... take place" prompts.
pub fn next_hour_example() -> String {
    (Local::now() + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_like_patronictl() {
        let t = NaiveDate::from_ymd_opt(2024, 1, 2)
            .unwrap()
            .and_hms_micro_opt(3, 4, 5, 123456)
            .unwrap();
        assert_eq!(format_timestamp(t, 6), "2024-01-02 03:04:05.12345");
        assert_eq!(format_timestamp(t, 0), "2024-01-02 03:04:05");
    }

    #[test]
    fn isoformat_like_python() {
        assert_eq!(
            python_isoformat("2030-01-02T03:04:05+00:00"),
            "2030-01-02T03:04:05+00:00"
        );
        assert_eq!(
            python_isoformat("2016-01-14T10:09:57.1394Z"),
            "2016-01-14T10:09:57.139400+00:00"
        );
        assert_eq!(
            python_isoformat("2024-05-01 12:00+0200"),
            "2024-05-01T12:00:00+02:00"
        );
        assert_eq!(python_isoformat("garbage"), "garbage");
    }

    #[test]
    fn scheduled_parsing() {
        assert_eq!(parse_scheduled(None), Ok(None));
        assert_eq!(parse_scheduled(Some("now")), Ok(None));
        assert_eq!(parse_scheduled(Some("")), Ok(None));
        let d = parse_scheduled(Some("2023-05-29T04:32:31-3"))
            .unwrap()
            .unwrap();
        assert_eq!(isoformat(&d), "2023-05-29T04:32:31-03:00");
        let d = parse_scheduled(Some("2023-05-29T04:32")).unwrap().unwrap();
        assert!(isoformat(&d).starts_with("2023-05-29T04:32:00"));
        assert!(parse_scheduled(Some("tomorrow"))
            .unwrap_err()
            .starts_with("Unable to parse scheduled timestamp (tomorrow)."));
    }
}
