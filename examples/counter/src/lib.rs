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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nines_client::{ClientError, Session};

pub use component::CounterComponent;

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
    /// The agent went away without asking the component to stop; serving on would risk two
    /// actives, so the component stops.
    #[error("lost the nines agent: {0}")]
    Lost(ClientError),
}

/// Runs the counter component until the agent asks it to terminate (`Ok`) or the session is
/// lost. Needs `NINES_AGENT_SOCKET` and `NINES_COMPONENT`, which the agent sets.
///
/// The callbacks run on the calling thread ([`Session::run`]): the process has no thread
/// that only waits, and each thread it has delays the moment its death is seen.
pub fn run() -> Result<(), RunError> {
    let registered = Arc::new(AtomicBool::new(false));
    let component = CounterComponent::new().with_registered_flag(Arc::clone(&registered));
    match Session::run(component) {
        Ok(()) => Ok(()),
        Err(e @ ClientError::NotConfigured(_)) => Err(RunError::NotManaged(e)),
        Err(e) if !registered.load(Ordering::SeqCst) => {
            Err(RunError::Register(e))
        }
        Err(e) => Err(RunError::Lost(e)),
    }
}
