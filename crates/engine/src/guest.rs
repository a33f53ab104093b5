//! Nested clusters: a node that is a VM's guest (`Node::vm`) lives and dies with that VM.
//!
//! The VM is a component of some SU on another node; its guest runs a nines agent that joins
//! as the node. The engine ties the two layers together so that one fault shows both
//! reactions, and so that the fencing rule holds without any fence command:
//!
//! * the VM stops being instantiated (it failed, is restarted, terminated, or its host went
//!   down): the guest's work is **held** (nothing it held moves yet) and the VM's fault is
//!   extended with the guest's SIs, so its outage lasts until they are served elsewhere and
//!   its repair until the guest joined again;
//! * the VM is cleaned up (QEMU is gone, so is everything in the guest): the guest is **down**
//!   and its work fails over, as after a completed fence;
//! * the guest is lost (its agent's link died while the VM runs) or a fault in the guest
//!   escalates to a node failover or failfast (OPNFV UC9): the guest is **reset**, which is
//!   the VM's configured recovery under the VM's own escalation, so repeated VM resets climb
//!   to the VM's SU and then to its host.
//!
//! A guest can only be up while its VM is instantiating or instantiated; its join is ignored
//! otherwise.

use nines_model::{CompId, NodeId};

use crate::action::{Event, FaultId, RecoveryStep};
use crate::states::{OperState, Presence};
use crate::Engine;

impl Engine {
    /// A component's presence changed from `old` to `new`: when it is a VM with a guest node,
    /// the guest follows.
    pub(crate) fn guest_follows(&mut self, comp: CompId, old: Presence, new: Presence) {
        let Some(node) = self.model.comps[comp.index()].guest else {
            return;
        };
        match new {
            Presence::Uninstantiated | Presence::InstantiationFailed => self.guest_down(node),
            Presence::Terminating | Presence::Restarting
                if old == Presence::Instantiated || old == Presence::Instantiating =>
            {
                self.hold_guest(node, None)
            }
            // The VM could not be cleaned up, so it may still run its guest: only isolating
            // its host ends that (AMF's node failfast on a termination failure).
            Presence::TerminationFailed => {
                self.hold_guest(node, None);
                self.isolate_host_of(comp);
            }
            _ => {}
        }
    }

    /// Fences the node that runs `vm` (resets it, when that node is itself a guest), as a node
    /// fault of its own: everything on it loses its work.
    fn isolate_host_of(&mut self, vm: CompId) {
        let host = self.su_host(self.model.comps[vm.index()].su);
        let n = &self.nodes[host.index()];
        if !n.up || n.fencing {
            return;
        }
        let sus = self.sus_on(host);
        let fault = self.open_node_fault(host, &sus);
        if self.model.nodes[host.index()].vm.is_some() {
            self.reset_guest(host, fault);
        } else {
            self.fence(host);
        }
    }

    /// A node went down: the guests of its VMs are down too, also those of a VM whose cleanup
    /// failed (its presence does not change, but nothing runs on a node that is down).
    pub(crate) fn guests_of_node_down(&mut self, node: NodeId) {
        let m = self.model.clone();
        for su in self.sus_on(node) {
            for &comp in &m.sus[su.index()].comps {
                if let Some(guest) = m.comps[comp.index()].guest {
                    self.guest_down(guest);
                }
            }
        }
    }

    /// Whether a guest node may join now: its VM must be (becoming) instantiated.
    pub(crate) fn guest_may_join(&self, node: NodeId) -> bool {
        match self.model.nodes[node.index()].vm {
            None => true,
            Some(vm) => matches!(
                self.comps[vm.index()].presence,
                Presence::Instantiating | Presence::Instantiated
            ),
        }
    }

    /// At start, a guest whose VM is not running is down (it has not joined).
    pub(crate) fn guests_down_at_start(&mut self) {
        for n in 0..self.nodes.len() {
            let node = NodeId(n as u32);
            if self.nodes[n].up && self.model.nodes[n].vm.is_some() && !self.guest_may_join(node) {
                self.nodes[n].up = false;
                self.record(Event::Node { node, up: false });
            }
        }
    }

    /// Holds the guest's work in place until its VM is known to be gone, and ties the guest to
    /// the fault that stops the VM (`fault`, or the one found by [`Self::cause_of`]).
    fn hold_guest(&mut self, node: NodeId, fault: Option<FaultId>) {
        let n = &self.nodes[node.index()];
        if !n.up || n.fencing {
            return;
        }
        let Some(vm) = self.model.nodes[node.index()].vm else {
            return;
        };
        let sus = self.sus_on(node);
        let affected = self.active_sis_of(&sus);
        let fault = match fault.or_else(|| self.cause_of(vm)) {
            Some(f) => f,
            None => self.open_node_fault(node, &sus),
        };
        if let Some(f) = self.faults.iter_mut().find(|f| f.id == fault) {
            for si in &affected {
                if !f.affected.contains(si) {
                    f.affected.push(*si);
                }
            }
            if f.node.is_none() {
                f.node = Some(node);
            }
        }
        self.record(Event::GuestHeld {
            fault,
            node,
            vm,
            affected,
        });
        self.hold_node(node);
    }

    /// The open fault that is stopping `vm`: the newest one whose faulty SUs include the VM's,
    /// else the newest one opened in this very step (a node failover that takes the VM's SU
    /// with the rest of its host).
    fn cause_of(&self, vm: CompId) -> Option<FaultId> {
        let su = self.model.comps[vm.index()].su;
        let open = || self.faults.iter().rev().filter(|f| !f.repaired);
        open()
            .find(|f| f.faulty.contains(&su))
            .or_else(|| open().find(|f| f.at == self.now))
            .map(|f| f.id)
    }

    /// The guest's VM is gone: so is the guest, and its work fails over.
    fn guest_down(&mut self, node: NodeId) {
        if !self.nodes[node.index()].up {
            return;
        }
        self.hold_guest(node, None);
        self.on_node_down(node, false);
    }

    /// The guest must be isolated (it was lost, or a fault in it escalated to its node): its
    /// work is held and its VM recovered under the VM's own escalation. When the VM is already
    /// stopping (or its host is being fenced), that stop takes the guest down.
    pub(crate) fn reset_guest(&mut self, node: NodeId, fault: FaultId) {
        let Some(vm) = self.model.nodes[node.index()].vm else {
            return;
        };
        self.hold_guest(node, Some(fault));
        let su = self.model.comps[vm.index()].su;
        let host = self.su_host(su);
        let c = &self.comps[vm.index()];
        let running = c.presence == Presence::Instantiated
            && c.awaiting.is_none()
            && self.sus[su.index()].oper == OperState::Enabled
            && self.nodes[host.index()].up
            && !self.nodes[host.index()].fencing;
        if running {
            let requested = RecoveryStep::from_recovery(self.model.comps[vm.index()].recovery);
            let step = self.escalate(fault, su, requested);
            self.record(Event::GuestReset {
                fault,
                node,
                vm,
                recovery: step,
            });
            let scope = self.scope_of(step, vm);
            self.carry_out(fault, step, vm, &scope);
        } else if c.awaiting.is_none()
            && matches!(
                c.presence,
                Presence::Uninstantiated | Presence::InstantiationFailed
            )
        {
            self.guest_down(node);
        }
    }
}
