//! The AMF runtime states the engine keeps for every entity.

/// Administrative state, set only by admin operations (and config for the start state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdminState {
    /// May be instantiated and take work.
    Unlocked,
    /// Instantiated but takes no work.
    Locked,
    /// Not even instantiated.
    LockedInstantiation,
    /// Gracefully giving up its work (quiescing), then locked.
    ShuttingDown,
}

/// Operational state: whether the entity can work at all, from the engine's view of faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperState {
    /// Healthy.
    Enabled,
    /// Failed; needs repair (automatic or `repaired`).
    Disabled,
}

/// Presence state of a component or an SU: where it is in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Presence {
    /// Not running.
    Uninstantiated,
    /// Instantiate issued, not yet confirmed.
    Instantiating,
    /// Running.
    Instantiated,
    /// Terminate or cleanup issued, not yet confirmed.
    Terminating,
    /// Being restarted (cleanup then instantiate) as a recovery.
    Restarting,
    /// Instantiation failed after every retry.
    InstantiationFailed,
    /// Cleanup failed: state unknown, needs `repaired`.
    TerminationFailed,
}

/// Readiness: can this SU take assignments right now (derived from the other states).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Readiness {
    /// Can take work.
    InService,
    /// Cannot.
    OutOfService,
    /// Only keeps work it has while shutting down.
    Stopping,
}

/// HA state of one assignment (an SU's or component's share of an SI).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HaState {
    /// Serves the work.
    Active,
    /// Ready to take over; receives checkpoints.
    Standby,
    /// Finishing in-flight work before giving it up (shutdown).
    Quiescing,
    /// Stopped serving; the work may move.
    Quiesced,
}

impl HaState {
    /// Lower-case name for logs, status and the wire.
    pub fn name(self) -> &'static str {
        match self {
            HaState::Active => "active",
            HaState::Standby => "standby",
            HaState::Quiescing => "quiescing",
            HaState::Quiesced => "quiesced",
        }
    }
}

/// Whether an SI has what it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SiAssignmentState {
    /// No active assignment: the service is down.
    Unassigned,
    /// Active but fewer actives or standbys than preferred.
    PartiallyAssigned,
    /// Everything preferred is in place.
    FullyAssigned,
}
