//! Inputs: faults and facts the world reports to the engine.

use nines_model::{CompId, CsiId, EntityRef, NodeId, Recovery, SiId, SuId};

use crate::states::HaState;

/// Which life-cycle command a result is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// Instantiate (for SA-aware components: done when the component registered).
    Instantiate,
    /// Graceful terminate.
    Terminate,
    /// Cleanup (forced stop after a failure).
    Cleanup,
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It did what it should.
    Ok,
    /// It failed (non-zero exit, refused, ...).
    Failed,
    /// It did not finish within its timeout.
    TimedOut,
}

/// How a component failure was detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The process (or VM) exited.
    Exited,
    /// A healthcheck (or the monitor command) was not answered in time.
    HealthcheckMissed,
    /// The component (or someone on its behalf) reported an error.
    ErrorReport,
}

/// Something that happened, reported to [`crate::Engine::handle`] with the instant it happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Begin managing the cluster: instantiate and assign. Sent once, first (after a
    /// [`Input::Resume`] and the re-applied admin operations, if any).
    Start,
    /// Before `Start` only: what a restarted driver found still running and what it holds, so
    /// it is adopted instead of restarted. Taken where consistent; every claim that is not
    /// taken is removed from its component (see the `resume` module). Ignored after `Start`.
    Resume {
        /// Components that are running (their processes were adopted).
        running: Vec<CompId>,
        /// What running SA-aware components say they hold: component, CSI, HA state.
        held: Vec<(CompId, CsiId, HaState)>,
        /// SUs found running on another node than their configured one (live-migrated VMs),
        /// with that node.
        moved: Vec<(SuId, NodeId)>,
    },
    /// A life-cycle command finished.
    CommandDone {
        /// The component.
        comp: CompId,
        /// Which command.
        command: Command,
        /// How it ended.
        outcome: Outcome,
    },
    /// A component failed.
    ComponentFailed {
        /// The component.
        comp: CompId,
        /// How it was seen.
        kind: FaultKind,
        /// Recommended recovery (error reports); `None` uses the component's configured one.
        recommended: Option<Recovery>,
    },
    /// A CSI callback (set HA state) was answered, or timed out.
    CsiAssigned {
        /// The component that was asked.
        comp: CompId,
        /// The CSI.
        csi: CsiId,
        /// The HA state it was asked to take.
        ha_state: HaState,
        /// Whether the component accepted in time.
        outcome: Outcome,
    },
    /// A CSI removal was answered (or timed out; either way the CSI is gone from the component).
    CsiRemoved {
        /// The component.
        comp: CompId,
        /// The CSI.
        csi: CsiId,
        /// How the callback ended.
        outcome: Outcome,
    },
    /// A quiescing component finished its in-flight work (it is now quiesced).
    QuiescingComplete {
        /// The component.
        comp: CompId,
        /// The CSI.
        csi: CsiId,
    },
    /// The membership layer declared a node dead (and fenced, when fencing is configured).
    NodeDown {
        /// The node.
        node: NodeId,
    },
    /// The membership layer lost contact with a node (heartbeats stopped) but nothing
    /// confirms it is dead: the engine fences it (`Fence`, answered by `FenceDone`) and only
    /// then takes it down and fails its work over, so a node that is merely cut off can never
    /// keep an active that was moved elsewhere. The fault's detection is this input's instant.
    NodeLost {
        /// The node.
        node: NodeId,
    },
    /// A node joined (again); nothing runs on it yet.
    NodeUp {
        /// The node.
        node: NodeId,
    },
    /// A relinking guest (`Event::GuestRelinking`) joined again and still runs what the
    /// engine thinks it runs (the driver checked). Ignored for a node that is not relinking.
    NodeRelinked {
        /// The node.
        node: NodeId,
    },
    /// A fence action the engine asked for finished.
    FenceDone {
        /// The node.
        node: NodeId,
        /// How it ended.
        outcome: Outcome,
    },
    /// The destination of a live migration is ready for the VM's state on `port` (`None`:
    /// it could not start the waiting QEMU).
    MigrationPrepared {
        /// The VM component.
        comp: CompId,
        /// The port, or `None` on failure.
        port: Option<u16>,
    },
    /// The source sent the VM's state and stopped (`Ok`), or could not (the source runs on).
    MigrationSent {
        /// The VM component.
        comp: CompId,
        /// How it went.
        outcome: Outcome,
    },
    /// The destination took the migrated VM over (`Ok`), or lost it (the VM is gone).
    MigrationFinished {
        /// The VM component.
        comp: CompId,
        /// How it went.
        outcome: Outcome,
    },
    /// A timer the engine started expired.
    TimerFired {
        /// Which timer.
        timer: Timer,
    },
    /// An administrator's request.
    Admin {
        /// Caller's id, echoed in the reply.
        request: u64,
        /// The operation.
        op: AdminOp,
        /// Its target.
        target: EntityRef,
    },
}

/// Timers the engine starts. The engine ignores a timer it no longer waits for, so drivers need
/// not cancel precisely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Retry instantiating a component after the configured delay.
    InstantiateRetry {
        /// The component.
        comp: CompId,
        /// Generation, so a stale timer is recognised.
        generation: u32,
    },
    /// A sponsor SI has been unassigned for its dependents' tolerance time.
    SponsorTolerance {
        /// The dependent SI.
        dependent: SiId,
        /// Generation, so a stale timer is recognised.
        generation: u32,
    },
    /// A guest that relinks after its VM's migration (`Event::GuestRelinking`) and has not
    /// joined again by now is lost after all.
    GuestRelink {
        /// The guest node.
        node: NodeId,
        /// Generation, so a stale timer is recognised.
        generation: u32,
    },
}

/// Administrative operations (AMF's admin API).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdminOp {
    /// Stop taking work; current work is switched over to other SUs.
    Lock,
    /// Take work again.
    Unlock,
    /// Terminate (only from locked).
    LockInstantiation,
    /// Instantiate again (back to locked).
    UnlockInstantiation,
    /// Gracefully give up work (quiescing), then locked.
    Shutdown,
    /// Restart (terminate + instantiate) keeping nothing.
    Restart,
    /// Swap an SI's active and standby.
    Switchover,
    /// The operator repaired the entity: clear its disabled state and bring it back.
    Repaired,
}

impl AdminOp {
    /// The CLI name of the operation.
    pub fn name(self) -> &'static str {
        match self {
            AdminOp::Lock => "lock",
            AdminOp::Unlock => "unlock",
            AdminOp::LockInstantiation => "lock-in",
            AdminOp::UnlockInstantiation => "unlock-in",
            AdminOp::Shutdown => "shutdown",
            AdminOp::Restart => "restart",
            AdminOp::Switchover => "switchover",
            AdminOp::Repaired => "repaired",
        }
    }

    /// Every operation, for exhaustive tests and fault injection.
    pub const ALL: [AdminOp; 8] = [
        AdminOp::Lock,
        AdminOp::Unlock,
        AdminOp::LockInstantiation,
        AdminOp::UnlockInstantiation,
        AdminOp::Shutdown,
        AdminOp::Restart,
        AdminOp::Switchover,
        AdminOp::Repaired,
    ];

    /// Parses a CLI name (`lock`, `lock-in`, ...).
    pub fn parse(name: &str) -> Option<AdminOp> {
        AdminOp::ALL.into_iter().find(|op| op.name() == name)
    }
}
