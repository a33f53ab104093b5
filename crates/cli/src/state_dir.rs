//! Where the runtime keeps its state, shared by `run`, `status`, `adm` and `events`: the
//! `--state-dir` flag, else `$NINES_STATE_DIR`, else `./.nines`.

use std::path::PathBuf;

use clap::Args;

/// The `--state-dir` flag.
#[derive(Args, Debug, Clone)]
pub(crate) struct StateDirArg {
    /// State directory of the runtime (sockets, event log, saved admin states)
    /// [default: $NINES_STATE_DIR, else ./.nines].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl StateDirArg {
    /// The directory to use.
    pub(crate) fn resolve(&self) -> PathBuf {
        if let Some(d) = &self.state_dir {
            return d.clone();
        }
        match std::env::var_os("NINES_STATE_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => PathBuf::from(".nines"),
        }
    }
}
