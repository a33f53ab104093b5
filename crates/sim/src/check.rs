//! The invariants, as pure functions of the model and a read-only view of the engine's state.
//!
//! They take a [`StateView`] rather than the engine itself so that every checker can be shown a
//! hand-made broken state in a unit test: a checker that has never caught anything proves
//! nothing. Each returns the first problem it sees as a [`Found`], whose message names entities
//! by their paths.

use std::collections::BTreeMap;

use nines_engine::{
    Action, ActionKind, AdminState, AssignmentView, Engine, Event, FaultId, FaultKind, HaState,
    Input, Instant, OperState, Presence, Readiness,
};
use nines_model::{AppId, CompId, EntityRef, Model, NodeId, Redundancy, SgId, SiId, SuId};

/// Invariant 1: an SI of a 2N, N+M, N-Way or no-redundancy SG has at most one active
/// assignment (confirmed or not), and no SU holds two assignments of one SI.
pub const ONE_ACTIVE: &str = "one-active";
/// Invariant 1b, on the world rather than the engine: the components themselves never hold an
/// SI of a 2N, N+M, N-Way or no-redundancy SG active in two SUs at once (what clients would
/// see as split brain), whatever the engine believes, also across driver restarts.
pub const WORLD_ONE_ACTIVE: &str = "world-one-active";
/// Invariant 2: no active or standby assignment on an SU that is out of service, disabled or
/// on a node that is down.
pub const PLACEMENT: &str = "assignment-on-unready-su";
/// Invariant 3: escalation counters never exceed their configured maximum.
pub const ESCALATION: &str = "escalation-bound";
/// Invariant 4a: every `ComponentFailed` is answered, in the same step, by a `FaultDetected`
/// or `FaultIgnored` about that component (or its SU or node).
pub const FAULT_ANSWERED: &str = "fault-answered";
/// Invariant 4b: every `FaultDetected` is followed by exactly one `ServiceRecovered` once its
/// SIs are active again.
pub const FAULT_RECOVERED: &str = "fault-recovered";
/// Invariant 5: when nothing is outstanding, every unlocked SI whose sponsors are active has an
/// active assignment unless no in-service SU of its SG could take it.
pub const SETTLED_ASSIGNED: &str = "settled-si-unassigned";
/// Invariant 5 (companion): when no answer is outstanding, no assignment waits for one.
pub const SETTLED_STUCK: &str = "settled-assignment-unconfirmed";
/// Invariant 5 (companion): when all is quiet nothing is left half done: no quiescing or
/// quiesced assignment, no entity still shutting down, no assignment of a locked SI.
pub const SETTLED_LEFTOVER: &str = "settled-leftover";
/// Invariant 6: every `AdminReply` answers a request that was sent, exactly once.
pub const ADMIN_REPLY: &str = "admin-reply";
/// The engine named an entity that is not in the model (in an action or a query answer).
pub const BAD_OUTPUT: &str = "bad-output";
/// The engine panicked while handling an input.
pub const ENGINE_PANIC: &str = "engine-panic";
/// A guest node (a VM's guest) is isolated through its VM, never with a fence command: the
/// engine must not emit `Fence` for it.
pub const GUEST_FENCED: &str = "guest-fenced";
/// The world never became quiet: the engine keeps producing work without faults.
pub const LIVELOCK: &str = "livelock";

/// A broken invariant: which one, and what exactly, with entity paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// One of the invariant names above.
    pub invariant: &'static str,
    /// What is wrong, naming entities by path.
    pub message: String,
}

impl Found {
    pub fn new(invariant: &'static str, message: String) -> Found {
        Found { invariant, message }
    }
}

/// Read-only queries the checkers (and the world's fault targeting) need from an engine.
pub trait StateView {
    /// See [`Engine::assignments`].
    fn assignments(&self, si: SiId) -> Vec<AssignmentView>;
    /// See [`Engine::su_readiness`].
    fn su_readiness(&self, su: SuId) -> Readiness;
    /// See [`Engine::su_oper`].
    fn su_oper(&self, su: SuId) -> OperState;
    /// See [`Engine::node_up`].
    fn node_up(&self, node: NodeId) -> bool;
    /// See [`Engine::admin_state`].
    fn admin_state(&self, entity: EntityRef) -> Option<AdminState>;
    /// See [`Engine::su_escalation`].
    fn su_escalation(&self, su: SuId) -> (u32, u32);
    /// See [`Engine::node_escalation`].
    fn node_escalation(&self, node: NodeId) -> u32;
    /// See [`Engine::comp_presence`].
    fn comp_presence(&self, comp: CompId) -> Presence;
    /// See [`Engine::su_host`]; `None` (the default): the SU's configured node.
    fn su_host(&self, _su: SuId) -> Option<NodeId> {
        None
    }
}

/// Where `su` runs as the engine sees it.
fn host_of<V: StateView + ?Sized>(m: &Model, v: &V, su: SuId) -> NodeId {
    v.su_host(su).unwrap_or(m.sus[su.index()].node)
}

/// What the world drives: an engine's `handle` plus its queries. A trait so tests can drive the
/// world with a deliberately broken engine.
pub trait SimEngine: StateView {
    /// See [`Engine::handle`].
    fn handle(&mut self, now: Instant, input: Input) -> Vec<Action>;
    /// A fresh engine for the same model, for a simulated driver restart; `None` (the
    /// default) leaves restarts out of the run.
    fn restarted(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}

impl StateView for Engine {
    fn assignments(&self, si: SiId) -> Vec<AssignmentView> {
        Engine::assignments(self, si)
    }
    fn su_readiness(&self, su: SuId) -> Readiness {
        Engine::su_readiness(self, su)
    }
    fn su_oper(&self, su: SuId) -> OperState {
        Engine::su_oper(self, su)
    }
    fn node_up(&self, node: NodeId) -> bool {
        Engine::node_up(self, node)
    }
    fn admin_state(&self, entity: EntityRef) -> Option<AdminState> {
        Engine::admin_state(self, entity)
    }
    fn su_escalation(&self, su: SuId) -> (u32, u32) {
        Engine::su_escalation(self, su)
    }
    fn node_escalation(&self, node: NodeId) -> u32 {
        Engine::node_escalation(self, node)
    }
    fn comp_presence(&self, comp: CompId) -> Presence {
        Engine::comp_presence(self, comp)
    }
    fn su_host(&self, su: SuId) -> Option<NodeId> {
        Some(Engine::su_host(self, su))
    }
}

impl SimEngine for Engine {
    fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        Engine::handle(self, now, input)
    }
    fn restarted(&self) -> Option<Engine> {
        Some(Engine::restarted(self))
    }
}

fn su_path(m: &Model, su: SuId) -> &str {
    &m.sus[su.index()].path
}

fn si_path(m: &Model, si: SiId) -> &str {
    &m.sis[si.index()].path
}

/// `[app/sg/su-1 active, app/sg/su-2 standby (unconfirmed)]`, for messages.
pub fn describe_assignments(m: &Model, list: &[AssignmentView]) -> String {
    let parts: Vec<String> = list
        .iter()
        .map(|a| {
            format!(
                "{} {}{}",
                su_path(m, a.su),
                a.ha_state.name(),
                if a.confirmed { "" } else { " (unconfirmed)" }
            )
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

fn entity_exists(m: &Model, e: EntityRef) -> bool {
    match e {
        EntityRef::Cluster => true,
        EntityRef::Node(n) => n.index() < m.nodes.len(),
        EntityRef::App(a) => a.index() < m.apps.len(),
        EntityRef::Sg(s) => s.index() < m.sgs.len(),
        EntityRef::Su(s) => s.index() < m.sus.len(),
        EntityRef::Comp(c) => c.index() < m.comps.len(),
        EntityRef::Si(s) => s.index() < m.sis.len(),
        EntityRef::Csi(c) => c.index() < m.csis.len(),
    }
}

/// Every id in an action exists in the model, so the world and the messages can index the
/// model's tables without a second thought. A broken engine is reported, not a crashed sim.
pub fn check_action_ids(m: &Model, a: &ActionKind) -> Result<(), Found> {
    let mut ok = true;
    let mut e = |x: EntityRef| ok &= entity_exists(m, x);
    match a {
        ActionKind::Instantiate { comp, .. }
        | ActionKind::Terminate { comp }
        | ActionKind::Cleanup { comp } => e(EntityRef::Comp(*comp)),
        ActionKind::AssignCsi { comp, csi, .. } | ActionKind::RemoveCsi { comp, csi } => {
            e(EntityRef::Comp(*comp));
            e(EntityRef::Csi(*csi));
        }
        ActionKind::Fence { node } => e(EntityRef::Node(*node)),
        ActionKind::StartTimer { timer, .. } => match timer {
            nines_engine::Timer::InstantiateRetry { comp, .. } => e(EntityRef::Comp(*comp)),
            nines_engine::Timer::SponsorTolerance { dependent, .. } => e(EntityRef::Si(*dependent)),
            #[allow(unreachable_patterns)]
            _ => {}
        },
        ActionKind::AdminReply { .. } => {}
        ActionKind::Record(ev) => match ev {
            Event::FaultDetected {
                entity, affected, ..
            } => {
                e(*entity);
                for s in affected {
                    e(EntityRef::Si(*s));
                }
            }
            Event::FaultIgnored { entity, .. } => e(*entity),
            Event::Presence { comp, .. } => e(EntityRef::Comp(*comp)),
            Event::Oper { su, .. } | Event::Readiness { su, .. } => e(EntityRef::Su(*su)),
            Event::Admin { entity, .. } | Event::AdminDone { target: entity, .. } => e(*entity),
            Event::Assignment { si, su, .. } => {
                e(EntityRef::Si(*si));
                e(EntityRef::Su(*su));
            }
            Event::SiState { si, .. } => e(EntityRef::Si(*si)),
            Event::Node { node, .. } => e(EntityRef::Node(*node)),
            _ => {}
        },
        #[allow(unreachable_patterns)]
        _ => {}
    }
    if ok {
        Ok(())
    } else {
        Err(Found::new(
            BAD_OUTPUT,
            format!("the engine named an entity that does not exist: {a:?}"),
        ))
    }
}

/// Invariants 1 and 2 for one SI.
pub fn check_si<V: StateView + ?Sized>(m: &Model, v: &V, si: SiId) -> Result<(), Found> {
    let list = v.assignments(si);
    if list.is_empty() {
        return Ok(());
    }
    if let Some(a) = list.iter().find(|a| a.su.index() >= m.sus.len()) {
        return Err(Found::new(
            BAD_OUTPUT,
            format!(
                "assignments({}) names SU #{}, which does not exist",
                si_path(m, si),
                a.su.0
            ),
        ));
    }
    let sg = &m.sgs[m.sis[si.index()].sg.index()];
    let actives = list
        .iter()
        .filter(|a| a.ha_state == HaState::Active)
        .count();
    if actives > 1 && sg.redundancy != Redundancy::NWayActive {
        return Err(Found::new(
            ONE_ACTIVE,
            format!(
                "{} ({} SG {}) has {} active assignments: {}",
                si_path(m, si),
                sg.redundancy.name(),
                sg.path,
                actives,
                describe_assignments(m, &list)
            ),
        ));
    }
    for (i, a) in list.iter().enumerate() {
        if list[..i].iter().any(|b| b.su == a.su) {
            return Err(Found::new(
                ONE_ACTIVE,
                format!(
                    "{} is assigned twice to {}: {}",
                    si_path(m, si),
                    su_path(m, a.su),
                    describe_assignments(m, &list)
                ),
            ));
        }
        if !matches!(a.ha_state, HaState::Active | HaState::Standby) {
            continue;
        }
        let readiness = v.su_readiness(a.su);
        let node = host_of(m, v, a.su);
        let why = if readiness == Readiness::OutOfService {
            Some("is out of service".to_string())
        } else if !v.node_up(node) {
            Some(format!(
                "is on {}, which is down",
                m.path(EntityRef::Node(node))
            ))
        } else if v.su_oper(a.su) == OperState::Disabled {
            Some("is disabled".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Found::new(
                PLACEMENT,
                format!(
                    "{} holds {} {} but {} (readiness {:?}); assignments: {}",
                    su_path(m, a.su),
                    si_path(m, si),
                    a.ha_state.name(),
                    why,
                    readiness,
                    describe_assignments(m, &list)
                ),
            ));
        }
    }
    Ok(())
}

/// Invariant 3 for one SU.
pub fn check_su_escalation<V: StateView + ?Sized>(m: &Model, v: &V, su: SuId) -> Result<(), Found> {
    let sg = &m.sgs[m.sus[su.index()].sg.index()];
    let (comp_restarts, su_restarts) = v.su_escalation(su);
    if comp_restarts > sg.comp_restart.max {
        return Err(Found::new(
            ESCALATION,
            format!(
                "{} counts {} component restarts, more than comp_restart.max {} of {}",
                su_path(m, su),
                comp_restarts,
                sg.comp_restart.max,
                sg.path
            ),
        ));
    }
    if su_restarts > sg.su_restart.max {
        return Err(Found::new(
            ESCALATION,
            format!(
                "{} counts {} SU restarts, more than su_restart.max {} of {}",
                su_path(m, su),
                su_restarts,
                sg.su_restart.max,
                sg.path
            ),
        ));
    }
    Ok(())
}

/// Invariant 3 for one node.
pub fn check_node_escalation<V: StateView + ?Sized>(
    m: &Model,
    v: &V,
    node: NodeId,
) -> Result<(), Found> {
    let n = v.node_escalation(node);
    let max = m.nodes[node.index()].su_failover.max;
    if n > max {
        return Err(Found::new(
            ESCALATION,
            format!(
                "{} counts {} SU failovers, more than su_failover.max {}",
                m.path(EntityRef::Node(node)),
                n,
                max
            ),
        ));
    }
    Ok(())
}

/// Invariants 1–3 for every SI and SU of one SG.
pub fn check_sg<V: StateView + ?Sized>(m: &Model, v: &V, sg: SgId) -> Result<(), Found> {
    let g = &m.sgs[sg.index()];
    for &si in &g.sis {
        check_si(m, v, si)?;
    }
    for &su in &g.sus {
        check_su_escalation(m, v, su)?;
    }
    Ok(())
}

/// Invariants 1–3 for the whole model.
pub fn check_all<V: StateView + ?Sized>(m: &Model, v: &V) -> Result<(), Found> {
    for sg in 0..m.sgs.len() {
        check_sg(m, v, SgId(sg as u32))?;
    }
    for node in 0..m.nodes.len() {
        check_node_escalation(m, v, NodeId(node as u32))?;
    }
    Ok(())
}

/// Invariant 4a: the actions of the step that handled `ComponentFailed{comp}` must say what
/// became of the report.
pub fn check_fault_answered(m: &Model, comp: CompId, actions: &[Action]) -> Result<(), Found> {
    let su = m.comps[comp.index()].su;
    let node = m.sus[su.index()].node;
    let about = |e: &EntityRef| {
        *e == EntityRef::Comp(comp) || *e == EntityRef::Su(su) || *e == EntityRef::Node(node)
    };
    let answered = actions.iter().any(|a| match &a.kind {
        ActionKind::Record(Event::FaultDetected { entity, .. })
        | ActionKind::Record(Event::FaultIgnored { entity, .. }) => about(entity),
        _ => false,
    });
    if answered {
        Ok(())
    } else {
        Err(Found::new(
            FAULT_ANSWERED,
            format!(
                "the failure of {} produced neither FaultDetected nor FaultIgnored \
                 ({} actions in that step)",
                m.comps[comp.index()].path,
                actions.len()
            ),
        ))
    }
}

/// A detected fault waiting for its `ServiceRecovered`.
#[derive(Clone, Debug)]
pub struct OpenFault {
    /// The step that detected it.
    pub step: u64,
    /// The failed entity.
    pub entity: EntityRef,
    /// How it was seen.
    pub kind: Option<FaultKind>,
    /// The SIs it took (or may have taken) down.
    pub affected: Vec<SiId>,
}

/// Faults between detection and service recovery (invariant 4b).
#[derive(Clone, Debug, Default)]
pub struct FaultBook {
    /// Open faults by id (a BTreeMap: reports list them in id order).
    pub open: BTreeMap<FaultId, OpenFault>,
}

impl FaultBook {
    /// Notes the fault milestones among one step's records.
    pub fn observe(&mut self, m: &Model, step: u64, event: &Event) -> Result<(), Found> {
        match event {
            Event::FaultDetected {
                fault,
                entity,
                kind,
                affected,
                ..
            } => {
                let f = OpenFault {
                    step,
                    entity: *entity,
                    kind: *kind,
                    affected: affected.clone(),
                };
                if let Some(old) = self.open.insert(*fault, f) {
                    return Err(Found::new(
                        FAULT_RECOVERED,
                        format!(
                            "fault #{fault} detected again (on {}), still open since step {} (on {})",
                            m.path(*entity),
                            old.step,
                            m.path(old.entity)
                        ),
                    ));
                }
            }
            // A VM's fault also waits for the SIs its guest held.
            Event::GuestHeld {
                fault, affected, ..
            } => {
                if let Some(f) = self.open.get_mut(fault) {
                    for si in affected {
                        if !f.affected.contains(si) {
                            f.affected.push(*si);
                        }
                    }
                }
            }
            Event::ServiceRecovered { fault, .. } if self.open.remove(fault).is_none() => {
                return Err(Found::new(
                    FAULT_RECOVERED,
                    format!(
                        "ServiceRecovered for fault #{fault}, which is not open \
                         (never detected, or recovered twice)"
                    ),
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Requests sent and not yet answered (invariant 6).
#[derive(Clone, Debug, Default)]
pub struct AdminBook {
    /// Outstanding request ids and what they asked for, for messages.
    pub outstanding: BTreeMap<u64, String>,
}

impl AdminBook {
    /// Notes a request sent to the engine.
    pub fn sent(&mut self, request: u64, what: String) {
        self.outstanding.insert(request, what);
    }

    /// Checks a reply against the requests sent.
    pub fn reply(&mut self, request: u64) -> Result<(), Found> {
        if self.outstanding.remove(&request).is_some() {
            Ok(())
        } else {
            Err(Found::new(
                ADMIN_REPLY,
                format!("AdminReply for request #{request}, which was never sent or is already answered"),
            ))
        }
    }

    /// At the end: every request must have had its reply.
    pub fn all_answered(&self) -> Result<(), Found> {
        match self.outstanding.iter().next() {
            None => Ok(()),
            Some((id, what)) => Err(Found::new(
                ADMIN_REPLY,
                format!(
                    "request #{id} ({what}) never answered ({} unanswered in all)",
                    self.outstanding.len()
                ),
            )),
        }
    }
}

/// Where an SI stands once the world is quiet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiStatus {
    /// It has a confirmed active assignment.
    Active,
    /// It has none, for a good reason (locked, sponsor down, no SU could take it).
    Excused(String),
    /// It has none although this SU could take it: a violation.
    Assignable(SuId, String),
}

/// Per-SG occupancy, computed once per settle check.
struct SgLoad {
    /// Per SU of the SG (by position in `Sg::sus`): SIs held active/quiescing/quiesced.
    act: Vec<u32>,
    /// Per SU: SIs held standby.
    stb: Vec<u32>,
}

fn sg_load<V: StateView + ?Sized>(m: &Model, v: &V, sg: SgId) -> SgLoad {
    let g = &m.sgs[sg.index()];
    let mut load = SgLoad {
        act: vec![0; g.sus.len()],
        stb: vec![0; g.sus.len()],
    };
    for &si in &g.sis {
        for a in v.assignments(si) {
            if let Some(p) = g.sus.iter().position(|&s| s == a.su) {
                if a.ha_state == HaState::Standby {
                    load.stb[p] += 1;
                } else {
                    load.act[p] += 1;
                }
            }
        }
    }
    load
}

fn unlocked<V: StateView + ?Sized>(v: &V, e: EntityRef) -> bool {
    matches!(v.admin_state(e), None | Some(AdminState::Unlocked))
}

fn has_confirmed_active(list: &[AssignmentView]) -> bool {
    list.iter()
        .any(|a| a.ha_state == HaState::Active && a.confirmed)
}

/// Whether `si`, which has no active assignment, could be given one by an SU of its SG right
/// now; the first such SU and why. "Could" is deliberately conservative: an SU counts only if
/// the redundancy model leaves no doubt that it may take the active.
fn assignable<V: StateView + ?Sized>(
    m: &Model,
    v: &V,
    si: SiId,
    list: &[AssignmentView],
    load: &SgLoad,
) -> Option<(SuId, String)> {
    let sg_id = m.sis[si.index()].sg;
    let g = &m.sgs[sg_id.index()];
    let active_sus: Vec<usize> = (0..g.sus.len()).filter(|&p| load.act[p] > 0).collect();
    for (p, &su) in g.sus.iter().enumerate() {
        if v.su_readiness(su) != Readiness::InService
            || v.su_oper(su) != OperState::Enabled
            || !v.node_up(host_of(m, v, su))
        {
            continue;
        }
        let own = list.iter().find(|a| a.su == su).map(|a| a.ha_state);
        if matches!(own, Some(HaState::Quiescing | HaState::Quiesced)) {
            continue;
        }
        let holds_own_standby = own == Some(HaState::Standby);
        if let Some(max) = g.max_active_sis_per_su {
            if load.act[p] >= max {
                continue;
            }
        }
        let ok = match g.redundancy {
            Redundancy::NoRedundancy => load.act[p] == 0,
            Redundancy::TwoN => active_sus.is_empty() || active_sus == [p],
            Redundancy::NPlusM { active_sus: n, .. } => {
                if load.act[p] > 0 {
                    load.stb[p] == 0
                } else {
                    (active_sus.len() as u32) < n && (load.stb[p] == 0 || holds_own_standby)
                }
            }
            Redundancy::NWay | Redundancy::NWayActive => true,
        };
        if ok {
            let why = format!(
                "{} is in service and holds {} active and {} standby SIs of {} ({}, max active per SU {}){}",
                su_path(m, su),
                load.act[p],
                load.stb[p],
                g.path,
                g.redundancy.name(),
                g.max_active_sis_per_su
                    .map_or("unlimited".to_string(), |x| x.to_string()),
                if holds_own_standby {
                    ", including this SI's standby"
                } else {
                    ""
                }
            );
            return Some((su, why));
        }
    }
    None
}

fn si_status_with<V: StateView + ?Sized>(m: &Model, v: &V, si: SiId, load: &SgLoad) -> SiStatus {
    let s = &m.sis[si.index()];
    let list = v.assignments(si);
    if has_confirmed_active(&list) {
        return SiStatus::Active;
    }
    for e in [
        EntityRef::Cluster,
        EntityRef::App(s.app),
        EntityRef::Sg(s.sg),
        EntityRef::Si(si),
    ] {
        if !unlocked(v, e) {
            return SiStatus::Excused(format!("{} is not unlocked", m.path(e)));
        }
    }
    for d in &s.depends_on {
        if !has_confirmed_active(&v.assignments(d.sponsor)) {
            return SiStatus::Excused(format!(
                "its sponsor {} is not active",
                si_path(m, d.sponsor)
            ));
        }
    }
    match assignable(m, v, si, &list, load) {
        Some((su, why)) => SiStatus::Assignable(
            su,
            format!("{why}; assignments: {}", describe_assignments(m, &list)),
        ),
        None => SiStatus::Excused("no in-service SU of its SG could take it".to_string()),
    }
}

/// Where `si` stands when the world is quiet (used for invariants 4b and 5).
pub fn si_status<V: StateView + ?Sized>(m: &Model, v: &V, si: SiId) -> SiStatus {
    let load = sg_load(m, v, m.sis[si.index()].sg);
    si_status_with(m, v, si, &load)
}

/// Invariant 5 and its companion, for the whole model: call only when no answer is
/// outstanding and no timer is due soon.
pub fn check_settled<V: StateView + ?Sized>(m: &Model, v: &V) -> Result<(), Found> {
    // Most specific first: a stuck or half-done assignment explains a stuck shutdown.
    for si in 0..m.sis.len() {
        let si = SiId(si as u32);
        let list = v.assignments(si);
        if let Some(a) = list.iter().find(|a| !a.confirmed) {
            return Err(Found::new(
                SETTLED_STUCK,
                format!(
                    "{} waits for {} to confirm {} but no answer is outstanding; \
                     assignments: {}",
                    si_path(m, si),
                    su_path(m, a.su),
                    a.ha_state.name(),
                    describe_assignments(m, &list)
                ),
            ));
        }
        if let Some(a) = list
            .iter()
            .find(|a| matches!(a.ha_state, HaState::Quiescing | HaState::Quiesced))
        {
            return Err(Found::new(
                SETTLED_LEFTOVER,
                format!(
                    "{} is left {} on {} though no answer is outstanding; assignments: {}",
                    si_path(m, si),
                    a.ha_state.name(),
                    su_path(m, a.su),
                    describe_assignments(m, &list)
                ),
            ));
        }
        if !list.is_empty() && v.admin_state(EntityRef::Si(si)) == Some(AdminState::Locked) {
            return Err(Found::new(
                SETTLED_LEFTOVER,
                format!(
                    "{} is locked but still assigned: {}",
                    si_path(m, si),
                    describe_assignments(m, &list)
                ),
            ));
        }
    }
    for e in admin_entities(m) {
        if v.admin_state(e) == Some(AdminState::ShuttingDown) {
            let held: Vec<String> = scope_sis(m, e)
                .into_iter()
                .map(|si| {
                    format!(
                        "{} {}",
                        si_path(m, si),
                        describe_assignments(m, &v.assignments(si))
                    )
                })
                .collect();
            return Err(Found::new(
                SETTLED_LEFTOVER,
                format!(
                    "{} is still shutting down though no answer is outstanding; its SIs: {}",
                    m.path(e),
                    held.join(", ")
                ),
            ));
        }
    }
    for (i, g) in m.sgs.iter().enumerate() {
        let load = sg_load(m, v, SgId(i as u32));
        for &si in &g.sis {
            if let SiStatus::Assignable(_, why) = si_status_with(m, v, si, &load) {
                return Err(Found::new(
                    SETTLED_ASSIGNED,
                    format!(
                        "{} has no active assignment while all is quiet, yet {}",
                        si_path(m, si),
                        why
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The SIs whose work an entity's admin state governs, for messages.
fn scope_sis(m: &Model, e: EntityRef) -> Vec<SiId> {
    let in_sg = |sg: SgId| m.sgs[sg.index()].sis.clone();
    match e {
        EntityRef::Cluster => (0..m.sis.len()).map(|i| SiId(i as u32)).collect(),
        EntityRef::Node(n) => {
            let mut sgs: Vec<SgId> = m.nodes[n.index()]
                .sus
                .iter()
                .map(|su| m.sus[su.index()].sg)
                .collect();
            sgs.sort();
            sgs.dedup();
            sgs.into_iter().flat_map(in_sg).collect()
        }
        EntityRef::App(a) => m.apps[a.index()].sis.clone(),
        EntityRef::Sg(sg) => in_sg(sg),
        EntityRef::Su(su) => in_sg(m.sus[su.index()].sg),
        EntityRef::Si(si) => vec![si],
        EntityRef::Comp(c) => in_sg(m.sus[m.comps[c.index()].su.index()].sg),
        EntityRef::Csi(c) => vec![m.csis[c.index()].si],
    }
}

/// Every entity that has an admin state, top-down: cluster, nodes, apps, SGs, SUs, SIs.
pub fn admin_entities(m: &Model) -> Vec<EntityRef> {
    let mut v = vec![EntityRef::Cluster];
    v.extend((0..m.nodes.len()).map(|i| EntityRef::Node(NodeId(i as u32))));
    v.extend((0..m.apps.len()).map(|i| EntityRef::App(AppId(i as u32))));
    v.extend((0..m.sgs.len()).map(|i| EntityRef::Sg(SgId(i as u32))));
    v.extend((0..m.sus.len()).map(|i| EntityRef::Su(SuId(i as u32))));
    v.extend((0..m.sis.len()).map(|i| EntityRef::Si(SiId(i as u32))));
    v
}

/// Invariant 4b at the end of a run: a fault still open although every SI it affected is
/// active again (or it affected none) lacks its `ServiceRecovered`.
pub fn check_faults_recovered<V: StateView + ?Sized>(
    m: &Model,
    v: &V,
    book: &FaultBook,
) -> Result<(), Found> {
    for (id, f) in &book.open {
        let mut excuse = None;
        for &si in &f.affected {
            match si_status(m, v, si) {
                SiStatus::Active => {}
                SiStatus::Excused(why) => {
                    excuse = Some(why);
                    break;
                }
                SiStatus::Assignable(_, why) => {
                    return Err(Found::new(
                        SETTLED_ASSIGNED,
                        format!(
                            "{} (affected by fault #{id}) is unassigned, yet {why}",
                            si_path(m, si)
                        ),
                    ))
                }
            }
        }
        if excuse.is_none() {
            let affected: Vec<&str> = f.affected.iter().map(|&s| si_path(m, s)).collect();
            return Err(Found::new(
                FAULT_RECOVERED,
                format!(
                    "fault #{id} on {} ({}) detected at step {} never got its ServiceRecovered, \
                     though every SI it affected is active again: [{}]",
                    m.path(f.entity),
                    f.kind.map_or("node", |k| match k {
                        FaultKind::Exited => "exited",
                        FaultKind::HealthcheckMissed => "healthcheck missed",
                        FaultKind::ErrorReport => "error report",
                    }),
                    f.step,
                    affected.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Invariant 1b on what the components hold (`held[comp]`: CSI, HA state they accepted): per
/// SI of an exclusive model, the SUs with a component holding one of its CSIs active.
pub fn check_world_actives(
    m: &Model,
    held: &[Vec<(nines_model::CsiId, nines_engine::HaState)>],
) -> Result<(), Found> {
    for (i, si) in m.sis.iter().enumerate() {
        if m.sgs[si.sg.index()].redundancy == Redundancy::NWayActive {
            continue;
        }
        let mut sus: Vec<SuId> = Vec::new();
        for &su in &m.sgs[si.sg.index()].sus {
            let active = m.sus[su.index()].comps.iter().any(|c| {
                held[c.index()].iter().any(|(csi, ha)| {
                    *ha == nines_engine::HaState::Active && m.csis[csi.index()].si.index() == i
                })
            });
            if active {
                sus.push(su);
            }
        }
        if sus.len() > 1 {
            let names: Vec<String> = sus.iter().map(|s| m.path(EntityRef::Su(*s))).collect();
            return Err(Found::new(
                WORLD_ONE_ACTIVE,
                format!(
                    "{} is held active by the components of {} at once",
                    m.path(EntityRef::Si(SiId(i as u32))),
                    names.join(" and ")
                ),
            ));
        }
    }
    Ok(())
}
