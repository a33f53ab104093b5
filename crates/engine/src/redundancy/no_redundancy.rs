//! No-Redundancy: each SI active on one SU, at most one SI per SU, no standbys; recovery is
//! restart, or moving the SI to a spare SU.

use nines_model::{Sg, Si};

use super::RedundancyModel;

/// The No-Redundancy rules.
pub(crate) struct NoRedundancy;

impl RedundancyModel for NoRedundancy {
    fn max_actives(&self, _si: &Si) -> u32 {
        1
    }
    fn max_standbys(&self, _si: &Si) -> u32 {
        0
    }
    fn active_capacity(&self, _sg: &Sg) -> u32 {
        1
    }
    fn standby_capacity(&self, _sg: &Sg) -> u32 {
        0
    }
    fn exclusive_roles(&self) -> bool {
        false
    }
    fn max_active_sus(&self, _sg: &Sg) -> u32 {
        super::UNLIMITED
    }
    fn max_standby_sus(&self, _sg: &Sg) -> u32 {
        0
    }
}
