//! VM components with real guests under TCG (the service image of scripts/build-vm-image.sh):
//! the agent boots QEMU as a component and reports what the engine needs to hear. Each test
//! boots its own VM, at most two at a time. Skipped (with a message) when QEMU is missing or
//! the image cannot be built, outside CI.

mod common;
/// The image and the two-VM limit, as `nines-vm`'s own guest tests get them.
#[path = "../../vm/tests/common/mod.rs"]
mod vmimage;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nines_engine::{ActionKind, Command, FaultKind, HaState, Input, Outcome};
use nines_model::CompId;
use vmimage::{boot_id, get_root, Image, Slot};

/// Bound of one whole test (boots on a busy host take several seconds).
const LIMIT: Duration = Duration::from_secs(120);
/// Bound of the wait for one boot; the component's instantiate timeout is what limits it.
const BOOT: Duration = Duration::from_secs(70);
/// The probe the tests configure: fast, so that hang detection is quick to test.
const PERIOD: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_secs(1);

/// Runs `body` with the image and a VM slot on its own runtime, unless guests cannot run here.
fn vm_test<F: Future<Output = ()>>(body: impl FnOnce(&'static Image) -> F) {
    // Before any agent exists in this process (see `vmimage::image`).
    let Some(image) = vmimage::image() else {
        return;
    };
    let _slot = Slot::take();
    vmimage::runtime().block_on(async {
        tokio::time::timeout(LIMIT, body(image))
            .await
            .expect("test timed out");
    });
}

/// One vm component `c` (su on n1, su2 on n2) forwarding `port` to the guest's HTTP, with the
/// test probe and `extra` lines in its `vm` block.
fn vm_config(image: &Image, port: u16, instantiate: &str, extra: &[&str]) -> String {
    let mut comp = format!(
        "          c:
            kind: vm
            timeouts: {{ instantiate: {instantiate}, terminate: 5s }}
            vm:
              kernel: {kernel}
              initrd: {initrd}
              memory: 128M
              accel: tcg
              forwards: [{{ host: {port}, guest: 80 }}]
              health: {{ http: \"127.0.0.1:{port}/cgi-bin/health\", expect: healthy, period: {period}ms, timeout: {timeout}ms }}
",
        kernel = q(&image.kernel.to_string_lossy()),
        initrd = q(&image.initrd.to_string_lossy()),
        period = PERIOD.as_millis(),
        timeout = TIMEOUT.as_millis(),
    );
    for line in extra {
        comp.push_str(&format!("              {line}\n"));
    }
    config(&comp, "")
}

/// The guest's serial console, for failure messages.
fn console(t: &TestAgent) -> String {
    let path = nines_agent::log_file(&t.dir.path().join("logs"), "app/sg/su/c");
    let serial = path.with_extension("serial");
    format!(
        "QEMU log:\n{}\nconsole:\n{}",
        std::fs::read_to_string(&path).unwrap_or_default(),
        std::fs::read_to_string(serial).unwrap_or_default()
    )
}

/// Starts an agent for `yaml` and instantiates `app/sg/su/c`; returns it once the VM is
/// healthy, with the component, QEMU's pid and how long instantiation took.
async fn boot(name: &str, yaml: &str) -> (TestAgent, CompId, u32, Duration) {
    let mut t = TestAgent::start(name, yaml).await;
    let c = t.comp("app/sg/su/c");
    let asked = t.clock.now();
    t.handle.execute(&ActionKind::Instantiate {
        comp: c,
        urgent: true,
    });
    let r = t.expect(BOOT, is_done(c, Command::Instantiate)).await;
    assert_eq!(outcome(&r.input), Outcome::Ok, "{}", console(&t));
    let took = r.at.saturating_since(asked);
    let pid = t.pid(c).expect("QEMU's pid is listed");
    eprintln!("{name}: instantiate -> healthy {took:?}");
    (t, c, pid, took)
}

#[test]
fn boots_healthy_at_full_priority_and_a_kill_is_seen_at_once() {
    vm_test(|image| async move {
        let port = vmimage::free_port();
        let (mut t, c, pid, _) = boot("vm-kill", &vm_config(image, port, "60s", &[])).await;
        // A direct child in its own process group, at the agent's priority (not nice 19).
        let raw = rustix::process::Pid::from_raw(pid as i32).expect("pid");
        let pgid = rustix::process::getpgid(Some(raw)).expect("pgid");
        assert_eq!(pgid, raw);
        let ours = rustix::process::getpriority_process(None).expect("nice");
        let nices = thread_nices(pid);
        assert!(!nices.is_empty());
        assert!(
            nices.iter().all(|&n| n == i64::from(ours)),
            "QEMU threads at {nices:?}, the agent at {ours}"
        );
        // A VM is not SA-aware: its assignment is confirmed at once.
        let csi = t.csi("app/si/main");
        t.handle.execute(&ActionKind::AssignCsi {
            comp: c,
            csi,
            ha_state: HaState::Active,
        });
        let r = t
            .expect(Duration::from_secs(2), |i| {
                matches!(i, Input::CsiAssigned { .. })
            })
            .await;
        assert!(matches!(
            r.input,
            Input::CsiAssigned {
                outcome: Outcome::Ok,
                ..
            }
        ));

        let killed = t.clock.now();
        kill9(pid);
        let r = t
            .expect_failed(c, FaultKind::Exited, Duration::from_secs(5))
            .await;
        let detection = r.at.saturating_since(killed);
        eprintln!("vm-kill: SIGKILL -> ComponentFailed(Exited) {detection:?}");
        assert!(detection < Duration::from_millis(500), "{detection:?}");
        assert!(!alive(pid), "reaped");

        t.cleanup_ok(c).await;
        let qmp = t
            .dir
            .path()
            .join("agent.sock.vm")
            .join(format!("c{}.qmp", c.0));
        assert!(!qmp.exists(), "cleanup removes the QMP socket");
        t.expect_silence(Duration::from_millis(300)).await;
        t.teardown().await;
    });
}

#[test]
fn a_hung_guest_misses_its_healthcheck() {
    vm_test(|image| async move {
        let port = vmimage::free_port();
        let (mut t, c, pid, _) = boot("vm-hang", &vm_config(image, port, "60s", &[])).await;
        // QEMU frozen as a whole: no exit, no QMP event; only the probe can tell.
        let raw = rustix::process::Pid::from_raw(pid as i32).expect("pid");
        let stopped = t.clock.now();
        rustix::process::kill_process(raw, rustix::process::Signal::STOP).expect("SIGSTOP");
        let r = t
            .expect_failed(c, FaultKind::HealthcheckMissed, Duration::from_secs(10))
            .await;
        let detection = r.at.saturating_since(stopped);
        eprintln!(
            "vm-hang: SIGSTOP -> ComponentFailed(HealthcheckMissed) {detection:?} \
             (period {PERIOD:?} + timeout {TIMEOUT:?})"
        );
        // At most a period to the next probe, then its timeout (plus scheduling slack).
        assert!(
            detection <= PERIOD + TIMEOUT + Duration::from_millis(500),
            "{detection:?}"
        );
        assert!(
            detection >= TIMEOUT,
            "a probe waits its timeout: {detection:?}"
        );
        // Reported once; the engine's cleanup kills the frozen QEMU (SIGKILL needs no CONT).
        t.expect_silence(PERIOD * 3).await;
        t.cleanup_ok(c).await;
        assert!(!alive(pid));
        t.teardown().await;
    });
}

#[test]
fn terminate_powers_the_guest_down_and_a_new_one_boots_on_the_same_port() {
    vm_test(|image| async move {
        let port = vmimage::free_port();
        let yaml = vm_config(image, port, "60s", &[]);
        let (mut t, c, pid, _) = boot("vm-term", &yaml).await;
        let asked = Instant::now();
        t.handle.execute(&ActionKind::Terminate { comp: c });
        let r = t
            .expect(Duration::from_secs(10), is_done(c, Command::Terminate))
            .await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        let took = asked.elapsed();
        eprintln!("vm-term: terminate -> done {took:?}");
        // The ladder's first step: the guest powered off (well within the 4 s power-down step).
        assert!(took < Duration::from_secs(4), "{took:?}: {}", console(&t));
        assert!(
            std::fs::read_to_string(
                nines_agent::log_file(&t.dir.path().join("logs"), "app/sg/su/c")
                    .with_extension("serial")
            )
            .unwrap_or_default()
            .contains("SVC-POWERDOWN"),
            "{}",
            console(&t)
        );
        assert!(!alive(pid), "reaped");
        assert!(t.pid(c).is_none());
        assert!(
            !t.seen
                .iter()
                .any(|r| matches!(r.input, Input::ComponentFailed { .. })),
            "a requested shutdown is no failure: {:?}",
            t.seen
        );
        // Repair: instantiate again, same port.
        let asked = t.clock.now();
        t.handle.execute(&ActionKind::Instantiate {
            comp: c,
            urgent: true,
        });
        let r = t.expect(BOOT, is_done(c, Command::Instantiate)).await;
        assert_eq!(outcome(&r.input), Outcome::Ok, "{}", console(&t));
        eprintln!(
            "vm-term: second boot, instantiate -> healthy {:?}",
            r.at.saturating_since(asked)
        );
        assert_ne!(t.pid(c), Some(pid));
        // The first guest's console is kept beside the new one.
        let serial = nines_agent::log_file(&t.dir.path().join("logs"), "app/sg/su/c")
            .with_extension("serial");
        let mut previous = serial.clone().into_os_string();
        previous.push(".1");
        let previous = std::fs::read_to_string(&previous).unwrap_or_default();
        assert!(previous.contains("SVC-POWERDOWN"), "{previous}");
        t.teardown().await;
    });
}

#[test]
fn a_guest_panic_is_reported_once() {
    vm_test(|image| async move {
        let port = vmimage::free_port();
        // A panicking kernel prints its oops on the emulated serial line before it notifies
        // QEMU, which can take longer than the test probe's timeout: whichever comes first is
        // the failure. Here the probe waits long enough for the panic to be what is seen.
        let yaml = vm_config(image, port, "60s", &["cmdline_extra: [svcpanic=2]"]).replace(
            &format!("timeout: {}ms", TIMEOUT.as_millis()),
            "timeout: 20s",
        );
        let (mut t, c, pid, _) = boot("vm-panic", &yaml).await;
        t.expect_failed(c, FaultKind::ErrorReport, Duration::from_secs(20))
            .await;
        // QEMU exits after the panic (status 1); that is the same failure, not another.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while alive(pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(pid), "QEMU exits after the guest panic");
        t.expect_silence(Duration::from_millis(500)).await;
        t.cleanup_ok(c).await;
        t.teardown().await;
    });
}

#[test]
fn a_guest_that_never_gets_healthy_times_out_and_a_bad_kernel_fails() {
    vm_test(|image| async move {
        let port = vmimage::free_port();
        // The probe expects what the service never says.
        let yaml = vm_config(image, port, "6s", &[]).replace("expect: healthy", "expect: nope");
        let mut t = TestAgent::start("vm-never", &yaml).await;
        let c = t.comp("app/sg/su/c");
        let asked = Instant::now();
        t.handle.execute(&ActionKind::Instantiate {
            comp: c,
            urgent: true,
        });
        let r = t.expect(BOOT, is_done(c, Command::Instantiate)).await;
        assert_eq!(outcome(&r.input), Outcome::TimedOut);
        // Within the timeout: the wait gives up when the next probe would start after it.
        let took = asked.elapsed();
        let limit = Duration::from_secs(6);
        assert!(
            took >= limit - PERIOD - Duration::from_millis(200) && took <= limit + TIMEOUT,
            "{took:?}"
        );
        let pid = t.pid(c).expect("QEMU runs until the cleanup");
        t.cleanup_ok(c).await;
        assert!(!alive(pid));
        t.teardown().await;

        // QEMU cannot load the kernel and exits at once: a failed instantiation.
        let missing = Path::new("/nonexistent/vmlinux")
            .to_string_lossy()
            .into_owned();
        let yaml = vm_config(image, port, "10s", &[])
            .replace(&q(&image.kernel.to_string_lossy()), &q(&missing));
        let mut t = TestAgent::start("vm-nokernel", &yaml).await;
        let c = t.comp("app/sg/su/c");
        t.handle.execute(&ActionKind::Instantiate {
            comp: c,
            urgent: true,
        });
        let r = t
            .expect(Duration::from_secs(10), is_done(c, Command::Instantiate))
            .await;
        assert_eq!(outcome(&r.input), Outcome::Failed);
        assert!(console(&t).contains("vmlinux"), "QEMU said why in the log");
        t.teardown().await;
    });
}

/// QEMU left running by an earlier agent of the node (as it would be after the agent
/// crashed): the same files the agent uses, its own process group, and a record.
struct Leftover(std::process::Child);

impl Drop for Leftover {
    fn drop(&mut self) {
        // Not waited for: the agent in this process reaps it (it is a subreaper).
        let _ = self.0.kill();
    }
}

fn leftover_vm(image: &Image, dir: &TempDir, comp: CompId, port: u16) -> Leftover {
    use std::os::unix::process::CommandExt;
    // The agent's conventions (see the agent's `vm` module): what an adopting agent relies on.
    let run = dir.path().join("agent.sock.vm");
    std::fs::create_dir_all(&run).expect("run dir");
    std::fs::create_dir_all(dir.path().join("logs")).expect("log dir");
    let mut spec = vmimage::spec(image, "app.sg.su.c", &run, port);
    spec.qmp_socket = run.join(format!("c{}.qmp", comp.0));
    spec.serial_log =
        nines_agent::log_file(&dir.path().join("logs"), "app/sg/su/c").with_extension("serial");
    let mut cmd = nines_vm::command(&spec).expect("QEMU command");
    cmd.process_group(0);
    // SAFETY: only an async-signal-safe prctl between fork and exec: QEMU dies with the test.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd.spawn().expect("spawn QEMU");
    let pid = child.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let start = stat[stat.rfind(')').expect("comm") + 1..]
        .split_whitespace()
        .nth(19)
        .expect("start time")
        .to_string();
    let procs = dir.path().join("procs");
    std::fs::create_dir_all(&procs).expect("procs dir");
    std::fs::write(
        procs.join("app%2Fsg%2Fsu%2Fc.pid"),
        format!("app/sg/su/c\n{pid} {start}\n"),
    )
    .expect("record");
    Leftover(child)
}

#[test]
fn an_adopted_vm_is_supervised_and_terminated_through_qmp_again() {
    vm_test(|image| async move {
        let port = vmimage::free_port();
        let yaml = vm_config(image, port, "60s", &[]);
        let dir = TempDir::new("vm-adopt");
        let c = match load(&yaml).find("app/sg/su/c") {
            Some(nines_model::EntityRef::Comp(c)) => c,
            other => panic!("{other:?}"),
        };
        let vm = leftover_vm(image, &dir, c, port);
        let pid = vm.0.id();
        // Up and serving before the new agent comes (the power button needs the guest's acpid).
        let health = nines_vm::Probe::Http {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            path: "/cgi-bin/health".into(),
            expect: Some("healthy".into()),
        };
        nines_vm::wait_healthy(&health, PERIOD, TIMEOUT, BOOT)
            .await
            .expect("the leftover guest boots");

        let mut t = TestAgent::start_in(dir, &yaml).await;
        let adopted = t.handle.adopted().await;
        assert_eq!(adopted.len(), 1, "{adopted:?}");
        assert_eq!((adopted[0].comp, adopted[0].pid), (c, pid));
        // At once, while the agent may still be connecting to QMP: the terminate waits for the
        // connection and powers the guest down, rather than killing it.
        t.handle.execute(&ActionKind::Terminate { comp: c });
        let r = t
            .expect(Duration::from_secs(10), is_done(c, Command::Terminate))
            .await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        assert!(console(&t).contains("SVC-POWERDOWN"), "{}", console(&t));
        assert!(!alive(pid));
        drop(vm);
        t.teardown().await;
    });
}

/// `vm_test` for a test that runs two VMs at once (a live migration's source and
/// destination).
fn two_vm_test<F: Future<Output = ()>>(body: impl FnOnce(&'static Image) -> F) {
    let Some(image) = vmimage::image() else {
        return;
    };
    let _slots = Slot::take_two();
    vmimage::runtime().block_on(async {
        tokio::time::timeout(LIMIT, body(image))
            .await
            .expect("test timed out");
    });
}

/// `vm_config` with `vm.migrate`: `app/sg/su/c` (on n1) forwards `port`, which it keeps on
/// whichever node it runs; su2's instance (on n2, never started here) gets `other`.
fn migrating_config(image: &Image, port: u16, other: u16) -> String {
    let yaml = vm_config(image, port, "60s", &["migrate: true"]);
    let su2 = format!(
        "su2: {{ node: n2, vm: {{ c: {{ forwards: [{{ host: {other}, guest: 80 }}], \
         health: {{ http: \"127.0.0.1:{other}/cgi-bin/health\", expect: healthy }} }} }} }}"
    );
    assert!(yaml.contains("su2: { node: n2 }"), "{yaml}");
    yaml.replace("su2: { node: n2 }", &su2)
}

/// The boot id `GET /` answers on `port`, retried for up to `limit`.
async fn boot_id_on(port: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        match get_root(port, Duration::from_secs(1)).await {
            Ok(body) => return boot_id(&body).unwrap_or_else(|| panic!("odd answer {body:?}")),
            Err(e) if Instant::now() > deadline => panic!("GET / on {port}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// GETs `/` on `port` every 10 ms until `stop`: the longest time between two answers, the
/// boot ids answered (without repeats), and how many attempts succeeded and failed.
async fn probe_root(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Duration, Vec<String>, u32, u32) {
    let (mut gap, mut ids, mut ok, mut failed) = (Duration::ZERO, Vec::<String>::new(), 0, 0);
    let mut last = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        match get_root(port, Duration::from_secs(1)).await {
            Ok(body) => {
                ok += 1;
                gap = gap.max(last.elapsed());
                last = Instant::now();
                if let Some(id) = boot_id(&body) {
                    if ids.last() != Some(&id) {
                        ids.push(id);
                    }
                }
            }
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (gap, ids, ok, failed)
}

/// The processes whose command line contains `needle`.
fn qemus_with(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

fn failures(seen: &[nines_agent::Report]) -> Vec<&nines_agent::Report> {
    seen.iter()
        .filter(|r| matches!(r.input, Input::ComponentFailed { .. }))
        .collect()
}

#[test]
fn a_vm_live_migrates_to_another_agent_and_keeps_its_boot() {
    two_vm_test(|image| async move {
        let port = vmimage::free_port();
        let other = vmimage::free_port();
        let model = load(&migrating_config(image, port, other));
        let n1 = nines_model::NodeId(0);
        let n2 = nines_model::NodeId(1);
        let mut a = TestAgent::start_node(TempDir::new("vm-mig-a"), model.clone(), n1).await;
        let mut b = TestAgent::start_node(TempDir::new("vm-mig-b"), model, n2).await;
        let c = a.comp("app/sg/su/c");
        let asked = Instant::now();
        a.handle.execute(&ActionKind::Instantiate {
            comp: c,
            urgent: true,
        });
        let r = a.expect(BOOT, is_done(c, Command::Instantiate)).await;
        assert_eq!(outcome(&r.input), Outcome::Ok, "{}", console(&a));
        eprintln!("vm-mig: instantiate on n1 -> healthy {:?}", asked.elapsed());
        let pid_a = a.pid(c).expect("QEMU on n1");
        let id = boot_id_on(port, Duration::from_secs(5)).await;

        // Every action goes to both agents, as a driver hands them out: each takes its own.
        let both = |a: &TestAgent, b: &TestAgent, action: ActionKind| {
            a.handle.execute(&action);
            b.handle.execute(&action);
        };
        // A client GETting `/` all along: the outage it sees, and that it sees one boot.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let prober = tokio::spawn(probe_root(port, stop.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        both(&a, &b, ActionKind::MigrateIn { comp: c, to: n2 });
        let r = b
            .expect(BOOT, |i| matches!(i, Input::MigrationPrepared { .. }))
            .await;
        let Input::MigrationPrepared {
            comp,
            port: Some(listen),
        } = r.input
        else {
            panic!("destination not prepared: {r:?}");
        };
        assert_eq!(comp, c);
        let prepared = started.elapsed();
        eprintln!("vm-mig: MigrateIn -> MigrationPrepared (port {listen}) {prepared:?}");
        assert!(
            b.pid(c).is_none(),
            "a waiting destination is no incarnation"
        );

        let step = Instant::now();
        both(
            &a,
            &b,
            ActionKind::MigrateOut {
                comp: c,
                to: n2,
                port: listen,
            },
        );
        let r = a
            .expect(BOOT, |i| matches!(i, Input::MigrationSent { .. }))
            .await;
        assert_eq!(
            r.input,
            Input::MigrationSent {
                comp: c,
                outcome: Outcome::Ok
            },
            "{}",
            console(&a)
        );
        eprintln!(
            "vm-mig: MigrateOut -> MigrationSent(Ok) {:?}",
            step.elapsed()
        );
        assert!(!alive(pid_a), "the source QEMU quit and was reaped");
        assert!(a.pid(c).is_none());

        let step = Instant::now();
        both(
            &a,
            &b,
            ActionKind::MigrateFinish {
                comp: c,
                to: n2,
                commit: true,
            },
        );
        let r = b
            .expect(BOOT, |i| matches!(i, Input::MigrationFinished { .. }))
            .await;
        assert_eq!(
            r.input,
            Input::MigrationFinished {
                comp: c,
                outcome: Outcome::Ok
            }
        );
        eprintln!(
            "vm-mig: MigrateFinish -> MigrationFinished(Ok) {:?}; whole migration {:?}",
            step.elapsed(),
            started.elapsed()
        );
        let pid_b = b.pid(c).expect("QEMU on n2 is the component now");
        assert!(alive(pid_b));
        let after = boot_id_on(port, Duration::from_secs(5)).await;
        eprintln!(
            "vm-mig: GET / answers again {:?} after MigrateIn",
            started.elapsed()
        );
        assert_eq!(after, id, "the same boot: a migration, not a reboot");
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (gap, ids, ok, failed) = prober.await.expect("prober");
        eprintln!(
            "vm-mig: a client GETting / every 10 ms: longest gap {gap:?}, {ok} ok, {failed} failed"
        );
        assert_eq!(ids, vec![id.clone()], "one boot all along");

        // B supervises it (its probe passes), A reported nothing wrong and ignores it now.
        b.expect_silence(PERIOD * 5).await;
        a.handle.execute(&ActionKind::Cleanup { comp: c });
        a.expect_silence(Duration::from_millis(300)).await;
        assert!(failures(&a.seen).is_empty(), "{:?}", a.seen);
        assert!(failures(&b.seen).is_empty(), "{:?}", b.seen);
        assert!(alive(pid_b));

        // B owns it: a cleanup there kills it.
        let step = Instant::now();
        b.cleanup_ok(c).await;
        eprintln!("vm-mig: cleanup on n2 {:?}", step.elapsed());
        assert!(!alive(pid_b));
        assert!(b.pid(c).is_none());
        a.teardown().await;
        b.teardown().await;
    });
}

#[test]
fn a_migration_to_nowhere_fails_and_the_vm_serves_on() {
    // Two: the VM, and later a destination beside it.
    two_vm_test(|image| async move {
        let port = vmimage::free_port();
        let (mut t, c, pid, _) = boot("vm-mig-fail", &vm_config(image, port, "60s", &[])).await;
        let id = boot_id_on(port, Duration::from_secs(5)).await;
        let nowhere = vmimage::free_port(); // bound and released: nothing listens there
        let started = Instant::now();
        t.handle.execute(&ActionKind::MigrateOut {
            comp: c,
            to: nines_model::NodeId(1),
            port: nowhere,
        });
        let r = t
            .expect(Duration::from_secs(70), |i| {
                matches!(i, Input::MigrationSent { .. })
            })
            .await;
        assert_eq!(
            r.input,
            Input::MigrationSent {
                comp: c,
                outcome: Outcome::Failed
            }
        );
        eprintln!(
            "vm-mig-fail: MigrateOut to nowhere -> MigrationSent(Failed) {:?}",
            started.elapsed()
        );
        assert_eq!(t.pid(c), Some(pid));
        assert_eq!(boot_id_on(port, Duration::from_secs(5)).await, id);
        // The same through the entry for a destination on another host.
        t.handle
            .migrate_out(c, std::net::SocketAddr::from(([127, 0, 0, 1], nowhere)));
        let r = t
            .expect(Duration::from_secs(70), |i| {
                matches!(i, Input::MigrationSent { .. })
            })
            .await;
        assert_eq!(
            r.input,
            Input::MigrationSent {
                comp: c,
                outcome: Outcome::Failed
            }
        );
        assert_eq!(boot_id_on(port, Duration::from_secs(5)).await, id);
        // Still supervised, and healthy: no failure.
        t.expect_silence(PERIOD * 5).await;

        // A destination on the same agent as the source (its own files), then abandoned:
        // killed and reaped without an answer, the running VM untouched.
        let started = Instant::now();
        t.handle.execute(&ActionKind::MigrateIn {
            comp: c,
            to: nines_model::NodeId(0),
        });
        let r = t
            .expect(Duration::from_secs(70), |i| {
                matches!(i, Input::MigrationPrepared { .. })
            })
            .await;
        assert!(
            matches!(r.input, Input::MigrationPrepared { port: Some(_), .. }),
            "{r:?}"
        );
        eprintln!(
            "vm-mig-fail: MigrateIn on the source's own agent -> prepared {:?}",
            started.elapsed()
        );
        let sock = t.dir.path().join("agent.sock.vm");
        let waiting = qemus_with(&sock.join(format!("c{}-in.qmp", c.0)).to_string_lossy());
        assert_eq!(waiting.len(), 1, "one destination QEMU: {waiting:?}");
        t.handle.execute(&ActionKind::MigrateFinish {
            comp: c,
            to: nines_model::NodeId(0),
            commit: false,
        });
        t.expect_silence(PERIOD * 3).await;
        assert!(!alive(waiting[0]), "the abandoned destination is reaped");
        assert_eq!(t.pid(c), Some(pid));
        assert_eq!(boot_id_on(port, Duration::from_secs(5)).await, id);

        // And a kill of the VM is still seen (as its exit, or as the probe it cut off).
        kill9(pid);
        let r = t
            .expect(Duration::from_secs(5), |i| {
                matches!(i, Input::ComponentFailed { .. })
            })
            .await;
        assert!(
            matches!(r.input, Input::ComponentFailed { comp, kind: FaultKind::Exited | FaultKind::HealthcheckMissed, .. } if comp == c),
            "{r:?}"
        );
        t.cleanup_ok(c).await;
        t.teardown().await;
    });
}
