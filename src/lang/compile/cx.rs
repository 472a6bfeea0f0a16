//! One file being checked: its text is parsed once its environment references are
//! expanded, spans become `line:col` positions in the file as written, and the small compile
//! helpers every step uses (expressions, templates, durations) report their problems there.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use super::values::parse_duration;
use super::Host;
use crate::lang::capabilities::Capabilities;
use crate::lang::channel::SectionCx;
use crate::lang::error::{ConfigError, Position};
use crate::lang::expr::{CompileError, Expr, Templates, Tmpl, ValueTmpl};
use crate::lang::interpolate::Expanded;
use crate::lang::model::Channel;
use crate::lang::raw::Sp;

/// One file being checked: its text with environment references expanded (what the raw
/// model's spans point into), the text as written (for positions) and the shared problem
/// list.
pub(super) struct FileCx<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) source: &'a str,
    pub(super) expanded: &'a Expanded,
    pub(super) problems: &'a mut Vec<ConfigError>,
    pub(super) host: &'a Host<'a>,
}

impl<'a> FileCx<'a> {
    /// A file whose environment references were expanded into `expanded`; what expanding
    /// them found is reported at once.
    pub(super) fn new(
        file: &'a Path,
        source: &'a str,
        expanded: &'a Expanded,
        problems: &'a mut Vec<ConfigError>,
        host: &'a Host<'a>,
    ) -> Self {
        for (offset, msg) in &expanded.problems {
            let pos = Position::of(source, *offset);
            problems.push(ConfigError::new(file, pos, msg.clone()));
        }
        FileCx {
            file,
            text: &expanded.text,
            source,
            expanded,
            problems,
            host,
        }
    }

    /// The file as `T` (a raw file shape), or `None` with the problem reported.
    pub(super) fn parse<T: serde::de::DeserializeOwned>(&mut self) -> Option<T> {
        match toml::from_str(self.text) {
            Ok(v) => Some(v),
            Err(e) => {
                let problem = toml_error(self.file, self.source, self.expanded, e);
                self.problems.push(problem);
                None
            }
        }
    }
}

/// A TOML syntax or shape problem; its span is in the expanded text.
fn toml_error(file: &Path, source: &str, expanded: &Expanded, e: toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let pos = Position::of(source, expanded.source_offset(span.start));
    // One line per problem: TOML's multi-line messages are joined.
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    // The TOML parser says nothing of some characters (a NUL, say).
    let message = if message.is_empty() {
        "this is not valid TOML (a control character?)".to_string()
    } else if expanded.is_expanded_value(&span) {
        // `max_body_bytes = "${MAX}"`: the reference was expanded, but into text.
        format!("{message} (`${{…}}` expands only into text, and this setting is no text)")
    } else {
        message
    };
    ConfigError::new(file, pos, message)
}

impl FileCx<'_> {
    pub(super) fn caps(&self, c: &Channel) -> Capabilities {
        c.caps
    }

    /// The position in the file as written of an offset into `text`.
    pub(super) fn pos(&self, offset: usize) -> Position {
        Position::of(self.source, self.expanded.source_offset(offset))
    }

    pub(super) fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        if self.expanded.failed_at(span.start) {
            return;
        }
        let pos = self.pos(span.start);
        self.problems.push(ConfigError::new(self.file, pos, msg));
    }

    /// An error inside a string value: `offset` is a byte offset into the string's content.
    pub(super) fn err_in(&mut self, span: Range<usize>, offset: usize, msg: impl Into<String>) {
        let raw = self.text.get(span.clone()).unwrap_or("");
        let quote = if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
            3
        } else if raw.starts_with('"') || raw.starts_with('\'') {
            1
        } else {
            0
        };
        self.err(span.start + quote + offset..span.end, msg)
    }

    pub(super) fn expr(&mut self, t: &Templates, s: &Sp<String>) -> Option<Expr> {
        match t.expr(s.get()) {
            Ok(e) => Some(e),
            Err(CompileError { message, offset }) => {
                self.err_in(s.span(), offset, format!("bad expression: {message}"));
                None
            }
        }
    }

    pub(super) fn tmpl(&mut self, t: &Templates, s: &Sp<String>) -> Option<Tmpl> {
        self.tmpl_str(t, s.get(), s.span())
    }

    pub(super) fn tmpl_str(&mut self, t: &Templates, s: &str, span: Range<usize>) -> Option<Tmpl> {
        match t.tmpl(s) {
            Ok(x) => Some(x),
            Err(CompileError { message, offset }) => {
                self.err_in(span, offset, format!("bad template: {message}"));
                None
            }
        }
    }

    pub(super) fn value_tmpl(
        &mut self,
        t: &Templates,
        v: &Sp<serde_json::Value>,
    ) -> Option<ValueTmpl> {
        match t.value_tmpl(v.get()) {
            Ok(x) => Some(x),
            Err(CompileError { message, .. }) => {
                self.err(v.span(), format!("bad template: {message}"));
                None
            }
        }
    }

    /// A time zone by its IANA name; a mistake is reported where it is.
    pub(super) fn zone(&mut self, s: &Sp<String>) -> Option<chrono_tz::Tz> {
        match s.get().trim().parse::<chrono_tz::Tz>() {
            Ok(z) => Some(z),
            Err(_) => {
                self.err(
                    s.span(),
                    format!(
                        "unknown time zone '{}' (an IANA name like Europe/Warsaw)",
                        s.get()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn duration(&mut self, s: &Sp<String>) -> Option<Duration> {
        match parse_duration(s.get()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(s.span(), e);
                None
            }
        }
    }
}

impl SectionCx for FileCx<'_> {
    fn err(&mut self, span: Range<usize>, msg: String) {
        FileCx::err(self, span, msg)
    }

    fn env(&mut self, value: &Sp<String>) -> Option<String> {
        // Expanded when the file was read.
        Some(value.get().clone())
    }
}
