//! A small client of QMP, QEMU's JSON control protocol, on the Unix socket `-qmp` names.
//!
//! QMP is one JSON object per line in each direction: a greeting, then commands answered by
//! `return` or `error`, and asynchronous `event`s interleaved with the answers. A reader task
//! splits the two: answers go to the pending command (matched by `id`, so the late answer of
//! a command that timed out is never taken for the next one's), events to a channel the
//! caller watches ([`QmpEvent`]), ending with exactly one [`QmpEventKind::Closed`] when QEMU
//! goes away. Hand-written on serde_json (VM-RECIPE.md §8): the typed `qapi` crates are far
//! larger than the six commands a supervisor needs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Error;

/// Longest line accepted from QEMU; anything longer is a protocol error, not an allocation.
const MAX_LINE: u64 = 1 << 20;
/// How often `connect` retries while the socket does not exist yet or refuses.
const CONNECT_RETRY: Duration = Duration::from_millis(10);

/// Something QEMU reported on its own (an event), or the end of the connection.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// What happened.
    pub kind: QmpEventKind,
    /// When the reader saw it: what a supervisor stamps its inputs with.
    pub at: Instant,
}

/// The events a supervisor acts on, and the rest by name.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpEventKind {
    /// QEMU is shutting down: `guest` is true when the guest asked (poweroff, panic with
    /// `-action panic=exit-failure`), false for a host request (`quit`, a signal). `reason` is
    /// QMP's, e.g. `guest-shutdown`, `guest-panic`, `host-qmp-quit`, `host-signal`.
    Shutdown {
        /// Whether the guest initiated it.
        guest: bool,
        /// QMP's reason string.
        reason: String,
    },
    /// The guest kernel panicked (pvpanic); `action` is what QEMU does about it (`poweroff`,
    /// `pause`, ...). With the crate's command line QEMU then exits with status 1.
    GuestPanicked {
        /// QEMU's action.
        action: String,
    },
    /// The VM's CPUs stopped (`stop`, a pause on panic or error): the guest is hung as far as
    /// its service is concerned.
    Stop,
    /// The VM's CPUs run again (`cont`).
    Resume,
    /// The ACPI power button was pressed (`system_powerdown`); the guest may or may not react.
    Powerdown,
    /// Any other event, by its QMP name, with its `data`.
    Other {
        /// The QMP event name, e.g. `NIC_RX_FILTER_CHANGED`.
        name: String,
        /// The event's data (`null` when it has none).
        data: Value,
    },
    /// The connection ended; always the last event. When QEMU dies, this arrives within a few
    /// milliseconds of its death (the kernel closes its socket), as fast as a pidfd.
    Closed(CloseReason),
}

/// Why the QMP connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// QEMU closed it (it exited, or is exiting).
    Eof,
    /// Reading failed (e.g. ECONNRESET when QEMU was killed).
    Io(String),
    /// QEMU sent something that is not QMP; the connection is given up.
    Malformed(String),
}

/// The answer of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// QEMU's run state: `running`, `paused`, `shutdown`, `guest-panicked`, `prelaunch`, ...
    pub status: String,
    /// Whether the CPUs run.
    pub running: bool,
}

/// Where a live migration stands, as `query-migrate` says (QEMU's `MigrationStatus`, folded
/// into what a supervisor decides on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationStatus {
    /// No migration was started (QEMU answers `{}` or `none`).
    None,
    /// Setting up: on the source, connecting; on a destination, listening and not connected yet.
    Setup,
    /// RAM is being copied, or the switchover is under way (`active`, `pre-switchover`,
    /// `device`, `wait-unplug`): keep waiting.
    Active,
    /// Done: on the source the guest now runs on the destination (the source is paused and
    /// can be quit); on the destination the guest runs here.
    Completed,
    /// It failed; the source guest keeps (or resumes) running. `MigrationInfo::error` says why.
    Failed,
    /// `migrate_cancel` ended it; the source guest keeps running.
    Cancelled,
    /// Any other state by QEMU's name (`cancelling`, the postcopy and COLO states), so a new
    /// QEMU's state is shown rather than misread.
    Other(String),
}

impl MigrationStatus {
    fn from_qemu(s: &str) -> MigrationStatus {
        match s {
            "none" => MigrationStatus::None,
            "setup" => MigrationStatus::Setup,
            "active" | "pre-switchover" | "device" | "wait-unplug" => MigrationStatus::Active,
            "completed" => MigrationStatus::Completed,
            "failed" => MigrationStatus::Failed,
            "cancelled" => MigrationStatus::Cancelled,
            other => MigrationStatus::Other(other.to_string()),
        }
    }
}

/// The answer of `query-migrate`: the state, and for a finished migration what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationInfo {
    /// The state.
    pub status: MigrationStatus,
    /// How long the guest was paused for the switchover (QEMU's `downtime`, source side, once
    /// completed): the outage a client sees, plus the network's own catch-up.
    pub downtime_ms: Option<u64>,
    /// From `migrate` to completion (QEMU's `total-time`, source side; the time so far while
    /// active).
    pub total_time_ms: Option<u64>,
    /// QEMU's error text (`error-desc`) when it failed.
    pub error: Option<String>,
}

impl MigrationInfo {
    /// Parses a `query-migrate` return value. Missing or odd fields degrade to `None`; only a
    /// non-object is a protocol error.
    fn from_qemu(v: &Value) -> Result<MigrationInfo, Error> {
        if !v.is_object() {
            return Err(Error::Protocol(format!("query-migrate answered {v}")));
        }
        let status = match v.get("status").and_then(Value::as_str) {
            Some(s) => MigrationStatus::from_qemu(s),
            None => MigrationStatus::None,
        };
        Ok(MigrationInfo {
            status,
            downtime_ms: v.get("downtime").and_then(Value::as_u64),
            total_time_ms: v.get("total-time").and_then(Value::as_u64),
            error: v
                .get("error-desc")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }
}

/// The TCP ports a destination listens on, from `query-migrate`'s `socket-address` (QEMU 7.2
/// sends the port as a string, the QAPI `InetSocketAddress` type; a number is accepted too).
fn listening_ports(v: &Value) -> Vec<u16> {
    let Some(addrs) = v.get("socket-address").and_then(Value::as_array) else {
        return Vec::new();
    };
    addrs
        .iter()
        .filter(|a| a.get("type").and_then(Value::as_str).unwrap_or("inet") == "inet")
        .filter_map(|a| match a.get("port") {
            Some(Value::String(s)) => s.parse().ok(),
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            _ => None,
        })
        .collect()
}

/// How the source side of a live migration is tuned ([`Qmp::migrate_with`]); set with
/// `migrate-set-parameters` right before `migrate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrateParams {
    /// The longest switchover pause QEMU aims for: it keeps copying dirty RAM until the rest
    /// fits in this time at the measured bandwidth (`downtime-limit`).
    pub downtime_limit_ms: u64,
    /// The copy's bandwidth cap in bytes per second (`max-bandwidth`). QEMU's default is
    /// 128 MiB/s, which made a 128 MiB guest take ~460 ms over loopback; 1 GiB/s took ~220 ms.
    /// Lower it where the migration shares a slow link with the service.
    pub max_bandwidth: u64,
}

impl Default for MigrateParams {
    /// 50 ms downtime limit and 1 GiB/s: measured on the service VM over loopback (TCG,
    /// 128 MiB), downtime 5-25 ms and total time ~220 ms.
    fn default() -> Self {
        MigrateParams {
            downtime_limit_ms: 50,
            max_bandwidth: 1 << 30,
        }
    }
}

/// A QEMU id (netdev, device): letters, digits, `-`, `_`, `.`; what may go into an HMP line.
fn is_qemu_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A message from QEMU, parsed.
#[derive(Debug, Clone, PartialEq)]
enum Message {
    Greeting(Value),
    Return {
        id: Option<u64>,
        value: Value,
    },
    Error {
        id: Option<u64>,
        class: String,
        desc: String,
    },
    Event(QmpEventKind),
}

/// One line from QEMU to a message. Anything that is not a JSON object of a known QMP shape
/// is an error (never a panic).
fn parse_line(line: &[u8]) -> Result<Message, String> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| format!("bad JSON ({e}): {}", preview(line)))?;
    let Value::Object(obj) = value else {
        return Err(format!("not a JSON object: {}", preview(line)));
    };
    let id = obj.get("id").and_then(Value::as_u64);
    if let Some(greeting) = obj.get("QMP") {
        return Ok(Message::Greeting(greeting.clone()));
    }
    if let Some(value) = obj.get("return") {
        return Ok(Message::Return {
            id,
            value: value.clone(),
        });
    }
    if let Some(err) = obj.get("error") {
        let text = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        return Ok(Message::Error {
            id,
            class: text("class"),
            desc: text("desc"),
        });
    }
    if let Some(name) = obj.get("event").and_then(Value::as_str) {
        return Ok(Message::Event(event_kind(name, &obj)));
    }
    Err(format!("unknown QMP message: {}", preview(line)))
}

fn event_kind(name: &str, obj: &Map<String, Value>) -> QmpEventKind {
    let data = obj.get("data").cloned().unwrap_or(Value::Null);
    let text = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
    match name {
        "SHUTDOWN" => QmpEventKind::Shutdown {
            guest: data.get("guest").and_then(Value::as_bool).unwrap_or(false),
            reason: text("reason").unwrap_or_default(),
        },
        "GUEST_PANICKED" => QmpEventKind::GuestPanicked {
            action: text("action").unwrap_or_default(),
        },
        "STOP" => QmpEventKind::Stop,
        "RESUME" => QmpEventKind::Resume,
        "POWERDOWN" => QmpEventKind::Powerdown,
        _ => QmpEventKind::Other {
            name: name.to_string(),
            data,
        },
    }
}

fn preview(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    let s = s.trim_end();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// A QMP connection after the handshake (greeting + `qmp_capabilities`), ready for commands.
///
/// QEMU serves one QMP client per socket at a time, so the agent should hold exactly one per
/// VM. Commands take `&mut self` and run one at a time. Dropping it stops the reader: the event
/// channel then closes without a `Closed` event.
pub struct Qmp {
    path: PathBuf,
    writer: OwnedWriteHalf,
    replies: mpsc::UnboundedReceiver<Message>,
    reader: JoinHandle<()>,
    next_id: u64,
    greeting: Value,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Qmp {
    /// Connects to the QMP socket at `path`, retrying while it does not exist yet or refuses
    /// (QEMU creates it a few tens of milliseconds after it starts), and completes the
    /// handshake; all within `timeout`. Returns the connection and its event stream. Must be
    /// called inside a tokio runtime (it spawns the reader task).
    pub async fn connect(
        path: &Path,
        timeout: Duration,
    ) -> Result<(Qmp, mpsc::UnboundedReceiver<QmpEvent>), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    if tokio::time::Instant::now() + CONNECT_RETRY > deadline {
                        return Err(Error::Timeout {
                            what: format!("QMP socket {} ({e})", path.display()),
                            after: timeout,
                        });
                    }
                    tokio::time::sleep(CONNECT_RETRY).await;
                }
                Err(e) => return Err(Error::io(format!("connect to {}", path.display()), e)),
            }
        };
        let (read, writer) = stream.into_split();
        let (reply_tx, mut replies) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(BufReader::new(read), reply_tx, event_tx));
        let greeting = match tokio::time::timeout_at(deadline, replies.recv()).await {
            Ok(Some(Message::Greeting(g))) => g,
            Ok(Some(other)) => {
                reader.abort();
                return Err(Error::Protocol(format!(
                    "expected the QMP greeting, got {other:?}"
                )));
            }
            Ok(None) => {
                reader.abort();
                return Err(Error::Closed(path.to_path_buf()));
            }
            Err(_) => {
                reader.abort();
                return Err(Error::Timeout {
                    what: format!("QMP greeting on {}", path.display()),
                    after: timeout,
                });
            }
        };
        let mut qmp = Qmp {
            path: path.to_path_buf(),
            writer,
            replies,
            reader,
            next_id: 1,
            greeting,
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        qmp.execute("qmp_capabilities", None, left.max(Duration::from_millis(1)))
            .await?;
        Ok((qmp, events))
    }

    /// QEMU's greeting (`{"version": ..., "capabilities": [...]}`), e.g. to log its version.
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Runs one QMP command and returns its `return` value, or [`Error::Command`] when QEMU
    /// answers with an error, all within `timeout`. The building block of the helpers below.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let timed_out = || Error::Timeout {
            what: format!("QMP {command} on {}", self.path.display()),
            after: timeout,
        };
        match tokio::time::timeout_at(deadline, self.writer.write_all(line.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if is_gone(&e) => return Err(Error::Closed(self.path.clone())),
            Ok(Err(e)) => {
                return Err(Error::io(
                    format!("send {command} to {}", self.path.display()),
                    e,
                ))
            }
            Err(_) => return Err(timed_out()),
        }
        loop {
            match tokio::time::timeout_at(deadline, self.replies.recv()).await {
                Err(_) => return Err(timed_out()),
                Ok(None) => return Err(Error::Closed(self.path.clone())),
                Ok(Some(Message::Return {
                    id: Some(got),
                    value,
                })) if got == id => return Ok(value),
                Ok(Some(Message::Error {
                    id: Some(got),
                    class,
                    desc,
                })) if got == id => {
                    return Err(Error::Command {
                        command: command.to_string(),
                        class,
                        desc,
                    });
                }
                // The late answer of an earlier command that timed out.
                Ok(Some(
                    Message::Return { id: Some(got), .. } | Message::Error { id: Some(got), .. },
                )) if got < id => {}
                Ok(Some(other)) => {
                    return Err(Error::Protocol(format!(
                        "unexpected answer to {command} (id {id}): {other:?}"
                    )));
                }
            }
        }
    }

    /// `query-status`: whether the VM runs, is paused, panicked, ...
    pub async fn query_status(&mut self, timeout: Duration) -> Result<Status, Error> {
        let v = self.execute("query-status", None, timeout).await?;
        let status = v.get("status").and_then(Value::as_str);
        let running = v.get("running").and_then(Value::as_bool);
        match (status, running) {
            (Some(status), Some(running)) => Ok(Status {
                status: status.to_string(),
                running,
            }),
            _ => Err(Error::Protocol(format!("query-status answered {v}"))),
        }
    }

    /// `system_powerdown`: presses the ACPI power button; a cooperating guest powers off, and
    /// QEMU then exits (`SHUTDOWN` with `guest: true`). Returns when QEMU took the request.
    pub async fn system_powerdown(&mut self, timeout: Duration) -> Result<(), Error> {
        self.execute("system_powerdown", None, timeout)
            .await
            .map(drop)
    }

    /// `quit`: QEMU exits at once, the guest gets no say. QEMU may close the socket before its
    /// answer is read; that counts as success too.
    pub async fn quit(&mut self, timeout: Duration) -> Result<(), Error> {
        match self.execute("quit", None, timeout).await {
            Ok(_) | Err(Error::Closed(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `stop`: freezes the guest's CPUs (a hung guest, for tests; or before a migration).
    pub async fn stop(&mut self, timeout: Duration) -> Result<(), Error> {
        self.execute("stop", None, timeout).await.map(drop)
    }

    /// `cont`: lets a stopped guest run again.
    pub async fn cont(&mut self, timeout: Duration) -> Result<(), Error> {
        self.execute("cont", None, timeout).await.map(drop)
    }

    /// Destination side of a live migration: `migrate-incoming` on `tcp:IP:PORT` (QEMU must
    /// have been started with `-incoming defer`, i.e. [`crate::VmSpec::incoming`]), then
    /// `query-migrate` for the port QEMU really listens on, which is returned: pass port 0 to
    /// let the kernel pick a free one without a bind-and-release race. Both commands share
    /// `timeout`.
    pub async fn migrate_incoming(
        &mut self,
        listen: SocketAddr,
        timeout: Duration,
    ) -> Result<u16, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        // `SocketAddr`'s Display brackets an IPv6 address, as QEMU's URI wants.
        let uri = format!("tcp:{listen}");
        self.execute("migrate-incoming", Some(json!({ "uri": uri })), timeout)
            .await?;
        let v = self.execute("query-migrate", None, left(deadline)).await?;
        match listening_ports(&v).first() {
            Some(&port) => Ok(port),
            // An older QEMU without `socket-address`: a fixed port is still known.
            None if listen.port() != 0 => Ok(listen.port()),
            None => Err(Error::Migration {
                what: format!("incoming on {uri}"),
                message: format!("QEMU did not report the port it listens on: {v}"),
            }),
        }
    }

    /// Source side: [`Qmp::migrate_with`] with [`MigrateParams::default`].
    pub async fn migrate(&mut self, uri: &str, timeout: Duration) -> Result<(), Error> {
        self.migrate_with(uri, &MigrateParams::default(), timeout)
            .await
    }

    /// Source side of a live migration: `migrate-set-parameters` with `params`, then `migrate`
    /// to `uri` (e.g. `tcp:10.0.0.2:4444`, what the destination's
    /// [`Qmp::migrate_incoming`] listens on). Returns when QEMU started it (both commands
    /// within `timeout`); the migration itself runs on, watch it with
    /// [`Qmp::wait_migrated`]. A destination that cannot be reached usually shows there as
    /// `Failed`, not here.
    pub async fn migrate_with(
        &mut self,
        uri: &str,
        params: &MigrateParams,
        timeout: Duration,
    ) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let args = json!({
            "downtime-limit": params.downtime_limit_ms,
            "max-bandwidth": params.max_bandwidth,
        });
        self.execute("migrate-set-parameters", Some(args), timeout)
            .await?;
        self.execute("migrate", Some(json!({ "uri": uri })), left(deadline))
            .await
            .map(drop)
    }

    /// `query-migrate`: where a migration stands (either side).
    pub async fn query_migrate(&mut self, timeout: Duration) -> Result<MigrationInfo, Error> {
        let v = self.execute("query-migrate", None, timeout).await?;
        MigrationInfo::from_qemu(&v)
    }

    /// Polls `query-migrate` every `poll` until the migration completed (the info, with its
    /// downtime and total time on the source), failed or was cancelled ([`Error::Migration`]
    /// with QEMU's error text), or `timeout` ran out ([`Error::Timeout`], the migration still
    /// running: cancel it with [`Qmp::migrate_cancel`] if it should not go on). For the source;
    /// on a destination it returns once the incoming state is loaded.
    pub async fn wait_migrated(
        &mut self,
        poll: Duration,
        timeout: Duration,
    ) -> Result<MigrationInfo, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = None;
        loop {
            let info = match self.query_migrate(left(deadline)).await {
                Ok(info) => info,
                Err(Error::Timeout { .. }) => break,
                Err(e) => return Err(e),
            };
            match info.status {
                MigrationStatus::Completed => return Ok(info),
                MigrationStatus::Failed | MigrationStatus::Cancelled => {
                    let what = if info.status == MigrationStatus::Failed {
                        "failed"
                    } else {
                        "cancelled"
                    };
                    return Err(Error::Migration {
                        what: what.into(),
                        message: info
                            .error
                            .unwrap_or_else(|| "QEMU gave no reason".to_string()),
                    });
                }
                _ => {}
            }
            last = Some(info.status);
            if tokio::time::Instant::now() + poll >= deadline {
                break;
            }
            tokio::time::sleep(poll).await;
        }
        Err(Error::Timeout {
            what: format!(
                "live migration on {} (last state {last:?})",
                self.path.display()
            ),
            after: timeout,
        })
    }

    /// `migrate_cancel`: stops a running migration (source side); the guest keeps running on
    /// the source, and the status becomes `Cancelled`. A no-op when none runs.
    pub async fn migrate_cancel(&mut self, timeout: Duration) -> Result<(), Error> {
        self.execute("migrate_cancel", None, timeout)
            .await
            .map(drop)
    }

    /// Adds a user-network port forward to a running VM, `127.0.0.1:host_port` on the host to
    /// `guest_port` in the guest (the same rule the command line writes), through HMP's
    /// `hostfwd_add` (QMP has no command for it): what a migration destination needs once the
    /// source released its ports. `netdev` is the netdev's id, [`crate::NETDEV_ID`] for the
    /// crate's VMs. HMP answers errors as text (e.g. the port is taken), so any non-empty
    /// answer is [`Error::Hmp`].
    pub async fn hostfwd_add(
        &mut self,
        netdev: &str,
        host_port: u16,
        guest_port: u16,
        timeout: Duration,
    ) -> Result<(), Error> {
        let command = format!(
            "hostfwd_add {netdev} {}",
            crate::qemu::hostfwd_rule(host_port, guest_port)
        );
        if !is_qemu_id(netdev) || host_port == 0 || guest_port == 0 {
            return Err(Error::Hmp {
                command,
                message: "not sent: the netdev id must be a QEMU id and both ports non-zero".into(),
            });
        }
        let v = self
            .execute(
                "human-monitor-command",
                Some(json!({ "command-line": command })),
                timeout,
            )
            .await?;
        match v.as_str() {
            Some(text) if text.trim().is_empty() => Ok(()),
            Some(text) => Err(Error::Hmp {
                command,
                message: text.trim().to_string(),
            }),
            None => Err(Error::Protocol(format!(
                "human-monitor-command answered {v}"
            ))),
        }
    }
}

/// What is left of a deadline, at least 1 ms (so a command still gets sent and times out
/// cleanly rather than with a zero timeout).
fn left(deadline: tokio::time::Instant) -> Duration {
    deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_millis(1))
}

fn is_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::NotConnected
    )
}

async fn read_loop<R: tokio::io::AsyncRead + Unpin>(
    mut reader: BufReader<R>,
    replies: mpsc::UnboundedSender<Message>,
    events: mpsc::UnboundedSender<QmpEvent>,
) {
    let mut line = Vec::new();
    let reason = loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut line)
            .await;
        let at = Instant::now();
        match read {
            Ok(0) => break CloseReason::Eof,
            Ok(_) if line.last() != Some(&b'\n') => {
                if line.len() as u64 > MAX_LINE {
                    break CloseReason::Malformed(format!("line longer than {MAX_LINE} bytes"));
                }
                break CloseReason::Malformed(format!(
                    "connection ended inside a line: {}",
                    preview(&line)
                ));
            }
            Ok(_) => {}
            Err(e) => break CloseReason::Io(e.to_string()),
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(&line) {
            Ok(Message::Event(kind)) => {
                let _ = events.send(QmpEvent { kind, at });
            }
            Ok(msg) => {
                let _ = replies.send(msg);
            }
            Err(e) => break CloseReason::Malformed(e),
        }
    };
    // Pending and later commands fail with `Closed` once the sender is gone.
    drop(replies);
    let _ = events.send(QmpEvent {
        kind: QmpEventKind::Closed(reason),
        at: Instant::now(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_messages_qemu_sends() {
        let g = br#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}"#;
        assert!(matches!(parse_line(g), Ok(Message::Greeting(_))));
        assert_eq!(
            parse_line(br#"{"return": {}, "id": 7}"#),
            Ok(Message::Return {
                id: Some(7),
                value: json!({})
            })
        );
        assert_eq!(
            parse_line(br#"{"id": 2, "error": {"class": "CommandNotFound", "desc": "The command x has not been found"}}"#),
            Ok(Message::Error { id: Some(2), class: "CommandNotFound".into(), desc: "The command x has not been found".into() })
        );
        let shutdown = br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-panic"}}"#;
        assert_eq!(
            parse_line(shutdown),
            Ok(Message::Event(QmpEventKind::Shutdown {
                guest: true,
                reason: "guest-panic".into()
            }))
        );
        assert_eq!(
            parse_line(br#"{"event": "GUEST_PANICKED", "data": {"action": "pause"}}"#),
            Ok(Message::Event(QmpEventKind::GuestPanicked {
                action: "pause".into()
            }))
        );
        assert_eq!(
            parse_line(br#"{"event": "STOP"}"#),
            Ok(Message::Event(QmpEventKind::Stop))
        );
        assert_eq!(
            parse_line(br#"{"event": "RESUME"}"#),
            Ok(Message::Event(QmpEventKind::Resume))
        );
        assert!(matches!(
            parse_line(br#"{"event": "NIC_RX_FILTER_CHANGED", "data": {"path": "/x"}}"#),
            Ok(Message::Event(QmpEventKind::Other { name, .. })) if name == "NIC_RX_FILTER_CHANGED"
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"{"[..],
            b"[1,2]",
            b"42",
            b"\"QMP\"",
            b"{\"hello\": 1}",
            b"\xff\xfe{}",
            b"{\"event\": 5}",
            b"",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?}");
        }
        // Odd field types degrade to defaults rather than failing.
        assert_eq!(
            parse_line(br#"{"event": "SHUTDOWN", "data": {"guest": "yes", "reason": 3}}"#),
            Ok(Message::Event(QmpEventKind::Shutdown {
                guest: false,
                reason: String::new()
            }))
        );
    }

    /// The reader against a socket pair: malformed input closes the stream with a reason, and
    /// a pending command fails with `Closed` instead of hanging.
    #[tokio::test]
    async fn malformed_input_closes_the_connection() {
        let dir = std::env::temp_dir().join(format!("nines-vm-qmp-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("fake.qmp");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .expect("write");
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await;
            s.write_all(b"{\"return\": {}, \"id\": 1}\n")
                .await
                .expect("write");
            let _ = s.read(&mut buf).await;
            s.write_all(b"{\"event\": \"STOP\"}\nthis is not json\n")
                .await
                .expect("write");
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let (mut qmp, mut events) = Qmp::connect(&path, Duration::from_secs(5))
            .await
            .expect("connect");
        let err = qmp
            .query_status(Duration::from_secs(5))
            .await
            .expect_err("no answer");
        assert!(matches!(err, Error::Closed(_)), "{err}");
        let first = events.recv().await.expect("event");
        assert_eq!(first.kind, QmpEventKind::Stop);
        let last = events.recv().await.expect("event");
        assert!(
            matches!(last.kind, QmpEventKind::Closed(CloseReason::Malformed(_))),
            "{last:?}"
        );
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn query_migrate_replies() {
        let info = |v: Value| MigrationInfo::from_qemu(&v).expect("an object");
        // A VM that never migrated.
        assert_eq!(
            info(json!({})),
            MigrationInfo {
                status: MigrationStatus::None,
                downtime_ms: None,
                total_time_ms: None,
                error: None
            }
        );
        // The source after a completed migration (QEMU 7.2, trimmed).
        let done = info(
            json!({"status": "completed", "setup-time": 1, "downtime": 10,
            "total-time": 476, "ram": {"total": 134295552, "transferred": 64191613}}),
        );
        assert_eq!(done.status, MigrationStatus::Completed);
        assert_eq!(
            (done.downtime_ms, done.total_time_ms),
            (Some(10), Some(476))
        );
        let failed = info(json!({"status": "failed",
            "error-desc": "Failed to connect socket: Connection refused"}));
        assert_eq!(failed.status, MigrationStatus::Failed);
        assert_eq!(
            failed.error.as_deref(),
            Some("Failed to connect socket: Connection refused")
        );
        for (qemu, ours) in [
            ("none", MigrationStatus::None),
            ("setup", MigrationStatus::Setup),
            ("active", MigrationStatus::Active),
            ("pre-switchover", MigrationStatus::Active),
            ("device", MigrationStatus::Active),
            ("cancelled", MigrationStatus::Cancelled),
            ("cancelling", MigrationStatus::Other("cancelling".into())),
            (
                "postcopy-active",
                MigrationStatus::Other("postcopy-active".into()),
            ),
        ] {
            assert_eq!(info(json!({ "status": qemu })).status, ours, "{qemu}");
        }
        // Odd types degrade; a non-object is an error.
        let odd = info(json!({"status": 3, "downtime": "10", "total-time": -1}));
        assert_eq!(
            (odd.status, odd.downtime_ms, odd.total_time_ms),
            (MigrationStatus::None, None, None)
        );
        assert!(MigrationInfo::from_qemu(&json!([1])).is_err());
        // The destination's listening port: a string in QEMU 7.2, a number accepted too.
        let dest = json!({"status": "setup", "socket-address": [
            {"port": "32901", "ipv4": true, "host": "127.0.0.1", "type": "inet"}]});
        assert_eq!(listening_ports(&dest), vec![32901]);
        assert_eq!(
            listening_ports(&json!({"socket-address": [{"port": 4444, "host": "::1"}]})),
            vec![4444]
        );
        assert!(listening_ports(&json!({"socket-address": [
            {"type": "unix", "path": "/x"}, {"port": "99999"}, {"port": "x"}]}))
        .is_empty());
        assert!(listening_ports(&json!({})).is_empty());
    }

    /// A fake QEMU on a Unix socket: greets, then answers each command (by its `id`) with what
    /// `answer` returns for its name and arguments (`None`: no answer). Returns the socket's
    /// path and the commands it received, in order, when the client is gone.
    async fn fake_qemu(
        name: &str,
        answer: impl Fn(&str, &Value, u32) -> Option<Value> + Send + 'static,
    ) -> (PathBuf, JoinHandle<Vec<(String, Value)>>) {
        let dir = std::env::temp_dir().join(format!("nines-vm-qmp-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("fake.qmp");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let (r, mut w) = s.into_split();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .expect("write");
            let mut lines = BufReader::new(r).lines();
            let mut seen = Vec::new();
            let mut n: std::collections::HashMap<String, u32> = Default::default();
            while let Ok(Some(line)) = lines.next_line().await {
                let msg: Value = serde_json::from_str(&line).expect("client sends JSON");
                let cmd = msg["execute"].as_str().unwrap_or_default().to_string();
                let args = msg.get("arguments").cloned().unwrap_or(Value::Null);
                let count = n.entry(cmd.clone()).or_default();
                *count += 1;
                let reply = if cmd == "qmp_capabilities" {
                    Some(json!({"return": {}}))
                } else {
                    answer(&cmd, &args, *count)
                };
                seen.push((cmd, args));
                if let Some(mut reply) = reply {
                    reply["id"] = msg["id"].clone();
                    let mut out = reply.to_string();
                    out.push('\n');
                    if w.write_all(out.as_bytes()).await.is_err() {
                        break;
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            seen
        });
        (path, server)
    }

    #[tokio::test]
    async fn migration_commands_against_a_fake_qemu() {
        let t = Duration::from_secs(5);
        let (path, server) = fake_qemu("mig", |cmd, args, n| match cmd {
            "migrate-incoming" | "migrate-set-parameters" | "migrate" | "migrate_cancel" => {
                Some(json!({"return": {}}))
            }
            "query-migrate" => Some(match n {
                1 => json!({"return": {"status": "setup", "socket-address": [
                    {"port": "40001", "ipv4": true, "host": "127.0.0.1", "type": "inet"}]}}),
                2 => json!({"return": {"status": "setup"}}),
                3 => json!({"return": {"status": "active", "total-time": 5}}),
                4 => json!({"return": {"status": "completed", "downtime": 9, "total-time": 230}}),
                _ => json!({"return": {"status": "failed", "error-desc": "boom"}}),
            }),
            "human-monitor-command" => {
                let line = args["command-line"].as_str().unwrap_or_default();
                Some(if line.contains("18080") {
                    json!({"return": ""})
                } else {
                    json!({"return": "Could not set up host forwarding rule 'x'\r\n"})
                })
            }
            _ => Some(json!({"error": {"class": "CommandNotFound", "desc": cmd}})),
        })
        .await;
        let (mut qmp, _events) = Qmp::connect(&path, t).await.expect("connect");
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        assert_eq!(
            qmp.migrate_incoming(listen, t).await.expect("incoming"),
            40001
        );
        qmp.migrate("tcp:127.0.0.1:40001", t)
            .await
            .expect("migrate");
        let done = qmp
            .wait_migrated(Duration::from_millis(1), t)
            .await
            .expect("completed");
        assert_eq!(
            (done.status, done.downtime_ms, done.total_time_ms),
            (MigrationStatus::Completed, Some(9), Some(230))
        );
        let err = qmp
            .wait_migrated(Duration::from_millis(1), t)
            .await
            .expect_err("failed");
        assert!(
            matches!(&err, Error::Migration { what, message } if what == "failed" && message == "boom"),
            "{err}"
        );
        qmp.migrate_cancel(t).await.expect("cancel");
        qmp.hostfwd_add(crate::NETDEV_ID, 18080, 80, t)
            .await
            .expect("hostfwd_add");
        let err = qmp
            .hostfwd_add(crate::NETDEV_ID, 18081, 80, t)
            .await
            .expect_err("HMP error text");
        assert!(
            matches!(&err, Error::Hmp { message, .. } if message.starts_with("Could not set up")),
            "{err}"
        );
        // Refused before anything is sent: a netdev id that would change the HMP line.
        assert!(matches!(
            qmp.hostfwd_add("n0 x\nquit", 18080, 80, t).await,
            Err(Error::Hmp { .. })
        ));
        drop(qmp);
        let seen = server.await.expect("server");
        let names: Vec<&str> = seen.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "qmp_capabilities",
                "migrate-incoming",
                "query-migrate",
                "migrate-set-parameters",
                "migrate",
                "query-migrate",
                "query-migrate",
                "query-migrate",
                "query-migrate",
                "migrate_cancel",
                "human-monitor-command",
                "human-monitor-command",
            ]
        );
        assert_eq!(seen[1].1, json!({"uri": "tcp:127.0.0.1:0"}));
        assert_eq!(
            seen[3].1,
            json!({"downtime-limit": 50, "max-bandwidth": 1u64 << 30})
        );
        assert_eq!(seen[4].1, json!({"uri": "tcp:127.0.0.1:40001"}));
        assert_eq!(
            seen[10].1,
            json!({"command-line": "hostfwd_add n0 tcp:127.0.0.1:18080-:80"})
        );
    }

    #[tokio::test]
    async fn wait_migrated_gives_up_in_time() {
        let (path, server) = fake_qemu("mig-slow", |cmd, _, _| match cmd {
            "query-migrate" => Some(json!({"return": {"status": "active"}})),
            "migrate-incoming" => Some(json!({"return": {}})),
            _ => None,
        })
        .await;
        let (mut qmp, _events) = Qmp::connect(&path, Duration::from_secs(5))
            .await
            .expect("connect");
        let t = Instant::now();
        let err = qmp
            .wait_migrated(Duration::from_millis(10), Duration::from_millis(200))
            .await
            .expect_err("never completes");
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("Active"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));
        // Where QEMU does not say which port it listens on, port 0 is an error, not a guess;
        // a fixed port is known anyway.
        let t = Duration::from_secs(5);
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let err = qmp.migrate_incoming(any, t).await.expect_err("no port");
        assert!(matches!(err, Error::Migration { .. }), "{err}");
        let fixed: SocketAddr = "[::1]:4444".parse().expect("addr");
        assert_eq!(qmp.migrate_incoming(fixed, t).await.expect("fixed"), 4444);
        // A command the fake never answers times out.
        assert!(matches!(
            qmp.migrate_cancel(Duration::from_millis(50)).await,
            Err(Error::Timeout { .. })
        ));
        drop(qmp);
        let seen = server.await.expect("server");
        assert_eq!(seen.last().map(|(_, a)| a.clone()), Some(Value::Null));
        assert!(seen
            .iter()
            .any(|(_, a)| *a == json!({"uri": "tcp:[::1]:4444"})));
    }

    #[tokio::test]
    async fn connect_gives_up_in_time() {
        let path = std::env::temp_dir().join(format!("nines-vm-absent-{}.qmp", std::process::id()));
        let t = Instant::now();
        let r = Qmp::connect(&path, Duration::from_millis(100)).await;
        assert!(matches!(r, Err(Error::Timeout { .. })));
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
