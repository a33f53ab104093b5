//! The TCP side of the counter: a listener on 127.0.0.1 that exists only while the component
//! is active, served with every client connection by the component's own poll loop
//! ([`Endpoint`]), so that the whole component is one thread.
//!
//! The listener is closed (not merely ignored) when the component stops being active, and it
//! is bound with `SO_REUSEADDR`, so that the component that becomes active next, in another
//! process, can bind the same port at once. Clients therefore always reach whichever
//! component is active at one fixed address, and a failover is seen by them as a short burst
//! of refused connections.
//!
//! One poll loop multiplexes the listener and all connections, rather than a thread per
//! connection, because threads are on the failover's critical path. The kernel tears a
//! SIGKILLed process down thread by thread before the supervisor sees the exit (a static test
//! process: 153 µs from SIGKILL to its pidfd readable with one thread, 392 µs with two, on the
//! development VM); and a newly active counter that spawned a thread for the probe's
//! reconnection paid about 40-60 µs (clone and first schedule) before answering it. So an
//! active counter with N clients is still one thread, and accepting a connection spawns
//! nothing. Answering all clients from one thread costs no concurrency: requests are
//! serialized anyway (an `inc` answers only once its checkpoint write is done).
//!
//! A connection's buffers are bounded, so that no client can make the service hold memory
//! without end: a request line is at most [`MAX_LINE`] bytes, and the requests of a client
//! that does not read its replies are left unread (so the kernel soon stops it sending more)
//! until it does; one that takes none of its pending replies for ten seconds is hung up.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::counter::{Checkpoint, Counter};
use crate::protocol::{self, Request, MAX_LINE};

/// How long [`Listening::bind`] keeps trying when the port is still taken. The previous active
/// normally released it before this one is asked to take over (a dead process's sockets are
/// closed before its exit is reported), so this only covers a listener being torn down
/// concurrently; it stays well under the default 1 s CSI callback timeout.
pub const BIND_PATIENCE: Duration = Duration::from_millis(300);

/// How long a client may leave its pending replies unread, taking none, before it is hung up:
/// long, because a client that reads at all (the probe, a person with `nc`) never comes near
/// it (the kernel's socket buffers absorb its pauses before replies pend here), and waiting
/// costs only the connection's bounded buffers.
const STUCK_PATIENCE: Duration = Duration::from_secs(10);

/// Bytes of replies a connection may have pending before its further requests are left unread
/// (a few hundred replies).
const MAX_PENDING_REPLIES: usize = 4096;

/// Requests answered for one connection per turn: each `inc` waits for a synchronous
/// checkpoint write, and the thread that answers them also dispatches the agent's callbacks
/// (the counter is one thread), which must not wait behind a long pipeline past their
/// timeout. What is left is answered in the next turn, which comes at once.
const ANSWERS_PER_TURN: usize = 16;

/// Bytes read from one connection per turn, so that a client pipelining many requests takes
/// turns with the others instead of holding the thread.
const READ_CHUNK: usize = 4096;

/// How long accepting pauses after an unexpected accept error (out of descriptors, say): the
/// listener stays readable, and retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Reports the component faulty when a client sends `fail` (the benchmark's error-report
/// scenario); `None` disables the request.
pub type FailHook = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What a connection needs to serve requests.
#[derive(Clone)]
pub struct Service {
    /// The value and its rule.
    pub counter: Arc<Counter>,
    /// Where acknowledged values are stored.
    pub checkpoint: Arc<dyn Checkpoint>,
    /// The `fail` request's action, if enabled.
    pub fail: Option<FailHook>,
}

/// Binds 127.0.0.1:`port` with `SO_REUSEADDR` and listens (see [`bind_on`]).
pub fn bind(port: u16) -> io::Result<TcpListener> {
    bind_on(Ipv4Addr::LOCALHOST, port)
}

/// Binds `ip`:`port` with `SO_REUSEADDR` and listens.
///
/// Built with rustix rather than `TcpListener::bind` so that the option is set explicitly, not
/// inherited from what the standard library happens to do on this platform.
pub fn bind_on(ip: Ipv4Addr, port: u16) -> io::Result<TcpListener> {
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &SocketAddrV4::new(ip, port))?;
    rustix::net::listen(&fd, 1024)?;
    Ok(TcpListener::from(fd))
}

/// A bound, listening socket whose connections are not accepted yet.
///
/// Becoming active listens first and reads the checkpoint second: clients that connect in
/// between wait in the kernel's backlog and are served the moment the value is known, instead
/// of being refused and having to come back.
pub struct Listening {
    listener: TcpListener,
}

impl Listening {
    /// Binds 127.0.0.1:`port`, retrying for up to [`BIND_PATIENCE`] while it is in use.
    pub fn bind(port: u16) -> io::Result<Listening> {
        Self::bind_on(Ipv4Addr::LOCALHOST, port)
    }

    /// Binds `ip`:`port`, retrying for up to [`BIND_PATIENCE`] while it is in use.
    pub fn bind_on(ip: Ipv4Addr, port: u16) -> io::Result<Listening> {
        let deadline = Instant::now() + BIND_PATIENCE;
        loop {
            match bind_on(ip, port) {
                Ok(listener) => return Ok(Listening { listener }),
                Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Serves connections for `service` from the caller's own poll loop (see [`Endpoint`]):
    /// no thread is started.
    pub fn endpoint(self, service: Service) -> io::Result<Endpoint> {
        self.endpoint_with(service, STUCK_PATIENCE)
    }

    fn endpoint_with(self, service: Service, patience: Duration) -> io::Result<Endpoint> {
        let listener = self.listener;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        Ok(Endpoint {
            port,
            listener,
            conns: Vec::new(),
            service,
            patience,
            accept_paused_until: None,
            accept_error: None,
        })
    }
}

/// A listener and its connections, served by whoever polls them: the counter component's own
/// event loop, so that the whole component is one thread (see [`crate::component`]); in
/// tests, a thread of its own. Dropping it closes the listener first (freeing the port as
/// early as possible), then every connection.
pub struct Endpoint {
    port: u16,
    listener: TcpListener,
    conns: Vec<Conn>,
    service: Service,
    patience: Duration,
    /// Set after an unexpected accept error: the listener is not polled until then.
    accept_paused_until: Option<Instant>,
    /// The last accept error, so that a persistent one is logged once, not every backoff.
    accept_error: Option<Errno>,
}

impl Endpoint {
    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Appends the descriptors to poll, with what to poll them for: the listener, then each
    /// connection. [`serve_ready`](Self::serve_ready) takes what poll reported for them, in
    /// the same order, and nothing may change the endpoint in between.
    pub fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) {
        let listen = match self.accept_paused_until {
            None => PollFlags::IN,
            Some(_) => PollFlags::empty(),
        };
        fds.push(PollFd::new(&self.listener, listen));
        fds.extend(
            self.conns
                .iter()
                .map(|c| PollFd::new(&c.stream, c.interest())),
        );
    }

    /// How many descriptors [`poll_fds`](Self::poll_fds) adds.
    pub fn fd_count(&self) -> usize {
        1 + self.conns.len()
    }

    /// The longest the caller's poll may wait, `None` for no limit: zero while requests wait
    /// that a turn left unanswered, else the end of an accept backoff or of a stuck client's
    /// patience.
    pub fn poll_timeout(&self) -> Option<Timespec> {
        self.next_deadline().and_then(|deadline| {
            Timespec::try_from(deadline.saturating_duration_since(Instant::now())).ok()
        })
    }

    /// Serves what poll reported for the descriptors of [`poll_fds`](Self::poll_fds), given
    /// in the same order (fewer are taken as nothing to report): answers requests, writes
    /// replies, accepts connections, hangs up the finished and the stuck.
    pub fn serve_ready(&mut self, ready: &[PollFlags]) {
        let now = Instant::now();
        let listen_ready =
            self.accept_paused_until.is_none() && ready.first().is_some_and(|r| !r.is_empty());
        let (service, patience) = (&self.service, self.patience);
        let mut conn_ready = ready.iter().skip(1);
        self.conns.retain_mut(|conn| {
            let revents = conn_ready.next().copied().unwrap_or(PollFlags::empty());
            conn.turn(revents, service, now, patience)
        });
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
        }
        if listen_ready {
            self.accept_all(now);
        }
    }

    /// When poll must return even if nothing happens: now if requests wait unanswered, the end
    /// of an accept backoff or of a stuck client's patience.
    fn next_deadline(&self) -> Option<Instant> {
        if self.conns.iter().any(Conn::has_unanswered) {
            return Some(Instant::now());
        }
        let stuck = self.conns.iter().filter_map(|c| c.waiting_since);
        stuck
            .map(|since| since + self.patience)
            .chain(self.accept_paused_until)
            .min()
    }

    /// Accepts every connection waiting, so that a burst of reconnecting clients (a failover)
    /// costs one wakeup.
    fn accept_all(&mut self, now: Instant) {
        loop {
            let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
            match rustix::net::accept_with(&self.listener, flags) {
                Ok(fd) => {
                    // Replies are single small writes: without this, each would wait for the
                    // acknowledgement of the one before (Nagle).
                    let _ = rustix::net::sockopt::set_tcp_nodelay(&fd, true);
                    self.conns.push(Conn::new(TcpStream::from(fd)));
                    self.accept_error = None;
                }
                Err(Errno::AGAIN) => return,
                Err(e) if gone_before_accept(e) => {}
                Err(e) => {
                    // Out of descriptors, say: keep serving the others, and come back to the
                    // listener after a pause.
                    if self.accept_error != Some(e) {
                        crate::log_line(&format!("counter: accept failed: {e}"));
                    }
                    self.accept_error = Some(e);
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }
}

/// Errors `accept` reports about one connection that is gone (the client gave up before it
/// was accepted, or its network failed), which Linux passes on from the new socket: the
/// listener is fine and the next connection is accepted at once (accept(2): "treat them like
/// EAGAIN by retrying"). Pausing for them, as for running out of descriptors, made every
/// client wait [`ACCEPT_BACKOFF`] whenever one gave up.
fn gone_before_accept(e: Errno) -> bool {
    matches!(
        e,
        Errno::INTR
            | Errno::CONNABORTED
            | Errno::PROTO
            | Errno::NOPROTOOPT
            | Errno::NETDOWN
            | Errno::HOSTDOWN
            | Errno::NONET
            | Errno::HOSTUNREACH
            | Errno::OPNOTSUPP
            | Errno::NETUNREACH
            | Errno::PERM
    )
}

/// One client connection: the bytes received but not yet answered, and the replies not yet
/// taken by the client.
struct Conn {
    stream: TcpStream,
    /// Received, not yet answered: at most one partial line (up to `MAX_LINE` bytes) plus one
    /// read's worth, since nothing is read while complete lines wait here.
    input: Vec<u8>,
    /// Answered, not yet written: up to `MAX_PENDING_REPLIES` plus one reply.
    output: Vec<u8>,
    /// Since when `output` has waited for the client to read, without any of it being taken.
    waiting_since: Option<Instant>,
    /// The client sent its last request (end of stream) or an endless line: hang up once the
    /// replies are written.
    finished: bool,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            waiting_since: None,
            finished: false,
        }
    }

    /// While replies are pending, only the client reading them can move this connection on;
    /// its requests wait in the kernel, which stops the client sending once they fill it.
    fn interest(&self) -> PollFlags {
        if self.output.is_empty() {
            PollFlags::IN
        } else {
            PollFlags::OUT
        }
    }

    /// Serves what poll reported for this connection; false when it is to be closed.
    fn turn(
        &mut self,
        revents: PollFlags,
        service: &Service,
        now: Instant,
        patience: Duration,
    ) -> bool {
        if (!revents.is_empty() || self.has_unanswered()) && !self.pump(service, now) {
            return false;
        }
        self.waiting_since
            .is_none_or(|since| now.saturating_duration_since(since) < patience)
    }

    /// Writes pending replies, answers the complete requests received (in order), and reads
    /// once more when they are all answered; false when the connection is to be closed (the
    /// client is gone or done).
    fn pump(&mut self, service: &Service, now: Instant) -> bool {
        let mut has_read = false;
        let mut budget = ANSWERS_PER_TURN;
        loop {
            match self.flush(now) {
                Err(_) => return false,
                Ok(false) => return true,
                Ok(true) => {}
            }
            if budget == 0 {
                return true; // the rest in the next turn (see `has_unanswered`)
            }
            if self.answer_lines(service, &mut budget) {
                continue;
            }
            if self.finished {
                return false;
            }
            if has_read {
                return true;
            }
            has_read = true;
            if self.read().is_err() {
                return false;
            }
        }
    }

    /// Writes as much of the pending replies as the socket takes; true once none are left.
    fn flush(&mut self, now: Instant) -> io::Result<bool> {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.output.drain(..n);
                    self.waiting_since = None;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.waiting_since.get_or_insert(now);
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        self.waiting_since = None;
        Ok(true)
    }

    /// Reads what the client sent, up to [`READ_CHUNK`] bytes. At the end of the stream, a last
    /// request without its newline is still answered before the connection closes, as it was
    /// when each connection had a thread reading lines.
    fn read(&mut self) -> io::Result<()> {
        let mut chunk = [0; READ_CHUNK];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                if self.input.last().is_some_and(|&b| b != b'\n') {
                    self.input.push(b'\n');
                }
                self.finished = true;
                Ok(())
            }
            Ok(n) => {
                self.input.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether a complete request waits with room for its reply: one a turn's budget left.
    fn has_unanswered(&self) -> bool {
        self.output.is_empty() && self.input.contains(&b'\n')
    }

    /// Answers the complete request lines received, in order, until the pending replies reach
    /// their bound or `budget` runs out; refuses a line longer than [`MAX_LINE`] (finished:
    /// nothing after it can be told apart). True if it added any reply.
    fn answer_lines(&mut self, service: &Service, budget: &mut usize) -> bool {
        let mut used = 0;
        let mut too_long = false;
        while self.output.len() < MAX_PENDING_REPLIES && *budget > 0 {
            let rest = &self.input[used..];
            let Some(len) = rest.iter().position(|&b| b == b'\n') else {
                too_long = rest.len() > MAX_LINE;
                break;
            };
            if len > MAX_LINE {
                too_long = true;
                break;
            }
            let reply = answer(&String::from_utf8_lossy(&rest[..=len]), service);
            self.output.extend_from_slice(reply.as_bytes());
            used += len + 1;
            *budget -= 1;
        }
        if too_long {
            let reply = protocol::error_reply("request line too long");
            self.output.extend_from_slice(reply.as_bytes());
            self.input.clear();
            self.finished = true;
        } else {
            self.input.drain(..used);
        }
        used > 0 || too_long
    }
}

/// The reply line to one request line.
pub fn answer(line: &str, service: &Service) -> String {
    let cp = &*service.checkpoint;
    match protocol::parse(line) {
        Ok(Request::Inc) => match service.counter.increment(cp) {
            Ok(v) => protocol::value_reply(v),
            Err(e) => protocol::error_reply(&e.to_string()),
        },
        Ok(Request::Get) => match service.counter.get() {
            Ok(v) => protocol::value_reply(v),
            Err(e) => protocol::error_reply(&e.to_string()),
        },
        Ok(Request::Fail) => match &service.fail {
            None => protocol::error_reply("the fail request is disabled for this CSI"),
            Some(_) if !service.counter.is_serving() => protocol::error_reply("not active"),
            Some(hook) => match hook() {
                Ok(()) => "failing\n".to_owned(),
                Err(e) => protocol::error_reply(&format!("cannot report the error: {e}")),
            },
        },
        Err(e) => protocol::error_reply(&e),
    }
}

/// A thread serving an [`Endpoint`], for tests whose blocking clients need the server to run
/// beside them (here and in [`crate::probe`]). The counter itself serves its endpoints from its
/// own event loop.
#[cfg(test)]
pub(crate) mod serving_thread {
    use super::*;
    use rustix::event::EventfdFlags;
    use std::os::fd::OwnedFd;
    use std::thread::JoinHandle;

    /// A running listener and its connections, served by one thread (see the module doc for why
    /// one).
    pub struct Server {
        port: u16,
        /// An eventfd that the serving thread polls along with the sockets, written by `stop`: it
        /// wakes the thread at once, whatever the sockets are doing, without a timeout to wait out.
        stop_signal: Arc<OwnedFd>,
        thread: Option<JoinHandle<()>>,
    }

    impl Listening {
        /// Starts serving connections (those already waiting first) for `service`, on the one
        /// thread that will serve all of them.
        pub fn serve(self, service: Service) -> io::Result<Server> {
            self.serve_with(service, STUCK_PATIENCE)
        }

        /// [`serve`](Self::serve) with another patience for clients that read no replies, so that
        /// tests need not wait out the real one.
        pub(crate) fn serve_with(self, service: Service, patience: Duration) -> io::Result<Server> {
            let endpoint = self.endpoint_with(service, patience)?;
            let port = endpoint.port;
            let stop_signal = Arc::new(rustix::event::eventfd(
                0,
                EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
            )?);
            let stop = Arc::clone(&stop_signal);
            let thread = thread::Builder::new()
                .name(format!("counter-serve-{port}"))
                .spawn(move || run(endpoint, &stop))?;
            Ok(Server {
                port,
                stop_signal,
                thread: Some(thread),
            })
        }
    }

    impl Server {
        /// Binds the port (retrying for up to [`BIND_PATIENCE`] while it is in use) and starts
        /// serving connections for `service`.
        pub fn start(port: u16, service: Service) -> io::Result<Server> {
            Listening::bind(port)?.serve(service)
        }

        /// The port actually bound (differs from the requested one only when that was 0).
        pub fn port(&self) -> u16 {
            self.port
        }

        /// Stops accepting, closes the listener and hangs up every connection. When this returns
        /// the port is free for another process to bind, which is what lets the next active take
        /// over at once.
        pub fn stop(mut self) {
            self.shutdown();
        }

        fn shutdown(&mut self) {
            if let Some(thread) = self.thread.take() {
                // Adding 1 to a fresh eventfd cannot fail (only an overflowing count would).
                let _ = rustix::io::write(&*self.stop_signal, &1u64.to_ne_bytes());
                // The thread closes the listener and the connections before it ends.
                let _ = thread.join();
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.shutdown();
        }
    }

    /// The serving thread of a [`Server`]: polls the stop signal and the endpoint until stopped.
    fn run(mut endpoint: Endpoint, stop_signal: &OwnedFd) {
        // What poll reported for each descriptor: the stop signal, then the endpoint's.
        let mut ready = Vec::new();
        loop {
            let timeout = endpoint.poll_timeout();
            let mut fds = vec![PollFd::new(stop_signal, PollFlags::IN)];
            endpoint.poll_fds(&mut fds);
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => {
                    // The kernel short of memory, say: wait a little rather than spin, and try
                    // again.
                    crate::log_line(&format!("counter: poll failed: {e}"));
                    thread::sleep(ACCEPT_BACKOFF);
                    continue;
                }
            }
            ready.clear();
            ready.extend(fds.iter().map(PollFd::revents));
            drop(fds);
            if ready.first().is_some_and(|r| !r.is_empty()) {
                return;
            }
            endpoint.serve_ready(&ready[1..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::serving_thread::Server;
    use super::*;
    use crate::counter::tests::MemCheckpoint;
    use std::io::{BufRead, BufReader};
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn service(fail: Option<FailHook>) -> (Service, Arc<MemCheckpoint>) {
        let ck = Arc::new(MemCheckpoint::default());
        let counter = Arc::new(Counter::new());
        counter.activate(&*ck).expect("activate");
        (
            Service {
                counter,
                checkpoint: ck.clone(),
                fail,
            },
            ck,
        )
    }

    fn call(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, req: &str) -> String {
        stream.write_all(req.as_bytes()).expect("write");
        let mut line = String::new();
        reader.read_line(&mut line).expect("read");
        line
    }

    fn connect(port: u16) -> (TcpStream, BufReader<TcpStream>) {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let r = BufReader::new(s.try_clone().expect("clone"));
        (s, r)
    }

    /// Polls `endpoint` on this thread until `done` says so (bounded, to catch hangs).
    fn drive(endpoint: &mut Endpoint, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "the endpoint never got there");
            let mut fds = Vec::new();
            endpoint.poll_fds(&mut fds);
            assert_eq!(fds.len(), endpoint.fd_count());
            let ten_ms = Timespec::try_from(Duration::from_millis(10)).expect("timespec");
            rustix::event::poll(&mut fds, Some(&ten_ms)).expect("poll");
            let ready: Vec<PollFlags> = fds.iter().map(PollFd::revents).collect();
            drop(fds);
            endpoint.serve_ready(&ready);
        }
    }

    #[test]
    fn a_long_pipeline_is_answered_a_turn_at_a_time_and_the_loop_comes_back_at_once() {
        let (svc, ck) = service(None);
        let mut endpoint = Listening::bind(0)
            .expect("bind")
            .endpoint(svc)
            .expect("endpoint");
        let mut client = TcpStream::connect(("127.0.0.1", endpoint.port())).expect("connect");
        client.write_all(&b"inc\n".repeat(100)).expect("write");
        // The first turns accept the connection and read its requests.
        drive(&mut endpoint, || {
            ck.load() != Ok(Some(0)) && ck.load().is_ok_and(|v| v.is_some())
        });
        assert_eq!(
            ck.load(),
            Ok(Some(ANSWERS_PER_TURN as u64)),
            "one turn's budget"
        );
        let zero = Timespec::try_from(Duration::ZERO).expect("timespec");
        assert_eq!(
            endpoint.poll_timeout(),
            Some(zero),
            "more waits: no sleeping"
        );
        drive(&mut endpoint, || ck.load() == Ok(Some(100)));
        assert_eq!(endpoint.poll_timeout(), None);
        let mut replies = BufReader::new(client);
        for expected in 1..=100u64 {
            let mut line = String::new();
            replies.read_line(&mut line).expect("reply");
            assert_eq!(line, format!("{expected}\n"));
        }
    }

    #[test]
    fn an_endpoint_is_served_from_the_callers_own_poll_loop_without_a_thread() {
        let (svc, ck) = service(None);
        let mut endpoint = Listening::bind(0)
            .expect("bind")
            .endpoint(svc)
            .expect("endpoint");
        let port = endpoint.port();
        let threads = || std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
        let before = threads();
        let mut a = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut b = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        a.write_all(b"inc\n").expect("write");
        b.write_all(b"inc\ninc\n").expect("write");
        drive(&mut endpoint, || ck.load() == Ok(Some(3)));
        // Answered by this thread alone (other tests' threads may come and go, but none of
        // the endpoint's: it has no way to start one).
        let (mut ra, mut rb) = (BufReader::new(a), BufReader::new(b.try_clone().expect("b")));
        let mut line = String::new();
        ra.read_line(&mut line).expect("a's reply");
        let mut got = vec![line.clone()];
        for _ in 0..2 {
            line.clear();
            rb.read_line(&mut line).expect("b's replies");
            got.push(line.clone());
        }
        got.sort();
        assert_eq!(got, vec!["1\n", "2\n", "3\n"]);
        assert!(threads() <= before + 1, "threads {before} -> {}", threads());
        // Dropping the endpoint hangs up and frees the port at once.
        drop(endpoint);
        line.clear();
        assert_eq!(rb.read_line(&mut line).unwrap_or(0), 0);
        assert!(Server::start(port, service(None).0).is_ok());
    }

    #[test]
    fn a_connection_gone_before_accept_does_not_pause_accepting() {
        for e in [
            Errno::CONNABORTED,
            Errno::PROTO,
            Errno::NETUNREACH,
            Errno::INTR,
        ] {
            assert!(gone_before_accept(e), "{e}");
        }
        for e in [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM] {
            assert!(!gone_before_accept(e), "{e}");
        }
    }

    #[test]
    fn answers_requests_over_tcp_and_frees_the_port_on_stop() {
        let (svc, ck) = service(None);
        let server = Server::start(0, svc.clone()).expect("start");
        let port = server.port();
        let (mut s, mut r) = connect(port);
        assert_eq!(call(&mut s, &mut r, "inc\n"), "1\n");
        assert_eq!(call(&mut s, &mut r, "inc\ninc\n"), "2\n");
        let mut line = String::new();
        r.read_line(&mut line).expect("pipelined reply");
        assert_eq!(line, "3\n");
        assert_eq!(call(&mut s, &mut r, "get\n"), "3\n");
        assert_eq!(
            call(&mut s, &mut r, "fail\n"),
            "ERR the fail request is disabled for this CSI\n"
        );
        assert!(call(&mut s, &mut r, "bogus\n").starts_with("ERR unknown request"));
        assert_eq!(ck.load(), Ok(Some(3)));

        server.stop();
        // The connection was hung up, and nothing listens any more...
        let mut rest = String::new();
        assert_eq!(r.read_line(&mut rest).unwrap_or(0), 0);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        // ...so another server (another process, in production) can take the port at once,
        // even though the old connection may linger in TIME_WAIT.
        let again = Server::start(port, svc).expect("rebind at once");
        let (mut s, mut r) = connect(port);
        assert_eq!(call(&mut s, &mut r, "inc\n"), "4\n");
        again.stop();
    }

    #[test]
    fn a_deactivated_counter_answers_not_active() {
        let (svc, _) = service(None);
        svc.counter.deactivate();
        assert_eq!(answer("inc", &svc), "ERR not active\n");
        assert_eq!(answer("get", &svc), "ERR not active\n");
    }

    #[test]
    fn the_fail_hook_runs_only_when_enabled_and_active() {
        let calls = Arc::new(AtomicUsize::new(0));
        let hook: FailHook = {
            let calls = Arc::clone(&calls);
            Arc::new(move || {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        };
        let (svc, _) = service(Some(hook));
        assert_eq!(answer("fail\n", &svc), "failing\n");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        svc.counter.deactivate();
        assert_eq!(answer("fail\n", &svc), "ERR not active\n");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_endless_line_is_refused_and_the_connection_closed() {
        let (svc, _) = service(None);
        let server = Server::start(0, svc).expect("start");
        let (mut s, mut r) = connect(server.port());
        let reply = call(&mut s, &mut r, &"x".repeat(MAX_LINE * 4));
        assert_eq!(reply, "ERR request line too long\n");
        let mut rest = String::new();
        assert_eq!(r.read_line(&mut rest).unwrap_or(0), 0);
        server.stop();
    }

    /// Names of this process's threads.
    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_owned())
            .collect()
    }

    /// Set in the child process that runs one test alone.
    const ALONE: &str = "NINES_COUNTER_SERVER_TEST_ALONE";

    #[test]
    fn one_thread_serves_many_interleaved_connections() {
        const NAME: &str = "server::tests::one_thread_serves_many_interleaved_connections";
        // Threads are counted per process, and the other tests' servers run in this one: count
        // in a child that runs only this test.
        if std::env::var_os(ALONE).is_none() {
            let exe = std::env::current_exe().expect("test executable");
            let out = Command::new(exe)
                .args([NAME, "--exact", "--test-threads=1", "--nocapture"])
                .env(ALONE, "1")
                .output()
                .expect("run the test alone");
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            assert!(out.status.success(), "{stdout}\n{stderr}");
            assert!(stdout.contains("1 passed"), "did not run:\n{stdout}");
            return;
        }
        let (svc, ck) = service(None);
        let server = Server::start(0, svc).expect("start");
        let before = thread_names();
        let mut clients: Vec<_> = (0..20).map(|_| connect(server.port())).collect();
        let mut seen: Vec<Vec<u64>> = vec![Vec::new(); clients.len()];
        for _round in 0..5 {
            // Every client's requests are in flight at once, two pipelined on each.
            for (s, _) in &mut clients {
                s.write_all(b"inc\ninc\n").expect("write");
            }
            for ((_, r), seen) in clients.iter_mut().zip(&mut seen) {
                for _ in 0..2 {
                    let mut line = String::new();
                    r.read_line(&mut line).expect("read");
                    seen.push(protocol::parse_reply(&line).expect("a value"));
                }
            }
        }
        for values in &seen {
            assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
        }
        let mut all: Vec<u64> = seen.concat();
        all.sort_unstable();
        assert_eq!(all, (1..=200).collect::<Vec<u64>>());
        assert_eq!(ck.load(), Ok(Some(200)));

        let after = thread_names();
        let servers: Vec<_> = after.iter().filter(|n| n.starts_with("counter")).collect();
        assert_eq!(servers.len(), 1, "{after:?}");
        // The kernel keeps 15 bytes of a thread's name.
        assert!(servers[0].starts_with("counter-serve-"), "{after:?}");
        assert_eq!(before.len(), after.len(), "{before:?} -> {after:?}");
        server.stop();
    }

    #[test]
    fn a_request_split_across_writes_is_answered_once_complete() {
        let (svc, _) = service(None);
        let server = Server::start(0, svc).expect("start");
        let (mut s, mut r) = connect(server.port());
        s.write_all(b"in").expect("write");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut line = String::new();
        let early = r.read_line(&mut line);
        assert!(
            early
                .as_ref()
                .is_err_and(|e| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "answered half a request: {early:?} {line:?}"
        );
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        thread::sleep(Duration::from_millis(10));
        s.write_all(b"c\nge").expect("write");
        line.clear();
        r.read_line(&mut line).expect("read");
        assert_eq!(line, "1\n");
        s.write_all(b"t\n").expect("write");
        line.clear();
        r.read_line(&mut line).expect("read");
        assert_eq!(line, "1\n");
        // The last request may end with the stream instead of a newline.
        s.write_all(b"get").expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        line.clear();
        r.read_line(&mut line).expect("read");
        assert_eq!(line, "1\n");
        line.clear();
        assert_eq!(r.read_line(&mut line).expect("end of stream"), 0);
        server.stop();
    }

    /// Connects with small socket buffers and pipelines `get` requests without reading a reply
    /// until the server takes no more (writes keep blocking); fails if it never stops, as it
    /// would if it read on and buffered the replies without bound (then it would also hang the
    /// client up for taking none of them, at which the writes fail).
    fn flood(port: u16) -> TcpStream {
        let fd = rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socket");
        rustix::net::sockopt::set_socket_recv_buffer_size(&fd, 4096).expect("SO_RCVBUF");
        rustix::net::sockopt::set_socket_send_buffer_size(&fd, 4096).expect("SO_SNDBUF");
        rustix::net::connect(&fd, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).expect("connect");
        let mut stream = TcpStream::from(fd);
        stream.set_nonblocking(true).expect("nonblocking");
        let requests = "get\n".repeat(1024);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut blocked_since = None;
        loop {
            match stream.write(requests.as_bytes()) {
                Ok(_) => blocked_since = None,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let since = *blocked_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_millis(300) {
                        return stream;
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("flooding the server: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "the server kept taking requests from a client that reads no reply"
            );
        }
    }

    /// Whether the server hung `stream` up, waiting up to `wait` for it.
    fn hung_up(stream: &TcpStream, wait: Duration) -> bool {
        let mut fds = [PollFd::new(stream, PollFlags::RDHUP)];
        let timeout = Timespec::try_from(wait).expect("timeout");
        rustix::event::poll(&mut fds, Some(&timeout)).expect("poll");
        fds[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR)
    }

    #[test]
    fn a_client_that_never_reads_does_not_hold_up_the_others() {
        let (svc, _) = service(None);
        let server = Server::start(0, svc).expect("start");
        let stuck = flood(server.port());
        let (mut s, mut r) = connect(server.port());
        // Generous: only a hang is a failure.
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(call(&mut s, &mut r, "inc\n"), "1\n");
        // Served while the other was still connected, not after it was given up on.
        assert!(!hung_up(&stuck, Duration::ZERO));
        server.stop();
    }

    #[test]
    fn a_client_stuck_with_a_full_buffer_is_hung_up() {
        let (svc, _) = service(None);
        let server = Listening::bind(0)
            .expect("bind")
            // Longer than `flood` takes to see the server stop reading.
            .serve_with(svc, Duration::from_secs(2))
            .expect("serve");
        let stuck = flood(server.port());
        assert!(hung_up(&stuck, Duration::from_secs(10)));
        let (mut s, mut r) = connect(server.port());
        assert_eq!(call(&mut s, &mut r, "get\n"), "0\n");
        server.stop();
    }

    #[test]
    fn stop_hangs_up_connected_clients_and_frees_the_port() {
        let (svc, _) = service(None);
        let server = Server::start(0, svc).expect("start");
        let port = server.port();
        let mut clients: Vec<_> = (0..3).map(|_| connect(port)).collect();
        for (s, r) in &mut clients {
            assert_eq!(call(s, r, "get\n"), "0\n");
        }
        let (mut partial, partial_r) = connect(port);
        partial.write_all(b"in").expect("write");
        clients.push((partial, partial_r));

        server.stop();
        for (s, _) in &mut clients {
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = [0; 16];
            match s.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => panic!("unexpected bytes after stop: {:?}", &buf[..n]),
                Err(e) => assert!(
                    !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                    "still connected after stop"
                ),
            }
        }
        drop(bind(port).expect("the port is free once stop returns"));
    }

    #[test]
    fn a_taken_port_is_reported_after_the_patience_runs_out() {
        let holder = bind(0).expect("bind");
        let port = holder.local_addr().expect("addr").port();
        let (svc, _) = service(None);
        let started = Instant::now();
        let err = Server::start(port, svc).err().expect("port is taken");
        assert_eq!(err.kind(), ErrorKind::AddrInUse);
        assert!(started.elapsed() >= BIND_PATIENCE);
    }
}
