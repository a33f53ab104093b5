//! An established link: two tasks per connection (a reader that also watches the peer's
//! silence, a writer that also sends heartbeats), bounded queues between them and the
//! application, and a lost signal.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::codec::{encode_body, Body, Opener, Sealer};
use crate::error::SendError;
use crate::handshake::Session;

/// Timing and queue sizes of a link. Both ends should use the same heartbeat settings: each
/// side's detection bound is *its own* `heartbeat_interval × miss_count`, and it only holds if
/// the peer sends at least every `heartbeat_interval`.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// A frame (a heartbeat when there is nothing else) is sent whenever the link was idle this
    /// long. Default 50 ms. Values under 1 ms are taken as 1 ms.
    pub heartbeat_interval: Duration,
    /// The peer is lost after `miss_count` intervals without a frame from it. Default 4 (so
    /// 200 ms). 0 is taken as 1.
    pub miss_count: u32,
    /// The whole handshake must finish within this, on either side; a peer that stalls it is
    /// cut off. Default 2 s.
    pub handshake_timeout: Duration,
    /// Messages the application may queue for sending before `send` waits (`try_send` fails
    /// with [`SendError::Full`]). Default 1024.
    pub outbound_capacity: usize,
    /// Received messages held for the application before the link stops reading the socket.
    /// Default 1024. While the link waits for the application it does not count the peer's
    /// silence (it is not listening); see [`Link`].
    pub inbound_capacity: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            heartbeat_interval: Duration::from_millis(50),
            miss_count: 4,
            handshake_timeout: Duration::from_secs(2),
            outbound_capacity: 1024,
            inbound_capacity: 1024,
        }
    }
}

impl LinkConfig {
    /// The interval, at least 1 ms.
    pub fn interval(&self) -> Duration {
        self.heartbeat_interval.max(Duration::from_millis(1))
    }

    /// How long the peer may be silent before it is lost: `interval × miss_count`.
    pub fn silence_limit(&self) -> Duration {
        self.interval() * self.miss_count.max(1)
    }
}

/// Why a link ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// No frame from the peer for `silent_for` (at least `interval × miss_count`): the peer,
    /// its host or the network between is down or hung.
    HeartbeatTimeout {
        /// How long the peer had been silent when the loss was declared.
        silent_for: Duration,
    },
    /// The peer closed the connection (or its process died and the kernel closed it).
    Closed,
    /// The peer sent a frame that is malformed or fails its authentication tag.
    Protocol(String),
    /// Reading or writing the socket failed (reset, unreachable).
    Io(String),
    /// This side closed the link (dropped it, or called `close`).
    LocalClose,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::HeartbeatTimeout { silent_for } => {
                write!(f, "no heartbeat for {silent_for:?}")
            }
            LostReason::Closed => f.write_str("closed by the peer"),
            LostReason::Protocol(why) => write!(f, "protocol error: {why}"),
            LostReason::Io(why) => write!(f, "i/o error: {why}"),
            LostReason::LocalClose => f.write_str("closed by this side"),
        }
    }
}

/// The end of a link: when and why, and when the peer was last heard from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    /// The instant the loss was detected: what the director stamps its `NodeDown` input with.
    pub at: Instant,
    /// The instant the last authentic frame arrived (the handshake's end if none did).
    pub last_heard: Instant,
    /// Why.
    pub reason: LostReason,
}

/// Who is at the other end.
#[derive(Clone, Debug)]
struct Peer {
    name: String,
    addr: SocketAddr,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {:?} at {}", self.name, self.addr)
    }
}

/// State both tasks and every handle share.
struct Shared {
    peer: Peer,
    lost: watch::Sender<Option<Lost>>,
    #[cfg(feature = "testing")]
    paused: watch::Sender<bool>,
}

impl Shared {
    /// Record the end of the link, once (the first reason wins), and log it.
    fn set_lost(&self, reason: LostReason, last_heard: Instant) {
        let at = Instant::now();
        let first = self.lost.send_if_modified(|lost| {
            if lost.is_some() {
                return false;
            }
            *lost = Some(Lost {
                at,
                last_heard,
                reason: reason.clone(),
            });
            true
        });
        if first {
            match reason {
                LostReason::LocalClose => tracing::debug!(peer = %self.peer, "link closed"),
                LostReason::Protocol(_) => {
                    tracing::error!(peer = %self.peer, "link closed: {reason}")
                }
                _ => tracing::warn!(peer = %self.peer, "link lost: {reason}"),
            }
        }
    }

    fn lost(&self) -> Option<Lost> {
        self.lost.borrow().clone()
    }
}

/// Closes the link when the last application handle goes.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.set_lost(LostReason::LocalClose, Instant::now());
    }
}

/// An authenticated, heartbeated connection to one peer, sending `Out` and receiving `In`.
///
/// Made by [`crate::connect`], [`crate::connect_any`] or [`crate::Listener::accept`]. Two tasks
/// serve it: a *writer* that sends the application's messages in order and a heartbeat
/// whenever the link was idle for an interval, and a *reader* that checks and decodes every
/// frame and declares the peer lost after `miss_count` silent intervals. Because the writer is
/// its own task, a slow application reader never delays this side's heartbeats.
///
/// Backpressure: outbound, [`LinkSender::send`] waits while `outbound_capacity` messages are
/// queued (heartbeats skip the queue; they wait at most for the frame being written).
/// Inbound, when `inbound_capacity` messages wait for the application the reader stops reading
/// the socket, so TCP flow control pushes back on the peer; during that wait the silence
/// watchdog is suspended (a side that is not listening cannot judge the peer), and restarts
/// afresh once the application takes a message.
///
/// The link ends on the first of: peer silence, end of stream, a malformed or unauthentic
/// frame, a socket error, or this side dropping every handle (or calling
/// [`close`](Self::close)). Then [`recv`](LinkReceiver::recv) returns the messages that
/// arrived before, then `None`; sends fail with [`SendError::Lost`]; and the lost signal fires.
/// A link is never re-established: make a new one.
pub struct Link<Out, In> {
    sender: LinkSender<Out>,
    receiver: LinkReceiver<In>,
}

/// The sending half of a [`Link`]; clone it to send from several tasks.
pub struct LinkSender<Out> {
    tx: mpsc::Sender<Vec<u8>>,
    closer: Arc<Closer>,
    _out: PhantomData<fn(Out)>,
}

impl<Out> Clone for LinkSender<Out> {
    fn clone(&self) -> Self {
        LinkSender {
            tx: self.tx.clone(),
            closer: self.closer.clone(),
            _out: PhantomData,
        }
    }
}

/// The receiving half of a [`Link`].
pub struct LinkReceiver<In> {
    rx: mpsc::Receiver<In>,
    closer: Arc<Closer>,
}

/// The lost signal of a link, detached from it (clone it into any task).
#[derive(Clone)]
pub struct LostSignal(watch::Receiver<Option<Lost>>);

impl LostSignal {
    /// Wait until the link is lost (at once if it is). The result's `at` is when it was
    /// detected, not when this returns.
    pub async fn wait(&mut self) -> Lost {
        let waited = self
            .0
            .wait_for(Option::is_some)
            .await
            .map(|lost| lost.clone());
        match waited {
            Ok(lost) => lost.unwrap_or_else(local_close),
            // The sender lives in `Shared`, which sets a reason before it can be dropped.
            Err(_) => self.0.borrow().clone().unwrap_or_else(local_close),
        }
    }

    /// The loss, if the link is already lost.
    pub fn get(&self) -> Option<Lost> {
        self.0.borrow().clone()
    }
}

fn local_close() -> Lost {
    let now = Instant::now();
    Lost {
        at: now,
        last_heard: now,
        reason: LostReason::LocalClose,
    }
}

impl<Out: Serialize + Send + 'static, In: DeserializeOwned + Send + 'static> Link<Out, In> {
    /// Start the tasks of an authenticated connection. Needs a tokio runtime.
    pub(crate) fn start(
        stream: TcpStream,
        addr: SocketAddr,
        session: Session,
        config: &LinkConfig,
    ) -> Self {
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let (lost, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            peer: Peer {
                name: session.peer_name,
                addr,
            },
            lost,
            #[cfg(feature = "testing")]
            paused: watch::channel(false).0,
        });
        let (out_tx, out_rx) = mpsc::channel(config.outbound_capacity.max(1));
        let (in_tx, in_rx) = mpsc::channel(config.inbound_capacity.max(1));
        let heartbeat = encode_body(&Body::<()>::Heartbeat).unwrap_or_else(|_| vec![0]);
        tokio::spawn(writer(
            wr,
            Sealer::new(&session.send_key),
            out_rx,
            heartbeat,
            config.interval(),
            shared.clone(),
        ));
        tokio::spawn(reader::<In>(
            rd,
            Opener::new(&session.recv_key),
            in_tx,
            config.silence_limit(),
            shared.clone(),
        ));
        let closer = Arc::new(Closer(shared));
        Link {
            sender: LinkSender {
                tx: out_tx,
                closer: closer.clone(),
                _out: PhantomData,
            },
            receiver: LinkReceiver { rx: in_rx, closer },
        }
    }
}

impl<Out: Serialize, In> Link<Out, In> {
    /// Queue a message, waiting while the outbound queue is full. See [`LinkSender::send`].
    pub async fn send(&self, msg: &Out) -> Result<(), SendError> {
        self.sender.send(msg).await
    }

    /// Queue a message if there is room. See [`LinkSender::try_send`].
    pub fn try_send(&self, msg: &Out) -> Result<(), SendError> {
        self.sender.try_send(msg)
    }
}

impl<Out, In> Link<Out, In> {
    /// The next message from the peer, in the order sent; `None` once the link is lost and
    /// every message that arrived before has been returned.
    pub async fn recv(&mut self) -> Option<In> {
        self.receiver.recv().await
    }

    /// The peer's node name, as proved in the handshake.
    pub fn peer_name(&self) -> &str {
        self.receiver.peer_name()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.receiver.peer_addr()
    }

    /// A handle on the lost signal, for a task that only watches the link. It does not keep
    /// the link open: dropping every `Link` half still closes it.
    pub fn lost_signal(&self) -> LostSignal {
        self.receiver.lost_signal()
    }

    /// The loss, if the link is lost already.
    pub fn lost(&self) -> Option<Lost> {
        self.receiver.closer.0.lost()
    }

    /// Split into halves for a sending task and a receiving task. The link stays up while
    /// either half (or a clone of the sender) exists; heartbeats go on regardless.
    pub fn split(self) -> (LinkSender<Out>, LinkReceiver<In>) {
        (self.sender, self.receiver)
    }

    /// End the link now: queued messages not yet written are dropped, the peer sees the
    /// connection close. (Dropping every handle does the same.)
    pub fn close(self) {
        self.receiver
            .closer
            .0
            .set_lost(LostReason::LocalClose, Instant::now());
    }

    /// Stop sending anything, heartbeats included, without closing the connection: the peer
    /// sees what a hung host looks like. `false` resumes.
    #[cfg(feature = "testing")]
    pub fn pause_sending(&self, paused: bool) {
        self.receiver.closer.0.paused.send_replace(paused);
    }
}

impl<Out: Serialize> LinkSender<Out> {
    /// Queue a message, waiting while `outbound_capacity` messages are queued. The message is
    /// encoded here, so one too large fails with [`SendError::Encode`] and the link stays up.
    pub async fn send(&self, msg: &Out) -> Result<(), SendError> {
        let body = self.encode(msg)?;
        self.tx.send(body).await.map_err(|_| self.lost_error())
    }

    /// Queue a message if there is room, else fail with [`SendError::Full`] at once.
    pub fn try_send(&self, msg: &Out) -> Result<(), SendError> {
        let body = self.encode(msg)?;
        self.tx.try_send(body).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => self.lost_error(),
        })
    }

    fn encode(&self, msg: &Out) -> Result<Vec<u8>, SendError> {
        if let Some(lost) = self.closer.0.lost() {
            return Err(SendError::Lost(lost.reason));
        }
        encode_body(&Body::Msg(msg)).map_err(|e| SendError::Encode(e.to_string()))
    }

    fn lost_error(&self) -> SendError {
        SendError::Lost(
            self.closer
                .0
                .lost()
                .map_or(LostReason::LocalClose, |l| l.reason),
        )
    }
}

impl<Out> LinkSender<Out> {
    /// The peer's node name, as proved in the handshake.
    pub fn peer_name(&self) -> &str {
        &self.closer.0.peer.name
    }

    /// A handle on the lost signal.
    pub fn lost_signal(&self) -> LostSignal {
        LostSignal(self.closer.0.lost.subscribe())
    }
}

impl<In> LinkReceiver<In> {
    /// The next message from the peer; `None` once the link is lost and drained.
    pub async fn recv(&mut self) -> Option<In> {
        self.rx.recv().await
    }

    /// The peer's node name, as proved in the handshake.
    pub fn peer_name(&self) -> &str {
        &self.closer.0.peer.name
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.closer.0.peer.addr
    }

    /// A handle on the lost signal.
    pub fn lost_signal(&self) -> LostSignal {
        LostSignal(self.closer.0.lost.subscribe())
    }
}

/// Resolves once the link is lost (by anyone).
async fn lost(rx: &mut watch::Receiver<Option<Lost>>) {
    let _ = rx.wait_for(Option::is_some).await;
}

async fn writer(
    mut wr: OwnedWriteHalf,
    mut sealer: Sealer,
    mut out_rx: mpsc::Receiver<Vec<u8>>,
    heartbeat: Vec<u8>,
    interval: Duration,
    shared: Arc<Shared>,
) {
    let mut stop = shared.lost.subscribe();
    #[cfg(feature = "testing")]
    let mut paused = shared.paused.subscribe();
    let mut app_open = true;
    let mut last_write = tokio::time::Instant::now();
    loop {
        let body = tokio::select! {
            biased;
            _ = lost(&mut stop) => break,
            _ = tokio::time::sleep_until(last_write + interval) => None,
            msg = out_rx.recv(), if app_open => match msg {
                Some(body) => Some(body),
                // Every sender is gone; the receiving half may still be in use, so keep the
                // heartbeats going.
                None => { app_open = false; continue; }
            },
        };
        #[cfg(feature = "testing")]
        {
            if *paused.borrow() {
                tokio::select! {
                    _ = lost(&mut stop) => break,
                    _ = paused.wait_for(|p| !p) => {}
                }
            }
        }
        let frame = match sealer.seal(body.as_deref().unwrap_or(&heartbeat)) {
            Ok(frame) => frame,
            Err(e) => {
                // Bodies are checked against MAX_MESSAGE when queued, so this is a bug.
                shared.set_lost(LostReason::Protocol(e.to_string()), Instant::now());
                break;
            }
        };
        tokio::select! {
            biased;
            _ = lost(&mut stop) => break,
            r = wr.write_all(&frame) => if let Err(e) = r {
                shared.set_lost(LostReason::Io(e.to_string()), Instant::now());
                break;
            },
        }
        last_write = tokio::time::Instant::now();
    }
    let _ = wr.shutdown().await;
}

async fn reader<In: DeserializeOwned>(
    mut rd: OwnedReadHalf,
    mut opener: Opener,
    in_tx: mpsc::Sender<In>,
    silence_limit: Duration,
    shared: Arc<Shared>,
) {
    let mut stop = shared.lost.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_heard = Instant::now();
    let mut deadline = tokio::time::Instant::now() + silence_limit;
    loop {
        let n = tokio::select! {
            biased;
            _ = lost(&mut stop) => return,
            r = rd.read(&mut buf) => match r {
                Ok(0) => return shared.set_lost(LostReason::Closed, last_heard),
                Ok(n) => n,
                Err(e) => return shared.set_lost(LostReason::Io(e.to_string()), last_heard),
            },
            _ = tokio::time::sleep_until(deadline) => {
                let silent_for = last_heard.elapsed();
                return shared.set_lost(LostReason::HeartbeatTimeout { silent_for }, last_heard);
            }
        };
        opener.push(&buf[..n]);
        loop {
            match opener.next::<In>() {
                Ok(None) => break,
                Ok(Some(body)) => {
                    last_heard = Instant::now();
                    deadline = tokio::time::Instant::now() + silence_limit;
                    let Body::Msg(msg) = body else { continue };
                    match in_tx.try_send(msg) {
                        Ok(()) => {}
                        // The application dropped its receiver: discard, keep the link up
                        // for the sending half.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                        Err(mpsc::error::TrySendError::Full(msg)) => {
                            tokio::select! {
                                biased;
                                _ = lost(&mut stop) => return,
                                _ = in_tx.send(msg) => {}
                            }
                            // Not listening meanwhile: count the silence afresh.
                            deadline = tokio::time::Instant::now() + silence_limit;
                        }
                    }
                }
                Err(why) => return shared.set_lost(LostReason::Protocol(why), last_heard),
            }
        }
    }
}
