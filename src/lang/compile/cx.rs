//! One file being checked: spans become `line:col` positions, and the small compile
//! helpers every step uses (expressions, templates, durations, environment values) report
//! their problems there.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use super::values::parse_duration;
use super::Host;
use crate::lang::capabilities::Capabilities;
use crate::lang::channel::SectionCx;
use crate::lang::error::{ConfigError, Position};
use crate::lang::expr::{CompileError, Expr, Templates, Tmpl, ValueTmpl};
use crate::lang::interpolate::interpolate_with;
use crate::lang::model::Channel;
use crate::lang::raw::Sp;

/// One file being checked: its text (for positions) and the shared problem list.
pub(super) struct FileCx<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) problems: &'a mut Vec<ConfigError>,
    pub(super) host: &'a Host<'a>,
}

impl FileCx<'_> {
    pub(super) fn caps(&self, c: &Channel) -> Capabilities {
        c.caps
    }

    pub(super) fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        let pos = Position::of(self.text, span.start);
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
        let s = match interpolate_with(s, self.host.env) {
            Ok(s) => s,
            Err(var) => {
                self.err(span, format!("environment variable {var} is not set"));
                return None;
            }
        };
        match t.tmpl(&s) {
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

    pub(super) fn duration(&mut self, s: &Sp<String>) -> Option<Duration> {
        match parse_duration(s.get()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(s.span(), e);
                None
            }
        }
    }

    pub(super) fn env_value(&mut self, s: &Sp<String>) -> Option<String> {
        match interpolate_with(s.get(), self.host.env) {
            Ok(v) => Some(v),
            Err(var) => {
                self.err(s.span(), format!("environment variable {var} is not set"));
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
        self.env_value(value)
    }
}
