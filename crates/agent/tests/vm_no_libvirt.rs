//! An agent built without the `libvirt` feature (as the static build that runs inside guests
//! is) refuses a `driver: libvirt` VM with an error that says why, instead of running it with
//! another driver or failing obscurely. Needs no QEMU and no libvirt: nothing is started.
#![cfg(not(feature = "libvirt"))]

mod common;

use std::time::Duration;

use common::*;
use nines_engine::{ActionKind, Command, Input, Outcome};

#[tokio::test]
async fn a_libvirt_vm_fails_to_instantiate_and_says_this_build_lacks_libvirt() {
    let comp = "          c:
            kind: vm
            vm: { driver: libvirt, kernel: /nonexistent/vmlinux }
";
    let mut t = TestAgent::start("no-lv", &config(comp, "")).await;
    let c = t.comp("app/sg/su/c");
    t.handle.execute(&ActionKind::Instantiate {
        comp: c,
        urgent: true,
    });
    let r = t
        .expect(Duration::from_secs(10), |i| {
            matches!(
                i,
                Input::CommandDone {
                    command: Command::Instantiate,
                    ..
                }
            )
        })
        .await;
    assert!(matches!(
        r.input,
        Input::CommandDone {
            outcome: Outcome::Failed,
            ..
        }
    ));
    let log = std::fs::read_to_string(nines_agent::log_file(
        &t.dir.path().join("logs"),
        "app/sg/su/c",
    ))
    .unwrap_or_default();
    assert!(log.contains("no libvirt support"), "{log}");
    assert!(t.pid(c).is_none());
    t.teardown().await;
}
