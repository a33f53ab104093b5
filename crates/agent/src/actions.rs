//! The entry point for the engine's actions: which ones this agent carries out, and when.
//!
//! An action for a component of another node is ignored, so a driver may hand every action to
//! every agent. "Of this node" is [`Agent::owns`] (the model's placement, changed by live
//! migrations), except for a migration's destination steps (`MigrateIn`, `MigrateFinish`),
//! which are for the agent of their `to` node: the VM is not its own yet. An action for a component whose process is being started waits for the spawn
//! (see [`crate::spawning`]); everything else is carried out at once.

use std::sync::Arc;

use nines_engine::ActionKind;
use nines_model::CompId;

use crate::agent::Agent;
use crate::{csi, lifecycle, spawning, vm_migrate};

/// The component an action is for, if it is a component action.
fn target(action: &ActionKind) -> Option<CompId> {
    match *action {
        ActionKind::Instantiate { comp, .. }
        | ActionKind::Terminate { comp }
        | ActionKind::Cleanup { comp }
        | ActionKind::AssignCsi { comp, .. }
        | ActionKind::RemoveCsi { comp, .. }
        | ActionKind::MigrateIn { comp, .. }
        | ActionKind::MigrateOut { comp, .. }
        | ActionKind::MigrateFinish { comp, .. } => Some(comp),
        _ => None,
    }
}

/// Whether `action` (for `comp`) is this agent's to carry out.
fn ours(agent: &Agent, comp: CompId, action: &ActionKind) -> bool {
    match *action {
        ActionKind::MigrateIn { to, .. } | ActionKind::MigrateFinish { to, .. } => {
            to == agent.node && agent.model.comps.get(comp.index()).is_some()
        }
        _ => agent.owns(comp),
    }
}

/// Carries out `action` if it is for a component of this node: now, or after the component's
/// spawn in flight.
pub(crate) fn dispatch(agent: &Arc<Agent>, action: &ActionKind) {
    let Some(comp) = target(action) else {
        return;
    };
    if !ours(agent, comp, action) || spawning::defer(agent, comp, action) {
        return;
    }
    run(agent, action);
}

/// `MigrateOut` to `dest` ([`crate::AgentHandle::migrate_out`]): if this agent runs `comp`,
/// after the component's spawn in flight (which then sends to 127.0.0.1, as `execute` does:
/// such a spawn is a local restart, never a migration).
pub(crate) fn migrate_out(agent: &Arc<Agent>, comp: CompId, dest: std::net::SocketAddr) {
    if !agent.owns(comp) {
        return;
    }
    let deferred = spawning::defer(
        agent,
        comp,
        &ActionKind::MigrateOut {
            comp,
            to: agent.node,
            port: dest.port(),
        },
    );
    if !deferred {
        vm_migrate::migrate_out(agent, comp, dest);
    }
}

/// Carries out a component action of this node now.
pub(crate) fn run(agent: &Arc<Agent>, action: &ActionKind) {
    match *action {
        ActionKind::Instantiate { comp, urgent } => lifecycle::instantiate(agent, comp, urgent),
        ActionKind::Terminate { comp } => lifecycle::terminate(agent, comp),
        ActionKind::Cleanup { comp } => lifecycle::cleanup(agent, comp),
        ActionKind::AssignCsi {
            comp,
            csi,
            ha_state,
        } => csi::assign(agent, comp, csi, ha_state),
        ActionKind::RemoveCsi { comp, csi } => csi::remove(agent, comp, csi),
        ActionKind::MigrateIn { comp, .. } => vm_migrate::migrate_in(agent, comp),
        ActionKind::MigrateOut { comp, port, .. } => {
            let dest = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            vm_migrate::migrate_out(agent, comp, dest);
        }
        ActionKind::MigrateFinish { comp, commit, .. } => {
            vm_migrate::migrate_finish(agent, comp, commit)
        }
        _ => {}
    }
}
