//! 2N: assignment, failover, repair, fail-back, restart, node loss and failfast.

mod support;

use nines_engine::{ActionKind, Event, HaState, Input, RecoveryStep};
use nines_model::Recovery;
use support::{ms, World};

fn config(fail_back: bool, recovery: &str) -> String {
    format!(
        r#"
cluster: t
nodes: [n1, n2, n3]
apps:
  app:
    sgs:
      sg:
        redundancy: 2n
        fail_back: {fail_back}
        units:
          su-1: {{ node: n1, rank: 1 }}
          su-2: {{ node: n2, rank: 2 }}
        components:
          c:
            kind: sa-aware
            instantiate: [/bin/true]
            recovery: {recovery}
    sis:
      si-a: {{ sg: sg, rank: 1, csis: {{ x: {{ component: c }} }} }}
      si-b: {{ sg: sg, rank: 2, csis: {{ x: {{ component: c }} }} }}
"#
    )
}

#[test]
fn start_puts_every_si_active_on_the_best_ranked_su_and_standby_on_the_next() {
    let w = World::start(&config(false, "failover"));
    for si in ["app/si-a", "app/si-b"] {
        assert_eq!(w.active(si), ["app/sg/su-1"]);
        assert_eq!(w.standby(si), ["app/sg/su-2"]);
    }
    w.assert_never_two_actives();
}

#[test]
fn failover_promotes_the_standby_and_the_repaired_su_becomes_standby() {
    let mut w = World::start(&config(false, "failover"));
    w.kill("app/sg/su-1/c");
    for si in ["app/si-a", "app/si-b"] {
        assert_eq!(w.active(si), ["app/sg/su-2"], "{si} failed over");
        assert_eq!(w.standby(si), ["app/sg/su-1"], "{si} standby after repair");
    }
    // Isolation came first: the failed component was cleaned up.
    let su1c = w.comp("app/sg/su-1/c");
    assert!(w.count(|k| matches!(k, ActionKind::Cleanup { comp } if *comp == su1c)) >= 1);
    w.assert_never_two_actives();
}

#[test]
fn failover_promotes_the_standby_without_reinstantiating_it() {
    let mut w = World::start(&config(false, "failover"));
    let su2c = w.comp("app/sg/su-2/c");
    let before = w.count(|k| matches!(k, ActionKind::Instantiate { comp, .. } if *comp == su2c));
    w.kill("app/sg/su-1/c");
    let after = w.count(|k| matches!(k, ActionKind::Instantiate { comp, .. } if *comp == su2c));
    assert_eq!(before, after, "the standby keeps running");
}

#[test]
fn fail_back_returns_the_work_to_the_best_ranked_su_in_2n() {
    let mut w = World::start(&config(true, "failover"));
    w.kill("app/sg/su-1/c");
    for si in ["app/si-a", "app/si-b"] {
        assert_eq!(w.active(si), ["app/sg/su-1"], "{si} failed back");
        assert_eq!(w.standby(si), ["app/sg/su-2"]);
    }
    // The handover went through standby: su-1 was standby before it became active again.
    let su1 = w.su("app/sg/su-1");
    let si_a = w.si("app/si-a");
    let states: Vec<HaState> = w
        .events()
        .filter_map(|e| match e {
            Event::Assignment {
                si,
                su,
                ha_state: Some(h),
            } if *si == si_a && *su == su1 => Some(*h),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        [HaState::Active, HaState::Standby, HaState::Active],
        "active, failed, standby after repair, active after fail-back"
    );
    w.assert_never_two_actives();
}

#[test]
fn without_fail_back_the_work_stays_where_it_failed_over() {
    let mut w = World::start(&config(false, "failover"));
    w.kill("app/sg/su-1/c");
    w.advance(ms(60_000));
    assert_eq!(w.active("app/si-a"), ["app/sg/su-2"]);
}

#[test]
fn component_restart_keeps_the_work_on_the_same_su() {
    let mut w = World::start(&config(false, "restart"));
    let actions = w.kill("app/sg/su-1/c");
    assert!(actions.iter().any(|a| matches!(
        &a.kind,
        ActionKind::Record(Event::FaultDetected {
            recovery: RecoveryStep::ComponentRestart,
            ..
        })
    )));
    assert_eq!(w.active("app/si-a"), ["app/sg/su-1"]);
    assert_eq!(w.standby("app/si-a"), ["app/sg/su-2"]);
    // The restarted component got its CSIs back as active.
    let c = w.comp("app/sg/su-1/c");
    let reassigned = actions.iter().filter(|a| {
        matches!(a.kind, ActionKind::AssignCsi { comp, ha_state: HaState::Active, .. } if comp == c)
    });
    assert_eq!(reassigned.count(), 2, "both SIs' CSIs");
}

#[test]
fn every_fault_gets_service_recovered_and_repaired_events() {
    let mut w = World::start(&config(false, "failover"));
    w.kill("app/sg/su-1/c");
    let detected: Vec<u64> = w
        .events()
        .filter_map(|e| match e {
            Event::FaultDetected {
                fault, affected, ..
            } => {
                assert_eq!(affected.len(), 2);
                Some(*fault)
            }
            _ => None,
        })
        .collect();
    assert_eq!(detected.len(), 1);
    assert!(w
        .events()
        .any(|e| matches!(e, Event::ServiceRecovered { fault, .. } if *fault == detected[0])));
    assert!(w
        .events()
        .any(|e| matches!(e, Event::Repaired { fault, .. } if *fault == detected[0])));
    assert_eq!(w.engine.open_faults(), 0);
}

#[test]
fn a_second_report_of_the_same_failure_is_ignored_with_a_reason() {
    let mut w = World::start(&config(false, "failover"));
    w.auto = false;
    w.kill("app/sg/su-1/c");
    let again = w.kill("app/sg/su-1/c");
    assert!(again
        .iter()
        .any(|a| matches!(&a.kind, ActionKind::Record(Event::FaultIgnored { .. }))));
    w.run();
    assert_eq!(w.active("app/si-a"), ["app/sg/su-2"]);
}

#[test]
fn node_down_fails_over_and_node_up_brings_the_su_back_as_standby() {
    let mut w = World::start(&config(false, "failover"));
    let n1 = w.node("node/n1");
    w.feed(Input::NodeDown { node: n1 });
    assert_eq!(w.active("app/si-a"), ["app/sg/su-2"]);
    assert!(w.standby("app/si-a").is_empty(), "no third SU in service");
    w.feed(Input::NodeUp { node: n1 });
    assert_eq!(w.standby("app/si-a"), ["app/sg/su-1"]);
    w.assert_never_two_actives();
}

#[test]
fn failfast_fences_the_node_before_failing_over() {
    let mut w = World::start(&config(false, "failover"));
    w.auto = false;
    let actions = w.report("app/sg/su-1/c", Recovery::NodeFailfast);
    assert!(actions
        .iter()
        .any(|a| matches!(a.kind, ActionKind::Fence { .. })));
    let su2c = w.comp("app/sg/su-2/c");
    let promoted = |acts: &[nines_engine::Action]| {
        acts.iter().any(|a| {
            matches!(a.kind, ActionKind::AssignCsi { comp, ha_state: HaState::Active, .. } if comp == su2c)
        })
    };
    assert!(!promoted(&actions), "no failover before the fence is done");
    // Deliver the FenceDone (queued by the world) and the rest.
    w.run();
    assert_eq!(w.active("app/si-a"), ["app/sg/su-2"]);
    assert!(!w.engine.node_up(w.node("node/n1")));
}

#[test]
fn while_a_node_is_fenced_a_standby_on_a_locked_su_still_leaves_at_once() {
    // Found by the simulator: a fenced SI skipped reconciliation entirely, so a standby stayed
    // on an SU that had just been locked.
    let mut w = World::start(&config(false, "failover"));
    w.auto = false;
    w.report("app/sg/su-1/c", Recovery::NodeFailfast); // fence of n1 pending
    w.queue.clear(); // the fence never completes in this test
    let su2 = w.su("app/sg/su-2");
    w.adm(nines_engine::AdminOp::Lock, "app/sg/su-2")
        .expect("lock");
    for si in ["app/si-a", "app/si-b"] {
        let held: Vec<_> = w
            .engine
            .assignments(w.si(si))
            .into_iter()
            .filter(|a| a.su == su2)
            .collect();
        assert!(held.is_empty(), "{si} still on locked su-2: {held:?}");
    }
}

#[test]
fn at_start_the_best_ranked_su_becomes_active_even_if_it_instantiates_last() {
    let mut w = World::new(&config(false, "failover"));
    w.auto = false;
    w.feed(Input::Start);
    // Deliver su-2's instantiation first, then su-1's.
    let su2c = w.comp("app/sg/su-2/c");
    w.queue
        .make_contiguous()
        .sort_by_key(|i| !matches!(i, Input::CommandDone { comp, .. } if *comp == su2c));
    w.run();
    assert_eq!(w.active("app/si-a"), ["app/sg/su-1"]);
    assert_eq!(w.standby("app/si-a"), ["app/sg/su-2"]);
}

#[test]
fn repair_starts_only_after_the_failover_is_confirmed() {
    // Recovery before repair: the replacement process must not compete for the CPU with the
    // promotion that ends the outage.
    let mut w = World::start(&config(false, "failover"));
    w.auto = false;
    let su1c = w.comp("app/sg/su-1/c");
    w.kill("app/sg/su-1/c");
    // Deliver the cleanup result first, hold the standby's answers.
    let cleanup = w
        .queue
        .iter()
        .position(|i| matches!(i, Input::CommandDone { comp, .. } if *comp == su1c))
        .expect("cleanup queued");
    let done = w.queue.remove(cleanup).expect("present");
    let actions = w.feed(done);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a.kind, ActionKind::Instantiate { comp, .. } if comp == su1c)),
        "repair started before the standby confirmed"
    );
    w.run(); // the standby confirms: now the repair goes ahead
    assert_eq!(w.active("app/si-a"), ["app/sg/su-2"]);
    assert_eq!(w.standby("app/si-a"), ["app/sg/su-1"]);
}

#[test]
fn repair_goes_ahead_at_once_when_nothing_can_take_the_work() {
    let mut w = World::start(&config(false, "failover"));
    let n2 = w.node("node/n2");
    w.feed(Input::NodeDown { node: n2 });
    w.kill("app/sg/su-1/c");
    assert_eq!(
        w.active("app/si-a"),
        ["app/sg/su-1"],
        "repaired and active again"
    );
}

#[test]
fn the_standby_is_promoted_in_the_step_that_learns_of_the_exit_not_after_the_cleanup() {
    // A process that exited serves nothing: its SIs go to the standby at once, while its
    // cleanup (the CLC command, the SIGKILL of what is left of its group) runs. Waiting for
    // the cleanup's answer first would add an agent round trip to every failover.
    let mut w = World::start(&config(false, "failover"));
    let (su1c, su2c) = (w.comp("app/sg/su-1/c"), w.comp("app/sg/su-2/c"));
    let actions = w.kill("app/sg/su-1/c");
    let kinds: Vec<&ActionKind> = actions.iter().map(|a| &a.kind).collect();
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, ActionKind::Cleanup { comp } if *comp == su1c)),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| matches!(k, ActionKind::AssignCsi { comp, ha_state: HaState::Active, .. } if *comp == su2c)),
        "{kinds:?}"
    );
}

/// The `urgent` flag of every instantiation of `comp` so far, in order.
fn urgency(w: &World, comp: &str) -> Vec<bool> {
    let c = w.comp(comp);
    w.log
        .iter()
        .filter_map(|a| match a.kind {
            ActionKind::Instantiate { comp, urgent } if comp == c => Some(urgent),
            _ => None,
        })
        .collect()
}

#[test]
fn only_a_repair_that_restores_redundancy_is_not_urgent() {
    // Start-up: nothing is served yet, so every start is awaited.
    let mut w = World::start(&config(false, "failover"));
    assert_eq!(urgency(&w, "app/sg/su-1/c"), [true]);
    assert_eq!(urgency(&w, "app/sg/su-2/c"), [true]);
    // A failover: su-2 serves both SIs; su-1's repair only restores the standby.
    w.kill("app/sg/su-1/c");
    assert_eq!(w.active("app/si-a"), ["app/sg/su-2"]);
    assert_eq!(urgency(&w, "app/sg/su-1/c"), [true, false]);
    // The same failure with nobody left to take the work: su-1's repair is awaited.
    let mut w = World::start(&config(false, "failover"));
    w.adm(nines_engine::AdminOp::Lock, "app/sg/su-2")
        .expect("lock su-2");
    w.kill("app/sg/su-1/c");
    assert_eq!(
        w.active("app/si-a"),
        ["app/sg/su-1"],
        "served again once repaired: nobody else could"
    );
    assert_eq!(urgency(&w, "app/sg/su-1/c"), [true, true]);
}

#[test]
fn a_restart_in_place_is_urgent() {
    // recovery: restart on the active: its SIs wait for it to come back.
    let mut w = World::start(&config(false, "restart"));
    w.kill("app/sg/su-1/c");
    assert_eq!(urgency(&w, "app/sg/su-1/c"), [true, true]);
}
