//! Redundancy models: the rules that say how an SG's SIs may be spread over its SUs.
//!
//! Each model is a small set of rules behind [`RedundancyModel`]; one generic placement
//! ([`placement`]) turns the rules, the in-service SUs and the current assignments into the
//! desired assignments. Keeping the choreography (quiesce, promote, remove) out of the models
//! means every model gets failover, switchover and fail-back from the same tested code.

mod n_plus_m;
mod n_way;
mod n_way_active;
mod no_redundancy;
pub(crate) mod placement;
mod two_n;

use nines_model::{Redundancy, Sg, Si};

/// "No limit" for capacities and role counts.
pub(crate) const UNLIMITED: u32 = u32::MAX;

/// The rules of one redundancy model.
pub(crate) trait RedundancyModel {
    /// Most active assignments one SI may have.
    fn max_actives(&self, si: &Si) -> u32;
    /// Most standby assignments one SI may have.
    fn max_standbys(&self, si: &Si) -> u32;
    /// Most SIs one SU may hold active.
    fn active_capacity(&self, sg: &Sg) -> u32;
    /// Most SIs one SU may hold standby.
    fn standby_capacity(&self, sg: &Sg) -> u32;
    /// Whether an SU is either all-active or all-standby (2N, N+M).
    fn exclusive_roles(&self) -> bool;
    /// Most SUs that may hold actives.
    fn max_active_sus(&self, sg: &Sg) -> u32;
    /// Most SUs that may hold standbys.
    fn max_standby_sus(&self, sg: &Sg) -> u32;
}

/// The rules for an SG's redundancy model.
pub(crate) fn model_of(r: Redundancy) -> &'static dyn RedundancyModel {
    match r {
        Redundancy::TwoN => &two_n::TwoN,
        Redundancy::NPlusM { .. } => &n_plus_m::NPlusM,
        Redundancy::NWay => &n_way::NWay,
        Redundancy::NWayActive => &n_way_active::NWayActive,
        Redundancy::NoRedundancy => &no_redundancy::NoRedundancy,
    }
}
