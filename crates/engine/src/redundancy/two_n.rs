//! 2N: one SU holds every SI active, one other SU holds every SI standby; the rest are spares.

use nines_model::{Sg, Si};

use super::{RedundancyModel, UNLIMITED};

/// The 2N rules.
pub(crate) struct TwoN;

impl RedundancyModel for TwoN {
    fn max_actives(&self, _si: &Si) -> u32 {
        1
    }
    fn max_standbys(&self, si: &Si) -> u32 {
        si.preferred_standby.min(1)
    }
    fn active_capacity(&self, _sg: &Sg) -> u32 {
        UNLIMITED
    }
    fn standby_capacity(&self, _sg: &Sg) -> u32 {
        UNLIMITED
    }
    fn exclusive_roles(&self) -> bool {
        true
    }
    fn max_active_sus(&self, _sg: &Sg) -> u32 {
        1
    }
    fn max_standby_sus(&self, _sg: &Sg) -> u32 {
        1
    }
}
