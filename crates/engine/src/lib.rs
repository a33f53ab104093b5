//! The availability engine of nines: a pure, deterministic state machine.
//!
//! [`Engine::handle`] takes one [`Input`] (a fault or a fact, with the instant it happened) and
//! returns the [`Action`]s the world must carry out. There is no I/O, no clock, no thread and no
//! randomness here: drivers (the node agent, the director, the simulator) own all of that. The
//! same input sequence therefore always yields the same actions, which is what lets the
//! simulator replay a failing seed exactly.

mod action;
mod input;
mod states;
mod time;

pub use action::*;
pub use input::*;
pub use states::*;
pub use time::*;

use std::sync::Arc;

use nines_model::{CompId, EntityRef, Model, NodeId, SiId, SuId};

/// One SU's share of an SI, as the engine currently sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AssignmentView {
    /// The SU holding it.
    pub su: SuId,
    /// The HA state it holds (or is being asked to take).
    pub ha_state: HaState,
    /// Whether every component has confirmed that HA state.
    pub confirmed: bool,
}

/// The engine: runtime state for every entity of one [`Model`].
pub struct Engine {
    model: Arc<Model>,
}

impl Engine {
    /// An engine for `model`, with every entity uninstantiated. Send [`Input::Start`] first.
    pub fn new(model: Arc<Model>) -> Engine {
        Engine { model }
    }

    /// The model this engine runs.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Feeds one input that happened at `now`; returns what the world must do.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let _ = (now, input);
        Vec::new()
    }

    /// Current assignments of an SI.
    pub fn assignments(&self, si: SiId) -> Vec<AssignmentView> {
        let _ = si;
        Vec::new()
    }

    /// Whether an SI has its active (and preferred standbys).
    pub fn si_state(&self, si: SiId) -> SiAssignmentState {
        let _ = si;
        SiAssignmentState::Unassigned
    }

    /// Presence state of a component.
    pub fn comp_presence(&self, comp: CompId) -> Presence {
        let _ = comp;
        Presence::Uninstantiated
    }

    /// Operational state of an SU.
    pub fn su_oper(&self, su: SuId) -> OperState {
        let _ = su;
        OperState::Enabled
    }

    /// Readiness of an SU.
    pub fn su_readiness(&self, su: SuId) -> Readiness {
        let _ = su;
        Readiness::OutOfService
    }

    /// Admin state of an entity that has one (cluster, node, app, SG, SU, SI).
    pub fn admin_state(&self, entity: EntityRef) -> Option<AdminState> {
        let _ = entity;
        None
    }

    /// Whether the engine considers the node up.
    pub fn node_up(&self, node: NodeId) -> bool {
        let _ = node;
        false
    }

    /// Escalation counters of an SU inside their windows: (component restarts, SU restarts).
    pub fn su_escalation(&self, su: SuId) -> (u32, u32) {
        let _ = su;
        (0, 0)
    }

    /// SU failovers counted on a node inside its window.
    pub fn node_escalation(&self, node: NodeId) -> u32 {
        let _ = node;
        0
    }
}
