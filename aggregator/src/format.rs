//! Kubernetes wire formatting of the values metrics.k8s.io serves:
//! canonical resource quantities, Go duration strings and RFC 3339 times.

use std::fmt::Write;

/// CPU in canonical DecimalSI from nanocores: `"487558164n"`, `"100m"`,
/// `"1500m"`, `"2"`, `"0"`.
pub fn cpu_quantity(nanocores: u64) -> String {
    let mut out = String::new();
    write_cpu_quantity(&mut out, nanocores);
    out
}

/// [`cpu_quantity`], appended to `out`.
pub fn write_cpu_quantity(out: &mut String, nanocores: u64) {
    let (value, scale) = fit_i64(nanocores, -9);
    decimal_si(out, value, scale);
}

/// Memory in canonical BinarySI from bytes: `"732212Ki"`, `"1Gi"`, plain
/// bytes when not a multiple of 1024, and DecimalSI below 1024 (`"1k"`), as
/// resource.Quantity prints them.
pub fn memory_quantity(bytes: u64) -> String {
    let mut out = String::new();
    write_memory_quantity(&mut out, bytes);
    out
}

/// [`memory_quantity`], appended to `out`.
pub fn write_memory_quantity(out: &mut String, bytes: u64) {
    let (value, scale) = fit_i64(bytes, 0);
    if value < 1024 || scale != 0 {
        return decimal_si(out, value, scale);
    }
    let (mut v, mut exp) = (value, 0usize);
    while v % 1024 == 0 {
        v /= 1024;
        exp += 1;
    }
    const SUFFIX: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    write_u64(out, v.unsigned_abs());
    out.push_str(SUFFIX[exp.min(6)]);
}

/// metrics-server's uint64Quantity: values above i64::MAX lose one decimal
/// digit to fit.
fn fit_i64(v: u64, scale: i32) -> (i64, i32) {
    match i64::try_from(v) {
        Ok(v) => (v, scale),
        Err(_) => ((v / 10) as i64, scale + 1),
    }
}

fn decimal_si(out: &mut String, value: i64, scale: i32) {
    if value == 0 {
        out.push('0');
        return;
    }
    // i128: lowering the exponent to a multiple of 3 may not fit an i64.
    let (mut v, mut exp) = (i128::from(value), scale);
    while v % 10 == 0 {
        v /= 10;
        exp += 1;
    }
    match exp.rem_euclid(3) {
        1 => {
            v *= 10;
            exp -= 1;
        }
        2 => {
            v *= 100;
            exp -= 2;
        }
        _ => {}
    }
    let suffix = match exp {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        _ => {
            let _ = write!(out, "{v}e{exp}");
            return;
        }
    };
    match u64::try_from(v) {
        Ok(v) => write_u64(out, v),
        Err(_) => {
            let _ = write!(out, "{v}");
        }
    }
    out.push_str(suffix);
}

/// A quantity as written by [`cpu_quantity`] and [`memory_quantity`] (and
/// resource.Quantity in general: decimal and binary suffixes, exponents,
/// fractions) in billionths of its unit, so that CPU comes out in
/// nanocores. `None` for anything else, or for values beyond ±10^28 units.
pub fn parse_quantity_nanos(s: &str) -> Option<i128> {
    let (number, suffix) = s.split_at(
        s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
            .unwrap_or(s.len()),
    );
    let (neg, digits) = match number.as_bytes().first()? {
        b'-' => (true, &number[1..]),
        b'+' => (false, &number[1..]),
        _ => (false, number),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
        || whole.len() + fraction.len() > 30
    {
        return None;
    }
    // mantissa × 10^exp10 × 2^exp2 units, in nano-units.
    // At most 30 digits, checked above: no overflow, but checked anyway.
    let mut mantissa = whole
        .bytes()
        .chain(fraction.bytes())
        .try_fold(0i128, |m, d| {
            m.checked_mul(10)?.checked_add(i128::from(d - b'0'))
        })?;
    let mut exp10 = 9 - i32::try_from(fraction.len()).ok()?;
    let exp2: u32 = match suffix {
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        "Ti" => 40,
        "Pi" => 50,
        "Ei" => 60,
        _ => {
            exp10 += match suffix {
                "n" => -9,
                "u" => -6,
                "m" => -3,
                "" => 0,
                "k" => 3,
                "M" => 6,
                "G" => 9,
                "T" => 12,
                "P" => 15,
                "E" => 18,
                e => e
                    .strip_prefix(['e', 'E'])
                    .and_then(|x| x.parse::<i32>().ok())
                    .filter(|x| x.abs() <= 30)?,
            };
            0
        }
    };
    mantissa = mantissa.checked_mul(1i128.checked_shl(exp2)?)?;
    while exp10 > 0 {
        mantissa = mantissa.checked_mul(10)?;
        exp10 -= 1;
    }
    while exp10 < 0 {
        // Below a nano-unit: round up, as resource.Quantity does.
        let rounded_up = mantissa % 10 != 0;
        mantissa = mantissa / 10 + i128::from(rounded_up);
        exp10 += 1;
    }
    if mantissa > 10i128.pow(37) {
        return None;
    }
    Some(if neg { -mantissa } else { mantissa })
}

/// Go's `time.Duration.String()`: `"15s"`, `"20.064s"`, `"1m0s"`,
/// `"1h2m3.5s"`, `"500ms"`, `"0s"`.
pub fn go_duration(nanos: i64) -> String {
    let mut out = String::new();
    write_go_duration(&mut out, nanos);
    out
}

/// [`go_duration`], appended to `out` without formatting machinery.
pub fn write_go_duration(out: &mut String, nanos: i64) {
    let u = nanos.unsigned_abs();
    if nanos < 0 {
        out.push('-');
    }
    if u < 1_000_000_000 {
        match u {
            0 => out.push_str("0s"),
            1..=999 => {
                write_u64(out, u);
                out.push_str("ns");
            }
            1_000..=999_999 => {
                write_u64(out, u / 1_000);
                write_frac(out, u % 1_000, 3);
                out.push_str("µs");
            }
            _ => {
                write_u64(out, u / 1_000_000);
                write_frac(out, u % 1_000_000, 6);
                out.push_str("ms");
            }
        }
        return;
    }
    let secs = u / 1_000_000_000;
    let (h, m, sec) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        write_u64(out, h);
        out.push('h');
    }
    if h > 0 || m > 0 {
        write_u64(out, m);
        out.push('m');
    }
    write_u64(out, sec);
    write_frac(out, u % 1_000_000_000, 9);
    out.push('s');
}

/// Appends `v` in decimal.
fn write_u64(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// Appends `.ddd` for the fraction `f / 10^prec`, without trailing zeros;
/// nothing when it is zero.
fn write_frac(out: &mut String, mut f: u64, mut prec: u32) {
    if f == 0 {
        return;
    }
    while f.is_multiple_of(10) {
        f /= 10;
        prec -= 1;
    }
    let mut buf = [b'0'; 9];
    let width = prec as usize;
    let mut i = width;
    while f > 0 && i > 0 {
        i -= 1;
        buf[i] = b'0' + (f % 10) as u8;
        f /= 10;
    }
    out.push('.');
    out.push_str(std::str::from_utf8(&buf[..width]).unwrap_or_default());
}

/// RFC 3339 in UTC with whole seconds, as metav1.Time marshals:
/// `"2022-01-27T18:48:33Z"`.
pub use metrics_proto::time::format_rfc3339 as rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        let cases = [
            (0, "0"),
            (487_558_164, "487558164n"),
            (100_000_000, "100m"),
            (1_500_000_000, "1500m"),
            (2_000_000_000, "2"),
            (1_000, "1u"),
            (10_000, "10u"),
            (120_000_000_000, "120"),
            (3_000_000_000_000, "3k"),
            (9_559_630, "9559630n"),
            (u64::MAX, "18446744073709551610n"),
        ];
        for (n, want) in cases {
            assert_eq!(cpu_quantity(n), want, "{n}");
        }
    }

    #[test]
    fn memory_quantities() {
        let cases = [
            (0, "0"),
            (1_616_273_408, "1578392Ki"),
            (12_533_760, "12240Ki"),
            (749_785_088, "732212Ki"),
            (1 << 30, "1Gi"),
            (1_616_273_409, "1616273409"),
            (1_000, "1k"),
            (500, "500"),
            (1023, "1023"),
            (1024, "1Ki"),
        ];
        for (n, want) in cases {
            assert_eq!(memory_quantity(n), want, "{n}");
        }
    }

    #[test]
    fn quantities_parse_back_to_what_was_written() {
        for n in [
            0u64,
            1,
            999,
            1_000,
            100_000_000,
            487_558_164,
            1_500_000_000,
            u64::MAX / 10,
        ] {
            assert_eq!(
                parse_quantity_nanos(&cpu_quantity(n)),
                Some(i128::from(n)),
                "{n}"
            );
        }
        for b in [0u64, 1, 1000, 1024, 1536, 749_785_088, 1 << 30, 5 << 40] {
            assert_eq!(
                parse_quantity_nanos(&memory_quantity(b)),
                Some(i128::from(b) * 1_000_000_000),
                "{b}"
            );
        }
        assert_eq!(parse_quantity_nanos("1.5"), Some(1_500_000_000));
        assert_eq!(parse_quantity_nanos("2e3"), Some(2_000_000_000_000));
        assert_eq!(parse_quantity_nanos("0.5n"), Some(1));
        for bad in ["", "m", "1x", "1.2.3", "--1", "1e99", "Ki"] {
            assert_eq!(parse_quantity_nanos(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn go_durations() {
        let s = 1_000_000_000i64;
        let cases = [
            (0, "0s"),
            (15 * s, "15s"),
            (20_064_000_000, "20.064s"),
            (60 * s, "1m0s"),
            (3600 * s, "1h0m0s"),
            (3723 * s + s / 2, "1h2m3.5s"),
            (500_000_000, "500ms"),
            (1_500, "1.5µs"),
            (7, "7ns"),
            (-15 * s, "-15s"),
            (s + 1, "1.000000001s"),
            (1_000_010, "1.00001ms"),
            (999_999_999, "999.999999ms"),
            (59 * s + 100_000_000, "59.1s"),
            (i64::MAX, "2562047h47m16.854775807s"),
            (i64::MIN + 1, "-2562047h47m16.854775807s"),
        ];
        for (n, want) in cases {
            assert_eq!(go_duration(n), want, "{n}");
        }
    }
}
