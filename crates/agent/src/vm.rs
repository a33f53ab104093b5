//! VM components: QEMU, run from the model's `vm` block through `nines-vm`, supervised like any
//! other component process and judged by what QMP and the guest's health probe say.
//!
//! QEMU is spawned with the agent's own machinery ([`crate::spawn::prepare`], [`Proc::spawn`]):
//! a direct child in its own process group, watched by a pidfd and reaped at once (a
//! daemonized QEMU would wait for the machine's PID 1). It is spawned on the *foreground*
//! spawner ([`spawner::run_foreground`]), not at the background priority of other
//! components, because booting the guest is the repair. Instantiated means healthy: the
//! instantiate answer waits for QMP's greeting and then for the health probe to pass, all
//! within the instantiate timeout. A VM without a probe is instantiated once QMP answers.
//!
//! While it runs, failures come from three places, each reported once per incarnation:
//! QEMU's exit (the pidfd, as for processes: `Exited`), QMP events (`GUEST_PANICKED` and an
//! unasked `STOP`: `ErrorReport`; an unasked `SHUTDOWN`: `Exited`, a few milliseconds before
//! the pidfd says so), and the periodic probe (`HealthcheckMissed`: a hung guest while QEMU
//! runs). "Unasked" needs no bookkeeping: a stop the agent asked for puts the incarnation in
//! `Stopping` first, and `Agent::fail` reports nothing then.
//!
//! A VM is not SA-aware: its CSI assignments are answered at once ([`crate::csi`]); the
//! application inside has its own cluster, if any.
//!
//! Files: the QMP socket is `SOCKET.vm/cINDEX.qmp` next to the agent's socket (a private
//! directory, since the QMP socket controls the VM; short, since a Unix socket path holds 107
//! bytes; fixed, so an agent that adopts the VM can connect again). The guest's serial
//! console goes to `LOGDIR/ENTITY-PATH.serial` beside the component's log (QEMU's own output),
//! or into the socket directory without a log directory. Both outlive the VM: the console is
//! what tells why a guest died (the one before the latest start is kept as `.serial.1`); a
//! stale socket is removed before the next start.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nines_engine::{Command, FaultKind, Outcome};
use nines_model::{Comp, CompId, VmAccel, VmConfig, VmDriver, VmHealth, VmProbe};
use nines_vm::{
    Accel, HostFacts, Network, PortForward, Probe, Qmp, QmpEvent, QmpEventKind, TerminateTimeouts,
    Terminated, VmSpec,
};
use rustix::process::Signal;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::agent::{Agent, Incarnation, Phase};
use crate::commands::REAP_GRACE;
use crate::lifecycle;
use crate::pidfd::Proc;
use crate::spawn;

/// What the agent keeps of one running VM, beside its process.
pub(crate) struct VmRun {
    /// What QEMU was started with (its socket and console paths).
    pub spec: VmSpec,
    /// The QMP connection, once made; taken by terminate. QEMU serves one client per socket,
    /// so this is the only one. (An `Arc` so that a task can hold the lock it took before it
    /// was spawned.)
    pub qmp: Arc<tokio::sync::Mutex<Option<Qmp>>>,
    /// The libvirt domain, for `driver: libvirt` (then QMP is libvirt's, and `qmp` stays
    /// empty).
    #[cfg(feature = "libvirt")]
    pub libvirt: Option<Arc<crate::vm_libvirt::Domain>>,
    /// A live migration out is under way: the guest's pause at the switchover (QMP `STOP`)
    /// and a probe missed meanwhile are the migration, not failures.
    pub migrating: AtomicBool,
    /// A live migration out completed: the VM runs elsewhere now, and this QEMU's end does not
    /// take the component's assignments with it.
    pub migrated: AtomicBool,
}

impl VmRun {
    /// A QEMU-driver VM started with `spec`, QMP not connected yet.
    pub(crate) fn new(spec: VmSpec) -> VmRun {
        VmRun {
            spec,
            qmp: Arc::new(tokio::sync::Mutex::new(None)),
            #[cfg(feature = "libvirt")]
            libvirt: None,
            migrating: AtomicBool::new(false),
            migrated: AtomicBool::new(false),
        }
    }

    /// Whether a migration out completed (see [`VmRun::migrated`]).
    pub(crate) fn migrated_out(&self) -> bool {
        self.migrated.load(Ordering::SeqCst)
    }

    /// Whether a migration out is under way.
    pub(crate) fn migrating(&self) -> bool {
        self.migrating.load(Ordering::SeqCst)
    }
}

/// Longest a QMP command of the terminate ladder other than the power-down waits: `quit` is
/// answered in milliseconds.
pub(crate) const QUIT_STEP: Duration = Duration::from_secs(1);

/// The VM's name for QEMU (`-name`) and the guest (`svcname=`): the entity path with `/` as
/// `.`, other characters QEMU options cannot hold as `_`, the last 64 characters if longer
/// (they name the SU and the component). Only for humans and the guest: files are named by
/// component index.
pub(crate) fn vm_name(path: &str) -> String {
    let name: String = path
        .chars()
        .map(|c| match c {
            '/' => '.',
            c if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') => c,
            _ => '_',
        })
        .collect();
    let skip = name.len().saturating_sub(64);
    name[skip..].to_string()
}

/// The private directory of this agent's VM sockets: `SOCKET.vm`.
pub(crate) fn run_dir(agent_socket: &Path) -> PathBuf {
    let mut dir = agent_socket.as_os_str().to_owned();
    dir.push(".vm");
    PathBuf::from(dir)
}

/// The QEMU spec of a vm component: a pure function of the model, so it is what an adopting
/// agent rebuilds, and unit-tested. `index` is the component's id (for the socket name);
/// `log_dir` the agent's.
pub(crate) fn spec_for(
    comp: &Comp,
    index: usize,
    vm: &VmConfig,
    run_dir: &Path,
    log_dir: Option<&Path>,
) -> VmSpec {
    let mut spec = VmSpec::new(
        vm_name(&comp.path),
        &vm.kernel,
        vm.initrd.as_ref().map(PathBuf::from),
        run_dir,
    );
    spec.qmp_socket = run_dir.join(format!("c{index}.qmp"));
    spec.serial_log = match log_dir {
        Some(dir) => spawn::log_file(dir, &comp.path).with_extension("serial"),
        None => run_dir.join(format!("c{index}.serial")),
    };
    spec.memory_mib = vm.memory_mib;
    spec.vcpus = vm.cpus;
    spec.accel = match vm.accel {
        VmAccel::Tcg => Accel::Tcg,
        VmAccel::Kvm => Accel::Kvm,
        VmAccel::Auto => Accel::Auto,
    };
    // Always a NIC, even without forwards: the guest may reach out through the NAT, and the
    // service image waits for eth0 at boot.
    spec.network = Network::User {
        forwards: vm
            .forwards
            .iter()
            .map(|f| PortForward {
                host: f.host,
                guest: f.guest,
            })
            .collect(),
    };
    spec.cmdline = vm.cmdline_extra.clone();
    spec
}

/// The `nines-vm` probe of a health config.
pub(crate) fn probe_of(health: &VmHealth) -> Probe {
    match &health.probe {
        VmProbe::Http { addr, path, expect } => Probe::Http {
            addr: *addr,
            path: path.clone(),
            expect: expect.clone(),
        },
        VmProbe::Tcp { addr } => Probe::Tcp(*addr),
    }
}

/// The model's VM of `comp` (only called for vm components, which always have one).
pub(crate) fn config(agent: &Agent, comp: CompId) -> Option<&VmConfig> {
    agent.comp(comp).vm.as_ref()
}

/// The spec of `comp` on this agent.
fn spec_of(agent: &Agent, comp: CompId) -> Option<VmSpec> {
    let vm = config(agent, comp)?;
    Some(spec_for(
        agent.comp(comp),
        comp.index(),
        vm,
        &run_dir(&agent.socket),
        agent.log_dir.as_deref(),
    ))
}

/// Creates the private socket directory (0700), or makes an existing one private.
fn ensure_run_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if !dir.is_dir() {
                return Err(std::io::Error::other(format!(
                    "{} exists and is not a directory",
                    dir.display()
                )));
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        }
        Err(e) => Err(e),
    }
}

/// QEMU truncates the console file when it starts, and a repair starts the next guest at
/// once: the last console before it, which tells why the guest died, is kept as
/// `NAME.serial.1`. Best effort.
pub(crate) fn keep_previous_console(serial: &Path) {
    let mut previous = serial.as_os_str().to_owned();
    previous.push(".1");
    match std::fs::rename(serial, &previous) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %serial.display(), "cannot keep the previous console: {e}"),
    }
}

/// Instantiate, second half, on the foreground spawner thread: start QEMU and record the
/// incarnation, then hand the boot to a task. `deadline` ends the instantiate timeout,
/// counted from when the action arrived.
pub(crate) fn spawn_incarnation(agent: &Arc<Agent>, comp: CompId, deadline: Instant) {
    let m = agent.comp(comp);
    let failed = |why: String| {
        // What is recorded is an earlier incarnation, already killed by `instantiate`.
        agent.comps().remove(&comp);
        tracing::error!(component = %m.path, "cannot start the VM: {why}");
        lifecycle::done(agent, comp, Command::Instantiate, Outcome::Failed);
    };
    if *agent.stop.borrow() {
        tracing::warn!(component = %m.path, "not instantiating: the agent is shutting down");
        return lifecycle::done(agent, comp, Command::Instantiate, Outcome::Failed);
    }
    let spec = match prepared_spec(agent, comp, false) {
        Ok(spec) => spec,
        Err(why) => return failed(why),
    };
    // Read here (the accelerator decision and the guest's TSC frequency), so the log says
    // which accelerator this node chose for `auto`.
    let facts = match HostFacts::probe() {
        Ok(f) => f,
        Err(e) => return failed(e.to_string()),
    };
    if m.vm.as_ref().map(|v| v.driver) == Some(VmDriver::Libvirt) {
        return start_libvirt(agent, comp, spec, &facts, deadline, failed);
    }
    let proc = match start_qemu(agent, comp, &spec, &facts) {
        Ok(proc) => proc,
        Err(why) => return failed(why),
    };
    let run = Arc::new(VmRun::new(spec));
    let gen = record_incarnation(agent, comp, &proc, run.clone());
    let accel = match (m.vm.as_ref().map(|v| v.accel), facts.kvm_usable) {
        (Some(VmAccel::Auto), true) => "kvm (tcg if it fails)",
        (Some(VmAccel::Auto), false) => "tcg (no usable KVM here)",
        (Some(a), _) => a.name(),
        (None, _) => "?",
    };
    tracing::info!(component = %m.path, pid = proc.pid(), accel, "VM started");
    let a = agent.clone();
    tokio::spawn(async move { boot(&a, comp, gen, run, proc, deadline).await });
}

/// The spec `comp`'s QEMU starts with here, its files ready: the socket directory, the
/// guest's initrd (for a guest node), no stale socket, the previous console kept. A migration
/// destination (`incoming`) gets `-incoming defer` and its own socket, console and initrd
/// (`cINDEX-in.*`, `NAME.in.serial`): the source may be a QEMU of the same component on this
/// host, even of this agent, still running from the normal ones.
pub(crate) fn prepared_spec(agent: &Agent, comp: CompId, incoming: bool) -> Result<VmSpec, String> {
    let m = agent.comp(comp);
    let Some(mut spec) = spec_of(agent, comp) else {
        return Err("the component has no vm configuration".into());
    };
    let dir = run_dir(&agent.socket);
    let suffix = if incoming { "-in" } else { "" };
    if incoming {
        spec.incoming = true;
        spec.qmp_socket = dir.join(format!("c{}{suffix}.qmp", comp.index()));
        spec.serial_log = spec.serial_log.with_extension("in.serial");
    }
    if let Err(e) = ensure_run_dir(&dir) {
        return Err(format!("socket directory {}: {e}", dir.display()));
    }
    if let Some(guest) = m.guest {
        let node = &agent.model.nodes[guest.index()].name;
        let Some(join) = agent.guest_join.get() else {
            return Err(format!(
                "its guest is node/{node}, but this agent knows no director for it to join (run it under `nines agent`)"
            ));
        };
        let Some(base) = spec.initrd.clone() else {
            return Err(format!(
                "its guest is node/{node}, which needs an initrd (the image of scripts/build-vm-image.sh with a nines binary)"
            ));
        };
        let out = dir.join(format!("c{}{suffix}.initrd", comp.index()));
        match crate::vm_guest::write_initrd(&base, &out, node, join) {
            Ok(p) => spec.initrd = Some(p),
            Err(e) => return Err(format!("the guest's initrd {}: {e}", out.display())),
        }
    }
    // A socket a killed QEMU left would only be replaced by the new one, but an agent that
    // connected in between would wait on a dead file: start clean.
    nines_vm::cleanup(None, &spec).map_err(|e| e.to_string())?;
    keep_previous_console(&spec.serial_log);
    Ok(spec)
}

/// Starts QEMU for `spec` as a component process of `comp`: a direct child in its own
/// process group, watched by a pidfd, its output in the component's log.
pub(crate) fn start_qemu(
    agent: &Agent,
    comp: CompId,
    spec: &VmSpec,
    facts: &HostFacts,
) -> Result<Arc<Proc>, String> {
    let mut cmd = nines_vm::command_with(spec, facts).map_err(|e| e.to_string())?;
    let env = agent.env(comp);
    let log = agent.log_path(comp);
    spawn::prepare(&mut cmd, &env, log.as_deref())
        .and_then(|()| Proc::spawn(&mut cmd, agent.clock, &agent.live))
        .map_err(|e| format!("{}: {e}", spec.qemu.display()))
}

/// Records a started VM as `comp`'s instantiating incarnation (and in the records, for a later
/// agent) and reports its QEMU's exit through [`lifecycle::on_death`]; its generation. Both
/// drivers' starts end here.
pub(crate) fn record_incarnation(
    agent: &Arc<Agent>,
    comp: CompId,
    proc: &Arc<Proc>,
    run: Arc<VmRun>,
) -> u64 {
    let gen = agent.next_id();
    agent.comps().insert(
        comp,
        Incarnation {
            gen,
            proc: proc.clone(),
            phase: Phase::Instantiating,
            failed: false,
            session: None,
            held: Vec::new(),
            vm: Some(run),
        },
    );
    agent.records.write(&agent.comp(comp).path, proc.pid());
    lifecycle::follow_incarnation(agent, comp, gen, proc.clone());
    gen
}

/// The libvirt driver's start; its error (which `failed` reports) goes to the component's log
/// too, where QEMU's own output would be with the QEMU driver (libvirt keeps that in its own
/// log directory).
#[cfg(feature = "libvirt")]
fn start_libvirt(
    agent: &Arc<Agent>,
    comp: CompId,
    spec: VmSpec,
    facts: &HostFacts,
    deadline: Instant,
    failed: impl FnOnce(String),
) {
    if let Err(why) = crate::vm_libvirt::spawn_incarnation(agent, comp, spec, facts, deadline) {
        note_in_log(agent, comp, &format!("cannot start the VM: {why}"));
        failed(why);
    }
}

/// Without the `libvirt` feature: a `driver: libvirt` VM cannot run here, and says so.
#[cfg(not(feature = "libvirt"))]
fn start_libvirt(
    agent: &Arc<Agent>,
    comp: CompId,
    _spec: VmSpec,
    _facts: &HostFacts,
    _deadline: Instant,
    failed: impl FnOnce(String),
) {
    let why = "`driver: libvirt`, but this nines build has no libvirt support \
               (built without the `libvirt` feature); use `driver: qemu` or a build with it"
        .to_string();
    note_in_log(agent, comp, &format!("cannot start the VM: {why}"));
    failed(why);
}

/// Appends `line` to the component's log, if it has one (best effort).
fn note_in_log(agent: &Agent, comp: CompId, line: &str) {
    use std::io::Write as _;
    let Some(path) = agent.log_path(comp) else {
        return;
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path);
    if let Ok(mut f) = file {
        let _ = writeln!(f, "nines-agent: {line}");
    }
}

/// Why a boot did not end healthy.
pub(crate) enum BootError {
    /// The instantiate timeout ran out (QMP never greeted, or the probe never passed).
    TimedOut(String),
    /// QMP failed otherwise.
    Failed(String),
}

/// Waits for QMP and then for the probe, answers the instantiate and starts the supervision.
/// If QEMU exits meanwhile, its exit answers (see [`lifecycle::on_death`]); if the incarnation
/// stopped being the one instantiating (a cleanup came), nothing is answered, as for an
/// SA-aware component that had not registered.
async fn boot(
    agent: &Arc<Agent>,
    comp: CompId,
    gen: u64,
    run: Arc<VmRun>,
    proc: Arc<Proc>,
    deadline: Instant,
) {
    let started = Instant::now();
    let health = config(agent, comp).and_then(|v| v.health.clone());
    let booted = tokio::select! {
        r = connect_and_probe(&run, health.as_ref(), deadline) => r,
        _ = proc.exited() => return,
    };
    let events = match booted {
        Ok((qmp, events)) => {
            *run.qmp.lock().await = Some(qmp);
            Ok(events)
        }
        Err(e) => Err(e),
    };
    if let Some(events) = instantiated(agent, comp, gen, started, events) {
        supervise(agent, comp, gen, Some(events), health);
    }
}

/// Answers the instantiate of incarnation `gen` from how its boot ended (started at
/// `started`), if it is still the one instantiating; what the boot brought (`T`) when the VM
/// is now running, `None` otherwise. Both drivers end their boots here.
pub(crate) fn instantiated<T>(
    agent: &Agent,
    comp: CompId,
    gen: u64,
    started: Instant,
    booted: Result<T, BootError>,
) -> Option<T> {
    let m = agent.comp(comp);
    let got = match booted {
        Ok(got) => got,
        Err(e) => {
            let (outcome, why) = match e {
                BootError::TimedOut(why) => (Outcome::TimedOut, why),
                BootError::Failed(why) => (Outcome::Failed, why),
            };
            if abandon(agent, comp, gen) {
                tracing::warn!(component = %m.path, ?outcome, "VM not instantiated: {why}");
                lifecycle::done(agent, comp, Command::Instantiate, outcome);
            }
            return None;
        }
    };
    {
        let mut comps = agent.comps();
        match comps.get_mut(&comp) {
            Some(i) if i.gen == gen && i.phase == Phase::Instantiating => i.phase = Phase::Running,
            _ => return None,
        }
    }
    tracing::info!(component = %m.path, took = ?started.elapsed(), "VM healthy");
    lifecycle::done(agent, comp, Command::Instantiate, Outcome::Ok);
    Some(got)
}

/// QMP's greeting, then (with a probe) a healthy guest, before `deadline`.
async fn connect_and_probe(
    run: &VmRun,
    health: Option<&VmHealth>,
    deadline: Instant,
) -> Result<(Qmp, UnboundedReceiver<QmpEvent>), BootError> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let (qmp, events) = match Qmp::connect(&run.spec.qmp_socket, left()).await {
        Ok(c) => c,
        Err(e @ nines_vm::Error::Timeout { .. }) => return Err(BootError::TimedOut(e.to_string())),
        Err(e) => return Err(BootError::Failed(e.to_string())),
    };
    if let Some(h) = health {
        let probe = probe_of(h);
        if let Err(e) = nines_vm::wait_healthy(&probe, h.period, h.timeout, left()).await {
            return Err(BootError::TimedOut(e.to_string()));
        }
    }
    Ok((qmp, events))
}

/// Marks incarnation `gen` abandoned if it is still instantiating; whether it was. QEMU runs
/// on until the engine's cleanup, as an SA-aware component that did not register does.
fn abandon(agent: &Agent, comp: CompId, gen: u64) -> bool {
    let mut comps = agent.comps();
    match comps.get_mut(&comp) {
        Some(i) if i.gen == gen && i.phase == Phase::Instantiating => {
            i.phase = Phase::Abandoned;
            true
        }
        _ => false,
    }
}

/// Starts watching a running VM: its QMP events (when connected) and its probe (when it has
/// one). Both end on their own once the incarnation is no longer running unfailed.
pub(crate) fn supervise(
    agent: &Arc<Agent>,
    comp: CompId,
    gen: u64,
    events: Option<UnboundedReceiver<QmpEvent>>,
    health: Option<VmHealth>,
) {
    if let Some(events) = events {
        let a = agent.clone();
        tokio::spawn(async move { watch_events(&a, comp, gen, events).await });
    }
    if let Some(h) = health {
        let a = agent.clone();
        tokio::spawn(async move { probe_loop(&a, comp, gen, h).await });
    }
}

/// The failure a QMP event means, if any: what the engine hears, and why (for the log).
fn failure_of(kind: &QmpEventKind) -> Option<(FaultKind, String)> {
    match kind {
        QmpEventKind::GuestPanicked { action } => Some((
            FaultKind::ErrorReport,
            format!("the guest kernel panicked (QEMU: {action})"),
        )),
        QmpEventKind::Stop => Some((
            FaultKind::ErrorReport,
            "the guest's CPUs were stopped".to_string(),
        )),
        QmpEventKind::Shutdown { guest, reason } => Some((
            FaultKind::Exited,
            format!(
                "the VM is shutting down ({} asked: {reason})",
                if *guest { "the guest" } else { "the host" }
            ),
        )),
        _ => None,
    }
}

/// What an event of a VM's driver means to its supervision.
pub(crate) enum Judged {
    /// The stream is over (QEMU is gone: the pidfd reports that).
    End,
    /// A failure: what the engine hears, and why (for the log).
    Failure(FaultKind, String),
    /// Nothing to report.
    Nothing,
}

/// Reports the first event of `events` that `judge` calls a failure, stamped when the driver
/// delivered it (`at`). Ends when `judge` says so or the stream does. Both drivers' event
/// streams (QMP's, libvirt's) are watched here.
pub(crate) async fn report_failures<E: std::fmt::Debug>(
    agent: &Arc<Agent>,
    comp: CompId,
    gen: u64,
    mut events: UnboundedReceiver<E>,
    judge: impl Fn(&E) -> (Judged, std::time::Instant),
) {
    let path = &agent.comp(comp).path;
    while let Some(ev) = events.recv().await {
        let (kind, why, at) = match judge(&ev) {
            (Judged::End, _) => {
                tracing::debug!(component = %path, event = ?ev, "VM events end");
                return;
            }
            (Judged::Nothing, _) => {
                tracing::debug!(component = %path, event = ?ev, "VM event");
                continue;
            }
            (Judged::Failure(kind, why), at) => (kind, why, at),
        };
        if agent.fail(comp, gen, kind, None, agent.clock.at(at)) {
            tracing::warn!(component = %path, "VM failed: {why}");
        }
    }
}

/// Reports the first QMP event that means a failure. Ends when QMP closes or the connection
/// is dropped.
async fn watch_events(
    agent: &Arc<Agent>,
    comp: CompId,
    gen: u64,
    events: UnboundedReceiver<QmpEvent>,
) {
    report_failures(agent, comp, gen, events, |ev: &QmpEvent| {
        let judged = match &ev.kind {
            QmpEventKind::Closed(_) => Judged::End,
            // The switchover of a migration out pauses the source guest.
            QmpEventKind::Stop if migrating(agent, comp, gen) => Judged::Nothing,
            kind => match failure_of(kind) {
                Some((kind, why)) => Judged::Failure(kind, why),
                None => Judged::Nothing,
            },
        };
        (judged, ev.at)
    })
    .await;
}

/// Whether incarnation `gen` of `comp` is being migrated out.
fn migrating(agent: &Agent, comp: CompId, gen: u64) -> bool {
    agent
        .comps()
        .get(&comp)
        .is_some_and(|i| i.gen == gen && i.vm.as_ref().is_some_and(|r| r.migrating()))
}

/// Probes every `period` (each bounded by `timeout`) while the incarnation runs; the first
/// probe without a good answer is a missed healthcheck.
pub(crate) async fn probe_loop(agent: &Arc<Agent>, comp: CompId, gen: u64, h: VmHealth) {
    let path = &agent.comp(comp).path;
    let probe = probe_of(&h);
    let mut tick = interval_at(Instant::now() + h.period, h.period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let running = agent
            .comps()
            .get(&comp)
            .is_some_and(|i| i.gen == gen && i.phase == Phase::Running && !i.failed);
        if !running {
            return;
        }
        let verdict = nines_vm::probe(&probe, h.timeout).await;
        let nines_vm::Health::Unhealthy(why) = verdict else {
            continue;
        };
        if migrating(agent, comp, gen) {
            // The switchover's pause, or the source already paused for good: the migration
            // decides what happens to this incarnation.
            tracing::debug!(component = %path, "VM probe missed while migrating: {why}");
            continue;
        }
        let at = agent.clock.now();
        if agent.fail(comp, gen, FaultKind::HealthcheckMissed, None, at) {
            tracing::warn!(component = %path, timeout = ?h.timeout, "VM health probe failed: {why}");
        }
        return;
    }
}

/// Terminate: ACPI power-down, then QMP `quit`, then SIGKILL, within the terminate timeout
/// (plus [`REAP_GRACE`] after the kill, as for processes). The kill goes through `proc`,
/// which signals only while QEMU is unreaped.
pub(crate) async fn terminate(agent: &Agent, comp: CompId, proc: &Proc, run: &VmRun) -> Outcome {
    #[cfg(feature = "libvirt")]
    if let Some(dom) = &run.libvirt {
        return crate::vm_libvirt::terminate(agent, comp, proc, dom).await;
    }
    let m = agent.comp(comp);
    let limit = m.timeouts.terminate;
    let quit = (limit / 5).min(QUIT_STEP);
    let timeouts = TerminateTimeouts {
        powerdown: limit.saturating_sub(quit),
        quit,
        kill: REAP_GRACE,
    };
    let mut qmp = run.qmp.lock().await;
    let mut exited = Box::pin(async {
        proc.exited().await;
    });
    let kill = || {
        proc.signal_group(Signal::KILL);
        Ok(())
    };
    let result = nines_vm::terminate_with(qmp.as_mut(), &mut exited, &timeouts, kill).await;
    *qmp = None;
    match result {
        Ok(Terminated::Killed) => {
            tracing::warn!(component = %m.path, timeout = ?limit, "VM did not power down or quit in time; killed");
            Outcome::Ok
        }
        Ok(how) => {
            tracing::debug!(component = %m.path, ?how, "VM ended");
            Outcome::Ok
        }
        Err(e) => {
            tracing::error!(component = %m.path, pid = proc.pid(), "VM survives SIGKILL: {e}");
            Outcome::TimedOut
        }
    }
}

/// After a cleanup's SIGKILL: drop the QMP connection (if nobody is using it; a terminate in
/// progress drops its own) and remove the socket QEMU left; for libvirt, destroy and undefine
/// the domain and remove its files.
pub(crate) async fn cleaned_up(agent: &Agent, comp: CompId, run: &VmRun) {
    #[cfg(feature = "libvirt")]
    if let Some(dom) = &run.libvirt {
        return crate::vm_libvirt::remove(agent, comp, dom).await;
    }
    if let Ok(mut qmp) = run.qmp.try_lock() {
        *qmp = None;
    }
    if let Err(e) = nines_vm::cleanup(None, &run.spec) {
        tracing::warn!(component = %agent.comp(comp).path, "VM cleanup: {e}");
    }
}

/// What an adopted VM (QEMU outlived the agent that started it) needs beside its pidfd: the
/// spec it was started with, rebuilt from the model, which names its QMP socket.
pub(crate) fn adopted_run(agent: &Agent, comp: CompId) -> Option<Arc<VmRun>> {
    Some(Arc::new(VmRun::new(spec_of(agent, comp)?)))
}

/// Supervises adopted incarnation `gen` (already recorded as `Running`): connects to its QMP
/// socket again (bounded by the instantiate timeout), then watches its events and probes it.
/// Without QMP it is still watched by pidfd and probe, and terminate goes straight to SIGKILL.
pub(crate) fn supervise_adopted(agent: &Arc<Agent>, comp: CompId, gen: u64, run: Arc<VmRun>) {
    // Taken now and held while connecting, so a terminate that comes meanwhile waits for the
    // connection (bounded by the same timeout) instead of going straight to SIGKILL. Nobody
    // else holds it yet (the incarnation was recorded a moment ago), so this succeeds.
    let taken = run.qmp.clone().try_lock_owned().ok();
    let a = agent.clone();
    tokio::spawn(async move {
        let m = a.comp(comp);
        let mut slot = match taken {
            Some(guard) => guard,
            None => run.qmp.clone().lock_owned().await,
        };
        let events = match Qmp::connect(&run.spec.qmp_socket, m.timeouts.instantiate).await {
            Ok((qmp, events)) => {
                *slot = Some(qmp);
                Some(events)
            }
            Err(e) => {
                tracing::warn!(component = %m.path, "adopted VM: no QMP connection: {e}");
                None
            }
        };
        drop(slot);
        let health = config(&a, comp).and_then(|v| v.health.clone());
        supervise(&a, comp, gen, events, health);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use nines_model::{VmForward, VmHealth};
    use std::net::SocketAddr;

    fn model() -> nines_model::Model {
        let text = "cluster: c
nodes: [n1]
apps:
  web:
    sgs:
      sg:
        redundancy: no-redundancy
        units: { su-1: { node: n1 } }
        components:
          guest:
            kind: vm
            vm:
              kernel: /img/vmlinux
              initrd: /img/initramfs.cpio
              memory: 256M
              cpus: 2
              accel: tcg
              forwards: [{ host: 18080, guest: 80 }, { host: 18022, guest: 22 }]
              health: { http: \"127.0.0.1:18080/cgi-bin/health\", expect: healthy }
              cmdline_extra: [svcdebug=1]
    sis: { si: { sg: sg, csis: { main: { component: guest } } } }
";
        match nines_model::load(text, "t.yaml") {
            Ok(l) => l.model,
            Err(e) => panic!("{e:?}"),
        }
    }

    const HOST: HostFacts = HostFacts {
        tsc_khz: 2_000_000,
        kvm_usable: false,
    };

    #[test]
    fn the_spec_follows_the_model() {
        let m = model();
        let c = &m.comps[0];
        let vm = c.vm.as_ref().expect("vm");
        let run = Path::new("/run/n1.sock.vm");
        let spec = spec_for(c, 0, vm, run, Some(Path::new("/var/log/nines")));
        assert_eq!(spec.name, "web.sg.su-1.guest");
        assert_eq!(spec.kernel, Path::new("/img/vmlinux"));
        assert_eq!(
            spec.initrd.as_deref(),
            Some(Path::new("/img/initramfs.cpio"))
        );
        assert_eq!((spec.memory_mib, spec.vcpus), (256, 2));
        assert_eq!(spec.accel, Accel::Tcg);
        assert_eq!(spec.cmdline, ["svcdebug=1"]);
        assert_eq!(spec.qmp_socket, Path::new("/run/n1.sock.vm/c0.qmp"));
        assert_eq!(
            spec.serial_log,
            Path::new("/var/log/nines/web-sg-su-1-guest.serial")
        );
        assert_eq!(
            spec.network,
            Network::User {
                forwards: vec![
                    PortForward {
                        host: 18080,
                        guest: 80
                    },
                    PortForward {
                        host: 18022,
                        guest: 22
                    }
                ]
            }
        );
        // nines-vm accepts it, and the command line carries what the model said.
        let cmd = nines_vm::command_with(&spec, &HOST).expect("a valid spec");
        let line: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = line.join(" ");
        for part in [
            "-accel tcg",
            "-m 256 -smp 2 -name web.sg.su-1.guest",
            "svcname=web.sg.su-1.guest svcdebug=1",
            "hostfwd=tcp:127.0.0.1:18080-:80,hostfwd=tcp:127.0.0.1:18022-:22",
            "-qmp unix:/run/n1.sock.vm/c0.qmp,server=on,wait=off",
        ] {
            assert!(line.contains(part), "{part:?} not in {line}");
        }
        // Without a log directory the console goes beside the socket.
        let spec = spec_for(c, 7, vm, run, None);
        assert_eq!(spec.serial_log, Path::new("/run/n1.sock.vm/c7.serial"));
    }

    #[test]
    fn names_are_safe_for_qemu_and_keep_their_tail() {
        assert_eq!(vm_name("a/sg/su-1/vm"), "a.sg.su-1.vm");
        assert_eq!(vm_name("a b/é,x/su/c"), "a_b.__x.su.c");
        let long = format!("{}/su-9/guest", "x".repeat(100));
        let name = vm_name(&long);
        assert_eq!(name.len(), 64);
        assert!(name.ends_with("x.su-9.guest"));
    }

    /// The model's limits are within the driver's: any VM the loader accepts gets a spec
    /// nines-vm takes.
    #[test]
    fn the_model_limits_fit_the_driver() {
        let m = model();
        let c = &m.comps[0];
        let mut vm = c.vm.clone().expect("vm");
        for (mem, cpus) in [
            (nines_model::defaults::VM_MIN_MEMORY_MIB, 1),
            (u32::MAX, nines_model::defaults::VM_MAX_CPUS),
        ] {
            vm.memory_mib = mem;
            vm.cpus = cpus;
            vm.forwards = vec![VmForward {
                host: 1,
                guest: 65535,
            }];
            vm.health = Some(VmHealth {
                probe: VmProbe::Tcp {
                    addr: SocketAddr::from(([127, 0, 0, 1], 1)),
                },
                period: Duration::from_millis(1),
                timeout: Duration::from_millis(1),
            });
            let spec = spec_for(c, usize::MAX, &vm, Path::new("/run/x.sock.vm"), None);
            assert!(
                nines_vm::command_with(&spec, &HOST).is_ok(),
                "{mem} MiB, {cpus} vCPUs"
            );
        }
    }

    #[test]
    fn qmp_events_that_are_failures() {
        let shutdown = |guest| QmpEventKind::Shutdown {
            guest,
            reason: "x".into(),
        };
        let kind = |k: &QmpEventKind| failure_of(k).map(|(kind, _)| kind);
        assert_eq!(
            kind(&QmpEventKind::GuestPanicked {
                action: "poweroff".into()
            }),
            Some(FaultKind::ErrorReport)
        );
        assert_eq!(kind(&QmpEventKind::Stop), Some(FaultKind::ErrorReport));
        assert_eq!(kind(&shutdown(true)), Some(FaultKind::Exited));
        assert_eq!(kind(&shutdown(false)), Some(FaultKind::Exited));
        assert_eq!(kind(&QmpEventKind::Resume), None);
        assert_eq!(kind(&QmpEventKind::Powerdown), None);
        assert_eq!(
            kind(&QmpEventKind::Closed(nines_vm::CloseReason::Eof)),
            None
        );
    }

    #[test]
    fn run_dir_is_beside_the_socket() {
        assert_eq!(
            run_dir(Path::new("/s/node-1.sock")),
            Path::new("/s/node-1.sock.vm")
        );
    }
}
