//! Nested clusters: a node that is a VM's guest lives and dies with the VM. Its work is held
//! while the VM stops and fails over once the VM is cleaned up (one fault with both
//! reactions); a lost guest is reset through its VM, never fenced by command; faults inside a
//! guest escalate to its VM (OPNFV UC9); a VM that cannot be cleaned up costs its host.

mod support;

use nines_engine::{ActionKind, Command, Event, FaultKind, HaState, Input, Outcome, RecoveryStep};
use nines_model::Recovery;
use support::World;

const CONFIG: &str = r#"
cluster: nested
nodes:
  h1: ~
  h2: ~
  g1: { vm: infra/vms/vm-1/guest }
  g2: { vm: infra/vms/vm-2/guest }
apps:
  infra:
    sgs:
      vms:
        redundancy: n-way-active
        escalation: { comp_restart: { max: 2, within: 60s }, su_restart: { max: 0, within: 60s } }
        units:
          vm-1: { node: h1 }
          vm-2: { node: h2 }
        components:
          guest: { kind: vm, recovery: restart, vm: { kernel: /img/vmlinux } }
    sis:
      hosting: { sg: vms, active: 2, csis: { main: { component: guest } } }
  app:
    sgs:
      sg:
        redundancy: 2n
        escalation: { comp_restart: { max: 1, within: 60s }, su_restart: { max: 0, within: 60s } }
        units:
          su-1: { node: g1, rank: 1 }
          su-2: { node: g2, rank: 2 }
        components:
          c: { kind: sa-aware, instantiate: [/bin/true], recovery: restart }
    sis:
      si: { sg: sg, csis: { x: { component: c } } }
"#;

/// Both VMs running, both guests joined, the app active on g1 and standby on g2.
fn running() -> World {
    let mut w = World::start(CONFIG);
    assert!(
        !w.engine.node_up(w.node("node/g1")),
        "a guest is down until it joins"
    );
    assert_eq!(w.active("app/si"), Vec::<String>::new());
    for g in ["node/g1", "node/g2"] {
        let node = w.node(g);
        w.feed(Input::NodeUp { node });
    }
    assert_eq!(w.active("app/si"), ["app/sg/su-1"]);
    assert_eq!(w.standby("app/si"), ["app/sg/su-2"]);
    w.log.clear();
    w
}

fn guest_events(w: &World) -> Vec<Event> {
    w.events()
        .filter(|e| {
            matches!(
                e,
                Event::FaultDetected { .. }
                    | Event::GuestHeld { .. }
                    | Event::GuestReset { .. }
                    | Event::ServiceRecovered { .. }
                    | Event::Repaired { .. }
            )
        })
        .cloned()
        .collect()
}

#[test]
fn a_guest_joins_only_while_its_vm_runs() {
    let mut w = World::new(CONFIG);
    w.auto = false;
    w.feed(Input::Start);
    let g1 = w.node("node/g1");
    // The VM was asked to start but has not answered yet: instantiating, so a join is taken.
    w.feed(Input::NodeUp { node: g1 });
    assert!(w.engine.node_up(g1));
    // A guest whose VM stopped cannot be up.
    let mut w = running();
    w.auto = false;
    w.kill("infra/vms/vm-2/guest");
    let g2 = w.node("node/g2");
    w.feed(Input::NodeUp { node: g2 });
    assert!(!w.engine.node_up(g2) || w.engine.node_fencing(g2));
}

#[test]
fn a_dead_vm_holds_its_guests_work_until_cleaned_up_then_fails_it_over_in_one_fault() {
    let mut w = running();
    w.auto = false;
    w.kill("infra/vms/vm-1/guest");
    // Held: the active is gone from g1 but nothing is active elsewhere before the cleanup.
    assert_eq!(w.active("app/si"), Vec::<String>::new());
    assert!(w.engine.node_fencing(w.node("node/g1")));
    assert_eq!(w.commands("infra/vms/vm-1/guest", Command::Cleanup), 1);
    w.run();
    assert_eq!(w.active("app/si"), ["app/sg/su-2"]);
    assert!(!w.engine.node_up(w.node("node/g1")));
    let events = guest_events(&w);
    let Event::FaultDetected { fault, .. } = events[0].clone() else {
        panic!("first a fault: {events:?}");
    };
    let si = w.si("app/si");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::GuestHeld { fault: f, affected, .. }
            if *f == fault && affected == &[si])),
        "the guest is held as part of the VM's fault: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::ServiceRecovered { fault: f, .. } if *f == fault)),
        "the app's recovery ends the VM's fault: {events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::Repaired { .. })),
        "not repaired before the guest is back: {events:?}"
    );
    assert_eq!(w.count(|a| matches!(a, ActionKind::Fence { .. })), 0);
    // The VM was booted again; the guest joins; the fault is repaired; the app gets its
    // standby back.
    assert_eq!(w.commands("infra/vms/vm-1/guest", Command::Instantiate), 1);
    let g1 = w.node("node/g1");
    w.feed(Input::NodeUp { node: g1 });
    w.run();
    assert!(w
        .events()
        .any(|e| matches!(e, Event::Repaired { fault: f, .. } if *f == fault)));
    assert_eq!(w.standby("app/si"), ["app/sg/su-1"]);
    w.assert_never_two_actives();
}

#[test]
fn a_lost_guest_is_fenced_by_restarting_its_vm_not_by_a_fence_command() {
    let mut w = running();
    w.auto = false;
    let g1 = w.node("node/g1");
    w.feed(Input::NodeLost { node: g1 });
    assert_eq!(w.count(|a| matches!(a, ActionKind::Fence { .. })), 0);
    assert_eq!(w.commands("infra/vms/vm-1/guest", Command::Cleanup), 1);
    assert!(w.events().any(|e| matches!(
        e,
        Event::GuestReset {
            recovery: RecoveryStep::ComponentRestart,
            ..
        }
    )));
    assert_eq!(
        w.active("app/si"),
        Vec::<String>::new(),
        "nothing moves before the VM is gone"
    );
    w.run();
    assert_eq!(w.active("app/si"), ["app/sg/su-2"]);
    assert_eq!(w.commands("infra/vms/vm-1/guest", Command::Instantiate), 1);
    assert!(w.fenced.is_empty());
}

#[test]
fn repeated_failures_inside_a_guest_escalate_to_restarting_its_vm() {
    let mut w = running();
    // restart (1 allowed) → SU restart (0 allowed) → SU failover → node failover of g1 on the
    // second SU failover within the node's window... the node's default tolerates some SU
    // failovers, so fail the counter until the ladder reaches the guest.
    let mut guard = 0;
    while !w.events().any(|e| matches!(e, Event::GuestReset { .. })) {
        let comp = if w.active("app/si") == ["app/sg/su-1"] {
            "app/sg/su-1/c"
        } else {
            "app/sg/su-2/c"
        };
        w.kill(comp);
        guard += 1;
        assert!(
            guard < 20,
            "never escalated to the guest: {:?}",
            guest_events(&w)
        );
    }
    let reset = w
        .events()
        .find_map(|e| match e {
            Event::GuestReset { node, vm, .. } => Some((*node, *vm)),
            _ => None,
        })
        .expect("a reset");
    assert!(w.events().any(|e| matches!(
        e,
        Event::Escalated {
            to: RecoveryStep::NodeFailover,
            ..
        }
    )));
    let vm = reset.1;
    assert!(
        w.log
            .iter()
            .any(|a| a.kind == ActionKind::Cleanup { comp: vm }),
        "the guest's VM was cleaned up (restarted)"
    );
    assert_eq!(w.count(|a| matches!(a, ActionKind::Fence { .. })), 0);
    w.assert_never_two_actives();
}

#[test]
fn a_host_that_goes_down_takes_its_guest_down_in_the_same_step() {
    let mut w = running();
    let h1 = w.node("node/h1");
    w.feed(Input::NodeDown { node: h1 });
    assert!(!w.engine.node_up(w.node("node/g1")));
    assert_eq!(w.active("app/si"), ["app/sg/su-2"]);
    let events = guest_events(&w);
    let Event::FaultDetected { fault, .. } = events[0].clone() else {
        panic!("first the host's fault: {events:?}");
    };
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::GuestHeld { fault: f, .. } if *f == fault)));
}

#[test]
fn a_vm_that_cannot_be_cleaned_up_is_isolated_by_fencing_its_host() {
    let mut w = running();
    w.auto = false;
    w.kill("infra/vms/vm-1/guest");
    let vm = w.comp("infra/vms/vm-1/guest");
    // Drop the queued successful cleanup answer; answer it failed.
    w.queue.clear();
    w.feed(Input::CommandDone {
        comp: vm,
        command: Command::Cleanup,
        outcome: Outcome::Failed,
    });
    assert_eq!(
        w.active("app/si"),
        Vec::<String>::new(),
        "the VM may still run its guest: nothing moves"
    );
    let h1 = w.node("node/h1");
    assert!(w
        .log
        .iter()
        .any(|a| a.kind == ActionKind::Fence { node: h1 }));
    w.run(); // FenceDone
    assert!(!w.engine.node_up(h1));
    assert!(!w.engine.node_up(w.node("node/g1")));
    assert_eq!(w.active("app/si"), ["app/sg/su-2"]);
    assert_eq!(w.requested("app/sg/su-2/c").last(), Some(&HaState::Active));
}

#[test]
fn a_vm_failure_report_is_ignored_while_its_guest_is_already_being_reset() {
    let mut w = running();
    w.auto = false;
    let g1 = w.node("node/g1");
    w.feed(Input::NodeLost { node: g1 });
    let vm = w.comp("infra/vms/vm-1/guest");
    w.feed(Input::ComponentFailed {
        comp: vm,
        kind: FaultKind::Exited,
        recommended: Some(Recovery::ComponentRestart),
    });
    assert_eq!(w.commands("infra/vms/vm-1/guest", Command::Cleanup), 1);
    assert!(w.events().any(|e| matches!(e, Event::FaultIgnored { .. })));
}
