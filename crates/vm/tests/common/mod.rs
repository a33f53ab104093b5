//! Shared by the guest tests and the `boot` example: the image (built once by the project's
//! script), a limit of two VMs at a time (the machine has two cores), and `TestVm`, a QEMU
//! child that is killed, reaped and has its directory removed on drop, also when a test panics.
#![allow(dead_code)]

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use nines_vm::{Network, PortForward, Probe, Qmp, QmpEvent, QmpEventKind, VmSpec};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc::UnboundedReceiver;

/// The guest image, built into the target directory by scripts/build-vm-image.sh.
pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// The image, or `None` (after printing why) when this machine cannot run guests (no QEMU, or
/// the image cannot be built: its Debian packages are missing) and we are not in CI. In CI
/// (`CI` set) either is a failure, not a skip.
///
/// Also used by the agent's VM tests (`crates/agent/tests/vm.rs`). A process that runs a
/// node agent must call it before starting one: the agent reaps every child it did not spawn
/// itself, the build script's shell included.
pub fn image() -> Option<&'static Image> {
    static IMAGE: OnceLock<Option<Image>> = OnceLock::new();
    IMAGE.get_or_init(build_image).as_ref()
}

/// Skips outside CI (with `why` printed), fails in CI.
fn skip(why: &str) -> Option<Image> {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    assert!(!ci, "{why}, and CI is set");
    eprintln!("SKIPPED: {why}");
    None
}

fn build_image() -> Option<Image> {
    if !on_path("qemu-system-x86_64") {
        return skip("qemu-system-x86_64 not found (install the Debian package qemu-system-x86)");
    }
    let out = image_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-vm-image.sh");
    let started = Instant::now();
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            return skip(&format!(
                "{} {} failed ({other:?}; it says why above: install busybox-static \
                 linux-image-cloud-amd64 cpio lz4)",
                script.display(),
                out.display()
            ))
        }
    }
    eprintln!("image ready in {:?}", started.elapsed());
    // The uncompressed PVH kernel boots faster; the script makes it when it can.
    let pvh = out.join("vmlinux");
    Some(Image {
        kernel: if pvh.is_file() {
            pvh
        } else {
            out.join("vmlinuz")
        },
        initrd: out.join("initramfs.cpio"),
    })
}

/// Where the image goes: shared by every test binary and example run of this target dir.
pub fn image_dir() -> PathBuf {
    let target = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp"));
    target.join("nines-vm-image")
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// At most two VMs boot at once, whatever `--test-threads` says.
pub struct Slot;

static SLOTS: Mutex<u32> = Mutex::new(0);
static FREED: Condvar = Condvar::new();
const MAX_VMS: u32 = 2;

impl Slot {
    pub fn take() -> Slot {
        let mut n = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MAX_VMS {
            n = FREED.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot
    }

    /// Both slots at once, for a test that runs two VMs together (a live migration). Taken
    /// in one step: two tests that each hold one and wait for a second would never go on.
    pub fn take_two() -> (Slot, Slot) {
        let mut n = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        while *n + 2 > MAX_VMS {
            n = FREED.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 2;
        (Slot, Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut n = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        // All: a `take_two` may be waiting for this one and the next.
        FREED.notify_all();
    }
}

/// A current-thread runtime: QEMU is spawned on the test's own thread (see `TestVm::spawn`).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A free TCP port on loopback (bound and released; QEMU binds it right after).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A fresh directory for one VM's sockets and logs (short, for the 107-byte socket limit).
pub fn vm_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nines-vm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create VM dir");
    dir
}

/// A spec for the service image with one port forward to the guest's :80.
pub fn spec(image: &Image, name: &str, dir: &Path, port: u16) -> VmSpec {
    let mut spec = VmSpec::new(name, &image.kernel, Some(image.initrd.clone()), dir);
    spec.network = Network::User {
        forwards: vec![PortForward {
            host: port,
            guest: 80,
        }],
    };
    spec
}

/// A running QEMU, our direct child, watched by a pidfd like the agent watches its components.
pub struct TestVm {
    pub spec: VmSpec,
    pub child: Option<Child>,
    pub pidfd: Option<AsyncFd<OwnedFd>>,
    pub spawned: Instant,
    pub dir: PathBuf,
    keep_dir: bool,
}

impl TestVm {
    /// Spawns QEMU for `spec`; `dir` is removed when the VM is dropped. Must run inside a
    /// tokio runtime (the pidfd is registered with it).
    pub fn spawn(spec: VmSpec, dir: PathBuf) -> TestVm {
        let mut vm = TestVm {
            spec,
            child: None,
            pidfd: None,
            spawned: Instant::now(),
            dir,
            keep_dir: false,
        };
        vm.respawn();
        vm
    }

    /// Spawns QEMU again with the same spec (after the previous one was reaped).
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "respawn while QEMU still runs");
        let mut cmd = nines_vm::command(&self.spec).expect("QEMU command");
        // SAFETY: only an async-signal-safe prctl between fork and exec. If the test process
        // dies without running Drop (e.g. SIGKILL), QEMU dies with it instead of lingering.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
        self.spawned = Instant::now();
        let child = cmd.spawn().expect("spawn qemu-system-x86_64");
        let pid = rustix::process::Pid::from_child(&child);
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .expect("pidfd_open");
        // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which owns it (open, the same
        // descriptor) until it is dropped.
        let afd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
        self.pidfd = Some(afd.expect("register pidfd"));
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Completes when QEMU has exited (its pidfd is readable); does not reap.
    pub async fn exited(&self) {
        if let Some(fd) = &self.pidfd {
            if let Ok(mut guard) = fd.readable().await {
                guard.retain_ready();
            }
        }
    }

    /// Waits (bounded) for the exit and reaps it.
    pub async fn reap(&mut self, within: Duration) -> ExitStatus {
        tokio::time::timeout(within, self.exited())
            .await
            .unwrap_or_else(|_| panic!("QEMU still running after {within:?}"));
        self.pidfd = None;
        let mut child = self.child.take().expect("a child to reap");
        child.wait().expect("waitpid")
    }

    /// The guest's serial console so far (for failure messages).
    pub fn serial(&self) -> String {
        std::fs::read_to_string(&self.spec.serial_log).unwrap_or_default()
    }

    /// Keep the directory (serial log) for a post-mortem.
    pub fn keep_dir(&mut self) {
        self.keep_dir = true;
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        self.pidfd = None;
        if let Some(mut child) = self.child.take() {
            let _ = nines_vm::cleanup(Some(child.id()), &self.spec);
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("serial console of {}:\n{}", self.spec.name, self.serial());
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Connects QMP (as soon as QEMU made its socket) and waits until the guest's `GET /` answers
/// `ok NAME`; prints how long after the spawn. Panics (with the serial console) on a timeout.
pub async fn until_serving(vm: &TestVm, port: u16) -> (Qmp, UnboundedReceiver<QmpEvent>) {
    let name = &vm.spec.name;
    let (qmp, events) = Qmp::connect(&vm.spec.qmp_socket, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("QMP: {e}; serial: {}", vm.serial()));
    let qmp_after = vm.spawned.elapsed();
    let probe = Probe::Http {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        path: "/".into(),
        expect: Some(format!("ok {name}")),
    };
    nines_vm::wait_healthy(
        &probe,
        Duration::from_millis(20),
        Duration::from_secs(1),
        BOOT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; serial: {}", vm.serial()));
    eprintln!(
        "{name}: QMP greeted {qmp_after:?}, HTTP answered {:?} after spawn",
        vm.spawned.elapsed()
    );
    (qmp, events)
}

/// Boot bound: ~2.5 s on a quiet host, more on a busy one; this only catches hangs.
pub const BOOT: Duration = Duration::from_secs(60);

/// Reads events until one satisfies `want`, within `within`; returns all seen, `want`'s last.
/// Panics with what was seen if it does not come.
pub async fn wait_event(
    events: &mut UnboundedReceiver<QmpEvent>,
    within: Duration,
    want: impl Fn(&QmpEventKind) -> bool,
) -> Vec<QmpEvent> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) => {
                let done = want(&ev.kind);
                seen.push(ev);
                if done {
                    return seen;
                }
            }
            Ok(None) => panic!("event stream ended; seen {:?}", kinds(&seen)),
            Err(_) => panic!("no such event within {within:?}; seen {:?}", kinds(&seen)),
        }
    }
}

pub fn kinds(events: &[QmpEvent]) -> Vec<&QmpEventKind> {
    events.iter().map(|e| &e.kind).collect()
}

/// The 1-minute load average, for reports.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One `GET /` with a short timeout: the body (`ok NAME BOOTID`), or why not.
pub async fn get_root(port: u16, within: Duration) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: vm\r\n\r\n")
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        match text.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
                Ok(body.trim().to_string())
            }
            _ => Err(format!("not a 200: {text:?}")),
        }
    };
    tokio::time::timeout(within, fetch)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {within:?}")))
}

/// The guest's boot id from its `GET /` answer `ok NAME BOOTID`.
pub fn boot_id(body: &str) -> Option<String> {
    let mut words = body.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("ok"), Some(_), Some(id)) => Some(id.to_string()),
        _ => None,
    }
}
