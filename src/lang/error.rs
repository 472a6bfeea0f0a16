//! Where a problem is (`file:line:col`) and the problems a config folder has.

use std::fmt;
use std::path::{Path, PathBuf};

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
}
