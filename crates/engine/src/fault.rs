//! Fault handling: isolate the failed part, recover the service, repair what broke.
//!
//! A failure report picks a recovery (the report's recommendation or the component's configured
//! default), escalation may strengthen it, and the step is carried out here. Service recovery
//! itself (who becomes active) is left to reconciliation at the end of the step.

use nines_model::{CompId, EntityRef, Recovery, SiId, SuId};

use crate::action::{Event, FaultId, RecoveryStep};
use crate::input::FaultKind;
use crate::states::{HaState, OperState, Presence};
use crate::Engine;

impl Engine {
    pub(crate) fn on_component_failed(
        &mut self,
        comp: CompId,
        kind: FaultKind,
        recommended: Option<Recovery>,
    ) {
        if self.comps.get(comp.index()).is_none() {
            return;
        }
        let su = self.model.comps[comp.index()].su;
        if self.sus[su.index()].migration.is_some() {
            self.abandon_migration(su, "the VM failed while migrating", false);
        }
        let c = &self.comps[comp.index()];
        let node = self.su_host(su);
        let reason = if c.presence != Presence::Instantiated || c.awaiting.is_some() {
            Some("component is not running or is already being recovered")
        } else if self.sus[su.index()].oper == OperState::Disabled {
            Some("its SU is already disabled")
        } else if !self.nodes[node.index()].up || self.nodes[node.index()].fencing {
            Some("its node is down or being fenced")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.record(Event::FaultIgnored {
                entity: EntityRef::Comp(comp),
                reason,
            });
            return;
        }
        let configured = self.model.comps[comp.index()].recovery;
        let requested = RecoveryStep::from_recovery(recommended.unwrap_or(configured));
        let fault = self.next_fault;
        self.next_fault += 1;
        let step = self.escalate(fault, su, requested);
        self.recover(fault, EntityRef::Comp(comp), Some(kind), step, comp);
    }

    /// Carries out `step` for a failure of `comp`.
    pub(crate) fn recover(
        &mut self,
        fault: FaultId,
        entity: EntityRef,
        kind: Option<FaultKind>,
        step: RecoveryStep,
        comp: CompId,
    ) {
        let su = self.model.comps[comp.index()].su;
        let node = self.su_host(su);
        let scope = self.scope_of(step, comp);
        let affected = match step {
            // A switchover moves the healthy SUs' work gracefully; only the faulty SU's is lost.
            RecoveryStep::NodeSwitchover => self.active_sis_of(&[su]),
            _ => self.active_sis_of(&scope),
        };
        let repaired_node = matches!(step, RecoveryStep::NodeFailfast).then_some(node);
        self.open_fault_with_id(fault, entity, kind, step, affected, vec![su], repaired_node);
        self.carry_out(fault, step, comp, &scope);
    }

    /// The SUs a recovery step for a failure of `comp` acts on.
    pub(crate) fn scope_of(&self, step: RecoveryStep, comp: CompId) -> Vec<SuId> {
        let m = &self.model;
        let su = m.comps[comp.index()].su;
        let node = self.su_host(su);
        let app = m.sgs[m.sus[su.index()].sg.index()].app;
        match step {
            RecoveryStep::ComponentRestart | RecoveryStep::SuRestart | RecoveryStep::SuFailover => {
                vec![su]
            }
            RecoveryStep::NodeSwitchover
            | RecoveryStep::NodeFailover
            | RecoveryStep::NodeFailfast => self.sus_on(node),
            RecoveryStep::ApplicationRestart => m.apps[app.index()]
                .sgs
                .iter()
                .flat_map(|sg| m.sgs[sg.index()].sus.iter().copied())
                .collect(),
            RecoveryStep::ClusterReset => (0..m.sus.len() as u32).map(SuId).collect(),
        }
    }

    /// Does what `step` says for a failure of `comp` (fault `fault`) over `scope`.
    pub(crate) fn carry_out(
        &mut self,
        fault: FaultId,
        step: RecoveryStep,
        comp: CompId,
        scope: &[SuId],
    ) {
        let m = self.model.clone();
        let su = m.comps[comp.index()].su;
        let node = self.su_host(su);
        match step {
            RecoveryStep::ComponentRestart => self.restart_comps(&[comp], false),
            RecoveryStep::SuRestart => {
                let comps = m.sus[su.index()].comps.clone();
                self.restart_comps(&comps, false);
            }
            RecoveryStep::SuFailover => self.take_out(su, true),
            RecoveryStep::NodeSwitchover => {
                self.take_out(su, true);
                for &other in scope {
                    if other != su {
                        self.switch_over_su(other);
                    }
                }
            }
            // A guest node is failed over by resetting its VM (UC9): that also ends whatever
            // in the guest kept failing.
            RecoveryStep::NodeFailover | RecoveryStep::NodeFailfast
                if m.nodes[node.index()].vm.is_some() =>
            {
                self.reset_guest(node, fault)
            }
            RecoveryStep::NodeFailover => {
                for &s in scope {
                    if self.sus[s.index()].oper == OperState::Enabled {
                        self.take_out(s, true);
                    }
                }
            }
            RecoveryStep::NodeFailfast => self.fence(node),
            RecoveryStep::ApplicationRestart | RecoveryStep::ClusterReset => {
                for &s in scope {
                    self.drop_assignments(s);
                    let comps = m.sus[s.index()].comps.clone();
                    self.restart_comps(&comps, false);
                }
            }
        }
    }

    /// Gracefully moves every active assignment of `su` to the SI's standby (node switchover).
    pub(crate) fn switch_over_su(&mut self, su: SuId) {
        let sg = self.model.sus[su.index()].sg;
        for si in self.model.sgs[sg.index()].sis.clone() {
            let rt = &mut self.sis[si.index()];
            let active_here = rt
                .assignments
                .iter()
                .any(|a| a.su == su && a.ha == HaState::Active);
            let standby = rt
                .assignments
                .iter()
                .find(|a| a.ha == HaState::Standby)
                .map(|a| a.su);
            if active_here {
                if let Some(target) = standby {
                    rt.prefer = Some(target);
                }
            }
        }
        self.mark_dirty(sg);
    }

    /// SIs held active by any of `sus`.
    pub(crate) fn active_sis_of(&self, sus: &[SuId]) -> Vec<SiId> {
        let mut out = Vec::new();
        for &su in sus {
            let sg = self.model.sus[su.index()].sg;
            for &si in &self.model.sgs[sg.index()].sis {
                let held = self.sis[si.index()]
                    .assignments
                    .iter()
                    .any(|a| a.su == su && a.ha == HaState::Active);
                if held && !out.contains(&si) {
                    out.push(si);
                }
            }
        }
        out
    }
}
