//! Loading `bot-configs/`: TOML files with spans, `${ENV}` interpolation, validation that
//! reports `file:line:col: message`, and the JSON Schema of the format.

mod compile;
pub mod model;
pub mod raw;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;

/// The gateway file's name inside the config folder; every other `*.toml` is a scenario.
pub const GATEWAY_FILE: &str = "gateway.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub col: usize,
}

impl Position {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn of(text: &str, offset: usize) -> Position {
        let offset = offset.min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        Position {
            line,
            col: before[line_start..].chars().count() + 1,
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub pos: Position,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, pos: Position, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            pos,
            message: message.into(),
        }
    }

    pub fn at_file(file: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError::new(file, Position { line: 1, col: 1 }, message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.pos.line,
            self.pos.col,
            self.message
        )
    }
}

/// All problems found in a config folder.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Loads and checks the whole folder. Every problem is collected before failing.
pub fn load(dir: &Path) -> Result<Config, ConfigErrors> {
    compile::load_dir(dir).map_err(ConfigErrors)
}

/// Replaces `${NAME}` and `${NAME:-default}` with environment values.
/// Returns the name of the first variable that is unset and has no default.
pub fn interpolate(s: &str) -> Result<String, String> {
    interpolate_with(s, |k| std::env::var(k).ok())
}

pub fn interpolate_with(s: &str, get: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (get(name), default) {
            (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            (None, None) => return Err(name.to_string()),
            (Some(v), None) => out.push_str(&v),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The JSON Schema of the gateway file and of scenario files, for editors.
pub fn json_schema() -> serde_json::Value {
    let gateway = schemars::schema_for!(raw::GatewayFile);
    let scenario = schemars::schema_for!(raw::ScenarioFile);
    serde_json::json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Switchboard configuration",
        "description": "gateway.toml follows `gateway`; every other file in bot-configs/ follows `scenario`.",
        "definitions": { "gateway": gateway, "scenario": scenario },
        "oneOf": [ { "$ref": "#/definitions/gateway" }, { "$ref": "#/definitions/scenario" } ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let text = "a = 1\nbb = ä2\n";
        assert_eq!(Position::of(text, 0), Position { line: 1, col: 1 });
        assert_eq!(Position::of(text, 6), Position { line: 2, col: 1 });
        assert_eq!(Position::of(text, 13), Position { line: 2, col: 7 });
    }

    #[test]
    fn interpolation_uses_env_and_defaults() {
        let get = |k: &str| (k == "A").then(|| "x".to_string());
        assert_eq!(interpolate_with("p-${A}-q", get).unwrap(), "p-x-q");
        assert_eq!(interpolate_with("${B:-dflt}", get).unwrap(), "dflt");
        assert_eq!(interpolate_with("${B}", get).unwrap_err(), "B");
        assert_eq!(interpolate_with("{{ a }}", get).unwrap(), "{{ a }}");
    }
}
