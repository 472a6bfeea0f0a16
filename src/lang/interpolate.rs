//! `${NAME}` and `${NAME:-default}` in config files. Every string value of a file is
//! expanded before the file is deserialized, so that no setting has to ask for it; the
//! values come from a lookup the caller passes (the process environment when loading, a map
//! in tests). Problems keep their positions: the rewritten file remembers where each
//! rewritten string stood in the file as written.

use std::ops::Range;

/// `${` that should stay as it is is written `$${`.
const ESCAPE: &str = "$${";

/// Replaces `${NAME}` and `${NAME:-default}` in one string with the values `get` gives, and
/// `$${` with `${`. A variable that is unset, or set but empty, takes its default; an unset
/// one without a default becomes empty and is reported. Problems are byte offsets into `s`
/// with a message.
pub fn expand_str(s: &str, get: &dyn Fn(&str) -> Option<String>) -> (String, Vec<(usize, String)>) {
    let mut out = String::with_capacity(s.len());
    let mut problems = Vec::new();
    let mut at = 0;
    while let Some(found) = s[at..].find('$') {
        let start = at + found;
        out.push_str(&s[at..start]);
        let rest = &s[start..];
        if rest.starts_with(ESCAPE) {
            out.push_str("${");
            at = start + ESCAPE.len();
            continue;
        }
        if !rest.starts_with("${") {
            out.push('$');
            at = start + 1;
            continue;
        }
        match reference(&rest[2..]) {
            Some((name, default, len)) => {
                let value = get(name);
                match (value, default) {
                    (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => {
                        problems.push((start, format!("environment variable {name} is not set")))
                    }
                }
                at = start + 2 + len;
            }
            None => {
                problems.push((
                    start,
                    "`${` starts no environment reference: write `${NAME}` or \
                     `${NAME:-default}`, or `$${` for a literal `${`"
                        .to_string(),
                ));
                out.push_str("${");
                at = start + 2;
            }
        }
    }
    out.push_str(&s[at..]);
    (out, problems)
}

/// `NAME}` or `NAME:-default}` after a `${`: the name, the default and the length read.
fn reference(s: &str) -> Option<(&str, Option<&str>, usize)> {
    let name_len = s
        .char_indices()
        .find(|&(i, c)| !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(s.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, after) = s.split_at(name_len);
    if after.starts_with('}') {
        return Some((name, None, name_len + 1));
    }
    let default = after.strip_prefix(":-")?;
    let end = default.find('}')?;
    Some((name, Some(&default[..end]), name_len + 2 + end + 1))
}

/// A config file with its environment references expanded.
#[derive(Debug, Default)]
pub struct Expanded {
    /// The file with every string value that held a reference written anew (as a basic
    /// string); the rest of the text is unchanged.
    pub text: String,
    /// Problems as byte offsets into the file as written, with a message.
    pub problems: Vec<(usize, String)>,
    rewrites: Vec<Rewrite>,
}

/// One string value written anew: where it is in the new text and where it was.
#[derive(Debug)]
struct Rewrite {
    new: Range<usize>,
    old: Range<usize>,
    /// Its expansion was reported as a problem (an unset variable, say).
    failed: bool,
}

impl Expanded {
    /// The file unchanged.
    fn unchanged(source: &str) -> Expanded {
        Expanded {
            text: source.to_string(),
            ..Expanded::default()
        }
    }

    fn rewrite_at(&self, offset: usize) -> Option<&Rewrite> {
        let i = self.rewrites.partition_point(|r| r.new.start <= offset);
        self.rewrites[..i].last()
    }

    /// The offset in the file as written of an offset in the expanded text: a place inside
    /// a rewritten string is the start of that string as written.
    pub fn source_offset(&self, offset: usize) -> usize {
        match self.rewrite_at(offset) {
            None => offset,
            Some(r) if offset < r.new.end => r.old.start,
            Some(r) => r.old.end + (offset - r.new.end),
        }
    }

    /// Whether an offset of the expanded text falls in a string whose expansion failed:
    /// further problems with that value would only repeat the first.
    pub fn failed_at(&self, offset: usize) -> bool {
        self.rewrite_at(offset)
            .is_some_and(|r| r.failed && offset < r.new.end)
    }

    /// Whether `span` of the expanded text is exactly a string that held a reference.
    pub fn is_expanded_value(&self, span: &Range<usize>) -> bool {
        self.rewrite_at(span.start).is_some_and(|r| r.new == *span)
    }
}

/// Expands every string value of a TOML file. Keys are not expanded: a reference in one is
/// a problem. A file that is not TOML comes back unchanged, for the parser to report.
pub fn expand(source: &str, get: &dyn Fn(&str) -> Option<String>) -> Expanded {
    if !source.contains('$') {
        return Expanded::unchanged(source);
    }
    let Ok(doc) = toml_edit::ImDocument::parse(source) else {
        return Expanded::unchanged(source);
    };
    let mut walk = Walk {
        source,
        get,
        edits: Vec::new(),
        problems: Vec::new(),
    };
    walk.table(doc.as_table());
    let Walk {
        mut edits,
        mut problems,
        ..
    } = walk;
    edits.sort_by_key(|e| e.old.start);
    problems.sort_by_key(|p| p.0);
    let mut text = String::with_capacity(source.len());
    let mut rewrites = Vec::with_capacity(edits.len());
    let mut at = 0;
    for e in edits {
        text.push_str(&source[at..e.old.start]);
        let start = text.len();
        text.push_str(&e.literal);
        rewrites.push(Rewrite {
            new: start..text.len(),
            old: e.old.clone(),
            failed: e.failed,
        });
        at = e.old.end;
    }
    text.push_str(&source[at..]);
    Expanded {
        text,
        problems,
        rewrites,
    }
}

struct Edit {
    old: Range<usize>,
    literal: String,
    failed: bool,
}

struct Walk<'a> {
    source: &'a str,
    get: &'a dyn Fn(&str) -> Option<String>,
    edits: Vec<Edit>,
    problems: Vec<(usize, String)>,
}

impl Walk<'_> {
    fn table(&mut self, t: &dyn toml_edit::TableLike) {
        for (name, item) in t.iter() {
            if let Some(key) = t.key(name) {
                self.key(key);
            }
            match item {
                toml_edit::Item::Value(v) => self.value(v),
                toml_edit::Item::Table(t) => self.table(t),
                toml_edit::Item::ArrayOfTables(a) => {
                    for t in a.iter() {
                        self.table(t);
                    }
                }
                toml_edit::Item::None => {}
            }
        }
    }

    fn key(&mut self, key: &toml_edit::Key) {
        if key.get().contains("${") {
            let at = key.span().map_or(0, |s| s.start);
            self.problems.push((
                at,
                "`${…}` is not expanded in keys, only in string values".to_string(),
            ));
        }
    }

    fn value(&mut self, v: &toml_edit::Value) {
        match v {
            toml_edit::Value::String(s) => self.string(s),
            toml_edit::Value::Array(a) => {
                for v in a.iter() {
                    self.value(v);
                }
            }
            toml_edit::Value::InlineTable(t) => self.table(t),
            _ => {}
        }
    }

    fn string(&mut self, s: &toml_edit::Formatted<String>) {
        let value = s.value();
        if !value.contains("${") {
            return;
        }
        let Some(span) = s.span() else { return };
        let (expanded, problems) = expand_str(value, self.get);
        // A reference's own place is known when the string is written without escapes or
        // line continuations; otherwise its problems point at the string.
        let raw = &self.source[span.clone()];
        let quote = if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
            3
        } else {
            1
        };
        let verbatim = raw.len() >= 2 * quote && raw[quote..raw.len() - quote] == **value;
        for (offset, message) in &problems {
            let at = if verbatim {
                span.start + quote + offset
            } else {
                span.start
            };
            self.problems.push((at, message.clone()));
        }
        self.edits.push(Edit {
            old: span,
            literal: basic_string(&expanded),
            failed: !problems.is_empty(),
        });
    }
}

/// `s` as a TOML basic string.
fn basic_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push('\t'),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "A" => Some("x".into()),
            "EMPTY" => Some(String::new()),
            "QUOTED" => Some("say \"hi\"\\\n".into()),
            _ => None,
        }
    }

    #[test]
    fn interpolation_uses_env_and_defaults() {
        let ok = |s: &str| {
            let (v, p) = expand_str(s, &env);
            assert!(p.is_empty(), "{s}: {p:?}");
            v
        };
        assert_eq!(ok("p-${A}-q"), "p-x-q");
        assert_eq!(ok("${B:-dflt}"), "dflt");
        assert_eq!(ok("${EMPTY:-dflt}"), "dflt");
        assert_eq!(ok("${EMPTY}"), "");
        assert_eq!(ok("${B:-}"), "");
        assert_eq!(ok("{{ a }} ${A}{{ b }}"), "{{ a }} x{{ b }}");
        assert_eq!(ok("$${A} costs $5"), "${A} costs $5");
        let (v, p) = expand_str("a ${B} b", &env);
        assert_eq!((v.as_str(), p[0].0), ("a  b", 2));
        assert_eq!(p[0].1, "environment variable B is not set");
    }

    #[test]
    fn a_dollar_brace_that_is_no_reference_is_a_problem() {
        for s in ["${", "${A", "${ A }", "${1A}", "${A:?x}", "${A-x}", "${}"] {
            let (_, p) = expand_str(s, &env);
            assert_eq!(p.len(), 1, "{s}: {p:?}");
            assert!(p[0].1.contains("`$${`"), "{s}: {p:?}");
        }
    }

    #[test]
    fn every_string_value_is_expanded_and_positions_map_back() {
        let source =
            "a = \"${A}\"\n[t.u]\nb = [\"${QUOTED}\", { c = '${A}-${A}' }]\nn = 1\nz = \"${B}\"\n";
        let ex = expand(source, &env);
        let v: toml::Table = toml::from_str(&ex.text).unwrap();
        assert_eq!(v["a"].as_str(), Some("x"));
        assert_eq!(v["t"]["u"]["b"][0].as_str(), Some("say \"hi\"\\\n"));
        assert_eq!(v["t"]["u"]["b"][1]["c"].as_str(), Some("x-x"));
        assert_eq!(v["t"]["u"]["n"].as_integer(), Some(1));
        // `n` is after two rewritten strings, `z` is one whose variable is unset.
        let n = ex.text.find("n = 1").unwrap();
        assert_eq!(ex.source_offset(n), source.find("n = 1").unwrap());
        let z = ex.text.find("z = ").unwrap() + 4;
        assert!(ex.failed_at(z));
        assert_eq!(ex.source_offset(z + 1), source.find("z = ").unwrap() + 4);
        assert_eq!(
            ex.problems,
            vec![(
                source.find("${B}").unwrap(),
                "environment variable B is not set".to_string()
            )]
        );
    }

    #[test]
    fn keys_are_not_expanded() {
        let source = "[h.\"${A}\"]\nx = { \"${A}\" = 1 }\n";
        let ex = expand(source, &env);
        let at: Vec<usize> = ex.problems.iter().map(|p| p.0).collect();
        assert_eq!(at, vec![3, source.find("{ \"").unwrap() + 2]);
        assert!(ex.problems[0].1.contains("not expanded in keys"));
    }
}
