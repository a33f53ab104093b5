//! Escalation: component restart → SU restart → SU failover → node failover.

mod support;

use nines_engine::{Event, RecoveryStep};
use support::{ms, World};

const CONFIG: &str = r#"
cluster: t
nodes: [n1, n2]
apps:
  app:
    sgs:
      sg:
        redundancy: 2n
        escalation: { comp_restart: { max: 2, within: 10s }, su_restart: { max: 1, within: 30s } }
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
        components:
          c: { kind: sa-aware, instantiate: [/bin/true], recovery: restart }
    sis:
      si: { sg: sg, csis: { x: { component: c } } }
"#;

fn steps(w: &World) -> Vec<RecoveryStep> {
    w.events()
        .filter_map(|e| match e {
            Event::FaultDetected { recovery, .. } => Some(*recovery),
            _ => None,
        })
        .collect()
}

#[test]
fn repeated_failures_climb_the_ladder_inside_the_windows() {
    let mut w = World::start(CONFIG);
    for _ in 0..4 {
        w.kill("app/sg/su-1/c");
        w.advance(ms(100));
    }
    use RecoveryStep::*;
    assert_eq!(
        steps(&w),
        [ComponentRestart, ComponentRestart, SuRestart, SuFailover]
    );
    assert!(w.events().any(|e| matches!(
        e,
        Event::Escalated {
            from: ComponentRestart,
            to: SuFailover,
            ..
        }
    )));
    assert_eq!(w.active("app/si"), ["app/sg/su-2"]);
    w.assert_never_two_actives();
}

#[test]
fn failures_outside_the_window_do_not_escalate() {
    let mut w = World::start(CONFIG);
    for _ in 0..5 {
        w.kill("app/sg/su-1/c");
        w.advance(ms(11_000));
    }
    assert!(steps(&w)
        .iter()
        .all(|s| *s == RecoveryStep::ComponentRestart));
    assert_eq!(w.active("app/si"), ["app/sg/su-1"]);
}

#[test]
fn su_failovers_on_a_node_escalate_to_node_failover() {
    let cfg = CONFIG
        .replace(
            "nodes: [n1, n2]",
            "nodes: { n1: { escalation: { su_failover: { max: 1, within: 1m } } }, n2: {} }",
        )
        .replace("recovery: restart", "recovery: failover")
        .replace(
            "su-2: { node: n2, rank: 2 }",
            "su-2: { node: n2, rank: 2 }\n          su-3: { node: n1, rank: 3 }",
        );
    let mut w = World::start(&cfg);
    // su-1 (n1) fails over: the first SU failover on n1 is admitted.
    w.kill("app/sg/su-1/c");
    assert_eq!(w.engine.node_escalation(w.node("node/n1")), 1);
    // su-3 (also n1) now fails: the second within the window escalates to node failover.
    w.kill("app/sg/su-3/c");
    use RecoveryStep::*;
    assert_eq!(steps(&w), [SuFailover, NodeFailover]);
    assert_eq!(
        w.engine.node_escalation(w.node("node/n1")),
        0,
        "count restarts"
    );
    assert_eq!(w.active("app/si"), ["app/sg/su-2"]);
}

#[test]
fn counters_never_exceed_their_max() {
    let mut w = World::start(CONFIG);
    let su = w.su("app/sg/su-1");
    for _ in 0..20 {
        w.kill("app/sg/su-1/c");
        let (c, s) = w.engine.su_escalation(su);
        assert!(c <= 2 && s <= 1, "comp {c} su {s}");
        w.advance(ms(10));
    }
}
