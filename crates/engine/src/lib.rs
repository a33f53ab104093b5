//! The availability engine of nines: a pure, deterministic state machine.
//!
//! [`Engine::handle`] takes one [`Input`] (a fault or a fact, with the instant it happened) and
//! returns the [`Action`]s the world must carry out. There is no I/O, no clock, no thread and no
//! randomness here: drivers (the node agent, the director, the simulator) own all of that. The
//! same input sequence therefore always yields the same actions, which is what lets the
//! simulator replay a failing seed exactly.

mod action;
mod admin;
mod escalation;
mod fault;
mod guest;
mod input;
mod lifecycle;
mod metrics;
mod migration;
mod reconcile;
mod redundancy;
mod resume;
mod runtime;
mod states;
mod time;

pub use action::*;
pub use admin::restore_ops;
pub use input::*;
pub use migration::GUEST_RELINK;
pub use resume::resume_input;
pub use states::*;
pub use time::*;

use std::sync::Arc;

use nines_model::{CompId, EntityRef, Model, NodeId, SgId, SiId, SuId};

use crate::metrics::OpenFault;
use crate::runtime::{CompRt, NodeRt, SiRt, SuRt};

/// One SU's share of an SI, as the engine currently sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AssignmentView {
    /// The SU holding it.
    pub su: SuId,
    /// The HA state it holds (or is being asked to take).
    pub ha_state: HaState,
    /// Whether every component has confirmed that HA state.
    pub confirmed: bool,
}

/// The engine: runtime state for every entity of one [`Model`]. Cloning it forks the whole
/// runtime state, which the simulator and benchmarks use to replay from a known point.
#[derive(Clone)]
pub struct Engine {
    model: Arc<Model>,
    /// `now` of the input being handled.
    now: Instant,
    /// Actions produced by the input being handled.
    out: Vec<Action>,
    started: bool,
    cluster_admin: AdminState,
    nodes: Vec<NodeRt>,
    apps_admin: Vec<AdminState>,
    sgs_admin: Vec<AdminState>,
    sus: Vec<SuRt>,
    comps: Vec<CompRt>,
    sis: Vec<SiRt>,
    /// Position of each SU in its SG's rank-ordered `sus`.
    su_pos: Vec<usize>,
    /// For each SI, the SIs that depend on it.
    dependents: Vec<Vec<SiId>>,
    /// SGs whose assignments must be reconsidered at the end of this step.
    dirty: Vec<bool>,
    dirty_list: Vec<SgId>,
    faults: Vec<OpenFault>,
    next_fault: u64,
    /// Entities shutting down, checked for completion at the end of each step.
    shutting_down: Vec<EntityRef>,
    /// SGs that have not made their first assignment yet: they wait until no SU is still in
    /// its first instantiation, so ranks (not process start-up races) decide who is active.
    sg_starting: Vec<bool>,
    /// SUs whose auto-repair waits for the failover of their work to be confirmed.
    deferred_repairs: Vec<SuId>,
}

impl Engine {
    /// A new engine for the same model, every entity uninstantiated: what a driver that
    /// restarts builds before it resumes ([`Input::Resume`]).
    pub fn restarted(&self) -> Engine {
        Engine::new(self.model.clone())
    }

    /// An engine for `model`, with every entity uninstantiated. Send [`Input::Start`] first.
    pub fn new(model: Arc<Model>) -> Engine {
        let m = &*model;
        let mut su_pos = vec![0; m.sus.len()];
        for sg in &m.sgs {
            for (p, su) in sg.sus.iter().enumerate() {
                su_pos[su.index()] = p;
            }
        }
        let mut dependents = vec![Vec::new(); m.sis.len()];
        for (i, si) in m.sis.iter().enumerate() {
            for d in &si.depends_on {
                dependents[d.sponsor.index()].push(SiId(i as u32));
            }
        }
        Engine {
            now: Instant::ZERO,
            out: Vec::new(),
            started: false,
            cluster_admin: AdminState::Unlocked,
            nodes: m
                .nodes
                .iter()
                .map(|_| NodeRt {
                    admin: AdminState::Unlocked,
                    up: true,
                    fencing: false,
                    su_failovers: Vec::new(),
                    relinking: None,
                    relink_gen: 0,
                })
                .collect(),
            apps_admin: vec![AdminState::Unlocked; m.apps.len()],
            sgs_admin: vec![AdminState::Unlocked; m.sgs.len()],
            sus: m
                .sus
                .iter()
                .map(|su| SuRt {
                    admin: if su.locked_instantiation {
                        AdminState::LockedInstantiation
                    } else {
                        AdminState::Unlocked
                    },
                    oper: OperState::Enabled,
                    auto_repair: false,
                    comp_restarts: Vec::new(),
                    su_restarts: Vec::new(),
                    readiness: Readiness::OutOfService,
                    host: su.node,
                    migration: None,
                    migrated_at: None,
                })
                .collect(),
            comps: m.comps.iter().map(|_| CompRt::new()).collect(),
            sis: m
                .sis
                .iter()
                .map(|_| SiRt {
                    admin: AdminState::Unlocked,
                    assignments: Vec::new(),
                    state: SiAssignmentState::Unassigned,
                    prefer: None,
                    fenced_on: None,
                    tolerance_running: false,
                    tolerance_expired: false,
                    tolerance_gen: 0,
                    was_serving: false,
                })
                .collect(),
            su_pos,
            dependents,
            dirty: vec![false; m.sgs.len()],
            dirty_list: Vec::new(),
            faults: Vec::new(),
            next_fault: 1,
            shutting_down: Vec::new(),
            sg_starting: vec![true; m.sgs.len()],
            deferred_repairs: Vec::new(),
            model,
        }
    }

    /// The model this engine runs.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Feeds one input that happened at `now`; returns what the world must do.
    ///
    /// `now` should not go backwards; if it does, the engine keeps using the latest instant it
    /// saw, so windows and metrics never run backwards either.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        self.now = self.now.max(now);
        match input {
            Input::Start => self.start(),
            Input::Resume {
                running,
                held,
                moved,
            } => self.resume(&running, &held, &moved),
            Input::CommandDone {
                comp,
                command,
                outcome,
            } => self.on_command_done(comp, command, outcome),
            Input::ComponentFailed {
                comp,
                kind,
                recommended,
            } => self.on_component_failed(comp, kind, recommended),
            Input::CsiAssigned {
                comp,
                csi,
                ha_state,
                outcome,
            } => self.on_csi_assigned(comp, csi, ha_state, outcome),
            Input::CsiRemoved { comp, csi, outcome } => self.on_csi_removed(comp, csi, outcome),
            Input::QuiescingComplete { comp, csi } => self.on_quiescing_complete(comp, csi),
            Input::NodeDown { node } => self.on_node_down(node, true),
            Input::NodeLost { node } => self.on_node_lost(node),
            Input::NodeUp { node } => self.on_node_up(node),
            Input::NodeRelinked { node } => {
                if node.index() < self.nodes.len() {
                    self.guest_relinked(node);
                }
            }
            Input::FenceDone { node, outcome } => self.on_fence_done(node, outcome),
            Input::MigrationPrepared { comp, port } => self.on_migration_prepared(comp, port),
            Input::MigrationSent { comp, outcome } => self.on_migration_sent(comp, outcome),
            Input::MigrationFinished { comp, outcome } => self.on_migration_finished(comp, outcome),
            Input::TimerFired { timer } => self.on_timer(timer),
            Input::Admin {
                request,
                op,
                target,
            } => self.on_admin(request, op, target),
        }
        self.settle();
        std::mem::take(&mut self.out)
    }

    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        self.guests_down_at_start();
        for su in 0..self.sus.len() {
            self.converge_su(SuId(su as u32));
        }
        for sg in 0..self.sgs_admin.len() {
            self.mark_dirty(SgId(sg as u32));
        }
    }

    /// Pushes an action stamped with the current instant.
    fn emit(&mut self, kind: ActionKind) {
        self.out.push(Action { at: self.now, kind });
    }

    /// Pushes an event record.
    fn record(&mut self, event: Event) {
        self.emit(ActionKind::Record(event));
    }

    /// Asks for the SG's assignments to be reconsidered at the end of this step.
    fn mark_dirty(&mut self, sg: SgId) {
        if !self.dirty[sg.index()] {
            self.dirty[sg.index()] = true;
            self.dirty_list.push(sg);
        }
    }

    /// Current assignments of an SI.
    pub fn assignments(&self, si: SiId) -> Vec<AssignmentView> {
        self.sis[si.index()]
            .assignments
            .iter()
            .map(|a| AssignmentView {
                su: a.su,
                ha_state: a.ha,
                confirmed: a.confirmed(),
            })
            .collect()
    }

    /// Whether an SI has its active (and preferred standbys).
    pub fn si_state(&self, si: SiId) -> SiAssignmentState {
        self.sis[si.index()].state
    }

    /// Presence state of a component.
    pub fn comp_presence(&self, comp: CompId) -> Presence {
        self.comps[comp.index()].presence
    }

    /// Presence state of an SU, derived from its components (the least advanced one wins).
    pub fn su_presence(&self, su: SuId) -> Presence {
        let comps = &self.model.sus[su.index()].comps;
        let ps: Vec<Presence> = comps
            .iter()
            .map(|c| self.comps[c.index()].presence)
            .collect();
        for p in [
            Presence::TerminationFailed,
            Presence::InstantiationFailed,
            Presence::Restarting,
            Presence::Terminating,
            Presence::Instantiating,
        ] {
            if ps.contains(&p) {
                return p;
            }
        }
        if !ps.is_empty() && ps.iter().all(|&p| p == Presence::Instantiated) {
            Presence::Instantiated
        } else {
            Presence::Uninstantiated
        }
    }

    /// Operational state of an SU.
    pub fn su_oper(&self, su: SuId) -> OperState {
        self.sus[su.index()].oper
    }

    /// Readiness of an SU.
    pub fn su_readiness(&self, su: SuId) -> Readiness {
        self.readiness(su)
    }

    /// Admin state of an entity that has one (cluster, node, app, SG, SU, SI).
    pub fn admin_state(&self, entity: EntityRef) -> Option<AdminState> {
        match entity {
            EntityRef::Cluster => Some(self.cluster_admin),
            EntityRef::Node(n) => self.nodes.get(n.index()).map(|n| n.admin),
            EntityRef::App(a) => self.apps_admin.get(a.index()).copied(),
            EntityRef::Sg(s) => self.sgs_admin.get(s.index()).copied(),
            EntityRef::Su(s) => self.sus.get(s.index()).map(|s| s.admin),
            EntityRef::Si(s) => self.sis.get(s.index()).map(|s| s.admin),
            EntityRef::Comp(_) | EntityRef::Csi(_) => None,
        }
    }

    /// Whether the engine considers the node up.
    pub fn node_up(&self, node: NodeId) -> bool {
        self.nodes[node.index()].up
    }

    /// Whether the engine asked for the node to be fenced and waits for `FenceDone`.
    pub fn node_fencing(&self, node: NodeId) -> bool {
        self.nodes[node.index()].fencing
    }

    /// Escalation counters of an SU inside their windows: (component restarts, SU restarts).
    pub fn su_escalation(&self, su: SuId) -> (u32, u32) {
        let sg = &self.model.sgs[self.model.sus[su.index()].sg.index()];
        let s = &self.sus[su.index()];
        (
            escalation::count(&s.comp_restarts, sg.comp_restart, self.now),
            escalation::count(&s.su_restarts, sg.su_restart, self.now),
        )
    }

    /// SU failovers counted on a node inside its window.
    pub fn node_escalation(&self, node: NodeId) -> u32 {
        let rule = self.model.nodes[node.index()].su_failover;
        escalation::count(&self.nodes[node.index()].su_failovers, rule, self.now)
    }

    /// Faults whose service recovery or repair has not been seen yet.
    pub fn open_faults(&self) -> usize {
        self.faults.len()
    }
}
