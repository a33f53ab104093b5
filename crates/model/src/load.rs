//! The entry point: config text in, validated [`Model`] (or every problem found) out.

use crate::entities::Model;
use crate::error::{ConfigError, ConfigWarning, Diagnostics};

/// A successfully validated config: the model plus warnings the user should see (a config can
/// be legal and still not protect anything, e.g. a 2N SG with a single SU).
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The validated model.
    pub model: Model,
    /// Suspicious but legal settings, in file order.
    pub warnings: Vec<ConfigWarning>,
}

/// Parses and validates a YAML config. `file` is only used in messages (pass the path the user
/// gave). Returns every error found, in file order, so a file can be fixed in one pass; the
/// model is returned only when there is none. Never panics, whatever the text.
pub fn load(text: &str, file: &str) -> Result<Loaded, Vec<ConfigError>> {
    let mut diag = Diagnostics::new(file);
    let root = match crate::yaml::parse(text) {
        Ok(root) => root,
        Err(err) => {
            diag.error(err.pos, "cluster", err.message);
            return Err(diag.errors);
        }
    };
    let raw = crate::decode::decode(&root, &mut diag);
    let model = crate::build::build(&raw, &mut diag);
    diag.sort();
    if diag.errors.is_empty() {
        Ok(Loaded {
            model,
            warnings: diag.warnings,
        })
    } else {
        Err(diag.errors)
    }
}
