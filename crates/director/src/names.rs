//! Lower-case, hyphenated names of the engine's states, as they appear in the event log, the
//! status document and the CLI. One place, so a state is spelled the same everywhere a script
//! might match on it.

use nines_engine::{AdminState, FaultKind, OperState, Presence, Readiness, SiAssignmentState};

/// Admin state name (`unlocked`, `locked`, `locked-instantiation`, `shutting-down`).
pub fn admin(a: AdminState) -> &'static str {
    match a {
        AdminState::Unlocked => "unlocked",
        AdminState::Locked => "locked",
        AdminState::LockedInstantiation => "locked-instantiation",
        AdminState::ShuttingDown => "shutting-down",
    }
}

/// Parses an admin state name written by [`admin`] (used when restoring persisted locks).
pub fn parse_admin(s: &str) -> Option<AdminState> {
    [
        AdminState::Unlocked,
        AdminState::Locked,
        AdminState::LockedInstantiation,
        AdminState::ShuttingDown,
    ]
    .into_iter()
    .find(|&a| admin(a) == s)
}

/// Operational state name (`enabled`, `disabled`).
pub fn oper(o: OperState) -> &'static str {
    match o {
        OperState::Enabled => "enabled",
        OperState::Disabled => "disabled",
    }
}

/// Presence state name (`instantiated`, `restarting`, ...).
pub fn presence(p: Presence) -> &'static str {
    match p {
        Presence::Uninstantiated => "uninstantiated",
        Presence::Instantiating => "instantiating",
        Presence::Instantiated => "instantiated",
        Presence::Terminating => "terminating",
        Presence::Restarting => "restarting",
        Presence::InstantiationFailed => "instantiation-failed",
        Presence::TerminationFailed => "termination-failed",
    }
}

/// Readiness name (`in-service`, `out-of-service`, `stopping`).
pub fn readiness(r: Readiness) -> &'static str {
    match r {
        Readiness::InService => "in-service",
        Readiness::OutOfService => "out-of-service",
        Readiness::Stopping => "stopping",
    }
}

/// SI assignment state name (`unassigned`, `partially-assigned`, `fully-assigned`).
pub fn si_state(s: SiAssignmentState) -> &'static str {
    match s {
        SiAssignmentState::Unassigned => "unassigned",
        SiAssignmentState::PartiallyAssigned => "partially-assigned",
        SiAssignmentState::FullyAssigned => "fully-assigned",
    }
}

/// How a fault was seen (`exited`, `healthcheck-missed`, `error-report`).
pub fn fault_kind(k: FaultKind) -> &'static str {
    match k {
        FaultKind::Exited => "exited",
        FaultKind::HealthcheckMissed => "healthcheck-missed",
        FaultKind::ErrorReport => "error-report",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_names_round_trip() {
        for a in [
            AdminState::Unlocked,
            AdminState::Locked,
            AdminState::LockedInstantiation,
            AdminState::ShuttingDown,
        ] {
            assert_eq!(parse_admin(admin(a)), Some(a));
        }
        assert_eq!(parse_admin("bogus"), None);
    }
}
