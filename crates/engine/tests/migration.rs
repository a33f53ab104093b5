//! Live migration on planned maintenance: locking or shutting down a node migrates its VMs
//! that ask for it to another node of their SG, their SUs keep their assignments (and their
//! guests keep their work) throughout, the guest's cut link is not a fault, a failed
//! migration falls back to what the lock does without it, and fail-back brings the VM home.

mod support;

use nines_engine::{ActionKind, AdminOp, Event, Input};
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
        fail_back: true
        units:
          vm-1: { node: h1, vm: { guest: { forwards: [{ host: 17101, guest: 80 }] } } }
          vm-2: { node: h2, vm: { guest: { forwards: [{ host: 17102, guest: 80 }] } } }
        components:
          guest: { kind: vm, recovery: restart, vm: { kernel: /img/vmlinux, migrate: true } }
    sis:
      hosting: { sg: vms, active: 2, csis: { main: { component: guest } } }
  app:
    sgs:
      sg:
        redundancy: 2n
        units:
          su-1: { node: g1, rank: 1 }
          su-2: { node: g2, rank: 2 }
        components:
          c: { kind: sa-aware, instantiate: [/bin/true], recovery: restart }
    sis:
      si: { sg: sg, csis: { x: { component: c } } }
"#;

/// Both VMs running, both guests joined, the app active in g1.
fn running() -> World {
    let mut w = World::start(CONFIG);
    for g in ["node/g1", "node/g2"] {
        let node = w.node(g);
        w.feed(Input::NodeUp { node });
    }
    assert_eq!(w.active("app/si"), ["app/sg/su-1"]);
    w.log.clear();
    w
}

fn migration_events(w: &World) -> Vec<&'static str> {
    w.events()
        .filter_map(|e| match e {
            Event::MigrationStarted { .. } => Some("started"),
            Event::Migrated { .. } => Some("migrated"),
            Event::MigrationFailed { .. } => Some("failed"),
            Event::FaultDetected { .. } => Some("fault"),
            Event::GuestRelinking { .. } => Some("relinking"),
            Event::GuestRelinked { .. } => Some("relinked"),
            _ => None,
        })
        .collect()
}

#[test]
fn locking_a_host_migrates_its_vm_and_nothing_moves_inside() {
    let mut w = running();
    let (vm_su, h1, h2) = (w.su("infra/vms/vm-1"), w.node("node/h1"), w.node("node/h2"));
    w.adm(AdminOp::Lock, "node/h1").expect("lock accepted");
    assert_eq!(migration_events(&w), ["started", "migrated"]);
    assert_eq!(w.engine.su_host(vm_su), h2);
    assert!(!w.engine.su_migrating(vm_su));
    // The three steps, in order, to the right nodes (the world answered each).
    let steps: Vec<String> = w
        .log
        .iter()
        .filter_map(|a| match a.kind {
            ActionKind::MigrateIn { to, .. } => Some(format!("in@{}", to.0)),
            ActionKind::MigrateOut { to, port, .. } => Some(format!("out->{}:{port}", to.0)),
            ActionKind::MigrateFinish { to, commit, .. } => {
                Some(format!("finish@{}:{commit}", to.0))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        [
            format!("in@{}", h2.0),
            format!("out->{}:4444", h2.0),
            format!("finish@{}:true", h2.0)
        ]
    );
    // The VM never stopped, its SU kept its SI, the app never moved.
    assert_eq!(
        w.commands("infra/vms/vm-1/guest", nines_engine::Command::Terminate),
        0
    );
    assert_eq!(
        w.commands("infra/vms/vm-1/guest", nines_engine::Command::Cleanup),
        0
    );
    assert!(w
        .active("infra/hosting")
        .contains(&"infra/vms/vm-1".to_string()));
    assert_eq!(w.active("app/si"), ["app/sg/su-1"]);
    assert!(w.engine.node_up(w.node("node/g1")));
    assert_ne!(h1, h2);
}

#[test]
fn the_guests_cut_link_relinks_without_a_fault_and_a_silent_guest_is_lost_after_all() {
    let mut w = running();
    w.adm(AdminOp::Lock, "node/h1").expect("lock accepted");
    let g1 = w.node("node/g1");
    // The migration cut the guest's link: no fault, the guest stays up.
    w.feed(Input::NodeLost { node: g1 });
    assert!(w.engine.node_relinking(g1));
    assert!(w.engine.node_up(g1));
    w.feed(Input::NodeRelinked { node: g1 });
    assert!(!w.engine.node_relinking(g1));
    assert_eq!(w.active("app/si"), ["app/sg/su-1"]);
    assert_eq!(
        migration_events(&w),
        ["started", "migrated", "relinking", "relinked"]
    );
    // Much later, a lost link is a fault again.
    w.advance(std::time::Duration::from_secs(10));
    w.feed(Input::NodeLost { node: g1 });
    assert!(!w.engine.node_relinking(g1));
    assert!(migration_events(&w).contains(&"fault"));
}

#[test]
fn a_guest_that_does_not_relink_in_time_is_lost_and_its_vm_reset() {
    let mut w = running();
    w.adm(AdminOp::Lock, "node/h1").expect("lock accepted");
    let g1 = w.node("node/g1");
    w.feed(Input::NodeLost { node: g1 });
    assert!(w.engine.node_relinking(g1));
    w.advance(nines_engine::GUEST_RELINK + std::time::Duration::from_millis(1));
    assert!(migration_events(&w).contains(&"fault"));
    assert!(w.events().any(|e| matches!(e, Event::GuestReset { .. })));
    assert_eq!(w.active("app/si"), ["app/sg/su-2"], "the app failed over");
}

#[test]
fn a_guest_that_joins_afresh_while_relinking_lost_its_work() {
    let mut w = running();
    w.adm(AdminOp::Lock, "node/h1").expect("lock accepted");
    let g1 = w.node("node/g1");
    w.feed(Input::NodeLost { node: g1 });
    w.feed(Input::NodeUp { node: g1 });
    assert!(migration_events(&w).contains(&"fault"));
    assert_eq!(w.active("app/si"), ["app/sg/su-2"]);
}

#[test]
fn a_failed_migration_falls_back_to_the_lock_without_it() {
    for step in [1, 2] {
        let mut w = running();
        w.failing_migration_step = step;
        let vm_su = w.su("infra/vms/vm-1");
        w.adm(AdminOp::Lock, "node/h1").expect("lock accepted");
        assert_eq!(migration_events(&w), ["started", "failed"], "step {step}");
        assert_eq!(w.engine.su_host(vm_su), w.node("node/h1"));
        // As a lock does: the SU is out of service and its SI left it.
        assert!(!w
            .active("infra/hosting")
            .contains(&"infra/vms/vm-1".to_string()));
        if step == 2 {
            // The destination's waiting copy is discarded.
            assert!(w
                .log
                .iter()
                .any(|a| matches!(a.kind, ActionKind::MigrateFinish { commit: false, .. })));
        }
    }
}

#[test]
fn a_vm_lost_while_taking_over_is_recovered_where_it_went() {
    let mut w = running();
    w.failing_migration_step = 3;
    let vm_su = w.su("infra/vms/vm-1");
    w.adm(AdminOp::Lock, "node/h1").expect("lock accepted");
    assert_eq!(migration_events(&w)[..3], ["started", "failed", "fault"]);
    assert_eq!(w.engine.su_host(vm_su), w.node("node/h2"));
    // Restarted there (cleanup, then instantiate), not on the locked node.
    assert!(w.commands("infra/vms/vm-1/guest", nines_engine::Command::Cleanup) >= 1);
    assert!(w.commands("infra/vms/vm-1/guest", nines_engine::Command::Instantiate) >= 1);
}

#[test]
fn unlocking_the_host_brings_the_vm_home() {
    let mut w = running();
    let vm_su = w.su("infra/vms/vm-1");
    w.adm(AdminOp::Lock, "node/h1").expect("lock accepted");
    assert_eq!(w.engine.su_host(vm_su), w.node("node/h2"));
    w.adm(AdminOp::Unlock, "node/h1").expect("unlock accepted");
    assert_eq!(w.engine.su_host(vm_su), w.node("node/h1"));
    assert_eq!(
        migration_events(&w),
        ["started", "migrated", "started", "migrated"]
    );
}

#[test]
fn with_nowhere_to_go_the_lock_stops_serving_from_the_vm() {
    let mut w = running();
    w.adm(AdminOp::Lock, "node/h2").expect("lock h2");
    let before = migration_events(&w).len();
    // vm-2 went to h1; now h1 is locked too and h2 takes nothing.
    w.adm(AdminOp::Lock, "node/h1").expect("lock h1");
    let after = &migration_events(&w)[before..];
    assert!(after.contains(&"failed"), "{after:?}");
    assert!(w.active("infra/hosting").is_empty());
}

#[test]
fn a_restarted_driver_resumes_a_moved_su_where_it_runs() {
    let w = running();
    let vm_su = w.su("infra/vms/vm-1");
    let h2 = w.node("node/h2");
    let mut fresh = w.engine.restarted();
    fresh.handle(
        nines_engine::Instant::ZERO,
        Input::Resume {
            running: vec![],
            held: vec![],
            moved: vec![(vm_su, h2)],
        },
    );
    assert_eq!(fresh.su_host(vm_su), h2);
}
