//! SI dependencies: a dependent is assigned only after its sponsor, and removed when the
//! sponsor stays unassigned past the tolerance time.

mod support;

use nines_engine::{ActionKind, AdminOp, HaState};
use support::{ms, World};

const CONFIG: &str = r#"
cluster: t
nodes: [n1, n2]
apps:
  app:
    sgs:
      db:
        redundancy: 2n
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
        components:
          c: { kind: sa-aware, instantiate: [/bin/true] }
      web:
        redundancy: 2n
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
        components:
          c: { kind: sa-aware, instantiate: [/bin/true] }
    sis:
      data: { sg: db, csis: { x: { component: c } } }
      front: { sg: web, depends_on: { data: { tolerance: 2s } }, csis: { x: { component: c } } }
"#;

#[test]
fn a_dependent_becomes_active_only_after_its_sponsor() {
    let w = World::start(CONFIG);
    let data_active = w
        .log
        .iter()
        .position(|a| matches!(a.kind, ActionKind::Record(nines_engine::Event::Assignment { si, ha_state: Some(HaState::Active), .. }) if si == w.si("app/data")))
        .expect("data active");
    let front_assign = w
        .log
        .iter()
        .position(|a| {
            matches!(a.kind, ActionKind::AssignCsi { csi, ha_state: HaState::Active, .. }
                if w.model.csis[csi.index()].si == w.si("app/front"))
        })
        .expect("front assigned");
    assert!(data_active < front_assign, "sponsor confirmed first");
    assert_eq!(w.active("app/front"), ["app/web/su-1"]);
}

#[test]
fn the_dependent_survives_a_short_sponsor_outage() {
    let mut w = World::start(CONFIG);
    w.adm(AdminOp::Lock, "app/data").expect("lock sponsor");
    w.advance(ms(1_000));
    assert_eq!(w.active("app/front"), ["app/web/su-1"], "within tolerance");
    w.adm(AdminOp::Unlock, "app/data").expect("unlock sponsor");
    w.advance(ms(5_000));
    assert_eq!(w.active("app/front"), ["app/web/su-1"]);
}

#[test]
fn the_dependent_is_removed_after_the_tolerance_and_returns_with_its_sponsor() {
    let mut w = World::start(CONFIG);
    w.adm(AdminOp::Lock, "app/data").expect("lock sponsor");
    w.advance(ms(2_500));
    assert!(w.active("app/front").is_empty(), "removed after 2 s");
    w.adm(AdminOp::Unlock, "app/data").expect("unlock sponsor");
    assert_eq!(w.active("app/data"), ["app/db/su-1"]);
    assert_eq!(w.active("app/front"), ["app/web/su-1"]);
}
