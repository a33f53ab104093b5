//! Reconciliation: bring each SI's assignments to what placement wants, one safe step at a
//! time, and handle the components' answers to CSI callbacks.
//!
//! The choreography guarantees the central safety property of 2N, N+M and N-Way: an SI never
//! has two actives. A moving active is first quiesced (or quiescing, on shutdown), and only
//! when that is confirmed does the new SU become active. When work moves by choice (fail-back,
//! switchover) and the target holds nothing yet, the target first becomes standby, so the
//! handover is always standby → active and the new active starts from replicated state.

use std::sync::Arc;

use nines_model::{CompId, CsiId, EntityRef, Model, SgId, SiId, SuId};

use crate::action::{ActionKind, Event};
use crate::input::{FaultKind, Outcome, Timer};
use crate::redundancy::placement::{place, SiView};
use crate::redundancy::{model_of, RedundancyModel};
use crate::runtime::SuSi;
use crate::states::{AdminState, HaState, Presence, Readiness, SiAssignmentState};
use crate::Engine;

/// Rounds of dependency propagation per step; dependency chains are validated acyclic, so this
/// only bounds work, it never cuts a chain short in valid models of ordinary depth.
const MAX_ROUNDS: usize = 16;

impl Engine {
    /// Reconciles every dirty SG, propagates SI dependencies, and records what changed.
    pub(crate) fn settle(&mut self) {
        for _ in 0..MAX_ROUNDS {
            if self.dirty_list.is_empty() && !self.retry_deferred_repairs() {
                break;
            }
            if self.dirty_list.is_empty() {
                break;
            }
            let list = std::mem::take(&mut self.dirty_list);
            for &sg in &list {
                self.dirty[sg.index()] = false;
            }
            for sg in list {
                self.reconcile_sg(sg);
            }
        }
        self.finish_shutdowns();
        self.check_faults();
    }

    /// Whether the SI is being served: a confirmed active on an SU that is not restarting.
    pub(crate) fn serving(&self, si: SiId) -> bool {
        self.sis[si.index()]
            .assignments
            .iter()
            .any(|a| a.ha == HaState::Active && a.confirmed() && !self.busy(a.su))
    }

    /// Whether the SI should be served (it is unlocked) and is not: work that waits.
    pub(crate) fn unserved(&self, si: SiId) -> bool {
        self.sis[si.index()].admin == AdminState::Unlocked && !self.serving(si)
    }

    fn reconcile_sg(&mut self, sg: SgId) {
        let m: Arc<Model> = self.model.clone();
        let sgm = &m.sgs[sg.index()];
        let rules = model_of(sgm.redundancy);
        let readiness: Vec<Readiness> = sgm.sus.iter().map(|&su| self.readiness(su)).collect();
        for (p, &su) in sgm.sus.iter().enumerate() {
            if self.sus[su.index()].readiness != readiness[p] {
                self.sus[su.index()].readiness = readiness[p];
                self.record(Event::Readiness {
                    su,
                    readiness: readiness[p],
                });
            }
        }
        if self.sg_starting[sg.index()] {
            let instantiating = sgm.sus.iter().any(|su| {
                m.sus[su.index()]
                    .comps
                    .iter()
                    .any(|c| self.comps[c.index()].presence == Presence::Instantiating)
            });
            if instantiating {
                return; // the last instantiation result marks the SG dirty again
            }
            self.sg_starting[sg.index()] = false;
        }
        let eligible: Vec<bool> = readiness
            .iter()
            .map(|&r| r == Readiness::InService)
            .collect();
        let sis: Vec<_> = sgm.sis.iter().map(|si| &m.sis[si.index()]).collect();
        let views: Vec<SiView> = sgm.sis.iter().map(|&si| self.view(si, &eligible)).collect();
        let desired = place(rules, sgm, &sis, &eligible, &views);
        for (i, &si) in sgm.sis.iter().enumerate() {
            let actives: Vec<SuId> = desired[i].actives.iter().map(|&p| sgm.sus[p]).collect();
            let standbys: Vec<SuId> = desired[i].standbys.iter().map(|&p| sgm.sus[p]).collect();
            self.reconcile_si(si, &actives, &standbys, rules);
            self.update_si_state(si, rules);
        }
    }

    /// What placement needs to know about an SI, including its dependency gate.
    fn view(&mut self, si: SiId, eligible: &[bool]) -> SiView {
        let m = self.model.clone();
        let sim = &m.sis[si.index()];
        let pos = |su: SuId| self.su_pos[su.index()];
        let rt = &self.sis[si.index()];
        let held = |ha: HaState| -> Vec<usize> {
            let mut v: Vec<usize> = rt
                .assignments
                .iter()
                .filter(|a| a.ha == ha && eligible[pos(a.su)])
                .map(|a| pos(a.su))
                .collect();
            v.sort_unstable(); // rank order
            v
        };
        let actives = held(HaState::Active);
        let standbys = held(HaState::Standby);
        let prefer = rt.prefer.map(pos).filter(|&p| eligible[p]);
        let has_active = rt.assignments.iter().any(|a| a.ha == HaState::Active);
        let sponsors_ok = sim.depends_on.iter().all(|d| self.serving(d.sponsor));
        self.update_tolerance(si, sponsors_ok, has_active);
        let rt = &self.sis[si.index()];
        let wanted = rt.admin == AdminState::Unlocked
            && rt.fenced_on.is_none()
            && (sponsors_ok || (has_active && !rt.tolerance_expired));
        let ideal = m.sgs[sim.sg.index()].fail_back && !actives.is_empty();
        SiView {
            wanted,
            may_add_active: sponsors_ok,
            actives,
            standbys,
            prefer,
            ideal,
        }
    }

    /// Starts, stops or expires the sponsor tolerance of a dependent SI.
    fn update_tolerance(&mut self, si: SiId, sponsors_ok: bool, has_active: bool) {
        let deps = &self.model.sis[si.index()].depends_on;
        if deps.is_empty() {
            return;
        }
        let tolerance = deps
            .iter()
            .filter(|d| !self.serving(d.sponsor))
            .map(|d| d.tolerance)
            .min()
            .unwrap_or_default();
        let rt = &mut self.sis[si.index()];
        if sponsors_ok {
            if rt.tolerance_running || rt.tolerance_expired {
                rt.tolerance_running = false;
                rt.tolerance_expired = false;
                rt.tolerance_gen = rt.tolerance_gen.wrapping_add(1);
            }
        } else if has_active && !rt.tolerance_running && !rt.tolerance_expired {
            rt.tolerance_running = true;
            rt.tolerance_gen = rt.tolerance_gen.wrapping_add(1);
            let timer = Timer::SponsorTolerance {
                dependent: si,
                generation: rt.tolerance_gen,
            };
            let at = self.now + tolerance;
            self.emit(ActionKind::StartTimer { timer, at });
        }
    }

    pub(crate) fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::InstantiateRetry { comp, generation } => self.on_retry_timer(comp, generation),
            Timer::GuestRelink { node, generation } => self.on_relink_timer(node, generation),
            Timer::SponsorTolerance {
                dependent,
                generation,
            } => {
                let Some(rt) = self.sis.get_mut(dependent.index()) else {
                    return;
                };
                if rt.tolerance_running && rt.tolerance_gen == generation {
                    rt.tolerance_running = false;
                    rt.tolerance_expired = true;
                    let sg = self.model.sis[dependent.index()].sg;
                    self.mark_dirty(sg);
                }
            }
        }
    }

    /// One safe step towards `actives`/`standbys` for an SI.
    fn reconcile_si(
        &mut self,
        si: SiId,
        actives: &[SuId],
        standbys: &[SuId],
        rules: &dyn RedundancyModel,
    ) {
        let single_active = rules.max_actives(&self.model.sis[si.index()]) == 1
            && self.model.sgs[self.model.sis[si.index()].sg.index()].redundancy
                != nines_model::Redundancy::NWayActive;
        // Work on SUs that went out of service leaves at once, even mid-callback: an active is
        // quiesced (or removed when others share it), a standby removed.
        for a in self.sis[si.index()].assignments.clone() {
            if self.readiness(a.su) != Readiness::OutOfService {
                continue;
            }
            match a.ha {
                HaState::Active | HaState::Quiescing if single_active => {
                    self.set_ha(si, a.su, HaState::Quiesced)
                }
                HaState::Active | HaState::Quiescing | HaState::Standby => {
                    self.remove_assignment(si, a.su)
                }
                HaState::Quiesced => {}
            }
        }
        // Nothing moves to other SUs until a node holding this SI is fenced.
        if self.sis[si.index()].fenced_on.is_some() {
            return;
        }
        let rt = &self.sis[si.index()];
        if rt
            .assignments
            .iter()
            .any(|a| !a.confirmed() || self.busy(a.su))
            || actives.iter().chain(standbys).any(|&su| self.busy(su))
        {
            return;
        }
        let si_stopping = rt.admin == AdminState::ShuttingDown;
        let has = |ha: HaState, su: SuId| {
            self.sis[si.index()]
                .assignments
                .iter()
                .any(|a| a.su == su && a.ha == ha)
        };
        // 1. Actives that must go.
        let leaving: Vec<SuId> = rt
            .assignments
            .iter()
            .filter(|a| a.ha == HaState::Active && !actives.contains(&a.su))
            .map(|a| a.su)
            .collect();
        let missing: Vec<SuId> = actives
            .iter()
            .copied()
            .filter(|&su| !has(HaState::Active, su))
            .collect();
        if !leaving.is_empty() {
            if single_active {
                let by_choice = !si_stopping
                    && leaving
                        .iter()
                        .all(|&su| self.readiness(su) == Readiness::InService);
                if by_choice {
                    let fresh: Vec<SuId> = actives
                        .iter()
                        .copied()
                        .filter(|&su| self.sis[si.index()].find(su).is_none())
                        .collect();
                    if !fresh.is_empty() {
                        for su in fresh {
                            self.set_ha(si, su, HaState::Standby);
                        }
                        return;
                    }
                }
                for su in leaving {
                    let ha = if si_stopping || self.readiness(su) == Readiness::Stopping {
                        HaState::Quiescing
                    } else {
                        HaState::Quiesced
                    };
                    self.set_ha(si, su, ha);
                }
                return;
            }
            if missing.is_empty() {
                for su in leaving {
                    if si_stopping || self.readiness(su) == Readiness::Stopping {
                        self.set_ha(si, su, HaState::Quiescing);
                    } else {
                        self.remove_assignment(si, su);
                    }
                }
                return;
            }
        }
        // 2. Actives to add (a promotion when the SU is standby or quiesced).
        if !missing.is_empty() {
            for su in missing {
                self.set_ha(si, su, HaState::Active);
            }
            return;
        }
        // 3. Leftovers: quiesced SUs become standby or go; unwanted standbys go.
        for a in self.sis[si.index()].assignments.clone() {
            let keep_as_standby = standbys.contains(&a.su);
            match a.ha {
                HaState::Quiesced | HaState::Quiescing => {
                    if keep_as_standby && self.readiness(a.su) == Readiness::InService {
                        self.set_ha(si, a.su, HaState::Standby);
                    } else {
                        self.remove_assignment(si, a.su);
                    }
                }
                HaState::Standby if !keep_as_standby && !actives.contains(&a.su) => {
                    self.remove_assignment(si, a.su);
                }
                _ => {}
            }
        }
        // 4. Standbys to add.
        for &su in standbys {
            if self.sis[si.index()].find(su).is_none() {
                self.set_ha(si, su, HaState::Standby);
            }
        }
        // A finished switchover forgets its target.
        let rt = &mut self.sis[si.index()];
        if let Some(p) = rt.prefer {
            if rt
                .assignments
                .iter()
                .any(|a| a.su == p && a.ha == HaState::Active && a.confirmed())
                || !actives.contains(&p)
            {
                rt.prefer = None;
            }
        }
    }

    /// Asks every component of `su` serving the SI's CSIs to take `ha`.
    pub(crate) fn set_ha(&mut self, si: SiId, su: SuId, ha: HaState) {
        let m = self.model.clone();
        let csis = &m.sis[si.index()].csis;
        let rt = &mut self.sis[si.index()];
        let idx = match rt.find(su) {
            Some(i) => i,
            None => {
                rt.assignments.push(SuSi {
                    su,
                    ha,
                    waiting: Vec::new(),
                    quiescing: Vec::new(),
                });
                rt.assignments.len() - 1
            }
        };
        let a = &mut rt.assignments[idx];
        a.ha = ha;
        a.waiting = csis.iter().map(|&c| (c, ha)).collect();
        a.quiescing = if ha == HaState::Quiescing {
            csis.clone()
        } else {
            Vec::new()
        };
        for &csi in csis {
            let comp = m.comp_for(su, csi);
            self.emit(ActionKind::AssignCsi {
                comp,
                csi,
                ha_state: ha,
            });
        }
        if csis.is_empty() {
            self.record(Event::Assignment {
                si,
                su,
                ha_state: Some(ha),
            });
        }
    }

    /// Takes the SI away from `su`, telling its components.
    pub(crate) fn remove_assignment(&mut self, si: SiId, su: SuId) {
        let Some(idx) = self.sis[si.index()].find(su) else {
            return;
        };
        self.sis[si.index()].assignments.remove(idx);
        let m = self.model.clone();
        for &csi in &m.sis[si.index()].csis {
            let comp = m.comp_for(su, csi);
            self.emit(ActionKind::RemoveCsi { comp, csi });
        }
        self.record(Event::Assignment {
            si,
            su,
            ha_state: None,
        });
        // A removal waits for no answer, so nothing else would wake this SI's next step.
        self.mark_dirty(m.sis[si.index()].sg);
    }

    /// Forgets every assignment of `su` without callbacks: its components are dead or being
    /// cleaned up, so their work is void.
    pub(crate) fn drop_assignments(&mut self, su: SuId) {
        let sg = self.model.sus[su.index()].sg;
        for si in self.model.sgs[sg.index()].sis.clone() {
            if let Some(idx) = self.sis[si.index()].find(su) {
                self.sis[si.index()].assignments.remove(idx);
                self.record(Event::Assignment {
                    si,
                    su,
                    ha_state: None,
                });
            }
        }
        self.mark_dirty(sg);
    }

    /// Gives a restarted component back the CSIs its SU holds.
    pub(crate) fn reassign_comp(&mut self, comp: CompId) {
        self.comps[comp.index()].needs_reassign = false;
        let m = self.model.clone();
        let su = m.comps[comp.index()].su;
        let slot = m.sus[su.index()].comps.iter().position(|&c| c == comp);
        let sg = m.sus[su.index()].sg;
        for &si in &m.sgs[sg.index()].sis {
            let Some(idx) = self.sis[si.index()].find(su) else {
                continue;
            };
            for &csi in &m.sis[si.index()].csis {
                if Some(m.csis[csi.index()].comp_slot) != slot {
                    continue;
                }
                let a = &mut self.sis[si.index()].assignments[idx];
                let ha_state = if a.ha == HaState::Quiescing {
                    // A fresh process has nothing in flight: it is quiesced at once, and the
                    // SU is quiesced when its other components finish.
                    a.quiescing.retain(|&c| c != csi);
                    HaState::Quiesced
                } else {
                    a.ha
                };
                a.waiting.retain(|&(c, _)| c != csi);
                a.waiting.push((csi, ha_state));
                self.emit(ActionKind::AssignCsi {
                    comp,
                    csi,
                    ha_state,
                });
            }
        }
        self.mark_dirty(sg);
    }

    fn assignment_of(&mut self, comp: CompId, csi: CsiId) -> Option<(SiId, SuId, usize)> {
        let su = self.model.comps.get(comp.index())?.su;
        let si = self.model.csis.get(csi.index())?.si;
        let idx = self.sis[si.index()].find(su)?;
        Some((si, su, idx))
    }

    pub(crate) fn on_csi_assigned(
        &mut self,
        comp: CompId,
        csi: CsiId,
        ha: HaState,
        outcome: Outcome,
    ) {
        let Some((si, su, idx)) = self.assignment_of(comp, csi) else {
            return;
        };
        let a = &mut self.sis[si.index()].assignments[idx];
        let Some(pos) = a.waiting.iter().position(|&w| w == (csi, ha)) else {
            return; // stale answer to an earlier request
        };
        a.waiting.remove(pos);
        self.after_answer(si, su, idx);
        if outcome != Outcome::Ok {
            self.on_component_failed(
                comp,
                FaultKind::ErrorReport,
                Some(nines_model::Recovery::ComponentFailover),
            );
        }
    }

    pub(crate) fn on_quiescing_complete(&mut self, comp: CompId, csi: CsiId) {
        let Some((si, su, idx)) = self.assignment_of(comp, csi) else {
            return;
        };
        let a = &mut self.sis[si.index()].assignments[idx];
        let Some(pos) = a.quiescing.iter().position(|&c| c == csi) else {
            return;
        };
        a.quiescing.remove(pos);
        self.after_answer(si, su, idx);
    }

    /// Records an assignment once all its components confirmed it.
    fn after_answer(&mut self, si: SiId, su: SuId, idx: usize) {
        let a = &mut self.sis[si.index()].assignments[idx];
        if !a.confirmed() {
            return;
        }
        if a.ha == HaState::Quiescing {
            a.ha = HaState::Quiesced;
        }
        let ha_state = Some(a.ha);
        self.record(Event::Assignment { si, su, ha_state });
        let sg = self.model.sis[si.index()].sg;
        self.mark_dirty(sg);
    }

    pub(crate) fn on_csi_removed(&mut self, comp: CompId, csi: CsiId, outcome: Outcome) {
        let _ = csi;
        // The assignment was forgotten when the removal was sent; only a failure matters: a
        // component that cannot let go of work is faulty.
        if outcome != Outcome::Ok
            && self.comps.get(comp.index()).is_some()
            && self.model.csis.get(csi.index()).is_some()
        {
            self.on_component_failed(
                comp,
                FaultKind::ErrorReport,
                Some(nines_model::Recovery::ComponentFailover),
            );
        }
    }

    fn update_si_state(&mut self, si: SiId, rules: &dyn RedundancyModel) {
        let sim = &self.model.sis[si.index()];
        let rt = &self.sis[si.index()];
        let count = |ha: HaState| {
            rt.assignments
                .iter()
                .filter(|a| a.ha == ha && a.confirmed() && !self.busy(a.su))
                .count() as u32
        };
        let (act, stb) = (count(HaState::Active), count(HaState::Standby));
        let state = if act == 0 {
            SiAssignmentState::Unassigned
        } else if act >= rules.max_actives(sim) && stb >= rules.max_standbys(sim) {
            SiAssignmentState::FullyAssigned
        } else {
            SiAssignmentState::PartiallyAssigned
        };
        let serving = act > 0;
        let rt = &mut self.sis[si.index()];
        let woke = rt.was_serving != serving;
        rt.was_serving = serving;
        if rt.state != state {
            rt.state = state;
            self.record(Event::SiState { si, state });
        }
        if woke {
            for dep in self.dependents[si.index()].clone() {
                self.mark_dirty(self.model.sis[dep.index()].sg);
            }
        }
    }

    /// Entities whose shutdown has drained become locked.
    fn finish_shutdowns(&mut self) {
        if self.shutting_down.is_empty() {
            return;
        }
        for entity in std::mem::take(&mut self.shutting_down) {
            let sus = self.sus_of(entity);
            let drained = match entity {
                EntityRef::Si(si) => self.sis[si.index()].assignments.is_empty(),
                _ => sus.iter().all(|&su| !self.holds_assignments(su)),
            };
            if drained && self.admin_state(entity) == Some(AdminState::ShuttingDown) {
                self.set_admin(entity, AdminState::Locked);
            } else if self.admin_state(entity) == Some(AdminState::ShuttingDown) {
                self.shutting_down.push(entity);
            }
        }
    }
}
