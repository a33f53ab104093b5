//! Example components for nines, run by the `nines` binary itself (`nines example counter`,
//! `nines example daemon`) so that the demo and the benchmark need nothing built besides it.
//!
//! The **counter** is an SA-aware, stateful TCP service: each `inc` request increments a
//! counter and replies with the new value, but only after the value is in the SI's checkpoint,
//! written synchronously (replicated to the standby's node before the write returns). Only the
//! active component listens; a component that becomes active reads the checkpoint first. So a
//! failover never goes back in time and never loses an acknowledged increment: the values one
//! client sees only grow. That is the property `nines demo` and `nines bench` check, and what
//! makes the counter a fair stand-in for a real stateful service.
//!
//! The **daemon** is the opposite: a plain process that knows nothing of nines (optionally
//! echoing lines on a TCP port so a probe can see it).
//!
//! Module map: [`protocol`] (request and reply lines), [`counter`] (the value and the
//! checkpoint rule, behind a trait so it is tested without an agent), [`server`] (listener and
//! connections), [`component`] (HA states to listener), [`daemon`], and [`probe`], the
//! client that measures outages from outside.
#![warn(missing_docs)]

pub mod component;
pub mod counter;
pub mod daemon;
pub mod probe;
pub mod protocol;
pub mod server;

use std::path::Path;

use nines_client::{ClientError, Dispatch, Dispatcher, Session};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

pub use component::CounterComponent;

/// Writes `line` and a newline to stderr with one system call. `eprintln!` with arguments
/// writes each piece of the format separately (stderr is unbuffered): a dozen calls, on the
/// one thread that also serves the clients and answers the agent.
pub(crate) fn log_line(line: &str) {
    use std::io::Write;
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    let _ = std::io::stderr().lock().write_all(&bytes);
}

/// Why the counter stopped other than by a graceful terminate.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Started by hand rather than by a nines agent: there is nobody to get work from.
    #[error(
        "{0}\nthe counter is a component: nines starts it (see examples/counter-2n.yaml, or run \
         `nines demo`)"
    )]
    NotManaged(ClientError),
    /// Registration with the agent failed.
    #[error("cannot register with the nines agent: {0}")]
    Register(ClientError),
    /// The session ended without the agent asking the component to stop (the agent went
    /// away and none came back, or a callback panicked); serving on would risk two actives,
    /// so the component stops.
    #[error("the session with the nines agent ended without a terminate: {0}")]
    Lost(ClientError),
    /// The event loop cannot wait for its descriptors (the kernel refused poll).
    #[error("cannot poll: {0}")]
    Poll(std::io::Error),
}

/// Runs the counter component until the agent asks it to terminate (`Ok`) or the session is
/// lost. Needs `NINES_AGENT_SOCKET` and `NINES_COMPONENT`, which the agent sets.
///
/// The whole component is this one thread: an event loop that polls the session's selection
/// object ([`Dispatcher::fd`](nines_client::Dispatcher::fd)) together with the component's
/// listeners and connections, serves what is ready and dispatches the agent's callbacks. One
/// thread because the kernel tears a SIGKILLed process down before its death is visible, and a
/// second thread makes that much longer on the development VM (153 µs with one, 392 µs with
/// two, from SIGKILL to the pidfd becoming readable): part of every outage `nines bench
/// sa-kill` measures.
pub fn run() -> Result<(), RunError> {
    event_loop(Session::open_polled(CounterComponent::new()))
}

/// [`run`] with the agent's socket and the component's entity path given explicitly (tests,
/// and processes an agent did not start).
pub fn run_with(socket: &Path, component_path: &str) -> Result<(), RunError> {
    event_loop(Session::open_polled_with(
        socket,
        component_path,
        CounterComponent::new(),
    ))
}

fn event_loop(
    opened: Result<(Session, Dispatcher<CounterComponent>), ClientError>,
) -> Result<(), RunError> {
    let (_session, mut dispatcher) = match opened {
        Ok(s) => s,
        Err(e @ ClientError::NotConfigured(_)) => return Err(RunError::NotManaged(e)),
        Err(e) => return Err(RunError::Register(e)),
    };
    // What poll reported for each descriptor, kept across turns (only its contents change).
    let mut ready = Vec::new();
    loop {
        {
            let component = dispatcher.component();
            let timeout = component.poll_timeout();
            let mut fds = vec![PollFd::new(&dispatcher, PollFlags::IN)];
            component.poll_fds(&mut fds);
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(RunError::Poll(e.into())),
            }
            ready.clear();
            ready.extend(fds.iter().map(PollFd::revents));
        }
        // The endpoints first, while they are what poll saw (a callback may add or remove
        // one). Requests served here may read callbacks off the session (a checkpoint write
        // waits for its acknowledgement); they wait for the next turn, which the selection
        // object being readable guarantees.
        dispatcher.component_mut().serve_ready(&ready[1..]);
        if ready.first().is_some_and(|r| !r.is_empty()) {
            if let Dispatch::Ended(result) = dispatcher.dispatch() {
                return result.map_err(RunError::Lost);
            }
        }
    }
}
