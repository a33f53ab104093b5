//! Messages to the engine loop: everything that may change the engine's state, or needs a
//! consistent view of it, goes through this one queue, so `Engine::handle` is only ever called
//! from the engine task and in one total order.

use std::io;

use nines_agent::{AgentHandle, Report};
use nines_engine::{AdminError, AdminOp};
use nines_model::{EntityRef, NodeId};
use tokio::sync::oneshot;

use crate::status::Status;

/// One message to the engine loop.
pub(crate) enum Msg {
    /// A fact an agent observed. `gen` tells reports of a fenced (replaced) agent apart.
    Report {
        node: NodeId,
        gen: u64,
        report: Report,
    },
    /// An operator's admin request; the engine's answer goes back on `reply`.
    Admin {
        op: AdminOp,
        target: EntityRef,
        reply: oneshot::Sender<Result<(), AdminError>>,
    },
    /// A status snapshot is wanted.
    Status { reply: oneshot::Sender<Status> },
    /// A fenced node's agent (and with it every component on the node) is gone.
    Fenced { node: NodeId },
    /// A fenced node's agent was started again (the node "rebooted"), or could not be.
    Rebooted {
        node: NodeId,
        gen: u64,
        result: io::Result<AgentHandle>,
    },
    /// A node asks to join (cluster directors).
    Join {
        node: NodeId,
        addr: std::net::SocketAddr,
        reply: oneshot::Sender<crate::cluster::JoinAnswer>,
    },
    /// A node joined: its link (generation `gen`) and what it runs.
    Joined {
        node: NodeId,
        gen: u64,
        remote: crate::cluster::Remote,
        adopted: Vec<nines_agent::Adopted>,
    },
    /// A node's link (generation `gen`) ended at `at`.
    Lost {
        node: NodeId,
        gen: u64,
        at: nines_engine::Instant,
        reason: String,
    },
    /// A joined node's checkpoint write (or barrier), to relay to the other nodes.
    Checkpoint {
        node: NodeId,
        gen: u64,
        seq: u64,
        write: Option<nines_node::wire::Replica>,
        wait: bool,
    },
    /// Node `node` stored `origin`'s write `seq`.
    ReplicaAck {
        node: NodeId,
        gen: u64,
        origin: u32,
        seq: u64,
    },
    /// A joined node's component pids.
    Pids {
        node: NodeId,
        gen: u64,
        pids: Vec<(nines_model::CompId, u32)>,
    },
    /// A cluster fence method finished.
    FenceResult {
        node: NodeId,
        result: Result<(), String>,
    },
    /// Stop: no more input; terminate everything; answer on `done`.
    Shutdown { done: oneshot::Sender<()> },
}
