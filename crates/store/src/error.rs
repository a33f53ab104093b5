//! The one error type of the store. Every variant names the backend (`redb /path/state.redb`,
//! `etcd http://127.0.0.1:2379 /nines/demo`) and what was being done to which key, so a log line
//! is enough to find the problem.

use std::path::PathBuf;

/// Why a store operation failed. A failed `commit` changed nothing, with one exception spelled
/// out at [`StoreError::Backend`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The commit's token is no longer (or never was) the current leader's: its holder must stop
    /// acting as the leader. Nothing was written.
    #[error(
        "{backend}: commit of {key} refused, the token is stale ({detail}); nothing was written"
    )]
    Fenced {
        /// The backend that refused.
        backend: String,
        /// The batch (its first keys).
        key: String,
        /// What was compared: the token, and why it failed.
        detail: String,
    },
    /// The request breaks a rule every backend shares (empty key, value too large, batch too
    /// big, ...); retrying it will not help.
    #[error("{backend}: {op}{}: {reason}", spaced(key))]
    Invalid {
        /// The backend that was asked.
        backend: String,
        /// `get`, `list`, `commit` or `campaign`.
        op: &'static str,
        /// The key, prefix or batch at fault.
        key: String,
        /// The broken rule.
        reason: String,
    },
    /// The state file exists but is not a readable nines state store (damaged, truncated, a
    /// different program's file, or written by a newer nines). It is left untouched, for a human
    /// to inspect or move away.
    #[error("{}: not a readable nines state store: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb (or the format check) said.
        detail: String,
    },
    /// The state file is open in another store (in this or another process).
    #[error("{}: already open by another store (is another director running on this state directory?)", path.display())]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The backend failed or did not answer in time (I/O error, etcd unreachable, ...); the
    /// operation may succeed if retried. A failed commit wrote nothing, except when etcd applied
    /// it and only the answer was lost (a timeout): then all of it may be there. Retrying the
    /// same batch with the same token is harmless either way.
    #[error("{backend}: {op}{}: {detail}", spaced(key))]
    Backend {
        /// The backend that failed.
        backend: String,
        /// `open`, `get`, `list`, `commit`, `campaign`, `resign`, `leader` or `connect`.
        op: &'static str,
        /// The key, prefix or batch concerned.
        key: String,
        /// The backend's own message.
        detail: String,
    },
}

/// ` key`, or nothing for an operation without a key (`open`, `connect`).
fn spaced(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" {key}")
    }
}
