//! Kubernetes label selectors (full syntax) and the field selectors
//! metrics.k8s.io supports (`metadata.name`, `metadata.namespace`).

use std::collections::BTreeMap;

/// A selector that does not parse; becomes a 400 Status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Exists,
    DoesNotExist,
    In(Vec<String>),
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Comma,
    Eq,
    DoubleEq,
    NotEq,
    Bang,
    Open,
    Close,
    Gt,
    Lt,
}

fn lex(s: &str) -> Result<Vec<Tok>, SelectorError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            ',' | '(' | ')' | '<' | '>' => {
                chars.next();
                out.push(match c {
                    ',' => Tok::Comma,
                    '(' => Tok::Open,
                    ')' => Tok::Close,
                    '<' => Tok::Lt,
                    _ => Tok::Gt,
                });
            }
            '=' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    out.push(Tok::DoubleEq);
                } else {
                    out.push(Tok::Eq);
                }
            }
            '!' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    out.push(Tok::NotEq);
                } else {
                    out.push(Tok::Bang);
                }
            }
            _ => {
                let mut ident = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || ",()<>=!".contains(c) {
                        break;
                    }
                    ident.push(c);
                    chars.next();
                }
                out.push(Tok::Ident(ident));
            }
        }
    }
    Ok(out)
}

/// Longest selector text accepted, on every path (query strings and peer
/// queries alike): no selector a client writes comes near it.
pub const MAX_SELECTOR_BYTES: usize = 8 * 1024;

/// Most requirements plus set values in one selector.
pub const MAX_SELECTOR_TERMS: usize = 128;

fn check_size(kind: &str, s: &str) -> Result<(), SelectorError> {
    if s.len() > MAX_SELECTOR_BYTES {
        return Err(err(format!(
            "{kind} selector of {} bytes exceeds the limit of {MAX_SELECTOR_BYTES}",
            s.len()
        )));
    }
    Ok(())
}

fn check_terms(kind: &str, n: usize) -> Result<(), SelectorError> {
    if n > MAX_SELECTOR_TERMS {
        return Err(err(format!(
            "{kind} selector has {n} terms, more than the limit of {MAX_SELECTOR_TERMS}"
        )));
    }
    Ok(())
}

fn err(msg: impl Into<String>) -> SelectorError {
    SelectorError(msg.into())
}

fn validate_key(key: &str) -> Result<(), SelectorError> {
    // The same rules the API server, the agent and ingest apply.
    if metrics_proto::checks::is_label_key(key) {
        Ok(())
    } else {
        Err(err(format!("invalid label key {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")))
    }
}

fn validate_value(v: &str) -> Result<(), SelectorError> {
    if metrics_proto::checks::is_label_value(v) {
        Ok(())
    } else {
        Err(err(format!("invalid label value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")))
    }
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if self.peek() == Some(&Tok::Bang) {
            self.next();
            let key = self.key()?;
            return Ok(Requirement {
                key,
                op: Op::DoesNotExist,
            });
        }
        let key = self.key()?;
        let op = match self.peek() {
            None | Some(Tok::Comma) => Op::Exists,
            Some(Tok::Eq | Tok::DoubleEq) => {
                self.next();
                Op::In(vec![self.single_value()?])
            }
            Some(Tok::NotEq) => {
                self.next();
                Op::NotIn(vec![self.single_value()?])
            }
            Some(Tok::Gt | Tok::Lt) => {
                let gt = self.next() == Some(Tok::Gt);
                let v = self.single_value()?;
                let n: i64 = v.parse().map_err(|_| {
                    err(format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer: {v:?}"
                    ))
                })?;
                if gt {
                    Op::Gt(n)
                } else {
                    Op::Lt(n)
                }
            }
            Some(Tok::Ident(w)) if w == "in" || w == "notin" => {
                let is_in = w == "in";
                self.next();
                let vals = self.set()?;
                if is_in {
                    Op::In(vals)
                } else {
                    Op::NotIn(vals)
                }
            }
            Some(t) => {
                return Err(err(format!(
                    "found '{t:?}', expected: in, notin, =, ==, !=, gt, lt"
                )))
            }
        };
        Ok(Requirement { key, op })
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        match self.next() {
            Some(Tok::Ident(k)) => {
                validate_key(&k)?;
                Ok(k)
            }
            other => Err(err(format!("found '{other:?}', expected: identifier"))),
        }
    }

    fn single_value(&mut self) -> Result<String, SelectorError> {
        let v = match self.peek() {
            None | Some(Tok::Comma) => String::new(),
            Some(Tok::Ident(_)) => match self.next() {
                Some(Tok::Ident(v)) => v,
                _ => String::new(),
            },
            Some(t) => return Err(err(format!("found '{t:?}', expected: identifier"))),
        };
        validate_value(&v)?;
        Ok(v)
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        if self.next() != Some(Tok::Open) {
            return Err(err("expected: '('"));
        }
        let mut vals = Vec::new();
        loop {
            match self.next() {
                Some(Tok::Ident(v)) => {
                    validate_value(&v)?;
                    vals.push(v);
                    match self.next() {
                        Some(Tok::Comma) => continue,
                        Some(Tok::Close) => break,
                        t => return Err(err(format!("found '{t:?}', expected: ',' or ')'"))),
                    }
                }
                Some(Tok::Close) => break,
                t => return Err(err(format!("found '{t:?}', expected: identifier or ')'"))),
            }
        }
        if vals.is_empty() {
            return Err(err(
                "for 'in', 'notin' operators, values set can't be empty",
            ));
        }
        Ok(vals)
    }
}

impl LabelSelector {
    /// Parses `labelSelector` query text.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        check_size("label", s)?;
        let mut p = Parser {
            toks: lex(s)?,
            pos: 0,
        };
        let mut reqs: Vec<Requirement> = Vec::new();
        let mut terms = 0;
        while p.peek().is_some() {
            let r = p.requirement()?;
            terms += 1 + match &r.op {
                Op::In(v) | Op::NotIn(v) => v.len(),
                _ => 0,
            };
            check_terms("label", terms)?;
            reqs.push(r);
            match p.next() {
                None => break,
                Some(Tok::Comma) if p.peek().is_some() => {}
                Some(t) => {
                    return Err(err(format!(
                        "found '{t:?}', expected: ',' or end of string"
                    )))
                }
            }
        }
        Ok(Self { reqs })
    }

    /// True when the selector has no requirement.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// The `key in (values)` requirements (`key=value` included): only an
    /// object carrying one of those pairs can match, so an index of label
    /// pairs can start from any of them.
    pub fn required_pairs(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.reqs.iter().filter_map(|r| match &r.op {
            Op::In(values) => Some((r.key.as_str(), values.as_slice())),
            _ => None,
        })
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Whether the labels `get` looks up satisfy every requirement.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.reqs.iter().all(|r| {
            let v = get(&r.key);
            match &r.op {
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
                Op::In(set) => v.is_some_and(|v| set.iter().any(|s| s == v)),
                Op::NotIn(set) => v.is_none_or(|v| !set.iter().any(|s| s == v)),
                Op::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                Op::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }
}

/// Field selector over `metadata.name` and `metadata.namespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(Field, bool, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
}

/// Splits on unescaped `sep`, keeping escapes for the next stage.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let (mut parts, mut cur, mut esc) = (Vec::new(), String::new(), false);
    for c in s.chars() {
        if esc {
            cur.push('\\');
            cur.push(c);
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else if c == sep {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
}

fn unescape_field(s: &str) -> Result<String, SelectorError> {
    let (mut out, mut esc) = (String::new(), false);
    for c in s.chars() {
        match (esc, c) {
            (true, '\\' | ',' | '=') => {
                out.push(c);
                esc = false;
            }
            (true, _) => {
                return Err(err(format!(
                    "invalid field selector value: invalid escape sequence in {s:?}"
                )))
            }
            (false, '\\') => esc = true,
            (false, _) => out.push(c),
        }
    }
    if esc {
        return Err(err(format!(
            "invalid field selector value: unterminated escape in {s:?}"
        )));
    }
    Ok(out)
}

impl FieldSelector {
    /// Parses `fieldSelector` query text; other fields are an error.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        check_size("field", s)?;
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { terms });
        }
        for term in split_unescaped(s, ',') {
            check_terms("field", terms.len() + 1)?;
            let (key, neg, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, false, v)
            } else {
                return Err(err(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                )));
            };
            let field = match key.trim() {
                "metadata.name" => Field::Name,
                "metadata.namespace" => Field::Namespace,
                other => return Err(err(format!("field label not supported: {other}"))),
            };
            terms.push((field, neg, unescape_field(value.trim())?));
        }
        Ok(Self { terms })
    }

    /// Whether an object with this namespace ("" for nodes) and name matches.
    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        self.terms.iter().all(|(f, neg, v)| {
            let actual = match f {
                Field::Name => name,
                Field::Namespace => namespace,
            };
            (actual == v) != *neg
        })
    }

    /// The single name required by an equality term, if any: lets a list
    /// become a point lookup.
    pub fn required_name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|(f, neg, _)| *f == Field::Name && !neg)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_table() {
        let l = labels(&[
            ("app", "demo2"),
            ("tier", "web"),
            ("n", "5"),
            ("example.com/x", ""),
        ]);
        let cases = [
            ("", true),
            ("app=demo2", true),
            ("app==demo2", true),
            ("app!=demo2", false),
            ("missing!=x", true),
            ("app", true),
            ("!app", false),
            ("!canary", true),
            ("tier in (api,web)", true),
            ("tier notin (api,web)", false),
            ("missing notin (a)", true),
            ("app=demo2,!canary,tier in (api,web)", true),
            (" app = demo2 , tier in ( api , web ) ", true),
            ("n>4", true),
            ("n<5", false),
            ("missing>1", false),
            ("example.com/x=", true),
            ("example.com/x", true),
            ("app=other", false),
        ];
        for (s, want) in cases {
            let sel = LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(sel.matches(&l), want, "{s}");
        }
    }

    #[test]
    fn hpa_form_decoded_selector_parses() {
        // What the HPA sends, after form decoding.
        let sel = LabelSelector::parse("app=demo2,!canary,tier in (api,web)").unwrap();
        assert_eq!(sel.reqs.len(), 3);
    }

    #[test]
    fn label_selector_errors() {
        for s in [
            "app=", "=x", "a in ()", "a in (x", "a in x", "a b", "a=b c", "-bad=x", "a=b,", "a>x",
            "a=(b)", "a=b=c", "x/y/z=1",
        ] {
            if s == "app=" {
                assert!(LabelSelector::parse(s).is_ok(), "empty value is valid");
                continue;
            }
            assert!(LabelSelector::parse(s).is_err(), "{s} should fail");
        }
    }

    #[test]
    fn field_selectors() {
        let f = FieldSelector::parse("metadata.namespace=kube-system,metadata.name!=a").unwrap();
        assert!(f.matches("kube-system", "b"));
        assert!(!f.matches("kube-system", "a"));
        assert!(!f.matches("default", "b"));
        assert_eq!(
            FieldSelector::parse("metadata.name==x")
                .unwrap()
                .required_name(),
            Some("x")
        );
        assert!(FieldSelector::parse("").unwrap().matches("a", "b"));
        let e = FieldSelector::parse("spec.nodeName=n1").unwrap_err();
        assert_eq!(e.0, "field label not supported: spec.nodeName");
        assert!(FieldSelector::parse("metadata.name").is_err());
        assert!(FieldSelector::parse(r"metadata.name=a\,b")
            .unwrap()
            .matches("", "a,b"));
    }
}

#[cfg(test)]
mod limits {
    use super::*;

    #[test]
    fn selectors_are_bounded_in_size_and_terms() {
        let many = (0..MAX_SELECTOR_TERMS + 1)
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let e = LabelSelector::parse(&many).unwrap_err();
        assert!(e.0.contains("more than the limit"), "{}", e.0);
        let set = format!(
            "app in ({})",
            (0..MAX_SELECTOR_TERMS)
                .map(|i| format!("v{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(LabelSelector::parse(&set).is_err(), "set values count too");
        let at_limit = (0..MAX_SELECTOR_TERMS)
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(LabelSelector::parse(&at_limit).is_ok());
        let long = format!("app={}", "a".repeat(MAX_SELECTOR_BYTES));
        let e = LabelSelector::parse(&long).unwrap_err();
        assert!(
            e.0.contains("exceeds the limit") && e.0.len() < 200,
            "{}",
            e.0
        );
        let fields = (0..MAX_SELECTOR_TERMS + 1)
            .map(|i| format!("metadata.name!=n{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(FieldSelector::parse(&fields).is_err());
        let long_field = format!("metadata.name={}", "a".repeat(MAX_SELECTOR_BYTES));
        assert!(FieldSelector::parse(&long_field).is_err());
        // Peers' queries are parsed by the same code, so the same limits.
        let q = crate::query::Query::new(crate::query::Kind::Pods, None, None, "", "").unwrap();
        let mut req = q.to_request();
        req.label_selector = many;
        assert!(crate::query::Query::from_request(&req).is_err());
    }
}
