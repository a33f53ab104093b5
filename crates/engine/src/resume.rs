//! Resuming a cluster whose components outlived their driver.
//!
//! A restarted director (`nines run` after a crash) finds components still running, with the
//! work they were given before. Starting from scratch would kill and restart them, or worse,
//! start duplicates beside them. Instead the driver adopts them and tells the engine, before
//! [`Input::Start`](crate::Input::Start), what runs and what it holds
//! ([`Input::Resume`](crate::Input::Resume)). The engine takes that as its runtime state, and
//! from `Start` on everything proceeds as usual: what is missing is instantiated and assigned,
//! what placement would rather have elsewhere moves by the usual safe steps.
//!
//! What the driver reports is taken only where it is consistent, because it comes from a
//! store the old run wrote and from processes that may have changed since:
//!
//! * a component is taken as instantiated only if it exists;
//! * an assignment is taken only if its SU is in service with every component running, its
//!   HA state is active or standby (a half-finished quiesce is not resumed), and the SI's
//!   redundancy model allows one more assignment of that HA state;
//! * every assignment not taken is removed from the components that may hold it
//!   (`RemoveCsi`), so nothing keeps serving work the engine does not know about. In
//!   particular two actives of a 2N SI can never be resumed.
//!
//! Escalation counters and fault histories are not resumed: probation windows start again.

use nines_model::{CompId, SiId, SuId};

use crate::action::{ActionKind, Event};
use crate::redundancy::model_of;
use crate::runtime::SuSi;
use crate::states::{HaState, Presence, Readiness};
use crate::Engine;

impl Engine {
    pub(crate) fn resume(&mut self, running: &[CompId], assignments: &[(SiId, SuId, HaState)]) {
        if self.started {
            return; // only a driver's bug sends it late; the live state wins
        }
        let m = self.model.clone();
        for &comp in running {
            if comp.index() < m.comps.len() {
                self.set_presence(comp, Presence::Instantiated);
            }
        }
        for &(si, su, ha) in assignments {
            let (Some(si_m), Some(su_m)) = (m.sis.get(si.index()), m.sus.get(su.index())) else {
                continue;
            };
            if si_m.sg != su_m.sg {
                continue;
            }
            let rules = model_of(m.sgs[si_m.sg.index()].redundancy);
            let rt = &self.sis[si.index()];
            let same = |h: HaState| rt.assignments.iter().filter(|a| a.ha == h).count() as u32;
            let allowed = match ha {
                HaState::Active => same(HaState::Active) < rules.max_actives(si_m),
                HaState::Standby => same(HaState::Standby) < rules.max_standbys(si_m),
                HaState::Quiescing | HaState::Quiesced => false,
            };
            let take =
                allowed && rt.find(su).is_none() && self.readiness(su) == Readiness::InService;
            if take {
                self.sis[si.index()].assignments.push(SuSi {
                    su,
                    ha,
                    waiting: Vec::new(),
                    quiescing: Vec::new(),
                });
                self.record(Event::Assignment {
                    si,
                    su,
                    ha_state: Some(ha),
                });
                // Not a first assignment: no start-up race of ranks to wait for.
                self.sg_starting[si_m.sg.index()] = false;
            } else {
                self.remove_unknown(si, su, running);
            }
            self.mark_dirty(si_m.sg);
        }
    }

    /// Removes the CSIs of `si` from the running components of `su` that would serve them.
    fn remove_unknown(&mut self, si: SiId, su: SuId, running: &[CompId]) {
        let m = self.model.clone();
        for &csi in &m.sis[si.index()].csis {
            let comp = m.comp_for(su, csi);
            if running.contains(&comp) {
                self.emit(ActionKind::RemoveCsi { comp, csi });
            }
        }
    }
}
