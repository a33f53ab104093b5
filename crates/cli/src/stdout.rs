//! Standard output that never panics: `outln!` and `out!` (defined in `main.rs`) in place of
//! `println!` and `print!`.
//!
//! `println!` panics when stdout is a pipe whose reader went away (`nines bench ... | head`,
//! `nines events --follow | grep -m1 fault`), with a backtrace. That is wrong for every
//! command, and worse for the ones that host a cluster (`run`, `agent`, `director`, `demo`,
//! `bench`): a manager of services must not stop, nor leave its components unmanaged, because
//! its console closed. So a failed write marks stdout closed and later output is dropped;
//! `nines events --follow`, which would otherwise wait for events forever, and `nines run`'s
//! console thread stop when [`closed`] says nobody reads any more. The other commands end
//! anyway, their output dropped.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `args` (and a newline if `newline`) to stdout, unless an earlier write failed;
/// a failure (a closed pipe, a full disk) only marks stdout closed.
pub(crate) fn print_out(args: std::fmt::Arguments<'_>, newline: bool) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| {
        if newline {
            out.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    if written.is_err() {
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Whether a write to stdout has failed: nobody reads what this process prints any more.
pub(crate) fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}
