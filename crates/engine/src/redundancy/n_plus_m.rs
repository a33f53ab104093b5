//! N+M: N SUs hold actives, M SUs hold standbys; an SU never mixes the two roles.

use nines_model::{Redundancy, Sg, Si};

use super::{RedundancyModel, UNLIMITED};

/// The N+M rules.
pub(crate) struct NPlusM;

impl RedundancyModel for NPlusM {
    fn max_actives(&self, _si: &Si) -> u32 {
        1
    }
    fn max_standbys(&self, si: &Si) -> u32 {
        si.preferred_standby.min(1)
    }
    fn active_capacity(&self, sg: &Sg) -> u32 {
        sg.max_active_sis_per_su.unwrap_or(UNLIMITED)
    }
    fn standby_capacity(&self, sg: &Sg) -> u32 {
        sg.max_standby_sis_per_su.unwrap_or(UNLIMITED)
    }
    fn exclusive_roles(&self) -> bool {
        true
    }
    fn max_active_sus(&self, sg: &Sg) -> u32 {
        match sg.redundancy {
            Redundancy::NPlusM { active_sus, .. } => active_sus.max(1),
            _ => UNLIMITED,
        }
    }
    fn max_standby_sus(&self, sg: &Sg) -> u32 {
        match sg.redundancy {
            Redundancy::NPlusM { standby_sus, .. } => standby_sus,
            _ => UNLIMITED,
        }
    }
}
