//! N-Way: every SU may hold actives for some SIs and standbys for others (never both for one SI);
//! an SI has one active and any number of standbys.

use nines_model::{Sg, Si};

use super::{RedundancyModel, UNLIMITED};

/// The N-Way rules.
pub(crate) struct NWay;

impl RedundancyModel for NWay {
    fn max_actives(&self, _si: &Si) -> u32 {
        1
    }
    fn max_standbys(&self, si: &Si) -> u32 {
        si.preferred_standby
    }
    fn active_capacity(&self, sg: &Sg) -> u32 {
        sg.max_active_sis_per_su.unwrap_or(UNLIMITED)
    }
    fn standby_capacity(&self, sg: &Sg) -> u32 {
        sg.max_standby_sis_per_su.unwrap_or(UNLIMITED)
    }
    fn exclusive_roles(&self) -> bool {
        false
    }
    fn max_active_sus(&self, _sg: &Sg) -> u32 {
        UNLIMITED
    }
    fn max_standby_sus(&self, _sg: &Sg) -> u32 {
        UNLIMITED
    }
}
