//! Resume: a restarted driver hands the engine what still runs and what it holds, before
//! Start. What is consistent is adopted as is (no restart, no callback); what is not is
//! removed from the components, and never two actives.

mod support;

use nines_engine::{ActionKind, Command, HaState, Input};
use nines_model::{CompId, SiId, SuId};
use support::World;

const CONFIG: &str = r#"
cluster: t
nodes: [n1, n2]
apps:
  app:
    sgs:
      sg:
        redundancy: 2n
        fail_back: false
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
        components:
          c:
            kind: sa-aware
            instantiate: [/bin/true]
            recovery: failover
    sis:
      si-a: { sg: sg, rank: 1, csis: { x: { component: c } } }
      si-b: { sg: sg, rank: 2, csis: { x: { component: c } } }
"#;

type Snapshot = (Vec<CompId>, Vec<(SiId, SuId, HaState)>);

/// What a driver would have recorded of `w`: every instantiated component and every confirmed
/// assignment.
fn snapshot(w: &World) -> Snapshot {
    let running = (0..w.model.comps.len() as u32)
        .map(CompId)
        .filter(|c| w.engine.comp_presence(*c) == nines_engine::Presence::Instantiated)
        .collect();
    let mut assignments = Vec::new();
    for si in 0..w.model.sis.len() as u32 {
        for a in w.engine.assignments(SiId(si)) {
            if a.confirmed {
                assignments.push((SiId(si), a.su, a.ha_state));
            }
        }
    }
    (running, assignments)
}

fn resumed(snap: Snapshot) -> World {
    let mut w = World::new(CONFIG);
    let (running, assignments) = snap;
    w.feed(Input::Resume {
        running,
        assignments,
    });
    w.feed(Input::Start);
    w
}

fn callbacks(w: &World) -> usize {
    w.count(|k| {
        matches!(
            k,
            ActionKind::AssignCsi { .. } | ActionKind::RemoveCsi { .. }
        )
    })
}

fn lifecycle_commands(w: &World) -> usize {
    w.count(|k| {
        matches!(
            k,
            ActionKind::Instantiate { .. }
                | ActionKind::Terminate { .. }
                | ActionKind::Cleanup { .. }
        )
    })
}

#[test]
fn resuming_a_settled_cluster_restarts_and_reassigns_nothing() {
    let before = World::start(CONFIG);
    let w = resumed(snapshot(&before));
    assert_eq!(lifecycle_commands(&w), 0, "{:#?}", w.log);
    assert_eq!(callbacks(&w), 0, "{:#?}", w.log);
    for si in ["app/si-a", "app/si-b"] {
        assert_eq!(w.active(si), before.active(si));
        assert_eq!(w.standby(si), before.standby(si));
    }
}

#[test]
fn after_a_failover_the_active_stays_where_it_is() {
    let mut before = World::start(CONFIG);
    before.kill("app/sg/su-1/c");
    assert_eq!(before.active("app/si-a"), ["app/sg/su-2"]);
    let w = resumed(snapshot(&before));
    assert_eq!(callbacks(&w), 0, "{:#?}", w.log);
    assert_eq!(w.active("app/si-a"), ["app/sg/su-2"]);
    assert_eq!(w.standby("app/si-a"), ["app/sg/su-1"]);
}

#[test]
fn two_actives_are_never_resumed_and_the_second_is_removed() {
    let mut w = World::new(CONFIG);
    let (si, su1, su2) = (w.si("app/si-a"), w.su("app/sg/su-1"), w.su("app/sg/su-2"));
    let (c1, c2) = (w.comp("app/sg/su-1/c"), w.comp("app/sg/su-2/c"));
    let actions = w.feed(Input::Resume {
        running: vec![c1, c2],
        assignments: vec![(si, su1, HaState::Active), (si, su2, HaState::Active)],
    });
    assert!(
        actions
            .iter()
            .any(|a| matches!(a.kind, ActionKind::RemoveCsi { comp, .. } if comp == c2)),
        "the second active is told to let go: {actions:#?}"
    );
    assert_eq!(w.active("app/si-a"), ["app/sg/su-1"]);
    w.feed(Input::Start);
    assert_eq!(w.active("app/si-a"), ["app/sg/su-1"]);
    assert_eq!(w.standby("app/si-a"), ["app/sg/su-2"]);
}

#[test]
fn work_on_a_component_that_did_not_survive_is_placed_again() {
    let before = World::start(CONFIG);
    let (running, assignments) = snapshot(&before);
    let mut w = World::new(CONFIG);
    let gone = w.comp("app/sg/su-2/c");
    let running: Vec<CompId> = running.into_iter().filter(|c| *c != gone).collect();
    w.feed(Input::Resume {
        running,
        assignments,
    });
    w.feed(Input::Start);
    // The survivor keeps its work without a callback; the other is started and made standby.
    assert_eq!(w.commands("app/sg/su-1/c", Command::Instantiate), 0);
    assert_eq!(w.requested("app/sg/su-1/c"), Vec::<HaState>::new());
    assert_eq!(w.commands("app/sg/su-2/c", Command::Instantiate), 1);
    assert_eq!(w.active("app/si-a"), ["app/sg/su-1"]);
    assert_eq!(w.standby("app/si-a"), ["app/sg/su-2"]);
}

#[test]
fn a_half_finished_quiesce_is_not_resumed() {
    let mut w = World::new(CONFIG);
    let (si, su1) = (w.si("app/si-a"), w.su("app/sg/su-1"));
    let c1 = w.comp("app/sg/su-1/c");
    let c2 = w.comp("app/sg/su-2/c");
    let actions = w.feed(Input::Resume {
        running: vec![c1, c2],
        assignments: vec![(si, su1, HaState::Quiesced)],
    });
    assert!(actions
        .iter()
        .any(|a| matches!(a.kind, ActionKind::RemoveCsi { comp, .. } if comp == c1)));
    w.feed(Input::Start);
    assert_eq!(w.active("app/si-a"), ["app/sg/su-1"]);
}

#[test]
fn resume_after_start_is_ignored() {
    let mut w = World::start(CONFIG);
    let (si, su2) = (w.si("app/si-a"), w.su("app/sg/su-2"));
    let actions = w.feed(Input::Resume {
        running: vec![],
        assignments: vec![(si, su2, HaState::Active)],
    });
    assert!(actions.is_empty(), "{actions:#?}");
    assert_eq!(w.active("app/si-a"), ["app/sg/su-1"]);
}
