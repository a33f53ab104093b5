//! Fencing on a single host.
//!
//! On a real cluster, fencing powers a node off so that nothing it runs can still touch
//! shared state before its work moves elsewhere. On one host every "node" is an in-process
//! agent, so fencing a node means: kill its agent's components at once (SIGKILL to every
//! process group, all reaped; a fence is not the place for a graceful stop), answer
//! `FenceDone{Ok}` (the engine then takes the node down and fails its work over), then start a
//! fresh agent for the node and send `NodeUp`, as if the node had rebooted, so the engine
//! instantiates its SUs again. Reports still arriving from the old agent carry an old
//! generation and are dropped.

use nines_agent::AgentHandle;
use nines_engine::{Input, Outcome};
use nines_model::{EntityRef, NodeId};
use serde_json::json;

use crate::engine_loop::EngineLoop;
use crate::msg::Msg;

impl EngineLoop {
    /// Carries out `Fence{node}`: takes the node's agent away and stops it in the background.
    pub(crate) fn fence(&mut self, node: NodeId) {
        let path = self.model.path(EntityRef::Node(node));
        self.log_director("fence", vec![("node", json!(path))]);
        let slot = &mut self.agents.slots[node.index()];
        slot.gen += 1;
        let gen = slot.gen;
        let old = slot.handle.take();
        let ctx = self.agents.ctx.clone();
        self.fence_tasks.retain(|t| !t.is_finished());
        self.fence_tasks.push(tokio::spawn(async move {
            if let Some(h) = old {
                h.kill().await;
            }
            let _ = ctx.tx.send(Msg::Fenced { node });
            let result = ctx.start(node, gen).await;
            let _ = ctx.tx.send(Msg::Rebooted { node, gen, result });
        }));
    }

    /// The node's agent and components are gone: the fence is done.
    pub(crate) fn on_fenced(&mut self, node: NodeId) {
        let path = self.model.path(EntityRef::Node(node));
        self.log_director("fence-done", vec![("node", json!(path))]);
        let now = self.clock.now();
        self.feed(
            now,
            Input::FenceDone {
                node,
                outcome: Outcome::Ok,
            },
        );
    }

    /// The node's new agent is up (the node "rebooted"), or could not be started.
    pub(crate) fn on_rebooted(
        &mut self,
        node: NodeId,
        gen: u64,
        result: std::io::Result<AgentHandle>,
    ) {
        let path = self.model.path(EntityRef::Node(node));
        match result {
            Ok(handle) => {
                let slot = &mut self.agents.slots[node.index()];
                if slot.gen != gen || slot.handle.is_some() {
                    // Superseded; never leave an agent running unowned.
                    tokio::spawn(async move { handle.shutdown().await });
                    return;
                }
                slot.handle = Some(handle);
                self.log_director("node-rebooted", vec![("node", json!(path))]);
                let now = self.clock.now();
                self.feed(now, Input::NodeUp { node });
            }
            Err(e) => self.log_director(
                "agent-error",
                vec![
                    ("node", json!(path)),
                    (
                        "error",
                        json!(format!(
                            "cannot restart the agent after the fence: {e}; the node stays down"
                        )),
                    ),
                ],
            ),
        }
    }
}
