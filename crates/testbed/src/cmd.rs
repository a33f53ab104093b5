//! Running `ip`, `tc` and `bridge` with a deadline, turning failures into errors that name the
//! command line and quote its stderr.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::Error;

/// Run `program args...`, wait at most `timeout`, and return its stdout.
///
/// A command that does not finish in time is killed (and reaped) and reported as
/// [`Error::Timeout`]; one that exits non-zero as [`Error::Command`] with its stderr.
pub(crate) fn run(program: &str, args: &[&str], timeout: Duration) -> Result<String, Error> {
    let line = || {
        let mut s = program.to_string();
        for a in args {
            s.push(' ');
            s.push_str(a);
        }
        s
    };
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Io {
            what: format!("cannot run `{}`", line()),
            source,
        })?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    // The waiting thread owns the child, so the pid stays ours (unreaped) until it returns.
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out,
        Err(_) => {
            crate::sys::kill_pid(pid);
            let _ = rx.recv_timeout(Duration::from_secs(5));
            return Err(Error::Timeout {
                command: line(),
                timeout,
            });
        }
    };
    let out = out.map_err(|source| Error::Io {
        what: format!("waiting for `{}`", line()),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: line(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
