//! The libvirt driver (feature `libvirt`): the guest of a [`crate::VmSpec`] run as a libvirt
//! domain ([`crate::domain_xml`]) by the node's libvirt daemon instead of as the caller's
//! child.
//!
//! libvirt runs QEMU, so the caller cannot reap it, but it can still watch it as closely:
//! [`qemu_pid`] names the domain's QEMU process, on which the caller opens a pidfd (a SIGKILL
//! is seen in milliseconds, as with the QEMU driver, and not after libvirt noticed it), and
//! [`Libvirt::watch`] delivers the domain's lifecycle events ([`DomainEvent`]: a pause, a
//! guest panic, a shutdown), the counterpart of QMP's events, which libvirt keeps to itself.
//!
//! Every call here blocks (libvirt's API is synchronous, an RPC to the daemon): call it on a
//! thread that may block. Events are dispatched by one process-wide thread running libvirt's
//! default event loop, started before the first connection.
//!
//! Invariants: a daemon that is not running fails [`Libvirt::connect`] at once with
//! [`Error::DaemonUnreachable`] naming the URI; a domain is always defined from scratch from
//! the spec (a leftover of the same name is destroyed and replaced, its fixed UUID makes the
//! new definition take its place); nothing libvirt returns can panic the caller.

use std::ffi::c_void;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::mpsc;
use virt::connect::Connect;
use virt::error::ErrorNumber;
use virt::sys;

use crate::{BootFiles, Error, VmSpec};

/// The connection URI used when none is configured: the system daemon, where QEMU runs as
/// user `libvirt-qemu` and the caller needs root.
pub const DEFAULT_URI: &str = "qemu:///system";

/// The environment variable a node agent reads the libvirt URI from (a node's setting, not a
/// component's: all of a node's libvirt VMs live in its one daemon).
pub const URI_ENV: &str = "NINES_LIBVIRT_URI";

/// Where boot files are staged: one world-traversable directory per domain.
const BOOT_ROOT: &str = "/run/nines-libvirt";

/// Where the system daemon's QEMU driver writes each running domain's QEMU pid.
const PID_DIR: &str = "/run/libvirt/qemu";

/// The URI from [`URI_ENV`], or [`DEFAULT_URI`] when it is unset or empty.
pub fn uri_from_env() -> String {
    std::env::var(URI_ENV)
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_URI.to_string())
}

/// A lifecycle event of a watched domain, stamped when the event loop delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    /// What happened.
    pub kind: DomainEventKind,
    /// When it was seen.
    pub at: Instant,
}

/// The lifecycle events a supervisor acts on (libvirt's `VIR_DOMAIN_EVENT_*`), and the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainEventKind {
    /// The domain started.
    Started,
    /// Its CPUs stopped (a `virsh suspend`, a stop on an I/O error, ...): the guest's service
    /// is hung as far as anyone can tell. `detail` is libvirt's reason.
    Suspended {
        /// libvirt's `VIR_DOMAIN_EVENT_SUSPENDED_*` detail, e.g. `paused`.
        detail: &'static str,
    },
    /// Its CPUs run again.
    Resumed,
    /// The guest shut down (or is shutting down), on its own or asked.
    Shutdown,
    /// The guest kernel panicked (pvpanic); with `on_crash=destroy` libvirt then ends QEMU.
    Crashed,
    /// QEMU is gone: `detail` says how (`shutdown`, `destroyed`, `crashed`, `failed`, ...).
    Stopped {
        /// libvirt's `VIR_DOMAIN_EVENT_STOPPED_*` detail.
        detail: &'static str,
    },
    /// Any other event (defined, undefined, PM suspend), by libvirt's numbers.
    Other {
        /// `virDomainEventType`.
        event: i32,
        /// Its detail.
        detail: i32,
    },
}

impl DomainEventKind {
    /// Decodes libvirt's (event, detail) pair.
    fn from_raw(event: i32, detail: i32) -> DomainEventKind {
        let (e, d) = (event as u32, detail as u32);
        match e {
            sys::VIR_DOMAIN_EVENT_STARTED => DomainEventKind::Started,
            sys::VIR_DOMAIN_EVENT_SUSPENDED => DomainEventKind::Suspended {
                detail: match d {
                    sys::VIR_DOMAIN_EVENT_SUSPENDED_PAUSED => "paused",
                    sys::VIR_DOMAIN_EVENT_SUSPENDED_IOERROR => "I/O error",
                    sys::VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG => "watchdog",
                    sys::VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED => "migrated",
                    _ => "other",
                },
            },
            sys::VIR_DOMAIN_EVENT_RESUMED => DomainEventKind::Resumed,
            sys::VIR_DOMAIN_EVENT_SHUTDOWN => DomainEventKind::Shutdown,
            sys::VIR_DOMAIN_EVENT_CRASHED => DomainEventKind::Crashed,
            sys::VIR_DOMAIN_EVENT_STOPPED => DomainEventKind::Stopped {
                detail: match d {
                    sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN => "shutdown",
                    sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED => "destroyed",
                    sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED => "crashed",
                    sys::VIR_DOMAIN_EVENT_STOPPED_FAILED => "failed",
                    _ => "other",
                },
            },
            _ => DomainEventKind::Other { event, detail },
        }
    }
}

/// The process-wide event loop, started once; its error if it could not be.
fn event_loop() -> Result<(), Error> {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    let started = STARTED.get_or_init(|| {
        // libvirt prints every error on stderr by default; they are returned here instead.
        virt::error::clear_error_callback();
        virt::event::event_register_default_impl().map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("nines-libvirt-events".into())
            .spawn(|| loop {
                if let Err(e) = virt::event::event_run_default_impl() {
                    // Only on a broken event loop; keep the thread from spinning.
                    eprintln!("libvirt event loop: {e}");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            })
            .map(drop)
            .map_err(|e| format!("cannot start the libvirt event thread: {e}"))
    });
    started.clone().map_err(|message| Error::Libvirt {
        what: "event loop".into(),
        message,
    })
}

/// One open connection; closed when the last user (a [`Libvirt`], an [`EventWatch`]) drops.
struct Conn {
    conn: Connect,
    uri: String,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.conn.close();
    }
}

/// A connection to a libvirt daemon.
#[derive(Clone)]
pub struct Libvirt {
    inner: Arc<Conn>,
}

impl std::fmt::Debug for Libvirt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libvirt")
            .field("uri", &self.inner.uri)
            .finish()
    }
}

/// A domain of one connection.
pub struct LibvirtDomain {
    dom: virt::domain::Domain,
    name: String,
}

impl std::fmt::Debug for LibvirtDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtDomain")
            .field("name", &self.name)
            .finish()
    }
}

fn failed(what: impl Into<String>, e: &virt::error::Error) -> Error {
    Error::Libvirt {
        what: what.into(),
        message: e.message().to_string(),
    }
}

impl Libvirt {
    /// Opens a connection to `uri`. Fails at once, with [`Error::DaemonUnreachable`], when the
    /// daemon does not answer (libvirt's client gives up when the socket is missing or
    /// refuses), so a node without a running libvirtd fails its VM's instantiation in
    /// milliseconds, not at the instantiate timeout.
    pub fn connect(uri: &str) -> Result<Libvirt, Error> {
        event_loop()?;
        match Connect::open(Some(uri)) {
            Ok(conn) => Ok(Libvirt {
                inner: Arc::new(Conn {
                    conn,
                    uri: uri.to_string(),
                }),
            }),
            Err(e) => Err(Error::DaemonUnreachable {
                uri: uri.to_string(),
                reason: e.message().to_string(),
            }),
        }
    }

    /// The URI this connection was opened with.
    pub fn uri(&self) -> &str {
        &self.inner.uri
    }

    /// The domain called `name`, if defined.
    pub fn lookup(&self, name: &str) -> Result<Option<LibvirtDomain>, Error> {
        match virt::domain::Domain::lookup_by_name(&self.inner.conn, name) {
            Ok(dom) => Ok(Some(LibvirtDomain {
                dom,
                name: name.to_string(),
            })),
            Err(e) if e.code() == ErrorNumber::NoDomain => Ok(None),
            Err(e) => Err(failed(format!("look up domain {name}"), &e)),
        }
    }

    /// Defines domain `name` from `xml` and starts it. A leftover domain of that name (an
    /// earlier run's, killed with its agent) is destroyed first, so the new one starts from
    /// this definition.
    pub fn start(&self, name: &str, xml: &str) -> Result<LibvirtDomain, Error> {
        self.remove(name)?;
        let dom = virt::domain::Domain::define_xml(&self.inner.conn, xml)
            .map_err(|e| failed(format!("define domain {name}"), &e))?;
        let dom = LibvirtDomain {
            dom,
            name: name.to_string(),
        };
        dom.dom
            .create()
            .map_err(|e| failed(format!("start domain {name}"), &e))?;
        Ok(dom)
    }

    /// Destroys domain `name` if it runs and undefines it; a domain that does not exist is
    /// fine. What cleanup and a fresh start do.
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        let Some(dom) = self.lookup(name)? else {
            return Ok(());
        };
        dom.destroy()?;
        match dom.dom.undefine() {
            Ok(()) => Ok(()),
            Err(e) if e.code() == ErrorNumber::NoDomain => Ok(()),
            Err(e) => Err(failed(format!("undefine domain {name}"), &e)),
        }
    }

    /// Starts delivering `dom`'s lifecycle events on the returned channel, until the
    /// [`EventWatch`] is dropped.
    pub fn watch(
        &self,
        dom: &LibvirtDomain,
    ) -> Result<(EventWatch, mpsc::UnboundedReceiver<DomainEvent>), Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let opaque = Box::into_raw(Box::new(tx)).cast::<c_void>();
        // SAFETY: libvirt calls the lifecycle callback with the signature of
        // `on_lifecycle` (the generic type is how its C API takes every event callback, as
        // its VIR_DOMAIN_EVENT_CALLBACK macro casts); `opaque` is the boxed sender, owned by
        // libvirt from here and released through `free_sender` exactly once (also when the
        // registration fails).
        let id = unsafe {
            let cb: unsafe extern "C" fn(
                sys::virConnectPtr,
                sys::virDomainPtr,
                libc::c_int,
                libc::c_int,
                *mut c_void,
            ) -> libc::c_int = on_lifecycle;
            let generic: unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void) =
                std::mem::transmute(cb);
            sys::virConnectDomainEventRegisterAny(
                self.inner.conn.as_ptr(),
                dom.dom.as_ptr(),
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as libc::c_int,
                Some(generic),
                opaque,
                Some(free_sender),
            )
        };
        if id < 0 {
            let e = virt::error::Error::last_error();
            return Err(failed(format!("watch domain {}", dom.name), &e));
        }
        Ok((
            EventWatch {
                conn: self.inner.clone(),
                id,
            },
            rx,
        ))
    }
}

/// The lifecycle callback: forwards the event to the watcher's channel.
unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    _dom: sys::virDomainPtr,
    event: libc::c_int,
    detail: libc::c_int,
    opaque: *mut c_void,
) -> libc::c_int {
    let at = Instant::now();
    // SAFETY: `opaque` is the sender boxed in `watch`, alive until `free_sender`.
    let tx = unsafe { &*opaque.cast::<mpsc::UnboundedSender<DomainEvent>>() };
    let _ = tx.send(DomainEvent {
        kind: DomainEventKind::from_raw(event, detail),
        at,
    });
    0
}

/// Releases the sender of a registration (libvirt calls it once, on deregistration).
unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    // SAFETY: `opaque` came from `Box::into_raw` in `watch` and is freed only here.
    drop(unsafe { Box::from_raw(opaque.cast::<mpsc::UnboundedSender<DomainEvent>>()) });
}

/// A lifecycle-event registration; dropping it stops the events (and ends the channel).
pub struct EventWatch {
    conn: Arc<Conn>,
    id: libc::c_int,
}

impl std::fmt::Debug for EventWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWatch").field("id", &self.id).finish()
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        // SAFETY: the connection is open (held by `self.conn`) and `id` is its registration.
        unsafe {
            sys::virConnectDomainEventDeregisterAny(self.conn.conn.as_ptr(), self.id);
        }
    }
}

impl LibvirtDomain {
    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Presses the guest's ACPI power button; returns at once (the guest then shuts down, or
    /// does not).
    pub fn shutdown(&self) -> Result<(), Error> {
        self.dom
            .shutdown_flags(sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            .map(drop)
            .map_err(|e| failed(format!("shut down domain {}", self.name), &e))
    }

    /// Ends QEMU now (libvirt sends SIGTERM, then SIGKILL) and waits until it is gone; a
    /// domain that is not running is fine.
    pub fn destroy(&self) -> Result<(), Error> {
        match self.dom.destroy() {
            Ok(()) => Ok(()),
            Err(e) if e.code() == ErrorNumber::OperationInvalid => Ok(()), // not running
            Err(e) => Err(failed(format!("destroy domain {}", self.name), &e)),
        }
    }

    /// Whether the domain runs.
    pub fn is_active(&self) -> Result<bool, Error> {
        self.dom
            .is_active()
            .map_err(|e| failed(format!("state of domain {}", self.name), &e))
    }
}

/// The directory [`stage_boot_files`] uses for domain `domain`.
pub fn boot_dir(domain: &str) -> PathBuf {
    Path::new(BOOT_ROOT).join(domain)
}

/// Copies the spec's kernel and initrd into [`boot_dir`] (created world-traversable: QEMU
/// runs as another user) and returns the copies' paths, for [`crate::domain_xml`]. Copies,
/// because libvirt chowns a domain's boot files while it runs.
pub fn stage_boot_files(domain: &str, spec: &VmSpec) -> Result<(PathBuf, Option<PathBuf>), Error> {
    let dir = boot_dir(domain);
    for d in [Path::new(BOOT_ROOT), dir.as_path()] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io(format!("chmod {}", d.display()), e))?;
    }
    let copy = |from: &Path, name: &str| -> Result<PathBuf, Error> {
        let to = dir.join(name);
        std::fs::copy(from, &to)
            .map_err(|e| Error::io(format!("copy {} to {}", from.display(), to.display()), e))?;
        Ok(to)
    };
    let kernel = copy(&spec.kernel, "kernel")?;
    let initrd = match &spec.initrd {
        Some(i) => Some(copy(i, "initrd")?),
        None => None,
    };
    Ok((kernel, initrd))
}

/// Removes the staged boot files of `domain`; none is fine.
pub fn remove_boot_files(domain: &str) -> Result<(), Error> {
    let dir = boot_dir(domain);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", dir.display()), e)),
    }
}

/// The [`BootFiles`] of staged copies.
pub fn boot_files<'a>(kernel: &'a Path, initrd: Option<&'a PathBuf>) -> BootFiles<'a> {
    BootFiles {
        kernel,
        initrd: initrd.map(PathBuf::as_path),
    }
}

/// The pid of running domain `domain`'s QEMU: from the system daemon's pid file, or else
/// found among the processes by its `-name guest=DOMAIN` argument; always checked to be that
/// QEMU ([`is_qemu_of`]). The caller opens a pidfd on it, and checks again after (a pid can
/// be reused between two looks, a pidfd pins it).
pub fn qemu_pid(domain: &str) -> Result<u32, Error> {
    let file = Path::new(PID_DIR).join(format!("{domain}.pid"));
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Ok(pid) = text.trim().parse::<u32>() {
            if is_qemu_of(pid, domain) {
                return Ok(pid);
            }
        }
    }
    let procs = std::fs::read_dir("/proc").map_err(|e| Error::io("list /proc".to_string(), e))?;
    for entry in procs.flatten() {
        let pid = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok());
        if let Some(pid) = pid.filter(|&p| is_qemu_of(p, domain)) {
            return Ok(pid);
        }
    }
    Err(Error::Libvirt {
        what: format!("find the QEMU process of domain {domain}"),
        message: format!("neither {} nor a process names it", file.display()),
    })
}

/// Whether process `pid` is the QEMU of domain `domain` (libvirt starts it with
/// `-name guest=DOMAIN,...`).
pub fn is_qemu_of(pid: u32, domain: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|&b| b == 0);
    while let Some(arg) = args.next() {
        if arg == b"-name" {
            let Some(value) = args.next() else {
                return false;
            };
            let want = format!("guest={domain}");
            return value == want.as_bytes() || value.starts_with(format!("{want},").as_bytes());
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_decode() {
        use DomainEventKind as K;
        let raw = |e: u32, d: u32| K::from_raw(e as i32, d as i32);
        assert_eq!(raw(sys::VIR_DOMAIN_EVENT_STARTED, 0), K::Started);
        assert_eq!(
            raw(
                sys::VIR_DOMAIN_EVENT_SUSPENDED,
                sys::VIR_DOMAIN_EVENT_SUSPENDED_PAUSED
            ),
            K::Suspended { detail: "paused" }
        );
        assert_eq!(
            raw(
                sys::VIR_DOMAIN_EVENT_STOPPED,
                sys::VIR_DOMAIN_EVENT_STOPPED_FAILED
            ),
            K::Stopped { detail: "failed" }
        );
        assert_eq!(raw(sys::VIR_DOMAIN_EVENT_CRASHED, 0), K::Crashed);
        assert_eq!(
            raw(99, 1),
            K::Other {
                event: 99,
                detail: 1
            }
        );
    }

    #[test]
    fn a_daemon_that_is_not_there_is_named() {
        let uri = "qemu:///system?socket=/nonexistent/nines-test/libvirt-sock";
        let started = Instant::now();
        let e = Libvirt::connect(uri).expect_err("no daemon there");
        assert!(
            matches!(&e, Error::DaemonUnreachable { uri: u, .. } if u == uri),
            "{e}"
        );
        let text = e.to_string();
        assert!(
            text.contains(uri) && text.contains("not reachable"),
            "{text}"
        );
        // Fails fast, not after some timeout: a generous hang bound.
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn the_qemu_of_a_domain_is_found_by_its_name_argument() {
        assert!(!is_qemu_of(std::process::id(), "nines.none"));
        let e = qemu_pid("nines.no-such-domain").expect_err("none");
        assert!(e.to_string().contains("nines.no-such-domain"), "{e}");
    }
}
