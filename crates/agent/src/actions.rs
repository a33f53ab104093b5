//! The entry point for the engine's actions: which ones this agent carries out, and when.
//!
//! An action for a component of another node is ignored, so a driver may hand every action to
//! every agent. An action for a component whose process is being started waits for the spawn
//! (see [`crate::spawning`]); everything else is carried out at once.

use std::sync::Arc;

use nines_engine::ActionKind;
use nines_model::CompId;

use crate::agent::Agent;
use crate::{csi, lifecycle, spawning};

/// The component an action is for, if it is a component action.
fn target(action: &ActionKind) -> Option<CompId> {
    match *action {
        ActionKind::Instantiate { comp }
        | ActionKind::Terminate { comp }
        | ActionKind::Cleanup { comp }
        | ActionKind::AssignCsi { comp, .. }
        | ActionKind::RemoveCsi { comp, .. } => Some(comp),
        _ => None,
    }
}

/// Carries out `action` if it is for a component of this node: now, or after the component's
/// spawn in flight.
pub(crate) fn dispatch(agent: &Arc<Agent>, action: &ActionKind) {
    let Some(comp) = target(action) else {
        return;
    };
    if !agent.owns(comp) || spawning::defer(agent, comp, action) {
        return;
    }
    run(agent, action);
}

/// Carries out a component action of this node now.
pub(crate) fn run(agent: &Arc<Agent>, action: &ActionKind) {
    match *action {
        ActionKind::Instantiate { comp } => lifecycle::instantiate(agent, comp),
        ActionKind::Terminate { comp } => lifecycle::terminate(agent, comp),
        ActionKind::Cleanup { comp } => lifecycle::cleanup(agent, comp),
        ActionKind::AssignCsi {
            comp,
            csi,
            ha_state,
        } => csi::assign(agent, comp, csi, ha_state),
        ActionKind::RemoveCsi { comp, csi } => csi::remove(agent, comp, csi),
        _ => {}
    }
}
