//! Instantiate, terminate and cleanup of process, SA-aware and VM components (the VM-specific
//! steps are in [`crate::vm`]).
//!
//! Every command gets exactly one `CommandDone`, and none waits forever: each step is bounded by
//! the component's timeouts, plus [`REAP_GRACE`] for the kernel to take down a SIGKILLed group.
//! A component is its process group: terminate and cleanup signal the group, and when the
//! leader exits whatever is left of the group is killed (see [`crate::pidfd`]).

use std::sync::Arc;
use std::time::Duration;

use nines_engine::{Command, FaultKind, Input, Instant, Outcome};
use nines_model::{CompId, CompKind};
use nines_proto::ToComponent;
use rustix::process::{Pid, Signal};
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout, timeout_at};

use crate::agent::{Agent, Incarnation, Phase};
use crate::commands::{self, CommandResult, CommandSpec, REAP_GRACE};
use crate::healthcheck;
use crate::pidfd::{ExitStatus, Proc};
use crate::session::Pending;
use crate::spawn;
use crate::{spawner, spawning, vip, vm};

pub(crate) fn done(agent: &Agent, comp: CompId, command: Command, outcome: Outcome) {
    agent.report(
        agent.clock.now(),
        Input::CommandDone {
            comp,
            command,
            outcome,
        },
    );
}

/// Start a component. Process components are instantiated once spawned; SA-aware ones once
/// they register (see [`crate::session`]) within `timeouts.instantiate`; VMs once healthy
/// (see [`crate::vm`]) within it.
pub(crate) fn instantiate(agent: &Arc<Agent>, comp: CompId, urgent: bool) {
    let m = agent.comp(comp);
    if *agent.stop.borrow() {
        tracing::warn!(component = %m.path, "not instantiating: the agent is shutting down");
        return done(agent, comp, Command::Instantiate, Outcome::Failed);
    }
    let comps = agent.comps();
    if let Some(old) = comps.get(&comp) {
        match old.phase {
            Phase::Running => {
                tracing::warn!(component = %m.path, pid = old.proc.pid(), "instantiate: already running");
                drop(comps);
                return done(agent, comp, Command::Instantiate, Outcome::Ok);
            }
            Phase::Instantiating => {
                // The attempt under way answers for both.
                tracing::warn!(component = %m.path, "instantiate: already being instantiated");
                return;
            }
            Phase::Stopping => {
                tracing::warn!(component = %m.path, "instantiate refused: still stopping");
                drop(comps);
                return done(agent, comp, Command::Instantiate, Outcome::Failed);
            }
            Phase::Abandoned | Phase::Exited | Phase::Adopting => {
                // Never leave an earlier incarnation running unsupervised (an adopted one
                // that has not registered again is not vouched for either).
                old.proc.signal_group(Signal::KILL);
            }
        }
    }
    spawning::begin(agent, comp);
    drop(comps);
    let a = agent.clone();
    if m.kind == CompKind::Vm {
        // At the agent's priority: the guest's boot is the repair (see `crate::spawner`).
        let deadline = tokio::time::Instant::now() + m.timeouts.instantiate;
        spawner::run_foreground(move || {
            let _runtime = a.rt.enter();
            vm::spawn_incarnation(&a, comp, deadline);
            spawning::end(&a, comp);
        });
        return;
    }
    let job = move || {
        let _runtime = a.rt.enter();
        spawn_incarnation(&a, comp);
        spawning::end(&a, comp);
    };
    // In the background lane only when no work waits for it (a repair that restores
    // redundancy): a restart in place, or a start-up, is the service coming back.
    if urgent {
        spawner::run_foreground(job);
    } else {
        spawner::run_background(job);
    }
}

/// The second half of [`instantiate`], on the spawner thread: start the process and record
/// the new incarnation. Actions for `comp` wait meanwhile (see [`crate::spawning`]).
fn spawn_incarnation(agent: &Arc<Agent>, comp: CompId) {
    let m = agent.comp(comp);
    if *agent.stop.borrow() {
        tracing::warn!(component = %m.path, "not instantiating: the agent is shutting down");
        return done(agent, comp, Command::Instantiate, Outcome::Failed);
    }
    let env = agent.env(comp);
    let log = agent.log_path(comp);
    // Not under the `comps` lock: a spawn takes up to milliseconds, and every other
    // component's task needs the lock. Nothing else touches `comp` meanwhile (its actions
    // wait in `spawning`, its registration waits for the spawn).
    let started = spawn::command(&m.instantiate, &env, log.as_deref())
        .and_then(|mut cmd| Proc::spawn(&mut cmd, agent.clock, &agent.live));
    let mut comps = agent.comps();
    let proc = match started {
        Ok(proc) => proc,
        Err(e) => {
            comps.remove(&comp);
            drop(comps);
            tracing::error!(
                component = %m.path,
                argv = ?m.instantiate,
                error = %e,
                "cannot start component"
            );
            return done(agent, comp, Command::Instantiate, Outcome::Failed);
        }
    };
    let gen = agent.next_id();
    let sa_aware = m.kind == CompKind::SaAware;
    comps.insert(
        comp,
        Incarnation {
            gen,
            proc: proc.clone(),
            phase: if sa_aware {
                Phase::Instantiating
            } else {
                Phase::Running
            },
            failed: false,
            session: None,
            held: Vec::new(),
            vm: None,
        },
    );
    drop(comps);
    agent.records.write(&m.path, proc.pid());
    tracing::info!(component = %m.path, pid = proc.pid(), "started");
    let leader = proc.leader();
    follow_incarnation(agent, comp, gen, proc);
    if sa_aware {
        let a = agent.clone();
        let limit = m.timeouts.instantiate;
        tokio::spawn(async move { registration_deadline(&a, comp, gen, limit).await });
        if spawner::starts_in_background() {
            let a = agent.clone();
            tokio::spawn(async move { end_background_start(&a, comp, gen, leader).await });
        }
    } else {
        // A process component is instantiated once spawned: the exec, the costly part, ran
        // in the background lane if it was a repair; from here on it runs at the agent's
        // priority.
        // (Whatever the process started already, in a housekeeping job.)
        spawner::restore_group(leader);
        done(agent, comp, Command::Instantiate, Outcome::Ok);
        healthcheck::start_monitor(agent, comp, gen);
    }
}

/// A repair's SA-aware process that has not registered after
/// [`spawner::BACKGROUND_START_LIMIT`] gets the agent's priority (registering would have given
/// it; see the constant for why the background is bounded).
async fn end_background_start(agent: &Arc<Agent>, comp: CompId, gen: u64, leader: Pid) {
    sleep(spawner::BACKGROUND_START_LIMIT).await;
    let starting = agent
        .comps()
        .get(&comp)
        .is_some_and(|i| i.gen == gen && i.phase == Phase::Instantiating);
    if starting {
        tracing::info!(component = %agent.comp(comp).path, "still starting: no longer in the background");
        spawner::restore_group(leader);
    }
}

/// An SA-aware component that has not registered in time is reported timed out; the engine then
/// cleans it up.
async fn registration_deadline(agent: &Arc<Agent>, comp: CompId, gen: u64, limit: Duration) {
    sleep(limit).await;
    let mut comps = agent.comps();
    let Some(inc) = comps.get_mut(&comp) else {
        return;
    };
    if inc.gen != gen || inc.phase != Phase::Instantiating {
        return;
    }
    inc.phase = Phase::Abandoned;
    drop(comps);
    tracing::warn!(
        component = %agent.comp(comp).path,
        timeout = ?limit,
        "did not register within the instantiate timeout"
    );
    done(agent, comp, Command::Instantiate, Outcome::TimedOut);
}

/// Follows incarnation `gen` of `comp` to its end: [`on_death`] as soon as its leader is seen
/// dead, the log line once it is reaped (with its exit status).
pub(crate) fn follow_incarnation(agent: &Arc<Agent>, comp: CompId, gen: u64, proc: Arc<Proc>) {
    let a = agent.clone();
    tokio::spawn(async move {
        let at = proc.died().await;
        let seen = on_death(&a, comp, gen, at);
        let exit = proc.exited().await;
        if let Some(died) = seen {
            log_exit(&a, comp, died, exit.status);
        }
    });
}

/// The leader of incarnation `gen` is dead (it may not be reaped yet): a failure if nobody
/// asked for it. Returns the phase it died in and whether this was its first failure, for
/// [`log_exit`]; `None` if `gen` is not the current incarnation (nothing was done).
///
/// The failure is reported as soon as the agent's own state says the incarnation is gone, and
/// nothing that only tidies up runs before the engine has acted on it: the log line comes once
/// the process is reaped, and a failed component's record file stays for its next incarnation
/// to replace.
pub(crate) fn on_death(agent: &Arc<Agent>, comp: CompId, gen: u64, at: Instant) -> Option<Died> {
    let path = &agent.comp(comp).path;
    let mut comps = agent.comps();
    let inc = comps.get_mut(&comp)?;
    if inc.gen != gen {
        return None;
    }
    let phase = inc.phase;
    let first_failure = !inc.failed;
    let pid = inc.proc.pid();
    if phase != Phase::Stopping {
        inc.phase = Phase::Exited;
    }
    if let Some(link) = inc.session.take() {
        link.close();
    }
    if matches!(phase, Phase::Running | Phase::Instantiating) {
        inc.failed = true;
    }
    // A VM that migrated out keeps its assignments: it serves them on the destination.
    let migrated = inc.vm.as_ref().is_some_and(|r| r.migrated_out());
    drop(comps);
    agent.changed.notify_waiters();
    if !migrated {
        agent.groups().remove_comp(&agent.model, comp);
    }
    // Queued before the failure is reported, so it goes before anything the engine decides.
    vip::drop_comp(agent, comp);
    match phase {
        Phase::Instantiating => {
            agent.report(
                at,
                Input::CommandDone {
                    comp,
                    command: Command::Instantiate,
                    outcome: Outcome::Failed,
                },
            );
        }
        Phase::Running if first_failure => {
            agent.report(
                at,
                Input::ComponentFailed {
                    comp,
                    kind: FaultKind::Exited,
                    recommended: None,
                },
            );
        }
        _ => {}
    }
    // The record goes with a stop, which waits for nobody. A failed component's stays: the
    // next incarnation's record replaces it (written whole and renamed over it), and an agent
    // started meanwhile finds it names a dead process and discards it. Removing it here cost
    // a failover 60-70 us (openat, read, unlink), and removing it later raced with the next
    // incarnation's record, whose loss would leave that incarnation unadoptable.
    if phase == Phase::Stopping {
        agent.records.remove(path, pid);
    }
    Some(Died {
        phase,
        first_failure,
    })
}

/// The phase an incarnation died in, as [`on_death`] found it: what its log line says.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Died {
    phase: Phase,
    first_failure: bool,
}

/// The log line of a death [`on_death`] handled, once the exit status is known.
fn log_exit(agent: &Agent, comp: CompId, died: Died, status: ExitStatus) {
    let path = &agent.comp(comp).path;
    match died.phase {
        Phase::Instantiating => {
            let before = if agent.comp(comp).kind == CompKind::Vm {
                "exited before the VM was healthy"
            } else {
                "exited before registering"
            };
            tracing::error!(component = %path, %status, "{before}");
        }
        Phase::Running if died.first_failure => {
            tracing::warn!(component = %path, %status, "exited");
        }
        Phase::Adopting => {
            tracing::warn!(component = %path, "adopted component exited before registering again");
        }
        _ => tracing::info!(component = %path, %status, "exited"),
    }
}

/// Stop a component gracefully and report `CommandDone{Terminate}`.
pub(crate) fn terminate(agent: &Arc<Agent>, comp: CompId) {
    let a = agent.clone();
    tokio::spawn(async move {
        let outcome = stop_gracefully(&a, comp).await;
        done(&a, comp, Command::Terminate, outcome);
    });
}

/// Claim the current incarnation for a stop: `None` if there is nothing left to stop. A
/// component being stopped serves nothing: its floating IPs go at once.
fn begin_stop(agent: &Arc<Agent>, comp: CompId, keep_session: bool) -> Option<Incarnation> {
    let mut comps = agent.comps();
    let inc = comps.get_mut(&comp)?;
    vip::drop_comp(agent, comp);
    inc.phase = Phase::Stopping;
    let session = if keep_session {
        inc.session.clone()
    } else {
        let s = inc.session.take();
        if let Some(s) = &s {
            s.close();
        }
        None
    };
    Some(Incarnation {
        gen: inc.gen,
        proc: inc.proc.clone(),
        phase: Phase::Stopping,
        failed: inc.failed,
        session,
        held: Vec::new(),
        vm: inc.vm.clone(),
    })
}

/// Forget incarnation `gen` once it is reaped (a newer one may have replaced it).
fn end_stop(agent: &Agent, comp: CompId, gen: u64) {
    let mut comps = agent.comps();
    if comps
        .get(&comp)
        .is_some_and(|i| i.gen == gen && i.proc.exit_now().is_some())
    {
        comps.remove(&comp);
    }
}

/// SA-aware: the terminate callback first (answer or exit, within the callback timeout). Then
/// the `terminate` command if configured, otherwise SIGTERM to the group; SIGKILL once
/// `timeouts.terminate` (counted from the start) has passed. Done once the leader is reaped.
pub(crate) async fn stop_gracefully(agent: &Arc<Agent>, comp: CompId) -> Outcome {
    let m = agent.comp(comp);
    let Some(inc) = begin_stop(agent, comp, true) else {
        return Outcome::Ok;
    };
    let proc = inc.proc.clone();
    if proc.exit_now().is_some() {
        end_stop(agent, comp, inc.gen);
        return Outcome::Ok;
    }
    if let Some(run) = &inc.vm {
        let outcome = vm::terminate(agent, comp, &proc, run).await;
        end_stop(agent, comp, inc.gen);
        tracing::info!(component = %m.path, ?outcome, "terminated");
        return outcome;
    }
    let limit = m.timeouts.terminate;
    let deadline = tokio::time::Instant::now() + limit;
    let mut outcome = Outcome::Ok;
    if let Some(link) = &inc.session {
        let invocation = agent.next_id();
        let (tx, rx) = oneshot::channel();
        // Like any callback, answered within the callback timeout; the rest of the terminate
        // timeout is left for SIGTERM to work.
        let answer_by = deadline.min(tokio::time::Instant::now() + m.timeouts.callback);
        link.add_pending(invocation, Pending::Terminate(tx));
        let _ = link.send(&ToComponent::Terminate { invocation });
        tokio::select! {
            answer = rx => {
                if answer == Ok(false) {
                    tracing::warn!(component = %m.path, "refused to terminate; stopping it anyway");
                    outcome = Outcome::Failed;
                }
            }
            _ = proc.exited() => {}
            _ = tokio::time::sleep_until(answer_by) => {
                tracing::warn!(component = %m.path, "did not answer the terminate callback");
            }
        }
        link.take_pending(invocation);
    }
    if proc.exit_now().is_none() {
        match &m.terminate {
            Some(argv) => {
                let env = agent.command_env(comp, Some(proc.pid()));
                let log = agent.log_path(comp);
                let spec = CommandSpec {
                    what: "terminate",
                    component: &m.path,
                    argv,
                    env: &env,
                    log: log.as_deref(),
                };
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match commands::run(&spec, left, agent.clock, &agent.live).await {
                    CommandResult::Success => {}
                    CommandResult::Failed(_) => outcome = Outcome::Failed,
                    CommandResult::TimedOut => outcome = Outcome::TimedOut,
                }
            }
            None => {
                proc.signal_group(Signal::TERM);
            }
        }
        if timeout_at(deadline, proc.exited()).await.is_err() {
            tracing::warn!(
                component = %m.path,
                timeout = ?limit,
                "still running at the terminate timeout; killing it"
            );
            proc.signal_group(Signal::KILL);
            if timeout(REAP_GRACE, proc.exited()).await.is_err() {
                tracing::error!(component = %m.path, pid = proc.pid(), "survives SIGKILL");
                outcome = Outcome::TimedOut;
            }
        }
    }
    end_stop(agent, comp, inc.gen);
    tracing::info!(component = %m.path, ?outcome, "terminated");
    outcome
}

/// Stop a component by force and report `CommandDone{Cleanup}`.
pub(crate) fn cleanup(agent: &Arc<Agent>, comp: CompId) {
    let a = agent.clone();
    tokio::spawn(async move {
        let outcome = clean_up(&a, comp).await;
        done(&a, comp, Command::Cleanup, outcome);
    });
}

/// The `cleanup` command if configured (bounded by `timeouts.cleanup`), then SIGKILL to the
/// group in any case; done once the leader is reaped.
async fn clean_up(agent: &Arc<Agent>, comp: CompId) -> Outcome {
    let m = agent.comp(comp);
    let Some(inc) = begin_stop(agent, comp, false) else {
        return Outcome::Ok; // not running: nothing to clean
    };
    let proc = inc.proc.clone();
    let limit = m.timeouts.cleanup;
    let deadline = tokio::time::Instant::now() + limit;
    let mut outcome = Outcome::Ok;
    if let Some(argv) = &m.cleanup {
        let pid = proc.exit_now().is_none().then(|| proc.pid());
        let env = agent.command_env(comp, pid);
        let log = agent.log_path(comp);
        let spec = CommandSpec {
            what: "cleanup",
            component: &m.path,
            argv,
            env: &env,
            log: log.as_deref(),
        };
        match commands::run(&spec, limit, agent.clock, &agent.live).await {
            CommandResult::Success => {}
            CommandResult::Failed(_) => outcome = Outcome::Failed,
            CommandResult::TimedOut => outcome = Outcome::TimedOut,
        }
    }
    proc.signal_group(Signal::KILL);
    let left = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(REAP_GRACE);
    if timeout(left, proc.exited()).await.is_err() {
        tracing::error!(component = %m.path, pid = proc.pid(), "cannot be reaped after SIGKILL");
        outcome = Outcome::TimedOut;
    }
    if let Some(run) = &inc.vm {
        vm::cleaned_up(agent, comp, run).await;
    }
    end_stop(agent, comp, inc.gen);
    tracing::info!(component = %m.path, ?outcome, "cleaned up");
    outcome
}

/// SIGKILL the component's group at once and wait (bounded by [`REAP_GRACE`]) for the leader to
/// be reaped; for fencing, where nothing may run on a moment longer.
pub(crate) async fn kill_now(agent: &Arc<Agent>, comp: CompId) {
    let Some(inc) = begin_stop(agent, comp, false) else {
        return;
    };
    inc.proc.signal_group(Signal::KILL);
    if timeout(REAP_GRACE, inc.proc.exited()).await.is_err() {
        tracing::error!(component = %agent.comp(comp).path, pid = inc.proc.pid(), "survives SIGKILL");
    }
    end_stop(agent, comp, inc.gen);
}
