//! Live migration of VM components (seed 004: planned maintenance without an outage).
//!
//! An SU normally runs on its configured node. An SU whose one component is a VM with
//! `vm.migrate` may move: when its node is locked or shut down, the running VM is
//! live-migrated to another node of its SG instead of being stopped, and its SU keeps its
//! assignments (and keeps serving) throughout; with the SG's `fail_back`, it migrates home
//! once its node is unlocked or back. The SU's current node is runtime state
//! ([`Engine::su_host`]); everything that asks "where does this SU run" asks it.
//!
//! A migration is three actions, each answered before the next: `MigrateIn` (the
//! destination starts a QEMU that waits for the state), `MigrateOut` (the source sends the
//! state and stops), `MigrateFinish{commit}` (the destination takes over). Until the source
//! has sent, a failure (either side, a fault of the VM, either node lost) abandons the
//! migration: the waiting QEMU is discarded and the admin operation goes on as it would
//! without migration (the SU stops serving, its SIs switch over). Once sent, the VM lives on
//! the destination; if the destination then fails to take it over, that is a failure of the
//! VM there, recovered as any other.
//!
//! A migration cuts a guest's connections (the source QEMU and its user-mode network end), so
//! the guest node of a migrating VM loses its link: that loss is not a fault. The guest stays
//! up and **relinking** for [`GUEST_RELINK`]; its agent joins again keeping what it runs.
//! Only a guest that has not joined by then is lost after all (and its VM reset).

use std::time::Duration;

use nines_model::{CompId, NodeId, SuId};

use crate::action::{ActionKind, Event};
use crate::input::{FaultKind, Outcome, Timer};
use crate::runtime::{Migration, MigrationStep};
use crate::states::{AdminState, OperState, Presence};
use crate::Engine;

/// How long a guest whose link dropped during its VM's migration may take to join again.
/// The link notices a dead peer in 200 ms and the agent reconnects at once; this leaves room
/// for a loaded host.
pub const GUEST_RELINK: Duration = Duration::from_secs(5);

/// A guest link lost this soon after its VM migrated is taken for the migration's cut too:
/// the link may see the old connection end a little after the destination took over.
const RELINK_AFTER: Duration = Duration::from_secs(2);

impl Engine {
    /// The node an SU runs on now.
    pub fn su_host(&self, su: SuId) -> NodeId {
        self.sus[su.index()].host
    }

    /// Whether a guest node may join again keeping what it runs (its link was cut by its
    /// VM's migration).
    pub fn node_relinking(&self, node: NodeId) -> bool {
        self.nodes
            .get(node.index())
            .is_some_and(|n| n.relinking.is_some())
    }

    /// Whether an SU's VM is being migrated.
    pub fn su_migrating(&self, su: SuId) -> bool {
        self.sus[su.index()].migration.is_some()
    }

    /// The SUs running on `node` now, in model order.
    pub(crate) fn sus_on(&self, node: NodeId) -> Vec<SuId> {
        (0..self.sus.len() as u32)
            .map(SuId)
            .filter(|&su| self.sus[su.index()].host == node)
            .collect()
    }

    /// The VM to migrate, if the SU can be migrated now: one component, a VM that asks for
    /// it, running and not being recovered, its SU enabled, no migration under way.
    fn migratable(&self, su: SuId) -> Option<CompId> {
        let m = &self.model;
        let [comp] = m.sus[su.index()].comps[..] else {
            return None;
        };
        let wants = m.comps[comp.index()].vm.as_ref().is_some_and(|v| v.migrate);
        let c = &self.comps[comp.index()];
        let s = &self.sus[su.index()];
        let host = &self.nodes[s.host.index()];
        (wants
            && s.migration.is_none()
            && s.oper == OperState::Enabled
            && c.presence == Presence::Instantiated
            && c.awaiting.is_none()
            && !c.restarting
            && !c.needs_reassign
            && host.up
            && !host.fencing)
            .then_some(comp)
    }

    /// Whether `node` can take a migrated VM: up, not being fenced, unlocked.
    fn takes_vms(&self, node: NodeId) -> bool {
        let n = &self.nodes[node.index()];
        n.up && !n.fencing && n.relinking.is_none() && n.admin == AdminState::Unlocked
    }

    /// Where to migrate `su`'s VM: its configured node if that can take it, else the node of
    /// its SG that runs the fewest of the SG's SUs (model order breaks ties).
    fn migration_target(&self, su: SuId) -> Option<NodeId> {
        let m = &self.model;
        let from = self.su_host(su);
        let home = m.sus[su.index()].node;
        if home != from && self.takes_vms(home) {
            return Some(home);
        }
        let sg = m.sus[su.index()].sg;
        let load = |n: NodeId| {
            m.sgs[sg.index()]
                .sus
                .iter()
                .filter(|&&s| self.su_host(s) == n)
                .count()
        };
        let mut best: Option<(usize, NodeId)> = None;
        for n in m.sg_nodes(sg) {
            if n == from || !self.takes_vms(n) {
                continue;
            }
            let l = load(n);
            if best.is_none_or(|(bl, _)| l < bl) {
                best = Some((l, n));
            }
        }
        best.map(|(_, n)| n)
    }

    /// The node is locked or shutting down: migrate away every VM on it that asks for it.
    pub(crate) fn migrate_away(&mut self, node: NodeId) {
        for su in self.sus_on(node) {
            let Some(comp) = self.migratable(su) else {
                continue;
            };
            match self.migration_target(su) {
                Some(to) => self.start_migration(su, comp, to),
                None => self.record(Event::MigrationFailed {
                    su,
                    comp,
                    from: node,
                    to: None,
                    reason: "no other node of its SG is up and unlocked",
                }),
            }
        }
    }

    /// `node` can take VMs again (unlocked, or back up): VMs of SGs with `fail_back` that
    /// were migrated away from it go home.
    pub(crate) fn fail_back_vms(&mut self, node: NodeId) {
        if !self.takes_vms(node) {
            return;
        }
        for s in 0..self.sus.len() {
            let su = SuId(s as u32);
            let m = &self.model;
            let sg = &m.sgs[m.sus[s].sg.index()];
            if m.sus[s].node != node || self.su_host(su) == node || !sg.fail_back {
                continue;
            }
            if let Some(comp) = self.migratable(su) {
                self.start_migration(su, comp, node);
            }
        }
    }

    fn start_migration(&mut self, su: SuId, comp: CompId, to: NodeId) {
        let from = self.su_host(su);
        self.sus[su.index()].migration = Some(Migration {
            comp,
            from,
            to,
            step: MigrationStep::Preparing,
            started: self.now,
        });
        self.record(Event::MigrationStarted { su, comp, from, to });
        self.emit(ActionKind::MigrateIn { comp, to });
    }

    /// The migration of `comp`'s SU, if it is at `step`.
    fn migration_at(&self, comp: CompId, step: MigrationStep) -> Option<(SuId, Migration)> {
        let su = self.model.comps.get(comp.index())?.su;
        let mig = self.sus[su.index()].migration.clone()?;
        (mig.comp == comp && mig.step == step).then_some((su, mig))
    }

    pub(crate) fn on_migration_prepared(&mut self, comp: CompId, port: Option<u16>) {
        let Some((su, mig)) = self.migration_at(comp, MigrationStep::Preparing) else {
            return;
        };
        match port {
            Some(port) => {
                self.set_step(su, MigrationStep::Sending);
                self.emit(ActionKind::MigrateOut {
                    comp,
                    to: mig.to,
                    port,
                });
            }
            None => self.abandon_migration(su, "the destination could not start the VM", false),
        }
    }

    pub(crate) fn on_migration_sent(&mut self, comp: CompId, outcome: Outcome) {
        let Some((su, mig)) = self.migration_at(comp, MigrationStep::Sending) else {
            return;
        };
        if outcome != Outcome::Ok {
            self.abandon_migration(su, "the source could not send the VM's state", false);
            return;
        }
        // From here on the VM lives on the destination.
        self.sus[su.index()].host = mig.to;
        self.set_step(su, MigrationStep::Finishing);
        self.emit(ActionKind::MigrateFinish {
            comp,
            to: mig.to,
            commit: true,
        });
    }

    pub(crate) fn on_migration_finished(&mut self, comp: CompId, outcome: Outcome) {
        let Some((su, mig)) = self.migration_at(comp, MigrationStep::Finishing) else {
            return;
        };
        self.sus[su.index()].migration = None;
        let sg = self.model.sus[su.index()].sg;
        self.mark_dirty(sg);
        if outcome == Outcome::Ok {
            self.sus[su.index()].migrated_at = Some(self.now);
            self.record(Event::Migrated {
                su,
                comp,
                from: mig.from,
                to: mig.to,
                took: self.now.saturating_since(mig.started),
            });
            self.converge_su(su);
        } else {
            self.record(Event::MigrationFailed {
                su,
                comp,
                from: mig.from,
                to: Some(mig.to),
                reason: "the destination lost the VM while taking it over",
            });
            self.on_component_failed(comp, FaultKind::Exited, None);
        }
    }

    fn set_step(&mut self, su: SuId, step: MigrationStep) {
        if let Some(m) = self.sus[su.index()].migration.as_mut() {
            m.step = step;
        }
    }

    /// Ends the SU's migration without moving it (or, once sent, leaves the VM where it is
    /// now): the destination's waiting QEMU is discarded, and the SU is what its node's
    /// admin state makes it. `lost`: the VM may be gone (the state was being sent when the
    /// destination went down, so the source may have quit): it is recovered as a failed
    /// component, which cleans up whatever is left of it first.
    pub(crate) fn abandon_migration(&mut self, su: SuId, reason: &'static str, lost: bool) {
        let Some(mig) = self.sus[su.index()].migration.take() else {
            return;
        };
        if mig.step != MigrationStep::Finishing {
            self.emit(ActionKind::MigrateFinish {
                comp: mig.comp,
                to: mig.to,
                commit: false,
            });
        }
        self.record(Event::MigrationFailed {
            su,
            comp: mig.comp,
            from: mig.from,
            to: Some(mig.to),
            reason,
        });
        self.converge_su(su);
        if lost {
            self.on_component_failed(mig.comp, FaultKind::Exited, None);
        }
    }

    /// `node` is going down or being isolated: migrations from or to it end (a source that
    /// already sent no longer matters; its node's own failure takes whatever ran there).
    pub(crate) fn abandon_migrations_at(&mut self, node: NodeId) {
        for s in 0..self.sus.len() {
            let su = SuId(s as u32);
            let Some(mig) = &self.sus[s].migration else {
                continue;
            };
            let sent = mig.step == MigrationStep::Finishing;
            let lost = mig.step == MigrationStep::Sending && mig.to == node;
            if mig.to == node || (mig.from == node && !sent) {
                self.abandon_migration(su, "a node of the migration went down", lost);
            }
        }
    }

    /// A guest's link was lost: if its VM is migrating (or just migrated), the guest relinks
    /// instead of being lost. Returns whether it does.
    pub(crate) fn guest_relinks(&mut self, node: NodeId) -> bool {
        let Some(vm) = self.model.nodes[node.index()].vm else {
            return false;
        };
        let su = self.model.comps[vm.index()].su;
        let s = &self.sus[su.index()];
        let recent = s
            .migrated_at
            .is_some_and(|t| self.now.saturating_since(t) <= RELINK_AFTER);
        if self.nodes[node.index()].relinking.is_some() || !(s.migration.is_some() || recent) {
            return false;
        }
        let n = &mut self.nodes[node.index()];
        n.relink_gen += 1;
        let generation = n.relink_gen;
        n.relinking = Some(generation);
        self.record(Event::GuestRelinking { node });
        self.emit(ActionKind::StartTimer {
            timer: Timer::GuestRelink { node, generation },
            at: self.now + GUEST_RELINK,
        });
        true
    }

    /// The relinking guest joined again. Returns whether it was relinking.
    pub(crate) fn guest_relinked(&mut self, node: NodeId) -> bool {
        if self.nodes[node.index()].relinking.take().is_none() {
            return false;
        }
        self.record(Event::GuestRelinked { node });
        true
    }

    /// The relink time is up: a guest still not joined is lost.
    pub(crate) fn on_relink_timer(&mut self, node: NodeId, generation: u32) {
        let Some(n) = self.nodes.get_mut(node.index()) else {
            return;
        };
        if n.relinking != Some(generation) {
            return;
        }
        n.relinking = None;
        self.node_lost(node);
    }
}
