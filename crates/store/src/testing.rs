//! A real, throwaway etcd for tests (feature `testing`): one member on loopback, random free
//! ports, a temporary data directory, fast raft timings (`--heartbeat-interval=50
//! --election-timeout=500`), killed, reaped and deleted when the [`EtcdServer`] is dropped,
//! which includes a failing test's unwinding.
//!
//! The binary is `$NINES_ETCD` if set, else `/usr/bin/etcd` (Debian's `etcd-server`), else
//! `etcd` on the `PATH`. Every wait is bounded. Only a test process killed outright (SIGKILL)
//! can leave an etcd behind.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long etcd may take to become healthy (a shared, loaded machine is slow).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with fresh ports, in case another process took a port between our probe and etcd's
/// bind.
const ATTEMPTS: u32 = 3;

/// One running etcd member, owned by a test.
pub struct EtcdServer {
    child: Option<Child>,
    dir: PathBuf,
    endpoint: String,
}

impl EtcdServer {
    /// Starts etcd and waits (bounded) until it reports itself healthy, i.e. it elected itself
    /// and serves requests. The error says why, with the end of etcd's log.
    pub fn start() -> io::Result<EtcdServer> {
        let binary = etcd_binary()?;
        let mut last_error = io::Error::other("etcd was not started");
        for _ in 0..ATTEMPTS {
            match start_once(&binary) {
                Ok(server) => return Ok(server),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// [`endpoint`](EtcdServer::endpoint) as the list `EtcdOptions` wants.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint.clone()]
    }

    /// The temporary directory holding the data directory (`data/`) and the log (`etcd.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// etcd's log so far, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// Kills etcd now (SIGKILL) and reaps it, to test what clients do when it is gone. The data
    /// directory stays until drop. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn etcd_binary() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NINES_ETCD") {
        return Ok(PathBuf::from(path));
    }
    let debian = PathBuf::from("/usr/bin/etcd");
    if debian.exists() {
        return Ok(debian);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("etcd"))
                .find(|candidate| candidate.exists())
        })
        .unwrap_or_default();
    on_path.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no etcd binary: install Debian's etcd-server (.ci/run does) or set NINES_ETCD",
        )
    })
}

/// A fresh temporary directory, unique within this machine.
fn temp_dir() -> io::Result<PathBuf> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "nines-etcd-{}-{}-{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

fn start_once(binary: &Path) -> io::Result<EtcdServer> {
    let dir = temp_dir()?;
    // Probe two free ports; they are released just before etcd binds them (a race that
    // `ATTEMPTS` covers).
    let client_probe = TcpListener::bind("127.0.0.1:0")?;
    let peer_probe = TcpListener::bind("127.0.0.1:0")?;
    let client_port = client_probe.local_addr()?.port();
    let peer_port = peer_probe.local_addr()?.port();
    drop((client_probe, peer_probe));
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let child = spawn_member(
        binary,
        &dir,
        "nines-test",
        &client_url,
        &peer_url,
        &format!("nines-test={peer_url}"),
    );
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(io::Error::new(
                e.kind(),
                format!("starting {}: {e}", binary.display()),
            ));
        }
    };
    // From here on, dropping `server` kills etcd and removes the directory.
    let mut server = EtcdServer {
        child: Some(child),
        dir,
        endpoint: client_url,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], client_port));
    let started = Instant::now();
    loop {
        if let Some(child) = server.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(io::Error::other(format!(
                    "etcd exited ({status}) before it was healthy; its log:\n{}",
                    tail(&server.log())
                )));
            }
        }
        if healthy(addr) {
            return Ok(server);
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "etcd was not healthy within {READY_TIMEOUT:?}; its log:\n{}",
                    tail(&server.log())
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One etcd member: `name` serving clients on `client_url`, peers on `peer_url`, in the
/// cluster `initial_cluster` (`name=peer_url,...`), with the fast raft timings; data and log
/// under `dir` (`data-NAME/`, `NAME.log`; a single member uses `data/` and `etcd.log`).
fn spawn_member(
    binary: &Path,
    dir: &Path,
    name: &str,
    client_url: &str,
    peer_url: &str,
    initial_cluster: &str,
) -> io::Result<Child> {
    let single = name == "nines-test";
    let (data, log) = if single {
        (dir.join("data"), dir.join("etcd.log"))
    } else {
        (
            dir.join(format!("data-{name}")),
            dir.join(format!("{name}.log")),
        )
    };
    let log = std::fs::File::create(log)?;
    Command::new(binary)
        .arg(format!("--name={name}"))
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster={initial_cluster}"))
        .arg("--initial-cluster-state=new")
        .arg("--heartbeat-interval=50")
        .arg("--election-timeout=500")
        .arg("--logger=zap")
        .arg("--log-outputs=stderr")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

/// A throwaway etcd cluster of several members on loopback (feature `testing`), for tests of
/// what a member's loss does (nothing, while a majority lives). Killed, reaped and deleted on
/// drop.
pub struct EtcdCluster {
    members: Vec<Option<Child>>,
    dir: PathBuf,
    endpoints: Vec<String>,
}

impl EtcdCluster {
    /// Starts `n` members and waits (bounded) until every one is healthy.
    pub fn start(n: usize) -> io::Result<EtcdCluster> {
        let binary = etcd_binary()?;
        let dir = temp_dir()?;
        let mut ports = Vec::new();
        {
            let probes: Vec<TcpListener> = (0..2 * n)
                .map(|_| TcpListener::bind("127.0.0.1:0"))
                .collect::<io::Result<_>>()?;
            for p in &probes {
                ports.push(p.local_addr()?.port());
            }
        }
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let initial: Vec<String> = (0..n)
            .map(|i| format!("m{i}={}", url(ports[2 * i + 1])))
            .collect();
        let initial = initial.join(",");
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            dir,
            endpoints: (0..n).map(|i| url(ports[2 * i])).collect(),
        };
        for i in 0..n {
            let child = spawn_member(
                &binary,
                &cluster.dir,
                &format!("m{i}"),
                &url(ports[2 * i]),
                &url(ports[2 * i + 1]),
                &initial,
            )?;
            cluster.members.push(Some(child));
        }
        let started = Instant::now();
        for i in 0..n {
            let addr = SocketAddr::from(([127, 0, 0, 1], ports[2 * i]));
            while !healthy(addr) {
                if started.elapsed() > READY_TIMEOUT {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("etcd member m{i} was not healthy within {READY_TIMEOUT:?}"),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(cluster)
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Kills member `i` (SIGKILL) and reaps it. Idempotent.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members.get_mut(i).and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether etcd's `/health` says it has a leader and serves.
fn healthy(addr: SocketAddr) -> bool {
    let ask = || -> io::Result<String> {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        conn.set_read_timeout(Some(Duration::from_secs(1)))?;
        conn.set_write_timeout(Some(Duration::from_secs(1)))?;
        conn.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        Ok(answer)
    };
    ask().is_ok_and(|answer| answer.contains("\"health\":\"true\""))
}

/// The last lines of a log, enough to see why etcd failed.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
