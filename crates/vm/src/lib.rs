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
//!   ([`QmpEvent`]: SHUTDOWN, GUEST_PANICKED, STOP, RESUME, ... and finally `Closed`); and the
//!   building blocks of a live migration between two QEMUs: [`VmSpec::incoming`] for the
//!   destination, [`Qmp::migrate_incoming`], [`Qmp::migrate`], [`Qmp::wait_migrated`] and
//!   [`Qmp::hostfwd_add`] (the destination's port forwards, after the source let go of them).
//! * `lifecycle`: [`terminate`] (powerdown, then quit, then SIGKILL; the caller reaps),
//!   [`cleanup`] (SIGKILL and remove the sockets) and the guest health [`probe`] (HTTP or TCP
//!   with a timeout): a hung guest is a failure even when QEMU runs.
//!
//! * `domain` (always built) and `libvirt` (feature `libvirt`): the same guest as a libvirt
//!   domain: [`domain_xml`] (the spec as domain XML, the kernel command line shared with
//!   [`command`]) and `Libvirt` (connect, define and start, lifecycle events, destroy,
//!   undefine; the domain's QEMU pid for the caller's pidfd). Behind a feature because it
//!   links libvirt, which the static build that runs inside guests must not.
//!
//! Invariants: every wait is bounded by a timeout the caller chose; nothing QEMU sends can
//! panic the caller (bad JSON is an error); no process is spawned, reaped or daemonized here.
//!
//! # How a supervisor runs a VM component
//!
//! Instantiate = spawn [`command`] (own process group, output to the component's log, pidfd),
//! [`Qmp::connect`], then [`wait_healthy`]; only then is the VM instantiated. While it runs:
//! the pidfd says when QEMU died (SIGKILL is seen in ~5 ms), [`QmpEvent`]s say why
//! (`GuestPanicked`, `Shutdown`, `Stop`), and a periodic [`probe`] catches a hung guest.
//! Terminate = [`terminate`]; cleanup = [`cleanup`]; then reap. Repair = spawn again.
//!
//! ```no_run
//! use std::time::Duration;
//! use nines_vm::{Network, PortForward, Probe, Qmp, QmpEventKind, TerminateTimeouts, VmSpec};
//!
//! # async fn f() -> Result<(), nines_vm::Error> {
//! let dir = std::path::Path::new("/run/nines/vm1");
//! let mut spec = VmSpec::new("vm1", "img/vmlinux", Some("img/initramfs.cpio".into()), dir);
//! spec.network = Network::User { forwards: vec![PortForward { host: 18080, guest: 80 }] };
//! let mut child = nines_vm::command(&spec)?.spawn().expect("spawn"); // the agent's spawner
//! let (mut qmp, mut events) = Qmp::connect(&spec.qmp_socket, Duration::from_secs(10)).await?;
//! let health = Probe::Http {
//!     addr: "127.0.0.1:18080".parse().expect("addr"),
//!     path: "/cgi-bin/health".into(),
//!     expect: Some("vm1".into()),
//! };
//! let ms = |n| Duration::from_millis(n);
//! nines_vm::wait_healthy(&health, ms(50), ms(1000), Duration::from_secs(30)).await?;
//! // ... instantiated; watch `events` and probe `health` periodically ...
//! if let Some(ev) = events.recv().await {
//!     if let QmpEventKind::GuestPanicked { .. } = ev.kind { /* report the failure */ }
//! }
//! // The agent's exit future would be its pidfd; here a blocking wait stands in for it.
//! let pid = child.id();
//! let mut exited = Box::pin(async move {
//!     let _ = tokio::task::spawn_blocking(move || child.wait()).await;
//! });
//! nines_vm::terminate(Some(&mut qmp), pid, &mut exited, &TerminateTimeouts::default()).await?;
//! # Ok(()) }
//! ```

mod domain;
mod error;
#[cfg(feature = "libvirt")]
pub mod libvirt;
mod lifecycle;
mod qemu;
mod qmp;

pub use domain::{domain_uuid, domain_xml, BootFiles};
pub use error::Error;
pub use lifecycle::{
    cleanup, probe, terminate, terminate_with, wait_healthy, Health, Probe, TerminateTimeouts,
    Terminated, POWER_BUTTON_REPEAT,
};
pub use qemu::{
    command, command_with, Accel, HostFacts, Network, PortForward, VmSpec, DEFAULT_QEMU, NETDEV_ID,
};
pub use qmp::{
    CloseReason, MigrateParams, MigrationInfo, MigrationStatus, Qmp, QmpEvent, QmpEventKind, Status,
};
