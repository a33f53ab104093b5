//! Instantiation failures: immediate retries, then delayed retries, then instantiation-failed.

mod support;

use nines_engine::{ActionKind, Input, OperState, Presence};
use support::{ms, World};

const CONFIG: &str = r#"
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
          c:
            kind: process
            instantiate: [/bin/true]
            instantiation: { retries: 2, delayed_retries: 2, retry_delay: 5s }
    sis:
      si: { sg: sg, csis: { x: { component: c } } }
"#;

fn attempts(w: &World, path: &str) -> usize {
    let c = w.comp(path);
    w.count(|k| matches!(k, ActionKind::Instantiate { comp, .. } if *comp == c))
}

#[test]
fn retries_immediately_then_with_delay_then_gives_up() {
    let mut w = World::new(CONFIG);
    let c1 = w.comp("app/sg/su-1/c");
    w.failing.insert(c1);
    w.feed(Input::Start);
    assert_eq!(
        attempts(&w, "app/sg/su-1/c"),
        3,
        "first try + 2 immediate retries"
    );
    assert_eq!(
        w.active("app/si"),
        ["app/sg/su-2"],
        "the other SU serves meanwhile"
    );
    w.advance(ms(4_900));
    assert_eq!(
        attempts(&w, "app/sg/su-1/c"),
        3,
        "delayed retry not yet due"
    );
    w.advance(ms(200));
    assert_eq!(attempts(&w, "app/sg/su-1/c"), 4);
    w.advance(ms(5_000));
    assert_eq!(attempts(&w, "app/sg/su-1/c"), 5);
    w.advance(ms(60_000));
    assert_eq!(
        attempts(&w, "app/sg/su-1/c"),
        5,
        "no more after the delayed retries"
    );
    assert_eq!(w.engine.comp_presence(c1), Presence::InstantiationFailed);
    assert_eq!(w.engine.su_oper(w.su("app/sg/su-1")), OperState::Disabled);
    // Every failed attempt was cleaned up before the next.
    let cleanups = w.count(|k| matches!(k, ActionKind::Cleanup { comp } if *comp == c1));
    assert_eq!(cleanups, 5);
}

#[test]
fn a_delayed_retry_that_succeeds_brings_the_su_into_service() {
    let mut w = World::new(CONFIG);
    let c1 = w.comp("app/sg/su-1/c");
    w.failing.insert(c1);
    w.feed(Input::Start);
    w.failing.clear();
    w.advance(ms(5_000));
    assert_eq!(w.engine.comp_presence(c1), Presence::Instantiated);
    assert_eq!(w.standby("app/si"), ["app/sg/su-1"]);
}
