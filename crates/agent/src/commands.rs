//! CLC commands (`terminate`, `cleanup`, `monitor`): run with a timeout, never waited on forever.
//!
//! A command runs in its own process group, with the component's environment plus its pid
//! ([`crate::env::ENV_COMPONENT_PID`]), and writes to the component's log. One that outlives its
//! timeout is SIGKILLed with its whole group; the caller learns that it timed out without waiting
//! for more than [`REAP_GRACE`] beyond the timeout.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustix::process::Signal;

use crate::clock::Clock;
use crate::pidfd::{Live, Proc};
use crate::spawn;

/// How long the agent waits for the kernel to take down a SIGKILLed process before it reports
/// the stop as timed out. Only a process stuck in uninterruptible sleep (a hung NFS mount, a
/// dying disk) survives a SIGKILL this long.
pub const REAP_GRACE: Duration = Duration::from_secs(1);

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CommandResult {
    /// It exited with code 0.
    Success,
    /// It could not be started, or exited otherwise; the text says how.
    Failed(String),
    /// It did not finish within its timeout and was killed.
    TimedOut,
}

/// What to run and where its output goes.
pub(crate) struct CommandSpec<'a> {
    /// Which command (`cleanup`, ...), for logs.
    pub what: &'a str,
    /// Entity path of the component, for logs.
    pub component: &'a str,
    /// The command line.
    pub argv: &'a [String],
    /// Its environment (added to the agent's).
    pub env: &'a [(String, String)],
    /// Log file for its output.
    pub log: Option<&'a Path>,
}

/// Run a command to completion or until `timeout`, whichever comes first.
pub(crate) async fn run(
    spec: &CommandSpec<'_>,
    timeout: Duration,
    clock: Clock,
    live: &Arc<Live>,
) -> CommandResult {
    let started = spawn::command(spec.argv, spec.env, spec.log)
        .and_then(|mut cmd| Proc::spawn(&mut cmd, clock, live));
    let proc = match started {
        Ok(proc) => proc,
        Err(e) => {
            tracing::error!(
                component = %spec.component,
                command = spec.what,
                argv = ?spec.argv,
                error = %e,
                "cannot start command"
            );
            return CommandResult::Failed(format!("cannot start: {e}"));
        }
    };
    match tokio::time::timeout(timeout, proc.exited()).await {
        Ok(exit) if exit.status.success() => CommandResult::Success,
        Ok(exit) => {
            tracing::warn!(
                component = %spec.component,
                command = spec.what,
                argv = ?spec.argv,
                status = %exit.status,
                "command failed"
            );
            CommandResult::Failed(exit.status.to_string())
        }
        Err(_) => {
            tracing::warn!(
                component = %spec.component,
                command = spec.what,
                argv = ?spec.argv,
                timeout = ?timeout,
                "command timed out; killing it"
            );
            proc.signal_group(Signal::KILL);
            if tokio::time::timeout(REAP_GRACE, proc.exited())
                .await
                .is_err()
            {
                tracing::error!(
                    component = %spec.component,
                    command = spec.what,
                    pid = proc.pid(),
                    "command survives SIGKILL; it is reaped whenever it dies"
                );
            }
            CommandResult::TimedOut
        }
    }
}
