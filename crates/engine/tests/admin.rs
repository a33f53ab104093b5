//! Admin operations on every kind of entity, and their refusals.

mod support;

use nines_engine::{ActionKind, AdminOp, AdminState, HaState, Presence, Readiness};
use support::World;

const CONFIG: &str = r#"
cluster: t
nodes: [n1, n2, n3]
apps:
  app:
    sgs:
      sg:
        redundancy: 2n
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
          su-3: { node: n3, rank: 3 }
        components:
          c: { kind: sa-aware, instantiate: [/bin/true] }
    sis:
      si: { sg: sg, csis: { x: { component: c } } }
"#;

#[test]
fn lock_moves_the_work_gracefully_and_unlock_brings_the_su_back() {
    let mut w = World::start(CONFIG);
    w.adm(AdminOp::Lock, "app/sg/su-1").expect("lock");
    assert_eq!(w.active("app/si"), ["app/sg/su-2"]);
    assert_eq!(w.standby("app/si"), ["app/sg/su-3"]);
    assert_eq!(
        w.requested("app/sg/su-1/c"),
        [HaState::Active, HaState::Quiesced],
        "quiesced before the standby took over"
    );
    let su1 = w.su("app/sg/su-1");
    assert_eq!(w.engine.su_readiness(su1), Readiness::OutOfService);
    assert_eq!(
        w.engine.comp_presence(w.comp("app/sg/su-1/c")),
        Presence::Instantiated
    );
    w.adm(AdminOp::Unlock, "app/sg/su-1").expect("unlock");
    assert_eq!(w.engine.su_readiness(su1), Readiness::InService);
    assert_eq!(
        w.active("app/si"),
        ["app/sg/su-2"],
        "no fail-back configured"
    );
    w.assert_never_two_actives();
}

#[test]
fn shutdown_quiesces_gracefully_and_ends_locked() {
    let mut w = World::start(CONFIG);
    w.adm(AdminOp::Shutdown, "app/sg/su-1").expect("shutdown");
    assert_eq!(
        w.requested("app/sg/su-1/c"),
        [HaState::Active, HaState::Quiescing]
    );
    assert_eq!(w.active("app/si"), ["app/sg/su-2"]);
    let su1 = w.entity("app/sg/su-1");
    assert_eq!(w.engine.admin_state(su1), Some(AdminState::Locked));
}

#[test]
fn shutdown_waits_for_quiescing_complete() {
    let mut w = World::start(CONFIG);
    w.complete_quiescing = false;
    w.adm(AdminOp::Shutdown, "app/sg/su-1").expect("shutdown");
    assert!(
        w.active("app/si").is_empty(),
        "nobody active while quiescing"
    );
    let su1 = w.entity("app/sg/su-1");
    assert_eq!(w.engine.admin_state(su1), Some(AdminState::ShuttingDown));
    let comp = w.comp("app/sg/su-1/c");
    let csi = w.model.sis[w.si("app/si").index()].csis[0];
    w.feed(nines_engine::Input::QuiescingComplete { comp, csi });
    assert_eq!(w.active("app/si"), ["app/sg/su-2"]);
    assert_eq!(w.engine.admin_state(su1), Some(AdminState::Locked));
}

#[test]
fn lock_instantiation_terminates_and_unlock_instantiation_starts_again() {
    let mut w = World::start(CONFIG);
    let c3 = w.comp("app/sg/su-3/c");
    let err = w
        .adm(AdminOp::LockInstantiation, "app/sg/su-3")
        .unwrap_err();
    assert!(err.reason.contains("must be locked"), "{err}");
    w.adm(AdminOp::Lock, "app/sg/su-3").expect("lock");
    w.adm(AdminOp::LockInstantiation, "app/sg/su-3")
        .expect("lock-in");
    assert_eq!(w.engine.comp_presence(c3), Presence::Uninstantiated);
    assert!(w.count(|k| matches!(k, ActionKind::Terminate { comp } if *comp == c3)) == 1);
    w.adm(AdminOp::UnlockInstantiation, "app/sg/su-3")
        .expect("unlock-in");
    assert_eq!(w.engine.comp_presence(c3), Presence::Instantiated);
    let su3 = w.entity("app/sg/su-3");
    assert_eq!(w.engine.admin_state(su3), Some(AdminState::Locked));
}

#[test]
fn switchover_swaps_active_and_standby_through_quiesced() {
    let mut w = World::start(CONFIG);
    w.adm(AdminOp::Switchover, "app/si").expect("switchover");
    assert_eq!(w.active("app/si"), ["app/sg/su-2"]);
    assert_eq!(w.standby("app/si"), ["app/sg/su-1"]);
    assert_eq!(
        w.requested("app/sg/su-1/c"),
        [HaState::Active, HaState::Quiesced, HaState::Standby]
    );
    w.assert_never_two_actives();
}

#[test]
fn restart_restarts_gracefully_and_keeps_the_assignment() {
    let mut w = World::start(CONFIG);
    let c1 = w.comp("app/sg/su-1/c");
    w.adm(AdminOp::Restart, "app/sg/su-1").expect("restart");
    assert_eq!(
        w.count(|k| matches!(k, ActionKind::Terminate { comp } if *comp == c1)),
        1
    );
    assert_eq!(
        w.count(|k| matches!(k, ActionKind::Instantiate { comp, .. } if *comp == c1)),
        2
    );
    assert_eq!(w.active("app/si"), ["app/sg/su-1"]);
}

#[test]
fn repaired_brings_back_an_su_that_failed_to_instantiate() {
    let mut w = World::new(CONFIG);
    let c3 = w.comp("app/sg/su-3/c");
    w.failing.insert(c3);
    w.feed(nines_engine::Input::Start);
    w.advance(support::ms(60_000));
    assert_eq!(w.engine.comp_presence(c3), Presence::InstantiationFailed);
    w.failing.clear();
    w.adm(AdminOp::Repaired, "app/sg/su-3").expect("repaired");
    assert_eq!(w.engine.comp_presence(c3), Presence::Instantiated);
    let err = w.adm(AdminOp::Repaired, "app/sg/su-3").unwrap_err();
    assert!(err.reason.contains("nothing is disabled"), "{err}");
}

#[test]
fn node_and_sg_locks_move_everything_under_them() {
    let mut w = World::start(CONFIG);
    w.adm(AdminOp::Lock, "node/n1").expect("lock node");
    assert_eq!(w.active("app/si"), ["app/sg/su-2"]);
    w.adm(AdminOp::Lock, "app/sg").expect("lock sg");
    assert!(w.active("app/si").is_empty());
    assert!(w.standby("app/si").is_empty());
    w.adm(AdminOp::Unlock, "app/sg").expect("unlock sg");
    assert_eq!(w.active("app/si"), ["app/sg/su-2"]);
    w.assert_never_two_actives();
}

#[test]
fn si_lock_removes_its_assignments_and_unlock_restores_them() {
    let mut w = World::start(CONFIG);
    w.adm(AdminOp::Lock, "app/si").expect("lock si");
    assert!(w.engine.assignments(w.si("app/si")).is_empty());
    w.adm(AdminOp::Unlock, "app/si").expect("unlock si");
    assert_eq!(w.active("app/si"), ["app/sg/su-1"]);
}

#[test]
fn invalid_operations_are_refused_with_a_reason() {
    let mut w = World::start(CONFIG);
    let cases = [
        (
            AdminOp::Unlock,
            "app/sg/su-1",
            "it is unlocked, must be locked",
        ),
        (AdminOp::LockInstantiation, "app/si", "an SI supports"),
        (AdminOp::Restart, "app/si", "an SI supports"),
        (AdminOp::Lock, "app/si/x", "CSIs have no admin operations"),
        (
            AdminOp::Lock,
            "app/sg/su-1/c",
            "components only support restart",
        ),
        (AdminOp::Switchover, "app/sg", "switchover applies to an SI"),
        (
            AdminOp::UnlockInstantiation,
            "cluster",
            "must be locked-instantiation",
        ),
    ];
    for (op, path, reason) in cases {
        let err = w.adm(op, path).expect_err(path);
        assert!(err.reason.contains(reason), "{op:?} {path}: {err}");
        assert_eq!(err.target, path);
    }
    // Nothing moved.
    assert_eq!(w.active("app/si"), ["app/sg/su-1"]);
}

#[test]
fn switchover_without_a_standby_is_refused() {
    let mut w = World::start(CONFIG);
    w.adm(AdminOp::Lock, "app/sg/su-2").expect("lock");
    w.adm(AdminOp::Lock, "app/sg/su-3").expect("lock");
    let err = w.adm(AdminOp::Switchover, "app/si").unwrap_err();
    assert!(err.reason.contains("standby"), "{err}");
}

const TWO_COMPONENTS: &str = r#"
cluster: t
nodes: [n1, n2]
apps:
  app:
    sgs:
      sg:
        redundancy: 2n
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
        components:
          c: { kind: sa-aware, instantiate: [/bin/true], recovery: restart }
          d: { kind: sa-aware, instantiate: [/bin/true], recovery: restart }
    sis:
      si: { sg: sg, csis: { x: { component: c }, y: { component: d } } }
"#;

#[test]
fn a_component_restarting_while_its_su_quiesces_does_not_stall_the_shutdown() {
    // Found by the simulator: one component's restart flipped the whole SU's assignment to
    // quiesced, so the other component's quiescing answer was taken as stale and the
    // assignment never confirmed (or, with other timings, su-2 was promoted while c was still
    // finishing its in-flight work).
    let mut w = World::start(TWO_COMPONENTS);
    w.auto = false;
    w.complete_quiescing = false;
    w.adm(AdminOp::Shutdown, "app/sg/su-1").expect("shutdown");
    let c = w.comp("app/sg/su-1/c");
    let held = w
        .queue
        .iter()
        .position(|i| matches!(i, nines_engine::Input::CsiAssigned { comp, .. } if *comp == c))
        .expect("c's quiescing answer is queued");
    let c_answer = w.queue.remove(held).expect("present");
    w.run(); // d's quiescing answer
    w.kill("app/sg/su-1/d"); // d restarts mid-quiesce
    w.run();
    assert!(
        w.active("app/si").is_empty(),
        "su-2 must not become active while c is still quiescing"
    );
    w.feed(c_answer);
    w.run();
    let csi = w.model.sis[w.si("app/si").index()].csis[0];
    w.feed(nines_engine::Input::QuiescingComplete { comp: c, csi });
    w.run();
    assert_eq!(w.active("app/si"), ["app/sg/su-2"], "shutdown finished");
    let su1 = w.entity("app/sg/su-1");
    assert_eq!(w.engine.admin_state(su1), Some(AdminState::Locked));
    w.assert_never_two_actives();
}

#[test]
fn lock_instantiation_during_a_component_restart_does_not_leave_the_su_busy() {
    // Found by the simulator: the restarting flag survived the cleanup of a component whose SU
    // was meanwhile locked for instantiation, so the SI's quiesced leftover on that SU blocked
    // the promotion of its standby forever.
    let mut w = World::start(TWO_COMPONENTS);
    w.auto = false;
    w.kill("app/sg/su-1/d"); // restart in place; cleanup not answered yet
    w.adm(AdminOp::Lock, "app/sg/su-1").expect("lock");
    w.adm(AdminOp::LockInstantiation, "app/sg/su-1")
        .expect("lock-in");
    w.run();
    assert_eq!(w.active("app/si"), ["app/sg/su-2"]);
    for c in ["app/sg/su-1/c", "app/sg/su-1/d"] {
        assert_eq!(
            w.engine.comp_presence(w.comp(c)),
            Presence::Uninstantiated,
            "{c}"
        );
    }
    assert!(w
        .engine
        .assignments(w.si("app/si"))
        .iter()
        .all(|a| a.su != w.su("app/sg/su-1")));
}
