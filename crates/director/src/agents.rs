//! One in-process node agent per config node, and the routing of component actions to them.
//!
//! On one host every config node is "this host": each gets its own agent, socket
//! (`state_dir/agents/NODE.sock`, which the agent hands its components as
//! `NINES_AGENT_SOCKET`) and log directory (`state_dir/logs/NODE/`). Each agent's reports are
//! forwarded into the engine loop's queue tagged with the node and the agent's generation, so
//! that after a fence the late reports of the old agent are recognised and dropped.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use nines_agent::{AgentHandle, AgentOptions, Clock};
use nines_engine::ActionKind;
use nines_model::{CompId, Model, NodeId};
use tokio::sync::mpsc;

use crate::msg::Msg;

/// What starting an agent needs; cloned into fence tasks, which restart agents.
#[derive(Clone)]
pub(crate) struct AgentCtx {
    pub model: Arc<Model>,
    pub clock: Clock,
    pub agents_dir: PathBuf,
    pub logs_dir: PathBuf,
    pub tx: mpsc::UnboundedSender<Msg>,
}

impl AgentCtx {
    /// The socket path of a node's agent.
    pub fn socket(&self, node: NodeId) -> PathBuf {
        self.agents_dir
            .join(format!("{}.sock", self.model.nodes[node.index()].name))
    }

    /// Starts the agent of `node` (generation `gen`) and forwards its reports. The first
    /// agent of a node (generation 0) adopts the components an earlier run left running; an
    /// agent started after a fence kills whatever is recorded instead.
    pub async fn start(&self, node: NodeId, gen: u64) -> io::Result<AgentHandle> {
        // The agent replaces a stale socket file a crashed run left behind.
        let socket = self.socket(node);
        let name = &self.model.nodes[node.index()].name;
        let log_dir = self.logs_dir.join(name);
        std::fs::create_dir_all(&log_dir)?;
        let (handle, mut rx) = nines_agent::start(AgentOptions {
            node,
            model: self.model.clone(),
            socket,
            log_dir: Some(log_dir),
            clock: self.clock,
            record_dir: Some(self.agents_dir.join(format!("{name}.procs"))),
            adopt: gen == 0,
        })
        .await?;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while let Some(report) = rx.recv().await {
                if tx.send(Msg::Report { node, gen, report }).is_err() {
                    break;
                }
            }
        });
        Ok(handle)
    }
}

/// A node's agent: absent while it is being fenced and restarted.
#[derive(Default)]
pub(crate) struct Slot {
    /// The in-process agent (single-host runs).
    pub handle: Option<AgentHandle>,
    /// The joined node's link (cluster directors).
    pub remote: Option<crate::cluster::Remote>,
    /// Where the node last connected from (for fence commands).
    pub last_addr: Option<std::net::SocketAddr>,
    /// A cluster fence method is running for the node.
    pub fencing: bool,
    /// The joined node's component pids (as the node sees them).
    pub pids: Vec<(CompId, u32)>,
    pub gen: u64,
}

/// The agents of every node.
pub(crate) struct Agents {
    pub ctx: AgentCtx,
    pub slots: Vec<Slot>,
    /// Set for a cluster director: nodes join over links instead of running in-process.
    pub cluster: Option<Arc<crate::cluster::ClusterCtx>>,
}

impl Agents {
    /// Starts one agent per node of the model. On failure the agents already started are shut
    /// down again, so a failed start leaves nothing running.
    pub async fn start_all(ctx: AgentCtx) -> Result<Agents, (NodeId, io::Error)> {
        let mut slots: Vec<Slot> = Vec::new();
        for n in 0..ctx.model.nodes.len() {
            let node = NodeId(n as u32);
            match ctx.start(node, 0).await {
                Ok(handle) => slots.push(Slot {
                    handle: Some(handle),
                    ..Slot::default()
                }),
                Err(e) => {
                    for s in &slots {
                        if let Some(h) = &s.handle {
                            h.shutdown().await;
                        }
                    }
                    return Err((node, e));
                }
            }
        }
        Ok(Agents {
            ctx,
            slots,
            cluster: None,
        })
    }

    /// A cluster director's agents: none yet; nodes join over links.
    pub fn remote(ctx: AgentCtx, cluster: Arc<crate::cluster::ClusterCtx>) -> Agents {
        let slots = (0..ctx.model.nodes.len())
            .map(|_| Slot::default())
            .collect();
        Agents {
            ctx,
            slots,
            cluster: Some(cluster),
        }
    }

    /// Hands a component action to the agent of the component's node. Dropped (and `false`)
    /// when that node's agent is being replaced after a fence: everything on the node is dead
    /// by then and the engine learns it through `FenceDone`.
    pub fn execute(&self, node: NodeId, action: &ActionKind) -> bool {
        let slot = &self.slots[node.index()];
        if let Some(r) = &slot.remote {
            if let ActionKind::MigrateOut { to, .. } = action {
                let ip = self.addr_of(*to);
                return nines_node::wire::Order::migrate_out(action, ip)
                    .is_some_and(|o| r.send(&nines_node::wire::ToAgent::Order(o)));
            }
            return r.execute(action);
        }
        match &slot.handle {
            Some(h) => {
                h.execute(action);
                true
            }
            None => false,
        }
    }

    /// The address a node's agent is reached at, as far as this director knows: its link's
    /// peer address, or loopback for the agents of this process.
    fn addr_of(&self, node: NodeId) -> std::net::IpAddr {
        let slot = &self.slots[node.index()];
        slot.remote
            .as_ref()
            .map(|r| r.addr.ip())
            .or(slot.last_addr.map(|a| a.ip()))
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
    }

    /// What every agent adopted when it started, once the SA-aware components registered
    /// again (the agents wait in parallel).
    pub async fn adopted(&self) -> Vec<nines_agent::Adopted> {
        let waits: Vec<_> = self
            .slots
            .iter()
            .filter_map(|s| s.handle.clone())
            .map(|h| tokio::spawn(async move { h.adopted().await }))
            .collect();
        let mut all = Vec::new();
        for w in waits {
            if let Ok(mut a) = w.await {
                all.append(&mut a);
            }
        }
        all.sort_by_key(|a| a.comp);
        all
    }

    /// Every running component process of every agent.
    pub fn pids(&self) -> Vec<(CompId, u32)> {
        self.slots
            .iter()
            .flat_map(|s| match (&s.handle, &s.remote) {
                (Some(h), _) => h.pids(),
                (None, Some(_)) => s.pids.clone(),
                (None, None) => Vec::new(),
            })
            .collect()
    }

    /// Shuts every agent down at once (each terminates its components) and waits for all.
    pub async fn shutdown_all(&mut self, extra: Vec<AgentHandle>) {
        // Remote nodes keep running headless: a director that stops is not a cluster that
        // stops. Dropping the links tells them.
        for s in &mut self.slots {
            s.remote = None;
        }
        let mut tasks = Vec::new();
        for h in self
            .slots
            .iter_mut()
            .filter_map(|s| s.handle.take())
            .chain(extra)
        {
            tasks.push(tokio::spawn(async move { h.shutdown().await }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// The component an action is for, if it is a component action.
pub(crate) fn comp_of(action: &ActionKind) -> Option<CompId> {
    match action {
        ActionKind::Instantiate { comp, .. }
        | ActionKind::Terminate { comp }
        | ActionKind::Cleanup { comp }
        | ActionKind::AssignCsi { comp, .. }
        | ActionKind::RemoveCsi { comp, .. }
        | ActionKind::MigrateIn { comp, .. }
        | ActionKind::MigrateOut { comp, .. }
        | ActionKind::MigrateFinish { comp, .. } => Some(*comp),
        _ => None,
    }
}

/// The node whose agent carries out a component action: a migration's destination for the
/// steps that run there, else the node the engine says the component's SU runs on.
pub(crate) fn node_for(engine: &nines_engine::Engine, comp: CompId, action: &ActionKind) -> NodeId {
    match action {
        ActionKind::MigrateIn { to, .. } | ActionKind::MigrateFinish { to, .. } => *to,
        _ => engine.su_host(engine.model().comps[comp.index()].su),
    }
}
