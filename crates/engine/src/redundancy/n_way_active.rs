//! N-Way-Active: an SI is active on several SUs at once (load sharing); there are no standbys.

use nines_model::{Sg, Si};

use super::{RedundancyModel, UNLIMITED};

/// The N-Way-Active rules.
pub(crate) struct NWayActive;

impl RedundancyModel for NWayActive {
    fn max_actives(&self, si: &Si) -> u32 {
        si.preferred_active.max(1)
    }
    fn max_standbys(&self, _si: &Si) -> u32 {
        0
    }
    fn active_capacity(&self, sg: &Sg) -> u32 {
        sg.max_active_sis_per_su.unwrap_or(UNLIMITED)
    }
    fn standby_capacity(&self, _sg: &Sg) -> u32 {
        0
    }
    fn exclusive_roles(&self) -> bool {
        false
    }
    fn max_active_sus(&self, _sg: &Sg) -> u32 {
        UNLIMITED
    }
    fn max_standby_sus(&self, _sg: &Sg) -> u32 {
        0
    }
}
