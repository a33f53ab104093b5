//! The SA-aware client library: what applications link to be managed by nines.
//!
//! A component implements [`Component`] (what to do when the AMF assigns or removes work, asks
//! for health, or asks it to stop) and calls [`Session::start`], [`Session::run`] or
//! [`Session::open_polled`] once. The library connects to the node agent that spawned the
//! process, registers, and from then on calls the component back on one thread, answering the
//! agent for it (see [below](#three-ways-to-drive-a-session) for which thread). The component
//! never sees invocation ids or frames, so it cannot answer the wrong request, forget an
//! answer or answer twice.
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
//! # Three ways to drive a session
//!
//! * [`Session::start`]: a library thread (`nines-dispatch`) runs the callbacks and another
//!   (`nines-reader`) reads the agent's socket; `main` is free. Three threads with `main`.
//! * [`Session::run`]: the calling thread runs the callbacks until the session ends (AMF's
//!   `saAmfDispatch` with `SA_DISPATCH_BLOCKING`); the reader thread remains. Two threads.
//! * [`Session::open_polled`]: no library thread at all. The application's own event loop
//!   polls the selection object [`Dispatcher::fd`] next to its own sockets and calls
//!   [`Dispatcher::dispatch`] when it is readable, which runs the ready callbacks on the
//!   loop's thread (AMF's `saAmfSelectionObjectGet` and `saAmfDispatch` with
//!   `SA_DISPATCH_ALL`). A component serving its clients from that loop is one thread.
//!
//! Why the polled mode exists: when a component is killed, the kernel tears down every thread
//! of it before the agent sees it die, and that delay is part of every failover's outage.
//! Measured on a 2-vCPU VM from SIGKILL to the agent's pidfd becoming readable (median): a
//! 1-thread process 153 µs, 2 threads 392 µs, 3 threads 367-430 µs. The step from one thread
//! to two costs about 240 µs (cross-vCPU TLB shootdowns, which are VM exits there), against a
//! target of under 1 ms for the whole outage a client sees. A synchronous request also gets
//! its reply without a hop from a reader thread to the requesting one (about 25 µs per
//! synchronous checkpoint write).
//!
//! ```no_run
//! use std::io::Read;
//! use std::net::TcpListener;
//! use std::os::fd::AsFd;
//!
//! use nines_client::{Component, Dispatch, HaState, Session};
//! use rustix::event::{poll, PollFd, PollFlags};
//!
//! struct Counter;
//!
//! impl Component for Counter {
//!     fn csi_set(&mut self, _si: &str, _csi: &str, _ha: HaState, _attrs: &[(String, String)])
//!         -> Result<(), String> {
//!         Ok(())
//!     }
//!     fn csi_remove(&mut self, _si: &str, _csi: &str) -> Result<(), String> {
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let (_session, mut dispatcher) = Session::open_polled(Counter)?;
//!     let clients = TcpListener::bind("127.0.0.1:7100")?;
//!     clients.set_nonblocking(true)?;
//!     loop {
//!         let mut fds = [
//!             PollFd::new(&dispatcher, PollFlags::IN),
//!             PollFd::new(&clients, PollFlags::IN),
//!         ];
//!         poll(&mut fds, None)?;
//!         let (agent, client) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
//!         if agent {
//!             if let Dispatch::Ended(outcome) = dispatcher.dispatch() {
//!                 // Terminated (Ok), or the agent is gone and none came back (Err).
//!                 outcome?;
//!                 return Ok(());
//!             }
//!         }
//!         if client {
//!             if let Ok((mut stream, _)) = clients.accept() {
//!                 let mut request = [0u8; 64];
//!                 let _ = stream.read(&mut request); // A real server keeps it in the set.
//!             }
//!         }
//!     }
//! }
//! ```
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
//! * Std and plain system calls only (through rustix: epoll, eventfd, poll and recv for the
//!   polled mode): no async runtime, so any application can link it, any event loop can poll
//!   it, and a C ABI can wrap it later.
//! * Every thread of the library costs failover time (see above). A session has a reader
//!   thread unless it is polled, and a dispatch thread (`nines-dispatch`) only when started
//!   with [`Session::start`]. The polled mode starts a thread only while it registers again
//!   with a restarted agent (`nines-reconnect`), so that the application's loop goes on.
//! * Callbacks run one at a time, in the order the agent sent them, on the dispatching thread
//!   (the `nines-dispatch` thread, the thread in [`Session::run`], or the one calling
//!   [`Dispatcher::dispatch`]). Whatever reads the agent's socket (the reader thread, or in the
//!   polled mode whoever holds the reader role) never runs component code, so replies to
//!   checkpoint requests are delivered even while a callback is blocked waiting for one (a
//!   newly active component reads its checkpoint inside `csi_set`).
//! * Nothing the agent sends can panic the library: a bad frame, an unexpected message or a
//!   closed connection ends the session, and every blocked caller gets [`ClientError::Closed`].
//! * A session ends only once: after it is closed no callback is run any more, because acting on
//!   an assignment the agent can no longer supervise could make two actives.
#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, BufReader, ErrorKind};
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use nines_proto::{
    read_frame, write_frame, Decoder, FrameError, HeldCsi, ToAgent, ToComponent, ENV_AGENT_SOCKET,
    ENV_COMPONENT, PROTOCOL_VERSION,
};
pub use nines_proto::{HaState, Recovery};
use rustix::event::{epoll, eventfd, EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::RecvFlags;

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
/// All methods are called on the session's dispatching thread (the library's `nines-dispatch`
/// thread after [`Session::start`], the caller's thread inside [`Session::run`], the one
/// calling [`Dispatcher::dispatch`] after [`Session::open_polled`]), one at a time, in the
/// order the agent sent the requests, so an implementation needs no locking of its own for
/// them. Each call should return promptly: the agent applies a callback timeout
/// and treats a late answer as a failure of the component. A panic in a callback is treated as
/// a failure: the request is answered `ok: false` and the session is closed (and `run`
/// returns [`ClientError::Closed`], `dispatch` [`Dispatch::Ended`] with it).
pub trait Component: Send + 'static {
    /// Called once, before any other callback, with the session that will deliver them. Keep a
    /// clone if callbacks need it (to read a checkpoint when becoming active, to write one while
    /// quiescing): unlike the handle [`Session::start`] returns, this one is guaranteed to be
    /// there before the first `csi_set` arrives, and with [`Session::run`] it is the only one.
    /// With [`Session::open_polled`] it is called on the thread opening the session, before
    /// that returns.
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
/// while the dispatching thread runs callbacks (in the polled mode, see [`Dispatcher`] for
/// what that costs). The connection lives until the agent closes it or the process exits;
/// dropping handles does not unregister (the AMF learns that a component is gone from its
/// process exiting).
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

/// State shared by the handles, the reader thread (or reader role) and the dispatching side
/// of a session.
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
    /// How frames from the agent are read in the polled mode ([`Session::open_polled`]);
    /// `None` when the session has a reader thread.
    polled: Option<Arc<Polled>>,
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

impl Life {
    /// How the session ended, once it has: `Ok` once the component was asked to terminate and
    /// answered (even if the connection closed after that), `Closed` otherwise.
    fn outcome(&self) -> Option<Result<(), ClientError>> {
        if self.terminated {
            Some(Ok(()))
        } else if self.closed {
            Some(Err(ClientError::Closed))
        } else {
            None
        }
    }
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

/// A connection, thread or descriptor that could not be set up fails the session's setup.
fn setup_error(socket: &Path, source: io::Error) -> ClientError {
    ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    }
}

/// One registered connection to an agent.
struct Connection {
    /// Read half, buffered: the agent may send its first request right behind `Registered`,
    /// and those bytes must reach whoever reads the session next (the reader thread, or the
    /// polled mode's decoder), not be lost with a temporary buffer.
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
        let setup = |e| setup_error(socket, e);
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
            .spawn(move || dispatch_loop(for_dispatch, component, inbox))
        {
            session.inner.close("could not start the dispatch thread");
            return Err(setup_error(socket, e));
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
    /// delays the moment its death becomes visible to the agent when it is killed (see
    /// [the module docs](crate#three-ways-to-drive-a-session) for measurements). Here the
    /// caller's thread dispatches, so the session costs one thread (the reader) instead of
    /// two, and a failover after a crash starts that much earlier; the polled mode
    /// ([`open_polled`](Self::open_polled)) costs none.
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
        if guarded(|| dispatch_loop(session.clone(), component, inbox)).is_none() {
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
        let connection = Connection::open(socket, component_path, Vec::new(), REQUEST_TIMEOUT)?;
        let reader = connection.reader;
        let session = Session::registered_as(
            socket,
            component_path,
            window,
            connection.writer,
            connection.shutdown,
            None,
        );
        let (callbacks, inbox) = mpsc::channel();
        let for_reader = Arc::clone(&session.inner);
        if let Err(e) = thread::Builder::new()
            .name("nines-reader".into())
            .spawn(move || read_loop(&for_reader, reader, callbacks))
        {
            session.inner.close("could not start the reader thread");
            return Err(setup_error(socket, e));
        }
        Ok((session, inbox))
    }

    /// The session of a connection that just registered (the read half is the caller's).
    fn registered_as(
        socket: &Path,
        component_path: &str,
        window: Duration,
        writer: UnixStream,
        shutdown: UnixStream,
        polled: Option<Arc<Polled>>,
    ) -> Session {
        Session {
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
                polled,
            }),
        }
    }

    /// Connects using `NINES_AGENT_SOCKET` and `NINES_COMPONENT` (as [`start`](Self::start)),
    /// registers, calls [`Component::registered`] on the calling thread, and returns without
    /// starting any thread: the application's own event loop polls
    /// [`Dispatcher::fd`] and calls [`Dispatcher::dispatch`], which runs the callbacks on the
    /// loop's thread (AMF's `saAmfSelectionObjectGet` and `saAmfDispatch` with
    /// `SA_DISPATCH_ALL`).
    ///
    /// Why: every thread of a process delays the moment its death becomes visible to the
    /// agent when it is killed, and that delay is part of every failover's outage. A
    /// component that serves its clients from a poll loop anyway can be one thread in all:
    /// see [the module docs](crate#three-ways-to-drive-a-session) for the numbers. A
    /// registration failure is returned before any callback runs, as from `start`; so is a
    /// panic in `registered` (as [`ClientError::Closed`]).
    pub fn open_polled<C: Component>(
        component: C,
    ) -> Result<(Session, Dispatcher<C>), ClientError> {
        let (socket, path) = env_config()?;
        Self::open_polled_with(Path::new(&socket), &path, component)
    }

    /// Like [`open_polled`](Self::open_polled) with the socket and the component's entity
    /// path given explicitly (as [`start_with`](Self::start_with)).
    pub fn open_polled_with<C: Component>(
        socket: &Path,
        component_path: &str,
        component: C,
    ) -> Result<(Session, Dispatcher<C>), ClientError> {
        Self::open_polled_with_reconnect(socket, component_path, component, RECONNECT_WINDOW)
    }

    /// Like [`open_polled_with`](Self::open_polled_with), keeping the session for `window`
    /// (instead of [`RECONNECT_WINDOW`]) after its agent went away, as
    /// [`start_with_reconnect`](Self::start_with_reconnect) does. Registering again happens on
    /// a short-lived thread (the only one the polled mode ever starts, and only while it
    /// reconnects), so the application's loop goes on meanwhile; once the restarted agent
    /// accepted the session, [`Dispatcher::fd`] (the same descriptor) reports its requests.
    /// `Duration::ZERO` ends the session as soon as the agent is gone.
    pub fn open_polled_with_reconnect<C: Component>(
        socket: &Path,
        component_path: &str,
        mut component: C,
        window: Duration,
    ) -> Result<(Session, Dispatcher<C>), ClientError> {
        // Before registering: an agent must not see a registration that cannot be served.
        let polled = Arc::new(Polled::new().map_err(|e| setup_error(socket, e))?);
        let connection = Connection::open(socket, component_path, Vec::new(), REQUEST_TIMEOUT)?;
        let session = Session::registered_as(
            socket,
            component_path,
            window,
            connection.writer,
            connection.shutdown,
            Some(Arc::clone(&polled)),
        );
        let installed = polled.install(&session.inner, &mut polled.role(), connection.reader);
        if let Err(e) = installed {
            session
                .inner
                .close("could not watch the connection to the agent");
            return Err(setup_error(socket, e));
        }
        if !registered(&session, &mut component) {
            return Err(ClientError::Closed);
        }
        Ok((
            session.clone(),
            Dispatcher {
                session,
                polled,
                component,
            },
        ))
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
        // The agent sends the refusal of an earlier write before the flush's answer, and
        // frames are routed in order: any refusal is recorded by now.
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
    /// Meant for `main` once it has nothing else to do (or, with [`run`](Self::run) and
    /// [`open_polled`](Self::open_polled), for another thread that must learn when the session
    /// ends). Never call it from a callback, nor from the thread that calls
    /// [`Dispatcher::dispatch`]: the terminate request is delivered on the very thread it
    /// would block. (The polled loop learns the outcome from [`Dispatch::Ended`] instead.)
    pub fn wait(&self) -> Result<(), ClientError> {
        let mut life = lock(&self.inner.life);
        loop {
            if let Some(outcome) = life.outcome() {
                return outcome;
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

    /// Write one frame; on an I/O failure the frame may be half out, so the connection ends
    /// (and the session registers again, or ends).
    fn send(self: &Arc<Self>, msg: &ToAgent) -> Result<(), ClientError> {
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
                // With no reader thread, nobody might read the socket before this caller waits
                // for a new connection (a request on the dispatching thread): read it now.
                if let Some(polled) = &self.polled {
                    polled.drain(self, &mut polled.role());
                }
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
    fn send_unanswered(
        self: &Arc<Self>,
        build: impl FnOnce(u64) -> ToAgent,
    ) -> Result<(), ClientError> {
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

    /// Send a request and wait for the reply, routed back by the reader thread (or, in the
    /// polled mode, by whoever reads). A request the agent cannot have seen (the write failed,
    /// or the connection was already down) goes to the restarted agent instead; one lost in
    /// flight fails with `Disconnected`.
    fn request(self: &Arc<Self>, build: impl Fn(u64) -> ToAgent) -> Result<Reply, ClientError> {
        self.request_with(build, false)
    }

    /// As [`request`](Self::request), for a request that may be repeated safely (a checkpoint
    /// write, read or flush): one lost in flight is sent again to the restarted agent too.
    fn request_idempotent(
        self: &Arc<Self>,
        build: impl Fn(u64) -> ToAgent,
    ) -> Result<Reply, ClientError> {
        self.request_with(build, true)
    }

    fn request_with(
        self: &Arc<Self>,
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
            let reply = match &self.polled {
                Some(polled) => polled.await_reply(self, &rx, Instant::now() + REQUEST_TIMEOUT),
                None => rx.recv_timeout(REQUEST_TIMEOUT),
            };
            match reply {
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
    /// shut the socket down so the reader thread and the agent both notice at once, and make
    /// the polled mode's selection object readable so that its loop learns it too.
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
        if let Some(polled) = &self.polled {
            polled.wake();
        }
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

impl Inner {
    /// The connection to the agent ended: marks it down and fails the requests in flight on it
    /// (their waiters get `Disconnected`). Says whether to register again: not once the
    /// session is terminated or closed, nor without a reconnect window.
    fn lost(&self) -> bool {
        self.connected.store(false, Ordering::SeqCst);
        lock(&self.requests).waiting.clear();
        let life = lock(&self.life);
        !(life.terminated || life.closed || self.reconnect_window.is_zero())
    }

    /// How the session ended, if it has (what [`Session::wait`] returns).
    fn outcome(&self) -> Option<Result<(), ClientError>> {
        lock(&self.life).outcome()
    }
}

/// The reader thread's way back after its connection ended (`why`): [`Inner::lost`], then
/// [`register_again`] on this thread. `None` when the session is over instead.
fn reconnect(inner: &Inner, why: &str) -> Option<BufReader<UnixStream>> {
    if !inner.lost() {
        return None;
    }
    register_again(inner, why)
}

/// After the connection to the agent ended (`why`) and [`Inner::lost`] said to: registers
/// again with whatever agent listens on the socket now, for up to the session's reconnect
/// window, saying which CSIs this component holds. `None` when the session is over instead:
/// closed, refused, or no agent came back in time.
fn register_again(inner: &Inner, why: &str) -> Option<BufReader<UnixStream>> {
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

/// Why reading from the agent stopped.
enum Hangup {
    /// The agent went away (it closed the connection, or the connection failed, saying
    /// `why`): register again if the session may, else close it saying `closing`.
    Gone { why: String, closing: String },
    /// The agent broke the protocol: the session ends.
    Broken(String),
}

impl Hangup {
    /// Classifies the end of reading: `None` for a clean end of stream.
    fn of(error: Option<FrameError>) -> Hangup {
        match error {
            None => Hangup::Gone {
                why: "it closed the connection".to_owned(),
                closing: "the agent closed the connection".to_owned(),
            },
            // A stream that ends inside a frame is broken, not an agent that went away: an
            // agent's socket ends at a frame boundary, even when the agent is killed.
            Some(FrameError::Io(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                Hangup::Broken(format!("bad frame from the agent: {e}"))
            }
            Some(FrameError::Io(e)) => Hangup::Gone {
                why: e.to_string(),
                closing: format!("the connection to the agent failed: {e}"),
            },
            Some(e) => Hangup::Broken(format!("bad frame from the agent: {e}")),
        }
    }
}

/// Reader thread: routes checkpoint replies to their waiters and everything else to the
/// dispatch loop. Runs no component code, so replies flow while a callback is blocked.
fn read_loop(inner: &Inner, mut reader: BufReader<UnixStream>, callbacks: Sender<ToComponent>) {
    let _close = CloseOnExit(inner);
    loop {
        let hangup = match read_frame::<_, ToComponent>(&mut reader) {
            Ok(Some(msg)) => {
                if let Some(callback) = route(inner, msg) {
                    if callbacks.send(callback).is_err() {
                        // The dispatch loop is done (after terminate); nothing left to call.
                        tracing::debug!("nines: request after terminate ignored");
                    }
                }
                continue;
            }
            Ok(None) => Hangup::of(None),
            Err(e) => Hangup::of(Some(e)),
        };
        match hangup {
            Hangup::Gone { why, closing } => match reconnect(inner, &why) {
                Some(r) => reader = r,
                None => return inner.close(&closing),
            },
            Hangup::Broken(why) => return inner.close(&why),
        }
    }
}

/// Routes one frame from the agent, as the reader thread and the polled mode's reader role
/// both do: a reply goes to the thread waiting for it, a refused asynchronous write to the
/// next checkpoint call. A callback is returned, for the dispatching side to run. Runs no
/// component code, so replies flow while a callback is blocked waiting for one.
fn route(inner: &Inner, msg: ToComponent) -> Option<ToComponent> {
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
        callback => return Some(callback),
    }
    None
}

/// Calls [`Component::registered`], before any other callback; a panic in it ends the
/// session (false).
fn registered<C: Component>(session: &Session, component: &mut C) -> bool {
    if guarded(|| component.registered(session)).is_none() {
        session
            .inner
            .close("the component panicked in registered()");
        return false;
    }
    true
}

/// The dispatch loop, on the `nines-dispatch` thread ([`Session::start`]) or the caller's
/// ([`Session::run`]): owns the component and runs its callbacks in order, answering the
/// agent. Returns once the session is over (terminated or closed).
fn dispatch_loop<C: Component>(session: Session, mut component: C, inbox: Receiver<ToComponent>) {
    if !registered(&session, &mut component) {
        return;
    }
    for msg in inbox {
        if session.inner.is_closed() || handle(&session.inner, &mut component, msg).is_break() {
            return;
        }
    }
}

/// Runs the component's callback for one request of the agent and answers the agent for it,
/// on the dispatching thread (the dispatch loop's, or [`Dispatcher::dispatch`]'s caller).
/// `Break` once the session is over: terminated, or closed because the component panicked.
fn handle<C: Component>(
    inner: &Arc<Inner>,
    component: &mut C,
    msg: ToComponent,
) -> ControlFlow<()> {
    let respond = |invocation, ok| {
        let _ = inner.send(&ToAgent::Response { invocation, ok });
    };
    let end = |why: &str| {
        inner.close(why);
        ControlFlow::Break(())
    };
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
                    return end("the component panicked in csi_set()");
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
                    return end("the component panicked in csi_remove()");
                }
            }
        }
        ToComponent::Healthcheck { invocation } => match guarded(|| component.healthcheck()) {
            Some(Ok(())) => {
                let _ = inner.send(&ToAgent::HealthcheckConfirm { invocation });
            }
            Some(Err(reason)) => tracing::warn!("nines: healthcheck failed: {reason}"),
            None => return end("the component panicked in healthcheck()"),
        },
        ToComponent::ProtectionGroup { si, members } => {
            if guarded(|| component.protection_group(&si, &members)).is_none() {
                return end("the component panicked in protection_group()");
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
            return ControlFlow::Break(());
        }
        other => tracing::warn!("nines: unexpected {} from the agent; ignored", kind(&other)),
    }
    ControlFlow::Continue(())
}

/// How long a synchronous request in the polled mode waits on its own channel while another
/// thread holds the reader role, before it looks again: the holder routes the reply as soon as
/// it arrives, so this only bounds how late the request notices that the role came free.
const ROLE_RETRY: Duration = Duration::from_millis(1);

/// Bytes read from the agent's socket at a time in the polled mode.
const READ_CHUNK: usize = 64 * 1024;

/// The polled mode's epoll data for the agent's socket and for the queue's eventfd (nothing
/// reads them back: the set is only ever waited on as a whole, by the application).
const SOCKET_EVENT: u64 = 0;
const READY_EVENT: u64 = 1;

/// The polled mode's reading ([`Session::open_polled`]): no thread reads the agent's socket.
/// The reader is a role instead: whoever needs frames ([`Dispatcher::dispatch`], or a
/// synchronous request waiting for its reply) takes it, reads what is there without blocking
/// anybody else, and routes it as the reader thread would.
struct Polled {
    /// The reader role. Held only while reading and routing, never while component code runs:
    /// callbacks make synchronous requests, which take the role themselves.
    role: Mutex<ReadHalf>,
    /// Callbacks routed and not yet run, in the order the agent sent them.
    queue: Mutex<VecDeque<ToComponent>>,
    /// The selection object: a level-triggered epoll set of the agent's socket (while there is
    /// a connection) and `ready`, so it is readable while either has something.
    epoll: OwnedFd,
    /// An eventfd signalled whenever callbacks are queued (and when the session ends), reset by
    /// [`Dispatcher::dispatch`] once it found the queue empty.
    ready: OwnedFd,
    /// Whether `ready` is (about to be) signalled, to spare the system calls of signalling it
    /// again and of resetting it when it is not.
    signalled: std::sync::atomic::AtomicBool,
}

/// What the holder of the reader role reads with.
struct ReadHalf {
    /// The registered connection's socket; `None` while there is none (registering again, or
    /// the session ended). Read with `MSG_DONTWAIT`, never made non-blocking: the writer
    /// shares its file description, and its writes must stay blocking.
    stream: Option<UnixStream>,
    /// Bytes of the frame still arriving.
    decoder: Decoder,
    /// Where reads land.
    buf: Vec<u8>,
}

impl Polled {
    /// The selection object, with no connection in it yet.
    fn new() -> io::Result<Polled> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let ready = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(
            &epoll,
            &ready,
            epoll::EventData::new_u64(READY_EVENT),
            epoll::EventFlags::IN,
        )?;
        Ok(Polled {
            role: Mutex::new(ReadHalf {
                stream: None,
                decoder: Decoder::new(),
                buf: vec![0; READ_CHUNK],
            }),
            queue: Mutex::default(),
            epoll,
            ready,
            signalled: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Takes the reader role, waiting for it: for jobs that cannot be skipped (installing a
    /// connection, noticing one that failed), which the holder never makes wait for long (it
    /// reads or waits for a socket that has something to read or has ended).
    fn role(&self) -> MutexGuard<'_, ReadHalf> {
        lock(&self.role)
    }

    /// The reader role, if nobody holds it.
    fn try_role(&self) -> Option<MutexGuard<'_, ReadHalf>> {
        match self.role.try_lock() {
            Ok(half) => Some(half),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Makes the selection object readable until the next [`reset`](Self::reset).
    fn wake(&self) {
        if !self.signalled.swap(true, Ordering::SeqCst) {
            // Fails only if the counter would overflow, when it is readable anyway.
            let _ = rustix::io::write(&self.ready, &1u64.to_ne_bytes());
        }
    }

    /// Undoes [`wake`](Self::wake). Racing with one, the worst outcome is a selection object
    /// that is readable with nothing queued (never the other way round), which only costs a
    /// `dispatch` that finds nothing.
    fn reset(&self) {
        if self.signalled.swap(false, Ordering::SeqCst) {
            let mut count = [0u8; 8];
            // EAGAIN if the racing `wake` has not written yet.
            let _ = rustix::io::read(&self.ready, &mut count);
        }
    }

    /// The next queued callback. When the queue is empty, resets the selection object first
    /// and looks once more: a callback queued after that look signals it again, so none is
    /// ever left in the queue without the selection object being readable.
    fn next_callback(&self) -> Option<ToComponent> {
        if let Some(callback) = lock(&self.queue).pop_front() {
            return Some(callback);
        }
        self.reset();
        lock(&self.queue).pop_front()
    }

    /// With the role: makes a newly registered connection the one read, and routes the
    /// requests the agent sent right behind `Registered` (already in the reader's buffer).
    fn install(
        self: &Arc<Self>,
        inner: &Arc<Inner>,
        half: &mut ReadHalf,
        reader: BufReader<UnixStream>,
    ) -> io::Result<()> {
        half.decoder = Decoder::new();
        half.decoder.push(reader.buffer());
        let stream = reader.into_inner();
        epoll::add(
            &self.epoll,
            &stream,
            epoll::EventData::new_u64(SOCKET_EVENT),
            epoll::EventFlags::IN,
        )?;
        half.stream = Some(stream);
        // Signals the selection object if callbacks came with `Registered`; from now on the
        // socket in the set does.
        self.route_decoded(inner, half);
        Ok(())
    }

    /// With the role: reads what the agent sent, without blocking, and routes every complete
    /// frame. Stops at a short read (the socket was empty then; whatever comes later keeps the
    /// level-triggered selection object readable, and a waiting request polls again), and
    /// when the connection ended.
    fn drain(self: &Arc<Self>, inner: &Arc<Inner>, half: &mut ReadHalf) {
        loop {
            let Some(stream) = &half.stream else {
                return;
            };
            let hangup = match rustix::net::recv(stream, &mut half.buf[..], RecvFlags::DONTWAIT) {
                Ok((0, _)) if half.decoder.buffered() > 0 => Hangup::of(Some(FrameError::Io(
                    io::Error::new(ErrorKind::UnexpectedEof, "stream ended inside a frame"),
                ))),
                Ok((0, _)) => Hangup::of(None),
                Ok((n, _)) => {
                    half.decoder.push(&half.buf[..n]);
                    if !self.route_decoded(inner, half) || n < half.buf.len() {
                        return;
                    }
                    continue;
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return,
                Err(e) => Hangup::of(Some(FrameError::Io(e.into()))),
            };
            return self.lose(inner, half, hangup);
        }
    }

    /// With the role: routes every complete frame the decoder holds, queueing the callbacks
    /// (and signalling the selection object once for them). False once a bad frame ended the
    /// session.
    fn route_decoded(self: &Arc<Self>, inner: &Arc<Inner>, half: &mut ReadHalf) -> bool {
        let mut queued = false;
        let intact = loop {
            match half.decoder.next::<ToComponent>() {
                Ok(Some(msg)) => {
                    if let Some(callback) = route(inner, msg) {
                        lock(&self.queue).push_back(callback);
                        queued = true;
                    }
                }
                Ok(None) => break true,
                Err(e) => {
                    self.lose(inner, half, Hangup::of(Some(e)));
                    break false;
                }
            }
        };
        if queued {
            self.wake();
        }
        intact
    }

    /// With the role: the connection ended. Stops watching it, then registers again on a
    /// short-lived thread (the application's loop must not wait out the reconnect window),
    /// or ends the session.
    fn lose(self: &Arc<Self>, inner: &Arc<Inner>, half: &mut ReadHalf, hangup: Hangup) {
        if let Some(stream) = half.stream.take() {
            // Explicitly: the session's other handles keep the socket open, and epoll would go
            // on reporting its end.
            let _ = epoll::delete(&self.epoll, &stream);
        }
        half.decoder = Decoder::new();
        let (why, closing) = match hangup {
            Hangup::Broken(why) => return inner.close(&why),
            Hangup::Gone { why, closing } => (why, closing),
        };
        if !inner.lost() {
            return inner.close(&closing);
        }
        let (polled, for_thread) = (Arc::clone(self), Arc::clone(inner));
        let spawned = thread::Builder::new()
            .name("nines-reconnect".into())
            .spawn(move || {
                let inner = &for_thread;
                let Some(reader) = register_again(inner, &why) else {
                    return inner.close(&closing);
                };
                let installed = polled.install(inner, &mut polled.role(), reader);
                if let Err(e) = installed {
                    inner.close(&format!(
                        "cannot watch the new connection to the agent: {e}"
                    ));
                }
            });
        if let Err(e) = spawned {
            inner.close(&format!("could not start a thread to register again: {e}"));
        }
    }

    /// A synchronous request's wait for its reply (until `deadline`). It takes the reader role
    /// when the role is free and reads until the reply is routed (routing whatever else comes
    /// meanwhile, callbacks included); while another thread holds the role, that one routes
    /// the reply, and this one waits on its channel, looking again every [`ROLE_RETRY`] in
    /// case the role came free.
    fn await_reply(
        self: &Arc<Self>,
        inner: &Arc<Inner>,
        rx: &Receiver<Reply>,
        deadline: Instant,
    ) -> Result<Reply, RecvTimeoutError> {
        loop {
            if let Some(mut half) = self.try_role() {
                // Nobody else routes while we hold the role: a reply not here yet can only
                // come from reading (or the session ending, which wakes the socket too).
                match rx.try_recv() {
                    Ok(reply) => return Ok(reply),
                    Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                    Err(TryRecvError::Empty) => {}
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(RecvTimeoutError::Timeout);
                }
                if let Some(stream) = &half.stream {
                    wait_readable(stream, left);
                    self.drain(inner, &mut half);
                    continue;
                }
                // No connection to read (registering again): the reply comes once there is.
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(ROLE_RETRY)) {
                Err(RecvTimeoutError::Timeout) if !left.is_zero() => {}
                got => return got,
            }
        }
    }
}

/// Waits (up to `timeout`) until the agent's socket has something to read, or has ended.
/// An interrupted wait just returns early: the caller looks again.
fn wait_readable(stream: &UnixStream, timeout: Duration) {
    let timeout = Timespec::try_from(timeout).unwrap_or(Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    });
    let _ = rustix::event::poll(&mut [PollFd::new(stream, PollFlags::IN)], Some(&timeout));
}

/// Owns the component of a session opened with [`Session::open_polled`]; the application's
/// own event loop drives it, so the session needs no thread of its own.
///
/// Built for one thread: the loop that polls [`fd`](Self::fd) calls
/// [`dispatch`](Self::dispatch), and callbacks run there. [`Session`] handles still work from
/// other threads (checkpoint writes from worker threads, [`Session::wait`]), but their
/// synchronous calls read the agent's socket themselves when nobody else is, and may wait up
/// to a millisecond for another thread that is reading to let them.
pub struct Dispatcher<C: Component> {
    session: Session,
    polled: Arc<Polled>,
    component: C,
}

impl<C: Component> Drop for Dispatcher<C> {
    /// Nobody will dispatch any more: the session ends, rather than stay registered with its
    /// callbacks and healthchecks unanswered until the agent times them out (or a restarted
    /// agent is given it again).
    fn drop(&mut self) {
        self.session.inner.close("the dispatcher was dropped");
    }
}

/// What [`Dispatcher::dispatch`] left behind.
#[derive(Debug)]
#[must_use]
pub enum Dispatch {
    /// The session goes on: poll [`Dispatcher::fd`] again.
    Running,
    /// The session is over, with the outcome [`Session::wait`] gives: `Ok` once the agent
    /// asked the component to terminate (after [`Component::terminate`] ran and the agent was
    /// answered), [`ClientError::Closed`] otherwise (the agent is gone and none came back, or
    /// a callback panicked). Every later call returns it again; the process should exit.
    Ended(Result<(), ClientError>),
}

impl<C: Component> Dispatcher<C> {
    /// The selection object (AMF's `saAmfSelectionObjectGet`): readable (`POLLIN`) whenever
    /// [`dispatch`](Self::dispatch) has something to do, that is bytes from the agent, or
    /// callbacks that a synchronous call read meanwhile (it routes everything it reads), or
    /// the end of the session. Add it to the application's `poll`/`epoll` set next to its own
    /// sockets. It is the same descriptor for the whole session, also across registering
    /// again with a restarted agent. Level-triggered: it stays readable until `dispatch`
    /// dealt with what made it so.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.polled.epoll.as_fd()
    }

    /// Reads whatever the agent sent, without blocking, routes the replies to the requests
    /// waiting for them, then runs every callback that is ready, in order, on the calling
    /// thread, answering the agent for each (AMF's `saAmfDispatch` with `SA_DISPATCH_ALL`).
    /// Callbacks queued by a callback's own synchronous request run in the same call.
    ///
    /// Never blocks except inside component code and the synchronous requests it makes. Call
    /// it when [`fd`](Self::fd) is readable; calling it at other times is harmless. A callback
    /// that panics ends the session (the panic does not unwind into the caller).
    pub fn dispatch(&mut self) -> Dispatch {
        let inner = &self.session.inner;
        if let Some(outcome) = inner.outcome() {
            return Dispatch::Ended(outcome);
        }
        // Busy means another thread is reading, and routes what it reads here.
        if let Some(mut half) = self.polled.try_role() {
            self.polled.drain(inner, &mut half);
        }
        while let Some(msg) = self.polled.next_callback() {
            if inner.is_closed() || handle(inner, &mut self.component, msg).is_break() {
                break;
            }
        }
        match inner.outcome() {
            Some(outcome) => Dispatch::Ended(outcome),
            None => Dispatch::Running,
        }
    }

    /// The session this dispatcher serves (the handle [`Component::registered`] got too).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The component, for the application's loop to use between dispatches (its own sockets
    /// often live in it): callbacks and the loop then share it without locking.
    pub fn component(&self) -> &C {
        &self.component
    }

    /// The component, mutably (see [`component`](Self::component)).
    pub fn component_mut(&mut self) -> &mut C {
        &mut self.component
    }
}

impl<C: Component> AsFd for Dispatcher<C> {
    /// [`Dispatcher::fd`].
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

impl<C: Component> std::fmt::Debug for Dispatcher<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}
