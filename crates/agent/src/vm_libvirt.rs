//! VM components with `driver: libvirt`: the guest of [`crate::vm`]'s spec run as a libvirt
//! domain by the node's libvirt daemon (`nines_vm::libvirt`), supervised like the QEMU
//! driver's.
//!
//! The daemon's URI is `$NINES_LIBVIRT_URI` (default `qemu:///system`), read at each start: a
//! node's setting, not a component's. A daemon that does not answer fails the instantiation
//! at once, with the URI in the message (log line and component log).
//!
//! QEMU is libvirt's child, not ours, but it is watched as closely: its pid (libvirt's pid
//! file, checked against QEMU's `-name guest=DOMAIN`) gets a pidfd through
//! [`Proc::watch_foreign`], so a SIGKILLed QEMU is an `Exited` failure within milliseconds,
//! through the same [`lifecycle::on_death`] as any component. Signals go to that process
//! alone (libvirt's QEMU does not lead a process group). libvirt's lifecycle events stand in
//! for QMP's: an unasked pause and a guest panic are error reports, an unasked shutdown or
//! stop is `Exited`; the health probe is the QEMU driver's.
//!
//! Terminate: ACPI shutdown, then `virDomainDestroy`, then SIGKILL, within the terminate
//! timeout; then the domain is undefined. Cleanup (after the lifecycle's SIGKILL): destroy,
//! undefine, remove the staged boot files. Every libvirt call blocks, so it runs on the
//! spawner thread (start) or a blocking task (the rest).
//!
//! Domains are named `nines.CLUSTER.VM` (the cluster's name keeps two clusters on one host
//! apart; the VM name is the entity path). Not done: adoption. An agent that restarts does
//! not take over a running domain (its record makes a non-adopting agent kill that QEMU; an
//! adopting one leaves it running unsupervised until the engine's next instantiate replaces
//! the domain).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nines_engine::{FaultKind, Outcome};
use nines_model::CompId;
use nines_vm::libvirt::{DomainEvent, DomainEventKind, EventWatch, Libvirt, LibvirtDomain};
use nines_vm::{HostFacts, VmSpec};
use rustix::process::{Pid, Signal};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::agent::Agent;
use crate::commands::REAP_GRACE;
use crate::pidfd::{start_time, Proc};
use crate::vm::{self, BootError, Judged, VmRun};

/// Longest `virDomainDestroy` may take in a terminate before the agent SIGKILLs QEMU itself
/// (libvirt sends SIGTERM and waits up to 10 s before its own SIGKILL).
const DESTROY_STEP: Duration = Duration::from_secs(1);

/// A running domain: what terminate and cleanup need.
pub(crate) struct Domain {
    /// The connection it was started on.
    lv: Libvirt,
    /// The domain.
    dom: LibvirtDomain,
    /// Its lifecycle-event registration; dropped when the domain is removed.
    watch: Mutex<Option<EventWatch>>,
}

/// The libvirt domain name of `spec` on this agent's cluster.
pub(crate) fn domain_name(agent: &Agent, spec: &VmSpec) -> String {
    let cluster: String = agent
        .model
        .cluster
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("nines.{cluster}.{}", spec.name)
}

/// Instantiate, second half (on the foreground spawner thread, which may block): define and
/// start the domain, watch its QEMU and its events, record the incarnation and hand the boot
/// to a task. An error is what the caller reports as the failed instantiation.
pub(crate) fn spawn_incarnation(
    agent: &Arc<Agent>,
    comp: CompId,
    spec: VmSpec,
    facts: &HostFacts,
    deadline: Instant,
) -> Result<(), String> {
    let m = agent.comp(comp);
    let uri = nines_vm::libvirt::uri_from_env();
    let lv = Libvirt::connect(&uri).map_err(|e| e.to_string())?;
    let name = domain_name(agent, &spec);
    // A leftover of an earlier run goes first: its QEMU holds the copies and the ports.
    lv.remove(&name).map_err(|e| e.to_string())?;
    let (kernel, initrd) =
        nines_vm::libvirt::stage_boot_files(&name, &spec).map_err(|e| e.to_string())?;
    let files = nines_vm::libvirt::boot_files(&kernel, initrd.as_ref());
    let xml = nines_vm::domain_xml(&name, &spec, facts, &files).map_err(|e| e.to_string())?;
    let dom = lv.start(&name, &xml).map_err(|e| e.to_string())?;
    let undo = |why: String| {
        let _ = lv.remove(&name);
        why
    };
    let proc = watch_qemu(agent, &name).map_err(undo)?;
    let (watch, events) = match lv.watch(&dom) {
        Ok(w) => w,
        Err(e) => {
            proc.signal_group(Signal::KILL);
            return Err(undo(e.to_string()));
        }
    };
    let domain = Arc::new(Domain {
        lv: lv.clone(),
        dom,
        watch: Mutex::new(Some(watch)),
    });
    let run = Arc::new(VmRun {
        spec,
        qmp: Arc::new(tokio::sync::Mutex::new(None)),
        libvirt: Some(domain),
        migrating: std::sync::atomic::AtomicBool::new(false),
        migrated: std::sync::atomic::AtomicBool::new(false),
    });
    let gen = vm::record_incarnation(agent, comp, &proc, run);
    tracing::info!(component = %m.path, pid = proc.pid(), domain = %name, uri = %lv.uri(), "VM started by libvirt");
    let a = agent.clone();
    tokio::spawn(async move { boot(&a, comp, gen, proc, events, deadline).await });
    Ok(())
}

/// A pidfd watch on domain `name`'s QEMU, checked to be that QEMU after the pidfd pins it.
fn watch_qemu(agent: &Agent, name: &str) -> Result<Arc<Proc>, String> {
    let pid = nines_vm::libvirt::qemu_pid(name).map_err(|e| e.to_string())?;
    let start = start_time(pid).ok_or_else(|| format!("QEMU pid {pid} is gone"))?;
    // The pid's start time, then its command line, then the start time again once the pidfd
    // is open: all three are one process, and it is this domain's QEMU.
    if !nines_vm::libvirt::is_qemu_of(pid, name) {
        return Err(format!("pid {pid} is not the QEMU of domain {name}"));
    }
    let raw = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| format!("bad QEMU pid {pid}"))?;
    Proc::watch_foreign(raw, start, agent.clock, &agent.live)
        .map_err(|e| format!("watch QEMU pid {pid}: {e}"))
}

/// Waits for the probe (when there is one) and answers the instantiate; then supervises. If
/// QEMU exits meanwhile, its exit answers.
async fn boot(
    agent: &Arc<Agent>,
    comp: CompId,
    gen: u64,
    proc: Arc<Proc>,
    events: UnboundedReceiver<DomainEvent>,
    deadline: Instant,
) {
    let started = Instant::now();
    let health = vm::config(agent, comp).and_then(|v| v.health.clone());
    let probe = async {
        let Some(h) = &health else { return Ok(()) };
        let left = deadline.saturating_duration_since(Instant::now());
        nines_vm::wait_healthy(&vm::probe_of(h), h.period, h.timeout, left)
            .await
            .map(drop)
            .map_err(|e| BootError::TimedOut(e.to_string()))
    };
    let booted = tokio::select! {
        r = probe => r,
        _ = proc.exited() => return,
    };
    if vm::instantiated(agent, comp, gen, started, booted).is_none() {
        return;
    }
    let a = agent.clone();
    tokio::spawn(async move { watch_events(&a, comp, gen, events).await });
    if let Some(h) = health {
        let a = agent.clone();
        tokio::spawn(async move { vm::probe_loop(&a, comp, gen, h).await });
    }
}

/// The failure a lifecycle event means, if any: what the engine hears, and why.
fn failure_of(kind: &DomainEventKind) -> Option<(FaultKind, String)> {
    match kind {
        DomainEventKind::Suspended { detail } => Some((
            FaultKind::ErrorReport,
            format!("the guest's CPUs were paused (libvirt: {detail})"),
        )),
        DomainEventKind::Crashed => Some((
            FaultKind::ErrorReport,
            "the guest kernel panicked".to_string(),
        )),
        DomainEventKind::Shutdown => {
            Some((FaultKind::Exited, "the guest is shutting down".to_string()))
        }
        DomainEventKind::Stopped { detail } => {
            Some((FaultKind::Exited, format!("the domain stopped ({detail})")))
        }
        _ => None,
    }
}

/// Reports the first lifecycle event that means a failure. Ends when the registration is
/// dropped (the domain removed).
async fn watch_events(
    agent: &Arc<Agent>,
    comp: CompId,
    gen: u64,
    events: UnboundedReceiver<DomainEvent>,
) {
    vm::report_failures(agent, comp, gen, events, |ev: &DomainEvent| {
        let judged = match failure_of(&ev.kind) {
            Some((kind, why)) => Judged::Failure(kind, why),
            None => Judged::Nothing,
        };
        (judged, ev.at)
    })
    .await;
}

/// Runs a blocking libvirt call off the runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, nines_vm::Error> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("libvirt task: {e}")),
    }
}

/// Terminate: ACPI shutdown and wait, then destroy, then SIGKILL, within the terminate
/// timeout (plus [`REAP_GRACE`] after the kill); then the domain is removed.
pub(crate) async fn terminate(
    agent: &Agent,
    comp: CompId,
    proc: &Proc,
    dom: &Arc<Domain>,
) -> Outcome {
    let m = agent.comp(comp);
    let limit = m.timeouts.terminate;
    let destroy_step = (limit / 5).min(DESTROY_STEP);
    let powerdown = limit.saturating_sub(destroy_step);
    let mut how = "shut down";
    if !press_power_button(dom, proc, powerdown, &m.path).await {
        how = "destroyed";
        let d = dom.clone();
        let destroyed = tokio::time::timeout(destroy_step, blocking(move || d.dom.destroy()));
        let gone = matches!(destroyed.await, Ok(Ok(())))
            && tokio::time::timeout(REAP_GRACE, proc.exited())
                .await
                .is_ok();
        if !gone {
            how = "killed";
            proc.signal_group(Signal::KILL);
            if tokio::time::timeout(REAP_GRACE, proc.exited())
                .await
                .is_err()
            {
                tracing::error!(component = %m.path, pid = proc.pid(), "VM survives SIGKILL");
                return Outcome::TimedOut;
            }
        }
    }
    tracing::debug!(component = %m.path, how, "VM ended");
    remove(agent, comp, dom).await;
    Outcome::Ok
}

/// Asks libvirt for an ACPI shutdown and waits up to `within` for QEMU to exit, asking again
/// every [`nines_vm::POWER_BUTTON_REPEAT`]: a guest under load, or one still starting its
/// ACPI daemon, can miss a press (CI: the terminate fell through to destroy). False when a
/// request failed or the guest did not go.
async fn press_power_button(dom: &Arc<Domain>, proc: &Proc, within: Duration, path: &str) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if Instant::now() >= deadline {
            return false;
        }
        let d = dom.clone();
        if let Err(e) = blocking(move || d.dom.shutdown()).await {
            tracing::debug!(component = %path, "ACPI shutdown: {e}");
            return false;
        }
        let next = (Instant::now() + nines_vm::POWER_BUTTON_REPEAT).min(deadline);
        if tokio::time::timeout_at(next, proc.exited()).await.is_ok() {
            return true;
        }
    }
}

/// Destroys and undefines the domain and removes its staged files (after QEMU is gone, or
/// to make it gone); failures are logged: the next start replaces the domain anyway.
pub(crate) async fn remove(agent: &Agent, comp: CompId, dom: &Arc<Domain>) {
    let path = &agent.comp(comp).path;
    let watch = dom.watch.lock().unwrap_or_else(|e| e.into_inner()).take();
    let d = dom.clone();
    let removed = blocking(move || {
        drop(watch);
        let name = d.dom.name().to_string();
        d.lv.remove(&name)?;
        nines_vm::libvirt::remove_boot_files(&name)
    })
    .await;
    if let Err(e) = removed {
        tracing::warn!(component = %path, "VM cleanup: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_events_that_are_failures() {
        use DomainEventKind as K;
        let kind = |k: &K| failure_of(k).map(|(kind, _)| kind);
        assert_eq!(
            kind(&K::Suspended { detail: "paused" }),
            Some(FaultKind::ErrorReport)
        );
        assert_eq!(kind(&K::Crashed), Some(FaultKind::ErrorReport));
        assert_eq!(kind(&K::Shutdown), Some(FaultKind::Exited));
        assert_eq!(
            kind(&K::Stopped { detail: "failed" }),
            Some(FaultKind::Exited)
        );
        assert_eq!(kind(&K::Started), None);
        assert_eq!(kind(&K::Resumed), None);
    }
}
