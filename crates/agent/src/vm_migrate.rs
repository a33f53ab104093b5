//! Live migration of VM components: the agent's side of the engine's three-step protocol
//! (see `nines_engine`'s `migration` module), for `driver: qemu`.
//!
//! * `MigrateIn` (destination): QEMU is started from the component's spec with
//!   `-incoming defer` and files of its own (the source may be a QEMU of the same component on
//!   this host, even of this agent), spawned as any VM is (a direct child in its own process
//!   group, watched by a pidfd); once QMP answers, `migrate-incoming` on `0.0.0.0:0` (reachable
//!   from other hosts, the port the kernel's) and `MigrationPrepared` with that port. The
//!   waiting QEMU is kept in [`Agent::incoming`], not among the incarnations: nothing is
//!   reported for it, and if it dies meanwhile it is just dropped (the source's send fails, or
//!   the finish finds nothing).
//! * `MigrateOut` (source, the VM's owner): `migrate` to the destination and wait for it to
//!   complete; then the incarnation is `Stopping` *before* QEMU is quit, so its exit, its QMP
//!   closing and a missed probe are no failures; the VM is no longer this agent's
//!   ([`Agent::set_owned`]). While the state is sent, the switchover's pause (`STOP`) and a probe
//!   it makes miss are not failures either ([`VmRun::migrating`]). A failed send is cancelled and
//!   leaves the VM running and supervised here.
//! * `MigrateFinish{commit}` (destination): wait for the incoming state to be loaded, add the
//!   port forwards (retrying while a source on this host still holds the port), check the guest
//!   runs, then install it as the component's running incarnation, supervised exactly as a
//!   booted VM. The VM is this agent's from the commit on, even if the take-over fails: the
//!   engine then recovers it here. Not `commit`: the waiting QEMU is killed, without answer.
//!
//! Every wait is bounded by the component's instantiate timeout (the migration replaces a
//! boot); kills are reaped within [`REAP_GRACE`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nines_engine::{Input, Outcome};
use nines_model::{CompId, VmDriver};
use nines_vm::{HostFacts, Qmp, QmpEvent};
use rustix::process::Signal;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{timeout, Instant};

use crate::agent::{Agent, Incarnation, Phase};
use crate::commands::REAP_GRACE;
use crate::pidfd::Proc;
use crate::vm::{self, VmRun, QUIT_STEP};
use crate::{lifecycle, spawner, spawning, vip};

/// How often `query-migrate` is asked while a migration runs (it completes in a few hundred
/// milliseconds, the destination some 60 ms after the source).
const POLL: Duration = Duration::from_millis(5);

/// Pause between attempts to add a port forward the dying source still holds.
const FORWARD_RETRY: Duration = Duration::from_millis(20);

/// Where a destination listens: every address, so that another host's source reaches it.
const LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// A migration destination: QEMU started with `-incoming defer`, waiting for the state.
pub(crate) struct Waiting {
    /// Tells this destination from a later one of the same component.
    id: u64,
    proc: Arc<Proc>,
    run: Arc<VmRun>,
    /// QMP's events, once it is connected and listening (`MigrationPrepared` was sent).
    events: Option<UnboundedReceiver<QmpEvent>>,
}

fn prepared(agent: &Agent, comp: CompId, port: Option<u16>) {
    agent.report(agent.clock.now(), Input::MigrationPrepared { comp, port });
}

/// `MigrateIn`: start the destination QEMU (on the foreground spawner, as a boot), then make
/// it listen; answers `MigrationPrepared`.
pub(crate) fn migrate_in(agent: &Arc<Agent>, comp: CompId) {
    let m = agent.comp(comp);
    let deadline = Instant::now() + m.timeouts.instantiate;
    if let Some(old) = agent.incoming().remove(&comp) {
        tracing::warn!(component = %m.path, "an earlier migration destination was still waiting; discarded");
        tokio::spawn(discard(old.proc, old.run));
    }
    // Actions for the component that come meanwhile (an abandon) wait for the spawn.
    spawning::begin(agent, comp);
    let a = agent.clone();
    spawner::run_foreground(move || {
        let _runtime = a.rt.enter();
        start_destination(&a, comp, deadline);
        spawning::end(&a, comp);
    });
}

/// On the foreground spawner thread: spawn the destination QEMU and record it as waiting,
/// then hand the rest to a task.
fn start_destination(agent: &Arc<Agent>, comp: CompId, deadline: Instant) {
    let m = agent.comp(comp);
    let failed = |why: String| {
        tracing::error!(component = %m.path, "cannot start the migration destination: {why}");
        prepared(agent, comp, None);
    };
    if *agent.stop.borrow() {
        return failed("the agent is shutting down".into());
    }
    match m.vm.as_ref().map(|v| v.driver) {
        Some(VmDriver::Qemu) => {}
        Some(VmDriver::Libvirt) => {
            return failed("live migration is implemented for `driver: qemu` only".into())
        }
        None => return failed("the component has no vm configuration".into()),
    }
    let spec = match vm::prepared_spec(agent, comp, true) {
        Ok(spec) => spec,
        Err(why) => return failed(why),
    };
    let facts = match HostFacts::probe() {
        Ok(f) => f,
        Err(e) => return failed(e.to_string()),
    };
    let proc = match vm::start_qemu(agent, comp, &spec, &facts) {
        Ok(proc) => proc,
        Err(why) => return failed(why),
    };
    let id = agent.next_id();
    let run = Arc::new(VmRun::new(spec));
    agent.incoming().insert(
        comp,
        Waiting {
            id,
            proc: proc.clone(),
            run: run.clone(),
            events: None,
        },
    );
    tracing::info!(component = %m.path, pid = proc.pid(), "migration destination started");
    let (a, p) = (agent.clone(), proc.clone());
    tokio::spawn(async move {
        let exit = p.exited().await;
        if take(&a, comp, id).is_some() {
            tracing::warn!(component = %a.comp(comp).path, status = %exit.status, "migration destination exited while waiting");
        }
    });
    let a = agent.clone();
    tokio::spawn(async move { listen(&a, comp, id, proc, run, deadline).await });
}

/// Removes destination `id` of `comp` from the waiting ones, if it is still there.
fn take(agent: &Agent, comp: CompId, id: u64) -> Option<Waiting> {
    let mut waiting = agent.incoming();
    if waiting.get(&comp).is_some_and(|w| w.id == id) {
        waiting.remove(&comp)
    } else {
        None
    }
}

/// QMP, then `migrate-incoming`, before `deadline`; answers `MigrationPrepared`.
async fn listen(
    agent: &Arc<Agent>,
    comp: CompId,
    id: u64,
    proc: Arc<Proc>,
    run: Arc<VmRun>,
    deadline: Instant,
) {
    let path = &agent.comp(comp).path;
    let left = || deadline.saturating_duration_since(Instant::now());
    let listening = async {
        let (mut qmp, events) = Qmp::connect(&run.spec.qmp_socket, left())
            .await
            .map_err(|e| e.to_string())?;
        let port = qmp
            .migrate_incoming(LISTEN, left())
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((qmp, events, port))
    };
    let result = tokio::select! {
        r = listening => r,
        exit = proc.exited() => Err(format!("QEMU exited ({})", exit.status)),
    };
    match result {
        Ok((qmp, events, port)) => {
            *run.qmp.lock().await = Some(qmp);
            let mut waiting = agent.incoming();
            match waiting.get_mut(&comp) {
                Some(w) if w.id == id => {
                    w.events = Some(events);
                    drop(waiting);
                    tracing::info!(component = %path, port, "migration destination listening");
                    prepared(agent, comp, Some(port));
                }
                // Discarded meanwhile (abandoned, replaced, or QEMU died): nothing to answer
                // for, the engine has moved on.
                _ => {
                    tracing::debug!(component = %path, "migration destination discarded before it listened")
                }
            }
        }
        Err(why) => {
            tracing::error!(component = %path, "migration destination not ready: {why}");
            take(agent, comp, id);
            discard(proc, run).await;
            prepared(agent, comp, None);
        }
    }
}

/// Kills a QEMU that is no incarnation (a destination, or a source that migrated out and
/// may have quit already), reaps it and removes its socket.
async fn discard(proc: Arc<Proc>, run: Arc<VmRun>) {
    if let Ok(mut qmp) = run.qmp.try_lock() {
        *qmp = None;
    }
    proc.signal_group(Signal::KILL);
    if timeout(REAP_GRACE, proc.exited()).await.is_err() {
        tracing::error!(pid = proc.pid(), "a migration's QEMU survives SIGKILL");
    }
    if let Err(e) = nines_vm::cleanup(None, &run.spec) {
        tracing::warn!("after a migration: {e}");
    }
}

/// Kills and reaps every waiting destination (the agent stops).
pub(crate) async fn discard_all(agent: &Agent) {
    let all: Vec<Waiting> = agent.incoming().drain().map(|(_, w)| w).collect();
    for w in all {
        discard(w.proc, w.run).await;
    }
}

/// `MigrateOut`: send `comp`'s running VM to `dest`; answers `MigrationSent`.
pub(crate) fn migrate_out(agent: &Arc<Agent>, comp: CompId, dest: SocketAddr) {
    let a = agent.clone();
    tokio::spawn(async move {
        let outcome = send(&a, comp, dest).await;
        a.report(a.clock.now(), Input::MigrationSent { comp, outcome });
    });
}

async fn send(agent: &Arc<Agent>, comp: CompId, dest: SocketAddr) -> Outcome {
    let m = agent.comp(comp);
    let started = Instant::now();
    let deadline = started + m.timeouts.instantiate;
    let left = || deadline.saturating_duration_since(Instant::now());
    let found = agent
        .comps()
        .get(&comp)
        .filter(|i| i.phase == Phase::Running && !i.failed)
        .and_then(|i| Some((i.gen, i.proc.clone(), i.vm.clone()?)));
    let Some((gen, proc, run)) = found else {
        tracing::warn!(component = %m.path, "migrate out: the VM is not running here");
        return Outcome::Failed;
    };
    #[cfg(feature = "libvirt")]
    if run.libvirt.is_some() {
        tracing::warn!(component = %m.path, "migrate out: not implemented for `driver: libvirt`");
        return Outcome::Failed;
    }
    let Ok(mut slot) = tokio::time::timeout_at(deadline, run.qmp.clone().lock_owned()).await else {
        tracing::warn!(component = %m.path, "migrate out: QMP busy until the timeout");
        return Outcome::Failed;
    };
    let Some(qmp) = slot.as_mut() else {
        tracing::warn!(component = %m.path, "migrate out: no QMP connection to the VM");
        return Outcome::Failed;
    };
    run.migrating.store(true, Ordering::SeqCst);
    let uri = format!("tcp:{dest}");
    tracing::info!(component = %m.path, %uri, "migrating out");
    let result = {
        let sending = async {
            qmp.migrate(&uri, left()).await?;
            qmp.wait_migrated(POLL, left()).await
        };
        tokio::select! {
            r = sending => r.map_err(|e| e.to_string()),
            exit = proc.exited() => Err(format!("QEMU exited ({})", exit.status)),
        }
    };
    let info = match result {
        Ok(info) => info,
        Err(why) => {
            if proc.exit_now().is_none() {
                // A timeout leaves it running: stop it, and let the guest resume.
                if let Err(e) = qmp.migrate_cancel(QUIT_STEP).await {
                    tracing::warn!(component = %m.path, "migrate_cancel: {e}");
                }
                let _ = qmp.wait_migrated(POLL, QUIT_STEP).await;
            }
            run.migrating.store(false, Ordering::SeqCst);
            tracing::warn!(component = %m.path, "migration out failed; the VM runs on here: {why}");
            return Outcome::Failed;
        }
    };
    // The VM runs on the destination now: what follows here is no failure.
    run.migrated.store(true, Ordering::SeqCst);
    {
        let mut comps = agent.comps();
        if let Some(i) = comps.get_mut(&comp).filter(|i| i.gen == gen) {
            i.phase = Phase::Stopping;
        }
    }
    vip::drop_comp(agent, comp);
    agent.set_owned(comp, false);
    if let Err(e) = qmp.quit(QUIT_STEP).await {
        tracing::debug!(component = %m.path, "quit after the migration: {e}");
    }
    *slot = None;
    drop(slot);
    if timeout(QUIT_STEP, proc.exited()).await.is_err() {
        tracing::warn!(component = %m.path, "the migrated-out QEMU did not quit; killed");
    }
    discard(proc, run.clone()).await;
    {
        let mut comps = agent.comps();
        if comps.get(&comp).is_some_and(|i| i.gen == gen) {
            comps.remove(&comp);
        }
    }
    tracing::info!(
        component = %m.path,
        took = ?started.elapsed(),
        total_ms = ?info.total_time_ms,
        downtime_ms = ?info.downtime_ms,
        "migrated out"
    );
    Outcome::Ok
}

/// `MigrateFinish`: take the migrated VM over (`commit`, answers `MigrationFinished`) or
/// discard the waiting destination (no answer).
pub(crate) fn migrate_finish(agent: &Arc<Agent>, comp: CompId, commit: bool) {
    let waiting = agent.incoming().remove(&comp);
    if !commit {
        if let Some(w) = waiting {
            tracing::info!(component = %agent.comp(comp).path, "migration abandoned; destination discarded");
            tokio::spawn(discard(w.proc, w.run));
        }
        return;
    }
    // From the commit on the VM is ours, taken over or not: the engine recovers it here.
    agent.set_owned(comp, true);
    let a = agent.clone();
    tokio::spawn(async move {
        let outcome = take_over(&a, comp, waiting).await;
        a.report(a.clock.now(), Input::MigrationFinished { comp, outcome });
    });
}

async fn take_over(agent: &Arc<Agent>, comp: CompId, waiting: Option<Waiting>) -> Outcome {
    let m = agent.comp(comp);
    let started = Instant::now();
    let Some(Waiting {
        proc, run, events, ..
    }) = waiting
    else {
        tracing::warn!(component = %m.path, "migrate finish: no migration destination here");
        return Outcome::Failed;
    };
    let Some(events) = events else {
        tracing::warn!(component = %m.path, "migrate finish: the destination never listened");
        discard(proc, run).await;
        return Outcome::Failed;
    };
    let deadline = started + m.timeouts.instantiate;
    let switched = tokio::select! {
        r = switch_over(agent, comp, &run, deadline) => r,
        exit = proc.exited() => Err(format!("QEMU exited ({})", exit.status)),
    };
    if let Err(why) = switched {
        tracing::error!(component = %m.path, "migration destination cannot take the VM over: {why}");
        discard(proc, run).await;
        return Outcome::Failed;
    }
    let gen = agent.next_id();
    let other = {
        let mut comps = agent.comps();
        match comps.get(&comp).filter(|i| i.proc.exit_now().is_none()) {
            Some(old) => Some(old.proc.pid()),
            None => {
                comps.insert(
                    comp,
                    Incarnation {
                        gen,
                        proc: proc.clone(),
                        phase: Phase::Running,
                        failed: false,
                        session: None,
                        held: Vec::new(),
                        vm: Some(run.clone()),
                    },
                );
                None
            }
        }
    };
    if let Some(pid) = other {
        tracing::error!(component = %m.path, pid, "migrate finish: another incarnation runs here");
        discard(proc, run).await;
        return Outcome::Failed;
    }
    agent.records.write(&m.path, proc.pid());
    lifecycle::follow_incarnation(agent, comp, gen, proc.clone());
    let health = vm::config(agent, comp).and_then(|v| v.health.clone());
    vm::supervise(agent, comp, gen, Some(events), health);
    tracing::info!(component = %m.path, pid = proc.pid(), took = ?started.elapsed(), "migrated in");
    Outcome::Ok
}

/// The destination's switch: the state loaded, the forwards added, the guest running.
async fn switch_over(
    agent: &Agent,
    comp: CompId,
    run: &VmRun,
    deadline: Instant,
) -> Result<(), String> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut slot = tokio::time::timeout_at(deadline, run.qmp.lock())
        .await
        .map_err(|_| "QMP busy until the timeout".to_string())?;
    let qmp = slot.as_mut().ok_or("no QMP connection")?;
    qmp.wait_migrated(POLL, left())
        .await
        .map_err(|e| e.to_string())?;
    let forwards = vm::config(agent, comp)
        .map(|v| v.forwards.clone())
        .unwrap_or_default();
    for f in forwards {
        loop {
            match qmp
                .hostfwd_add(nines_vm::NETDEV_ID, f.host, f.guest, left())
                .await
            {
                Ok(()) => break,
                // The source on this host may not have released the port yet.
                Err(e @ nines_vm::Error::Hmp { .. }) => {
                    if Instant::now() + FORWARD_RETRY >= deadline {
                        return Err(format!("port forward {}->{}: {e}", f.host, f.guest));
                    }
                    tokio::time::sleep(FORWARD_RETRY).await;
                }
                Err(e) => return Err(format!("port forward {}->{}: {e}", f.host, f.guest)),
            }
        }
    }
    loop {
        let status = qmp.query_status(left()).await.map_err(|e| e.to_string())?;
        if status.running {
            return Ok(());
        }
        if Instant::now() + POLL >= deadline {
            return Err(format!(
                "the guest is {} after the migration",
                status.status
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
