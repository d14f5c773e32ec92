//! Time helpers both sides use: nanoseconds since the epoch, and RFC 3339
//! as Kubernetes writes it (UTC, whole seconds on output) for the agent
//! (parsing pod status times) and the aggregator (rendering timestamps).

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the epoch of `t` (negative before 1970).
pub fn unix_nanos(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// `"2022-01-27T18:48:33Z"` for `unix_nanos` (fraction truncated, as
/// metav1.Time marshals).
pub fn format_rfc3339(unix_nanos: i64) -> String {
    let mut out = String::with_capacity(20);
    write_rfc3339(&mut out, unix_nanos);
    out
}

/// [`format_rfc3339`], appended to `out` without formatting machinery
/// (it runs for every object of every answer).
pub fn write_rfc3339(out: &mut String, unix_nanos: i64) {
    let secs = unix_nanos.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        use std::fmt::Write;
        let _ = write!(
            out,
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        );
        return;
    }
    let two = |v: i64| [b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8];
    let (y1, y2) = (two(y / 100), two(y % 100));
    let (m, dd) = (two(i64::from(mo)), two(i64::from(d)));
    let (h, mi, se) = (two(rem / 3600), two(rem / 60 % 60), two(rem % 60));
    let b = [
        y1[0], y1[1], y2[0], y2[1], b'-', m[0], m[1], b'-', dd[0], dd[1], b'T', h[0], h[1], b':',
        mi[0], mi[1], b':', se[0], se[1], b'Z',
    ];
    // Only ASCII digits and separators were written.
    out.push_str(std::str::from_utf8(&b).unwrap_or_default());
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` to ns since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())
            .flatten()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start).min(9)..9 {
            nanos *= 10;
        }
    }
    let offset = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            let o = (oh * 60 + om) * 60;
            if tz.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithms, here and in `days_from_civil`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digit writer agrees with `format!` over the whole range it
    /// handles and past both ends of it.
    #[test]
    fn fast_format_matches_the_formatter() {
        let reference = |ns: i64| {
            let secs = ns.div_euclid(1_000_000_000);
            let rem = secs.rem_euclid(86_400);
            let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
            format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
                rem / 3600,
                rem / 60 % 60,
                rem % 60
            )
        };
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Spread over the whole i64 range (years 1677 to 2262) and,
            // divided, around 1970.
            let ns = (x as i64) / if x.is_multiple_of(3) { 1 } else { 1_000 };
            assert_eq!(format_rfc3339(ns), reference(ns), "{ns}");
        }
        for ns in [0, -1, 1_000_000_000, i64::MIN, i64::MAX] {
            assert_eq!(format_rfc3339(ns), reference(ns), "{ns}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_rfc3339(1_643_309_313_999_999_999),
            "2022-01-27T18:48:33Z"
        );
        assert_eq!(
            format_rfc3339(1_633_253_809_720_000_000),
            "2021-10-03T09:36:49Z"
        );
        assert_eq!(
            format_rfc3339(951_782_400 * 1_000_000_000),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn parses() {
        let s = 1_000_000_000;
        assert_eq!(
            parse_rfc3339("2021-10-03T09:18:32Z"),
            Some(1_633_252_712 * s)
        );
        assert_eq!(
            parse_rfc3339("2021-10-03T09:18:32.5Z"),
            Some(1_633_252_712 * s + s / 2)
        );
        assert_eq!(
            parse_rfc3339("2021-10-03T11:18:32+02:00"),
            Some(1_633_252_712 * s)
        );
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400 * s));
        for bad in [
            "",
            "2021-10-03",
            "2021-13-03T09:18:32Z",
            "2021-10-03T09:18:32",
            "2021-10-03T09:18:32.Z",
            "x021-10-03T09:18:32Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn round_trip_over_four_centuries() {
        for secs in (-2_000_000_000i64..9_000_000_000).step_by(86_399 * 37) {
            let n = secs * 1_000_000_000;
            assert_eq!(parse_rfc3339(&format_rfc3339(n)), Some(n));
        }
    }
}
