//! A director of a real cluster: node agents on other hosts connect over authenticated links.
//!
//! Each node runs `nines agent` ([`nines_node`]), which connects here, proves the cluster key
//! and names itself. The director answers `Join` with the config and whether the node keeps
//! what it runs: yes while the director boots (it resumes from what every node reports), no
//! after the node was fenced (it must start clean). Once joined, the node's component actions
//! travel to it as orders and its facts come back as reports, restamped on the director's
//! clock.
//!
//! Membership is the link: a node whose heartbeats stop (`interval × miss_count`, 50 ms × 4
//! by default) is *lost*, which the engine answers with a fence; only when the fence method
//! confirms the node is isolated does its work fail over (see [`FenceMethod`]). A node that
//! comes back joins again, is reset, and is up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nines_agent::{Adopted, Clock, Report};
use nines_engine::{Input, Outcome};
use nines_link::{ClusterKey, Link, LinkConfig, LinkSender, Listener};
use nines_model::{EntityRef, Model, NodeId};
use nines_node::wire::{Order, ToAgent, ToDirector};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::engine_loop::EngineLoop;
use crate::msg::Msg;

/// How long a node may take between its `Join` and its `Running` report (it may be adopting
/// components, each within its instantiate timeout).
pub const RUNNING_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a fence command may run before the fence counts as failed (and is retried).
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// A fence function: takes the node's name, answers once it is off (or why not).
pub type FenceHook = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// How a lost node is isolated before its work moves.
#[derive(Clone)]
pub enum FenceMethod {
    /// Run `sh -c COMMAND` with `NINES_FENCE_NODE` (the node's name) and `NINES_FENCE_ADDR`
    /// (its last address) in the environment; exit status 0 means the node is off. Typical:
    /// a power switch or IPMI command, `virsh destroy`, or a kill of the node's process tree.
    Command(String),
    /// A function of the node's name (tests and benchmarks fence their testbed nodes).
    Hook(FenceHook),
    /// No fencing: a lost node is assumed dead at once. Unsafe (a node that is only cut off
    /// keeps its actives while they are failed over), so it is logged at every use.
    Unsafe,
}

impl std::fmt::Debug for FenceMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FenceMethod::Command(c) => write!(f, "command {c:?}"),
            FenceMethod::Hook(_) => f.write_str("hook"),
            FenceMethod::Unsafe => f.write_str("none (unsafe)"),
        }
    }
}

/// Where a cluster director accepts nodes.
pub enum Listen {
    /// A socket bound by the caller (possibly inside a network namespace).
    Bound(std::net::TcpListener),
    /// An address to bind, once this director leads (a standby director must not accept
    /// nodes: they would wait on it instead of trying the leader).
    At(SocketAddr),
}

/// The leadership election's name under the cluster's etcd namespace.
pub const ELECTION: &str = "director";

/// A director's lease on leadership: with the election timings of the tests and CI
/// (`--heartbeat-interval=50 --election-timeout=500`) a dead leader is replaced about a
/// second after it stopped renewing.
pub const LEADER_TTL: Duration = Duration::from_secs(1);

/// What a cluster director needs beyond a single-host run.
pub struct ClusterOptions {
    /// The config text the model was loaded from; sent to every node.
    pub config_text: String,
    /// The director's link name.
    pub name: String,
    /// Where agents connect.
    pub listener: Listen,
    /// Directors of one cluster elect a leader in this etcd (and keep the admin states
    /// there); `None`: this director is the only one (its state stays in `state.redb`).
    pub etcd: Option<nines_store::EtcdOptions>,
    /// The cluster key.
    pub key: ClusterKey,
    /// Heartbeat interval and miss count (both ends should agree).
    pub link: LinkConfig,
    /// How lost nodes are fenced.
    pub fence: FenceMethod,
    /// How long the director waits at start for every node to join before it starts the
    /// engine without the missing ones (which it then fences).
    pub join_timeout: Duration,
}

/// The director side of a joined node.
pub(crate) struct Remote {
    pub tx: LinkSender<ToAgent>,
    pub addr: SocketAddr,
    reader: AbortHandle,
}

impl Drop for Remote {
    fn drop(&mut self) {
        // The reader owns the link's receiving half: aborting it closes the link, so the node
        // notices, reconnects and joins again (clean).
        self.reader.abort();
    }
}

impl Remote {
    /// Sends a message; false (logged) when the link cannot take it.
    pub fn send(&self, msg: &ToAgent) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(addr = %self.addr, "cannot send to the node: {e}");
                false
            }
        }
    }

    /// Sends a component action; false when the link cannot take it.
    pub fn execute(&self, action: &nines_engine::ActionKind) -> bool {
        let Some(order) = Order::from_action(action) else {
            return false;
        };
        match self.tx.try_send(&ToAgent::Order(order)) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(addr = %self.addr, "cannot send an order: {e}");
                false
            }
        }
    }
}

/// The director's answer to a `Join`.
pub(crate) enum JoinAnswer {
    /// Welcome, keeping (`true`) or resetting what runs.
    Welcome(bool),
    /// Not now (the reason is logged and the link closed; the node retries).
    Refuse(String),
}

/// What the cluster tasks share.
pub(crate) struct ClusterCtx {
    pub model: Arc<Model>,
    pub config_text: String,
    pub fence: FenceMethod,
    pub clock: Clock,
    pub tx: mpsc::UnboundedSender<Msg>,
    pub join_timeout: Duration,
}

/// How long a director keeps trying to reach etcd before it gives up starting.
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// Campaigns for leadership (waiting as long as another director leads), logging when it
/// starts and when it is elected.
pub(crate) async fn lead(
    opts: &nines_store::EtcdOptions,
    name: &str,
    log: &crate::event_log::EventLog,
    clock: Clock,
) -> Result<(nines_store::EtcdStore, nines_store::Leadership), crate::RunError> {
    // A dead member among the endpoints can fail the connection; try each first in turn,
    // for a while (etcd may be electing), before giving up.
    let mut store = None;
    let mut last = String::new();
    let deadline = std::time::Instant::now() + CONNECT_PATIENCE;
    'connect: while std::time::Instant::now() < deadline {
        // etcd-client keeps sending some requests to a member that is down: give it the
        // members that accept connections now.
        let live = live_endpoints(&opts.endpoints).await;
        for k in 0..live.len().max(1) {
            let mut o = opts.clone();
            o.endpoints = live.clone();
            let shift = k.min(o.endpoints.len().saturating_sub(1));
            o.endpoints.rotate_left(shift);
            match nines_store::EtcdStore::connect(o).await {
                Ok(s) => {
                    store = Some(s);
                    break 'connect;
                }
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let store = store.ok_or(crate::RunError::Election(last))?;
    log.append(
        clock.now(),
        "campaigning",
        &vec![
            ("director", json!(name)),
            ("etcd", json!(opts.endpoints.join(","))),
        ],
    );
    let started = std::time::Instant::now();
    let leadership = store
        .campaign(ELECTION, name, LEADER_TTL)
        .await
        .map_err(|e| crate::RunError::Election(e.to_string()))?;
    log.append(
        clock.now(),
        "elected",
        &vec![
            ("director", json!(name)),
            ("waited_ms", json!(started.elapsed().as_secs_f64() * 1e3)),
        ],
    );
    Ok((store, leadership))
}

/// The endpoints (`http://HOST:PORT`) that accept a TCP connection within 200 ms; all of
/// them if none does (the error then comes from etcd-client, with its reason).
async fn live_endpoints(endpoints: &[String]) -> Vec<String> {
    let mut live = Vec::new();
    for e in endpoints {
        let hostport = e
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        let ok = matches!(
            tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(hostport)
            )
            .await,
            Ok(Ok(_))
        );
        if ok {
            live.push(e.clone());
        }
    }
    if live.is_empty() {
        endpoints.to_vec()
    } else {
        live
    }
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1 << 32);

/// Starts accepting node links in the background.
pub(crate) fn serve(
    opts_listener: std::net::TcpListener,
    key: ClusterKey,
    name: &str,
    link: LinkConfig,
    ctx: Arc<ClusterCtx>,
) -> Result<tokio::task::JoinHandle<()>, nines_link::Error> {
    let mut listener = Listener::<ToAgent, ToDirector>::from_std(opts_listener, key, name, link)?;
    Ok(tokio::spawn(async move {
        loop {
            let link = listener.accept().await;
            tokio::spawn(join(link, ctx.clone()));
        }
    }))
}

/// One node's connection: the join exchange, then its reports until the link ends.
async fn join(link: Link<ToAgent, ToDirector>, ctx: Arc<ClusterCtx>) {
    let name = link.peer_name().to_owned();
    let addr = link.peer_addr();
    let Some(node) = ctx.model.nodes.iter().position(|n| n.name == name) else {
        tracing::warn!(node = %name, addr = %addr, "refused a node that is not in the config");
        return;
    };
    let node = NodeId(node as u32);
    let mut lost = link.lost_signal();
    let (tx, mut rx) = link.split();
    match tokio::time::timeout(nines_node::WELCOME_TIMEOUT, rx.recv()).await {
        Ok(Some(ToDirector::Join { .. })) => {}
        other => {
            tracing::warn!(node = %name, addr = %addr, "no join from the node ({other:?}); closed");
            return;
        }
    }
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let (reply, answer) = oneshot::channel();
    if ctx.tx.send(Msg::Join { node, addr, reply }).is_err() {
        return;
    }
    let keep = match answer.await {
        Ok(JoinAnswer::Welcome(keep)) => keep,
        Ok(JoinAnswer::Refuse(_)) | Err(_) => return,
    };
    let welcome = ToAgent::Welcome {
        config: ctx.config_text.clone(),
        keep,
    };
    if tx.send(&welcome).await.is_err() {
        return;
    }
    let running = match tokio::time::timeout(RUNNING_TIMEOUT, rx.recv()).await {
        Ok(Some(ToDirector::Running { comps })) => comps,
        other => {
            tracing::warn!(node = %name, "no running report from the node ({other:?}); closed");
            return;
        }
    };
    let mut adopted: Vec<Adopted> = Vec::new();
    for r in &running {
        match r.to_adopted(&ctx.model) {
            Ok(a) if !owns(&ctx.model, node, a.comp) => {
                tracing::error!(node = %name, comp = a.comp.0, "a node reports another node's component; closed");
                return;
            }
            Ok(a) => adopted.push(a),
            Err(e) => {
                tracing::error!(node = %name, "bad running report: {e}; closed");
                return;
            }
        }
    }
    // The reader runs in its own task (the link must be drained promptly to count the
    // peer's silence); the engine loop gets an abort handle with the sending half.
    let (ready_tx, ready_rx) = oneshot::channel::<()>();
    let reader_ctx = ctx.clone();
    let reader = tokio::spawn(async move {
        if ready_rx.await.is_err() {
            return;
        }
        let model = reader_ctx.model.clone();
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(ToDirector::Report { age_ns, fact }) => {
                        let now = reader_ctx.clock.now();
                        let at = nines_engine::Instant::from_nanos(
                            now.as_nanos().saturating_sub(age_ns),
                        );
                        match fact.to_input(&model) {
                            Ok(input) if !input_owned(&model, node, &input) => {
                                tracing::error!(node = ?node, "a report about another node's component dropped");
                            }
                            Ok(input) => {
                                let report = Report { at, input };
                                if reader_ctx.tx.send(Msg::Report { node, gen: conn, report }).is_err() {
                                    return;
                                }
                            }
                            Err(e) => tracing::error!(node = ?node, "bad report dropped: {e}"),
                        }
                    }
                    Some(ToDirector::Checkpoint { seq, write, wait }) => {
                        let msg = Msg::Checkpoint { node, gen: conn, seq, write, wait };
                        if reader_ctx.tx.send(msg).is_err() {
                            return;
                        }
                    }
                    Some(ToDirector::ReplicaAck { origin, seq }) => {
                        let msg = Msg::ReplicaAck { node, gen: conn, origin, seq };
                        if reader_ctx.tx.send(msg).is_err() {
                            return;
                        }
                    }
                    Some(ToDirector::Pids(list)) => {
                        let pids = list
                            .into_iter()
                            .filter(|(c, _)| (*c as usize) < model.comps.len())
                            .map(|(c, p)| (nines_model::CompId(c), p))
                            .collect();
                        if reader_ctx.tx.send(Msg::Pids { node, gen: conn, pids }).is_err() {
                            return;
                        }
                    }
                    Some(other) => tracing::warn!(node = ?node, "unexpected {other:?} dropped"),
                    None => break,
                },
                _ = lost.wait() => break,
            }
        }
        let l = lost.get();
        let (at, reason) = match l {
            Some(l) => (reader_ctx.clock.at(l.at), l.reason.to_string()),
            None => (reader_ctx.clock.now(), "closed".to_string()),
        };
        let _ = reader_ctx.tx.send(Msg::Lost {
            node,
            gen: conn,
            at,
            reason,
        });
    });
    let remote = Remote {
        tx,
        addr,
        reader: reader.abort_handle(),
    };
    if ctx
        .tx
        .send(Msg::Joined {
            node,
            gen: conn,
            remote,
            adopted,
        })
        .is_ok()
    {
        let _ = ready_tx.send(());
    }
}

/// Whether `comp` may run on `node` (a node speaks for its own components only): its SU's
/// node, or for a VM that live-migrates, any node of its SG.
fn owns(model: &Model, node: NodeId, comp: nines_model::CompId) -> bool {
    let Some(c) = model.comps.get(comp.index()) else {
        return false;
    };
    let su = &model.sus[c.su.index()];
    su.node == node
        || (c.vm.as_ref().is_some_and(|v| v.migrate) && model.sg_nodes(su.sg).contains(&node))
}

/// Whether an agent's fact is about a component of `node`.
fn input_owned(model: &Model, node: NodeId, input: &Input) -> bool {
    match input {
        Input::CommandDone { comp, .. }
        | Input::ComponentFailed { comp, .. }
        | Input::CsiAssigned { comp, .. }
        | Input::CsiRemoved { comp, .. }
        | Input::QuiescingComplete { comp, .. }
        | Input::MigrationPrepared { comp, .. }
        | Input::MigrationSent { comp, .. }
        | Input::MigrationFinished { comp, .. } => owns(model, node, *comp),
        _ => false,
    }
}

/// Runs a fence method for `node` (in the background) and reports the outcome.
pub(crate) fn run_fence(ctx: &Arc<ClusterCtx>, node: NodeId, addr: Option<SocketAddr>) {
    let name = ctx.model.nodes[node.index()].name.clone();
    let method = ctx.fence.clone();
    let tx = ctx.tx.clone();
    tokio::spawn(async move {
        let result = match method {
            FenceMethod::Unsafe => {
                tracing::warn!(node = %name, "no fence method: assuming the node is dead");
                Ok(())
            }
            FenceMethod::Hook(f) => {
                let n = name.clone();
                tokio::task::spawn_blocking(move || f(&n))
                    .await
                    .unwrap_or_else(|e| Err(format!("fence hook panicked: {e}")))
            }
            FenceMethod::Command(cmd) => fence_command(&cmd, &name, addr).await,
        };
        if result.is_err() {
            // The engine asks again at once; do not hammer a failing fence device.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let _ = tx.send(Msg::FenceResult { node, result });
    });
}

async fn fence_command(cmd: &str, node: &str, addr: Option<SocketAddr>) -> Result<(), String> {
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .env("NINES_FENCE_NODE", node)
        .env(
            "NINES_FENCE_ADDR",
            addr.map(|a| a.ip().to_string()).unwrap_or_default(),
        )
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let child = c.output();
    match tokio::time::timeout(FENCE_TIMEOUT, child).await {
        Err(_) => Err(format!("fence command timed out after {FENCE_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("cannot run the fence command: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "fence command failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

impl EngineLoop {
    /// Before the engine starts: waits until every node joined (or the join timeout), and
    /// returns what they run. Messages that are not joins are kept for after the start.
    pub(crate) async fn gather_joins(&mut self) -> (Vec<Adopted>, Vec<Msg>) {
        let Some(ctx) = self.agents.cluster.clone() else {
            return (Vec::new(), Vec::new());
        };
        let deadline = tokio::time::Instant::now() + ctx.join_timeout;
        let mut adopted: HashMap<NodeId, Vec<Adopted>> = HashMap::new();
        let mut later = Vec::new();
        // Guests (nodes that are VMs' guests) cannot join before their VMs run, which is what
        // booting starts: only physical nodes are waited for. A guest that joins meanwhile
        // (its VM survived a director change) is taken like any node.
        let model = self.model.clone();
        let physical = |a: &HashMap<NodeId, Vec<Adopted>>| {
            a.keys()
                .filter(|n| model.nodes[n.index()].vm.is_none())
                .count()
        };
        let needed = model.nodes.iter().filter(|n| n.vm.is_none()).count();
        while physical(&adopted) < needed {
            if self.deposed.as_ref().is_some_and(|d| d.borrow().is_some()) {
                break; // no longer the leader; the loop stops on the Shutdown that follows
            }
            let msg = match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => break,
            };
            match msg {
                Msg::Join { node, addr, reply } => {
                    let answer = if self.agents.slots[node.index()].remote.is_some() {
                        JoinAnswer::Refuse("this node is already joined".into())
                    } else {
                        JoinAnswer::Welcome(true)
                    };
                    self.answer_join(node, addr, answer, reply);
                }
                Msg::Joined {
                    node,
                    gen,
                    remote,
                    adopted: a,
                } => {
                    self.install(node, gen, remote, true, a.len());
                    adopted.insert(node, a);
                }
                Msg::Lost { node, gen, .. } if self.agents.slots[node.index()].gen == gen => {
                    self.agents.slots[node.index()].remote = None;
                    adopted.remove(&node);
                }
                // Operators may look while the director waits for its nodes.
                status @ Msg::Status { .. } => self.on_msg(status),
                other => later.push(other),
            }
        }
        let mut all: Vec<Adopted> = adopted.into_values().flatten().collect();
        all.sort_by_key(|a| a.comp);
        (all, later)
    }

    /// After `Start`: every node that did not join is lost (and fenced: it may run anything).
    pub(crate) fn lose_absent(&mut self) {
        if self.agents.cluster.is_none() {
            return;
        }
        for n in 0..self.model.nodes.len() {
            if self.agents.slots[n].remote.is_none() {
                let node = NodeId(n as u32);
                let path = self.model.path(EntityRef::Node(node));
                self.log_director(
                    "node-lost",
                    vec![("node", json!(path)), ("reason", json!("did not join"))],
                );
                let now = self.clock.now();
                self.feed(now, Input::NodeLost { node });
            }
        }
    }

    fn answer_join(
        &mut self,
        node: NodeId,
        addr: SocketAddr,
        answer: JoinAnswer,
        reply: oneshot::Sender<JoinAnswer>,
    ) {
        let path = self.model.path(EntityRef::Node(node));
        if let JoinAnswer::Refuse(why) = &answer {
            self.log_director(
                "join-refused",
                vec![
                    ("node", json!(path)),
                    ("addr", json!(addr.to_string())),
                    ("reason", json!(why)),
                ],
            );
        }
        let _ = reply.send(answer);
    }

    fn install(&mut self, node: NodeId, gen: u64, remote: Remote, kept: bool, comps: usize) {
        let path = self.model.path(EntityRef::Node(node));
        let addr = remote.addr;
        // Catch up first: the link is in order, so the node has every checkpoint before it
        // is given any work.
        for write in self.replication.snapshot() {
            remote.send(&ToAgent::Replica {
                origin: nines_node::wire::CATCH_UP,
                seq: 0,
                write: Some(write),
            });
        }
        let slot = &mut self.agents.slots[node.index()];
        slot.gen = gen;
        slot.remote = Some(remote);
        slot.last_addr = Some(addr);
        self.log_director(
            "node-joined",
            vec![
                ("node", json!(path)),
                ("addr", json!(addr.to_string())),
                ("kept", json!(kept)),
                ("components", json!(comps)),
            ],
        );
    }

    /// A node asks to join a running cluster.
    pub(crate) fn on_join(
        &mut self,
        node: NodeId,
        addr: SocketAddr,
        reply: oneshot::Sender<JoinAnswer>,
    ) {
        let slot = &self.agents.slots[node.index()];
        let answer = if slot.remote.is_some() {
            JoinAnswer::Refuse("this node is already joined".into())
        } else if self.engine.node_relinking(node) {
            // Its VM migrated and the migration cut its link: it may come back as it is.
            JoinAnswer::Welcome(true)
        } else if slot.fencing || self.engine.node_fencing(node) {
            JoinAnswer::Refuse("this node is being fenced; it may join once that is done".into())
        } else if self.engine.node_up(node) {
            JoinAnswer::Refuse("the node is still up in the engine".into())
        } else {
            JoinAnswer::Welcome(false)
        };
        self.answer_join(node, addr, answer, reply);
    }

    /// A node finished joining (it was reset: nothing runs on it; or it relinks after its
    /// VM's migration, keeping what it runs).
    pub(crate) fn on_joined(
        &mut self,
        node: NodeId,
        gen: u64,
        remote: Remote,
        adopted: &[Adopted],
    ) {
        let n = adopted.len();
        if self.agents.slots[node.index()].remote.is_none() && self.engine.node_relinking(node) {
            // Kept only if it runs exactly what the engine thinks it runs; otherwise the link
            // is closed, and the relink time runs out (the guest is lost, its VM reset).
            let mut theirs: Vec<_> = adopted.iter().map(|a| a.comp).collect();
            theirs.sort();
            let m = self.model.clone();
            let ours: Vec<_> = (0..m.comps.len() as u32)
                .map(nines_model::CompId)
                .filter(|c| {
                    self.engine.su_host(m.comps[c.index()].su) == node
                        && self.engine.comp_presence(*c) == nines_engine::Presence::Instantiated
                })
                .collect();
            let path = m.path(EntityRef::Node(node));
            if theirs != ours {
                self.log_director(
                    "relink-refused",
                    vec![
                        ("node", json!(path)),
                        (
                            "reason",
                            json!("it does not run what it ran before the migration"),
                        ),
                    ],
                );
                return;
            }
            self.install(node, gen, remote, true, n);
            let now = self.clock.now();
            self.feed(now, Input::NodeRelinked { node });
            return;
        }
        if self.agents.slots[node.index()].remote.is_some() || self.engine.node_up(node) {
            return; // raced with another join; dropping `remote` closes this link
        }
        self.install(node, gen, remote, false, n);
        let now = self.clock.now();
        self.feed(now, Input::NodeUp { node });
    }

    /// A node's link ended: the node is lost, and the engine fences it.
    pub(crate) fn on_lost(
        &mut self,
        node: NodeId,
        gen: u64,
        at: nines_engine::Instant,
        reason: String,
    ) {
        let slot = &mut self.agents.slots[node.index()];
        if slot.gen != gen || slot.remote.is_none() {
            return;
        }
        slot.remote = None;
        slot.pids.clear();
        self.forget_replication(node);
        let path = self.model.path(EntityRef::Node(node));
        self.log_director(
            "node-lost",
            vec![("node", json!(path)), ("reason", json!(reason))],
        );
        self.feed(at, Input::NodeLost { node });
    }

    /// The engine asks for a fence: isolate the node with the configured method.
    pub(crate) fn cluster_fence(&mut self, node: NodeId) {
        let Some(ctx) = self.agents.cluster.clone() else {
            return;
        };
        let path = self.model.path(EntityRef::Node(node));
        if let Some(reason) = self.deposed.as_ref().and_then(|d| d.borrow().clone()) {
            // Another director may lead (and have taken the node over): never fence for it.
            self.log_director(
                "fence-skipped",
                vec![
                    ("node", json!(path)),
                    ("reason", json!(format!("no longer the leader: {reason}"))),
                ],
            );
            return;
        }
        let slot = &mut self.agents.slots[node.index()];
        // Whatever the method does, this director stops talking to the node: its later
        // reports are void, and closing the link makes a surviving node join again, clean.
        slot.remote = None;
        slot.pids.clear();
        slot.gen += 1;
        slot.fencing = true;
        let addr = slot.last_addr;
        self.forget_replication(node);
        self.log_director(
            "fence",
            vec![
                ("node", json!(path)),
                ("method", json!(format!("{:?}", ctx.fence))),
            ],
        );
        run_fence(&ctx, node, addr);
    }

    /// A node's component pids changed.
    pub(crate) fn on_pids(
        &mut self,
        node: NodeId,
        gen: u64,
        pids: Vec<(nines_model::CompId, u32)>,
    ) {
        let slot = &mut self.agents.slots[node.index()];
        if slot.gen == gen {
            slot.pids = pids;
        }
    }

    /// A fence method finished.
    pub(crate) fn on_fence_result(&mut self, node: NodeId, result: Result<(), String>) {
        self.agents.slots[node.index()].fencing = false;
        let path = self.model.path(EntityRef::Node(node));
        let outcome = match &result {
            Ok(()) => {
                self.log_director("fence-done", vec![("node", json!(path))]);
                Outcome::Ok
            }
            Err(e) => {
                self.log_director(
                    "fence-failed",
                    vec![("node", json!(path)), ("error", json!(e))],
                );
                Outcome::Failed
            }
        };
        let now = self.clock.now();
        self.feed(now, Input::FenceDone { node, outcome });
    }
}
