//! The agent's shared state: one record per running component incarnation, and the helpers
//! every driver module uses to look things up and report facts.
//!
//! All state sits behind short-lived `std` mutexes that are never held across an `await`; the
//! work itself (waiting for exits, answers, timeouts) happens in small tasks that look the
//! record up again when they wake. A record's `gen` tells a task whether the incarnation it
//! was started for is still the current one, so a late timer or answer never acts on a
//! restarted component.
//!
//! Lock order: `comps` before the host's `groups`; a process's own lock (in `Proc`) is taken
//! under either.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nines_engine::{FaultKind, HaState, Input, Instant};
use nines_model::{Comp, CompId, CsiId, Model, NodeId, Recovery};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, Notify};

use crate::clock::Clock;
use crate::env;
use crate::host::{host_for, Host};
use crate::pidfd::{Live, Proc};
use crate::protection::ProtectionGroups;
use crate::records::Records;
use crate::session::SessionLink;
use crate::spawn;
use crate::spawning::SpawningMap;
use crate::vip::{self, NodeVip};
use crate::vm::VmRun;
use crate::Report;

/// Where an incarnation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Spawned; an SA-aware component has not registered yet, a VM is not healthy yet.
    Instantiating,
    /// Adopted from a previous agent (see [`crate::adopt`]); an SA-aware component has not
    /// registered again yet.
    Adopting,
    /// Instantiation was reported failed or timed out; the process may still run until the
    /// engine's cleanup.
    Abandoned,
    /// Instantiated and supervised.
    Running,
    /// A terminate or cleanup is under way.
    Stopping,
    /// The process ended on its own; kept so a cleanup command can still run for it.
    Exited,
}

/// One incarnation of a component: its process group and its session.
pub(crate) struct Incarnation {
    /// Distinguishes incarnations of the same component.
    pub gen: u64,
    /// The process group.
    pub proc: Arc<Proc>,
    /// Life-cycle phase.
    pub phase: Phase,
    /// A failure was reported for this incarnation; later ones are not (the engine is already
    /// recovering it), and its healthchecks and monitor stop.
    pub failed: bool,
    /// The SA-aware session, once registered.
    pub session: Option<Arc<SessionLink>>,
    /// What an adopted SA-aware component said it holds when it registered again.
    pub held: Vec<(CsiId, HaState)>,
    /// A VM component's QEMU spec and QMP connection.
    pub vm: Option<Arc<VmRun>>,
}

/// Everything an agent's tasks share.
pub(crate) struct Agent {
    pub node: NodeId,
    pub model: Arc<Model>,
    pub socket: PathBuf,
    pub log_dir: Option<PathBuf>,
    pub clock: Clock,
    pub rt: Handle,
    reports: mpsc::UnboundedSender<Report>,
    comps: Mutex<HashMap<CompId, Incarnation>>,
    /// Checkpoints and protection groups, shared with the other agents of this cluster in
    /// this process.
    pub host: Arc<Host>,
    pub live: Arc<Live>,
    next_id: AtomicU64,
    /// Woken when a component registers or exits (adoption waits on it).
    pub changed: Notify,
    /// Where running component processes are recorded for a later agent to adopt.
    pub records: Records,
    /// Components whose process is being started, and the actions waiting for them.
    pub spawning: watch::Sender<SpawningMap>,
    /// Set once at shutdown; stops the accept and sweep loops.
    pub stop: watch::Sender<bool>,
    /// Carries checkpoint writes to other nodes (cluster nodes only).
    pub replicator: std::sync::OnceLock<Arc<dyn crate::checkpoint::Replicator>>,
    /// How the guests of this node's VMs join (a cluster node sets it; see `vm_guest`).
    pub guest_join: std::sync::OnceLock<crate::vm_guest::GuestJoin>,
    /// The floating IPs this node's components could hold (CSIs with a `vip` attribute).
    pub vips: Vec<NodeVip>,
    /// Ownership changed by live migration, over the model's placement: `true` for a VM
    /// migrated in here (or whose migration in was committed and failed: the engine recovers
    /// it here), `false` for one migrated out. See [`Agent::owns`].
    moved: Mutex<HashMap<CompId, bool>>,
    /// Migration destinations: QEMUs waiting for (or holding) a VM's incoming state, not yet
    /// taken over (see [`crate::vm_migrate`]). Not incarnations: nothing reports for them.
    incoming: Mutex<HashMap<CompId, crate::vm_migrate::Waiting>>,
}

impl Agent {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        node: NodeId,
        model: Arc<Model>,
        socket: PathBuf,
        log_dir: Option<PathBuf>,
        clock: Clock,
        rt: Handle,
        reports: mpsc::UnboundedSender<Report>,
        records: Records,
    ) -> Agent {
        let (vips, bad) = vip::of_node(&model, node);
        for (csi, text, e) in bad {
            tracing::error!(
                csi = %model.csis[csi.index()].path,
                vip = %text,
                "bad floating IP attribute; an active assignment of this CSI will fail: {e}"
            );
        }
        Agent {
            node,
            host: host_for(&model),
            vips,
            model,
            socket,
            log_dir,
            clock,
            rt,
            reports,
            comps: Mutex::new(HashMap::new()),
            live: Arc::new(Live::default()),
            next_id: AtomicU64::new(1),
            spawning: watch::channel(SpawningMap::new()).0,
            changed: Notify::new(),
            records,
            stop: watch::channel(false).0,
            replicator: std::sync::OnceLock::new(),
            guest_join: std::sync::OnceLock::new(),
            moved: Mutex::new(HashMap::new()),
            incoming: Mutex::new(HashMap::new()),
        }
    }

    /// Hand a fact to the engine's driver. A receiver that is gone is not an error: the agent
    /// keeps its components running without anyone listening.
    pub(crate) fn report(&self, at: Instant, input: Input) {
        tracing::debug!(?input, at = at.as_nanos(), "report");
        let _ = self.reports.send(Report { at, input });
    }

    /// A fresh id for generations, invocations and sessions (unique per agent).
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether `comp` exists and runs on this agent's node: where the model places it, unless
    /// a live migration moved it here or away (the engine's SU host is runtime state, and
    /// this is the agent's side of it).
    pub(crate) fn owns(&self, comp: CompId) -> bool {
        let placed = self
            .model
            .comps
            .get(comp.index())
            .and_then(|c| self.model.sus.get(c.su.index()))
            .map(|su| su.node == self.node);
        let Some(placed) = placed else {
            return false;
        };
        self.moved_lock().get(&comp).copied().unwrap_or(placed)
    }

    /// Records that a migration moved `comp` here (`true`) or away (`false`).
    pub(crate) fn set_owned(&self, comp: CompId, owned: bool) {
        self.moved_lock().insert(comp, owned);
    }

    fn moved_lock(&self) -> MutexGuard<'_, HashMap<CompId, bool>> {
        self.moved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The migration destinations waiting here.
    pub(crate) fn incoming(&self) -> MutexGuard<'_, HashMap<CompId, crate::vm_migrate::Waiting>> {
        self.incoming.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The model entry of a component this agent owns (check [`Agent::owns`] first).
    pub(crate) fn comp(&self, comp: CompId) -> &Comp {
        &self.model.comps[comp.index()]
    }

    /// Whether `csi` is a valid CSI id (the engine's ids are trusted, but never to panic on).
    pub(crate) fn valid_csi(&self, csi: CsiId) -> bool {
        self.model.csis.get(csi.index()).is_some()
    }

    pub(crate) fn comps(&self) -> MutexGuard<'_, HashMap<CompId, Incarnation>> {
        self.comps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Log file of a component, when the agent has a log directory.
    pub(crate) fn log_path(&self, comp: CompId) -> Option<PathBuf> {
        self.log_dir
            .as_deref()
            .map(|d| spawn::log_file(d, &self.comp(comp).path))
    }

    /// The component's environment.
    pub(crate) fn env(&self, comp: CompId) -> Vec<(String, String)> {
        env::component_env(&self.model, comp, self.node, &self.socket)
    }

    /// A CLC command's environment: the component's, plus its pid when it runs.
    pub(crate) fn command_env(&self, comp: CompId, pid: Option<u32>) -> Vec<(String, String)> {
        let mut e = self.env(comp);
        if let Some(pid) = pid {
            e.push((env::ENV_COMPONENT_PID.to_string(), pid.to_string()));
        }
        e
    }

    /// Report a failure of incarnation `gen`, once. Returns whether it was reported.
    pub(crate) fn fail(
        &self,
        comp: CompId,
        gen: u64,
        kind: FaultKind,
        recommended: Option<Recovery>,
        at: Instant,
    ) -> bool {
        let mut comps = self.comps();
        let Some(inc) = comps.get_mut(&comp) else {
            return false;
        };
        if inc.gen != gen || inc.phase != Phase::Running || inc.failed {
            return false;
        }
        inc.failed = true;
        drop(comps);
        self.report(
            at,
            Input::ComponentFailed {
                comp,
                kind,
                recommended,
            },
        );
        true
    }

    /// Record a confirmed assignment change for protection groups.
    pub(crate) fn set_membership(&self, comp: CompId, csi: CsiId, ha: Option<HaState>) {
        self.groups().set(&self.model, comp, csi, ha);
    }

    pub(crate) fn groups(&self) -> MutexGuard<'_, ProtectionGroups> {
        self.host.groups()
    }
}

/// Resolves once the agent is stopping (or gone), for `select!` arms of loops that end with it.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
