//! The SA-aware client library: what applications link to be managed by nines.
//!
//! A component implements [`Component`] (what to do when the AMF assigns or removes work, asks
//! for health, or asks it to stop) and calls [`Session::start`] or [`Session::run`] once. The
//! library connects to the node agent that spawned the process, registers, and from then on
//! calls the component back on one thread, answering the agent for it: a dedicated thread with
//! `start`, the caller's own with `run` (like AMF's `saAmfDispatch` with
//! `SA_DISPATCH_BLOCKING`). The component never sees invocation ids or frames, so it cannot
//! answer the wrong request, forget an answer or answer twice.
//!
//! ```no_run
//! use nines_client::{Component, HaState, Session};
//!
//! struct Counter;
//!
//! impl Component for Counter {
//!     fn csi_set(&mut self, _si: &str, _csi: &str, ha: HaState, _attrs: &[(String, String)])
//!         -> Result<(), String> {
//!         println!("now {ha:?}");
//!         Ok(())
//!     }
//!     fn csi_remove(&mut self, _si: &str, _csi: &str) -> Result<(), String> {
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> Result<(), nines_client::ClientError> {
//!     // Callbacks run on this thread until the agent asks us to stop.
//!     Session::run(Counter)
//! }
//! ```
//!
//! A `main` that has work of its own to do calls [`Session::start`] instead, which dispatches
//! on a thread of its own and returns the session at once; [`Session::wait`] then blocks until
//! the session ends.
//!
//! # Checkpoints and healthchecks
//!
//! [`Session::checkpoint_write`] is synchronous (returns once the agent stored the write where
//! the standby can read it) or asynchronous (returns once sent; a refusal is reported by the
//! next checkpoint call or by [`Session::checkpoint_flush`], which waits for every earlier
//! write). AMF-invoked healthchecks are configured and answered by [`Component::healthcheck`];
//! component-invoked ones are started with [`Session::healthcheck_start`] and confirmed with
//! [`Session::healthcheck_confirm`] from the component's own loop.
//!
//! # Architecture invariants
//!
//! * Std only: no async runtime, so any application can link it and a C ABI can wrap it later.
//!   A session has a reader thread, and a dispatch thread (`nines-dispatch`) only when started
//!   with [`Session::start`]; [`Session::run`] dispatches on the caller's thread instead. One
//!   thread fewer matters: when a component is killed, the kernel tears down each of its
//!   threads before the agent sees it die (about 65 µs a thread, measured from SIGKILL to the
//!   pidfd becoming readable on a 2-vCPU VM), and that is part of every failover's outage.
//! * Callbacks run one at a time, in the order the agent sent them, on the dispatch thread
//!   (the `nines-dispatch` thread, or the thread in [`Session::run`]). The reader thread never
//!   runs component code, so replies to checkpoint requests are delivered even while a
//!   callback is blocked waiting for one (a newly active component reads its checkpoint inside
//!   `csi_set`).
//! * Nothing the agent sends can panic the library: a bad frame, an unexpected message or a
//!   closed connection ends the session, and every blocked caller gets [`ClientError::Closed`].
//! * A session ends only once: after it is closed no callback is run any more, because acting on
//!   an assignment the agent can no longer supervise could make two actives.
#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufReader, ErrorKind};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use nines_proto::{
    read_frame, write_frame, FrameError, HeldCsi, ToAgent, ToComponent, ENV_AGENT_SOCKET,
    ENV_COMPONENT, PROTOCOL_VERSION,
};
pub use nines_proto::{HaState, Recovery};

/// How long a request to the agent (registration, a checkpoint read or write) may take before
/// the caller gets [`ClientError::Timeout`]. Generous on purpose: a sync checkpoint write waits
/// for replication to another node; the agent is local and otherwise answers in microseconds.
/// Also the send timeout: a write that cannot go out within it ends the session.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a request is sent before it fails with `Disconnected`, when the agent went
/// away under it (each attempt first waits for a restarted agent, within the reconnect window).
const REQUEST_ATTEMPTS: usize = 4;

/// How long a session whose agent went away keeps trying to register again, at
/// [`RECONNECT_RETRY`] intervals, before it closes. The component keeps its work meanwhile:
/// the agent (or the `nines run` around it) may be restarting, and a restarted agent adopts
/// components that come back instead of starting duplicates of them. Requests made while it
/// is away (including those whose write failed because it just went) wait for the new agent
/// (up to this window) and go to it; checkpoint writes, reads and flushes in flight when it
/// went away are sent again too (they can be repeated safely); other requests in flight fail
/// with [`ClientError::Disconnected`].
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(10);

/// Pause between two attempts to reach a restarted agent.
pub const RECONNECT_RETRY: Duration = Duration::from_millis(20);

/// What an SA-aware component does when the availability manager talks to it.
///
/// All methods are called on the session's dispatch thread (the library's `nines-dispatch`
/// thread after [`Session::start`], the caller's thread inside [`Session::run`]), one at a
/// time, in the order the agent sent the requests, so an implementation needs no locking of
/// its own for them. Each call should return promptly: the agent applies a callback timeout
/// and treats a late answer as a failure of the component. A panic in a callback is treated as
/// a failure: the request is answered `ok: false` and the session is closed (and `run`
/// returns [`ClientError::Closed`]).
pub trait Component: Send + 'static {
    /// Called once, before any other callback, with the session that will deliver them. Keep a
    /// clone if callbacks need it (to read a checkpoint when becoming active, to write one while
    /// quiescing): unlike the handle [`Session::start`] returns, this one is guaranteed to be
    /// there before the first `csi_set` arrives, and with [`Session::run`] it is the only one.
    fn registered(&mut self, _session: &Session) {}

    /// Take (or change to) `ha` for this CSI. Return Err to refuse (the engine treats it as a
    /// failure).
    ///
    /// For [`HaState::Quiescing`], finish the in-flight work before returning `Ok`: the library
    /// then reports quiescing complete on the component's behalf, so the two can never be out
    /// of order. `attrs` are the CSI's configured attributes.
    fn csi_set(
        &mut self,
        si: &str,
        csi: &str,
        ha: HaState,
        attrs: &[(String, String)],
    ) -> Result<(), String>;

    /// Stop serving this CSI and drop its resources. Return Err if that failed (the engine
    /// treats it as a failure and cleans the component up).
    fn csi_remove(&mut self, si: &str, csi: &str) -> Result<(), String>;

    /// Check yourself. On Err no confirmation is sent, so the agent sees a missed healthcheck
    /// and recovers; the reason only goes to the log. The default is always healthy, which is
    /// right for a component whose liveness is its responsiveness.
    fn healthcheck(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// A graceful stop was requested: release what needs releasing. When this returns, the
    /// agent is told, no further callback is made and [`Session::wait`] returns `Ok`, after
    /// which the process should exit (the agent kills it otherwise).
    fn terminate(&mut self) {}

    /// New membership of a protection group tracked with [`Session::track_protection_group`]:
    /// every component that has the SI, and its HA state.
    fn protection_group(&mut self, _si: &str, _members: &[(String, HaState)]) {}
}

/// Why a session call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The named environment variable is missing or empty: the process was not started by a
    /// nines agent (use [`Session::start_with`] to connect explicitly).
    #[error("{0} is not set: this process was not started by a nines agent")]
    NotConfigured(&'static str),
    /// The agent's socket could not be reached (or the connection could not be set up).
    #[error("cannot connect to the nines agent at {}: {source}", path.display())]
    Connect {
        /// Socket path that was tried.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The agent refused the registration, for the given reason.
    #[error("the nines agent refused the registration: {0}")]
    Refused(String),
    /// A message could not be framed: too large (the session is still usable), or the agent
    /// broke the protocol during registration.
    #[error("protocol error: {0}")]
    Protocol(#[source] FrameError),
    /// The session is over: the agent closed the connection, sent something invalid, or a
    /// write to it failed. Every later call fails the same way.
    #[error("the connection to the nines agent is closed")]
    Closed,
    /// The agent went away with the request in flight (or no agent came back within the
    /// reconnect window); the request was not carried out. Once the session gives up, calls
    /// fail with [`ClientError::Closed`].
    #[error("the nines agent is unreachable; reconnecting")]
    Disconnected,
    /// The agent did not answer within [`REQUEST_TIMEOUT`].
    #[error("the nines agent did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout,
    /// The agent answered but refused the request, for the given reason.
    #[error("the nines agent refused the request: {0}")]
    Agent(String),
    /// An asynchronous [`Session::checkpoint_write`] that had already returned `Ok` was
    /// refused by the agent: that section does not hold the data. Reported once, by the next
    /// checkpoint call on the session, which did nothing else (see
    /// [`Session::checkpoint_flush`]).
    #[error(
        "asynchronous write of section {section} of checkpoint {checkpoint} was refused: {reason}{}",
        if *.also_refused > 0 { format!(" (and {} later asynchronous writes)", .also_refused) } else { String::new() }
    )]
    AsyncWriteRefused {
        /// Checkpoint of the first refused write.
        checkpoint: String,
        /// Its section.
        section: String,
        /// Why the agent refused it.
        reason: String,
        /// How many further asynchronous writes were refused before this was reported (their
        /// details are in the log).
        also_refused: usize,
    },
}

/// Handle to a registered component's connection to its node agent.
///
/// Cheap to clone and usable from any thread, so request-serving threads can write checkpoints
/// while the dispatch thread (or the thread in [`Session::run`]) runs callbacks. The
/// connection lives until the agent closes it or the process exits; dropping handles does not
/// unregister (the AMF learns that a component is gone from its process exiting).
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("component", &self.inner.component)
            .field("closed", &self.inner.is_closed())
            .finish()
    }
}

/// The sections of one checkpoint, as `(section, data)`.
type Sections = Vec<(String, Vec<u8>)>;

/// State shared by the handles, the reader thread and the dispatch loop of a session.
struct Inner {
    /// Entity path, for logs.
    component: String,
    /// The agent's socket, to reconnect to.
    socket_path: PathBuf,
    /// How long to try to register again after the agent went away.
    reconnect_window: Duration,
    /// Write half; the lock keeps frames from different threads whole. Replaced when the
    /// session registers again with a restarted agent.
    writer: Mutex<UnixStream>,
    /// Another handle on the socket, only to shut it down: it must not be behind the writer's
    /// lock, which a blocked write may hold.
    socket: Mutex<UnixStream>,
    /// Whether the connection is up (false while reconnecting).
    connected: std::sync::atomic::AtomicBool,
    /// The CSIs this component accepted and holds: CSI path → (SI path, HA state). Sent when
    /// registering again, so a restarted agent resumes from the component's own account.
    held: Mutex<BTreeMap<String, (String, HaState)>>,
    /// The latest data of every checkpoint section this component wrote while active:
    /// checkpoint → section → data. A restarted agent has lost its checkpoints; the active
    /// component that wrote them gives them back when it registers again.
    written: Mutex<BTreeMap<String, BTreeMap<String, Vec<u8>>>>,
    requests: Mutex<Requests>,
    /// Checkpoints that arrived with an activation (name → sections), each answering the next
    /// [`Session::checkpoint_read`] of that name without a round trip. Dropped by a write to
    /// the checkpoint and when the SI is no longer active here, so a copy is never older than
    /// what this component itself wrote.
    delivered: Mutex<HashMap<String, Sections>>,
    /// The first asynchronous checkpoint write the agent refused since the last checkpoint
    /// call reported one (as [`ClientError::AsyncWriteRefused`]).
    async_refused: Mutex<Option<ClientError>>,
    life: Mutex<Life>,
    life_changed: Condvar,
}

/// Outstanding checkpoint requests, each waiting on its own channel.
#[derive(Default)]
struct Requests {
    last: u64,
    waiting: HashMap<u64, Sender<Reply>>,
    closed: bool,
}

#[derive(Default)]
struct Life {
    terminated: bool,
    closed: bool,
}

/// An agent answer routed to the thread that asked.
enum Reply {
    Ack { ok: bool, reason: Option<String> },
    Data(Vec<(String, Vec<u8>)>),
}

/// Lock, ignoring poisoning: every critical section here leaves its data consistent, and a
/// panic elsewhere must not turn into a panic in the library.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Run component code, turning a panic into `None` so that it ends the session, not the thread.
fn guarded<R>(f: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Map a framing failure during registration to what the caller can act on.
fn registration_error(e: FrameError) -> ClientError {
    match e {
        FrameError::Io(e) if is_timeout(&e) => ClientError::Timeout,
        FrameError::Io(e) => {
            tracing::debug!("nines registration: connection lost: {e}");
            ClientError::Closed
        }
        e => ClientError::Protocol(e),
    }
}

/// Variant name of a message, for logs (never its content: checkpoint data may be large).
fn kind(msg: &ToComponent) -> &'static str {
    match msg {
        ToComponent::Registered { .. } => "Registered",
        ToComponent::CsiSet { .. } => "CsiSet",
        ToComponent::CsiRemove { .. } => "CsiRemove",
        ToComponent::Healthcheck { .. } => "Healthcheck",
        ToComponent::Terminate { .. } => "Terminate",
        ToComponent::ProtectionGroup { .. } => "ProtectionGroup",
        ToComponent::CheckpointAck { .. } => "CheckpointAck",
        ToComponent::CheckpointData { .. } => "CheckpointData",
        ToComponent::CheckpointWriteRefused { .. } => "CheckpointWriteRefused",
        ToComponent::HealthcheckAck { .. } => "HealthcheckAck",
    }
}

/// The outcome of a request the agent answers with an ack (`what` names it in errors).
fn acked(reply: Reply, what: &str) -> Result<(), ClientError> {
    match reply {
        Reply::Ack { ok: true, .. } => Ok(()),
        Reply::Ack { ok: false, reason } => Err(ClientError::Agent(
            reason.unwrap_or_else(|| format!("{what} refused")),
        )),
        Reply::Data(_) => Err(ClientError::Protocol(FrameError::Malformed(format!(
            "the agent answered a {what} with data"
        )))),
    }
}

fn env_var(name: &'static str) -> Result<String, ClientError> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(ClientError::NotConfigured(name)),
    }
}

/// The agent's socket and the component's entity path, from the variables the agent sets when
/// it spawns the component.
fn env_config() -> Result<(String, String), ClientError> {
    Ok((env_var(ENV_AGENT_SOCKET)?, env_var(ENV_COMPONENT)?))
}

/// A session thread that could not be started fails the session's setup.
fn spawn_error(socket: &Path, source: io::Error) -> ClientError {
    ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    }
}

/// One registered connection to an agent.
struct Connection {
    /// Read half, buffered: the agent may send its first request right behind `Registered`,
    /// and those bytes must reach the reader thread, not be lost with a temporary buffer.
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    shutdown: UnixStream,
}

impl Connection {
    /// Connects to `socket` and registers as `component`, saying it holds `held`.
    /// Each wait for the agent lasts at most `patience`.
    fn open(
        socket: &Path,
        component: &str,
        held: Vec<HeldCsi>,
        patience: Duration,
    ) -> Result<Connection, ClientError> {
        let setup = |source| ClientError::Connect {
            path: socket.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(socket).map_err(setup)?;
        let patience = patience.max(Duration::from_millis(1));
        stream.set_read_timeout(Some(patience)).map_err(setup)?;
        stream.set_write_timeout(Some(patience)).map_err(setup)?;
        let writer = stream.try_clone().map_err(setup)?;
        let shutdown = stream.try_clone().map_err(setup)?;
        let mut reader = BufReader::new(stream);
        write_frame(
            &mut &writer,
            &ToAgent::Register {
                component: component.to_owned(),
                pid: std::process::id(),
                version: PROTOCOL_VERSION,
                held,
            },
        )
        .map_err(registration_error)?;
        match read_frame::<_, ToComponent>(&mut reader).map_err(registration_error)? {
            Some(ToComponent::Registered { ok: true, .. }) => {}
            Some(ToComponent::Registered { ok: false, reason }) => {
                return Err(ClientError::Refused(
                    reason.unwrap_or_else(|| "no reason given".to_owned()),
                ))
            }
            Some(other) => {
                return Err(ClientError::Protocol(FrameError::Malformed(format!(
                    "expected Registered, got {}",
                    kind(&other)
                ))))
            }
            None => return Err(ClientError::Closed),
        }
        // From now on the reader waits for the agent indefinitely: silence is normal.
        reader.get_ref().set_read_timeout(None).map_err(setup)?;
        writer
            .set_write_timeout(Some(REQUEST_TIMEOUT))
            .map_err(setup)?;
        Ok(Connection {
            reader,
            writer,
            shutdown,
        })
    }
}

impl Session {
    /// Connects using `NINES_AGENT_SOCKET` and `NINES_COMPONENT` (set by the agent when it
    /// spawns the component), registers, then dispatches callbacks to `component` on a
    /// background thread.
    ///
    /// Returns once the agent accepted the registration; callbacks may already be running by
    /// then (see [`Component::registered`]). Fails with [`ClientError::NotConfigured`] when the
    /// process was not started by an agent, so a component can fall back to running unmanaged.
    ///
    /// A component whose calling thread has nothing else to do than [`wait`](Self::wait)
    /// should use [`run`](Self::run) instead: same session, one thread fewer.
    pub fn start<C: Component>(component: C) -> Result<Session, ClientError> {
        let (socket, path) = env_config()?;
        Self::start_with(Path::new(&socket), &path, component)
    }

    /// Like [`start`](Self::start) with the socket and the component's entity path given
    /// explicitly, for tests and for processes the agent did not spawn itself.
    pub fn start_with<C: Component>(
        socket: &Path,
        component_path: &str,
        component: C,
    ) -> Result<Session, ClientError> {
        Self::start_with_reconnect(socket, component_path, component, RECONNECT_WINDOW)
    }

    /// Like [`start_with`](Self::start_with), keeping the session for `window` (instead of
    /// [`RECONNECT_WINDOW`]) after its agent went away, in case a restarted agent comes back.
    /// `Duration::ZERO` closes the session as soon as the agent is gone.
    pub fn start_with_reconnect<C: Component>(
        socket: &Path,
        component_path: &str,
        component: C,
        window: Duration,
    ) -> Result<Session, ClientError> {
        let (session, inbox) = Self::open(socket, component_path, window)?;
        let for_dispatch = session.clone();
        if let Err(e) = thread::Builder::new()
            .name("nines-dispatch".into())
            .spawn(move || dispatch(for_dispatch, component, inbox))
        {
            session.inner.close("could not start the dispatch thread");
            return Err(spawn_error(socket, e));
        }
        Ok(session)
    }

    /// Connects and registers like [`start`](Self::start) (from `NINES_AGENT_SOCKET` and
    /// `NINES_COMPONENT`), then runs the callbacks on the calling thread until the session
    /// ends, the way AMF's `saAmfDispatch` with `SA_DISPATCH_BLOCKING` does. Returns what
    /// [`wait`](Self::wait) would: `Ok` once the agent asked the component to terminate (after
    /// [`Component::terminate`] ran and the agent was answered), [`ClientError::Closed`] when
    /// the session ended otherwise (the agent is gone and none came back within
    /// [`RECONNECT_WINDOW`], or a callback panicked). A registration failure is returned
    /// before any callback runs, as from `start`.
    ///
    /// Why: with [`start`](Self::start), a component's `main` typically only blocks in
    /// [`wait`](Self::wait) while a library thread dispatches, and every thread of a process
    /// delays the moment its death becomes visible to the agent when it is killed (about
    /// 65 µs each, measured from SIGKILL to the pidfd becoming readable on a 2-vCPU VM). Here
    /// the caller's thread dispatches, so the session costs one thread (the reader) instead
    /// of two, and a failover after a crash starts that much earlier.
    ///
    /// The component gets the session handle in [`Component::registered`]; clones of it work
    /// from other threads as with `start` (checkpoint writes, error reports, and `wait`).
    pub fn run<C: Component>(component: C) -> Result<(), ClientError> {
        let (socket, path) = env_config()?;
        Self::run_with(Path::new(&socket), &path, component)
    }

    /// Like [`run`](Self::run) with the socket and the component's entity path given
    /// explicitly (as [`start_with`](Self::start_with)).
    pub fn run_with<C: Component>(
        socket: &Path,
        component_path: &str,
        component: C,
    ) -> Result<(), ClientError> {
        Self::run_with_reconnect(socket, component_path, component, RECONNECT_WINDOW)
    }

    /// Like [`run_with`](Self::run_with), keeping the session for `window` (instead of
    /// [`RECONNECT_WINDOW`]) after its agent went away, as
    /// [`start_with_reconnect`](Self::start_with_reconnect) does; the calling thread goes on
    /// dispatching for the restarted agent. `Duration::ZERO` ends the session (and `run`, with
    /// [`ClientError::Closed`]) as soon as the agent is gone.
    pub fn run_with_reconnect<C: Component>(
        socket: &Path,
        component_path: &str,
        component: C,
        window: Duration,
    ) -> Result<(), ClientError> {
        let (session, inbox) = Self::open(socket, component_path, window)?;
        // Component panics are caught inside the loop and end the session; this only keeps
        // anything else (a panicking `Drop` of the component) from unwinding into the caller,
        // and makes sure the session is over before waiting for its outcome.
        if guarded(|| dispatch(session.clone(), component, inbox)).is_none() {
            session.inner.close("the dispatch loop panicked");
        }
        session.wait()
    }

    /// What [`start_with_reconnect`](Self::start_with_reconnect) and
    /// [`run_with_reconnect`](Self::run_with_reconnect) share: connects, registers, and starts
    /// the reader thread. The callbacks the agent sends queue in the returned inbox until a
    /// dispatch loop takes them, on its own thread or the caller's.
    fn open(
        socket: &Path,
        component_path: &str,
        window: Duration,
    ) -> Result<(Session, Receiver<ToComponent>), ClientError> {
        let Connection {
            reader,
            writer,
            shutdown,
        } = Connection::open(socket, component_path, Vec::new(), REQUEST_TIMEOUT)?;
        let session = Session {
            inner: Arc::new(Inner {
                component: component_path.to_owned(),
                socket_path: socket.to_path_buf(),
                reconnect_window: window,
                writer: Mutex::new(writer),
                socket: Mutex::new(shutdown),
                connected: std::sync::atomic::AtomicBool::new(true),
                held: Mutex::default(),
                written: Mutex::default(),
                requests: Mutex::default(),
                delivered: Mutex::default(),
                async_refused: Mutex::default(),
                life: Mutex::default(),
                life_changed: Condvar::new(),
            }),
        };
        let (callbacks, inbox) = mpsc::channel();
        let for_reader = Arc::clone(&session.inner);
        if let Err(e) = thread::Builder::new()
            .name("nines-reader".into())
            .spawn(move || read_loop(&for_reader, reader, callbacks))
        {
            session.inner.close("could not start the reader thread");
            return Err(spawn_error(socket, e));
        }
        Ok((session, inbox))
    }

    /// Tell the AMF this component found itself faulty, and which recovery it recommends (the
    /// engine may escalate). Returns once the report is sent; the recovery shows up as
    /// callbacks (or as the process being killed).
    pub fn report_error(&self, recommended: Recovery) -> Result<(), ClientError> {
        self.inner.send(&ToAgent::ErrorReport { recommended })
    }

    /// Create or overwrite one section of a checkpoint (by convention one checkpoint per SI).
    ///
    /// With `sync`, returns only once the agent acknowledged that the write is stored where the
    /// standby can read it (across nodes, once the standby's node has it too), so whatever the
    /// component acknowledges to its own clients afterwards survives a failover. A refusal is
    /// this call's error.
    ///
    /// Without `sync`, returns as soon as the write is sent, without waiting for the agent:
    /// many writes cost no round trip each. The agent applies a session's writes in the order
    /// they were sent, so a later [`checkpoint_read`](Self::checkpoint_read) on this session
    /// sees them, and a sync write after them is acknowledged only after them. The price is
    /// what the call cannot tell: a write the agent refuses is reported later, once, as
    /// [`ClientError::AsyncWriteRefused`] by the next checkpoint call on this session (write,
    /// read or flush; that call then does nothing else), and at the latest by
    /// [`checkpoint_flush`](Self::checkpoint_flush), which waits for every earlier write.
    ///
    /// Durability: on one host both modes store into the host's one store, which outlives the
    /// component, so a crash of the component loses neither acknowledged sync writes nor
    /// async writes the agent took in before it saw the process end (one still in the socket
    /// at that moment is dropped, never applied after a successor's). Only a sync write (or a
    /// flush) is a promise, and the only one that will be a promise against the loss of the
    /// node once checkpoints are replicated across nodes.
    ///
    /// A write whose frame would exceed [`nines_proto::MAX_FRAME`] (data a little under 1 MiB)
    /// fails at once with [`ClientError::Protocol`], in either mode, and leaves the session
    /// usable. Safe to call from any thread, including inside callbacks.
    pub fn checkpoint_write(
        &self,
        checkpoint: &str,
        section: &str,
        data: &[u8],
        sync: bool,
    ) -> Result<(), ClientError> {
        self.inner.take_async_refusal()?;
        lock(&self.inner.delivered).remove(checkpoint);
        let write = |request| ToAgent::CheckpointWrite {
            request,
            checkpoint: checkpoint.to_owned(),
            section: section.to_owned(),
            data: data.to_vec(),
            sync,
        };
        // Kept for a restarted agent before it is sent, not after it is acknowledged: an agent
        // that stores it and dies before the answer arrives must get it back from the replay,
        // or the replay would give the next agent the value before it.
        let previous = self.inner.wrote(checkpoint, section, data);
        let sent = if sync {
            self.inner
                .request_idempotent(write)
                .and_then(|answer| acked(answer, "checkpoint write"))
        } else {
            self.inner.send_unanswered(write)
        };
        if sent.is_err() {
            self.inner.unwrote(checkpoint, section, previous);
        }
        sent
    }

    /// Wait until the agent has stored every checkpoint write this session sent before (and,
    /// once checkpoints are replicated across nodes, until the standby's node has them), then
    /// report the first asynchronous write it refused since the last report, if any
    /// ([`ClientError::AsyncWriteRefused`]).
    ///
    /// One flush after a batch of asynchronous writes gives the batch the promise of a sync
    /// write for the cost of one round trip. Safe to call from any thread, including inside
    /// callbacks.
    pub fn checkpoint_flush(&self) -> Result<(), ClientError> {
        let reply = self
            .inner
            .request_idempotent(|request| ToAgent::CheckpointFlush { request });
        // The agent sends the refusal of an earlier write before the flush's answer, and the
        // reader thread handles frames in order: any refusal is recorded by now.
        self.inner.take_async_refusal()?;
        acked(reply?, "checkpoint flush")
    }

    /// Every section of a checkpoint, as `(section, data)`; empty if it was never written.
    ///
    /// This is how a component that becomes active continues from where the previous active
    /// stopped: call it from [`Component::csi_set`] before returning `Ok`. The agent sends the
    /// SI's checkpoint (the one named after the SI) along with the activation, so that first
    /// read costs no round trip: a failover does not wait for the agent, which is busy with
    /// the failed component at that moment. Later reads ask the agent, and see every earlier
    /// write of this session, asynchronous ones included. Like every checkpoint call, it
    /// first reports an asynchronous write refused since the last report
    /// ([`ClientError::AsyncWriteRefused`]) and then reads nothing. Safe to call from any
    /// thread, including inside callbacks.
    pub fn checkpoint_read(&self, checkpoint: &str) -> Result<Vec<(String, Vec<u8>)>, ClientError> {
        self.inner.take_async_refusal()?;
        if let Some(sections) = lock(&self.inner.delivered).remove(checkpoint) {
            return Ok(sections);
        }
        let reply = self
            .inner
            .request_idempotent(|request| ToAgent::CheckpointRead {
                request,
                checkpoint: checkpoint.to_owned(),
            })?;
        match reply {
            Reply::Data(sections) => Ok(sections),
            Reply::Ack { ok: false, reason } => Err(ClientError::Agent(
                reason.unwrap_or_else(|| "checkpoint read refused".to_owned()),
            )),
            Reply::Ack { ok: true, .. } => Err(ClientError::Protocol(FrameError::Malformed(
                "the agent acknowledged a checkpoint read without data".to_owned(),
            ))),
        }
    }

    /// Start a component-invoked healthcheck named `key` (AMF's `saAmfHealthcheckStart` with
    /// `SA_AMF_HEALTHCHECK_COMPONENT_INVOKED`): from now on the component promises to call
    /// [`healthcheck_confirm`](Self::healthcheck_confirm) with this key at least every
    /// `period`. If no confirmation reaches the agent for `period + max_duration` (counted
    /// from this call, then from each confirmation), the agent reports the component failed
    /// with a missed healthcheck, exactly as for an unanswered AMF-invoked one.
    ///
    /// Use it where liveness is best vouched for by the component's own work loop (confirm
    /// from the loop, so a stuck loop is detected); keys let several loops be watched apart.
    /// AMF-invoked healthchecks ([`Component::healthcheck`]) need no call: the configuration
    /// enables them. Returns once the agent started the check; refused
    /// ([`ClientError::Agent`], with the reason) for a zero duration or one over
    /// [`nines_proto::MAX_HEALTHCHECK_PERIOD`] (a day), an empty key, a key that is already
    /// running on this session, or more than [`nines_proto::MAX_COMPONENT_HEALTHCHECKS`]
    /// running at once.
    pub fn healthcheck_start(
        &self,
        key: &str,
        period: Duration,
        max_duration: Duration,
    ) -> Result<(), ClientError> {
        let reply = self.inner.request(|request| ToAgent::HealthcheckStart {
            request,
            key: key.to_owned(),
            period,
            max_duration,
        })?;
        acked(reply, "healthcheck start")
    }

    /// Confirm the component-invoked healthcheck `key`: the component is healthy. Returns once
    /// the confirmation is sent (the agent does not answer it). Call it from the code whose
    /// progress shows health, at least every `period` given to
    /// [`healthcheck_start`](Self::healthcheck_start).
    pub fn healthcheck_confirm(&self, key: &str) -> Result<(), ClientError> {
        self.inner.send(&ToAgent::HealthcheckSelfConfirm {
            key: key.to_owned(),
        })
    }

    /// Stop the component-invoked healthcheck `key`, for a pause on purpose: no failure is
    /// reported for confirmations missing from now on. Returns once the agent stopped it;
    /// refused ([`ClientError::Agent`]) for a key that is not running.
    pub fn healthcheck_stop(&self, key: &str) -> Result<(), ClientError> {
        let reply = self.inner.request(|request| ToAgent::HealthcheckStop {
            request,
            key: key.to_owned(),
        })?;
        acked(reply, "healthcheck stop")
    }

    /// Ask to be told who is active and standby for `si`: the current members arrive at once
    /// through [`Component::protection_group`], then again on every change. Returns once the
    /// request is sent.
    pub fn track_protection_group(&self, si: &str) -> Result<(), ClientError> {
        self.inner
            .send(&ToAgent::TrackProtectionGroup { si: si.to_owned() })
    }

    /// Block until the agent asked the component to terminate (`Ok`, after
    /// [`Component::terminate`] ran and the agent was answered) or the connection closed
    /// ([`ClientError::Closed`]: the agent is gone, so the component should stop serving).
    ///
    /// Meant for `main` once it has nothing else to do (or, with [`run`](Self::run), for
    /// another thread that must learn when the session ends). Never call it from a callback:
    /// the terminate request is delivered on the very thread it would block.
    pub fn wait(&self) -> Result<(), ClientError> {
        let mut life = lock(&self.inner.life);
        loop {
            if life.terminated {
                return Ok(());
            }
            if life.closed {
                return Err(ClientError::Closed);
            }
            life = self
                .inner
                .life_changed
                .wait(life)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Inner {
    /// Keep the checkpoint of `si` that came with an activation, or forget the one kept (any
    /// other HA state, or removal: this component no longer continues the SI's work).
    fn deliver(&self, si: &str, checkpoint: Option<Vec<(String, Vec<u8>)>>) {
        let mut delivered = lock(&self.delivered);
        match checkpoint {
            Some(sections) => delivered.insert(si.to_owned(), sections),
            None => delivered.remove(si),
        };
    }

    fn is_closed(&self) -> bool {
        lock(&self.life).closed
    }

    /// Write one frame; on an I/O failure the frame may be half out, so the session ends.
    fn send(&self, msg: &ToAgent) -> Result<(), ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        if !self.connected.load(Ordering::SeqCst) {
            return Err(ClientError::Disconnected);
        }
        match self.send_raw(msg) {
            Ok(()) => Ok(()),
            Err(FrameError::Io(e)) => {
                // The frame may be half out: this connection is done. The reader thread sees
                // it end too and registers again (or closes the session).
                tracing::debug!("nines: write to the agent failed: {e}");
                self.connected.store(false, Ordering::SeqCst);
                let _ = lock(&self.socket).shutdown(std::net::Shutdown::Both);
                Err(ClientError::Disconnected)
            }
            Err(e) => Err(ClientError::Protocol(e)),
        }
    }

    /// Write one frame without touching the session state (callers holding `life` use it).
    fn send_raw(&self, msg: &ToAgent) -> Result<(), FrameError> {
        let mut w = lock(&self.writer);
        write_frame(&mut *w, msg)
    }

    /// Send a request the agent answers only if it refuses it (an asynchronous checkpoint
    /// write): it gets an id like any request, so that a refusal can be matched, but nobody
    /// waits for it.
    fn send_unanswered(&self, build: impl FnOnce(u64) -> ToAgent) -> Result<(), ClientError> {
        self.await_connected()?;
        let id = {
            let mut r = lock(&self.requests);
            if r.closed {
                return Err(ClientError::Closed);
            }
            r.last += 1;
            r.last
        };
        self.send(&build(id))
    }

    /// While the session is registering again with a restarted agent, waits for it (up to the
    /// reconnect window), so that a request made meanwhile goes to the new agent instead of
    /// failing: the component's clients see a pause, not an error. `Closed` if the session
    /// ends instead, `Disconnected` if no agent came back in time.
    fn await_connected(&self) -> Result<(), ClientError> {
        if self.connected.load(Ordering::SeqCst) {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + self.reconnect_window;
        let mut life = lock(&self.life);
        loop {
            if life.closed {
                return Err(ClientError::Closed);
            }
            if self.connected.load(Ordering::SeqCst) {
                return Ok(());
            }
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
                return Err(ClientError::Disconnected);
            };
            life = self
                .life_changed
                .wait_timeout(life, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Marks the connection up and wakes the requests waiting for it.
    fn set_connected(&self) {
        self.connected.store(true, Ordering::SeqCst);
        // Taken after the store, so a waiter that saw it false is already waiting.
        drop(lock(&self.life));
        self.life_changed.notify_all();
    }

    /// Keep the first refusal of an asynchronous write for the next checkpoint call; count
    /// (and log) the ones after it.
    fn async_write_refused(&self, checkpoint: String, section: String, reason: String) {
        tracing::warn!(
            "nines: asynchronous write of section {section} of checkpoint {checkpoint} refused: {reason}"
        );
        let mut first = lock(&self.async_refused);
        match &mut *first {
            Some(ClientError::AsyncWriteRefused { also_refused, .. }) => *also_refused += 1,
            _ => {
                *first = Some(ClientError::AsyncWriteRefused {
                    checkpoint,
                    section,
                    reason,
                    also_refused: 0,
                })
            }
        }
    }

    /// Report (once) an asynchronous write refused since the last report.
    fn take_async_refusal(&self) -> Result<(), ClientError> {
        match lock(&self.async_refused).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Send a request and wait for the reply routed back by the reader thread. A request the
    /// agent cannot have seen (the write failed, or the connection was already down) goes to
    /// the restarted agent instead; one lost in flight fails with `Disconnected`.
    fn request(&self, build: impl Fn(u64) -> ToAgent) -> Result<Reply, ClientError> {
        self.request_with(build, false)
    }

    /// As [`request`](Self::request), for a request that may be repeated safely (a checkpoint
    /// write, read or flush): one lost in flight is sent again to the restarted agent too.
    fn request_idempotent(&self, build: impl Fn(u64) -> ToAgent) -> Result<Reply, ClientError> {
        self.request_with(build, true)
    }

    fn request_with(
        &self,
        build: impl Fn(u64) -> ToAgent,
        repeat_in_flight: bool,
    ) -> Result<Reply, ClientError> {
        // Each attempt waits for a (re)connected agent first; a few cover a connection that
        // drops again while it registers.
        for _ in 0..REQUEST_ATTEMPTS {
            self.await_connected()?;
            let (tx, rx) = mpsc::channel();
            let id = {
                let mut r = lock(&self.requests);
                if r.closed {
                    return Err(ClientError::Closed);
                }
                r.last += 1;
                let id = r.last;
                r.waiting.insert(id, tx);
                id
            };
            match self.send(&build(id)) {
                Ok(()) => {}
                // Never reached the agent whole: the restarted one gets it.
                Err(ClientError::Disconnected) => {
                    lock(&self.requests).waiting.remove(&id);
                    continue;
                }
                Err(e) => {
                    lock(&self.requests).waiting.remove(&id);
                    return Err(e);
                }
            }
            match rx.recv_timeout(REQUEST_TIMEOUT) {
                Ok(reply) => return Ok(reply),
                Err(RecvTimeoutError::Timeout) => {
                    lock(&self.requests).waiting.remove(&id);
                    return Err(ClientError::Timeout);
                }
                // `close` dropped our sender, or the connection was lost with the request on it.
                Err(RecvTimeoutError::Disconnected) if self.is_closed() => {
                    return Err(ClientError::Closed)
                }
                Err(RecvTimeoutError::Disconnected) if repeat_in_flight => continue,
                Err(RecvTimeoutError::Disconnected) => return Err(ClientError::Disconnected),
            }
        }
        Err(ClientError::Disconnected)
    }

    /// Hand a reply to the thread waiting for it, if it still is.
    fn answer(&self, request: u64, reply: Reply) {
        match lock(&self.requests).waiting.remove(&request) {
            Some(tx) => {
                // The waiter may have timed out just now; then nobody wants the reply.
                let _ = tx.send(reply);
            }
            None => tracing::debug!("nines: reply to unknown or timed-out request {request}"),
        }
    }

    /// End the session (idempotent): wake `wait`, fail every pending request with `Closed`,
    /// and shut the socket down so the reader thread and the agent both notice at once.
    fn close(&self, why: &str) {
        let terminated = {
            let mut life = lock(&self.life);
            if life.closed {
                return;
            }
            life.closed = true;
            life.terminated
        };
        self.life_changed.notify_all();
        {
            let mut r = lock(&self.requests);
            r.closed = true;
            r.waiting.clear();
        }
        let _ = lock(&self.socket).shutdown(std::net::Shutdown::Both);
        if terminated {
            tracing::debug!("nines session of {} closed: {why}", self.component);
        } else {
            tracing::warn!("nines session of {} closed: {why}", self.component);
        }
    }
}

impl Inner {
    /// Whether this component holds any CSI active.
    fn is_active(&self) -> bool {
        lock(&self.held)
            .values()
            .any(|(_, ha)| *ha == HaState::Active)
    }

    /// Records a CSI callback the component accepted. A component that no longer holds
    /// anything active forgets what it wrote: another component writes the checkpoints now.
    fn accepted(&self, si: &str, csi: &str, ha: Option<HaState>) {
        {
            let mut held = lock(&self.held);
            match ha {
                Some(ha) => {
                    held.insert(csi.to_owned(), (si.to_owned(), ha));
                }
                None => {
                    held.remove(csi);
                }
            }
        }
        if !self.is_active() {
            lock(&self.written).clear();
        }
    }

    /// Keeps the latest data of a section this (active) component writes, for a restarted
    /// agent; returns what it replaced, for [`unwrote`](Self::unwrote).
    fn wrote(&self, checkpoint: &str, section: &str, data: &[u8]) -> Option<Vec<u8>> {
        if !self.is_active() {
            return None;
        }
        lock(&self.written)
            .entry(checkpoint.to_owned())
            .or_default()
            .insert(section.to_owned(), data.to_vec())
    }

    /// Takes back a write that failed: the replay gives the data before it again.
    fn unwrote(&self, checkpoint: &str, section: &str, previous: Option<Vec<u8>>) {
        let mut written = lock(&self.written);
        let Some(sections) = written.get_mut(checkpoint) else {
            return;
        };
        match previous {
            Some(data) => {
                sections.insert(section.to_owned(), data);
            }
            None => {
                sections.remove(section);
            }
        }
    }

    /// Gives a restarted agent the checkpoints this active component wrote (asynchronously,
    /// in one burst; refusals surface like any asynchronous write's). Called on the new
    /// connection before it is marked up: a write waiting for the connection must reach the
    /// agent after the replay, or the replay's older data would overwrite it.
    fn replay_checkpoints(&self) -> Result<(), FrameError> {
        if !self.is_active() {
            return Ok(());
        }
        let written = lock(&self.written).clone();
        for (checkpoint, sections) in written {
            for (section, data) in sections {
                let request = {
                    let mut r = lock(&self.requests);
                    r.last += 1;
                    r.last
                };
                self.send_raw(&ToAgent::CheckpointWrite {
                    request,
                    checkpoint: checkpoint.clone(),
                    section,
                    data,
                    sync: false,
                })?;
            }
        }
        Ok(())
    }
}

/// After the connection to the agent ended (`why`): registers again with whatever agent
/// listens on the socket now, for up to the session's reconnect window, saying which CSIs this component
/// holds. `None` when the session is over instead: terminated, closed, refused, or no agent
/// came back in time.
fn reconnect(inner: &Inner, why: &str) -> Option<BufReader<UnixStream>> {
    inner.connected.store(false, Ordering::SeqCst);
    // Requests in flight went down with the connection: their waiters get `Disconnected`.
    lock(&inner.requests).waiting.clear();
    if lock(&inner.life).terminated || inner.is_closed() {
        return None;
    }
    if inner.reconnect_window.is_zero() {
        return None;
    }
    tracing::warn!(
        "nines: lost the agent of {} ({why}); registering again for up to {:?}",
        inner.component,
        inner.reconnect_window
    );
    let deadline = std::time::Instant::now() + inner.reconnect_window;
    loop {
        if inner.is_closed() {
            return None;
        }
        let held: Vec<HeldCsi> = lock(&inner.held)
            .iter()
            .map(|(csi, (si, ha))| HeldCsi {
                si: si.clone(),
                csi: csi.clone(),
                ha: *ha,
            })
            .collect();
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match Connection::open(&inner.socket_path, &inner.component, held, left) {
            Ok(c) => {
                *lock(&inner.writer) = c.writer;
                *lock(&inner.socket) = c.shutdown;
                if inner.is_closed() {
                    // Closed while we reconnected: do not leave the new connection open.
                    let _ = lock(&inner.socket).shutdown(std::net::Shutdown::Both);
                    return None;
                }
                if let Err(e) = inner.replay_checkpoints() {
                    // This connection is done; try the next agent (or give up) as on any
                    // failed registration.
                    tracing::warn!("nines: cannot give the restarted agent a checkpoint: {e}");
                    let _ = lock(&inner.socket).shutdown(std::net::Shutdown::Both);
                    if std::time::Instant::now() < deadline {
                        thread::sleep(RECONNECT_RETRY);
                        continue;
                    }
                    return None;
                }
                inner.set_connected();
                tracing::info!("nines: {} registered again", inner.component);
                return Some(c.reader);
            }
            Err(ClientError::Refused(reason)) => {
                tracing::warn!(
                    "nines: the agent refused {} again: {reason}",
                    inner.component
                );
                return None;
            }
            Err(_) if std::time::Instant::now() < deadline => thread::sleep(RECONNECT_RETRY),
            Err(e) => {
                tracing::warn!("nines: no agent came back for {}: {e}", inner.component);
                return None;
            }
        }
    }
}

/// Closes the session when the reader thread ends, whatever the reason (even a bug that
/// panics), so that no caller waits forever on a session nobody reads.
struct CloseOnExit<'a>(&'a Inner);

impl Drop for CloseOnExit<'_> {
    fn drop(&mut self) {
        self.0.close("the reader thread ended");
    }
}

/// Reader thread: routes checkpoint replies to their waiters and everything else to the
/// dispatch loop. Runs no component code, so replies flow while a callback is blocked.
fn read_loop(inner: &Inner, mut reader: BufReader<UnixStream>, callbacks: Sender<ToComponent>) {
    let _close = CloseOnExit(inner);
    loop {
        let msg = match read_frame::<_, ToComponent>(&mut reader) {
            Ok(Some(msg)) => msg,
            Ok(None) => match reconnect(inner, "it closed the connection") {
                Some(r) => {
                    reader = r;
                    continue;
                }
                None => return inner.close("the agent closed the connection"),
            },
            // A stream that ends inside a frame is broken, not an agent that went away: an
            // agent's socket ends at a frame boundary, even when the agent is killed.
            Err(FrameError::Io(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                return inner.close(&format!("bad frame from the agent: {e}"))
            }
            Err(FrameError::Io(e)) => match reconnect(inner, &e.to_string()) {
                Some(r) => {
                    reader = r;
                    continue;
                }
                None => return inner.close(&format!("the connection to the agent failed: {e}")),
            },
            Err(e) => return inner.close(&format!("bad frame from the agent: {e}")),
        };
        match msg {
            ToComponent::CheckpointAck {
                request,
                ok,
                reason,
            } => inner.answer(request, Reply::Ack { ok, reason }),
            ToComponent::CheckpointData { request, sections } => {
                inner.answer(request, Reply::Data(sections))
            }
            ToComponent::HealthcheckAck {
                request,
                ok,
                reason,
            } => inner.answer(request, Reply::Ack { ok, reason }),
            ToComponent::CheckpointWriteRefused {
                request: _,
                checkpoint,
                section,
                reason,
            } => inner.async_write_refused(checkpoint, section, reason),
            ToComponent::Registered { .. } => {
                tracing::warn!("nines: the agent sent Registered again; ignored")
            }
            msg => {
                if callbacks.send(msg).is_err() {
                    // The dispatch loop is done (after terminate); nothing left to call.
                    tracing::debug!("nines: request after terminate ignored");
                }
            }
        }
    }
}

/// The dispatch loop, on the `nines-dispatch` thread ([`Session::start`]) or the caller's
/// ([`Session::run`]): owns the component and runs its callbacks in order, answering the
/// agent. Returns once the session is over (terminated or closed).
fn dispatch<C: Component>(session: Session, mut component: C, inbox: Receiver<ToComponent>) {
    let inner = &*session.inner;
    if guarded(|| component.registered(&session)).is_none() {
        return inner.close("the component panicked in registered()");
    }
    let respond = |invocation, ok| {
        let _ = inner.send(&ToAgent::Response { invocation, ok });
    };
    for msg in inbox {
        if inner.is_closed() {
            return;
        }
        match msg {
            ToComponent::CsiSet {
                invocation,
                si,
                csi,
                ha,
                attrs,
                checkpoint,
            } => {
                inner.deliver(&si, checkpoint);
                match guarded(|| component.csi_set(&si, &csi, ha, &attrs)) {
                    Some(Ok(())) => {
                        inner.accepted(&si, &csi, Some(ha));
                        respond(invocation, true);
                        if ha == HaState::Quiescing {
                            let _ = inner.send(&ToAgent::QuiescingComplete { invocation });
                        }
                    }
                    Some(Err(reason)) => {
                        tracing::warn!("nines: csi_set({csi}, {ha:?}) refused: {reason}");
                        respond(invocation, false);
                    }
                    None => {
                        respond(invocation, false);
                        return inner.close("the component panicked in csi_set()");
                    }
                }
            }
            ToComponent::CsiRemove {
                invocation,
                si,
                csi,
            } => {
                inner.deliver(&si, None);
                match guarded(|| component.csi_remove(&si, &csi)) {
                    Some(Ok(())) => {
                        inner.accepted(&si, &csi, None);
                        respond(invocation, true)
                    }
                    Some(Err(reason)) => {
                        tracing::warn!("nines: csi_remove({csi}) failed: {reason}");
                        respond(invocation, false);
                    }
                    None => {
                        respond(invocation, false);
                        return inner.close("the component panicked in csi_remove()");
                    }
                }
            }
            ToComponent::Healthcheck { invocation } => match guarded(|| component.healthcheck()) {
                Some(Ok(())) => {
                    let _ = inner.send(&ToAgent::HealthcheckConfirm { invocation });
                }
                Some(Err(reason)) => tracing::warn!("nines: healthcheck failed: {reason}"),
                None => return inner.close("the component panicked in healthcheck()"),
            },
            ToComponent::ProtectionGroup { si, members } => {
                if guarded(|| component.protection_group(&si, &members)).is_none() {
                    return inner.close("the component panicked in protection_group()");
                }
            }
            ToComponent::Terminate { invocation } => {
                let ok = guarded(|| component.terminate()).is_some();
                // Answer and mark terminated under the `life` lock: `close` (the agent hanging
                // up right after our answer) then cannot slip in between, and `wait` returns
                // `Ok` only once the answer is out.
                let sent = {
                    let mut life = lock(&inner.life);
                    let sent = inner.send_raw(&ToAgent::Response { invocation, ok });
                    life.terminated = true;
                    sent
                };
                inner.life_changed.notify_all();
                if let Err(e) = sent {
                    inner.close(&format!("write to the agent failed: {e}"));
                }
                if !ok {
                    inner.close("the component panicked in terminate()");
                }
                return;
            }
            other => tracing::warn!("nines: unexpected {} from the agent; ignored", kind(&other)),
        }
    }
}
