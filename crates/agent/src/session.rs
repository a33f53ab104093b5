//! SA-aware sessions: the agent's side of one registered component's connection.
//!
//! A [`SessionLink`] is how the rest of the agent talks to a component: it queues frames for the
//! connection's writer and matches answers to requests by invocation. Connections themselves
//! (binding, accepting, registration, reading) are in [`crate::socket`]; what the agent does
//! with each message is in [`crate::dispatch`].
//!
//! A component that stops reading its socket has its session closed once [`OUTBOX`] frames are
//! queued, so it cannot make the agent hold unbounded memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nines_engine::HaState;
use nines_model::{CompId, CsiId};
use nines_proto::{FrameError, ToComponent, MAX_COMPONENT_HEALTHCHECKS};
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// Frames queued for a component before the agent decides it does not read its socket and
/// closes the session.
pub const OUTBOX: usize = 256;

/// A request sent to a component that waits for its answer.
pub(crate) enum Pending {
    /// `CsiSet`, answered by `Response`.
    Assign { csi: CsiId, ha: HaState },
    /// `CsiRemove`, answered by `Response`.
    Remove { csi: CsiId },
    /// `Terminate`, answered by `Response`; the terminating task waits for `ok`.
    Terminate(oneshot::Sender<bool>),
    /// `Healthcheck`, answered by `HealthcheckConfirm`.
    Healthcheck(oneshot::Sender<()>),
}

/// What the watcher of a component-invoked healthcheck hears from its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Beat {
    /// Nothing yet since the start.
    Started,
    /// The component confirmed (again).
    Confirmed,
    /// The component stopped the healthcheck.
    Stopped,
}

/// Why a frame could not be queued.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The session is closed (or being closed).
    Closed,
    /// The message exceeds the frame limit (a checkpoint too large to read in one reply).
    TooLarge(FrameError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Closed => write!(f, "session closed"),
            SendError::TooLarge(e) => write!(f, "{e}"),
        }
    }
}

/// The agent's handle on one registered session: send to the component, and match answers to
/// requests. Callbacks keep it alive until they are answered or time out.
pub(crate) struct SessionLink {
    /// Session id (unique in the process).
    pub id: u64,
    /// The component it speaks for.
    pub comp: CompId,
    /// The incarnation it belongs to.
    pub gen: u64,
    outbox: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    closing: Notify,
    pending: Mutex<HashMap<u64, Pending>>,
    quiescing: Mutex<HashMap<u64, CsiId>>,
    /// Component-invoked healthchecks by key; dropping a sender (the session ends) leaves its
    /// watcher without confirmations, so it reports the miss unless the component is gone.
    self_checks: Mutex<HashMap<String, watch::Sender<Beat>>>,
    /// A confirmation for a key not started was logged as a warning already (later ones go
    /// to the debug log, so a component confirming in a loop cannot flood the log).
    warned_stray_confirm: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SessionLink {
    /// A link for incarnation `gen` of `comp`, writing through `outbox`.
    pub(crate) fn new(comp: CompId, gen: u64, outbox: mpsc::Sender<Vec<u8>>) -> Arc<SessionLink> {
        Arc::new(SessionLink {
            id: next_session_id(),
            comp,
            gen,
            outbox: Mutex::new(Some(outbox)),
            closing: Notify::new(),
            pending: Mutex::new(HashMap::new()),
            quiescing: Mutex::new(HashMap::new()),
            self_checks: Mutex::new(HashMap::new()),
            warned_stray_confirm: AtomicBool::new(false),
        })
    }

    /// Resolves when the agent closes the session.
    pub(crate) async fn closed(&self) {
        self.closing.notified().await;
    }

    /// Queue a message. A component that lets [`OUTBOX`] frames pile up loses its session.
    pub(crate) fn send(&self, msg: &ToComponent) -> Result<(), SendError> {
        let frame = nines_proto::try_encode(msg).map_err(SendError::TooLarge)?;
        let mut outbox = lock(&self.outbox);
        let Some(tx) = outbox.as_ref() else {
            return Err(SendError::Closed);
        };
        match tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::error!(
                    session = self.id,
                    "component does not read its socket ({OUTBOX} frames queued); closing session"
                );
                *outbox = None;
                drop(outbox);
                self.closing.notify_one();
                Err(SendError::Closed)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                *outbox = None;
                Err(SendError::Closed)
            }
        }
    }

    /// Close the session (the agent is done with this component); queued frames still go out.
    /// Waits for a [`while_open`](Self::while_open) in progress.
    pub(crate) fn close(&self) {
        *lock(&self.outbox) = None;
        self.closing.notify_one();
    }

    /// Run `f` only if the session is still open, keeping it open until `f` returns. The agent
    /// closes a session when it sees the component's process end, before it reports the exit,
    /// so whatever `f` does (store a checkpoint write) happens before the engine hears of the
    /// exit, or not at all: a dead component's last frames can never overwrite what its
    /// successor writes.
    pub(crate) fn while_open<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let outbox = lock(&self.outbox);
        let result = outbox.is_some().then(f);
        drop(outbox);
        result
    }

    /// Register the component-invoked healthcheck `key`; its watcher listens on the receiver.
    pub(crate) fn start_self_check(&self, key: &str) -> Result<watch::Receiver<Beat>, String> {
        let mut checks = lock(&self.self_checks);
        if checks.contains_key(key) {
            return Err(format!("healthcheck {key:?} is already started"));
        }
        if checks.len() >= MAX_COMPONENT_HEALTHCHECKS {
            return Err(format!(
                "at most {MAX_COMPONENT_HEALTHCHECKS} component-invoked healthchecks may run at once"
            ));
        }
        let (tx, rx) = watch::channel(Beat::Started);
        checks.insert(key.to_owned(), tx);
        Ok(rx)
    }

    /// Pass a confirmation to the watcher of `key`. False if no such healthcheck was started.
    pub(crate) fn confirm_self_check(&self, key: &str) -> bool {
        match lock(&self.self_checks).get(key) {
            Some(tx) => {
                tx.send_replace(Beat::Confirmed);
                true
            }
            None => false,
        }
    }

    /// Stop the healthcheck `key`. False if no such healthcheck was started.
    pub(crate) fn stop_self_check(&self, key: &str) -> bool {
        match lock(&self.self_checks).remove(key) {
            Some(tx) => {
                tx.send_replace(Beat::Stopped);
                true
            }
            None => false,
        }
    }

    /// Whether this is the first stray confirmation of the session (the one worth a warning).
    pub(crate) fn first_stray_confirm(&self) -> bool {
        !self.warned_stray_confirm.swap(true, Ordering::Relaxed)
    }

    /// Wait for an answer to `invocation`.
    pub(crate) fn add_pending(&self, invocation: u64, p: Pending) {
        lock(&self.pending).insert(invocation, p);
    }

    /// Claim the request behind `invocation`; whoever claims it answers the engine.
    pub(crate) fn take_pending(&self, invocation: u64) -> Option<Pending> {
        lock(&self.pending).remove(&invocation)
    }

    /// `invocation` sets a CSI to quiescing: its `QuiescingComplete` is expected.
    pub(crate) fn expect_quiescing(&self, invocation: u64, csi: CsiId) {
        lock(&self.quiescing).insert(invocation, csi);
    }

    /// The CSI whose quiescing `invocation` completes, if it was expected.
    pub(crate) fn take_quiescing(&self, invocation: u64) -> Option<CsiId> {
        lock(&self.quiescing).remove(&invocation)
    }

    /// The quiescing callback `invocation` failed or timed out: no completion will count.
    pub(crate) fn forget_quiescing(&self, invocation: u64) {
        lock(&self.quiescing).remove(&invocation);
    }
}

/// Session ids are unique in the process, not just the agent: agents of one host share
/// protection-group trackers, which are told apart by session id.
fn next_session_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> (Arc<SessionLink>, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(1);
        (SessionLink::new(CompId(0), 1, tx), rx)
    }

    #[test]
    fn nothing_runs_under_while_open_once_the_session_is_closed() {
        let (link, _rx) = link();
        assert_eq!(link.while_open(|| 7), Some(7));
        link.close();
        assert_eq!(link.while_open(|| 7), None);
    }

    #[test]
    fn component_invoked_healthchecks_are_kept_by_key_and_bounded() {
        let (link, _rx) = link();
        let mut beats = link.start_self_check("a").expect("first start");
        assert!(link.start_self_check("a").is_err(), "started twice");
        assert!(
            !link.confirm_self_check("b"),
            "confirm of a key never started"
        );
        assert!(!link.stop_self_check("b"), "stop of a key never started");
        assert!(link.confirm_self_check("a"));
        assert!(beats.has_changed().expect("sender alive"));
        assert_eq!(*beats.borrow_and_update(), Beat::Confirmed);
        assert!(link.stop_self_check("a"));
        assert_eq!(*beats.borrow_and_update(), Beat::Stopped);
        assert!(!link.stop_self_check("a"), "stopped twice");
        let _kept: Vec<_> = (0..MAX_COMPONENT_HEALTHCHECKS)
            .map(|i| {
                link.start_self_check(&i.to_string())
                    .expect("within the bound")
            })
            .collect();
        assert!(link.start_self_check("one more").is_err());
    }
}
