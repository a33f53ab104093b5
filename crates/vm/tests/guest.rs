//! Real guests under TCG (no mocks): the service image boots, serves HTTP, answers QMP, and
//! every way a VM ends is seen the way the agent will see it (pidfd, QMP events, exit status).
//! Each test boots its own VM; at most two run at once. Skipped (with a message) only when
//! qemu-system-x86_64 is missing outside CI.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{boot_id, get_root, Slot, TestVm};
use nines_vm::{
    CloseReason, Health, MigrationStatus, Probe, Qmp, QmpEventKind, TerminateTimeouts, Terminated,
};

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

/// Runs `body` like [`guest_test`], holding both VM slots (it runs two VMs at once).
fn two_guest_test<F: Future<Output = ()>>(body: impl FnOnce() -> F) {
    if common::image().is_none() {
        return;
    }
    let _slots = Slot::take_two();
    common::runtime().block_on(body());
}

/// What a client GETting `/` every few milliseconds saw.
#[derive(Debug, Default)]
struct ProbeLog {
    /// Successful answers, and failed attempts.
    ok: u32,
    failed: u32,
    /// The longest time between two successful answers.
    longest_gap: Duration,
    /// Every boot id answered, in order, without repeats.
    boot_ids: Vec<String>,
    /// When the last success came.
    last_ok: Option<Instant>,
    /// 200 answers whose body was not `ok NAME BOOTID` (cut off).
    odd: Vec<String>,
    /// When and why attempts failed.
    failures: Vec<(Instant, String)>,
    /// When the longest gap ended.
    gap_end: Option<Instant>,
}

/// One probe's timeout: a GET takes ~10 ms under TCG. A request the paused source's QEMU
/// accepted during the switchover is never answered, so this bounds what one lost request
/// adds to the measured gap.
const PROBE_TIMEOUT: Duration = Duration::from_millis(50);

/// GETs `/` every `period` (each with [`PROBE_TIMEOUT`]) until `stop` is set.
fn spawn_prober(
    port: u16,
    period: Duration,
    stop: std::rc::Rc<std::cell::Cell<bool>>,
) -> tokio::task::JoinHandle<ProbeLog> {
    let log = ProbeLog::default();
    tokio::task::spawn_local(async move {
        let mut log = log;
        while !stop.get() {
            match get_root(port, PROBE_TIMEOUT).await {
                // A cut-off answer (QEMU quit while sending it) is not a success.
                Ok(body) if boot_id(&body).is_none() => {
                    log.failed += 1;
                    log.odd.push(body);
                }
                Ok(body) => {
                    let now = Instant::now();
                    if let Some(last) = log.last_ok {
                        if now - last > log.longest_gap {
                            log.longest_gap = now - last;
                            log.gap_end = Some(now);
                        }
                    }
                    log.last_ok = Some(now);
                    log.ok += 1;
                    let id = boot_id(&body).unwrap_or_default();
                    if log.boot_ids.last() != Some(&id) {
                        log.boot_ids.push(id);
                    }
                }
                Err(e) => {
                    log.failed += 1;
                    log.failures.push((Instant::now(), e));
                }
            }
            tokio::time::sleep(period).await;
        }
        log
    })
}

/// A second QEMU for `source`'s guest, waiting for an incoming migration: the same spec
/// (same name, kernel, devices) with `incoming`, its own directory for QMP and serial.
fn spawn_destination(source: &TestVm, dir_name: &str) -> TestVm {
    let dir = common::vm_dir(dir_name);
    let mut spec = source.spec.clone();
    spec.incoming = true;
    spec.qmp_socket = dir.join(format!("{}.qmp", spec.name));
    spec.serial_log = dir.join(format!("{}.serial", spec.name));
    TestVm::spawn(spec, dir)
}

/// Bound of a whole migration (128 MiB over loopback took ~0.2-0.5 s): a hang guard only.
const MIGRATION: Duration = Duration::from_secs(60);

#[test]
fn live_migration_keeps_the_guest_running_with_the_same_boot() {
    two_guest_test(|| async {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (mut source, mut src_qmp, _src_events, port) = boot("vm-mig", &[]).await;
                let before = get_root(port, QUICK).await.expect("GET / on the source");
                let id = boot_id(&before).expect("ok NAME BOOTID");

                let mut dest = spawn_destination(&source, "vm-mig-dst");
                let (mut dst_qmp, _dst_events) = Qmp::connect(&dest.spec.qmp_socket, QMP)
                    .await
                    .unwrap_or_else(|e| panic!("destination QMP: {e}; {}", dest.serial()));
                let status = dst_qmp.query_status(QMP).await.expect("status");
                assert_eq!(status.status, "inmigrate", "{status:?}");
                let listen = SocketAddr::from(([127, 0, 0, 1], 0));
                let mig_port = dst_qmp
                    .migrate_incoming(listen, QMP)
                    .await
                    .expect("migrate-incoming");
                assert_ne!(mig_port, 0);

                let stop = std::rc::Rc::new(std::cell::Cell::new(false));
                let prober = spawn_prober(port, Duration::from_millis(5), stop.clone());
                tokio::time::sleep(Duration::from_millis(200)).await;

                let started = Instant::now();
                src_qmp
                    .migrate(&format!("tcp:127.0.0.1:{mig_port}"), QMP)
                    .await
                    .expect("migrate");
                let info = src_qmp
                    .wait_migrated(Duration::from_millis(5), MIGRATION)
                    .await
                    .unwrap_or_else(|e| panic!("{e}; destination: {}", dest.serial()));
                let completed_after = started.elapsed();
                src_qmp.quit(QMP).await.expect("quit the source");
                let status = source.reap(QUICK).await;
                assert_eq!(status.code(), Some(0), "{status}");
                let dst_info = dst_qmp
                    .wait_migrated(Duration::from_millis(5), MIGRATION)
                    .await
                    .expect("destination loaded");
                dst_qmp
                    .hostfwd_add(nines_vm::NETDEV_ID, port, 80, QMP)
                    .await
                    .expect("hostfwd_add on the destination");
                let switched_after = started.elapsed();
                let deadline = Instant::now() + QUICK;
                let running = loop {
                    let s = dst_qmp.query_status(QMP).await.expect("status");
                    if s.running || Instant::now() > deadline {
                        break s;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                };
                assert_eq!(running.status, "running", "{running:?}");

                // The probe answers again, from the destination.
                let deadline = Instant::now() + QUICK;
                let after = loop {
                    match get_root(port, Duration::from_secs(1)).await {
                        Ok(body) => break body,
                        Err(e) if Instant::now() > deadline => {
                            panic!("no answer after the switch: {e}; {}", dest.serial())
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                };
                tokio::time::sleep(Duration::from_millis(100)).await;
                stop.set(true);
                let log = prober.await.expect("prober");
                assert_eq!(
                    boot_id(&after).as_deref(),
                    Some(id.as_str()),
                    "same boot (a migration, not a reboot): {before} then {after}"
                );
                assert_eq!(log.boot_ids, vec![id.clone()], "{log:?}");
                let since = |t: Instant| t.saturating_duration_since(started);
                let failures: Vec<String> = log
                    .failures
                    .iter()
                    .map(|(t, e)| format!("{:?}: {e}", since(*t)))
                    .collect();
                eprintln!(
                    "vm-mig: probe failures (from migrate): {failures:?}; longest gap ended at {:?}",
                    log.gap_end.map(since)
                );
                eprintln!(
                    "vm-mig: migration completed after {completed_after:?} (QEMU: total {:?} ms, \
                     downtime {:?} ms; destination {:?}), port forward back after \
                     {switched_after:?}; probe: longest gap {:?}, {} ok, {} failed (cut off: {:?}); load {}",
                    info.total_time_ms,
                    info.downtime_ms,
                    dst_info.status,
                    log.longest_gap,
                    log.ok,
                    log.failed,
                    log.odd,
                    common::loadavg()
                );
                dst_qmp.quit(QMP).await.expect("quit the destination");
                let status = dest.reap(QUICK).await;
                assert_eq!(status.code(), Some(0), "{status}");
            })
            .await;
    });
}

#[test]
fn migration_to_nowhere_fails_and_the_source_keeps_running() {
    guest_test(|| async {
        let (_vm, mut qmp, _events, port) = boot("vm-mig-fail", &[]).await;
        let before = get_root(port, QUICK).await.expect("GET /");
        let nowhere = common::free_port(); // bound and released: nothing listens there
        let started = Instant::now();
        let err = match qmp.migrate(&format!("tcp:127.0.0.1:{nowhere}"), QMP).await {
            Err(e) => e,
            Ok(()) => qmp
                .wait_migrated(Duration::from_millis(5), MIGRATION)
                .await
                .expect_err("nothing listens"),
        };
        eprintln!("vm-mig-fail: {err} (after {:?})", started.elapsed());
        assert!(
            matches!(&err, nines_vm::Error::Migration { what, .. } if what == "failed")
                || matches!(&err, nines_vm::Error::Command { .. }),
            "{err}"
        );
        let info = qmp.query_migrate(QMP).await.expect("query-migrate");
        assert_eq!(info.status, MigrationStatus::Failed, "{info:?}");
        let status = qmp.query_status(QMP).await.expect("status");
        assert_eq!((status.status.as_str(), status.running), ("running", true));
        let after = get_root(port, QUICK)
            .await
            .expect("GET / after the failure");
        assert_eq!(after, before);
    });
}
