//! Admin operations: lock, unlock, lock/unlock-instantiation, shutdown, restart, switchover and
//! repaired on every entity they make sense for; anything else gets a refusal that says why.

use nines_model::{EntityRef, SuId};

use crate::action::{ActionKind, AdminError, Event};
use crate::input::AdminOp;
use crate::states::{AdminState, HaState, OperState, Presence, Readiness};
use crate::Engine;

impl Engine {
    pub(crate) fn on_admin(&mut self, request: u64, op: AdminOp, target: EntityRef) {
        let result = self.admin(op, target);
        if result.is_ok() {
            self.record(Event::AdminDone { op, target });
        }
        self.emit(ActionKind::AdminReply { request, result });
    }

    fn refuse(&self, op: AdminOp, target: EntityRef, reason: impl Into<String>) -> AdminError {
        let path = if self.exists(target) {
            self.model.path(target)
        } else {
            format!("{target:?}")
        };
        AdminError {
            op,
            target: path,
            reason: reason.into(),
        }
    }

    fn exists(&self, e: EntityRef) -> bool {
        let m = &self.model;
        match e {
            EntityRef::Cluster => true,
            EntityRef::Node(i) => i.index() < m.nodes.len(),
            EntityRef::App(i) => i.index() < m.apps.len(),
            EntityRef::Sg(i) => i.index() < m.sgs.len(),
            EntityRef::Su(i) => i.index() < m.sus.len(),
            EntityRef::Comp(i) => i.index() < m.comps.len(),
            EntityRef::Si(i) => i.index() < m.sis.len(),
            EntityRef::Csi(i) => i.index() < m.csis.len(),
        }
    }

    fn admin(&mut self, op: AdminOp, target: EntityRef) -> Result<(), AdminError> {
        if !self.exists(target) {
            return Err(self.refuse(op, target, "no such entity"));
        }
        match target {
            EntityRef::Csi(_) => Err(self.refuse(
                op,
                target,
                "CSIs have no admin operations; operate on their SI",
            )),
            EntityRef::Comp(comp) => {
                if op != AdminOp::Restart {
                    return Err(self.refuse(
                        op,
                        target,
                        "components only support restart; operate on their SU",
                    ));
                }
                let su = self.model.comps[comp.index()].su;
                if self.comps[comp.index()].presence != Presence::Instantiated
                    || self.comps[comp.index()].awaiting.is_some()
                    || self.sus[su.index()].oper == OperState::Disabled
                {
                    return Err(self.refuse(op, target, "the component is not running"));
                }
                self.restart_comps(&[comp], true);
                Ok(())
            }
            EntityRef::Si(si) => self.admin_si(op, target, si),
            _ => self.admin_group(op, target),
        }
    }

    fn admin_si(
        &mut self,
        op: AdminOp,
        target: EntityRef,
        si: nines_model::SiId,
    ) -> Result<(), AdminError> {
        let current = self.sis[si.index()].admin;
        match op {
            AdminOp::Lock | AdminOp::Unlock | AdminOp::Shutdown => {
                self.change_admin(op, target, current)
            }
            AdminOp::Switchover => self.switchover(target, si),
            _ => Err(self.refuse(
                op,
                target,
                "an SI supports lock, unlock, shutdown and switchover",
            )),
        }
    }

    /// Swaps an SI's active and standby (in 2N, every SI the same pair holds moves together).
    fn switchover(&mut self, target: EntityRef, si: nines_model::SiId) -> Result<(), AdminError> {
        let op = AdminOp::Switchover;
        let rt = &self.sis[si.index()];
        if rt.admin != AdminState::Unlocked {
            return Err(self.refuse(op, target, "the SI is not unlocked"));
        }
        if rt.assignments.iter().any(|a| !a.confirmed()) || rt.prefer.is_some() {
            return Err(self.refuse(op, target, "an assignment change is in progress"));
        }
        let active = rt.assignments.iter().find(|a| a.ha == HaState::Active);
        let standby = rt
            .assignments
            .iter()
            .find(|a| a.ha == HaState::Standby && self.readiness(a.su) == Readiness::InService);
        let (Some(active), Some(standby)) = (active, standby) else {
            return Err(self.refuse(
                op,
                target,
                "the SI needs an active and an in-service standby to switch over",
            ));
        };
        let (from, to) = (active.su, standby.su);
        let sg = self.model.sis[si.index()].sg;
        let whole_sg = self.model.sgs[sg.index()].redundancy == nines_model::Redundancy::TwoN;
        let sis = if whole_sg {
            self.model.sgs[sg.index()].sis.clone()
        } else {
            vec![si]
        };
        for s in sis {
            let rt = &mut self.sis[s.index()];
            let pair = rt
                .assignments
                .iter()
                .any(|a| a.su == from && a.ha == HaState::Active)
                && rt
                    .assignments
                    .iter()
                    .any(|a| a.su == to && a.ha == HaState::Standby);
            if pair {
                rt.prefer = Some(to);
            }
        }
        self.mark_dirty(sg);
        Ok(())
    }

    /// Lock, unlock, lock-in, unlock-in, shutdown, restart and repaired on SUs and the groups
    /// that contain them (SG, application, node, cluster).
    fn admin_group(&mut self, op: AdminOp, target: EntityRef) -> Result<(), AdminError> {
        let current = self.admin_state(target).unwrap_or(AdminState::Unlocked);
        match op {
            AdminOp::Lock
            | AdminOp::Unlock
            | AdminOp::LockInstantiation
            | AdminOp::UnlockInstantiation
            | AdminOp::Shutdown => self.change_admin(op, target, current),
            AdminOp::Restart => {
                if current != AdminState::Unlocked {
                    return Err(self.refuse(op, target, "only an unlocked entity can restart"));
                }
                let sus: Vec<SuId> = self
                    .sus_of(target)
                    .into_iter()
                    .filter(|&su| self.readiness(su) == Readiness::InService && !self.busy(su))
                    .collect();
                if sus.is_empty() {
                    return Err(self.refuse(op, target, "nothing in service to restart"));
                }
                let fresh = matches!(target, EntityRef::App(_) | EntityRef::Cluster);
                let m = self.model.clone();
                for su in sus {
                    if fresh {
                        self.drop_assignments(su);
                    }
                    self.restart_comps(&m.sus[su.index()].comps, true);
                }
                Ok(())
            }
            AdminOp::Repaired => {
                let disabled: Vec<SuId> = self
                    .sus_of(target)
                    .into_iter()
                    .filter(|&su| self.sus[su.index()].oper == OperState::Disabled)
                    .collect();
                let node_counts = matches!(target, EntityRef::Node(_));
                if disabled.is_empty() && !node_counts {
                    return Err(self.refuse(op, target, "nothing is disabled"));
                }
                if let EntityRef::Node(n) = target {
                    self.nodes[n.index()].su_failovers.clear();
                }
                for su in disabled {
                    self.repair_su(su);
                }
                Ok(())
            }
            AdminOp::Switchover => {
                let EntityRef::Su(su) = target else {
                    return Err(self.refuse(
                        op,
                        target,
                        "switchover applies to an SI (or an SU: all its actives move)",
                    ));
                };
                if self.readiness(su) != Readiness::InService {
                    return Err(self.refuse(op, target, "the SU is not in service"));
                }
                self.switch_over_su(su);
                Ok(())
            }
        }
    }

    /// Clears a disabled SU's failure state and brings it back.
    fn repair_su(&mut self, su: SuId) {
        let m = self.model.clone();
        for &comp in &m.sus[su.index()].comps {
            let c = &mut self.comps[comp.index()];
            c.inst_failures = 0;
            c.retrying = false;
            if c.awaiting.is_none()
                && matches!(
                    c.presence,
                    Presence::InstantiationFailed | Presence::TerminationFailed
                )
            {
                self.set_presence(comp, Presence::Uninstantiated);
            }
        }
        let s = &mut self.sus[su.index()];
        s.comp_restarts.clear();
        s.su_restarts.clear();
        s.auto_repair = true;
        // Re-enabled once every component is clean (now, or when its cleanup finishes).
        let clean = m.sus[su.index()].comps.iter().all(|c| {
            let c = &self.comps[c.index()];
            c.presence == Presence::Uninstantiated && c.awaiting.is_none()
        });
        if clean {
            self.sus[su.index()].auto_repair = false;
            self.set_oper(su, OperState::Enabled);
        }
        self.converge_su(su);
    }

    /// Applies an admin state transition after checking it is allowed from `current`.
    fn change_admin(
        &mut self,
        op: AdminOp,
        target: EntityRef,
        current: AdminState,
    ) -> Result<(), AdminError> {
        use AdminState::*;
        let next = match (op, current) {
            (AdminOp::Lock, Unlocked | ShuttingDown) => Locked,
            (AdminOp::Unlock, Locked) => Unlocked,
            (AdminOp::LockInstantiation, Locked) => LockedInstantiation,
            (AdminOp::UnlockInstantiation, LockedInstantiation) => Locked,
            (AdminOp::Shutdown, Unlocked) => ShuttingDown,
            _ => {
                let needs = match op {
                    AdminOp::Lock => "unlocked or shutting down",
                    AdminOp::Unlock | AdminOp::LockInstantiation => "locked",
                    AdminOp::UnlockInstantiation => "locked-instantiation",
                    _ => "unlocked",
                };
                return Err(self.refuse(
                    op,
                    target,
                    format!("it is {}, must be {needs}", admin_name(current)),
                ));
            }
        };
        self.set_admin(target, next);
        if next == ShuttingDown {
            self.shutting_down.push(target);
        }
        Ok(())
    }

    /// Sets an admin state, records it, and wakes everything under the entity.
    pub(crate) fn set_admin(&mut self, entity: EntityRef, state: AdminState) {
        match entity {
            EntityRef::Cluster => self.cluster_admin = state,
            EntityRef::Node(n) => self.nodes[n.index()].admin = state,
            EntityRef::App(a) => self.apps_admin[a.index()] = state,
            EntityRef::Sg(s) => self.sgs_admin[s.index()] = state,
            EntityRef::Su(s) => self.sus[s.index()].admin = state,
            EntityRef::Si(s) => {
                self.sis[s.index()].admin = state;
                self.mark_dirty(self.model.sis[s.index()].sg);
            }
            EntityRef::Comp(_) | EntityRef::Csi(_) => return,
        }
        self.record(Event::Admin {
            entity,
            admin: state,
        });
        if let EntityRef::Node(node) = entity {
            match state {
                AdminState::Locked | AdminState::ShuttingDown => self.migrate_away(node),
                AdminState::Unlocked => self.fail_back_vms(node),
                AdminState::LockedInstantiation => {}
            }
        }
        for su in self.sus_of(entity) {
            self.converge_su(su);
        }
    }

    /// The SUs an entity contains (none for SIs, components and CSIs).
    pub(crate) fn sus_of(&self, entity: EntityRef) -> Vec<SuId> {
        let m = &self.model;
        match entity {
            EntityRef::Cluster => (0..m.sus.len() as u32).map(SuId).collect(),
            EntityRef::Node(n) => self.sus_on(n),
            EntityRef::App(a) => m.apps[a.index()]
                .sgs
                .iter()
                .flat_map(|sg| m.sgs[sg.index()].sus.iter().copied())
                .collect(),
            EntityRef::Sg(s) => m.sgs[s.index()].sus.clone(),
            EntityRef::Su(s) => vec![s],
            EntityRef::Si(_) | EntityRef::Comp(_) | EntityRef::Csi(_) => Vec::new(),
        }
    }
}

fn admin_name(s: AdminState) -> &'static str {
    match s {
        AdminState::Unlocked => "unlocked",
        AdminState::Locked => "locked",
        AdminState::LockedInstantiation => "locked-instantiation",
        AdminState::ShuttingDown => "shutting down",
    }
}

/// The admin operations that take an entity from `current` to `target`, one legal step at a
/// time (unlocked ⇄ locked ⇄ locked-instantiation): how a restarted driver re-applies the
/// admin states it persisted. A stored `shutting-down` means the run ended mid-shutdown;
/// shutdown ends in `locked`, so that is what is restored.
pub fn restore_ops(current: AdminState, target: AdminState) -> Vec<AdminOp> {
    fn level(a: AdminState) -> u8 {
        match a {
            AdminState::Unlocked => 0,
            AdminState::Locked | AdminState::ShuttingDown => 1,
            AdminState::LockedInstantiation => 2,
        }
    }
    let (mut from, to) = (level(current), level(target));
    let mut ops = Vec::new();
    while from != to {
        if from < to {
            ops.push(if from == 0 {
                AdminOp::Lock
            } else {
                AdminOp::LockInstantiation
            });
            from += 1;
        } else {
            ops.push(if from == 2 {
                AdminOp::UnlockInstantiation
            } else {
                AdminOp::Unlock
            });
            from -= 1;
        }
    }
    ops
}

#[cfg(test)]
mod restore_tests {
    use super::*;

    #[test]
    fn restore_walks_the_admin_ladder() {
        use AdminState::*;
        assert_eq!(restore_ops(Unlocked, Unlocked), vec![]);
        assert_eq!(restore_ops(Unlocked, Locked), vec![AdminOp::Lock]);
        assert_eq!(restore_ops(Unlocked, ShuttingDown), vec![AdminOp::Lock]);
        assert_eq!(
            restore_ops(Unlocked, LockedInstantiation),
            vec![AdminOp::Lock, AdminOp::LockInstantiation]
        );
        assert_eq!(
            restore_ops(LockedInstantiation, Unlocked),
            vec![AdminOp::UnlockInstantiation, AdminOp::Unlock]
        );
    }
}
