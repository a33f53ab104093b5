//! Actions: what the engine asks the world to do, and the events it records.

use std::time::Duration;

use nines_model::{CompId, CsiId, EntityRef, NodeId, Recovery, SiId, SuId};

use crate::input::{AdminOp, FaultKind, Timer};
use crate::states::{AdminState, HaState, OperState, Presence, Readiness, SiAssignmentState};
use crate::time::Instant;

/// One thing the world must do (or record), stamped with the instant the engine decided it.
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    /// When the engine decided it (the `now` of the input that caused it).
    pub at: Instant,
    /// What to do.
    pub kind: ActionKind,
}

/// What the world must do.
#[derive(Clone, Debug, PartialEq)]
pub enum ActionKind {
    /// Start a component; answer with `CommandDone{Instantiate}`.
    Instantiate {
        /// The component.
        comp: CompId,
        /// Whether work waits for this start: an SI of the component's SG that should be
        /// served is not (start-up, a restart in place, a repair with nobody else to take the
        /// work). `false` for a repair that only restores redundancy: the driver may start it
        /// with the CPU nobody else wants, so that it never delays the failover it follows.
        urgent: bool,
    },
    /// Stop a component gracefully; answer with `CommandDone{Terminate}`.
    Terminate {
        /// The component.
        comp: CompId,
    },
    /// Stop a component by force after a failure; answer with `CommandDone{Cleanup}`.
    Cleanup {
        /// The component.
        comp: CompId,
    },
    /// Give a component a CSI in an HA state (or change its HA state); answer `CsiAssigned`.
    AssignCsi {
        /// The component.
        comp: CompId,
        /// The CSI.
        csi: CsiId,
        /// The HA state to take.
        ha_state: HaState,
    },
    /// Take a CSI away from a component; answer `CsiRemoved`.
    RemoveCsi {
        /// The component.
        comp: CompId,
        /// The CSI.
        csi: CsiId,
    },
    /// Isolate a node (power off, kill its process tree); answer `FenceDone`, then `NodeDown`.
    Fence {
        /// The node.
        node: NodeId,
    },
    /// Live migration, step 1 (on the destination `to`): start the VM's QEMU waiting for its
    /// state; answer `MigrationPrepared` with the port it listens on.
    MigrateIn {
        /// The VM component.
        comp: CompId,
        /// The destination node.
        to: NodeId,
    },
    /// Step 2 (on the VM's current node): send the running VM's state to `to`'s `port`,
    /// then stop the source QEMU without reporting it as a failure; answer `MigrationSent`.
    /// A failed transfer leaves the source running.
    MigrateOut {
        /// The VM component.
        comp: CompId,
        /// The destination node (the driver knows its address).
        to: NodeId,
        /// The port `MigrationPrepared` named.
        port: u16,
    },
    /// Step 3 (on `to`): `commit`: take the migrated VM over as this node's component (its
    /// port forwards, its supervision) and answer `MigrationFinished`; not `commit`: the
    /// migration was abandoned, discard the waiting QEMU (no answer).
    MigrateFinish {
        /// The VM component.
        comp: CompId,
        /// The destination node.
        to: NodeId,
        /// Take over (`true`) or discard.
        commit: bool,
    },
    /// Fire `timer` at `at` (answer `TimerFired`).
    StartTimer {
        /// Which timer.
        timer: Timer,
        /// When it is due.
        at: Instant,
    },
    /// Answer to an admin request: accepted (work under way) or refused with the reason.
    AdminReply {
        /// The caller's request id.
        request: u64,
        /// Accepted, or why not.
        result: Result<(), AdminError>,
    },
    /// A state change or a fault milestone, for the event log, status and metrics.
    Record(Event),
}

/// Identifies one fault from detection to repair, so its metrics can be joined.
pub type FaultId = u64;

/// State changes and fault milestones. The seeds' metrics come from these: reaction =
/// `FaultDetected.at` (the engine reacts in the same step), recovery and outage from
/// `ServiceRecovered`, repair from `Repaired`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A fault was seen and a recovery chosen (after escalation).
    FaultDetected {
        /// Fault id.
        fault: FaultId,
        /// The entity that failed (a component, or a node).
        entity: EntityRef,
        /// How it was seen; `None` for node faults.
        kind: Option<FaultKind>,
        /// The recovery the engine chose.
        recovery: RecoveryStep,
        /// SIs that lost (or may lose) their active assignment through it.
        affected: Vec<SiId>,
    },
    /// A failure report was not acted on because its entity is already being recovered or is
    /// not running (a late report, a second report of the same failure).
    FaultIgnored {
        /// The entity the report was about.
        entity: EntityRef,
        /// Why nothing was done.
        reason: &'static str,
    },
    /// Escalation replaced the requested recovery by a stronger one.
    Escalated {
        /// Fault id.
        fault: FaultId,
        /// What was asked for.
        from: RecoveryStep,
        /// What is done.
        to: RecoveryStep,
    },
    /// A guest node's VM is stopping (or was lost): the guest's work is held until the VM is
    /// gone and then fails over, as part of `fault` (which now also counts the guest's SIs).
    GuestHeld {
        /// The fault that stops the VM.
        fault: FaultId,
        /// The guest node.
        node: NodeId,
        /// Its VM component.
        vm: CompId,
        /// SIs the guest held active.
        affected: Vec<SiId>,
    },
    /// A guest node is isolated by recovering its VM (the guest was lost, or a fault in it
    /// escalated to its node).
    GuestReset {
        /// Fault id.
        fault: FaultId,
        /// The guest node.
        node: NodeId,
        /// Its VM component.
        vm: CompId,
        /// The VM's recovery, after the VM's escalation.
        recovery: RecoveryStep,
    },
    /// A live migration of an SU's VM began (planned maintenance of its node, or fail-back
    /// to its configured node).
    MigrationStarted {
        /// The SU.
        su: SuId,
        /// Its VM.
        comp: CompId,
        /// Where it runs.
        from: NodeId,
        /// Where it goes.
        to: NodeId,
    },
    /// The VM runs on `to` now, with its SU's assignments untouched.
    Migrated {
        /// The SU.
        su: SuId,
        /// Its VM.
        comp: CompId,
        /// Where it ran.
        from: NodeId,
        /// Where it runs.
        to: NodeId,
        /// From `MigrationStarted` to the destination taking over.
        took: Duration,
    },
    /// A live migration did not happen or failed; the admin operation goes on as without it
    /// (the SU is stopped and its SIs switch over), or the VM is recovered if it was lost.
    MigrationFailed {
        /// The SU.
        su: SuId,
        /// Its VM.
        comp: CompId,
        /// Where it ran.
        from: NodeId,
        /// Where it was to go (`None`: no node could take it).
        to: Option<NodeId>,
        /// Why, in words.
        reason: &'static str,
    },
    /// A guest's link was lost while (or just after) its VM migrated, as a migration cuts the
    /// guest's connections: the guest stays up and may join again, keeping what it runs.
    GuestRelinking {
        /// The guest node.
        node: NodeId,
    },
    /// The relinking guest joined again.
    GuestRelinked {
        /// The guest node.
        node: NodeId,
    },
    /// Every SI the fault affected is active again.
    ServiceRecovered {
        /// Fault id.
        fault: FaultId,
        /// From the fault to the last SI's active assignment.
        outage: Duration,
    },
    /// The faulty entity is back in service.
    Repaired {
        /// Fault id.
        fault: FaultId,
        /// From the fault to the repair.
        repair: Duration,
    },
    /// A component's presence state changed.
    Presence {
        /// The component.
        comp: CompId,
        /// New state.
        presence: Presence,
    },
    /// An SU's operational state changed.
    Oper {
        /// The SU.
        su: SuId,
        /// New state.
        oper: OperState,
    },
    /// An SU's readiness changed.
    Readiness {
        /// The SU.
        su: SuId,
        /// New state.
        readiness: Readiness,
    },
    /// An entity's admin state changed.
    Admin {
        /// The entity.
        entity: EntityRef,
        /// New state.
        admin: AdminState,
    },
    /// An SU's assignment of an SI changed (`None`: removed). Confirmed by all its components.
    Assignment {
        /// The SI.
        si: SiId,
        /// The SU.
        su: SuId,
        /// New HA state.
        ha_state: Option<HaState>,
    },
    /// An SI's overall assignment state changed.
    SiState {
        /// The SI.
        si: SiId,
        /// New state.
        state: SiAssignmentState,
    },
    /// A node went down or came up (as the engine sees it).
    Node {
        /// The node.
        node: NodeId,
        /// Whether it is up.
        up: bool,
    },
    /// An admin operation was carried out.
    AdminDone {
        /// The operation.
        op: AdminOp,
        /// Its target.
        target: EntityRef,
    },
}

/// A recovery as the engine carries it out, including the escalation-only SU levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecoveryStep {
    /// Restart the component.
    ComponentRestart,
    /// Restart the whole SU.
    SuRestart,
    /// Fail the SU over to others.
    SuFailover,
    /// Fail over the faulty SU, switch over the rest of the node.
    NodeSwitchover,
    /// Fail over every SU on the node.
    NodeFailover,
    /// Fence the node and fail over every SU on it.
    NodeFailfast,
    /// Restart the application.
    ApplicationRestart,
    /// Restart the cluster.
    ClusterReset,
}

impl RecoveryStep {
    /// The step that carries out a configured or recommended recovery.
    pub fn from_recovery(r: Recovery) -> RecoveryStep {
        match r {
            Recovery::ComponentRestart => RecoveryStep::ComponentRestart,
            Recovery::ComponentFailover => RecoveryStep::SuFailover,
            Recovery::NodeSwitchover => RecoveryStep::NodeSwitchover,
            Recovery::NodeFailover => RecoveryStep::NodeFailover,
            Recovery::NodeFailfast => RecoveryStep::NodeFailfast,
            Recovery::ApplicationRestart => RecoveryStep::ApplicationRestart,
            Recovery::ClusterReset => RecoveryStep::ClusterReset,
        }
    }

    /// Name for logs and events.
    pub fn name(self) -> &'static str {
        match self {
            RecoveryStep::ComponentRestart => "component-restart",
            RecoveryStep::SuRestart => "su-restart",
            RecoveryStep::SuFailover => "su-failover",
            RecoveryStep::NodeSwitchover => "node-switchover",
            RecoveryStep::NodeFailover => "node-failover",
            RecoveryStep::NodeFailfast => "node-failfast",
            RecoveryStep::ApplicationRestart => "app-restart",
            RecoveryStep::ClusterReset => "cluster-reset",
        }
    }
}

/// Why an admin operation was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminError {
    /// The operation.
    pub op: AdminOp,
    /// Entity path of the target.
    pub target: String,
    /// Why, in words an operator understands.
    pub reason: String,
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} refused: {}",
            self.op.name(),
            self.target,
            self.reason
        )
    }
}

impl std::error::Error for AdminError {}
