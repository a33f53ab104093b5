//! Conversions between the engine's and the wire's copies of HA states and recoveries.
//!
//! The protocol crate keeps its own enums so that the wire format changes only when it does;
//! these functions are the one place where the two meet.

use nines_engine::HaState;
use nines_model::Recovery;
use nines_proto as proto;

/// The wire form of an HA state.
pub(crate) fn ha_to_wire(ha: HaState) -> proto::HaState {
    match ha {
        HaState::Active => proto::HaState::Active,
        HaState::Standby => proto::HaState::Standby,
        HaState::Quiescing => proto::HaState::Quiescing,
        HaState::Quiesced => proto::HaState::Quiesced,
    }
}

/// The engine's form of an HA state a component reports.
pub(crate) fn ha_from_wire(ha: proto::HaState) -> HaState {
    match ha {
        proto::HaState::Active => HaState::Active,
        proto::HaState::Standby => HaState::Standby,
        proto::HaState::Quiescing => HaState::Quiescing,
        proto::HaState::Quiesced => HaState::Quiesced,
    }
}

/// The engine's form of a recommended recovery; "no recommendation" leaves the choice to the
/// component's configured recovery.
pub(crate) fn recovery_from_wire(r: proto::Recovery) -> Option<Recovery> {
    match r {
        proto::Recovery::NoRecommendation => None,
        proto::Recovery::ComponentRestart => Some(Recovery::ComponentRestart),
        proto::Recovery::ComponentFailover => Some(Recovery::ComponentFailover),
        proto::Recovery::NodeSwitchover => Some(Recovery::NodeSwitchover),
        proto::Recovery::NodeFailover => Some(Recovery::NodeFailover),
        proto::Recovery::NodeFailfast => Some(Recovery::NodeFailfast),
        proto::Recovery::ApplicationRestart => Some(Recovery::ApplicationRestart),
        proto::Recovery::ClusterReset => Some(Recovery::ClusterReset),
    }
}
