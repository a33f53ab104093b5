//! `nines validate`: check config files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::{exit, load_file, with_newline};

#[derive(Args, Debug)]
pub(crate) struct ValidateArgs {
    /// Config files (YAML) to check.
    #[arg(value_name = "FILE", required_unless_present = "explain")]
    files: Vec<PathBuf>,
    /// Print every config key with its default value instead of checking files.
    #[arg(long, conflicts_with = "files")]
    explain: bool,
}

/// `nines validate`: every file is checked, even after a bad one, so one run shows all problems.
pub(crate) fn validate(args: &ValidateArgs) -> ExitCode {
    if args.explain {
        out!("{}", with_newline(nines_model::explain()));
        return ExitCode::SUCCESS;
    }
    let mut ok = true;
    for path in &args.files {
        match load_file(path) {
            Some(model) => {
                outln!("{}: ok", path.display());
                out!("{}", with_newline(nines_model::summary(&model)));
            }
            None => ok = false,
        }
    }
    exit(ok)
}
