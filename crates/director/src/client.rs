//! A blocking client of the control socket, for the CLI (`nines status`, `adm`, `events`),
//! which has no reason to start an async runtime for one request.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::{Reply, Request};
use crate::status::Status;

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: no runtime runs on this state directory.
    #[error("no nines runtime is running here: cannot connect to {}: {source}", socket.display())]
    NotRunning {
        /// The control socket.
        socket: PathBuf,
        /// What connect said.
        source: io::Error,
    },
    /// The runtime refused the request (an admin refusal, an unknown entity, ...).
    #[error("{0}")]
    Refused(String),
    /// The connection broke or the answer made no sense.
    #[error("control socket {}: {message}", socket.display())]
    Protocol {
        /// The control socket.
        socket: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// How long a reply may take (the engine answers in microseconds; this is for a stuck runtime).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One connection to a runtime's control socket.
pub struct ControlClient {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlClient {
    /// Connects to the control socket at `socket`.
    pub fn connect(socket: &Path) -> Result<ControlClient, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|source| ClientError::NotRunning {
            socket: socket.to_path_buf(),
            source,
        })?;
        // A wedged runtime must not hang `nines status` forever.
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| ClientError::Protocol {
                socket: socket.to_path_buf(),
                message: e.to_string(),
            })?;
        let writer = stream.try_clone().map_err(|e| ClientError::Protocol {
            socket: socket.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(ControlClient {
            socket: socket.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    fn broken(&self, message: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            socket: self.socket.clone(),
            message: message.into(),
        }
    }

    fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_string(req).map_err(|e| self.broken(e.to_string()))?;
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| self.broken(format!("cannot send: {e}")))
    }

    fn reply(&mut self) -> Result<Reply, ClientError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(self.broken("the runtime closed the connection (shutting down?)")),
            Ok(_) => {
                let r: Reply = serde_json::from_str(&line)
                    .map_err(|e| self.broken(format!("bad reply: {e}")))?;
                if r.ok {
                    Ok(r)
                } else {
                    Err(ClientError::Refused(
                        r.error.unwrap_or_else(|| "refused".to_string()),
                    ))
                }
            }
            Err(e) => Err(self.broken(format!("cannot read the reply: {e}"))),
        }
    }

    /// The status document.
    pub fn status(&mut self) -> Result<Status, ClientError> {
        self.send(&Request::Status {})?;
        let r = self.reply()?;
        r.status
            .ok_or_else(|| self.broken("the reply has no status"))
    }

    /// Runs admin operation `op` (its CLI name) on the entity at path `entity`.
    pub fn adm(&mut self, op: &str, entity: &str) -> Result<(), ClientError> {
        self.send(&Request::Adm {
            adm: op.to_string(),
            entity: entity.to_string(),
        })?;
        self.reply().map(|_| ())
    }

    /// Streams event-log lines from line `since` to `line`, until the log ends (or, with
    /// `follow`, until the runtime stops or `line` returns false).
    pub fn events(
        mut self,
        since: u64,
        follow: bool,
        mut line: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        if follow {
            // New lines may be hours apart.
            self.reader
                .get_ref()
                .set_read_timeout(None)
                .map_err(|e| self.broken(e.to_string()))?;
        }
        self.send(&Request::Events { since, follow })?;
        let mut buf = String::new();
        loop {
            buf.clear();
            match self.reader.read_line(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    let text = buf.trim_end_matches('\n');
                    if text.starts_with("{\"ok\":false") {
                        let r: Reply = serde_json::from_str(text)
                            .map_err(|e| self.broken(format!("bad reply: {e}")))?;
                        return Err(ClientError::Refused(r.error.unwrap_or_default()));
                    }
                    if !line(text) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(self.broken(format!("cannot read: {e}"))),
            }
        }
    }
}
