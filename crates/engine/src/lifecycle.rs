//! Component and SU life cycle: bringing SUs to the state they should be in, command results,
//! instantiation retries (immediate, then delayed), taking a failed SU out and repairing it, and
//! node membership changes.

use nines_model::{CompId, EntityRef, NodeId, SuId};

use crate::action::{ActionKind, Event, FaultId, RecoveryStep};
use crate::input::{Command, Outcome, Timer};
use crate::states::{AdminState, HaState, OperState, Presence, Readiness};
use crate::Engine;

impl Engine {
    /// Admin states that bear on an SU: its own and every ancestor's.
    fn admin_chain(&self, su: SuId) -> [AdminState; 5] {
        let m = &self.model.sus[su.index()];
        let sg = &self.model.sgs[m.sg.index()];
        [
            self.sus[su.index()].admin,
            self.sgs_admin[m.sg.index()],
            self.apps_admin[sg.app.index()],
            // A migrating SU keeps serving while its node is locked: it is leaving it.
            if self.sus[su.index()].migration.is_some() {
                AdminState::Unlocked
            } else {
                self.nodes[self.su_host(su).index()].admin
            },
            self.cluster_admin,
        ]
    }

    /// Whether the SU's components should be running.
    pub(crate) fn should_run(&self, su: SuId) -> bool {
        let node = &self.nodes[self.su_host(su).index()];
        self.started
            && node.up
            && !node.fencing
            && self.sus[su.index()].oper == OperState::Enabled
            && !self
                .admin_chain(su)
                .contains(&AdminState::LockedInstantiation)
    }

    /// Readiness, derived from node, admin, operational and presence states. A component being
    /// restarted in place keeps its SU in service: the SU keeps its assignments through it.
    pub(crate) fn readiness(&self, su: SuId) -> Readiness {
        let m = &self.model.sus[su.index()];
        let node = &self.nodes[self.su_host(su).index()];
        if !node.up || node.fencing || self.sus[su.index()].oper == OperState::Disabled {
            return Readiness::OutOfService;
        }
        let running = m.comps.iter().all(|c| {
            let c = &self.comps[c.index()];
            c.presence == Presence::Instantiated || c.restarting
        });
        if !running {
            return Readiness::OutOfService;
        }
        let chain = self.admin_chain(su);
        if chain
            .iter()
            .any(|a| matches!(a, AdminState::Locked | AdminState::LockedInstantiation))
        {
            Readiness::OutOfService
        } else if chain.contains(&AdminState::ShuttingDown) {
            Readiness::Stopping
        } else {
            Readiness::InService
        }
    }

    /// Whether the SU is in the middle of an in-place restart (its work is not served).
    pub(crate) fn busy(&self, su: SuId) -> bool {
        self.model.sus[su.index()].comps.iter().any(|c| {
            let c = &self.comps[c.index()];
            c.restarting || c.needs_reassign
        })
    }

    pub(crate) fn set_presence(&mut self, comp: CompId, presence: Presence) {
        let old = self.comps[comp.index()].presence;
        if old != presence {
            self.comps[comp.index()].presence = presence;
            self.record(Event::Presence { comp, presence });
            self.guest_follows(comp, old, presence);
        }
    }

    pub(crate) fn set_oper(&mut self, su: SuId, oper: OperState) {
        if self.sus[su.index()].oper != oper {
            self.sus[su.index()].oper = oper;
            self.record(Event::Oper { su, oper });
        }
    }

    fn send(&mut self, comp: CompId, command: Command) {
        self.comps[comp.index()].awaiting = Some(command);
        let kind = match command {
            Command::Instantiate => ActionKind::Instantiate {
                comp,
                urgent: self.start_is_urgent(comp),
            },
            Command::Terminate => ActionKind::Terminate { comp },
            Command::Cleanup => ActionKind::Cleanup { comp },
        };
        self.emit(kind);
    }

    /// Whether work waits for `comp` to start: an SI of its SG that should be served (unlocked)
    /// and is not. A repair after a failover comes once the failover is confirmed (see
    /// [`maybe_auto_repair`](Self::maybe_auto_repair)), so it is not urgent unless nobody
    /// could take the work.
    fn start_is_urgent(&self, comp: CompId) -> bool {
        let su = self.model.comps[comp.index()].su;
        let sg = self.model.sus[su.index()].sg;
        self.model.sgs[sg.index()]
            .sis
            .iter()
            .any(|&si| self.unserved(si))
    }

    /// Issues the commands that move the SU's components towards running or stopped.
    pub(crate) fn converge_su(&mut self, su: SuId) {
        let run = self.should_run(su);
        let m = self.model.clone();
        for &comp in &m.sus[su.index()].comps {
            let c = &self.comps[comp.index()];
            if c.awaiting.is_some() || c.waiting_retry {
                continue;
            }
            match c.presence {
                Presence::Uninstantiated if run => {
                    self.set_presence(comp, Presence::Instantiating);
                    self.send(comp, Command::Instantiate);
                }
                Presence::Uninstantiated if !run => {
                    // A restart cut short (the SU was locked for instantiation, or its node
                    // stopped it): there is nothing left to restart or give CSIs back to.
                    let c = &mut self.comps[comp.index()];
                    c.restarting = false;
                    c.needs_reassign = false;
                }
                Presence::Instantiated if !run => {
                    self.comps[comp.index()].restarting = false;
                    self.set_presence(comp, Presence::Terminating);
                    self.send(comp, Command::Terminate);
                }
                _ => {}
            }
        }
        self.mark_dirty(m.sus[su.index()].sg);
    }

    pub(crate) fn on_command_done(&mut self, comp: CompId, command: Command, outcome: Outcome) {
        let Some(c) = self.comps.get(comp.index()) else {
            return;
        };
        if c.awaiting != Some(command) {
            return; // stale: a result for a command we no longer wait for
        }
        self.comps[comp.index()].awaiting = None;
        let su = self.model.comps[comp.index()].su;
        match (command, outcome) {
            (Command::Instantiate, Outcome::Ok) => {
                let c = &mut self.comps[comp.index()];
                c.inst_failures = 0;
                c.retrying = false;
                c.restarting = false;
                self.set_presence(comp, Presence::Instantiated);
                if self.comps[comp.index()].needs_reassign {
                    self.reassign_comp(comp);
                }
            }
            (Command::Instantiate, _) => {
                let c = &mut self.comps[comp.index()];
                c.inst_failures += 1;
                c.retrying = true;
                self.send(comp, Command::Cleanup);
            }
            (Command::Terminate, Outcome::Ok) => {
                self.set_presence(comp, Presence::Uninstantiated);
            }
            (Command::Terminate, _) => {
                self.send(comp, Command::Cleanup);
            }
            (Command::Cleanup, Outcome::Ok) => {
                self.set_presence(comp, Presence::Uninstantiated);
                if self.comps[comp.index()].retrying {
                    self.schedule_retry(comp);
                }
                self.maybe_auto_repair(su);
            }
            (Command::Cleanup, _) => {
                let c = &mut self.comps[comp.index()];
                c.restarting = false;
                c.needs_reassign = false;
                c.retrying = false;
                self.set_presence(comp, Presence::TerminationFailed);
                self.take_out(su, false);
            }
        }
        self.converge_su(su);
    }

    /// After a failed instantiation was cleaned up: retry now, retry later, or give up.
    fn schedule_retry(&mut self, comp: CompId) {
        let policy = self.model.comps[comp.index()].instantiation;
        let failures = self.comps[comp.index()].inst_failures;
        let su = self.model.comps[comp.index()].su;
        if failures <= policy.retries {
            // Uninstantiated: converge_su instantiates again right away.
        } else if failures <= policy.retries.saturating_add(policy.delayed_retries) {
            let c = &mut self.comps[comp.index()];
            c.waiting_retry = true;
            c.retry_gen = c.retry_gen.wrapping_add(1);
            let timer = Timer::InstantiateRetry {
                comp,
                generation: c.retry_gen,
            };
            let at = self.now + policy.retry_delay;
            self.emit(ActionKind::StartTimer { timer, at });
        } else {
            let c = &mut self.comps[comp.index()];
            c.retrying = false;
            c.restarting = false;
            c.needs_reassign = false;
            self.set_presence(comp, Presence::InstantiationFailed);
            self.take_out(su, false);
        }
    }

    pub(crate) fn on_retry_timer(&mut self, comp: CompId, generation: u32) {
        let Some(c) = self.comps.get_mut(comp.index()) else {
            return;
        };
        if !c.waiting_retry || c.retry_gen != generation {
            return;
        }
        c.waiting_retry = false;
        let su = self.model.comps[comp.index()].su;
        self.converge_su(su);
    }

    /// Disables an SU: its assignments are dropped at once (isolation makes them void) and every
    /// component still running is cleaned up. With `repairable`, the SU is re-enabled when the
    /// cleanup is done if its SG has auto-repair; otherwise it waits for `repaired`.
    pub(crate) fn take_out(&mut self, su: SuId, repairable: bool) {
        let sg = self.model.sus[su.index()].sg;
        self.sus[su.index()].auto_repair = repairable && self.model.sgs[sg.index()].auto_repair;
        self.set_oper(su, OperState::Disabled);
        self.drop_assignments(su);
        let m = self.model.clone();
        for &comp in &m.sus[su.index()].comps {
            let c = &mut self.comps[comp.index()];
            c.restarting = false;
            c.needs_reassign = false;
            c.waiting_retry = false;
            c.retry_gen = c.retry_gen.wrapping_add(1);
            let presence = c.presence;
            let cleaning = c.awaiting == Some(Command::Cleanup);
            if c.awaiting.is_none() && presence == Presence::Uninstantiated {
                continue;
            }
            if matches!(
                presence,
                Presence::InstantiationFailed | Presence::TerminationFailed
            ) || cleaning
            {
                continue;
            }
            c.retrying = false;
            self.set_presence(comp, Presence::Terminating);
            self.send(comp, Command::Cleanup);
        }
        self.maybe_auto_repair(su);
        self.mark_dirty(sg);
    }

    /// Re-enables an auto-repairable SU once all its components are cleaned up and the
    /// failover of its work is confirmed: recovery comes before repair, so starting the
    /// replacement process never competes for the CPU with the promotion that ends the outage.
    /// When nothing is being promoted (no capacity elsewhere) the repair goes ahead at once.
    pub(crate) fn maybe_auto_repair(&mut self, su: SuId) {
        let s = &self.sus[su.index()];
        if s.oper != OperState::Disabled || !s.auto_repair {
            return;
        }
        if self.promotion_in_flight_for(su) {
            if !self.deferred_repairs.contains(&su) {
                self.deferred_repairs.push(su);
            }
            return;
        }
        let clean = self.model.sus[su.index()].comps.iter().all(|c| {
            let c = &self.comps[c.index()];
            c.presence == Presence::Uninstantiated && c.awaiting.is_none()
        });
        if clean {
            self.sus[su.index()].auto_repair = false;
            self.set_oper(su, OperState::Enabled);
            self.converge_su(su);
        }
    }

    /// Whether an open fault of `su` still waits for an active assignment elsewhere to be
    /// confirmed.
    fn promotion_in_flight_for(&self, su: SuId) -> bool {
        self.faults.iter().any(|f| {
            !f.recovered
                && f.faulty.contains(&su)
                && f.affected.iter().any(|si| {
                    self.sis[si.index()]
                        .assignments
                        .iter()
                        .any(|a| a.su != su && a.ha == HaState::Active && !a.confirmed())
                })
        })
    }

    /// Retries deferred repairs; returns whether any of them went ahead.
    pub(crate) fn retry_deferred_repairs(&mut self) -> bool {
        if self.deferred_repairs.is_empty() {
            return false;
        }
        let waiting = std::mem::take(&mut self.deferred_repairs);
        let before = waiting.len();
        for su in waiting {
            self.maybe_auto_repair(su);
        }
        self.deferred_repairs.len() < before
    }

    /// Restarts components in place: cleanup, instantiate, then give their CSIs back.
    pub(crate) fn restart_comps(&mut self, comps: &[CompId], graceful: bool) {
        for &comp in comps {
            let su = self.model.comps[comp.index()].su;
            let holds = self.holds_assignments(su);
            let c = &mut self.comps[comp.index()];
            if c.presence != Presence::Instantiated || c.awaiting.is_some() {
                continue;
            }
            c.restarting = true;
            c.needs_reassign = holds;
            self.set_presence(comp, Presence::Restarting);
            self.send(
                comp,
                if graceful {
                    Command::Terminate
                } else {
                    Command::Cleanup
                },
            );
            self.mark_dirty(self.model.sus[su.index()].sg);
        }
    }

    pub(crate) fn holds_assignments(&self, su: SuId) -> bool {
        let sg = self.model.sus[su.index()].sg;
        self.model.sgs[sg.index()]
            .sis
            .iter()
            .any(|si| self.sis[si.index()].find(su).is_some())
    }

    /// The membership layer (or a completed fence) says the node is gone: everything on it is
    /// dead, its assignments are void, and its SIs fail over.
    pub(crate) fn on_node_down(&mut self, node: NodeId, new_fault: bool) {
        let Some(n) = self.nodes.get(node.index()) else {
            return;
        };
        if !n.up {
            return;
        }
        let m = self.model.clone();
        let sus = self.sus_on(node);
        if new_fault {
            self.open_node_fault(node, &sus);
        }
        self.abandon_migrations_at(node);
        let n = &mut self.nodes[node.index()];
        n.up = false;
        n.fencing = false;
        n.relinking = None;
        self.record(Event::Node { node, up: false });
        for &su in &sus {
            self.drop_assignments(su);
            for &comp in &m.sus[su.index()].comps {
                let c = &mut self.comps[comp.index()];
                c.awaiting = None;
                c.restarting = false;
                c.needs_reassign = false;
                c.retrying = false;
                c.waiting_retry = false;
                c.inst_failures = 0;
                c.retry_gen = c.retry_gen.wrapping_add(1);
                if !matches!(
                    c.presence,
                    Presence::InstantiationFailed | Presence::TerminationFailed
                ) {
                    self.set_presence(comp, Presence::Uninstantiated);
                }
            }
            let s = &mut self.sus[su.index()];
            if s.oper == OperState::Disabled && s.auto_repair {
                s.auto_repair = false;
                self.set_oper(su, OperState::Enabled);
            }
            self.mark_dirty(m.sus[su.index()].sg);
        }
        for si in 0..self.sis.len() {
            if self.sis[si].fenced_on == Some(node) {
                self.sis[si].fenced_on = None;
                self.mark_dirty(m.sis[si].sg);
            }
        }
        self.guests_of_node_down(node);
    }

    /// Opens the fault of a lost node: its SUs are the faulty ones, its actives the affected.
    pub(crate) fn open_node_fault(&mut self, node: NodeId, sus: &[SuId]) -> FaultId {
        let affected = self.active_sis_of(sus);
        self.open_fault(
            EntityRef::Node(node),
            None,
            RecoveryStep::NodeFailover,
            affected,
            sus.to_vec(),
            Some(node),
        )
    }

    /// Heartbeats stopped: open the node's fault now, fence, and fail over once fenced.
    pub(crate) fn on_node_lost(&mut self, node: NodeId) {
        let Some(n) = self.nodes.get(node.index()) else {
            return;
        };
        if !n.up || n.fencing || n.relinking.is_some() {
            return; // already down, a fence (with its fault) is under way, or relinking
        }
        if self.guest_relinks(node) {
            return;
        }
        self.node_lost(node);
    }

    /// A node is lost (its link ended and it is not a guest relinking after a migration).
    pub(crate) fn node_lost(&mut self, node: NodeId) {
        let n = &self.nodes[node.index()];
        if !n.up || n.fencing {
            return;
        }
        if !self.guest_may_join(node) {
            // A guest whose VM does not run was never there (a director that starts before
            // the VMs boot): down, without a fault.
            self.nodes[node.index()].up = false;
            self.record(Event::Node { node, up: false });
            return;
        }
        let sus = self.sus_on(node);
        let fault = self.open_node_fault(node, &sus);
        // Nothing is known of what a lost node runs (a driver that restarted may never have
        // heard from it): every SI its SUs could serve waits for the fence, not only those
        // assigned there.
        let m = self.model.clone();
        for &su in &sus {
            for &si in &m.sgs[m.sus[su.index()].sg.index()].sis {
                let rt = &mut self.sis[si.index()];
                if rt.fenced_on.is_none() {
                    rt.fenced_on = Some(node);
                }
                self.mark_dirty(m.sus[su.index()].sg);
            }
        }
        if m.nodes[node.index()].vm.is_some() {
            self.reset_guest(node, fault); // a guest is fenced by resetting its VM
        } else {
            self.fence(node);
        }
    }

    pub(crate) fn on_node_up(&mut self, node: NodeId) {
        let Some(n) = self.nodes.get_mut(node.index()) else {
            return;
        };
        if n.up {
            // A relinking guest that joins afresh lost what it ran: it is lost after all.
            if n.relinking.take().is_some() {
                self.node_lost(node);
            }
            return;
        }
        if !self.guest_may_join(node) {
            return;
        }
        self.nodes[node.index()].up = true;
        self.record(Event::Node { node, up: true });
        for su in self.sus_on(node) {
            self.converge_su(su);
        }
        self.fail_back_vms(node);
    }

    /// Asks for a node to be fenced; its SIs stay put until the fence is done.
    pub(crate) fn fence(&mut self, node: NodeId) {
        let n = &self.nodes[node.index()];
        if !n.up || n.fencing {
            return;
        }
        self.hold_node(node);
        self.emit(ActionKind::Fence { node });
    }

    /// Holds a node's work where it is (its SIs wait, its assignments are void) until the node
    /// is known to be down: the half of fencing that does not depend on how it is done.
    pub(crate) fn hold_node(&mut self, node: NodeId) {
        self.nodes[node.index()].fencing = true;
        self.nodes[node.index()].relinking = None;
        self.abandon_migrations_at(node);
        let m = self.model.clone();
        for su in self.sus_on(node) {
            for si in self.model.sgs[m.sus[su.index()].sg.index()].sis.clone() {
                if self.sis[si.index()].find(su).is_some() {
                    self.sis[si.index()].fenced_on = Some(node);
                }
            }
            self.drop_assignments(su);
            self.mark_dirty(m.sus[su.index()].sg);
        }
    }

    pub(crate) fn on_fence_done(&mut self, node: NodeId, outcome: Outcome) {
        let Some(n) = self.nodes.get(node.index()) else {
            return;
        };
        if !n.fencing {
            return;
        }
        if outcome == Outcome::Ok {
            self.on_node_down(node, false);
        } else {
            // Never fail over without a confirmed fence: ask again.
            self.emit(ActionKind::Fence { node });
        }
    }
}
