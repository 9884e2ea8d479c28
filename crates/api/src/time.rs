//! UTC times as the API writes and reads them: RFC 3339 (`2024-05-01T12:00:00.250Z`).
//!
//! Only UTC is written. Reading accepts RFC 3339 with `Z` or a numeric offset, or a plain
//! count of Unix seconds.

use std::time::{SystemTime, UNIX_EPOCH};

use store::calendar::{civil_from_days, days_from_civil};

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    use std::fmt::Write as _;
    // `2026-12-05T05:36:05.327Z`: 24 bytes for years 0-9999, written without growing.
    let mut text = String::with_capacity(24);
    let _ = write!(text, "{}", Rfc3339Ms(ms));
    text
}

/// Unix milliseconds shown (and serialized, as a string) as [`rfc3339_ms`] writes them,
/// without a `String` of their own: the journal writes one into every live-stream event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339Ms(pub i64);

impl std::fmt::Display for Rfc3339Ms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (y, mo, d, h, mi, s) = civil_time(self.0.div_euclid(1000));
        let milli = self.0.rem_euclid(1000);
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
    }
}

impl serde::Serialize for Rfc3339Ms {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339_secs(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = civil_time(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Unix seconds as UTC year, month, day, hour, minute, second.
fn civil_time(secs: i64) -> (i64, u32, u32, i64, i64, i64) {
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    (y, mo, d, sod / 3600, sod % 3600 / 60, sod % 60)
}

fn num(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses RFC 3339 (`2024-05-01T12:00:00Z`, `…T12:00:00.5+02:00`) or Unix seconds into Unix
/// milliseconds.
pub fn parse_time_ms(s: &str) -> Option<i64> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().ok()?.checked_mul(1000);
    }
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let y = i64::from(num(s.get(0..4)?)?);
    let mo = num(s.get(5..7)?)?;
    let d = num(s.get(8..10)?)?;
    let h = i64::from(num(s.get(11..13)?)?);
    let mi = i64::from(num(s.get(14..16)?)?);
    let se = i64::from(num(s.get(17..19)?)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut milli = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let end = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        if end == 0 {
            return None;
        }
        let digits = &frac[..end];
        let padded: String = digits.chars().chain("000".chars()).take(3).collect();
        milli = i64::from(num(&padded)?);
        rest = &frac[end..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let oh = i64::from(num(rest.get(1..3)?)?);
            let om = i64::from(num(rest.get(4..6)?)?);
            sign * (oh * 3600 + om * 60)
        }
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_secs;
    Some(secs * 1000 + milli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_714_564_800_250), "2024-05-01T12:00:00.250Z");
        assert_eq!(rfc3339_secs(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn serializes_as_the_string_it_shows() {
        for ms in [0, -1, 1_714_564_800_250, 4_102_444_799_999] {
            assert_eq!(
                serde_json::to_string(&Rfc3339Ms(ms)).unwrap(),
                format!("\"{}\"", rfc3339_ms(ms))
            );
        }
    }

    #[test]
    fn parses_and_round_trips() {
        for ms in [0, 1_714_564_800_250, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_time_ms(&rfc3339_ms(ms)), Some(ms));
        }
        assert_eq!(
            parse_time_ms("2024-05-01T14:00:00+02:00"),
            Some(1_714_564_800_000)
        );
        assert_eq!(parse_time_ms("1714564800"), Some(1_714_564_800_000));
        assert_eq!(
            parse_time_ms("2024-05-01T12:00:00.5Z"),
            Some(1_714_564_800_500)
        );
    }

    #[test]
    fn refuses_garbage() {
        for s in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+0200",
        ] {
            assert_eq!(parse_time_ms(s), None, "{s}");
        }
    }
}
