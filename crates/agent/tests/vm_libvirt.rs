//! VM components with `driver: libvirt`: real guests (TCG) run by a real libvirtd, which the
//! test starts under a subreaper (`setsid tini -s -g -- sh -c 'virtlogd & exec libvirtd'`,
//! VM-RECIPE.md §7: without one, libvirt waits for the zombie of every QEMU it kills) with
//! its sockets and state under /run, and stops at the end, also when the test fails. A
//! libvirtd that already runs on the machine is used as it is (and left running).
//!
//! Skipped (with a message) outside CI when QEMU, libvirtd, virtlogd or tini is missing, or
//! the test does not run as root (`qemu:///system` needs it); in CI (`CI` set) that fails.
#![cfg(feature = "libvirt")]

mod common;
/// The image and the two-VM limit, as `nines-vm`'s own guest tests get them.
#[path = "../../vm/tests/common/mod.rs"]
mod vmimage;

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use nines_engine::{ActionKind, Command, FaultKind, Input, Outcome};
use nines_model::CompId;
use nines_vm::libvirt::{Libvirt, DEFAULT_URI, URI_ENV};
use vmimage::{Image, Slot};

/// Bound of one whole test.
const LIMIT: Duration = Duration::from_secs(180);
/// Bound of the wait for one boot (the component's instantiate timeout limits it).
const BOOT: Duration = Duration::from_secs(70);

/// One test at a time: they share the daemon and `NINES_LIBVIRT_URI`, which the agent reads
/// at each start.
static SERIAL: Mutex<()> = Mutex::new(());

/// Skips outside CI (with `why` printed), fails in CI.
fn skip(why: &str) {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    assert!(!ci, "{why}, and CI is set");
    eprintln!("SKIPPED: {why}");
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(bin).is_file()
}

/// The libvirt daemon of a test: started by it (and stopped on drop), or found running.
struct Libvirtd {
    /// tini, our child, and a pidfd on it (signals through the pidfd never reach a reused
    /// pid, and the agent's reaper may reap tini before we wait for it).
    ours: Option<(Child, OwnedFd)>,
    log: PathBuf,
}

impl Libvirtd {
    /// A reachable daemon at `qemu:///system`, or `None` (after `skip`) when this machine
    /// cannot run one.
    fn start() -> Option<Libvirtd> {
        for bin in ["libvirtd", "virtlogd", "tini"] {
            if !on_path(bin) {
                skip(&format!(
                    "{bin} not found (install libvirt-daemon-system libvirt-daemon-driver-qemu tini)"
                ));
                return None;
            }
        }
        if !rustix::process::geteuid().is_root() {
            skip("qemu:///system needs root");
            return None;
        }
        let log = std::env::temp_dir().join(format!("nines-libvirtd-{}.log", std::process::id()));
        if Libvirt::connect(DEFAULT_URI).is_ok() {
            eprintln!("using the libvirtd already running");
            return Some(Libvirtd { ours: None, log });
        }
        let out = std::fs::File::create(&log).expect("libvirtd log");
        let err = out.try_clone().expect("libvirtd log");
        let started = Instant::now();
        let child = std::process::Command::new("setsid")
            .args(["tini", "-s", "-g", "--", "sh", "-c"])
            .arg("PATH=$PATH:/usr/sbin; virtlogd & exec libvirtd")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn setsid tini libvirtd");
        let pid = rustix::process::Pid::from_child(&child);
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .expect("pidfd_open");
        let d = Libvirtd {
            ours: Some((child, fd)),
            log,
        };
        // Both sockets: libvirtd starts a domain only once it reaches virtlogd.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logd = Path::new("/run/libvirt/virtlogd-sock").exists();
            if logd && Libvirt::connect(DEFAULT_URI).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "libvirtd did not come up: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("libvirtd up in {:?}", started.elapsed());
        Some(d)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        let Some((mut child, fd)) = self.ours.take() else {
            return;
        };
        // tini passes SIGTERM to the group: libvirtd and virtlogd.
        let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::TERM);
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: 10,
            tv_nsec: 0,
        };
        let exited = matches!(rustix::event::poll(&mut fds, Some(&timeout)), Ok(n) if n > 0);
        if !exited {
            let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
        }
        let _ = child.try_wait(); // the agent's reaper may have been first
        if std::thread::panicking() {
            eprintln!("libvirtd log:\n{}", self.log_text());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs `body` with the image on its own runtime, one test at a time, unless guests cannot
/// run here.
fn lv_test<F: Future<Output = ()>>(body: impl FnOnce(&'static Image) -> F) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Before any agent exists in this process (see `vmimage::image`).
    let Some(image) = vmimage::image() else {
        return;
    };
    vmimage::runtime().block_on(async {
        tokio::time::timeout(LIMIT, body(image))
            .await
            .expect("test timed out");
    });
}

/// One `driver: libvirt` vm component `c` forwarding `port` to the guest's HTTP.
fn lv_config(image: &Image, port: u16) -> String {
    let comp = format!(
        "          c:
            kind: vm
            timeouts: {{ instantiate: 60s, terminate: 5s }}
            vm:
              driver: libvirt
              kernel: {kernel}
              initrd: {initrd}
              memory: 128M
              accel: tcg
              forwards: [{{ host: {port}, guest: 80 }}]
              health: {{ http: \"127.0.0.1:{port}/cgi-bin/health\", expect: healthy, period: 200ms, timeout: 1s }}
",
        kernel = q(&image.kernel.to_string_lossy()),
        initrd = q(&image.initrd.to_string_lossy()),
    );
    config(&comp, "")
}

fn comp_log(t: &TestAgent) -> String {
    let path = nines_agent::log_file(&t.dir.path().join("logs"), "app/sg/su/c");
    let serial = path.with_extension("serial");
    format!(
        "component log:\n{}\nconsole:\n{}",
        std::fs::read_to_string(&path).unwrap_or_default(),
        std::fs::read_to_string(serial).unwrap_or_default()
    )
}

/// Instantiates `c` and waits for the answer; returns it and how long it took.
async fn instantiate(t: &mut TestAgent, c: CompId) -> (Outcome, Duration) {
    let asked = t.clock.now();
    t.handle.execute(&ActionKind::Instantiate {
        comp: c,
        urgent: true,
    });
    let r = t.expect(BOOT, is_done(c, Command::Instantiate)).await;
    (outcome(&r.input), r.at.saturating_since(asked))
}

/// The domain of `app/sg/su/c` in the tests' cluster, as the agent names it.
fn domain_of(t: &TestAgent) -> String {
    format!("nines.{}.app.sg.su.c", t.model.cluster)
}

fn defined(name: &str) -> bool {
    Libvirt::connect(DEFAULT_URI)
        .and_then(|lv| lv.lookup(name))
        .map(|d| d.is_some())
        .unwrap_or(false)
}

#[test]
fn start_stop_kill_and_restart_through_libvirt() {
    lv_test(|image| async move {
        let Some(daemon) = Libvirtd::start() else {
            return;
        };
        let _slot = Slot::take();
        let port = vmimage::free_port();
        let mut t = TestAgent::start("lv", &lv_config(image, port)).await;
        let c = t.comp("app/sg/su/c");
        let domain = domain_of(&t);

        // Start: instantiated once the guest answers its probe.
        let (o, took) = instantiate(&mut t, c).await;
        assert_eq!(o, Outcome::Ok, "{}\n{}", comp_log(&t), daemon.log_text());
        eprintln!(
            "lv: instantiate -> healthy {took:?} (load {})",
            vmimage::loadavg()
        );
        let pid = t.pid(c).expect("QEMU's pid is listed");
        assert!(
            nines_vm::libvirt::is_qemu_of(pid, &domain),
            "the listed pid is the domain's QEMU"
        );
        assert!(defined(&domain));

        // Stop: a requested shutdown, no failure; the domain is gone afterwards.
        let asked = Instant::now();
        t.handle.execute(&ActionKind::Terminate { comp: c });
        let r = t
            .expect(Duration::from_secs(15), is_done(c, Command::Terminate))
            .await;
        assert_eq!(outcome(&r.input), Outcome::Ok);
        eprintln!("lv: terminate -> done {:?}", asked.elapsed());
        assert!(!alive(pid), "QEMU is gone");
        // The ladder's first step: the guest powered off on the ACPI button.
        assert!(comp_log(&t).contains("SVC-POWERDOWN"), "{}", comp_log(&t));
        assert!(t.pid(c).is_none());
        assert!(!defined(&domain), "terminate undefines the domain");
        assert!(
            !t.seen
                .iter()
                .any(|r| matches!(r.input, Input::ComponentFailed { .. })),
            "a requested stop is no failure: {:?}",
            t.seen
        );

        // Start again, then SIGKILL its QEMU: an Exited failure, seen through the pidfd.
        let (o, took) = instantiate(&mut t, c).await;
        assert_eq!(o, Outcome::Ok, "{}", comp_log(&t));
        eprintln!("lv: second instantiate -> healthy {took:?}");
        let pid = t.pid(c).expect("QEMU's pid");
        let killed = t.clock.now();
        kill9(pid);
        let r = t
            .expect_failed(c, FaultKind::Exited, Duration::from_secs(10))
            .await;
        eprintln!(
            "lv: SIGKILL -> ComponentFailed(Exited) {:?} (load {})",
            r.at.saturating_since(killed),
            vmimage::loadavg()
        );
        // Once: the libvirt event that follows is the same failure.
        t.expect_silence(Duration::from_millis(500)).await;

        // Repair: cleanup (destroy + undefine), then instantiate again.
        let cleaned = Instant::now();
        t.cleanup_ok(c).await;
        eprintln!("lv: cleanup -> done {:?}", cleaned.elapsed());
        assert!(!defined(&domain), "cleanup undefines the domain");
        assert!(
            !nines_vm::libvirt::boot_dir(&domain).exists(),
            "files removed"
        );
        let (o, took) = instantiate(&mut t, c).await;
        assert_eq!(o, Outcome::Ok, "{}", comp_log(&t));
        eprintln!("lv: after the failure, instantiate -> healthy {took:?}");
        let again = t.pid(c).expect("QEMU's pid");
        assert_ne!(again, pid);
        let destroyed = Instant::now();
        t.cleanup_ok(c).await;
        eprintln!("lv: cleanup of a running VM {:?}", destroyed.elapsed());
        assert!(!alive(again));
        t.teardown().await;
        drop(daemon);
    });
}

#[test]
fn an_unreachable_daemon_fails_the_instantiation_at_once_and_says_where() {
    lv_test(|image| async move {
        let dir = TempDir::new("lv-absent");
        let uri = format!(
            "qemu:///system?socket={}",
            dir.path().join("no-libvirtd.sock").display()
        );
        std::env::set_var(URI_ENV, &uri);
        let mut t = TestAgent::start_in(dir, &lv_config(image, vmimage::free_port())).await;
        let c = t.comp("app/sg/su/c");
        let (o, took) = instantiate(&mut t, c).await;
        std::env::remove_var(URI_ENV);
        assert_eq!(o, Outcome::Failed);
        // Not the 60 s instantiate timeout: a generous hang bound.
        assert!(took < Duration::from_secs(20), "{took:?}");
        let log = comp_log(&t);
        assert!(
            log.contains(&uri) && log.contains("libvirt daemon is not reachable"),
            "{log}"
        );
        assert!(t.pid(c).is_none());
        t.teardown().await;
    });
}
