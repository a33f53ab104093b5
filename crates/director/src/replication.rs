//! Checkpoint replication across nodes, relayed by the director.
//!
//! An active's agent sends each checkpoint write here in order; the director keeps a copy
//! (so that a node that joins later catches up before it gets work) and relays the write to
//! every other joined node. A write the writer waits for (a sync write, or a flush barrier)
//! is acknowledged once every node it was relayed to stored it; a node that is lost or
//! fenced meanwhile no longer counts (it holds no standby any more). So an acknowledged sync
//! write is on every node that was joined when it was made: it survives the loss of the
//! active's node.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use nines_model::NodeId;
use nines_node::wire::{Replica, ToAgent};

use crate::engine_loop::EngineLoop;

/// A relayed write waiting for its acknowledgements.
struct Pending {
    /// The writer's connection generation (its answer goes nowhere once it is gone).
    gen: u64,
    waiting: BTreeSet<NodeId>,
}

/// The director's copy of every checkpoint and the writes in flight.
#[derive(Default)]
pub(crate) struct Replication {
    copy: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    pending: HashMap<(NodeId, u64), Pending>,
}

impl Replication {
    /// Every section of every checkpoint, for a joining node's catch-up.
    pub(crate) fn snapshot(&self) -> Vec<Replica> {
        self.copy
            .iter()
            .flat_map(|(c, sections)| {
                sections.iter().map(|(s, d)| Replica {
                    checkpoint: c.clone(),
                    section: s.clone(),
                    data: d.clone(),
                })
            })
            .collect()
    }
}

impl EngineLoop {
    /// A node's write: keep a copy, relay it, and acknowledge at once when nobody else is
    /// joined.
    pub(crate) fn on_checkpoint(
        &mut self,
        origin: NodeId,
        gen: u64,
        seq: u64,
        write: Option<Replica>,
        wait: bool,
    ) {
        let slot = &self.agents.slots[origin.index()];
        if slot.gen != gen || slot.remote.is_none() {
            return; // the writer's connection is gone; it failed its pending writes itself
        }
        if let Some(w) = &write {
            self.replication
                .copy
                .entry(w.checkpoint.clone())
                .or_default()
                .insert(w.section.clone(), w.data.clone());
        }
        let mut waiting = BTreeSet::new();
        for (n, s) in self.agents.slots.iter().enumerate() {
            let node = NodeId(n as u32);
            let Some(remote) = &s.remote else { continue };
            if node == origin {
                continue;
            }
            let msg = ToAgent::Replica {
                origin: origin.0,
                seq,
                write: write.clone(),
            };
            if remote.send(&msg) {
                waiting.insert(node);
            }
        }
        if !wait {
            return; // nobody waits: the nodes' acknowledgements are not needed
        }
        if waiting.is_empty() {
            self.ack_checkpoint(origin, seq, Ok(()));
            return;
        }
        self.replication
            .pending
            .insert((origin, seq), Pending { gen, waiting });
    }

    /// `node` stored `origin`'s write `seq`.
    pub(crate) fn on_replica_ack(&mut self, node: NodeId, gen: u64, origin: u32, seq: u64) {
        if self.agents.slots[node.index()].gen != gen {
            return;
        }
        let key = (NodeId(origin), seq);
        let Some(p) = self.replication.pending.get_mut(&key) else {
            return;
        };
        p.waiting.remove(&node);
        if p.waiting.is_empty() {
            self.complete(key);
        }
    }

    /// `node` is gone (lost or fenced): its writes in flight are void and nothing waits for
    /// its acknowledgements any more.
    pub(crate) fn forget_replication(&mut self, node: NodeId) {
        self.replication
            .pending
            .retain(|(origin, _), _| *origin != node);
        let done: Vec<(NodeId, u64)> = self
            .replication
            .pending
            .iter_mut()
            .filter_map(|(k, p)| {
                p.waiting.remove(&node);
                p.waiting.is_empty().then_some(*k)
            })
            .collect();
        for key in done {
            self.complete(key);
        }
    }

    fn complete(&mut self, key: (NodeId, u64)) {
        let Some(p) = self.replication.pending.remove(&key) else {
            return;
        };
        if self.agents.slots[key.0.index()].gen == p.gen {
            self.ack_checkpoint(key.0, key.1, Ok(()));
        }
    }

    fn ack_checkpoint(&self, origin: NodeId, seq: u64, result: Result<(), String>) {
        if let Some(r) = &self.agents.slots[origin.index()].remote {
            r.send(&ToAgent::CheckpointAck { seq, result });
        }
    }
}
