//! Config diagnostics: errors that reject a file and warnings that do not.
//!
//! Every diagnostic carries the file, the line and column and the entity path (or key path) it is
//! about, so a user can jump straight to the offending line and the CLI can print them in the
//! usual `FILE:LINE:COL: ...` form that editors understand.

use std::fmt;

/// A problem that makes a config file unusable. `load` returns all of them at once, so a user can
/// fix a file in one pass instead of one error per run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// File name as given to [`crate::load`], for messages.
    pub file: String,
    /// 1-based line (0 when the position is unknown, e.g. an empty file).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    /// Entity path (`counter/sg/su-1`, `node/node-1`) or top-level key (`nodes`) it is about.
    pub entity: String,
    /// What is wrong, in plain words; names the key and, for enums, the allowed values.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.entity, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// A legal but suspicious config (e.g. a 2N SG with one SU): loading succeeds, the CLI shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// File name as given to [`crate::load`].
    pub file: String,
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// Entity path it is about.
    pub entity: String,
    /// What looks wrong and why it matters.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: warning: {}: {}",
            self.file, self.line, self.column, self.entity, self.message
        )
    }
}

/// A position in the config text (1-based; 0 = unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: u64,
    pub column: u64,
}

/// Collects diagnostics while decoding and validating, so all of them can be reported together.
#[derive(Debug)]
pub(crate) struct Diagnostics {
    file: String,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigWarning>,
}

impl Diagnostics {
    pub fn new(file: &str) -> Self {
        Diagnostics {
            file: file.to_string(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Records an error about `entity` at `pos`.
    pub fn error(&mut self, pos: Pos, entity: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            entity: entity.to_string(),
            message: message.into(),
        });
    }

    /// Records a warning about `entity` at `pos`.
    pub fn warning(&mut self, pos: Pos, entity: &str, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            entity: entity.to_string(),
            message: message.into(),
        });
    }

    /// Errors and warnings in file order (stable for equal positions), for readable reports.
    pub fn sort(&mut self) {
        self.errors.sort_by_key(|e| (e.line, e.column));
        self.warnings.sort_by_key(|w| (w.line, w.column));
    }
}
