//! The TCP side of the counter: a listener on 127.0.0.1 that exists only while the component
//! is active, and one thread per client connection.
//!
//! The listener is closed (not merely ignored) when the component stops being active, and it
//! is bound with `SO_REUSEADDR`, so that the component that becomes active next, in another
//! process, can bind the same port at once. Clients therefore always reach whichever
//! component is active at one fixed address, and a failover is seen by them as a short burst
//! of refused connections.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::counter::{Checkpoint, Counter};
use crate::protocol::{self, Request, MAX_LINE};

/// How long [`Server::start`] keeps trying when the port is still taken. The previous active
/// normally released it before this one is asked to take over (a dead process's sockets are
/// closed before its exit is reported), so this only covers a listener being torn down
/// concurrently; it stays well under the default 1 s CSI callback timeout.
pub const BIND_PATIENCE: Duration = Duration::from_millis(300);

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

/// A running listener and its connections.
pub struct Server {
    port: u16,
    stopping: Arc<AtomicBool>,
    /// A second handle on the listening socket, to shut it down while the accept thread is
    /// blocked in `accept` on the first.
    listener: TcpListener,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Conns>,
}

/// Live connections, so that stopping can hang them up.
#[derive(Default)]
struct Conns {
    next: AtomicU64,
    open: Mutex<HashMap<u64, TcpStream>>,
}

impl Conns {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
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

    /// Starts accepting connections (those already waiting first) for `service`.
    pub fn serve(self, service: Service) -> io::Result<Server> {
        let listener = self.listener;
        let port = listener.local_addr()?.port();
        let handle = listener.try_clone()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Conns::default());
        let accept = {
            let (stopping, conns) = (Arc::clone(&stopping), Arc::clone(&conns));
            thread::Builder::new()
                .name(format!("counter-accept-{port}"))
                .spawn(move || accept_loop(listener, &stopping, &conns, &service))?
        };
        Ok(Server {
            port,
            stopping,
            listener: handle,
            accept: Some(accept),
            conns,
        })
    }
}

impl Server {
    /// Binds the port (retrying for up to [`BIND_PATIENCE`] while it is in use) and starts
    /// accepting connections for `service`.
    pub fn start(port: u16, service: Service) -> io::Result<Server> {
        Listening::bind(port)?.serve(service)
    }

    /// The port actually bound (differs from the requested one only when that was 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops accepting, closes the listener and hangs up every connection. When this returns
    /// the port is free for another process to bind.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // On Linux, shutting down a listening socket wakes a thread blocked in accept (which
        // then fails) and takes the socket out of the listening state at once.
        let _ = rustix::net::shutdown(&self.listener, rustix::net::Shutdown::Both);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for (_, stream) in self.conns.lock().drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.shutdown();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    stopping: &AtomicBool,
    conns: &Arc<Conns>,
    service: &Service,
) {
    loop {
        let accepted = listener.accept();
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: keep serving the
                // others, without spinning.
                eprintln!("counter: accept failed: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = conns.next.fetch_add(1, Ordering::Relaxed);
        match stream.try_clone() {
            Ok(clone) => {
                conns.lock().insert(id, clone);
            }
            Err(e) => {
                eprintln!("counter: cannot track a connection: {e}");
                continue;
            }
        }
        let (conns2, service) = (Arc::clone(conns), service.clone());
        let spawned = thread::Builder::new()
            .name("counter-conn".into())
            .spawn(move || {
                serve(stream, &service);
                conns2.lock().remove(&id);
            });
        if let Err(e) = spawned {
            eprintln!("counter: cannot start a connection thread: {e}");
            conns.lock().remove(&id);
        }
    }
}

/// Answers one connection's requests in order until it closes or misbehaves.
fn serve(stream: TcpStream, service: &Service) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let n = match (&mut reader).take(MAX_LINE as u64 + 1).read_line(&mut line) {
            Ok(n) => n,
            // Reset, shut down by `stop`, or not UTF-8: nothing sensible to answer.
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        if !line.ends_with('\n') && n > MAX_LINE {
            let _ = writer.write_all(protocol::error_reply("request line too long").as_bytes());
            return;
        }
        let reply = answer(&line, service);
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counter::tests::MemCheckpoint;
    use std::sync::atomic::AtomicUsize;

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
