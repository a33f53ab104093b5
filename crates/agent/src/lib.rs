//! The node agent: carries out the engine's actions on one node and reports what happens.
//!
//! The engine decides; the agent does. [`AgentHandle::execute`] takes the engine's
//! [`ActionKind`]s for components of this node (instantiate, terminate, cleanup, CSI assignment
//! and removal) and carries them out on real processes (QEMU for a VM component); every fact it observes comes back on the
//! [`Report`] channel as an engine [`Input`](nines_engine::Input), stamped with the [`Clock`]
//! instant at which it was seen (an exit is stamped when its pidfd became readable, not when
//! the report was sent).
//!
//! # Code map
//!
//! * `actions`: the entry point for the engine's actions (which are ours, and when).
//! * `lifecycle`: instantiate / terminate / cleanup, one `CommandDone` each.
//! * `spawner`, `spawning`: component processes are started on one background thread at
//!   background CPU priority (restored once instantiated), so neither the engine's thread nor
//!   the services being recovered wait for a repair's start; VMs on another thread at the
//!   agent's priority (their boot is the repair); actions for a component whose spawn is in
//!   flight wait for it and run in order.
//! * `vm_migrate`: live migration of QEMU VMs between agents (the engine's `MigrateIn`,
//!   `MigrateOut`, `MigrateFinish`), and which agent owns a migrated VM.
//! * `vm`: VM components (`nines-vm`): QEMU spawned as a component process, instantiated once
//!   its guest is healthy, failed on its exit, on QMP's panic / shutdown / stop events and on a
//!   missed health probe; terminated by power-down, quit, then SIGKILL. `vm_libvirt`
//!   (feature `libvirt`): the same for `driver: libvirt`, the domain run by libvirtd and its
//!   QEMU watched through a pidfd and libvirt's lifecycle events.
//! * `pidfd`, `reaper`: process groups watched through pidfds; the agent is a child subreaper
//!   and reaps every child, tracked or orphaned.
//! * `spawn`, `env`, `commands`: command lines, environment, logs, CLC commands with timeouts.
//! * `socket`, `session`, `dispatch`, `csi`, `healthcheck`: the SA-aware Unix socket, sessions,
//!   and what travels over them; `healthcheck` watches AMF-invoked healthchecks (configured;
//!   the agent asks) and component-invoked ones (the component starts them and confirms on its
//!   own), and runs the external `monitor` command.
//! * `checkpoint`, `protection`, `host`: the checkpoint store and protection-group tracking,
//!   shared by the agents of one cluster in one process (one host).
//! * `agent`: the shared state (one record per component incarnation).
//! * `vip`: floating IPs (the CSI attribute `vip`): the address follows the CSI's confirmed
//!   active assignment, changed by one task per address, in order, before the answer.
//!
//! # Architecture invariants
//!
//! * The agent never decides recovery. It reports (`ComponentFailed`, `CommandDone`, ...) and
//!   waits for the engine's next action; the only thing it does on its own is to kill what is
//!   left of a component's process group when the component's main process exits.
//! * Every action that asks for an answer gets exactly one, and nothing is waited on forever:
//!   every wait is bounded by a configured timeout (plus [`REAP_GRACE`] after a SIGKILL).
//! * No polling: exits come from pidfds, orphans from SIGCHLD, answers from the socket, and
//!   timeouts from timers. The one periodic activity is what a component's configuration
//!   asks for: healthchecks, the monitor command, a VM's health probe (which also paces the
//!   wait for a booting guest).
//! * The agent keeps components running and supervised when nobody reads its reports: the
//!   [`Report`] receiver may be dropped.
//! * Nothing a component sends can crash the agent: a bad frame ends that component's session.
//!
//! # Sharing a process with the agent
//!
//! The agent reaps every child of its process that it did not spawn itself (orphans reparented
//! to it, as a subreaper). Other code in the same process must therefore not spawn children and
//! wait for them with `std::process` (the agent may reap them first); run such helpers as
//! components, or in another process.
//!
//! The runtime must have I/O and time enabled (`tokio::main` and `tokio::test` do). Dropping the
//! runtime without [`AgentHandle::shutdown`] SIGKILLs and reaps every component, so nothing runs
//! unsupervised.
#![warn(missing_docs)]

mod actions;
mod adopt;
mod agent;
mod checkpoint;
mod clock;
mod commands;
mod cpu_policy;
mod csi;
mod dispatch;
mod env;
mod healthcheck;
mod host;
mod lifecycle;
mod pidfd;
mod procfs;
mod protection;
mod reaper;
mod records;
mod session;
mod socket;
mod spawn;
mod spawner;
mod spawning;
mod vip;
mod vm;
mod vm_guest;
#[cfg(feature = "libvirt")]
mod vm_libvirt;
mod vm_migrate;
mod wire;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nines_engine::ActionKind;
use nines_model::{CompId, Model, NodeId};
use tokio::sync::mpsc;

pub use adopt::Adopted;
pub use checkpoint::{ReplicaWrite, Replicator, REPLICATION_TIMEOUT};
pub use clock::Clock;
pub use commands::REAP_GRACE;
pub use env::{csi_var, ENV_AGENT_SOCKET, ENV_COMPONENT, ENV_COMPONENT_PID, ENV_NODE};
pub use healthcheck::{MONITOR_PERIOD, MONITOR_TIMEOUT};
pub use session::OUTBOX;
pub use socket::REGISTER_WAIT;
pub use spawn::log_file;
pub use vip::{VIP_ATTR, VIP_TIMEOUT};
pub use vm_guest::GuestJoin;

use crate::agent::{Agent, Phase};

/// How long [`AgentHandle::shutdown`] waits, after every component is stopped, for the CLC
/// commands still running (monitors) to end and be reaped.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// What an agent needs to run one node.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The node this agent runs; actions for components of other nodes are ignored.
    pub node: NodeId,
    /// The cluster model (the same one the engine runs). Agents started with the same `Arc`
    /// in one process are on one host: they share checkpoints and protection groups, so pass
    /// every agent of a single-host run the same `Arc`.
    pub model: Arc<Model>,
    /// Path of the Unix socket for SA-aware components; created owner-only (0600). A stale
    /// socket file left by a dead agent is replaced.
    pub socket: PathBuf,
    /// Directory for component output (`<entity path with / as ->.log`); `None` discards it.
    pub log_dir: Option<PathBuf>,
    /// The clock that stamps every report; share it with the engine's driver.
    pub clock: Clock,
    /// Directory where the agent records the processes it runs (one small file each), so
    /// that an agent started after this one died can adopt them; `None` keeps no record.
    pub record_dir: Option<PathBuf>,
    /// Adopt the processes recorded in `record_dir` by an earlier agent of this node (see
    /// [`AgentHandle::adopted`]). When false they are killed: what a fenced node ran is
    /// stale.
    pub adopt: bool,
}

/// A fact for the engine, stamped with the instant it was observed.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// When it happened (as seen by the agent), on the agent's [`Clock`].
    pub at: nines_engine::Instant,
    /// What happened; pass it to the engine as is.
    pub input: nines_engine::Input,
}

/// Controls a running agent. Cheap to clone; every clone drives the same agent.
#[derive(Clone)]
pub struct AgentHandle {
    agent: Arc<Agent>,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle")
            .field("node", &self.agent.node)
            .field("socket", &self.agent.socket)
            .finish()
    }
}

/// Start an agent: become the process's child subreaper, bind the SA-aware socket, and start
/// reaping. Components are started only when the engine asks ([`AgentHandle::execute`]).
///
/// Fails if the node is not in the model, the socket path is taken by a live agent or is not a
/// socket, the log directory cannot be created, or the kernel lacks subreaper support.
pub async fn start(
    opts: AgentOptions,
) -> io::Result<(AgentHandle, mpsc::UnboundedReceiver<Report>)> {
    if opts.model.nodes.get(opts.node.index()).is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("node {} is not in the model", opts.node.0),
        ));
    }
    reaper::become_subreaper()?;
    if let Some(dir) = &opts.log_dir {
        std::fs::create_dir_all(dir)?;
    }
    let sigchld = reaper::sigchld()?;
    let records = records::Records::new(opts.record_dir)?;
    let listener = socket::bind(&opts.socket)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let agent = Arc::new(Agent::new(
        opts.node,
        opts.model,
        opts.socket,
        opts.log_dir,
        opts.clock,
        tokio::runtime::Handle::current(),
        tx,
        records,
    ));
    // Before anything can claim one: what this node held before (a fence, a crash) is stale.
    vip::release_node(&agent).wait().await;
    adopt::recorded(&agent, opts.adopt);
    tokio::spawn(reaper::sweep_loop(sigchld, agent.stop.subscribe()));
    tokio::spawn(socket::accept_loop(agent.clone(), listener));
    tracing::info!(
        node = %agent.model.nodes[agent.node.index()].name,
        socket = %agent.socket.display(),
        "agent started"
    );
    Ok((AgentHandle { agent }, rx))
}

impl AgentHandle {
    /// Carry out one engine action. Acts on component actions (instantiate, terminate,
    /// cleanup, assign and remove CSI, and a live migration's `MigrateOut`) for components of
    /// this node, on `MigrateIn` and `MigrateFinish` whose destination is this node, and
    /// ignores everything else, so a driver can hand every action to every agent. A
    /// `MigrateOut` sends to `127.0.0.1` (see [`migrate_out`](Self::migrate_out)). Never blocks: the work runs on the
    /// agent's runtime and its outcome arrives as a [`Report`]. May be called from any thread.
    pub fn execute(&self, action: &ActionKind) {
        let a = &self.agent;
        let _runtime = a.rt.enter();
        actions::dispatch(a, action);
    }

    /// Live migration, step 2, with the destination's address: send `comp`'s running VM to
    /// the QEMU that `MigrateIn` started on the destination node, listening on `dest` (the
    /// destination node's IP and the port its `MigrationPrepared` named), and answer
    /// `MigrationSent`. The engine's `MigrateOut` names only the destination node, whose
    /// address is the driver's to know: [`execute`](Self::execute) sends to `127.0.0.1`
    /// (every agent in one process, as in `nines run`); a driver whose agents are on other
    /// hosts calls this instead. Ignored unless this agent runs `comp`. Never blocks.
    pub fn migrate_out(&self, comp: CompId, dest: std::net::SocketAddr) {
        let a = &self.agent;
        let _runtime = a.rt.enter();
        actions::migrate_out(a, comp, dest);
    }

    /// The main process of every component this agent is running (or starting, or stopping),
    /// for status output. (A restarted agent adopts from its records, not from this.)
    pub fn pids(&self) -> Vec<(CompId, u32)> {
        let comps = self.agent.comps();
        let mut out: Vec<(CompId, u32)> = comps
            .iter()
            .filter(|(_, i)| i.phase != Phase::Exited && i.proc.exit_now().is_none())
            .map(|(c, i)| (*c, i.proc.pid()))
            .collect();
        out.sort();
        out
    }

    /// What this agent runs now (instantiated, not stopping), each component with the CSIs
    /// it confirmed: what an agent that reconnects to a director reports, so that a director
    /// that did not see this agent's history (a new leader) resumes instead of restarting.
    pub fn running(&self) -> Vec<Adopted> {
        let a = &self.agent;
        let comps = a.comps();
        let groups = a.host.groups();
        let mut out: Vec<Adopted> = comps
            .iter()
            .filter(|(_, i)| i.phase == Phase::Running && !i.failed)
            .filter(|(_, i)| i.proc.exit_now().is_none())
            .map(|(c, i)| Adopted {
                comp: *c,
                pid: i.proc.pid(),
                held: groups.held_by(*c),
            })
            .collect();
        out.sort_by_key(|x| x.comp);
        out
    }

    /// Plug in the carrier of this node's checkpoint writes to the other nodes (a cluster
    /// node does, before any component starts). Set once; later calls are ignored and
    /// return false.
    pub fn set_replicator(&self, replicator: Arc<dyn Replicator>) -> bool {
        self.agent.replicator.set(replicator).is_ok()
    }

    /// Tell the agent how the guests of its VMs join the cluster (the directors and the key),
    /// so that a VM whose guest is a node boots as that node. Without it (a single-host run)
    /// such a VM fails to instantiate. Set once; later calls are ignored and return false.
    pub fn set_guest_join(&self, join: GuestJoin) -> bool {
        self.agent.guest_join.set(join).is_ok()
    }

    /// Store a checkpoint write another node's active made, so that a standby here (or a
    /// component that becomes active here later) reads it. Refused (with the reason) only
    /// when the checkpoint would grow past what a read can return, as on the writer's node.
    pub fn apply_replica(&self, write: ReplicaWrite) -> Result<(), String> {
        self.agent.host.checkpoints.write(
            &write.checkpoint,
            &write.section,
            write.data,
            checkpoint::Durability::Local,
        )
    }

    /// Every checkpoint this node holds, for a node that joins later and must catch up.
    pub fn checkpoints(&self) -> Vec<ReplicaWrite> {
        self.agent.host.checkpoints.all()
    }

    /// The components this agent adopted when it started (see [`AgentOptions::adopt`]), once
    /// each SA-aware one has registered again and said which CSIs it holds; those that did
    /// not within their instantiate timeout are killed and left out. Call it once, before the
    /// engine is started: the engine's `Input::Resume` is built from it.
    pub async fn adopted(&self) -> Vec<Adopted> {
        adopt::settle(&self.agent).await
    }

    /// The node this agent runs.
    pub fn node(&self) -> NodeId {
        self.agent.node
    }

    /// The SA-aware socket path.
    pub fn socket(&self) -> &Path {
        &self.agent.socket
    }

    /// Stop the agent: refuse new work, close the socket (and remove its file), terminate every
    /// component as a `Terminate` would (without reporting), and wait until every process the
    /// agent started is reaped (bounded by the components' terminate timeouts, then
    /// [`SHUTDOWN_DRAIN`]).
    pub async fn shutdown(&self) {
        self.stop_all(false).await;
    }

    /// Like [`shutdown`](Self::shutdown), but every component's process group is SIGKILLed at
    /// once, without callbacks, commands or grace periods: what fencing (powering off) a node
    /// amounts to on one host, where the engine must not fail work over while anything of the
    /// node still runs. Returns once everything is reaped (bounded by [`REAP_GRACE`] and
    /// [`SHUTDOWN_DRAIN`]).
    pub async fn kill(&self) {
        self.stop_all(true).await;
    }

    async fn stop_all(&self, kill: bool) {
        let a = &self.agent;
        if a.stop.send_replace(true) {
            tracing::debug!("agent already stopping");
        }
        // First: the node stops serving now, and no claim is taken from here on.
        let released = vip::release_node(a);
        if let Err(e) = std::fs::remove_file(&a.socket) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(socket = %a.socket.display(), error = %e, "cannot remove socket");
            }
        }
        // A spawn in flight records its incarnation (or fails, seeing `stop`) before this
        // goes on, so no process started now escapes the stop below.
        if tokio::time::timeout(SHUTDOWN_DRAIN, spawning::all_settled(a))
            .await
            .is_err()
        {
            tracing::error!("component spawns still in flight at shutdown");
        }
        let comps: Vec<CompId> = a.comps().keys().copied().collect();
        let stops: Vec<_> = comps
            .into_iter()
            .map(|comp| {
                let a = a.clone();
                a.rt.clone().spawn(async move {
                    if kill {
                        lifecycle::kill_now(&a, comp).await;
                    } else {
                        lifecycle::stop_gracefully(&a, comp).await;
                    }
                })
            })
            .collect();
        for stop in stops {
            let _ = stop.await;
        }
        // Migration destinations are no components: nobody hears of them either.
        vm_migrate::discard_all(a).await;
        if tokio::time::timeout(SHUTDOWN_DRAIN, a.live.all_reaped())
            .await
            .is_err()
        {
            tracing::error!("processes still unreaped after shutdown");
        }
        released.wait().await;
        tracing::info!(socket = %a.socket.display(), killed = kill, "agent stopped");
    }
}
