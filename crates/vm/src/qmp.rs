//! A small client of QMP, QEMU's JSON control protocol, on the Unix socket `-qmp` names.
//!
//! QMP is one JSON object per line in each direction: a greeting, then commands answered by
//! `return` or `error`, and asynchronous `event`s interleaved with the answers. A reader task
//! splits the two: answers go to the pending command (matched by `id`, so the late answer of
//! a command that timed out is never taken for the next one's), events to a channel the
//! caller watches ([`QmpEvent`]), ending with exactly one [`QmpEventKind::Closed`] when QEMU
//! goes away. Hand-written on serde_json (VM-RECIPE.md §8): the typed `qapi` crates are far
//! larger than the six commands a supervisor needs.

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

    #[tokio::test]
    async fn connect_gives_up_in_time() {
        let path = std::env::temp_dir().join(format!("nines-vm-absent-{}.qmp", std::process::id()));
        let t = Instant::now();
        let r = Qmp::connect(&path, Duration::from_millis(100)).await;
        assert!(matches!(r, Err(Error::Timeout { .. })));
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
