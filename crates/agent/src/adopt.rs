//! Adoption: an agent that starts after another one of its node died takes over the
//! components that outlived it, instead of starting duplicates beside them.
//!
//! The dead agent's [records](crate::records) name every process it started. At start, each
//! recorded process that is still the same process (pid and start time), still leads its
//! process group, and is a component of this node is watched through a pidfd again (it is no
//! longer our child: it was reparented, and its new parent reaps it). A process component runs
//! on at once; so does a VM, whose QMP socket the agent connects to again. An SA-aware one
//! must register again (its client library reconnects when its agent goes away) within its
//! instantiate timeout, and say which CSIs it holds: the engine resumes from the components'
//! own account, never from a record that may be stale.
//! [`AgentHandle::adopted`](crate::AgentHandle::adopted) waits for that and kills what did not
//! come back in time. Anything recorded that cannot be adopted (another node's, unknown to the
//! config, or adoption disabled) is killed, whole group, if it is still the recorded process.

use std::sync::Arc;
use std::time::Duration;

use nines_engine::HaState;
use nines_model::{CompId, CompKind, CsiId, EntityRef};
use rustix::process::{Pid, Signal};

use crate::agent::{Agent, Incarnation, Phase};
use crate::pidfd::{start_time, Proc};
use crate::records::{Record, Records};
use crate::{healthcheck, lifecycle, vm};

/// A component this agent adopted, as the engine's `Input::Resume` needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adopted {
    /// The component.
    pub comp: CompId,
    /// Its main process.
    pub pid: u32,
    /// The CSIs it holds and their HA states (SA-aware components; empty for process ones).
    pub held: Vec<(CsiId, HaState)>,
}

/// Adopts or kills every recorded process (see the module docs). With `adopt` false
/// everything recorded is killed: the caller knows the node's processes are stale (a fence).
pub(crate) fn recorded(agent: &Arc<Agent>, adopt: bool) {
    for (path, record) in agent.records.load() {
        let rec = match record {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable component record; discarded");
                Records::discard(&path);
                continue;
            }
        };
        let comp = match agent.model.find(&rec.comp) {
            Some(EntityRef::Comp(c)) if agent.owns(c) => Some(c),
            _ => None,
        };
        match comp {
            Some(comp) if adopt => {
                if !take_over(agent, comp, &rec) {
                    Records::discard(&path);
                }
            }
            _ => {
                kill_recorded(&rec);
                Records::discard(&path);
            }
        }
    }
}

/// Kills a recorded process group if its leader is still the recorded process.
fn kill_recorded(rec: &Record) {
    let Some(pid) = i32::try_from(rec.pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    if start_time(rec.pid) == Some(rec.start) {
        tracing::warn!(component = %rec.comp, pid = rec.pid, "killing a process left by an earlier agent");
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
}

/// Watches `rec`'s process as the current incarnation of `comp`; `false` if it is gone (or no
/// longer the recorded process).
fn take_over(agent: &Arc<Agent>, comp: CompId, rec: &Record) -> bool {
    let Some(pid) = i32::try_from(rec.pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    let proc = match Proc::adopt(pid, rec.start, agent.clock, &agent.live) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(component = %rec.comp, pid = rec.pid, reason = %e, "recorded process not adopted");
            return false;
        }
    };
    let kind = agent.comp(comp).kind;
    let sa_aware = kind == CompKind::SaAware;
    let vm = (kind == CompKind::Vm)
        .then(|| vm::adopted_run(agent, comp))
        .flatten();
    let gen = agent.next_id();
    agent.comps().insert(
        comp,
        Incarnation {
            gen,
            proc: proc.clone(),
            phase: if sa_aware {
                Phase::Adopting
            } else {
                Phase::Running
            },
            failed: false,
            session: None,
            held: Vec::new(),
            vm: vm.clone(),
        },
    );
    tracing::info!(component = %rec.comp, pid = rec.pid, "adopted");
    lifecycle::follow_incarnation(agent, comp, gen, proc);
    if let Some(run) = vm {
        vm::supervise_adopted(agent, comp, gen, run);
    } else if !sa_aware {
        healthcheck::start_monitor(agent, comp, gen);
    }
    true
}

/// Waits until every adopted SA-aware component registered again, each within its
/// instantiate timeout (counted from now), kills those that did not, and returns every
/// component that is adopted and running.
pub(crate) async fn settle(agent: &Arc<Agent>) -> Vec<Adopted> {
    let waiting: Vec<(CompId, u64, Duration)> = agent
        .comps()
        .iter()
        .filter(|(_, i)| i.phase == Phase::Adopting)
        .map(|(c, i)| (*c, i.gen, agent.comp(*c).timeouts.instantiate))
        .collect();
    let started = tokio::time::Instant::now();
    for (comp, gen, limit) in waiting {
        let deadline = started + limit;
        loop {
            let changed = agent.changed.notified();
            let adopting = agent
                .comps()
                .get(&comp)
                .is_some_and(|i| i.gen == gen && i.phase == Phase::Adopting);
            if !adopting {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                tracing::warn!(
                    component = %agent.comp(comp).path,
                    timeout = ?limit,
                    "adopted component did not register again in time; killing it"
                );
                lifecycle::kill_now(agent, comp).await;
                break;
            }
        }
    }
    let comps = agent.comps();
    let mut out: Vec<Adopted> = comps
        .iter()
        .filter(|(_, i)| i.phase == Phase::Running && i.proc.exit_now().is_none())
        .map(|(c, i)| Adopted {
            comp: *c,
            pid: i.proc.pid(),
            held: i.held.clone(),
        })
        .collect();
    out.sort_by_key(|a| a.comp);
    out
}
