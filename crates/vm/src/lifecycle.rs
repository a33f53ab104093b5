//! Ending a VM and judging its guest: [`terminate`] (the graceful ladder), [`cleanup`] (the
//! blunt one) and the guest health [`probe`].
//!
//! None of them reaps QEMU: the caller spawned it and reaps it (its pidfd says when it is
//! gone). That is also why the pid-based kills here are safe: until the caller reaps, the pid
//! is held by the process or its zombie and cannot be reused.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Error, Qmp, VmSpec};

/// Most bytes of an HTTP answer the probe reads; the service's answers are a line.
const MAX_HTTP_ANSWER: u64 = 64 * 1024;

/// How long each step of [`terminate`] waits for QEMU to exit before the next, blunter one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminateTimeouts {
    /// After `system_powerdown`: the guest's time to shut down cleanly.
    pub powerdown: Duration,
    /// After `quit`: QEMU's time to exit (milliseconds, normally).
    pub quit: Duration,
    /// After SIGKILL: the kernel's time to tear the process down.
    pub kill: Duration,
}

impl Default for TerminateTimeouts {
    /// 3 s for the guest (the service image powers off in about 0.1 s), 2 s for `quit`, 5 s
    /// after SIGKILL (then something is badly wrong and the caller hears of it).
    fn default() -> Self {
        TerminateTimeouts {
            powerdown: Duration::from_secs(3),
            quit: Duration::from_secs(2),
            kill: Duration::from_secs(5),
        }
    }
}

/// Which step of [`terminate`] ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminated {
    /// The guest shut down after `system_powerdown`.
    PoweredDown,
    /// QEMU exited on `quit`.
    Quit,
    /// It took SIGKILL.
    Killed,
}

/// Ends a running VM: `system_powerdown` and wait, then `quit` and wait, then SIGKILL and wait,
/// each step bounded by `timeouts` (a step's command and its wait share the step's time, so
/// the whole ladder takes at most the sum). `exited` is the caller's way of seeing QEMU's exit
/// (e.g. its pidfd becoming readable); it is polled until it completes, and never after.
/// Without a QMP connection (`None`, or one that fails) the QMP steps are skipped. The caller
/// reaps. Errors only when QEMU survives SIGKILL for `timeouts.kill`, or the kill itself fails.
pub async fn terminate<F>(
    qmp: Option<&mut Qmp>,
    pid: u32,
    exited: &mut F,
    timeouts: &TerminateTimeouts,
) -> Result<Terminated, Error>
where
    F: Future<Output = ()> + Unpin,
{
    terminate_with(qmp, exited, timeouts, || sigkill(pid)).await
}

/// [`terminate`] with the last step's SIGKILL done by `kill`. For a caller whose own watcher
/// reaps QEMU the moment it exits (the node agent): a pid is only safe to signal while it is
/// unreaped, and only that caller knows whether it still is, so it signals through its own
/// guard rather than by pid.
pub async fn terminate_with<F, K>(
    mut qmp: Option<&mut Qmp>,
    exited: &mut F,
    timeouts: &TerminateTimeouts,
    kill: K,
) -> Result<Terminated, Error>
where
    F: Future<Output = ()> + Unpin,
    K: FnOnce() -> Result<(), Error>,
{
    if let Some(q) = &mut qmp {
        if press_power_button(q, exited, timeouts.powerdown).await {
            return Ok(Terminated::PoweredDown);
        }
    }
    if let Some(q) = &mut qmp {
        let deadline = tokio::time::Instant::now() + timeouts.quit;
        if q.quit(timeouts.quit).await.is_ok()
            && tokio::time::timeout_at(deadline, &mut *exited)
                .await
                .is_ok()
        {
            return Ok(Terminated::Quit);
        }
    }
    kill()?;
    match tokio::time::timeout(timeouts.kill, &mut *exited).await {
        Ok(()) => Ok(Terminated::Killed),
        Err(_) => Err(Error::Timeout {
            what: "QEMU to exit after SIGKILL".to_string(),
            after: timeouts.kill,
        }),
    }
}

/// How often the power button is pressed again while the guest has not shut down (by this
/// crate's QMP terminate, and by the agent's libvirt driver through `virDomainShutdown`).
pub const POWER_BUTTON_REPEAT: Duration = Duration::from_secs(1);

/// Presses the ACPI power button and waits up to `within` for QEMU to exit, pressing again
/// every [`POWER_BUTTON_REPEAT`]: a press can be lost (a guest still starting its ACPI
/// daemon, or one that missed the event under load), and a second press costs a guest that
/// is already shutting down nothing. False when a press failed or the guest did not go.
async fn press_power_button<F>(q: &mut Qmp, exited: &mut F, within: Duration) -> bool
where
    F: Future<Output = ()> + Unpin,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        if q.system_powerdown(deadline - now).await.is_err() {
            return false;
        }
        let next = (tokio::time::Instant::now() + POWER_BUTTON_REPEAT).min(deadline);
        if tokio::time::timeout_at(next, &mut *exited).await.is_ok() {
            return true;
        }
    }
}

/// Cleanup, AMF's last resort: SIGKILL QEMU (if `pid` is given; a process already gone is
/// fine) and remove the QMP socket QEMU leaves behind, so a respawn with the same spec starts
/// clean. The serial log is kept: it tells why the guest died. The caller reaps.
pub fn cleanup(pid: Option<u32>, spec: &VmSpec) -> Result<(), Error> {
    if let Some(pid) = pid {
        sigkill(pid)?;
    }
    match std::fs::remove_file(&spec.qmp_socket) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(
            format!("remove {}", spec.qmp_socket.display()),
            e,
        )),
    }
}

/// SIGKILL to `pid`; no such process is not an error (it exited and was reaped meanwhile).
fn sigkill(pid: u32) -> Result<(), Error> {
    let raw = i32::try_from(pid).ok().filter(|&p| p > 1);
    let Some(pid) = raw.and_then(Pid::from_raw) else {
        return Err(Error::InvalidSpec(format!("refusing to signal pid {pid}")));
    };
    match kill_process(pid, Signal::KILL) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(Error::io(
            format!("SIGKILL pid {}", pid.as_raw_nonzero()),
            e.into(),
        )),
    }
}

/// How to ask the guest's service whether it is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect succeeds. Not meaningful through user-mode port forwards, where QEMU
    /// itself accepts the host side (use `Http` there); fine on a tap network.
    Tcp(SocketAddr),
    /// `GET path` answers 200 (and its answer contains `expect`, when set) in time.
    Http {
        /// Where (a host port forward, or the guest's address on a tap network).
        addr: SocketAddr,
        /// The path, e.g. `/cgi-bin/health`.
        path: String,
        /// A string the answer must contain, e.g. the VM's name (so a probe never takes
        /// another VM's answer on a reused port for this one's).
        expect: Option<String>,
    },
}

/// A probe's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The service answered as expected in time.
    Healthy,
    /// It did not; the text says how (refused, timed out, wrong status, ...).
    Unhealthy(String),
}

impl Health {
    /// Whether it is [`Health::Healthy`].
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// Probes once, all within `timeout`. A stopped or hung guest shows as a timeout.
pub async fn probe(p: &Probe, timeout: Duration) -> Health {
    match tokio::time::timeout(timeout, probe_inner(p)).await {
        Ok(Ok(())) => Health::Healthy,
        Ok(Err(why)) => Health::Unhealthy(why),
        Err(_) => Health::Unhealthy(format!("no answer within {timeout:?}")),
    }
}

async fn probe_inner(p: &Probe) -> Result<(), String> {
    match p {
        Probe::Tcp(addr) => TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("connect {addr}: {e}")),
        Probe::Http { addr, path, expect } => {
            let mut s = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("send to {addr}: {e}"))?;
            let mut answer = Vec::new();
            (&mut s)
                .take(MAX_HTTP_ANSWER)
                .read_to_end(&mut answer)
                .await
                .map_err(|e| format!("read from {addr}: {e}"))?;
            let text = String::from_utf8_lossy(&answer);
            let status = text.lines().next().unwrap_or("");
            let code = status.split_whitespace().nth(1);
            if !status.starts_with("HTTP/") || code != Some("200") {
                return Err(if status.is_empty() {
                    format!("GET {path}: connection closed without an answer")
                } else {
                    format!("GET {path}: {status}")
                });
            }
            if let Some(want) = expect {
                let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
                if !body.contains(want.as_str()) {
                    return Err(format!(
                        "GET {path}: answer {:?} lacks {want:?}",
                        body.trim()
                    ));
                }
            }
            Ok(())
        }
    }
}

/// Most probes [`wait_healthy`] keeps in flight at once: only a guard against a period far
/// shorter than the timeout; with any sensible pair a probe starts every period.
const MAX_PROBES_IN_FLIGHT: usize = 64;

/// Starts a probe every `period` (each bounded by `timeout`) until one is healthy, and returns
/// how long that took; gives up after `within` with the last verdict. What an agent waits on
/// after spawning a VM, before it reports it instantiated.
///
/// Probes overlap: one starts every `period` however long the earlier ones take (at most
/// [`MAX_PROBES_IN_FLIGHT`] at once). Through a user-mode port forward, a probe sent before
/// the guest's network is up is accepted by QEMU and then hangs until QEMU's user-mode TCP
/// retransmits its SYN to the guest (measured: 4-6 s), while one sent once the guest serves is
/// answered in milliseconds. Waiting for each in turn would delay every boot by up to a
/// `timeout`; with overlapping probes the answer comes about a `period` after the guest is up.
pub async fn wait_healthy(
    p: &Probe,
    period: Duration,
    timeout: Duration,
    within: Duration,
) -> Result<Duration, Error> {
    let start = tokio::time::Instant::now();
    let deadline = start + within;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut next = start;
    let mut last = String::from("no probe finished");
    loop {
        let may_start = next < deadline && in_flight.len() < MAX_PROBES_IN_FLIGHT;
        tokio::select! {
            () = tokio::time::sleep_until(next), if may_start => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let bound = timeout.min(left).max(Duration::from_millis(1));
                let p = p.clone();
                in_flight.spawn(async move { probe(&p, bound).await });
                next += period;
            }
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => match done {
                Ok(Health::Healthy) => return Ok(start.elapsed()),
                Ok(Health::Unhealthy(why)) => last = why,
                Err(e) => last = format!("probe task: {e}"),
            },
            else => break,
        }
    }
    Err(Error::Timeout {
        what: format!("guest healthy ({p:?}); last probe: {last}"),
        after: within,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server like a port forward of a booting guest: the first connections are accepted and
    /// never answered; later ones are.
    async fn booting_guest(stalled: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            for n in 0.. {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                if n < stalled {
                    held.push(s);
                    continue;
                }
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nhealthy vm1\n").await;
                });
            }
        });
        addr
    }

    fn http(addr: SocketAddr, expect: &str) -> Probe {
        Probe::Http {
            addr,
            path: "/cgi-bin/health".into(),
            expect: Some(expect.into()),
        }
    }

    #[tokio::test]
    async fn a_hanging_early_probe_does_not_delay_the_answer() {
        let addr = booting_guest(2).await;
        let ms = Duration::from_millis;
        let took = wait_healthy(&http(addr, "healthy"), ms(50), ms(5000), ms(10_000))
            .await
            .expect("healthy");
        // The third probe answers, about two periods in, not after a 5 s timeout.
        assert!(took < ms(1000), "{took:?}");
    }

    #[tokio::test]
    async fn it_gives_up_in_time_with_the_last_verdict() {
        let addr = booting_guest(0).await;
        let ms = Duration::from_millis;
        let started = std::time::Instant::now();
        let err = wait_healthy(&http(addr, "nope"), ms(20), ms(100), ms(300))
            .await
            .expect_err("never healthy");
        assert!(started.elapsed() < ms(1000));
        assert!(err.to_string().contains("lacks \"nope\""), "{err}");
    }
}
