//! Plain values in config files: durations, rates, variable names, literal-or-expression
//! values.

use std::time::Duration;

use super::cx::FileCx;
use crate::lang::expr::{Templates, ValueTmpl};
use crate::lang::model::*;
use crate::lang::raw::Sp;

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration like 30s, 10m, 24h, 7d: {e}"))
}

/// `N/period`, e.g. `1/5s` or `20/1m`.
pub fn parse_rate(s: &str) -> Option<(u32, Duration)> {
    let (n, d) = s.split_once('/')?;
    let n = n.trim().parse::<u32>().ok().filter(|n| *n > 0)?;
    let d = parse_duration(d).ok().filter(|d| !d.is_zero())?;
    Some((n, d))
}

pub(super) fn parse_var(s: &str) -> Result<VarRef, String> {
    let mut parts = s.split('.');
    let scope = match parts.next() {
        Some("run") => Scope::Run,
        Some("subject") => Scope::Subject,
        Some("global") => Scope::Global,
        _ => {
            return Err(format!(
                "'{s}' must start with run., subject. or global. (e.g. run.{s})"
            ))
        }
    };
    let path: Vec<String> = parts.map(str::to_string).collect();
    let ident = |p: &String| {
        !p.is_empty()
            && p.chars().all(|c| c.is_alphanumeric() || c == '_')
            && !p.starts_with(|c: char| c.is_ascii_digit())
    };
    if path.is_empty() || !path.iter().all(ident) {
        return Err(format!("'{s}' is not a variable name like run.total"));
    }
    Ok(VarRef { scope, path })
}

pub(super) fn var_name(cx: &mut FileCx, s: Option<&Sp<String>>, dflt: &str) -> Option<String> {
    match s {
        None => Some(dflt.to_string()),
        Some(s) => {
            let v = s.get();
            if !v.is_empty() && v.chars().all(|c| c.is_alphanumeric() || c == '_') {
                Some(v.clone())
            } else {
                cx.err(s.span(), format!("'{v}' is not a variable name"));
                None
            }
        }
    }
}

/// A string is an expression; other TOML values are literal.
pub(super) fn literal_or_expr(
    cx: &mut FileCx,
    t: &Templates,
    v: &Sp<serde_json::Value>,
) -> Option<ValueTmpl> {
    match v.get() {
        serde_json::Value::String(s) => {
            let sp = Sp(toml::Spanned::new(v.span(), s.clone()));
            cx.expr(t, &sp).map(ValueTmpl::Expr)
        }
        other => Some(ValueTmpl::Const(other.clone())),
    }
}
