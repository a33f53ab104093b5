//! Wire messages and framing between the SA-aware client library, node agents and the director.
//!
//! Two peers that never trust each other's bytes talk through this crate: an application
//! process (through `nines-client`) and the node agent that manages it. A buggy or hostile
//! component must not be able to crash or exhaust the agent, so everything that reads bytes
//! here is total: it returns an error for any input and never panics.
//!
//! # Frame format
//!
//! ```text
//! +----------------------+---------+-------------------------+
//! | length: u32 big end. | version | postcard(message)       |
//! +----------------------+---------+-------------------------+
//!                         \______ payload: `length` bytes ____/
//! ```
//!
//! The length counts the payload (version byte + postcard body) and is at most [`MAX_FRAME`].
//! The version byte is in every frame rather than only in the handshake so that a peer built
//! against another protocol revision is rejected on its first frame, whichever side speaks first.
//!
//! # Architecture invariants
//!
//! * No I/O runtime: the [`Decoder`] is fed bytes by its owner, so the same code serves the
//!   agent (tokio) and the client library (blocking threads). [`read_frame`]/[`write_frame`] are
//!   conveniences over `std::io` only.
//! * No dependency on the engine or the model: messages carry entity paths as strings, and
//!   [`HaState`]/[`Recovery`] are this crate's own copies, so the wire format changes only when
//!   this crate does.
//! * Memory per session is bounded: a claimed length above [`MAX_FRAME`] is rejected from its
//!   4-byte header, before any of its payload is buffered.
//! * After a decoding error the session is over: the owner closes the connection. The decoder
//!   does not try to resynchronise, because a length-prefixed stream has no reliable way to.
#![warn(missing_docs)]

use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Version byte at the start of every payload. Bump it on any incompatible message change: old
/// peers then fail fast with [`FrameError::BadVersion`] instead of misreading postcard bytes.
pub const PROTOCOL_VERSION: u8 = 5;

/// Largest payload (version byte + postcard body) a peer may send, in bytes.
///
/// It bounds the memory one session can make its peer hold. It also bounds checkpoints: one
/// [`ToAgent::CheckpointWrite`] section and one whole [`ToComponent::CheckpointData`] reply
/// must each fit in a frame, a little under 1 MiB.
pub const MAX_FRAME: usize = 1 << 20;

/// Environment variable through which the agent tells a component it spawns where its Unix
/// socket is. Shared here so that the agent and the client library cannot disagree on the name.
pub const ENV_AGENT_SOCKET: &str = "NINES_AGENT_SOCKET";

/// Environment variable through which the agent tells a component it spawns its entity path
/// (`app/sg/su/comp`), which the component sends back in [`ToAgent::Register`] so that the
/// agent can match the connection to the process it started.
pub const ENV_COMPONENT: &str = "NINES_COMPONENT";

/// Most component-invoked healthchecks ([`ToAgent::HealthcheckStart`]) one session may run at
/// once. Each is a timer in the agent, so a component must not be able to start them without
/// bound; a start beyond it is refused. Shared here so that the library can document it and
/// the agent enforce it without disagreeing.
pub const MAX_COMPONENT_HEALTHCHECKS: usize = 16;

/// Longest `period`, and longest `max_duration`, a [`ToAgent::HealthcheckStart`] may ask for
/// (one day). A check that slow would detect nothing useful, and the bound keeps every deadline
/// far from overflowing a clock; a start beyond it is refused.
pub const MAX_HEALTHCHECK_PERIOD: Duration = Duration::from_secs(24 * 60 * 60);

/// HA state of a component for one CSI, as the AMF assigns it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HaState {
    /// Serve the CSI.
    Active,
    /// Be ready to take over: keep state in sync (usually via checkpoints), serve nothing.
    Standby,
    /// Stop taking new work, finish in-flight work, then report quiescing complete.
    Quiescing,
    /// Serve nothing; the work is about to move elsewhere (switchover).
    Quiesced,
}

/// Recovery a component recommends when it reports its own error; the engine may escalate it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Recovery {
    /// Let the configured default recovery of the component decide.
    NoRecommendation,
    /// Restart this component in place.
    ComponentRestart,
    /// Move this component's work to its standby.
    ComponentFailover,
    /// Gracefully move all work off this node.
    NodeSwitchover,
    /// Move all work off this node, which is considered failed.
    NodeFailover,
    /// Reboot this node at once, then fail its work over.
    NodeFailfast,
    /// Restart the whole application.
    ApplicationRestart,
    /// Reset the whole cluster.
    ClusterReset,
}

/// A CSI a component holds, as it says when it registers again (see [`ToAgent::Register`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldCsi {
    /// Entity path of the SI (`app/si`).
    pub si: String,
    /// Entity path of the CSI (`app/si/csi`).
    pub csi: String,
    /// The HA state the component last accepted for it.
    pub ha: HaState,
}

/// Messages from the client library (inside a component's process) to the node agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ToAgent {
    /// First message on a connection. The agent answers [`ToComponent::Registered`] and sends
    /// nothing else before it.
    Register {
        /// Entity path of the component, from [`ENV_COMPONENT`].
        component: String,
        /// Process id, so the agent can check the connection comes from the process it spawned.
        pid: u32,
        /// [`PROTOCOL_VERSION`] of the library, for the agent's log when it refuses.
        version: u8,
        /// The CSIs the component holds: empty when it starts, its assignments when it
        /// registers again with an agent that restarted. A restarted agent adopts the
        /// component with this work instead of restarting it, so it is the component's own
        /// account, not the old agent's record, that decides who is active.
        held: Vec<HeldCsi>,
    },
    /// Outcome of a [`ToComponent::CsiSet`], [`ToComponent::CsiRemove`] or
    /// [`ToComponent::Terminate`] with the same invocation. `ok: false` is a failure the engine
    /// recovers from, as is no response within the callback timeout.
    Response {
        /// Invocation of the request being answered.
        invocation: u64,
        /// Whether the component did what was asked.
        ok: bool,
    },
    /// The [`ToComponent::CsiSet`] to [`HaState::Quiescing`] with this invocation is done: the
    /// component has finished its in-flight work. Sent after the `Response` to that invocation.
    QuiescingComplete {
        /// Invocation of the quiescing `CsiSet`.
        invocation: u64,
    },
    /// The component is healthy; answers the [`ToComponent::Healthcheck`] with this invocation.
    /// An unhealthy component sends nothing and the agent sees the healthcheck time out.
    HealthcheckConfirm {
        /// Invocation of the healthcheck being confirmed.
        invocation: u64,
    },
    /// The component found itself faulty and recommends a recovery.
    ErrorReport {
        /// What the component thinks should happen.
        recommended: Recovery,
    },
    /// Start pushing [`ToComponent::ProtectionGroup`] for this SI: the current members at once,
    /// then again on every change.
    TrackProtectionGroup {
        /// Entity path of the SI (`app/si`).
        si: String,
    },
    /// Create or overwrite one section of a checkpoint.
    ///
    /// With `sync: true` the agent answers a [`ToComponent::CheckpointAck`] of the same
    /// `request` once the write is stored where the standby can read it (on one host the shared
    /// store; across nodes, once the standby's agent has it too), or `ok: false` if refused.
    ///
    /// With `sync: false` the agent answers nothing when it stores the write (replication
    /// continues in the background), so a stream of asynchronous writes costs no frames back;
    /// it answers [`ToComponent::CheckpointWriteRefused`] only if it refuses it. The agent
    /// handles a session's messages in the order sent, so a later request of the same session
    /// (a read, a [`ToAgent::CheckpointFlush`]) is answered only after every earlier write was
    /// stored or refused, and any refusal arrives before that answer.
    CheckpointWrite {
        /// Caller-chosen id, echoed in the answer.
        request: u64,
        /// Checkpoint name (one per SI by convention); opened on first use.
        checkpoint: String,
        /// Section id inside the checkpoint.
        section: String,
        /// New content of the section.
        data: Vec<u8>,
        /// Whether the writer waits for an ack, sent once the standby can read the write.
        sync: bool,
    },
    /// Read every section of a checkpoint. The agent answers [`ToComponent::CheckpointData`] (no
    /// sections for a checkpoint never written), or a `CheckpointAck` with `ok: false` when it
    /// cannot.
    CheckpointRead {
        /// Caller-chosen id, echoed in the answer.
        request: u64,
        /// Checkpoint name.
        checkpoint: String,
    },
    /// Barrier for asynchronous writes: the agent answers [`ToComponent::CheckpointAck`] once
    /// every earlier `CheckpointWrite` of this session is stored (across nodes: replicated
    /// too), after the [`ToComponent::CheckpointWriteRefused`] of any it refused.
    CheckpointFlush {
        /// Caller-chosen id, echoed in the answer.
        request: u64,
    },
    /// Start a component-invoked healthcheck (AMF's `saAmfHealthcheckStart` with
    /// `SA_AMF_HEALTHCHECK_COMPONENT_INVOKED`): from now on the component confirms on its own
    /// with [`ToAgent::HealthcheckSelfConfirm`] at least every `period`; once no confirmation
    /// came for `period + max_duration` (counted from the start, then from the last
    /// confirmation), the agent reports a missed healthcheck. Answered by
    /// [`ToComponent::HealthcheckAck`]: refused for a zero duration or one over
    /// [`MAX_HEALTHCHECK_PERIOD`], an empty key, a key already started on this session, or more
    /// than [`MAX_COMPONENT_HEALTHCHECKS`] at once.
    ///
    /// AMF-invoked healthchecks are not started this way: they are configured in the model and
    /// the agent runs them from registration on ([`ToComponent::Healthcheck`]).
    HealthcheckStart {
        /// Caller-chosen id, echoed in the answer.
        request: u64,
        /// Names this healthcheck among the component's (a component may run several, for
        /// instance one per worker thread).
        key: String,
        /// How often the component promises to confirm.
        period: Duration,
        /// How late a confirmation may be beyond `period` before it counts as missed.
        max_duration: Duration,
    },
    /// Stop the component-invoked healthcheck `key` (the component is about to pause on
    /// purpose). Answered by [`ToComponent::HealthcheckAck`]; refused for a key not started.
    HealthcheckStop {
        /// Caller-chosen id, echoed in the answer.
        request: u64,
        /// The key given to [`ToAgent::HealthcheckStart`].
        key: String,
    },
    /// The component is healthy: confirms the component-invoked healthcheck `key`. Nothing is
    /// answered (a confirmation of a key not started is logged and ignored).
    HealthcheckSelfConfirm {
        /// The key given to [`ToAgent::HealthcheckStart`].
        key: String,
    },
}

/// Messages from the node agent to the client library.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ToComponent {
    /// Answer to [`ToAgent::Register`]; always the agent's first message.
    Registered {
        /// Whether the agent accepted the registration.
        ok: bool,
        /// Why it refused, for the component's log.
        reason: Option<String>,
    },
    /// Take (or change to) HA state `ha` for a CSI. Answered by [`ToAgent::Response`] and, for
    /// [`HaState::Quiescing`], then [`ToAgent::QuiescingComplete`].
    CsiSet {
        /// Matches the answer to the request.
        invocation: u64,
        /// Entity path of the SI (`app/si`).
        si: String,
        /// Entity path of the CSI (`app/si/csi`).
        csi: String,
        /// State to take.
        ha: HaState,
        /// The CSI's configured attributes, in configuration order.
        attrs: Vec<(String, String)>,
        /// For [`HaState::Active`]: every section of the checkpoint named after the SI, as
        /// the agent holds it when it sends this request, so that the new active continues
        /// from it without a round trip to the agent (the client library answers the next
        /// read of that checkpoint with it). `None` for other states, or when the sections
        /// would not fit in this frame; the component then reads them from the agent.
        checkpoint: Option<Vec<(String, Vec<u8>)>>,
    },
    /// Drop a CSI. Answered by [`ToAgent::Response`].
    CsiRemove {
        /// Matches the answer to the request.
        invocation: u64,
        /// Entity path of the SI.
        si: String,
        /// Entity path of the CSI.
        csi: String,
    },
    /// Are you healthy? Answered by [`ToAgent::HealthcheckConfirm`] if so.
    Healthcheck {
        /// Matches the confirmation to the request.
        invocation: u64,
    },
    /// Stop gracefully. Answered by [`ToAgent::Response`]; the process is expected to exit.
    Terminate {
        /// Matches the answer to the request.
        invocation: u64,
    },
    /// Current members of a tracked SI's protection group and their HA states.
    ProtectionGroup {
        /// Entity path of the SI.
        si: String,
        /// Component entity path and HA state of each member.
        members: Vec<(String, HaState)>,
    },
    /// Answer to a synchronous [`ToAgent::CheckpointWrite`] or to a [`ToAgent::CheckpointFlush`],
    /// or a refusal of a [`ToAgent::CheckpointRead`].
    CheckpointAck {
        /// The request being answered.
        request: u64,
        /// Whether the write was stored (and replicated, for a sync write).
        ok: bool,
        /// Why not, for the caller's error.
        reason: Option<String>,
    },
    /// Answer to a [`ToAgent::CheckpointRead`]: every section of the checkpoint.
    CheckpointData {
        /// The request being answered.
        request: u64,
        /// Section id and content of each section.
        sections: Vec<(String, Vec<u8>)>,
    },
    /// The asynchronous [`ToAgent::CheckpointWrite`] `request` was refused: its data is not
    /// stored. The only answer an asynchronous write ever gets; it names the section so that
    /// the writer, which did not wait, can say which write was lost.
    CheckpointWriteRefused {
        /// The refused write.
        request: u64,
        /// Its checkpoint.
        checkpoint: String,
        /// Its section.
        section: String,
        /// Why, for the caller's error.
        reason: String,
    },
    /// Answer to a [`ToAgent::HealthcheckStart`] or [`ToAgent::HealthcheckStop`].
    HealthcheckAck {
        /// The request being answered.
        request: u64,
        /// Whether the healthcheck was started (or stopped).
        ok: bool,
        /// Why not, for the caller's error.
        reason: Option<String>,
    },
}

/// Why a frame could not be read or written. Any of them ends the session.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer claimed (or the caller tried to send) a payload over [`MAX_FRAME`]. Reported from
    /// the header alone, so the payload is never buffered.
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME} bytes")]
    TooLarge {
        /// Claimed payload length.
        len: usize,
    },
    /// The peer speaks another protocol revision.
    #[error("peer speaks protocol version {got}, this side speaks {PROTOCOL_VERSION}")]
    BadVersion {
        /// The version byte received.
        got: u8,
    },
    /// The payload is not a valid message of the expected type (or the frame is empty).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The underlying reader or writer failed, or the stream ended inside a frame.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Bytes of the length prefix.
const HEADER: usize = 4;

/// Serialise `msg` into a complete frame, without checking its size.
fn frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut out = postcard::to_extend(msg, vec![0, 0, 0, 0, PROTOCOL_VERSION])?;
    // Saturate: an over-long payload must still look over-long to the peer, never wrap around
    // to a small length. Callers that must not send such a frame use `try_encode`.
    let len = u32::try_from(out.len() - HEADER).unwrap_or(u32::MAX);
    out[..HEADER].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Encode `msg` as one complete frame (length prefix included), ready to be written as is.
///
/// This is for writers that are not `std::io::Write` (an async socket, a batch of frames); it
/// does not check [`MAX_FRAME`], so a message that may be large (checkpoint data) should go
/// through [`try_encode`] or [`write_frame`] instead: the peer would close the session on it.
///
/// # Panics
///
/// If postcard cannot represent `msg`, which is a programming error (for instance a sequence of
/// unknown length) and never happens for [`ToAgent`] and [`ToComponent`].
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    match frame(msg) {
        Ok(bytes) => bytes,
        Err(e) => panic!("message cannot be encoded with postcard: {e}"),
    }
}

/// Like [`encode`], but refuses a frame the peer would reject as too large, so that the caller
/// can fail that one request instead of losing the session.
pub fn try_encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let bytes = frame(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = bytes.len() - HEADER;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    Ok(bytes)
}

/// Write one frame and flush. Nothing is written if the message is too large, so the stream
/// stays usable after [`FrameError::TooLarge`]; after [`FrameError::Io`] it does not (a partial
/// frame may have gone out).
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let bytes = try_encode(msg)?;
    w.write_all(&bytes)?;
    w.flush()?;
    Ok(())
}

/// Read one frame from a blocking reader.
///
/// Returns `Ok(None)` on a clean end of stream (EOF before the first byte of a frame); an EOF
/// inside a frame is [`FrameError::Io`] with [`ErrorKind::UnexpectedEof`]. Reads exactly one
/// frame's bytes, so the reader can be handed on between calls; wrap a socket in a
/// `BufReader` to avoid two system calls per frame. Memory grows with the bytes actually
/// received, never with the claimed length.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>, FrameError> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(FrameError::Io(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "stream ended inside a frame header",
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = check_header(header)?;
    let mut payload = Vec::new();
    r.take(len as u64).read_to_end(&mut payload)?;
    if payload.len() < len {
        return Err(FrameError::Io(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "stream ended inside a frame",
        )));
    }
    check_version(payload[0])?;
    decode_body(&payload[1..]).map(Some)
}

/// Validate a length prefix: the payload must hold at least the version byte and fit the limit.
fn check_header(header: [u8; HEADER]) -> Result<usize, FrameError> {
    // u32 always fits in usize on the platforms nines runs on (Linux, 32 or 64 bit).
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    if len == 0 {
        return Err(FrameError::Malformed(
            "empty frame (no version byte)".into(),
        ));
    }
    Ok(len)
}

fn check_version(got: u8) -> Result<(), FrameError> {
    if got == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(FrameError::BadVersion { got })
    }
}

/// Decode a postcard body that must be exactly one message: trailing bytes mean the peer and
/// this side disagree on the message layout, which must not pass silently.
fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(FrameError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        ))),
        Err(e) => Err(FrameError::Malformed(e.to_string())),
    }
}

/// A decoding failure kept by the [`Decoder`], so it can be reported again on every later call
/// (`FrameError` itself is not `Clone`, because of its I/O variant).
#[derive(Clone, Debug)]
enum Failure {
    TooLarge(usize),
    BadVersion(u8),
    Malformed(String),
}

impl Failure {
    fn to_error(&self) -> FrameError {
        match self {
            Failure::TooLarge(len) => FrameError::TooLarge { len: *len },
            Failure::BadVersion(got) => FrameError::BadVersion { got: *got },
            Failure::Malformed(m) => FrameError::Malformed(m.clone()),
        }
    }

    fn from_error(e: FrameError) -> Failure {
        match e {
            FrameError::TooLarge { len } => Failure::TooLarge(len),
            FrameError::BadVersion { got } => Failure::BadVersion(got),
            FrameError::Malformed(m) => Failure::Malformed(m),
            FrameError::Io(e) => Failure::Malformed(e.to_string()),
        }
    }
}

/// Incremental frame decoder: the owner pushes bytes as they arrive, in any chunking, and pulls
/// complete messages. It does no I/O itself, so it works the same under tokio, blocking threads
/// or a fuzzer.
///
/// Headers are validated as soon as they arrive (in [`push`](Self::push)): once a frame claims
/// more than [`MAX_FRAME`] bytes, or a wrong version, the bytes from that frame on are dropped
/// and never buffered. Frames that were complete before the bad one are still returned, then
/// [`next`](Self::next) returns the error, and keeps returning it: the owner closes the session.
///
/// ```
/// use nines_proto::{encode, Decoder, ToAgent};
///
/// let frame = encode(&ToAgent::HealthcheckConfirm { invocation: 7 });
/// let mut decoder = Decoder::new();
/// // Bytes arrive in pieces, as from a socket read.
/// for piece in frame.chunks(3) {
///     decoder.push(piece);
///     while let Some(msg) = decoder.next::<ToAgent>()? {
///         assert_eq!(msg, ToAgent::HealthcheckConfirm { invocation: 7 });
///     }
/// }
/// # Ok::<(), nines_proto::FrameError>(())
/// ```
#[derive(Debug, Default)]
pub struct Decoder {
    /// Received bytes; `buf[start..]` is still to be returned.
    buf: Vec<u8>,
    /// Start of the next frame to return.
    start: usize,
    /// End of the validated, complete frames: `buf[start..scan]` holds only whole frames whose
    /// header and version were checked. `buf[scan..]` is the frame still arriving.
    scan: usize,
    /// Set once the stream is known to be bad; from then on input is ignored.
    failure: Option<Failure>,
}

impl Decoder {
    /// An empty decoder for one session.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append bytes received from the peer. Never fails: problems are reported by
    /// [`next`](Self::next), after the messages that preceded them.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failure.is_some() || bytes.is_empty() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        self.validate();
    }

    /// Walk over the headers that are now complete, so that a bad frame is refused before its
    /// payload is buffered.
    fn validate(&mut self) {
        loop {
            let avail = &self.buf[self.scan..];
            let Some(header) = avail.first_chunk::<HEADER>() else {
                return;
            };
            let len = match check_header(*header) {
                Ok(len) => len,
                Err(e) => return self.fail(Failure::from_error(e)),
            };
            let Some(&version) = avail.get(HEADER) else {
                return;
            };
            if let Err(e) = check_version(version) {
                return self.fail(Failure::from_error(e));
            }
            if avail.len() < HEADER + len {
                return;
            }
            self.scan += HEADER + len;
        }
    }

    /// Remember the failure and drop everything from the bad frame on.
    fn fail(&mut self, failure: Failure) {
        self.buf.truncate(self.scan);
        self.buf.shrink_to(self.scan);
        self.failure = Some(failure);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed, or the error that ends
    /// the session. `T` is [`ToAgent`] on the agent's side and [`ToComponent`] on the client's.
    #[allow(clippy::should_implement_trait)] // Not an Iterator: fallible, and generic per call.
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if self.start == self.scan {
            return match &self.failure {
                Some(f) => Err(f.to_error()),
                None => Ok(None),
            };
        }
        let header = [
            self.buf[self.start],
            self.buf[self.start + 1],
            self.buf[self.start + 2],
            self.buf[self.start + 3],
        ];
        // Validated in `validate`, so the length is in bounds and the version is right.
        let len = u32::from_be_bytes(header) as usize;
        let body = &self.buf[self.start + HEADER + 1..self.start + HEADER + len];
        match decode_body(body) {
            Ok(msg) => {
                self.start += HEADER + len;
                self.compact();
                Ok(Some(msg))
            }
            Err(e) => {
                let failure = Failure::from_error(e);
                self.buf = Vec::new();
                self.start = 0;
                self.scan = 0;
                self.failure = Some(failure.clone());
                Err(failure.to_error())
            }
        }
    }

    /// Give back the space of returned frames, cheaply: reset when everything is consumed,
    /// otherwise move the tail down only once the consumed head dominates the buffer.
    fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.scan = 0;
            if self.buf.capacity() > 64 * 1024 {
                self.buf.shrink_to(64 * 1024);
            }
        } else if self.start >= 64 * 1024 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.scan -= self.start;
            self.start = 0;
        }
    }

    /// Bytes held and not yet returned as messages (for the owner's metrics and for tests of
    /// the memory bound).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_claim_is_not_buffered() {
        let mut d = Decoder::new();
        d.push(&u32::MAX.to_be_bytes());
        d.push(&[PROTOCOL_VERSION; 4096]);
        assert!(d.buf.capacity() < 8192, "capacity {}", d.buf.capacity());
        for _ in 0..1000 {
            d.push(&[0u8; 4096]);
        }
        assert_eq!(d.buffered(), 0);
        assert!(d.buf.capacity() < 8192, "capacity {}", d.buf.capacity());
        assert!(matches!(
            d.next::<ToAgent>(),
            Err(FrameError::TooLarge { len }) if len == u32::MAX as usize
        ));
    }

    #[test]
    fn compaction_keeps_frames_intact() {
        let msg = ToAgent::CheckpointWrite {
            request: 7,
            checkpoint: "c".into(),
            section: "s".into(),
            data: vec![0xAB; 10_000],
            sync: true,
        };
        let frame = encode(&msg);
        let mut d = Decoder::new();
        let mut stream = Vec::new();
        for _ in 0..40 {
            stream.extend_from_slice(&frame);
        }
        // Feed in odd chunks and pull between pushes so that compaction happens mid-frame.
        let mut got = 0;
        for chunk in stream.chunks(7_777) {
            d.push(chunk);
            while let Some(m) = d.next::<ToAgent>().expect("valid stream") {
                assert_eq!(m, msg);
                got += 1;
            }
            assert!(d.buf.len() < 200_000);
        }
        assert_eq!(got, 40);
        assert_eq!(d.buffered(), 0);
    }
}
