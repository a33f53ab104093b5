//! VMs as components: what a node agent needs to run a QEMU guest as one of its components.
//!
//! The crate is a toolbox, not a supervisor. It builds the QEMU command line ([`command`]) but
//! never spawns it: the agent spawns QEMU as its own direct child, in its own process group,
//! and watches it with the same pidfd and subreaper machinery as any other process (a
//! daemonized QEMU would be reaped by the machine's PID 1, late, see VM-RECIPE.md §6). What the
//! crate adds on top of a process:
//!
//! * `qemu`: [`VmSpec`] (kernel, initrd, memory, vCPUs, accelerator, network, serial log, QMP
//!   socket) and [`command`], the command line measured to boot in about 2.5 s under TCG,
//!   with the TSC parameters without which a microvm guest hangs on a busy host.
//! * `qmp`: [`Qmp`], a small client of QEMU's JSON control protocol on the QMP Unix socket:
//!   handshake, `query-status`, `stop`/`cont`, `system_powerdown`, `quit`, and an event stream
//!   ([`QmpEvent`]: SHUTDOWN, GUEST_PANICKED, STOP, RESUME, ... and finally `Closed`).
//! * `lifecycle`: [`terminate`] (powerdown, then quit, then SIGKILL; the caller reaps),
//!   [`cleanup`] (SIGKILL and remove the sockets) and the guest health [`probe`] (HTTP or TCP
//!   with a timeout): a hung guest is a failure even when QEMU runs.
//!
//! Invariants: every wait is bounded by a timeout the caller chose; nothing QEMU sends can
//! panic the caller (bad JSON is an error); no process is spawned, reaped or daemonized here.

mod error;
mod lifecycle;
mod qemu;
mod qmp;

pub use error::Error;
pub use lifecycle::{
    cleanup, probe, terminate, wait_healthy, Health, Probe, TerminateTimeouts, Terminated,
};
pub use qemu::{
    command, command_with, Accel, HostFacts, Network, PortForward, VmSpec, DEFAULT_QEMU,
};
pub use qmp::{CloseReason, Qmp, QmpEvent, QmpEventKind, Status};
