//! Real guests under TCG (no mocks): the service image boots, serves HTTP, answers QMP, and
//! every way a VM ends is seen the way the agent will see it (pidfd, QMP events, exit status).
//! Each test boots its own VM; at most two run at once. Skipped (with a message) only when
//! qemu-system-x86_64 is missing outside CI.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Slot, TestVm};
use nines_vm::{CloseReason, Health, Probe, Qmp, QmpEventKind, TerminateTimeouts, Terminated};

/// Bound of one QMP command or event wait.
const QMP: Duration = Duration::from_secs(10);
/// What "quickly" means for death detection: the recipe measured ~5 ms; this catches hangs.
const QUICK: Duration = Duration::from_secs(5);

fn http(port: u16, path: &str, expect: Option<&str>) -> Probe {
    Probe::Http {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        path: path.to_string(),
        expect: expect.map(str::to_string),
    }
}

/// Spawns the VM, connects QMP, waits for HTTP; returns the VM, QMP and its events.
async fn boot(
    name: &str,
    extra: &[&str],
) -> (
    TestVm,
    Qmp,
    tokio::sync::mpsc::UnboundedReceiver<nines_vm::QmpEvent>,
    u16,
) {
    let image = common::image().expect("checked by the caller");
    let dir = common::vm_dir(name);
    let port = common::free_port();
    let mut spec = common::spec(image, name, &dir, port);
    spec.cmdline = extra.iter().map(|s| s.to_string()).collect();
    let vm = TestVm::spawn(spec, dir);
    let (qmp, events) = common::until_serving(&vm, port).await;
    (vm, qmp, events, port)
}

/// Runs `body` on its own runtime with a VM slot, unless guests cannot run here (skip).
fn guest_test<F: Future<Output = ()>>(body: impl FnOnce() -> F) {
    if common::image().is_none() {
        return;
    }
    let _slot = Slot::take();
    common::runtime().block_on(body());
}

/// Reaps the VM (bounded) and checks its exit code.
async fn reap_with_code(vm: &mut TestVm, code: i32) {
    let status = vm.reap(QUICK).await;
    assert_eq!(
        status.code(),
        Some(code),
        "{status}; serial: {}",
        vm.serial()
    );
}

#[test]
fn boots_serves_http_answers_qmp_stops_and_terminates_by_quit() {
    guest_test(|| async {
        let (mut vm, mut qmp, mut events, port) = boot("vm-basic", &["svcnoacpi=1"]).await;
        let status = qmp.query_status(QMP).await.expect("query-status");
        assert_eq!(status.status, "running");
        assert!(status.running);
        let health = http(port, "/cgi-bin/health", Some("healthy vm-basic"));
        assert_eq!(
            nines_vm::probe(&health, Duration::from_secs(2)).await,
            Health::Healthy
        );

        // A stopped guest is hung as far as its service goes: the probe times out.
        qmp.stop(QMP).await.expect("stop");
        common::wait_event(&mut events, QMP, |k| *k == QmpEventKind::Stop).await;
        assert_eq!(
            qmp.query_status(QMP).await.expect("status").status,
            "paused"
        );
        let verdict = nines_vm::probe(&health, Duration::from_millis(500)).await;
        assert!(
            !verdict.is_healthy(),
            "a stopped guest answered: {verdict:?}"
        );
        qmp.cont(QMP).await.expect("cont");
        common::wait_event(&mut events, QMP, |k| *k == QmpEventKind::Resume).await;
        nines_vm::wait_healthy(
            &health,
            Duration::from_millis(50),
            Duration::from_secs(1),
            Duration::from_secs(10),
        )
        .await
        .expect("healthy again after cont");

        // An unknown command is QEMU's error, not ours.
        let err = qmp
            .execute("no-such-command", None, QMP)
            .await
            .expect_err("unknown command");
        assert!(
            matches!(err, nines_vm::Error::Command { ref class, .. } if class == "CommandNotFound"),
            "{err}"
        );

        // This guest ignores the power button (svcnoacpi=1): terminate's ladder goes on to quit.
        let pid = vm.pid();
        let timeouts = TerminateTimeouts {
            powerdown: Duration::from_millis(500),
            ..TerminateTimeouts::default()
        };
        let outcome = {
            let mut exited = Box::pin(vm.exited());
            nines_vm::terminate(Some(&mut qmp), pid, &mut exited, &timeouts).await
        };
        assert_eq!(outcome.expect("terminate"), Terminated::Quit);
        let seen =
            common::wait_event(&mut events, QUICK, |k| matches!(k, QmpEventKind::Closed(_))).await;
        let kinds = common::kinds(&seen);
        assert!(kinds.contains(&&QmpEventKind::Powerdown), "{kinds:?}");
        let quit = QmpEventKind::Shutdown {
            guest: false,
            reason: "host-qmp-quit".into(),
        };
        assert!(kinds.contains(&&quit), "{kinds:?}");
        reap_with_code(&mut vm, 0).await;
    });
}

#[test]
fn sigkill_is_seen_at_once_and_a_respawn_serves_again() {
    guest_test(|| async {
        let (mut vm, qmp, mut events, port) = boot("vm-kill", &[]).await;
        let killed = Instant::now();
        nines_vm::cleanup(Some(vm.pid()), &vm.spec).expect("SIGKILL");
        tokio::time::timeout(QUICK, vm.exited())
            .await
            .expect("pidfd readable after SIGKILL");
        let pidfd_after = killed.elapsed();
        let seen =
            common::wait_event(&mut events, QUICK, |k| matches!(k, QmpEventKind::Closed(_))).await;
        let closed = seen.last().expect("closed event");
        let eof_after = closed.at.saturating_duration_since(killed);
        assert!(
            matches!(
                &closed.kind,
                QmpEventKind::Closed(CloseReason::Eof | CloseReason::Io(_))
            ),
            "{closed:?}"
        );
        let status = vm.reap(QUICK).await;
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        drop(qmp);

        // Repair: the same command line again, same port, until HTTP answers.
        vm.respawn();
        let _qmp = common::until_serving(&vm, port).await;
        eprintln!(
            "vm-kill: pidfd readable {pidfd_after:?} after SIGKILL, QMP closed {eof_after:?}, \
             repair (kill -> HTTP) {:?}",
            killed.elapsed()
        );
    });
}

#[test]
fn terminate_powers_the_guest_down() {
    guest_test(|| async {
        let (mut vm, mut qmp, mut events, _port) = boot("vm-term", &[]).await;
        let pid = vm.pid();
        let started = Instant::now();
        let outcome = {
            let mut exited = Box::pin(vm.exited());
            nines_vm::terminate(
                Some(&mut qmp),
                pid,
                &mut exited,
                &TerminateTimeouts::default(),
            )
            .await
            .expect("terminate")
        };
        eprintln!("vm-term: {outcome:?} after {:?}", started.elapsed());
        assert_eq!(outcome, Terminated::PoweredDown, "serial: {}", vm.serial());
        let seen =
            common::wait_event(&mut events, QUICK, |k| matches!(k, QmpEventKind::Closed(_))).await;
        let kinds = common::kinds(&seen);
        assert!(kinds.contains(&&QmpEventKind::Powerdown), "{kinds:?}");
        assert!(
            kinds.contains(&&QmpEventKind::Shutdown {
                guest: true,
                reason: "guest-shutdown".into()
            }),
            "{kinds:?}"
        );
        reap_with_code(&mut vm, 0).await;
    });
}

#[test]
fn guest_panic_is_reported_and_qemu_exits_1() {
    guest_test(|| async {
        let (mut vm, _qmp, mut events, _port) = boot("vm-panic", &["svcpanic=1"]).await;
        let seen = common::wait_event(&mut events, Duration::from_secs(30), |k| {
            matches!(k, QmpEventKind::Closed(_))
        })
        .await;
        let kinds = common::kinds(&seen);
        let panicked = kinds
            .iter()
            .position(|k| matches!(k, QmpEventKind::GuestPanicked { .. }));
        let shutdown = kinds.iter().position(|k| {
            **k == QmpEventKind::Shutdown {
                guest: true,
                reason: "guest-panic".into(),
            }
        });
        assert!(
            matches!((panicked, shutdown), (Some(p), Some(s)) if p < s),
            "GUEST_PANICKED then SHUTDOWN expected: {kinds:?}"
        );
        reap_with_code(&mut vm, 1).await;
        assert!(vm.serial().contains("SVC-PANIC"), "{}", vm.serial());
    });
}
