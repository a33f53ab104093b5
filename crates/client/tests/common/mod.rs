//! A fake node agent for the client library's tests: a real Unix socket in a temporary
//! directory, driven step by step from the test, std only.
#![allow(dead_code)] // Each test binary uses a different part of it.

use std::collections::VecDeque;
use std::io::{BufReader, ErrorKind, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nines_client::{ClientError, Component, Dispatch, Dispatcher, HaState, Session};
use nines_proto::{read_frame, write_frame, ToAgent, ToComponent, PROTOCOL_VERSION};

/// How long the fake agent waits for anything before failing the test instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(5);

pub const COMPONENT: &str = "app/sg/su-1/comp";

/// Name of the thread [`FakeAgent::run_reconnecting`] calls `Session::run_with_reconnect` on.
pub const RUN_THREAD: &str = "component-main";

/// A directory removed on drop, also when the test fails.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nines-client-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct FakeAgent {
    pub path: PathBuf,
    listener: UnixListener,
    _dir: TempDir,
}

impl FakeAgent {
    pub fn new() -> FakeAgent {
        let dir = TempDir::new();
        let path = dir.0.join("agent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        FakeAgent {
            path,
            listener,
            _dir: dir,
        }
    }

    /// Accept one connection, failing the test after [`PATIENCE`].
    pub fn accept(&self) -> Conn {
        self.listener.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).expect("blocking");
                    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
                    let reader = BufReader::new(stream.try_clone().expect("clone"));
                    return Conn { stream, reader };
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(2))
                }
                Err(e) => panic!("fake agent: no connection: {e}"),
            }
        }
    }

    /// Start a session for `component` against this agent and accept its registration.
    pub fn start<C: Component>(&self, component: C) -> (Session, Conn) {
        self.start_reconnecting(component, nines_client::RECONNECT_WINDOW)
    }

    /// [`FakeAgent::start`] with a session that tries to register again for `window` after
    /// its agent went away.
    pub fn start_reconnecting<C: Component>(
        &self,
        component: C,
        window: Duration,
    ) -> (Session, Conn) {
        let path = self.path.clone();
        let client = thread::spawn(move || {
            Session::start_with_reconnect(&path, COMPONENT, component, window)
        });
        let conn = self.accept_first_registration();
        let session = client
            .join()
            .expect("client thread")
            .expect("registration accepted");
        (session, conn)
    }

    /// Run a session for `component` with [`Session::run_with_reconnect`] on a new thread
    /// named [`RUN_THREAD`] (the component's "main"), and accept its registration. The handle
    /// gives what `run` returned, and names the thread callbacks must run on.
    pub fn run_reconnecting<C: Component>(
        &self,
        component: C,
        window: Duration,
    ) -> (thread::JoinHandle<Result<(), ClientError>>, Conn) {
        let path = self.path.clone();
        let client = thread::Builder::new()
            .name(RUN_THREAD.into())
            .spawn(move || Session::run_with_reconnect(&path, COMPONENT, component, window))
            .expect("spawn the run thread");
        (client, self.accept_first_registration())
    }

    /// Open a polled session for `component` with [`Session::open_polled_with_reconnect`] on
    /// a thread named [`OPEN_THREAD`] (opening blocks until the agent answers), and accept its
    /// registration.
    pub fn open_polled<C: Component>(
        &self,
        component: C,
        window: Duration,
    ) -> (Session, Dispatcher<C>, Conn) {
        let path = self.path.clone();
        let client = thread::Builder::new()
            .name(OPEN_THREAD.into())
            .spawn(move || Session::open_polled_with_reconnect(&path, COMPONENT, component, window))
            .expect("spawn the opening thread");
        let conn = self.accept_first_registration();
        let (session, dispatcher) = client
            .join()
            .expect("open does not unwind")
            .expect("registration accepted");
        (session, dispatcher, conn)
    }

    /// Accept a session's first registration, check what it says, and accept it.
    pub fn accept_first_registration(&self) -> Conn {
        let mut conn = self.accept();
        match conn.recv() {
            ToAgent::Register {
                component,
                pid,
                version,
                held,
            } => {
                assert_eq!(component, COMPONENT);
                assert_eq!(pid, std::process::id());
                assert_eq!(version, PROTOCOL_VERSION);
                assert!(held.is_empty(), "a new session holds nothing");
            }
            other => panic!("expected Register, got {other:?}"),
        }
        conn.send(&ToComponent::Registered {
            ok: true,
            reason: None,
        });
        conn
    }

    /// Accept a session registering again (after its agent went away), answer it, and return
    /// the connection with the CSIs the session said it holds.
    pub fn accept_registration(&self) -> (Conn, Vec<nines_proto::HeldCsi>) {
        let mut conn = self.accept();
        let held = match conn.recv() {
            ToAgent::Register {
                component, held, ..
            } => {
                assert_eq!(component, COMPONENT);
                held
            }
            other => panic!("expected Register, got {other:?}"),
        };
        conn.send(&ToComponent::Registered {
            ok: true,
            reason: None,
        });
        (conn, held)
    }

    /// Start a session in the background, returning the agent's side before registration.
    pub fn start_pending<C: Component>(
        &self,
        component: C,
    ) -> (thread::JoinHandle<Result<Session, ClientError>>, Conn) {
        let path = self.path.clone();
        let client = thread::spawn(move || Session::start_with(&path, COMPONENT, component));
        (client, self.accept())
    }
}

/// Name of the thread [`FakeAgent::open_polled`] opens the session on.
pub const OPEN_THREAD: &str = "polled-open";

/// Whether `fd` becomes readable within `timeout` (poll(2)).
pub fn readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    let timeout = Timespec::try_from(timeout).expect("timeout");
    poll(&mut fds, Some(&timeout)).expect("poll") == 1 && fds[0].revents().contains(PollFlags::IN)
}

/// Poll the dispatcher's selection object and dispatch until the session ends; fails the
/// test if it does not within `2 * PATIENCE`.
pub fn dispatch_until_ended<C: Component>(
    dispatcher: &mut Dispatcher<C>,
) -> Result<(), ClientError> {
    let deadline = Instant::now() + 2 * PATIENCE;
    while Instant::now() < deadline {
        if readable(dispatcher.fd(), Duration::from_millis(50)) {
            if let Dispatch::Ended(outcome) = dispatcher.dispatch() {
                return outcome;
            }
        }
    }
    panic!("the polled session did not end in time");
}

pub struct Conn {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Conn {
    /// The next message from the client; fails the test after [`PATIENCE`].
    pub fn recv(&mut self) -> ToAgent {
        match read_frame::<_, ToAgent>(&mut self.reader) {
            Ok(Some(m)) => m,
            other => panic!("fake agent: expected a message, got {other:?}"),
        }
    }

    pub fn send(&mut self, msg: &ToComponent) {
        write_frame(&mut self.stream, msg).expect("fake agent: send");
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream
            .write_all(bytes)
            .expect("fake agent: send bytes");
    }

    /// The client closes its side: the next read is EOF (or a reset), not a message.
    pub fn expect_eof(&mut self) {
        let mut buf = [0u8; 64];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("fake agent: the client did not close the connection")
                }
                Err(e) => panic!("fake agent: read failed: {e}"),
                // Anything already in flight (a response) is fine; keep reading until EOF.
                Ok(_) => {}
            }
        }
    }
}

/// What a [`Scripted`] component was called with, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    Registered,
    Set(String, String, HaState, Vec<(String, String)>),
    Remove(String, String),
    Healthcheck,
    Terminate,
    Group(String, Vec<(String, HaState)>),
    /// A checkpoint read done from inside `csi_set(Active)`, and its result.
    ReadInCallback(Result<Vec<(String, Vec<u8>)>, String>),
}

/// What a [`Scripted`] component that becomes active does inside `csi_set`, with its session.
pub type OnActive = Box<dyn FnMut(&Session) + Send>;

/// A component that records its calls and behaves as its script says: `csi_set` refuses when
/// the attributes hold `("refuse", reason)` and panics on `("panic", _)`; healthchecks answer
/// from a queue (healthy when empty); with `read_on_active`, becoming active reads that
/// checkpoint from inside the callback, and `on_active` runs then too. `on_callback` runs at
/// the start of every callback, `registered` included.
#[derive(Default)]
pub struct Scripted {
    pub calls: Arc<Mutex<Vec<Call>>>,
    pub health: VecDeque<Result<(), String>>,
    pub read_on_active: Option<String>,
    pub on_active: Option<OnActive>,
    pub on_callback: Option<Box<dyn FnMut() + Send>>,
    session: Option<Session>,
}

impl Scripted {
    pub fn new() -> (Scripted, Arc<Mutex<Vec<Call>>>) {
        let s = Scripted::default();
        let calls = Arc::clone(&s.calls);
        (s, calls)
    }

    fn record(&mut self, call: Call) {
        if let Some(hook) = &mut self.on_callback {
            hook();
        }
        self.calls.lock().unwrap().push(call);
    }
}

impl Component for Scripted {
    fn registered(&mut self, session: &Session) {
        self.session = Some(session.clone());
        self.record(Call::Registered);
    }

    fn csi_set(
        &mut self,
        si: &str,
        csi: &str,
        ha: HaState,
        attrs: &[(String, String)],
    ) -> Result<(), String> {
        self.record(Call::Set(si.into(), csi.into(), ha, attrs.to_vec()));
        for (k, v) in attrs {
            match k.as_str() {
                "refuse" => return Err(v.clone()),
                "panic" => panic!("scripted panic: {v}"),
                _ => {}
            }
        }
        if let (HaState::Active, Some(ckpt), Some(session)) =
            (ha, &self.read_on_active, &self.session)
        {
            let got = session.checkpoint_read(ckpt).map_err(|e| e.to_string());
            self.calls.lock().unwrap().push(Call::ReadInCallback(got));
        }
        if let (HaState::Active, Some(hook), Some(session)) =
            (ha, &mut self.on_active, &self.session)
        {
            hook(session);
        }
        Ok(())
    }

    fn csi_remove(&mut self, si: &str, csi: &str) -> Result<(), String> {
        self.record(Call::Remove(si.into(), csi.into()));
        Ok(())
    }

    fn healthcheck(&mut self) -> Result<(), String> {
        self.record(Call::Healthcheck);
        self.health.pop_front().unwrap_or(Ok(()))
    }

    fn terminate(&mut self) {
        self.record(Call::Terminate);
    }

    fn protection_group(&mut self, si: &str, members: &[(String, HaState)]) {
        self.record(Call::Group(si.into(), members.to_vec()));
    }
}

/// Run `f` on a thread and fail the test if it does not finish within [`PATIENCE`].
pub fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(PATIENCE)
        .expect("did not finish in time (or panicked)")
}

/// A `CsiSet` request for `app/si/csi` of `app/si` with these attributes.
pub fn csi_set(invocation: u64, ha: HaState, attrs: &[(&str, &str)]) -> ToComponent {
    ToComponent::CsiSet {
        invocation,
        si: "app/si".into(),
        csi: "app/si/csi".into(),
        ha,
        attrs: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        checkpoint: None,
    }
}

/// Expects a checkpoint write of `data` and answers it (sync writes only) with `ok`.
pub fn answer_write(conn: &mut Conn, data: &[u8], ok: bool) -> bool {
    match conn.recv() {
        ToAgent::CheckpointWrite {
            request,
            data: got,
            sync,
            ..
        } => {
            assert_eq!(got, data, "{:?}", String::from_utf8_lossy(&got));
            if sync {
                conn.send(&ToComponent::CheckpointAck {
                    request,
                    ok,
                    reason: (!ok).then(|| "no".to_string()),
                });
            }
            sync
        }
        other => panic!("expected the write of {data:?}, got {other:?}"),
    }
}
