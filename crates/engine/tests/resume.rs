//! Resume: a restarted driver hands the engine what still runs and what it holds, before
//! Start. What is consistent is adopted as is (no restart, no callback); what is not is
//! removed from the components, and never two actives.

mod support;

use nines_engine::{ActionKind, Command, HaState, Input};
use nines_model::{CompId, CsiId, SiId};
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

type Snapshot = (Vec<CompId>, Vec<(CompId, CsiId, HaState)>);

/// What the components of `w` would say when they register again: every instantiated one,
/// with the CSIs of every confirmed assignment of its SU.
fn snapshot(w: &World) -> Snapshot {
    let m = &w.model;
    let running = (0..m.comps.len() as u32)
        .map(CompId)
        .filter(|c| w.engine.comp_presence(*c) == nines_engine::Presence::Instantiated)
        .collect();
    let mut held = Vec::new();
    for si in 0..m.sis.len() as u32 {
        for a in w.engine.assignments(SiId(si)) {
            if a.confirmed {
                for &csi in &m.sis[si as usize].csis {
                    held.push((m.comp_for(a.su, csi), csi, a.ha_state));
                }
            }
        }
    }
    (running, held)
}

fn resumed(snap: Snapshot) -> World {
    let mut w = World::new(CONFIG);
    let (running, held) = snap;
    w.feed(Input::Resume {
        running,
        held,
        moved: Vec::new(),
    });
    w.feed(Input::Start);
    w
}

/// The CSI `x` of SI `si` (`app/si-a`, `app/si-b`).
fn csi_x(w: &World, si: &str) -> CsiId {
    let si = w.si(si);
    w.model.sis[si.index()].csis[0]
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
    let x = csi_x(&w, "app/si-a");
    let (c1, c2) = (w.comp("app/sg/su-1/c"), w.comp("app/sg/su-2/c"));
    let actions = w.feed(Input::Resume {
        running: vec![c1, c2],
        held: vec![(c1, x, HaState::Active), (c2, x, HaState::Active)],
        moved: Vec::new(),
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
    let (running, held) = snapshot(&before);
    let mut w = World::new(CONFIG);
    let gone = w.comp("app/sg/su-2/c");
    let running: Vec<CompId> = running.into_iter().filter(|c| *c != gone).collect();
    w.feed(Input::Resume {
        running,
        held,
        moved: Vec::new(),
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
    let x = csi_x(&w, "app/si-a");
    let c1 = w.comp("app/sg/su-1/c");
    let c2 = w.comp("app/sg/su-2/c");
    let actions = w.feed(Input::Resume {
        running: vec![c1, c2],
        held: vec![(c1, x, HaState::Quiesced)],
        moved: Vec::new(),
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
    let x = csi_x(&w, "app/si-a");
    let c2 = w.comp("app/sg/su-2/c");
    let actions = w.feed(Input::Resume {
        running: vec![c2],
        held: vec![(c2, x, HaState::Active)],
        moved: Vec::new(),
    });
    assert!(actions.is_empty(), "{actions:#?}");
    assert_eq!(w.active("app/si-a"), ["app/sg/su-1"]);
}

const TWO_COMPONENTS: &str = r#"
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
          a: { kind: sa-aware, instantiate: [/bin/true] }
          b: { kind: sa-aware, instantiate: [/bin/true] }
    sis:
      si: { sg: sg, csis: { x: { component: a }, y: { component: b } } }
"#;

/// Found by the simulator: a component of an SU that is only partly running still holds its
/// CSI active; it must be told to let go before the other SU is made active.
#[test]
fn a_survivor_of_a_partly_running_su_lets_go_of_its_work() {
    let mut w = World::new(TWO_COMPONENTS);
    let si = w.si("app/si");
    let (x, y) = (
        w.model.sis[si.index()].csis[0],
        w.model.sis[si.index()].csis[1],
    );
    let (a1, a2, b2) = (
        w.comp("app/sg/su-1/a"),
        w.comp("app/sg/su-2/a"),
        w.comp("app/sg/su-2/b"),
    );
    // su-1's b died with the driver; its a still serves x.
    let actions = w.feed(Input::Resume {
        running: vec![a1, a2, b2],
        held: vec![
            (a1, x, HaState::Active),
            (a2, x, HaState::Standby),
            (b2, y, HaState::Standby),
        ],
        moved: Vec::new(),
    });
    assert!(
        actions.iter().any(
            |a| matches!(a.kind, ActionKind::RemoveCsi { comp, csi } if comp == a1 && csi == x)
        ),
        "{actions:#?}"
    );
    w.feed(Input::Start);
    w.assert_never_two_actives();
}

/// Components of one SU that disagree about an SI claim nothing, and both let go.
#[test]
fn disagreeing_components_of_an_su_claim_nothing() {
    let mut w = World::new(TWO_COMPONENTS);
    let si = w.si("app/si");
    let (x, y) = (
        w.model.sis[si.index()].csis[0],
        w.model.sis[si.index()].csis[1],
    );
    let (a1, b1) = (w.comp("app/sg/su-1/a"), w.comp("app/sg/su-1/b"));
    let actions = w.feed(Input::Resume {
        running: vec![a1, b1],
        held: vec![(a1, x, HaState::Active), (b1, y, HaState::Standby)],
        moved: Vec::new(),
    });
    let removed = actions
        .iter()
        .filter(|a| matches!(a.kind, ActionKind::RemoveCsi { .. }))
        .count();
    assert_eq!(removed, 2, "{actions:#?}");
    // Whatever placement then does with the SU, the removals go first.
    let first_assign = actions
        .iter()
        .position(|a| matches!(a.kind, ActionKind::AssignCsi { .. }));
    let last_remove = actions
        .iter()
        .rposition(|a| matches!(a.kind, ActionKind::RemoveCsi { .. }));
    assert!(first_assign.is_none_or(|f| last_remove.is_some_and(|r| r < f)));
    w.assert_never_two_actives();
}

/// A restarted director whose node n1 did not come back in time: n1 may still run the active
/// it had (nobody heard from it). Lost before Start, it is fenced before anything of its SG
/// is assigned elsewhere: su-2 is made active only after the fence.
#[test]
fn a_node_lost_before_start_is_fenced_before_its_work_moves() {
    let before = World::start(CONFIG);
    let (running, held) = snapshot(&before);
    let mut w = World::new(CONFIG);
    w.auto = false;
    let n1 = w.node("node/n1");
    let gone: Vec<CompId> = vec![w.comp("app/sg/su-1/c")];
    let running: Vec<CompId> = running.into_iter().filter(|c| !gone.contains(c)).collect();
    let held: Vec<_> = held
        .into_iter()
        .filter(|(c, _, _)| !gone.contains(c))
        .collect();
    w.feed(Input::Resume {
        running,
        held,
        moved: Vec::new(),
    });
    let lost = w.feed(Input::NodeLost { node: n1 });
    assert!(
        lost.iter()
            .any(|a| matches!(a.kind, ActionKind::Fence { node } if node == n1)),
        "{lost:#?}"
    );
    let started = w.feed(Input::Start);
    let c2 = w.comp("app/sg/su-2/c");
    let promoted = |actions: &[nines_engine::Action]| {
        actions.iter().any(|a| {
            matches!(a.kind, ActionKind::AssignCsi { comp, ha_state: HaState::Active, .. } if comp == c2)
        })
    };
    assert!(
        !promoted(&started),
        "no active before the fence: {started:#?}"
    );
    // The fence completes (the driver's answer): now the work moves.
    w.auto = true;
    w.run();
    assert_eq!(w.active("app/si-a"), ["app/sg/su-2"]);
}
