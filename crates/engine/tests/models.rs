//! N+M, N-Way, N-Way-Active and No-Redundancy: assignment and failover.

mod support;

use support::World;

const N_PLUS_M: &str = r#"
cluster: t
nodes: [n1, n2, n3, n4]
apps:
  app:
    sgs:
      sg:
        redundancy: n+m
        active_sus: 3
        standby_sus: 1
        max_active_sis_per_su: 1
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
          su-3: { node: n3, rank: 3 }
          su-4: { node: n4, rank: 4 }
        components:
          c: { kind: sa-aware, instantiate: [/bin/true] }
    sis:
      a: { sg: sg, rank: 1, csis: { x: { component: c } } }
      b: { sg: sg, rank: 2, csis: { x: { component: c } } }
      c: { sg: sg, rank: 3, csis: { x: { component: c } } }
"#;

#[test]
fn n_plus_m_spreads_actives_over_n_sus_and_standbys_on_the_spare() {
    let w = World::start(N_PLUS_M);
    assert_eq!(w.active("app/a"), ["app/sg/su-1"]);
    assert_eq!(w.active("app/b"), ["app/sg/su-2"]);
    assert_eq!(w.active("app/c"), ["app/sg/su-3"]);
    for si in ["app/a", "app/b", "app/c"] {
        assert_eq!(w.standby(si), ["app/sg/su-4"], "{si}");
    }
}

#[test]
fn n_plus_m_failover_moves_the_si_to_its_standby_su() {
    let mut w = World::start(N_PLUS_M);
    w.kill("app/sg/su-2/c");
    assert_eq!(w.active("app/b"), ["app/sg/su-4"]);
    assert_eq!(w.active("app/a"), ["app/sg/su-1"], "others untouched");
    assert_eq!(w.active("app/c"), ["app/sg/su-3"]);
    // su-4 now holds an active: in N+M it cannot also be standby for a and c; su-2 took that
    // role after its repair.
    assert_eq!(w.standby("app/a"), ["app/sg/su-2"]);
    w.assert_never_two_actives();
}

const N_WAY: &str = r#"
cluster: t
nodes: [n1, n2, n3]
apps:
  app:
    sgs:
      sg:
        redundancy: n-way
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
          su-3: { node: n3, rank: 3 }
        components:
          c: { kind: sa-aware, instantiate: [/bin/true] }
    sis:
      a: { sg: sg, rank: 1, standbys: 2, csis: { x: { component: c } } }
"#;

#[test]
fn n_way_gives_an_si_one_active_and_its_preferred_standbys() {
    let mut w = World::start(N_WAY);
    assert_eq!(w.active("app/a"), ["app/sg/su-1"]);
    assert_eq!(w.standby("app/a"), ["app/sg/su-2", "app/sg/su-3"]);
    w.kill("app/sg/su-1/c");
    assert_eq!(
        w.active("app/a"),
        ["app/sg/su-2"],
        "best-ranked standby promoted"
    );
    assert_eq!(w.standby("app/a"), ["app/sg/su-1", "app/sg/su-3"]);
    w.assert_never_two_actives();
}

const N_WAY_ACTIVE: &str = r#"
cluster: t
nodes: [n1, n2, n3]
apps:
  app:
    sgs:
      sg:
        redundancy: n-way-active
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
          su-3: { node: n3, rank: 3 }
        components:
          c: { kind: process, instantiate: [/bin/true] }
    sis:
      web: { sg: sg, active: 3, csis: { x: { component: c } } }
"#;

#[test]
fn n_way_active_keeps_the_si_active_everywhere_it_can() {
    let mut w = World::start(N_WAY_ACTIVE);
    assert_eq!(w.active("app/web").len(), 3);
    w.auto = false;
    w.kill("app/sg/su-2/c");
    assert_eq!(
        w.active("app/web"),
        ["app/sg/su-1", "app/sg/su-3"],
        "the others keep serving during the repair"
    );
    w.run();
    assert_eq!(w.active("app/web").len(), 3, "repaired SU active again");
}

const NO_REDUNDANCY: &str = r#"
cluster: t
nodes: [n1, n2, n3]
apps:
  app:
    sgs:
      sg:
        redundancy: no-redundancy
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
          su-3: { node: n3, rank: 3 }
        components:
          c: { kind: process, instantiate: [/bin/true] }
    sis:
      a: { sg: sg, rank: 1, csis: { x: { component: c } } }
      b: { sg: sg, rank: 2, csis: { x: { component: c } } }
"#;

#[test]
fn no_redundancy_puts_one_si_per_su_and_moves_it_to_a_spare() {
    let mut w = World::start(NO_REDUNDANCY);
    assert_eq!(w.active("app/a"), ["app/sg/su-1"]);
    assert_eq!(w.active("app/b"), ["app/sg/su-2"]);
    assert!(w.standby("app/a").is_empty());
    w.kill("app/sg/su-1/c");
    assert_eq!(w.active("app/a"), ["app/sg/su-3"], "moved to the spare");
    assert_eq!(w.active("app/b"), ["app/sg/su-2"]);
}

#[test]
fn no_redundancy_serves_the_higher_ranked_si_first_when_short_of_sus() {
    let cfg = NO_REDUNDANCY.replace("          su-3: { node: n3, rank: 3 }\n", "");
    let mut w = World::start(&cfg);
    let n2 = w.node("node/n2");
    w.feed(nines_engine::Input::NodeDown { node: n2 });
    // Only su-1 is left; it keeps serving a (rank 1); b waits.
    assert_eq!(w.active("app/a"), ["app/sg/su-1"]);
    assert!(w.active("app/b").is_empty());
    let n1 = w.node("node/n1");
    w.feed(nines_engine::Input::NodeDown { node: n1 });
    w.feed(nines_engine::Input::NodeUp { node: n2 });
    assert_eq!(
        w.active("app/a"),
        ["app/sg/su-2"],
        "rank 1 takes the only SU"
    );
    assert!(w.active("app/b").is_empty());
}

#[test]
fn n_way_active_si_lock_during_an_su_shutdown_removes_every_assignment() {
    // Found by the simulator: removing the remaining actives of a locked N-Way-Active SI needs
    // no answer, so nothing woke the next step and the quiesced leftover stayed forever.
    let mut w = World::start(N_WAY_ACTIVE);
    w.complete_quiescing = false;
    w.adm(nines_engine::AdminOp::Shutdown, "app/sg/su-2")
        .expect("shutdown");
    w.adm(nines_engine::AdminOp::Lock, "app/web")
        .expect("lock si");
    let comp = w.comp("app/sg/su-2/c");
    let csi = w.model.sis[w.si("app/web").index()].csis[0];
    w.feed(nines_engine::Input::QuiescingComplete { comp, csi });
    assert!(
        w.engine.assignments(w.si("app/web")).is_empty(),
        "{:?}",
        w.engine.assignments(w.si("app/web"))
    );
    let su2 = w.entity("app/sg/su-2");
    assert_eq!(
        w.engine.admin_state(su2),
        Some(nines_engine::AdminState::Locked),
        "the shutdown finished"
    );
}
