//! The crate's one error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong; each variant says what was being done, so an agent can put it
/// in an event or a log line without more context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The [`crate::VmSpec`] cannot be turned into a QEMU command line (a name QEMU would
    /// misparse, a socket path too long for a Unix socket, zero memory, ...).
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
    /// A host fact (the TSC frequency from /proc/cpuinfo) could not be read.
    #[error("cannot read host facts: {0}")]
    Host(String),
    /// A system call or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. `connect to /run/vm1.qmp`.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A bounded wait ran out.
    #[error("timed out after {after:?}: {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// QEMU sent something that is not QMP (bad JSON, an unexpected message).
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// QEMU answered a command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command executed.
        command: String,
        /// QMP's error class (e.g. `GenericError`, `CommandNotFound`).
        class: String,
        /// QMP's human-readable description.
        desc: String,
    },
    /// The libvirt daemon cannot be reached at this URI (not running, no socket, refused):
    /// what a node whose libvirtd is down sees at once, instead of waiting out a timeout.
    #[error("the libvirt daemon is not reachable at {uri}: {reason}")]
    DaemonUnreachable {
        /// The connection URI tried, e.g. `qemu:///system`.
        uri: String,
        /// libvirt's own message.
        reason: String,
    },
    /// A libvirt call failed (define, start, shutdown, destroy, ...).
    #[error("libvirt: {what}: {message}")]
    Libvirt {
        /// What was being done, e.g. `start domain nines.c.vm1`.
        what: String,
        /// libvirt's message.
        message: String,
    },
    /// A live migration ended without completing: QEMU reported `failed` or `cancelled` (with
    /// its own error text when it gave one), or it did not say where it listens.
    #[error("live migration {what}: {message}")]
    Migration {
        /// What happened, e.g. `failed` or `cancelled`.
        what: String,
        /// QEMU's error text (`error-desc`), or what was missing.
        message: String,
    },
    /// A human-monitor (HMP) command, run through QMP's `human-monitor-command`, failed. HMP
    /// reports errors only as text in its answer, so a non-empty answer is this error.
    #[error("HMP command `{command}` failed: {message}")]
    Hmp {
        /// The HMP command line, e.g. `hostfwd_add n0 tcp:127.0.0.1:18080-:80`.
        command: String,
        /// What QEMU answered (trimmed), or why the command was not sent.
        message: String,
    },
    /// The QMP connection is gone (QEMU exited or closed it).
    #[error("QMP connection to {0} closed")]
    Closed(PathBuf),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
