//! The node's [`Replicator`]: checkpoint writes of actives here go to the director, which
//! relays them to every other joined node and acknowledges a waited-for write once they all
//! stored it.
//!
//! **Headless**, with no director, a waiting write is acknowledged once stored here (logged
//! once per headless period), and so are the writes still waiting when the connection ends: no failover can happen without a director, and when one is
//! back this node sends the checkpoints of the SIs it serves actively in full (see
//! `catch_up` in the crate root) before any work can move. The price: if this node dies
//! while headless, what it acknowledged meanwhile is lost with it. Refusing instead would
//! turn every director outage into a service outage for every component that checkpoints
//! synchronously.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use nines_agent::{ReplicaWrite, Replicator};
use tokio::sync::{mpsc, oneshot};

use crate::wire::ToDirector;

#[derive(Default)]
struct State {
    /// Headless writes were already logged in this headless period.
    warned: bool,
    next_seq: u64,
    out: Option<mpsc::UnboundedSender<ToDirector>>,
    pending: HashMap<u64, oneshot::Sender<Result<(), String>>>,
}

/// Shared between the agent (which calls `replicate`) and the session loop (which sends and
/// completes).
#[derive(Default)]
pub(crate) struct NodeReplicator {
    state: Mutex<State>,
}

impl NodeReplicator {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection is up: writes go to `out` from now on.
    pub(crate) fn connected(&self, out: mpsc::UnboundedSender<ToDirector>) {
        let mut s = self.lock();
        s.out = Some(out);
        s.warned = false;
    }

    /// The connection ended: the node is headless, and the writes still waiting count as
    /// headless ones (stored here).
    pub(crate) fn disconnected(&self) {
        let mut s = self.lock();
        s.out = None;
        if !s.pending.is_empty() {
            s.warned = true;
            tracing::warn!(
                writes = s.pending.len(),
                "lost the director with checkpoint writes in flight: they are kept on this node only until one is back"
            );
        }
        for (_, tx) in s.pending.drain() {
            let _ = tx.send(Ok(()));
        }
    }

    /// The director's answer for write `seq`.
    pub(crate) fn acked(&self, seq: u64, result: Result<(), String>) {
        if let Some(tx) = self.lock().pending.remove(&seq) {
            let _ = tx.send(result);
        }
    }
}

impl Replicator for NodeReplicator {
    fn replicate(
        &self,
        write: Option<ReplicaWrite>,
        wait: bool,
    ) -> Option<oneshot::Receiver<Result<(), String>>> {
        let mut s = self.lock();
        let (tx, rx) = oneshot::channel();
        let Some(out) = s.out.clone() else {
            if !s.warned {
                s.warned = true;
                tracing::warn!(
                    "no director: checkpoint writes are kept on this node only until one is back"
                );
            }
            if wait {
                let _ = tx.send(Ok(()));
                return Some(rx);
            }
            return None;
        };
        s.next_seq += 1;
        let seq = s.next_seq;
        let msg = ToDirector::Checkpoint {
            seq,
            write: write.map(Into::into),
            wait,
        };
        if out.send(msg).is_err() {
            // The session just ended: headless.
            let _ = tx.send(Ok(()));
            return wait.then_some(rx);
        }
        if !wait {
            return None;
        }
        s.pending.insert(seq, tx);
        Some(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Option<ReplicaWrite> {
        Some(ReplicaWrite {
            checkpoint: "c".into(),
            section: s.into(),
            data: vec![1],
        })
    }

    #[test]
    fn headless_a_waiting_write_is_acknowledged_once_stored_here() {
        let r = NodeReplicator::default();
        let mut rx = r.replicate(w("a"), true).expect("a waiting write answers");
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        assert!(r.replicate(w("b"), false).is_none());
    }

    #[test]
    fn writes_go_out_in_order_and_complete_on_their_ack_or_fail_on_disconnect() {
        let r = NodeReplicator::default();
        let (tx, mut out) = mpsc::unbounded_channel();
        r.connected(tx);
        let mut first = r.replicate(w("a"), true).expect("waits");
        assert!(r.replicate(w("b"), false).is_none());
        let mut barrier = r.replicate(None, true).expect("waits");
        let seqs: Vec<(u64, bool)> = std::iter::from_fn(|| out.try_recv().ok())
            .map(|m| match m {
                ToDirector::Checkpoint { seq, wait, .. } => (seq, wait),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(seqs, vec![(1, true), (2, false), (3, true)]);
        r.acked(1, Ok(()));
        assert_eq!(first.try_recv(), Ok(Ok(())));
        r.disconnected();
        assert_eq!(barrier.try_recv(), Ok(Ok(())), "headless: kept here");
    }
}
