//! Runtime state the engine keeps per entity. Plain data; the logic lives in the modules that
//! change it (lifecycle, fault, reconcile, admin).

use nines_model::{CsiId, NodeId, SuId};

use crate::input::Command;
use crate::states::{AdminState, HaState, OperState, Presence, Readiness, SiAssignmentState};
use crate::time::Instant;

/// A component's life-cycle state.
#[derive(Clone, Debug)]
pub(crate) struct CompRt {
    pub presence: Presence,
    /// The command whose result we wait for; results for any other command are stale.
    pub awaiting: Option<Command>,
    /// Being restarted in place: cleanup, then instantiate, then its CSIs are given back.
    pub restarting: bool,
    /// Its CSIs must be re-assigned once it is instantiated again.
    pub needs_reassign: bool,
    /// The current attempt is a retry after a failed instantiation.
    pub retrying: bool,
    /// Failed instantiations since the last success.
    pub inst_failures: u32,
    /// Waiting for a delayed-retry timer.
    pub waiting_retry: bool,
    /// Generation of the retry timer, so a stale one is ignored.
    pub retry_gen: u32,
}

impl CompRt {
    pub fn new() -> Self {
        CompRt {
            presence: Presence::Uninstantiated,
            awaiting: None,
            restarting: false,
            needs_reassign: false,
            retrying: false,
            inst_failures: 0,
            waiting_retry: false,
            retry_gen: 0,
        }
    }
}

/// A service unit's state.
#[derive(Clone, Debug)]
pub(crate) struct SuRt {
    pub admin: AdminState,
    pub oper: OperState,
    /// Re-enable automatically once every component is cleaned up (SG auto-repair).
    pub auto_repair: bool,
    /// Component restarts inside the SG's probation window.
    pub comp_restarts: Vec<Instant>,
    /// SU restarts inside the SG's probation window.
    pub su_restarts: Vec<Instant>,
    /// Readiness last reported in an event.
    pub readiness: Readiness,
    /// The node it runs on now: its configured node, unless a live migration moved it.
    pub host: NodeId,
    /// The live migration under way, if any.
    pub migration: Option<Migration>,
    /// When its last migration completed.
    pub migrated_at: Option<Instant>,
}

/// One live migration of an SU's VM, from its current host to another node.
#[derive(Clone, Debug)]
pub(crate) struct Migration {
    /// The VM component.
    pub comp: nines_model::CompId,
    pub from: NodeId,
    pub to: NodeId,
    pub step: MigrationStep,
    pub started: Instant,
}

/// Where a live migration is; each step waits for the answer to the action that began it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MigrationStep {
    /// `MigrateIn` sent: the destination starts a QEMU that waits for the state.
    Preparing,
    /// `MigrateOut` sent: the source sends its state, then quits.
    Sending,
    /// `MigrateFinish{commit}` sent: the destination takes the VM over.
    Finishing,
}

/// A node's state.
#[derive(Clone, Debug)]
pub(crate) struct NodeRt {
    pub admin: AdminState,
    pub up: bool,
    /// A fence was requested and has not completed.
    pub fencing: bool,
    /// SU failovers inside the node's probation window.
    pub su_failovers: Vec<Instant>,
    /// A guest whose link was lost while its VM migrated: it is still up and may join again
    /// (keeping what it runs) until this relink timer's generation fires.
    pub relinking: Option<u32>,
    pub relink_gen: u32,
}

/// One SU's share of an SI.
#[derive(Clone, Debug)]
pub(crate) struct SuSi {
    pub su: SuId,
    pub ha: HaState,
    /// CSI callbacks not yet answered, with the HA state each asked for. Kept per CSI (not as
    /// a count) so an answer can only settle the request it answers, even when one component
    /// of a multi-component SU restarts while the others are mid-callback.
    pub waiting: Vec<(CsiId, HaState)>,
    /// CSIs still quiescing (when `ha` is Quiescing).
    pub quiescing: Vec<CsiId>,
}

impl SuSi {
    pub fn confirmed(&self) -> bool {
        self.waiting.is_empty() && self.quiescing.is_empty()
    }
}

/// A service instance's state.
#[derive(Clone, Debug)]
pub(crate) struct SiRt {
    pub admin: AdminState,
    pub assignments: Vec<SuSi>,
    pub state: SiAssignmentState,
    /// Admin switchover: the SU that should become active.
    pub prefer: Option<SuId>,
    /// The SI lost its assignments on a node being fenced: nothing moves until the fence is done.
    pub fenced_on: Option<NodeId>,
    /// A sponsor is unassigned and the tolerance timer runs.
    pub tolerance_running: bool,
    /// The tolerance timer expired: the SI stays unassigned until its sponsors are active.
    pub tolerance_expired: bool,
    pub tolerance_gen: u32,
    /// Whether the SI was serving at the end of the last step (to wake its dependents).
    pub was_serving: bool,
}

impl SiRt {
    pub fn find(&self, su: SuId) -> Option<usize> {
        self.assignments.iter().position(|a| a.su == su)
    }
}
