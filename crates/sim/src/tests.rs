//! Unit tests: every checker is shown a hand-made broken state, and the world is driven by
//! probe engines that would notice if it broke its own rules.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nines_engine::{
    Action, ActionKind, AdminError, AdminState, AssignmentView, Command, Event, HaState, Input,
    Instant, OperState, Outcome, Presence, Readiness, RecoveryStep, Timer,
};
use nines_model::{
    App, AppId, Comp, CompId, CompKind, Csi, CsiId, EntityRef, Healthcheck, InstantiationPolicy,
    Model, Node, NodeId, Probation, Recovery, Redundancy, Sg, SgId, Si, SiDependency, SiId, Su,
    SuId, Timeouts,
};

use crate::check::{self, AdminBook, FaultBook, SiStatus, SimEngine, StateView};
use crate::world::Mode;
use crate::{invariants, run_with, simulate, RunStats, SimOptions, Violation, MAX_TRACED};

// ---- a hand-built model (independent of the YAML loader) -------------------------------------

fn probation(max: u32, secs: u64) -> Probation {
    Probation {
        max,
        within: Duration::from_secs(secs),
    }
}

/// `nodes` nodes; one app per `(redundancy, SUs, SIs)`, each SU with one component `comp`,
/// SU `j` on node `j % nodes`, each SI with one CSI.
pub(crate) fn model(nodes: usize, sgs: &[(Redundancy, usize, usize)]) -> Model {
    let mut m = Model {
        cluster: "test".into(),
        nodes: (0..nodes)
            .map(|i| Node {
                name: format!("n{}", i + 1),
                su_failover: probation(2, 60),
                sus: Vec::new(),
                vm: None,
            })
            .collect(),
        apps: Vec::new(),
        sgs: Vec::new(),
        sus: Vec::new(),
        comps: Vec::new(),
        sis: Vec::new(),
        csis: Vec::new(),
    };
    for (a, &(redundancy, n_sus, n_sis)) in sgs.iter().enumerate() {
        let app = AppId(a as u32);
        let sg_id = SgId(m.sgs.len() as u32);
        let app_name = format!("a{}", a + 1);
        let mut sg = Sg {
            app,
            name: "sg".into(),
            path: format!("{app_name}/sg"),
            redundancy,
            fail_back: false,
            auto_repair: true,
            comp_restart: probation(2, 10),
            su_restart: probation(1, 30),
            max_active_sis_per_su: None,
            max_standby_sis_per_su: None,
            sus: Vec::new(),
            sis: Vec::new(),
            component_names: vec!["comp".into()],
        };
        for j in 0..n_sus {
            let su = SuId(m.sus.len() as u32);
            let comp = CompId(m.comps.len() as u32);
            let node = NodeId((j % nodes) as u32);
            let path = format!("{}/su-{}", sg.path, j + 1);
            m.comps.push(Comp {
                su,
                name: "comp".into(),
                path: format!("{path}/comp"),
                kind: CompKind::SaAware,
                instantiate: vec!["x".into()],
                terminate: None,
                cleanup: None,
                monitor: None,
                timeouts: Timeouts {
                    instantiate: Duration::from_secs(1),
                    terminate: Duration::from_secs(1),
                    cleanup: Duration::from_secs(1),
                    callback: Duration::from_secs(1),
                },
                healthcheck: Some(Healthcheck {
                    period: Duration::from_millis(100),
                    max_duration: Duration::from_millis(50),
                }),
                recovery: Recovery::ComponentRestart,
                instantiation: InstantiationPolicy {
                    retries: 1,
                    delayed_retries: 1,
                    retry_delay: Duration::from_secs(1),
                },
                vm: None,
                guest: None,
            });
            m.sus.push(Su {
                sg: sg_id,
                name: format!("su-{}", j + 1),
                path,
                node,
                rank: j as u32 + 1,
                locked_instantiation: false,
                comps: vec![comp],
            });
            m.nodes[node.index()].sus.push(su);
            sg.sus.push(su);
        }
        let mut app_sis = Vec::new();
        for k in 0..n_sis {
            let si = SiId(m.sis.len() as u32);
            let csi = CsiId(m.csis.len() as u32);
            let path = format!("{app_name}/si-{}", k + 1);
            m.csis.push(Csi {
                si,
                name: "csi".into(),
                path: format!("{path}/csi"),
                comp_slot: 0,
                attrs: Default::default(),
            });
            m.sis.push(Si {
                app,
                sg: sg_id,
                name: format!("si-{}", k + 1),
                path,
                rank: k as u32 + 1,
                preferred_active: if redundancy == Redundancy::NWayActive {
                    2
                } else {
                    1
                },
                preferred_standby: match redundancy {
                    Redundancy::TwoN | Redundancy::NPlusM { .. } | Redundancy::NWay => 1,
                    _ => 0,
                },
                depends_on: Vec::new(),
                csis: vec![csi],
            });
            sg.sis.push(si);
            app_sis.push(si);
        }
        m.apps.push(App {
            name: app_name,
            sgs: vec![sg_id],
            sis: app_sis,
        });
        m.sgs.push(sg);
    }
    m
}

fn two_n() -> Model {
    model(2, &[(Redundancy::TwoN, 2, 2)])
}

// ---- a fake engine state ---------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Fake {
    assign: Vec<Vec<AssignmentView>>,
    readiness: Vec<Readiness>,
    oper: Vec<OperState>,
    up: Vec<bool>,
    admin: HashMap<EntityRef, AdminState>,
    su_esc: Vec<(u32, u32)>,
    node_esc: Vec<u32>,
}

impl Fake {
    /// Every SU in service and empty, every node up, everything unlocked.
    fn healthy(m: &Model) -> Fake {
        Fake {
            assign: vec![Vec::new(); m.sis.len()],
            readiness: vec![Readiness::InService; m.sus.len()],
            oper: vec![OperState::Enabled; m.sus.len()],
            up: vec![true; m.nodes.len()],
            admin: HashMap::new(),
            su_esc: vec![(0, 0); m.sus.len()],
            node_esc: vec![0; m.nodes.len()],
        }
    }

    fn set(&mut self, si: u32, su: u32, ha_state: HaState, confirmed: bool) -> &mut Fake {
        self.assign[si as usize].push(AssignmentView {
            su: SuId(su),
            ha_state,
            confirmed,
        });
        self
    }
}

impl StateView for Fake {
    fn assignments(&self, si: SiId) -> Vec<AssignmentView> {
        self.assign[si.index()].clone()
    }
    fn su_readiness(&self, su: SuId) -> Readiness {
        self.readiness[su.index()]
    }
    fn su_oper(&self, su: SuId) -> OperState {
        self.oper[su.index()]
    }
    fn node_up(&self, node: NodeId) -> bool {
        self.up[node.index()]
    }
    fn admin_state(&self, entity: EntityRef) -> Option<AdminState> {
        match entity {
            EntityRef::Comp(_) | EntityRef::Csi(_) => None,
            e => Some(*self.admin.get(&e).unwrap_or(&AdminState::Unlocked)),
        }
    }
    fn su_escalation(&self, su: SuId) -> (u32, u32) {
        self.su_esc[su.index()]
    }
    fn node_escalation(&self, node: NodeId) -> u32 {
        self.node_esc[node.index()]
    }
    fn comp_presence(&self, _comp: CompId) -> Presence {
        Presence::Instantiated
    }
}

fn invariant_of(r: Result<(), check::Found>) -> Option<&'static str> {
    r.err().map(|f| f.invariant)
}

// ---- invariant 1 -----------------------------------------------------------------------------

#[test]
fn one_active_catches_two_actives_in_2n() {
    let m = two_n();
    let mut f = Fake::healthy(&m);
    f.set(0, 0, HaState::Active, true);
    assert_eq!(invariant_of(check::check_all(&m, &f)), None);
    f.set(0, 1, HaState::Active, false);
    let err = check::check_all(&m, &f).unwrap_err();
    assert_eq!(err.invariant, invariants::ONE_ACTIVE);
    assert!(err.message.contains("a1/si-1"), "{}", err.message);
    assert!(
        err.message.contains("a1/sg/su-2 active (unconfirmed)"),
        "{}",
        err.message
    );
}

#[test]
fn one_active_allows_many_in_n_way_active_and_catches_duplicates() {
    let m = model(
        2,
        &[(Redundancy::NWayActive, 2, 1), (Redundancy::NWay, 2, 1)],
    );
    let mut f = Fake::healthy(&m);
    f.set(0, 0, HaState::Active, true)
        .set(0, 1, HaState::Active, true);
    assert_eq!(invariant_of(check::check_all(&m, &f)), None);
    // The same SU twice for one SI.
    f.set(1, 2, HaState::Standby, true)
        .set(1, 2, HaState::Active, true);
    assert_eq!(
        invariant_of(check::check_all(&m, &f)),
        Some(invariants::ONE_ACTIVE)
    );
}

// ---- invariant 2 -----------------------------------------------------------------------------

#[test]
fn placement_catches_work_on_unready_sus() {
    let m = two_n();
    let base = {
        let mut f = Fake::healthy(&m);
        f.set(0, 0, HaState::Active, true)
            .set(0, 1, HaState::Standby, true);
        f
    };
    assert_eq!(invariant_of(check::check_all(&m, &base)), None);

    let mut f = base.clone();
    f.readiness[0] = Readiness::OutOfService;
    let err = check::check_all(&m, &f).unwrap_err();
    assert_eq!(err.invariant, invariants::PLACEMENT);
    assert!(
        err.message.contains("a1/sg/su-1 holds a1/si-1 active"),
        "{}",
        err.message
    );

    let mut f = base.clone();
    f.oper[1] = OperState::Disabled;
    assert_eq!(
        invariant_of(check::check_all(&m, &f)),
        Some(invariants::PLACEMENT)
    );

    let mut f = base.clone();
    f.up[1] = false;
    let err = check::check_all(&m, &f).unwrap_err();
    assert!(err.message.contains("node/n2"), "{}", err.message);

    // Quiesced work on a stopping or out-of-service SU is how work leaves it: fine.
    let mut f = Fake::healthy(&m);
    f.set(0, 0, HaState::Quiesced, false)
        .set(1, 0, HaState::Quiescing, false);
    f.readiness[0] = Readiness::OutOfService;
    assert_eq!(invariant_of(check::check_all(&m, &f)), None);
}

// ---- invariant 3 -----------------------------------------------------------------------------

#[test]
fn escalation_counters_are_bounded() {
    let m = two_n();
    let mut f = Fake::healthy(&m);
    f.su_esc[1] = (2, 1);
    f.node_esc[0] = 2;
    assert_eq!(invariant_of(check::check_all(&m, &f)), None);
    f.su_esc[1] = (3, 1);
    let err = check::check_all(&m, &f).unwrap_err();
    assert_eq!(err.invariant, invariants::ESCALATION);
    assert!(err
        .message
        .contains("a1/sg/su-2 counts 3 component restarts"));
    f.su_esc[1] = (0, 2);
    assert_eq!(
        invariant_of(check::check_all(&m, &f)),
        Some(invariants::ESCALATION)
    );
    f.su_esc[1] = (0, 0);
    f.node_esc[1] = 3;
    let err = check::check_all(&m, &f).unwrap_err();
    assert!(err.message.contains("node/n2"), "{}", err.message);
}

// ---- invariant 4 -----------------------------------------------------------------------------

fn rec(e: Event) -> Action {
    Action {
        at: Instant::ZERO,
        kind: ActionKind::Record(e),
    }
}

#[test]
fn every_failure_report_is_answered() {
    let m = two_n();
    let comp = CompId(0);
    let err = check::check_fault_answered(&m, comp, &[]).unwrap_err();
    assert_eq!(err.invariant, invariants::FAULT_ANSWERED);
    assert!(err.message.contains("a1/sg/su-1/comp"));
    let other = rec(Event::FaultIgnored {
        entity: EntityRef::Comp(CompId(1)),
        reason: "x",
    });
    assert!(check::check_fault_answered(&m, comp, &[other]).is_err());
    let ignored = rec(Event::FaultIgnored {
        entity: EntityRef::Comp(comp),
        reason: "already restarting",
    });
    assert!(check::check_fault_answered(&m, comp, &[ignored]).is_ok());
    let detected = rec(Event::FaultDetected {
        fault: 1,
        entity: EntityRef::Comp(comp),
        kind: None,
        recovery: RecoveryStep::ComponentRestart,
        affected: vec![],
    });
    assert!(check::check_fault_answered(&m, comp, &[detected]).is_ok());
}

fn detected(fault: u64, affected: Vec<SiId>) -> Event {
    Event::FaultDetected {
        fault,
        entity: EntityRef::Comp(CompId(0)),
        kind: None,
        recovery: RecoveryStep::SuFailover,
        affected,
    }
}

#[test]
fn fault_book_catches_unknown_and_double_recoveries() {
    let m = two_n();
    let mut book = FaultBook::default();
    let recovered = Event::ServiceRecovered {
        fault: 7,
        outage: Duration::ZERO,
    };
    assert_eq!(
        invariant_of(book.observe(&m, 1, &recovered)),
        Some(invariants::FAULT_RECOVERED)
    );
    book.observe(&m, 2, &detected(7, vec![SiId(0)])).unwrap();
    assert_eq!(
        invariant_of(book.observe(&m, 3, &detected(7, vec![]))),
        Some(invariants::FAULT_RECOVERED)
    );
    book.observe(&m, 4, &recovered).unwrap();
    assert!(book.observe(&m, 5, &recovered).is_err());
}

#[test]
fn faults_must_end_in_service_recovered() {
    let m = two_n();
    let mut book = FaultBook::default();
    book.observe(&m, 2, &detected(1, vec![SiId(0), SiId(1)]))
        .unwrap();
    // Both SIs active again but no ServiceRecovered: a violation.
    let mut f = Fake::healthy(&m);
    f.set(0, 1, HaState::Active, true)
        .set(1, 1, HaState::Active, true);
    let err = check::check_faults_recovered(&m, &f, &book).unwrap_err();
    assert_eq!(err.invariant, invariants::FAULT_RECOVERED);
    assert!(err.message.contains("fault #1"), "{}", err.message);
    // A fault that affected nothing is recovered at once; it too needs its event.
    let mut empty = FaultBook::default();
    empty.observe(&m, 2, &detected(2, vec![])).unwrap();
    assert!(check::check_faults_recovered(&m, &f, &empty).is_err());
    // An SI that cannot be active (no SU in service) excuses the fault.
    let mut f = Fake::healthy(&m);
    f.set(0, 1, HaState::Active, true);
    f.readiness = vec![Readiness::OutOfService; 2];
    f.assign[0].clear();
    assert!(check::check_faults_recovered(&m, &f, &book).is_ok());
}

// ---- invariant 5 -----------------------------------------------------------------------------

#[test]
fn settled_2n_si_must_be_active_when_an_su_can_take_it() {
    let m = two_n();
    let mut f = Fake::healthy(&m);
    let err = check::check_settled(&m, &f).unwrap_err();
    assert_eq!(err.invariant, invariants::SETTLED_ASSIGNED);
    assert!(err.message.contains("a1/si-1"), "{}", err.message);

    // su-1 holds si-1: only su-1 may take si-2 in 2N, and it is in service.
    f.set(0, 0, HaState::Active, true)
        .set(0, 1, HaState::Standby, true);
    let err = check::check_settled(&m, &f).unwrap_err();
    assert!(err.message.contains("a1/si-2"), "{}", err.message);
    assert!(
        err.message.contains("a1/sg/su-1 is in service"),
        "{}",
        err.message
    );

    // su-1 out of service (and without work): su-2 holds standbys only, so no SU holds
    // actives and su-2 may take both.
    let mut g = Fake::healthy(&m);
    g.set(0, 1, HaState::Standby, true);
    g.readiness[0] = Readiness::OutOfService;
    let err = check::check_settled(&m, &g).unwrap_err();
    assert!(err.message.contains("a1/sg/su-2"), "{}", err.message);

    // Nobody in service: excused.
    g.readiness[1] = Readiness::Stopping;
    assert!(check::check_settled(&m, &g).is_ok());

    // Fully assigned: fine.
    f.set(1, 0, HaState::Active, true)
        .set(1, 1, HaState::Standby, true);
    assert!(check::check_settled(&m, &f).is_ok());
}

#[test]
fn settled_excuses_locks_and_inactive_sponsors() {
    let mut m = two_n();
    let mut f = Fake::healthy(&m);
    f.set(0, 0, HaState::Active, true);
    f.admin.insert(EntityRef::Si(SiId(1)), AdminState::Locked);
    assert!(check::check_settled(&m, &f).is_ok());
    f.admin.insert(EntityRef::Si(SiId(1)), AdminState::Unlocked);
    f.admin.insert(EntityRef::App(AppId(0)), AdminState::Locked);
    assert!(check::check_settled(&m, &f).is_ok());
    f.admin.clear();
    assert!(check::check_settled(&m, &f).is_err());
    // si-2 depends on si-1: with si-1 unconfirmed... (unconfirmed is its own violation), so
    // use an unassigned sponsor instead.
    m.sis[1].depends_on.push(SiDependency {
        sponsor: SiId(0),
        tolerance: Duration::from_secs(1),
    });
    let mut g = Fake::healthy(&m);
    g.readiness[0] = Readiness::OutOfService;
    g.readiness[1] = Readiness::OutOfService;
    assert!(check::check_settled(&m, &g).is_ok());
    assert_eq!(
        check::si_status(&m, &g, SiId(1)),
        SiStatus::Excused("its sponsor a1/si-1 is not active".into())
    );
}

#[test]
fn settled_respects_capacity() {
    let mut m = model(
        2,
        &[(Redundancy::NoRedundancy, 2, 3), (Redundancy::NWay, 2, 2)],
    );
    let mut f = Fake::healthy(&m);
    f.set(0, 0, HaState::Active, true)
        .set(1, 1, HaState::Active, true);
    f.set(3, 2, HaState::Active, true)
        .set(4, 3, HaState::Active, true);
    // No-redundancy: both SUs busy, si-3 waits: fine.
    assert!(check::check_settled(&m, &f).is_ok());
    // Free one SU: si-3 must go there.
    f.assign[1].clear();
    let err = check::check_settled(&m, &f).unwrap_err();
    assert!(
        err.message.contains("a1/si-2") && err.message.contains("su-2"),
        "{}",
        err.message
    );
    // N-Way with a cap of one active per SU, both SUs at the cap: fine; without the cap: not.
    let mut g = Fake::healthy(&m);
    g.set(0, 0, HaState::Active, true)
        .set(1, 1, HaState::Active, true);
    g.set(3, 2, HaState::Active, true);
    m.sgs[1].max_active_sis_per_su = Some(1);
    let err = check::check_settled(&m, &g).unwrap_err();
    assert!(err.message.contains("a2/si-2") && err.message.contains("a2/sg/su-2"));
    g.set(4, 3, HaState::Standby, true);
    g.readiness[3] = Readiness::OutOfService;
    g.assign[4].clear();
    assert!(check::check_settled(&m, &g).is_ok());
}

#[test]
fn settled_n_plus_m_roles() {
    let m = model(
        3,
        &[(
            Redundancy::NPlusM {
                active_sus: 1,
                standby_sus: 1,
            },
            3,
            2,
        )],
    );
    // su-1 active for si-1, su-2 standby for si-1 and si-2; si-2 has no active. su-1 can take
    // it (an active SU), su-2 cannot (a standby SU while the one active SU is used).
    let mut f = Fake::healthy(&m);
    f.set(0, 0, HaState::Active, true)
        .set(0, 1, HaState::Standby, true);
    f.set(1, 1, HaState::Standby, true);
    let err = check::check_settled(&m, &f).unwrap_err();
    assert!(
        err.message.contains("a1/sg/su-1 is in service"),
        "{}",
        err.message
    );
    f.readiness[0] = Readiness::OutOfService;
    f.assign[0].remove(0);
    // su-1 gone: its standby (su-2) must be promoted.
    let err = check::check_settled(&m, &f).unwrap_err();
    assert!(err.message.contains("a1/sg/su-2"), "{}", err.message);
}

#[test]
fn settled_catches_an_assignment_waiting_forever() {
    let m = two_n();
    let mut f = Fake::healthy(&m);
    f.set(0, 0, HaState::Active, true)
        .set(1, 0, HaState::Active, false);
    let err = check::check_settled(&m, &f).unwrap_err();
    assert_eq!(err.invariant, invariants::SETTLED_STUCK);
    assert!(
        err.message.contains("a1/si-2 waits for a1/sg/su-1"),
        "{}",
        err.message
    );
}

#[test]
fn settled_catches_half_done_work() {
    let m = two_n();
    let mut f = Fake::healthy(&m);
    f.set(0, 0, HaState::Active, true)
        .set(1, 0, HaState::Active, true);
    assert!(check::check_settled(&m, &f).is_ok());
    let mut g = f.clone();
    g.set(1, 1, HaState::Quiesced, true);
    let err = check::check_settled(&m, &g).unwrap_err();
    assert_eq!(err.invariant, invariants::SETTLED_LEFTOVER);
    assert!(
        err.message
            .contains("a1/si-2 is left quiesced on a1/sg/su-2"),
        "{}",
        err.message
    );
    let mut g = f.clone();
    g.admin.insert(EntityRef::Si(SiId(1)), AdminState::Locked);
    let err = check::check_settled(&m, &g).unwrap_err();
    assert!(
        err.message.contains("a1/si-2 is locked but still assigned"),
        "{}",
        err.message
    );
    let mut g = f.clone();
    g.admin
        .insert(EntityRef::Node(NodeId(1)), AdminState::ShuttingDown);
    let err = check::check_settled(&m, &g).unwrap_err();
    assert!(
        err.message.contains("node/n2 is still shutting down"),
        "{}",
        err.message
    );
}

// ---- invariant 6 -----------------------------------------------------------------------------

#[test]
fn admin_replies_match_requests_exactly_once() {
    let mut book = AdminBook::default();
    assert_eq!(invariant_of(book.reply(3)), Some(invariants::ADMIN_REPLY));
    book.sent(3, "lock a1/sg/su-1".into());
    book.sent(4, "unlock a1".into());
    book.reply(3).unwrap();
    assert!(book.reply(3).is_err());
    let err = book.all_answered().unwrap_err();
    assert!(err.message.contains("#4 (unlock a1)"), "{}", err.message);
    book.reply(4).unwrap();
    assert!(book.all_answered().is_ok());
}

// ---- the world, driven by probe engines --------------------------------------------------------

/// A fake engine driven by a closure, for broken-engine scenarios.
struct Scripted<F: FnMut(&mut Fake, Instant, Input) -> Vec<ActionKind>> {
    state: Fake,
    script: F,
}

impl<F: FnMut(&mut Fake, Instant, Input) -> Vec<ActionKind>> StateView for Scripted<F> {
    fn assignments(&self, si: SiId) -> Vec<AssignmentView> {
        self.state.assignments(si)
    }
    fn su_readiness(&self, su: SuId) -> Readiness {
        self.state.su_readiness(su)
    }
    fn su_oper(&self, su: SuId) -> OperState {
        self.state.su_oper(su)
    }
    fn node_up(&self, node: NodeId) -> bool {
        self.state.node_up(node)
    }
    fn admin_state(&self, entity: EntityRef) -> Option<AdminState> {
        self.state.admin_state(entity)
    }
    fn su_escalation(&self, su: SuId) -> (u32, u32) {
        self.state.su_escalation(su)
    }
    fn node_escalation(&self, node: NodeId) -> u32 {
        self.state.node_escalation(node)
    }
    fn comp_presence(&self, comp: CompId) -> Presence {
        self.state.comp_presence(comp)
    }
}

impl<F: FnMut(&mut Fake, Instant, Input) -> Vec<ActionKind>> SimEngine for Scripted<F> {
    fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        (self.script)(&mut self.state, now, input)
            .into_iter()
            .map(|kind| Action { at: now, kind })
            .collect()
    }
}

/// A fake state where nothing is in service, so only action-level invariants can fail.
fn idle(m: &Model) -> Fake {
    let mut f = Fake::healthy(m);
    f.readiness = vec![Readiness::OutOfService; m.sus.len()];
    f
}

/// Answers what the invariants demand and nothing more: failures ignored, admin refused.
fn polite(input: &Input) -> Vec<ActionKind> {
    match *input {
        Input::ComponentFailed { comp, .. } => vec![ActionKind::Record(Event::FaultIgnored {
            entity: EntityRef::Comp(comp),
            reason: "probe",
        })],
        Input::Admin { request, op, .. } => vec![ActionKind::AdminReply {
            request,
            result: Err(AdminError {
                op,
                target: String::new(),
                reason: "probe".into(),
            }),
        }],
        _ => Vec::new(),
    }
}

fn run_scripted<F: FnMut(&mut Fake, Instant, Input) -> Vec<ActionKind>>(
    m: &Model,
    seed: u64,
    steps: u32,
    script: F,
) -> (RunStats, Option<Violation>) {
    let engine = Scripted {
        state: idle(m),
        script,
    };
    simulate(m, engine, seed, steps, Mode::Trace)
}

#[test]
fn a_polite_idle_engine_passes() {
    let m = model(
        3,
        &[(Redundancy::TwoN, 3, 2), (Redundancy::NoRedundancy, 2, 2)],
    );
    for seed in 0..20 {
        let (stats, v) = run_scripted(&m, seed, 200, |_, _, i| polite(&i));
        assert!(v.is_none(), "{}", v.unwrap());
        assert!(stats.injected >= 200 && stats.component_faults > 0 && stats.admin_ops > 0);
    }
}

#[test]
fn an_engine_ignoring_a_failure_is_caught_with_a_trace() {
    let m = two_n();
    let (_, v) = run_scripted(&m, 5, 200, |_, _, i| match i {
        Input::ComponentFailed { .. } => Vec::new(),
        i => polite(&i),
    });
    let v = v.expect("a violation");
    assert_eq!(v.invariant, invariants::FAULT_ANSWERED);
    let text = v.to_string();
    assert!(text.contains("nines sim --replay 5"), "{text}");
    assert!(text.contains("<- ComponentFailed a1/sg/su-"), "{text}");
    assert!(text.contains("injected ("), "{text}");
}

#[test]
fn unanswered_and_doubled_admin_requests_are_caught() {
    let m = two_n();
    let (_, v) = run_scripted(&m, 9, 200, |_, _, i| match i {
        Input::Admin { .. } => Vec::new(),
        i => polite(&i),
    });
    let v = v.expect("a violation");
    assert_eq!(v.invariant, invariants::ADMIN_REPLY);
    assert!(v.message.contains("never answered"), "{}", v.message);

    let (_, v) = run_scripted(&m, 9, 200, |_, _, i| {
        let mut a = polite(&i);
        a.extend(polite(&i));
        a
    });
    assert_eq!(v.expect("a violation").invariant, invariants::ADMIN_REPLY);
}

#[test]
fn an_engine_naming_unknown_entities_is_a_violation_not_a_crash() {
    let m = two_n();
    let (_, v) = run_scripted(&m, 1, 20, |_, _, i| {
        let mut out = polite(&i);
        if let Input::ComponentFailed { .. } = i {
            out.push(ActionKind::Instantiate {
                comp: CompId(99),
                urgent: true,
            });
        }
        out
    });
    let v = v.expect("a violation");
    assert_eq!(v.invariant, invariants::BAD_OUTPUT);
    let (_, v) = run_scripted(&m, 1, 20, |f, _, i| {
        if i == Input::Start {
            f.set(1, 7, HaState::Standby, true);
        }
        polite(&i)
    });
    assert_eq!(v.expect("a violation").invariant, invariants::BAD_OUTPUT);
}

#[test]
fn a_panicking_engine_is_a_violation_not_a_crash() {
    let m = two_n();
    let (_, v) = run_scripted(&m, 1, 50, |_, _, i| match i {
        Input::Admin { .. } => panic!("probe panic"),
        i => polite(&i),
    });
    let v = v.expect("a violation");
    assert_eq!(v.invariant, invariants::ENGINE_PANIC);
    assert!(v.message.contains("probe panic"));
}

#[test]
fn a_double_active_engine_is_caught_at_once() {
    let m = two_n();
    let (_, v) = run_scripted(&m, 1, 50, |f, _, i| {
        if i == Input::Start {
            f.readiness = vec![Readiness::InService; 2];
            f.set(0, 0, HaState::Active, false)
                .set(0, 1, HaState::Active, false);
        }
        polite(&i)
    });
    let v = v.expect("a violation");
    assert_eq!((v.invariant, v.step), (invariants::ONE_ACTIVE, 1));
}

#[test]
fn an_engine_that_never_assigns_is_caught_when_quiet() {
    let m = two_n();
    let (_, v) = run_scripted(&m, 1, 50, |f, _, i| {
        if i == Input::Start {
            f.readiness = vec![Readiness::InService; 2];
        }
        polite(&i)
    });
    assert_eq!(
        v.expect("a violation").invariant,
        invariants::SETTLED_ASSIGNED
    );
}

#[test]
fn a_lost_fault_recovery_is_caught_at_the_end() {
    let m = two_n();
    let mut next_fault = 0;
    let (_, v) = run_scripted(&m, 3, 100, |_, _, i| match i {
        Input::ComponentFailed { comp, .. } => {
            next_fault += 1;
            vec![ActionKind::Record(Event::FaultDetected {
                fault: next_fault,
                entity: EntityRef::Comp(comp),
                kind: None,
                recovery: RecoveryStep::ComponentRestart,
                affected: Vec::new(),
            })]
        }
        i => polite(&i),
    });
    assert_eq!(
        v.expect("a violation").invariant,
        invariants::FAULT_RECOVERED
    );
}

/// The world's own rules, seen from inside an engine: answers come in issue order per
/// component, nothing issued before a node's death is answered after it, timers fire on time,
/// quiescing completes after its assignment is confirmed.
#[test]
fn the_world_keeps_its_own_rules() {
    let m = model(3, &[(Redundancy::TwoN, 3, 2), (Redundancy::NWay, 3, 2)]);
    for seed in 0..30 {
        let mm = &m;
        // Per component: outstanding answers in issue order ("i" instantiate, "q" quiescing
        // assignment, "c" quiescing complete).
        let mut expect: Vec<std::collections::VecDeque<char>> =
            vec![Default::default(); mm.comps.len()];
        let mut down = vec![false; mm.nodes.len()];
        let mut timers: Vec<(Timer, Instant)> = Vec::new();
        let mut n = 0u64;
        let (stats, v) = run_scripted(mm, seed, 150, |_, now, i| {
            n += 1;
            let node_of = |c: CompId| mm.sus[mm.comps[c.index()].su.index()].node;
            let mut out = polite(&i);
            match i {
                Input::NodeDown { node } | Input::FenceDone { node, .. } => {
                    down[node.index()] = true;
                    for (c, q) in expect.iter_mut().enumerate() {
                        if node_of(CompId(c as u32)) == node {
                            q.clear();
                        }
                    }
                }
                Input::NodeUp { node } => down[node.index()] = false,
                Input::CommandDone {
                    comp,
                    command: Command::Instantiate,
                    ..
                } => assert_eq!(expect[comp.index()].pop_front(), Some('i'), "seed {seed}"),
                Input::CsiAssigned { comp, outcome, .. } => {
                    assert_eq!(expect[comp.index()].pop_front(), Some('q'), "seed {seed}");
                    if outcome != Outcome::Ok {
                        // No completion follows a failed quiescing assignment.
                        assert_eq!(expect[comp.index()].pop_front(), Some('c'));
                    }
                }
                Input::QuiescingComplete { comp, .. } => {
                    assert_eq!(expect[comp.index()].pop_front(), Some('c'), "seed {seed}")
                }
                Input::TimerFired { timer } => {
                    let p = timers
                        .iter()
                        .position(|t| t.0 == timer)
                        .expect("a timer we set");
                    assert_eq!(timers.remove(p).1, now, "seed {seed}");
                }
                _ => {}
            }
            // Issue something on every input (for a while: an engine that always has more to
            // do is a livelock, which the world reports).
            let comp = CompId((n % mm.comps.len() as u64) as u32);
            let node = node_of(comp);
            if n > 3000 {
                return out;
            }
            if !down[node.index()] {
                if n % 3 == 0 {
                    expect[comp.index()].push_back('q');
                    expect[comp.index()].push_back('c');
                    out.push(ActionKind::AssignCsi {
                        comp,
                        csi: CsiId(0),
                        ha_state: HaState::Quiescing,
                    });
                } else {
                    expect[comp.index()].push_back('i');
                    out.push(ActionKind::Instantiate { comp, urgent: true });
                }
            }
            if n % 97 == 0 {
                // Fence: the world kills the node now; the engine counts it down from here.
                down[node.index()] = true;
                for (c, q) in expect.iter_mut().enumerate() {
                    if node_of(CompId(c as u32)) == node {
                        q.clear();
                    }
                }
                out.push(ActionKind::Fence { node });
            }
            if n % 11 == 0 {
                let timer = Timer::InstantiateRetry {
                    comp,
                    generation: n as u32,
                };
                let at = now + Duration::from_millis(n % 700);
                timers.push((timer, at));
                out.push(ActionKind::StartTimer { timer, at });
            }
            out
        });
        assert!(v.is_none(), "seed {seed}: {}", v.unwrap());
        assert!(
            stats.fences > 0 && stats.node_downs > 0 && stats.dropped_answers > 0,
            "{stats:?}"
        );
    }
}

/// An engine that forgets to answer failures of one component: some runs fail, most pass.
fn flaky(m: &Model) -> Scripted<impl FnMut(&mut Fake, Instant, Input) -> Vec<ActionKind>> {
    Scripted {
        state: idle(m),
        script: |_: &mut Fake, _: Instant, i: Input| match i {
            Input::ComponentFailed { comp, kind, .. }
                if comp == CompId(3) && kind == nines_engine::FaultKind::Exited =>
            {
                Vec::new()
            }
            i => polite(&i),
        },
    }
}

#[test]
fn many_runs_report_in_run_order_whatever_the_threads() {
    let m = Arc::new(model(
        3,
        &[(Redundancy::TwoN, 3, 2), (Redundancy::NWay, 3, 2)],
    ));
    let mut opts = SimOptions {
        seed: 4,
        runs: 60,
        steps: 30,
        threads: 1,
    };
    let make = |m: &Arc<Model>| flaky(m);
    let mut calls = Vec::new();
    let one = run_with(&m, &opts, &mut |d| calls.push(d), &make);
    assert_eq!(calls, (1..=60).collect::<Vec<u64>>());
    opts.threads = 2;
    let two = run_with(&m, &opts, &mut |_| {}, &make);
    opts.threads = 7;
    let seven = run_with(&m, &opts, &mut |_| {}, &make);
    assert_eq!(one, two);
    assert_eq!(one, seven);
    assert!(
        one.violations.len() > MAX_TRACED,
        "{} violations",
        one.violations.len()
    );
    assert!(one.violations.len() < 60);
    for (k, v) in one.violations.iter().enumerate() {
        assert_eq!(v.invariant, invariants::FAULT_ANSWERED);
        assert!(v.message.contains("a2/sg/su-1/comp"), "{}", v.message);
        // The first ones carry the trace a single replay of their seed gives.
        if k < MAX_TRACED {
            let (_, alone) = simulate(&m, flaky(&m), v.seed, 30, Mode::Trace);
            assert_eq!(alone.as_ref().map(|a| &a.trace), Some(&v.trace));
            assert!(v
                .trace
                .iter()
                .any(|l| l.contains("<- ComponentFailed a2/sg/su-1/comp exited")));
        } else {
            assert!(v.trace.is_empty());
        }
    }
}

// ---- the real engine -----------------------------------------------------------------------------

/// Every redundancy model once, on four nodes.
pub(crate) fn mixed() -> Model {
    model(
        4,
        &[
            (Redundancy::TwoN, 3, 2),
            (
                Redundancy::NPlusM {
                    active_sus: 2,
                    standby_sus: 1,
                },
                4,
                3,
            ),
            (Redundancy::NWay, 3, 3),
            (Redundancy::NWayActive, 3, 2),
            (Redundancy::NoRedundancy, 3, 2),
        ],
    )
}

/// The baseline every other finding stands on: without faults, the real engine brings every
/// redundancy model up and the world settles with every invariant holding.
#[test]
fn the_real_engine_starts_and_settles() {
    let m = Arc::new(mixed());
    for seed in 0..5 {
        let (stats, v) = simulate(
            &m,
            nines_engine::Engine::new(m.clone()),
            seed,
            0,
            Mode::Trace,
        );
        assert!(v.is_none(), "{}", v.unwrap());
        assert!(stats.settle_checks > 0 && stats.inputs > 20, "{stats:?}");
    }
}

/// The world's own split-brain check: two SUs whose components hold one SI active are caught,
/// whatever the engine believes; N-Way-Active SIs may be active everywhere.
#[test]
fn the_world_check_catches_two_sus_holding_one_exclusive_si_active() {
    let m = builtin();
    let find = |p: &str| match m.find(p) {
        Some(EntityRef::Comp(c)) => c,
        other => panic!("{p}: {other:?}"),
    };
    let csi = |p: &str| match m.find(p) {
        Some(EntityRef::Csi(c)) => c,
        other => panic!("{p}: {other:?}"),
    };
    let mut held = vec![Vec::new(); m.comps.len()];
    held[find("shop/db/db-1/postgres").index()].push((csi("shop/orders/data"), HaState::Active));
    assert!(check::check_world_actives(&m, &held).is_ok());
    held[find("shop/db/db-2/postgres").index()].push((csi("shop/orders/data"), HaState::Standby));
    assert!(check::check_world_actives(&m, &held).is_ok());
    held[find("shop/db/db-2/postgres").index()][0].1 = HaState::Active;
    let e = check::check_world_actives(&m, &held).expect_err("split brain");
    assert_eq!(e.invariant, check::WORLD_ONE_ACTIVE);
    assert!(e.message.contains("shop/orders"), "{}", e.message);
}

/// Driver restarts are injected and survived: the new engine resumes from what the running
/// components hold and every invariant keeps holding (two actives, assignments to out-of-service
/// SUs, faults never recovered would all be violations here).
#[test]
fn driver_restarts_are_injected_and_the_resumed_engine_keeps_every_invariant() {
    let m = builtin();
    let mut restarts = 0;
    for seed in 0..150 {
        let (stats, v) = simulate(
            &m,
            nines_engine::Engine::new(m.clone()),
            seed,
            200,
            Mode::Trace,
        );
        assert!(v.is_none(), "{}", v.unwrap());
        restarts += stats.driver_restarts;
    }
    assert!(
        restarts >= 20,
        "only {restarts} driver restarts in 150 runs"
    );
}

// ---- the real engine, deliberately broken from outside ---------------------------------------

fn builtin() -> Arc<Model> {
    Arc::new(
        nines_model::load(crate::builtin_config(), "<builtin>")
            .expect("the built-in config loads")
            .model,
    )
}

/// The real engine, with one SI's active assignments hidden from the checkers and/or one
/// component's CSI callbacks never delivered to the world.
struct Broken {
    inner: nines_engine::Engine,
    hide_active_of: Option<SiId>,
    swallow_assign_to: Option<CompId>,
}

impl StateView for Broken {
    fn assignments(&self, si: SiId) -> Vec<AssignmentView> {
        let mut v = self.inner.assignments(si);
        if Some(si) == self.hide_active_of {
            v.retain(|a| a.ha_state != HaState::Active);
        }
        v
    }
    fn su_readiness(&self, su: SuId) -> Readiness {
        self.inner.su_readiness(su)
    }
    fn su_oper(&self, su: SuId) -> OperState {
        self.inner.su_oper(su)
    }
    fn node_up(&self, node: NodeId) -> bool {
        self.inner.node_up(node)
    }
    fn admin_state(&self, entity: EntityRef) -> Option<AdminState> {
        self.inner.admin_state(entity)
    }
    fn su_escalation(&self, su: SuId) -> (u32, u32) {
        self.inner.su_escalation(su)
    }
    fn node_escalation(&self, node: NodeId) -> u32 {
        self.inner.node_escalation(node)
    }
    fn comp_presence(&self, comp: CompId) -> Presence {
        self.inner.comp_presence(comp)
    }
}

impl SimEngine for Broken {
    fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = self.inner.handle(now, input);
        if let Some(c) = self.swallow_assign_to {
            out.retain(|a| !matches!(a.kind, ActionKind::AssignCsi { comp, .. } if comp == c));
        }
        out
    }
}

/// Whatever the redundancy model, an SI whose active vanished while an SU of its SG could
/// hold it is caught once the world is quiet: the "could take" rules agree with the states the
/// real engine produces (a check that is too strict about capacity would excuse these).
#[test]
fn a_vanished_active_is_caught_in_every_redundancy_model() {
    let m = builtin();
    for g in &m.sgs {
        let si = g.sis[0];
        let engine = Broken {
            inner: nines_engine::Engine::new(m.clone()),
            hide_active_of: Some(si),
            swallow_assign_to: None,
        };
        let (_, v) = simulate(&m, engine, 1, 0, Mode::Trace);
        let v = v.unwrap_or_else(|| panic!("{}: no violation", g.path));
        assert_eq!(v.invariant, invariants::SETTLED_ASSIGNED, "{}: {v}", g.path);
        assert!(
            v.message.starts_with(&m.sis[si.index()].path),
            "{}",
            v.message
        );
    }
}

/// A callback the world never hears of leaves the real engine waiting: caught when quiet.
#[test]
fn a_lost_callback_is_caught_as_stuck() {
    let m = builtin();
    let engine = Broken {
        inner: nines_engine::Engine::new(m.clone()),
        hide_active_of: None,
        swallow_assign_to: Some(m.sus[m.sgs[0].sus[0].index()].comps[0]),
    };
    let (_, v) = simulate(&m, engine, 1, 0, Mode::Trace);
    let v = v.expect("a violation");
    assert_eq!(v.invariant, invariants::SETTLED_STUCK, "{v}");
}
