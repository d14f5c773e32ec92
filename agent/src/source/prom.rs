//! Zero-copy parser for the Prometheus text exposition format (0.0.4), as
//! served by the kubelet's `/metrics/resource`.
//!
//! One line is one sample: `name{label="value",...} value [timestamp_ms]`.
//! Comments (`# HELP`, `# TYPE`, others) and blank lines are skipped, so both
//! the `[ALPHA]` (kubelet ≤ 1.28) and `[STABLE]` (1.29+) payloads parse the
//! same. Names and label text are borrowed from the input; only label values
//! that contain escapes are copied.

use std::borrow::Cow;

/// A malformed line. Carries the 1-based line number for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    pub line: usize,
    pub reason: &'static str,
}

/// Labels a sample keeps as they are found while its line is checked; a
/// sample with more is searched again in its label text when asked.
const KEPT: usize = 4;

/// [`Sample::count`] of a sample whose labels were not read one by one:
/// asked for, they are read from its text.
const UNCOUNTED: usize = usize::MAX;

/// One sample, borrowing from the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// Text between the braces, already validated; empty when there are none.
    labels: &'a str,
    /// The first [`KEPT`] labels, `(key, raw value)`, found by the check.
    kept: [(&'a str, &'a str); KEPT],
    /// How many labels the line has; [`UNCOUNTED`] when its label text
    /// was recognised whole rather than read ([`parse_with_labels`]).
    count: usize,
    pub value: f64,
    /// Milliseconds since the epoch, when the line carries one.
    pub timestamp_ms: Option<i64>,
}

impl<'a> Sample<'a> {
    /// The label text between the braces, as sent (escapes kept).
    pub fn raw_labels(&self) -> &'a str {
        self.labels
    }

    /// Value of label `key` (its first occurrence), unescaped.
    pub fn label(&self, key: &str) -> Option<Cow<'a, str>> {
        let [value] = self.labels([key]);
        value
    }

    /// Values of several labels, unescaped; each is its key's first
    /// occurrence. Lines with up to [`KEPT`] labels (the kubelet's have
    /// three) are answered from what the line's check found.
    pub fn labels<const N: usize>(&self, keys: [&str; N]) -> [Option<Cow<'a, str>>; N] {
        if self.count <= KEPT {
            pick(self.kept[..self.count].iter().copied(), keys)
        } else {
            pick(LabelIter { rest: self.labels }, keys)
        }
    }
}

/// The first value of each of `keys` among `pairs`, unescaped.
fn pick<'a, const N: usize>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    keys: [&str; N],
) -> [Option<Cow<'a, str>>; N] {
    let mut out = [const { None }; N];
    let mut missing = N;
    for (k, v) in pairs {
        if let Some(i) = keys.iter().position(|w| *w == k) {
            if out[i].is_none() {
                out[i] = Some(unescape(v));
                missing -= 1;
                if missing == 0 {
                    break;
                }
            }
        }
    }
    out
}

/// Iterates `(key, raw_value)` over validated label text.
struct LabelIter<'a> {
    rest: &'a str,
}

impl<'a> Iterator for LabelIter<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        let (key, value, rest) = split_label(self.rest).ok().flatten()?;
        self.rest = rest;
        Some((key, value))
    }
}

/// Splits the first `key="value"` off label text. `Ok(None)` at the end.
fn split_label(text: &str) -> Result<Option<(&str, &str, &str)>, &'static str> {
    let text = text.trim_start_matches([' ', '\t', ',']);
    if text.is_empty() {
        return Ok(None);
    }
    let eq = text.find('=').ok_or("label without '='")?;
    let key = text[..eq].trim_end();
    if !is_label_name(key) {
        return Err("invalid label name");
    }
    let after = text[eq + 1..].trim_start();
    let body = after.strip_prefix('"').ok_or("label value not quoted")?;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => {
                let rest = &body[i + 1..];
                let rest = rest.trim_start();
                if !(rest.is_empty() || rest.starts_with(',')) {
                    return Err("junk after label value");
                }
                return Ok(Some((key, &body[..i], rest)));
            }
            _ => i += 1,
        }
    }
    Err("unterminated label value")
}

fn unescape(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

fn is_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b':'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn is_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// What one pass over a label set found.
#[derive(Default)]
struct LabelSet<'a> {
    /// Where the closing `}` is, in the text after the `{`.
    close: usize,
    kept: [(&'a str, &'a str); KEPT],
    count: usize,
}

/// Checks the label set that follows a `{` up to its closing `}`, in one
/// pass, keeping the first [`KEPT`] labels found. Labels are separated by
/// commas, with blanks allowed around each part; the value is quoted and
/// may hold `\` escapes (and so quotes and braces).
fn label_set(inner: &str) -> Result<LabelSet<'_>, &'static str> {
    let b = inner.as_bytes();
    let blank = |c: u8| c == b' ' || c == b'\t';
    let mut set = LabelSet::default();
    let mut i = 0;
    loop {
        while i < b.len() && (blank(b[i]) || b[i] == b',') {
            i += 1;
        }
        match b.get(i) {
            None => return Err("unterminated label set"),
            Some(b'}') => {
                set.close = i;
                return Ok(set);
            }
            Some(_) => {}
        }
        let key_start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let key = &inner[key_start..i];
        while i < b.len() && blank(b[i]) {
            i += 1;
        }
        match b.get(i) {
            Some(b'=') if is_label_name(key) => i += 1,
            Some(b'=') => return Err("invalid label name"),
            None => return Err("label without '='"),
            Some(_) if key.is_empty() => return Err("invalid label name"),
            Some(_) => return Err("label without '='"),
        }
        while i < b.len() && blank(b[i]) {
            i += 1;
        }
        if b.get(i) != Some(&b'"') {
            return Err("label value not quoted");
        }
        i += 1;
        let value_start = i;
        loop {
            let at = b
                .get(i..)
                .and_then(|tail| memchr::memchr2(b'"', b'\\', tail));
            let Some(at) = at else {
                return Err("unterminated label value");
            };
            i += at;
            if b[i] == b'"' {
                break;
            }
            i += 2;
        }
        if set.count < KEPT {
            set.kept[set.count] = (key, &inner[value_start..i]);
        }
        set.count += 1;
        i += 1;
        while i < b.len() && blank(b[i]) {
            i += 1;
        }
        match b.get(i) {
            Some(b',') | Some(b'}') => {}
            None => return Err("unterminated label set"),
            Some(_) => return Err("junk after label value"),
        }
    }
}

/// Where the metric name of `line` ends.
fn name_end(line: &str) -> Option<usize> {
    memchr::memchr3(b'{', b' ', b'\t', line.as_bytes())
}

/// Parses one non-comment, non-blank line.
pub fn parse_line(line: &str) -> Result<Sample<'_>, &'static str> {
    parse_named(line, name_end(line).ok_or("no value")?)
}

/// [`parse_line`] once the name's end is known.
fn parse_named(line: &str, name_end: usize) -> Result<Sample<'_>, &'static str> {
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err("invalid metric name");
    }
    let (labels, set, rest) = if line[name_end..].starts_with('{') {
        let inner = &line[name_end + 1..];
        let set = label_set(inner)?;
        let close = set.close;
        (&inner[..close], set, &inner[close + 1..])
    } else {
        ("", LabelSet::default(), &line[name_end..])
    };
    let (value, timestamp_ms) = value_and_time(rest)?;
    Ok(Sample {
        name,
        labels,
        kept: set.kept,
        count: set.count,
        value,
        timestamp_ms,
    })
}

/// The value and optional timestamp after a sample's name and labels.
fn value_and_time(rest: &str) -> Result<(f64, Option<i64>), &'static str> {
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value: f64 = value.parse().map_err(|_| "invalid value")?;
    let timestamp_ms = match fields.next() {
        Some(ts) => Some(ts.parse::<i64>().map_err(|_| "invalid timestamp")?),
        None => None,
    };
    if fields.next().is_some() {
        return Err("trailing fields");
    }
    Ok((value, timestamp_ms))
}

/// A line of a series whose name is valid (one the caller knows) and
/// whose label text is byte for byte `labels`, the text of a label set
/// already checked (the [`Sample::raw_labels`] of an earlier sample): its
/// labels are not read again, only its value and timestamp. `None` when
/// the line's label text is something else (then [`parse_line`] it).
///
/// Sound because the check of a label set is a function of its bytes: the
/// same bytes up to a `}` close the set at the same place.
pub fn parse_with_labels<'a>(
    line: &'a str,
    name_end: usize,
    labels: &str,
) -> Option<Result<Sample<'a>, &'static str>> {
    let inner = line.get(name_end..)?.strip_prefix('{')?;
    let rest = inner.strip_prefix(labels)?.strip_prefix('}')?;
    Some(value_and_time(rest).map(|(value, timestamp_ms)| Sample {
        name: &line[..name_end],
        labels: &inner[..labels.len()],
        kept: Default::default(),
        count: UNCOUNTED,
        value,
        timestamp_ms,
    }))
}

/// The lines of `text`, split at `\n` (a `\r` before it is blank space
/// to the callers, which trim each line).
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let t = rest?;
        match memchr::memchr(b'\n', t.as_bytes()) {
            Some(i) => {
                rest = Some(&t[i + 1..]);
                Some(&t[..i])
            }
            None => {
                rest = None;
                (!t.is_empty()).then_some(t)
            }
        }
    })
}

/// Iterates the samples of a payload; malformed lines come out as errors
/// and never stop the iteration.
pub fn samples(text: &str) -> impl Iterator<Item = Result<Sample<'_>, LineError>> {
    samples_of(text, |_| Some(())).map(|r| r.map(|(_, s)| s))
}

/// One line of a wanted series, not yet parsed.
#[derive(Debug, Clone, Copy)]
pub struct WantedLine<'a, T> {
    /// 1-based, for logs.
    pub number: usize,
    /// What the caller's `wanted` made of the series name.
    pub kind: T,
    /// The line, without blanks around it.
    pub text: &'a str,
    /// Where the series name ends; `None` when nothing follows it.
    pub name_end: Option<usize>,
}

impl<'a, T> WantedLine<'a, T> {
    /// Parses the line in full.
    pub fn parse(&self) -> Result<Sample<'a>, LineError> {
        match self.name_end {
            Some(end) => parse_named(self.text, end),
            None => Err("no value"),
        }
        .map_err(|reason| self.error(reason))
    }

    /// `reason` as this line's error.
    pub fn error(&self, reason: &'static str) -> LineError {
        LineError {
            line: self.number,
            reason,
        }
    }
}

/// The lines of the series whose name `wanted` maps to `Some`, unparsed;
/// comments, blank lines and every other series are skipped at their name.
pub fn wanted_lines<'a, T>(
    text: &'a str,
    wanted: impl Fn(&str) -> Option<T>,
) -> impl Iterator<Item = WantedLine<'a, T>> {
    split_lines(text).enumerate().filter_map(move |(i, line)| {
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let name_end = name_end(line);
        let kind = wanted(&line[..name_end.unwrap_or(line.len())])?;
        Some(WantedLine {
            number: i + 1,
            kind,
            text: line,
            name_end,
        })
    })
}

/// Like [`samples`], for the series whose name `wanted` maps to `Some`
/// (which comes out with each sample); every other line is skipped at its
/// name, before its labels and value are read (and so is not checked
/// either).
pub fn samples_of<'a, T>(
    text: &'a str,
    wanted: impl Fn(&str) -> Option<T>,
) -> impl Iterator<Item = Result<(T, Sample<'a>), LineError>> {
    wanted_lines(text, wanted).map(|l| l.parse().map(|s| (l.kind, s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_sample_with_timestamp() {
        let s = parse_line("node_cpu_usage_seconds_total 357.35491 1633253809720").unwrap();
        assert_eq!(s.name, "node_cpu_usage_seconds_total");
        assert_eq!(s.value, 357.35491);
        assert_eq!(s.timestamp_ms, Some(1633253809720));
        assert_eq!(s.label("x"), None);
    }

    #[test]
    fn labels_with_escapes_and_braces() {
        let s = parse_line(r#"m{a="x\"}y",b="l1\nl2",c="back\\slash",} 1e+07"#).unwrap();
        assert_eq!(s.label("a").unwrap(), "x\"}y");
        assert_eq!(s.label("b").unwrap(), "l1\nl2");
        assert_eq!(s.label("c").unwrap(), "back\\slash");
        assert_eq!(s.value, 1e7);
        assert_eq!(s.timestamp_ms, None);
    }

    #[test]
    fn special_values() {
        assert!(parse_line("m NaN").unwrap().value.is_nan());
        assert_eq!(parse_line("m +Inf").unwrap().value, f64::INFINITY);
        assert_eq!(parse_line("m -Inf 5").unwrap().timestamp_ms, Some(5));
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in [
            "m",
            "m{a=\"1\"",
            "m{a=1} 1",
            "m{1a=\"x\"} 1",
            "m{a=\"x\" b=\"y\"} 1",
            "m x",
            "m 1 notatime",
            "m 1 2 3",
            "9m 1",
        ] {
            assert!(parse_line(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn several_labels_in_one_pass_take_each_first_occurrence() {
        let s = parse_line(r#"m{pod="p\"q",x="1",namespace="ns",pod="other"} 1"#).unwrap();
        let [pod, ns, missing] = s.labels(["pod", "namespace", "container"]);
        assert_eq!(pod.unwrap(), "p\"q");
        assert_eq!(ns.unwrap(), "ns");
        assert_eq!(missing, None);
        assert_eq!(s.labels(["x"]), [s.label("x")]);
    }

    #[test]
    fn labels_past_the_kept_ones_are_read_from_the_text() {
        let s = parse_line(r#"m{a="1", b = "2",c="3",d="4",e="5\"",a="x"} 1"#).unwrap();
        let [e, a, d, b] = s.labels(["e", "a", "d", "b"]);
        assert_eq!(e.unwrap(), "5\"");
        assert_eq!(a.unwrap(), "1");
        assert_eq!(d.unwrap(), "4");
        assert_eq!(b.unwrap(), "2");
        let few = parse_line(r#"m{ b = "2" ,,a="1",} 1"#).unwrap();
        assert_eq!(few.labels(["a", "b"]), [Some("1".into()), Some("2".into())]);
        assert_eq!(few.raw_labels(), r#" b = "2" ,,a="1","#);
    }

    #[test]
    fn a_known_label_text_is_matched_whole() {
        let known = parse_line(r#"m{a="x\"}",b="y"} 1"#).unwrap();
        let text = known.raw_labels();
        let s = parse_with_labels(r#"m{a="x\"}",b="y"} 5 7"#, 1, text)
            .unwrap()
            .unwrap();
        assert_eq!((s.value, s.timestamp_ms), (5.0, Some(7)));
        assert_eq!(
            s.labels(["b", "a"]),
            [Some("y".into()), Some("x\"}".into())]
        );
        assert_eq!(s.raw_labels(), text);
        for other in [
            r#"m{a="x\"}",b="y",c="z"} 5"#,
            r#"m{a="x\"}",b="yy"} 5"#,
            r#"m{b="y",a="x\"}"} 5"#,
            "m 5",
        ] {
            assert!(parse_with_labels(other, 1, text).is_none(), "{other}");
        }
        assert_eq!(
            parse_with_labels(r#"m{a="x\"}",b="y"} 5 7 8"#, 1, text),
            Some(Err("trailing fields"))
        );
    }

    #[test]
    fn lines_split_at_newlines_with_blanks_trimmed() {
        let text = "a 1\r\n\n  b 2\t\nc 3";
        let got: Vec<_> = wanted_lines(text, |n| Some(n.len())).collect();
        let got: Vec<_> = got.iter().map(|l| (l.number, l.text)).collect();
        assert_eq!(got, [(1, "a 1"), (3, "b 2"), (4, "c 3")]);
    }

    #[test]
    fn unwanted_series_are_skipped_at_their_name() {
        let text = "a 1\nb{x=broken 2\nc{y=\"z\"} 3\nc{ 4\n";
        let got: Vec<_> = samples_of(text, |name| (name != "b").then_some(name.len())).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].as_ref().unwrap().1.name, "a");
        assert_eq!(got[1].as_ref().unwrap().1.label("y").unwrap(), "z");
        assert_eq!(got[2].as_ref().unwrap_err().line, 4);
        // Unfiltered, the broken line is an error like any other.
        assert_eq!(samples(text).filter(Result::is_err).count(), 2);
    }

    #[test]
    fn iteration_skips_comments_and_continues_after_errors() {
        let text = "# HELP a [STABLE] x\n# TYPE a counter\n\na 1\nbad{ 2\nb{x=\"y\"} 3 4\n";
        let got: Vec<_> = samples(text).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap().name, "a");
        assert_eq!(got[1].as_ref().unwrap_err().line, 5);
        assert_eq!(got[2].as_ref().unwrap().timestamp_ms, Some(4));
    }
}
