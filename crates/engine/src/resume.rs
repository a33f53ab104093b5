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
//! * an SU holds an SI only if all its components run and its SA-aware components agree on
//!   the HA state of the SI's CSIs; the assignment is taken only if the SU is in service, the
//!   state is active or standby (a half-finished quiesce is not resumed), and the SI's
//!   redundancy model allows one more assignment of that state;
//! * every claim not taken is removed from the component that made it (`RemoveCsi`), so
//!   nothing keeps serving work the engine does not know about, also in an SU that is only
//!   partly running. In particular two actives of a 2N SI can never be resumed.
//!
//! Escalation counters and fault histories are not resumed: probation windows start again.

use std::collections::BTreeSet;

use nines_model::{CompId, CompKind, CsiId, Model, NodeId, SiId, SuId};

use crate::action::{ActionKind, Event};
use crate::input::Input;
use crate::redundancy::model_of;
use crate::runtime::SuSi;
use crate::states::{HaState, Presence, Readiness};
use crate::Engine;

impl Engine {
    pub(crate) fn resume(
        &mut self,
        running: &[CompId],
        held: &[(CompId, CsiId, HaState)],
        moved: &[(SuId, NodeId)],
    ) {
        if self.started {
            return; // only a driver's bug sends it late; the live state wins
        }
        let m = self.model.clone();
        for &(su, node) in moved {
            if su.index() < m.sus.len() && node.index() < m.nodes.len() {
                self.sus[su.index()].host = node;
            }
        }
        let running: Vec<CompId> = running
            .iter()
            .copied()
            .filter(|c| c.index() < m.comps.len())
            .collect();
        for &comp in &running {
            self.set_presence(comp, Presence::Instantiated);
        }
        let held: Vec<(CompId, CsiId, HaState)> = held
            .iter()
            .copied()
            .filter(|(c, csi, _)| running.contains(c) && csi.index() < m.csis.len())
            .collect();
        let mut taken: Vec<(SiId, SuId, HaState)> = Vec::new();
        for (si, su, ha) in claims(&m, &running, &held) {
            let si_m = &m.sis[si.index()];
            let rules = model_of(m.sgs[si_m.sg.index()].redundancy);
            let rt = &self.sis[si.index()];
            let same = |h: HaState| rt.assignments.iter().filter(|a| a.ha == h).count() as u32;
            let allowed = match ha {
                HaState::Active => same(HaState::Active) < rules.max_actives(si_m),
                HaState::Standby => same(HaState::Standby) < rules.max_standbys(si_m),
                HaState::Quiescing | HaState::Quiesced => false,
            };
            if allowed && rt.find(su).is_none() && self.readiness(su) == Readiness::InService {
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
                taken.push((si, su, ha));
            }
            self.mark_dirty(si_m.sg);
        }
        // Whatever a component holds that the engine did not take, it must let go of.
        for &(comp, csi, ha) in &held {
            let su = m.comps[comp.index()].su;
            let si = m.csis[csi.index()].si;
            if !taken.contains(&(si, su, ha)) {
                self.emit(ActionKind::RemoveCsi { comp, csi });
                self.mark_dirty(m.sis[si.index()].sg);
            }
        }
    }
}

/// The SU-level assignments the components' claims amount to, actives first (so the engine,
/// which takes at most the model's number of actives, never drops a real active for a
/// claimed one): an SU holds an SI in an HA state if all its components run and every
/// SA-aware one that serves a CSI of the SI claims that CSI in that state. SUs of process
/// components only claim nothing: their CSI callbacks never reach the process, so the engine
/// places their work again.
fn claims(
    m: &Model,
    running: &[CompId],
    held: &[(CompId, CsiId, HaState)],
) -> Vec<(SiId, SuId, HaState)> {
    let mut out: BTreeSet<(SiId, SuId, HaState)> = BTreeSet::new();
    for (s, su) in m.sus.iter().enumerate() {
        let su_id = SuId(s as u32);
        if !su.comps.iter().all(|c| running.contains(c)) {
            continue;
        }
        for &si in &m.sgs[su.sg.index()].sis {
            let mut state: Option<HaState> = None;
            let mut agreed = true;
            for &csi in &m.sis[si.index()].csis {
                let comp = m.comp_for(su_id, csi);
                if m.comps[comp.index()].kind != CompKind::SaAware {
                    continue;
                }
                let claim = held
                    .iter()
                    .find(|(c, x, _)| *c == comp && *x == csi)
                    .map(|(_, _, h)| *h);
                match (claim, state) {
                    (None, _) => agreed = false,
                    (Some(h), None) => state = Some(h),
                    (Some(h), Some(s)) if h != s => agreed = false,
                    _ => {}
                }
            }
            if let (true, Some(ha)) = (agreed, state) {
                out.insert((si, su_id, ha));
            }
        }
    }
    let mut v: Vec<_> = out.into_iter().collect();
    v.sort_by_key(|(si, su, h)| (*h != HaState::Active, *si, *su));
    v
}

/// The [`Input::Resume`] for what a restarted driver adopted: each running component with the
/// CSIs it says it holds (empty for process components). Shared by every driver (director,
/// simulator) so they resume alike. `moved`: SUs adopted on another node than their
/// configured one (a VM that was live-migrated), with that node.
pub fn resume_input(
    adopted: &[(CompId, Vec<(CsiId, HaState)>)],
    moved: Vec<(SuId, NodeId)>,
) -> Input {
    Input::Resume {
        moved,
        running: adopted.iter().map(|(c, _)| *c).collect(),
        held: adopted
            .iter()
            .flat_map(|(c, h)| h.iter().map(move |(csi, ha)| (*c, *csi, *ha)))
            .collect(),
    }
}
