//! Every recommended recovery kind carried out: node switchover, node failover, node failfast,
//! application restart and cluster reset.

mod support;

use nines_engine::{Command, Event, HaState, RecoveryStep};
use nines_model::Recovery;
use support::World;

const CONFIG: &str = r#"
cluster: t
nodes: [n1, n2]
apps:
  app:
    sgs:
      a:
        redundancy: 2n
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
        components:
          c: { kind: sa-aware, instantiate: [/bin/true] }
      b:
        redundancy: 2n
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
        components:
          c: { kind: sa-aware, instantiate: [/bin/true] }
    sis:
      sa: { sg: a, csis: { x: { component: c } } }
      sb: { sg: b, csis: { x: { component: c } } }
  other:
    sgs:
      g:
        redundancy: 2n
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
        components:
          c: { kind: sa-aware, instantiate: [/bin/true] }
    sis:
      s: { sg: g, csis: { x: { component: c } } }
"#;

fn step_of(w: &World) -> RecoveryStep {
    w.events()
        .find_map(|e| match e {
            Event::FaultDetected { recovery, .. } => Some(*recovery),
            _ => None,
        })
        .expect("a fault was detected")
}

#[test]
fn node_switchover_fails_over_the_faulty_su_and_gracefully_moves_the_rest_of_the_node() {
    let mut w = World::start(CONFIG);
    w.report("app/a/su-1/c", Recovery::NodeSwitchover);
    assert_eq!(step_of(&w), RecoveryStep::NodeSwitchover);
    assert_eq!(w.active("app/sa"), ["app/a/su-2"]);
    assert_eq!(w.active("app/sb"), ["app/b/su-2"]);
    assert_eq!(w.active("other/s"), ["other/g/su-2"]);
    // The faulty SU was cleaned up; the healthy ones on the node were not, only quiesced.
    assert_eq!(w.commands("app/a/su-1/c", Command::Cleanup), 1);
    assert_eq!(w.commands("app/b/su-1/c", Command::Cleanup), 0);
    assert_eq!(
        w.requested("app/b/su-1/c"),
        [HaState::Active, HaState::Quiesced, HaState::Standby]
    );
    w.assert_never_two_actives();
}

#[test]
fn node_failover_fails_over_every_su_of_the_node() {
    let mut w = World::start(CONFIG);
    w.report("app/a/su-1/c", Recovery::NodeFailover);
    assert_eq!(step_of(&w), RecoveryStep::NodeFailover);
    for (si, su) in [
        ("app/sa", "app/a/su-2"),
        ("app/sb", "app/b/su-2"),
        ("other/s", "other/g/su-2"),
    ] {
        assert_eq!(w.active(si), [su]);
    }
    for c in ["app/a/su-1/c", "app/b/su-1/c", "other/g/su-1/c"] {
        assert_eq!(w.commands(c, Command::Cleanup), 1, "{c} isolated");
        assert_eq!(w.commands(c, Command::Instantiate), 2, "{c} repaired");
    }
    w.assert_never_two_actives();
}

#[test]
fn application_restart_restarts_every_su_of_the_application_only() {
    let mut w = World::start(CONFIG);
    w.report("app/a/su-1/c", Recovery::ApplicationRestart);
    assert_eq!(step_of(&w), RecoveryStep::ApplicationRestart);
    for c in [
        "app/a/su-1/c",
        "app/a/su-2/c",
        "app/b/su-1/c",
        "app/b/su-2/c",
    ] {
        assert_eq!(w.commands(c, Command::Instantiate), 2, "{c} restarted");
    }
    assert_eq!(
        w.commands("other/g/su-1/c", Command::Instantiate),
        1,
        "other app untouched"
    );
    assert_eq!(
        w.active("app/sa"),
        ["app/a/su-1"],
        "reassigned by rank after the restart"
    );
    assert_eq!(w.standby("app/sa"), ["app/a/su-2"]);
    w.assert_never_two_actives();
}

#[test]
fn cluster_reset_restarts_everything() {
    let mut w = World::start(CONFIG);
    w.report("app/a/su-1/c", Recovery::ClusterReset);
    assert_eq!(step_of(&w), RecoveryStep::ClusterReset);
    for c in [
        "app/a/su-2/c",
        "app/b/su-1/c",
        "other/g/su-1/c",
        "other/g/su-2/c",
    ] {
        assert_eq!(w.commands(c, Command::Instantiate), 2, "{c} restarted");
    }
    assert_eq!(w.active("other/s"), ["other/g/su-1"]);
    assert!(w
        .events()
        .any(|e| matches!(e, Event::ServiceRecovered { .. })));
}
