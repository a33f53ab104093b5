//! The validated, immutable AMF information model.
//!
//! Everything the engine needs to decide is precomputed here once (entity paths, rank order,
//! which component of an SU serves which CSI), so the engine never parses or searches names.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::ids::{AppId, CompId, CsiId, NodeId, SgId, SiId, SuId};

/// A whole cluster's configuration after validation. Tables are indexed by the typed ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// Cluster name, shown in status and logs.
    pub cluster: String,
    /// Nodes, in config order.
    pub nodes: Vec<Node>,
    /// Applications, in config order.
    pub apps: Vec<App>,
    /// Service groups of every application.
    pub sgs: Vec<Sg>,
    /// Service units of every SG.
    pub sus: Vec<Su>,
    /// Components of every SU (each SU gets one of every component its SG declares).
    pub comps: Vec<Comp>,
    /// Service instances of every application.
    pub sis: Vec<Si>,
    /// Component service instances of every SI.
    pub csis: Vec<Csi>,
}

/// A "max failures within a window" rule; the basis of escalation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probation {
    /// How many recoveries of this level are tolerated inside the window before escalating.
    pub max: u32,
    /// The probation window.
    pub within: Duration,
}

/// A node of the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Node name; its entity path is `node/NAME`.
    pub name: String,
    /// SU failovers tolerated on this node before escalating to a node failover.
    pub su_failover: Probation,
    /// SUs configured on this node.
    pub sus: Vec<SuId>,
    /// The `vm` component whose guest *is* this node (a nested cluster: the app inside the
    /// VM is managed here like on any node, the VM by the node that runs it). The VM's life
    /// is the node's: the node is held while the VM stops and down once it is cleaned up, and
    /// fencing it means restarting that VM, never a fence command.
    pub vm: Option<CompId>,
}

/// An application.
#[derive(Clone, Debug, PartialEq)]
pub struct App {
    /// Application name; the first segment of its entities' paths.
    pub name: String,
    /// Its SGs.
    pub sgs: Vec<SgId>,
    /// Its SIs.
    pub sis: Vec<SiId>,
}

/// Redundancy model of an SG: how its SIs are spread over its SUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redundancy {
    /// One SU active for all SIs, one SU standby for all SIs.
    TwoN,
    /// `active_sus` SUs hold actives, `standby_sus` SUs hold standbys.
    NPlusM {
        /// Preferred number of SUs that hold active assignments.
        active_sus: u32,
        /// Preferred number of SUs that hold standby assignments.
        standby_sus: u32,
    },
    /// Every SU may hold actives for some SIs and standbys for others.
    NWay,
    /// Every SI is active on several SUs at once; no standbys.
    NWayActive,
    /// Each SI active on one SU, one SI per SU, no standby.
    NoRedundancy,
}

impl Redundancy {
    /// The name used in config files and status output.
    pub fn name(self) -> &'static str {
        match self {
            Redundancy::TwoN => "2n",
            Redundancy::NPlusM { .. } => "n+m",
            Redundancy::NWay => "n-way",
            Redundancy::NWayActive => "n-way-active",
            Redundancy::NoRedundancy => "no-redundancy",
        }
    }
}

/// A service group.
#[derive(Clone, Debug, PartialEq)]
pub struct Sg {
    /// Owning application.
    pub app: AppId,
    /// SG name.
    pub name: String,
    /// Entity path `app/sg`.
    pub path: String,
    /// Redundancy model.
    pub redundancy: Redundancy,
    /// Return work to the best-ranked SU once it is back in service (auto-adjust).
    pub fail_back: bool,
    /// Re-instantiate a failed-over SU automatically (otherwise it waits for `repaired`).
    pub auto_repair: bool,
    /// Component restarts tolerated per SU before escalating to an SU restart.
    pub comp_restart: Probation,
    /// SU restarts tolerated per SU before escalating to an SU failover.
    pub su_restart: Probation,
    /// Most SIs one SU may hold active (N+M, N-Way, N-Way-Active); `None` = unlimited.
    pub max_active_sis_per_su: Option<u32>,
    /// Most SIs one SU may hold standby (N+M, N-Way); `None` = unlimited.
    pub max_standby_sis_per_su: Option<u32>,
    /// SUs sorted by rank (best first; rank 1 beats rank 2), ties by config order.
    pub sus: Vec<SuId>,
    /// SIs protected by this SG, sorted by SI rank (most important first).
    pub sis: Vec<SiId>,
    /// Component names every SU of this SG has, in the order of `Su::comps`.
    pub component_names: Vec<String>,
}

/// A service unit: components that are instantiated, fail and recover together.
#[derive(Clone, Debug, PartialEq)]
pub struct Su {
    /// Owning SG.
    pub sg: SgId,
    /// SU name.
    pub name: String,
    /// Entity path `app/sg/su`.
    pub path: String,
    /// Node it runs on.
    pub node: NodeId,
    /// Rank: 1 is the most preferred.
    pub rank: u32,
    /// Start with admin state locked-instantiation (not instantiated until unlock-instantiation).
    pub locked_instantiation: bool,
    /// Components, in the order of `Sg::component_names`.
    pub comps: Vec<CompId>,
}

/// What a component is and how the agent drives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompKind {
    /// Links the client library: registers, takes CSI assignments, answers healthchecks.
    SaAware,
    /// A plain process driven by commands and watched by pidfd.
    Process,
    /// A virtual machine.
    Vm,
}

/// A recovery action a component's failure asks for (AMF's recommended recovery).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Recovery {
    /// Restart the component in place; its SU keeps its assignments.
    ComponentRestart,
    /// Fail the component's SU over: its SIs move to other SUs. In nines an SU fails as a whole.
    ComponentFailover,
    /// Fail over the faulty SU and gracefully switch over every other SU on the node.
    NodeSwitchover,
    /// Fail over every SU of the node.
    NodeFailover,
    /// Fence (reboot) the node and fail over every SU on it.
    NodeFailfast,
    /// Restart every SU of the application.
    ApplicationRestart,
    /// Restart every SU of the cluster.
    ClusterReset,
}

impl Recovery {
    /// The name used in config files, error reports and events.
    pub fn name(self) -> &'static str {
        match self {
            Recovery::ComponentRestart => "restart",
            Recovery::ComponentFailover => "failover",
            Recovery::NodeSwitchover => "node-switchover",
            Recovery::NodeFailover => "node-failover",
            Recovery::NodeFailfast => "node-failfast",
            Recovery::ApplicationRestart => "app-restart",
            Recovery::ClusterReset => "cluster-reset",
        }
    }

    /// Every recovery, for exhaustive tests and fault injection.
    pub const ALL: [Recovery; 7] = [
        Recovery::ComponentRestart,
        Recovery::ComponentFailover,
        Recovery::NodeSwitchover,
        Recovery::NodeFailover,
        Recovery::NodeFailfast,
        Recovery::ApplicationRestart,
        Recovery::ClusterReset,
    ];
}

/// Timeouts of the life-cycle commands and callbacks, enforced by the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Instantiate command (or SA-aware registration) must finish within this.
    pub instantiate: Duration,
    /// Graceful terminate must finish within this before the agent kills.
    pub terminate: Duration,
    /// Cleanup must finish within this, or the component is termination-failed.
    pub cleanup: Duration,
    /// An SA-aware component must answer a CSI callback within this.
    pub callback: Duration,
}

/// How often an SA-aware component is healthchecked and how long it may take to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Healthcheck {
    /// Interval between healthchecks.
    pub period: Duration,
    /// A healthcheck unanswered for this long is a failure.
    pub max_duration: Duration,
}

/// Retry rules for a failing instantiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstantiationPolicy {
    /// Immediate retries after the first failed attempt.
    pub retries: u32,
    /// Further retries, each after `retry_delay` (OpenSAF never implemented these).
    pub delayed_retries: u32,
    /// Delay before each delayed retry.
    pub retry_delay: Duration,
}

/// A component of one SU.
#[derive(Clone, Debug, PartialEq)]
pub struct Comp {
    /// Owning SU.
    pub su: SuId,
    /// Component name (the same in every SU of the SG).
    pub name: String,
    /// Entity path `app/sg/su/comp`.
    pub path: String,
    /// Kind.
    pub kind: CompKind,
    /// Command line that starts it (argv).
    pub instantiate: Vec<String>,
    /// Command that stops it gracefully; `None` = SIGTERM.
    pub terminate: Option<Vec<String>>,
    /// Command that cleans up after a failure; `None` = SIGKILL the process group.
    pub cleanup: Option<Vec<String>>,
    /// Optional external monitor command for non-SA-aware components.
    pub monitor: Option<Vec<String>>,
    /// Command and callback timeouts.
    pub timeouts: Timeouts,
    /// Healthcheck for SA-aware components.
    pub healthcheck: Option<Healthcheck>,
    /// Recovery used when a failure comes without a recommendation.
    pub recovery: Recovery,
    /// Instantiation retry rules.
    pub instantiation: InstantiationPolicy,
    /// What the agent runs for a `vm` component (`Some` exactly when `kind` is
    /// [`CompKind::Vm`]), with this SU's overrides applied. A vm component has no command
    /// lines: `instantiate` is empty, `terminate`, `cleanup` and `monitor` are `None`.
    pub vm: Option<VmConfig>,
    /// The node this VM component's guest is (the inverse of [`Node::vm`]).
    pub guest: Option<NodeId>,
}

/// How a VM's guest CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmAccel {
    /// QEMU's binary translator: slow, works everywhere.
    Tcg,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// KVM when the node's /dev/kvm is real, usable KVM, TCG otherwise. Decided by the agent
    /// when it starts the VM, since only the node knows its hardware.
    Auto,
}

impl VmAccel {
    /// The name used in config files.
    pub fn name(self) -> &'static str {
        match self {
            VmAccel::Tcg => "tcg",
            VmAccel::Kvm => "kvm",
            VmAccel::Auto => "auto",
        }
    }
}

/// Who runs a VM's QEMU on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmDriver {
    /// The agent spawns QEMU itself, as a direct child it watches and reaps (the fastest
    /// path, and what a node without libvirt can run).
    Qemu,
    /// The node's libvirt daemon runs QEMU (a domain defined from the same settings), for
    /// sites that manage their VMs with libvirt. Needs an agent built with libvirt support.
    Libvirt,
}

impl VmDriver {
    /// The name used in config files.
    pub fn name(self) -> &'static str {
        match self {
            VmDriver::Qemu => "qemu",
            VmDriver::Libvirt => "libvirt",
        }
    }
}

/// One port forward of a VM's user-mode network: `127.0.0.1:host` on the node reaches
/// `guest` in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmForward {
    /// TCP port on the node's loopback (unique among the VMs of one node).
    pub host: u16,
    /// TCP port in the guest.
    pub guest: u16,
}

/// How the agent asks a running guest whether its service is alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmProbe {
    /// `GET path` on `addr` must answer 200, and contain `expect` when set.
    Http {
        /// Where: `127.0.0.1` and one of the VM's forwarded host ports.
        addr: SocketAddr,
        /// The request path, starting with `/`.
        path: String,
        /// Text the answer's body must contain.
        expect: Option<String>,
    },
    /// A TCP connect to `addr` must succeed. Through a user-mode forward QEMU itself accepts
    /// the connection, so this does not see a hung guest (the loader warns).
    Tcp {
        /// Where: `127.0.0.1` and one of the VM's forwarded host ports.
        addr: SocketAddr,
    },
}

/// A VM's periodic health probe: what catches a hung guest while QEMU still runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmHealth {
    /// The probe.
    pub probe: VmProbe,
    /// Interval between probes (also while the guest boots).
    pub period: Duration,
    /// A probe without a good answer within this is a missed healthcheck.
    pub timeout: Duration,
}

/// A `vm` component: the guest QEMU runs and how its health is judged. Paths are not checked
/// at load (the files live on the node that runs the VM, maybe not where the config is
/// validated); the agent reports a bad one as a failed instantiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// The guest kernel (bzImage, or an ELF vmlinux with a PVH entry point).
    pub kernel: String,
    /// The initramfs, if any.
    pub initrd: Option<String>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// The accelerator.
    pub accel: VmAccel,
    /// Who runs QEMU: the agent itself or libvirt.
    pub driver: VmDriver,
    /// Port forwards of the guest's user-mode network.
    pub forwards: Vec<VmForward>,
    /// The health probe; `None`: the VM counts as instantiated once QEMU answers on its
    /// control socket, and a hung guest is not detected.
    pub health: Option<VmHealth>,
    /// Words added to the guest kernel's command line.
    pub cmdline_extra: Vec<String>,
    /// Planned maintenance of its node (lock or shutdown) live-migrates the running VM to
    /// another node of its SG instead of stopping it, so its guest keeps its memory, its
    /// connections and its boot; a failed migration falls back to what the node's admin
    /// operation does without it.
    pub migrate: bool,
}

/// A dependency of one SI on another (its sponsor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiDependency {
    /// The SI that must be active first.
    pub sponsor: SiId,
    /// How long the dependent may stay assigned while the sponsor is unassigned.
    pub tolerance: Duration,
}

/// A service instance: a unit of work assigned to SUs.
#[derive(Clone, Debug, PartialEq)]
pub struct Si {
    /// Owning application.
    pub app: AppId,
    /// SG that protects it.
    pub sg: SgId,
    /// SI name.
    pub name: String,
    /// Entity path `app/si`.
    pub path: String,
    /// Rank: 1 is the most important; assigned first, dropped last.
    pub rank: u32,
    /// Preferred number of active assignments (N-Way-Active; 1 elsewhere).
    pub preferred_active: u32,
    /// Preferred number of standby assignments (2N/N+M: 1, N-Way: configurable, else 0).
    pub preferred_standby: u32,
    /// SIs this one depends on.
    pub depends_on: Vec<SiDependency>,
    /// Its CSIs.
    pub csis: Vec<CsiId>,
}

/// A component service instance: the part of an SI one component serves.
#[derive(Clone, Debug, PartialEq)]
pub struct Csi {
    /// Owning SI.
    pub si: SiId,
    /// CSI name.
    pub name: String,
    /// Entity path `app/si/csi`.
    pub path: String,
    /// Position of the serving component in `Su::comps` of every SU of the SI's SG.
    pub comp_slot: usize,
    /// Attributes handed to the component (as `NINES_*` variables or over the protocol).
    pub attrs: BTreeMap<String, String>,
}

/// Any entity, as named by an entity path (`node/N`, `app`, `app/sg`, `app/sg/su`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntityRef {
    /// The whole cluster (`cluster`).
    Cluster,
    /// A node (`node/NAME`).
    Node(NodeId),
    /// An application (`app`).
    App(AppId),
    /// A service group (`app/sg`).
    Sg(SgId),
    /// A service unit (`app/sg/su`).
    Su(SuId),
    /// A component (`app/sg/su/comp`).
    Comp(CompId),
    /// A service instance (`app/si`).
    Si(SiId),
    /// A component service instance (`app/si/csi`).
    Csi(CsiId),
}

impl Model {
    /// The nodes an SG's SUs are configured on, each once, in the SG's rank order: where a
    /// live-migrating VM of the SG may run.
    pub fn sg_nodes(&self, sg: SgId) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = Vec::new();
        for su in &self.sgs[sg.index()].sus {
            let n = self.sus[su.index()].node;
            if !nodes.contains(&n) {
                nodes.push(n);
            }
        }
        nodes
    }

    /// The component of `su` that serves `csi`.
    #[inline]
    pub fn comp_for(&self, su: SuId, csi: CsiId) -> CompId {
        self.sus[su.index()].comps[self.csis[csi.index()].comp_slot]
    }

    /// Resolves an entity path as users type it. Names never contain `/` (validation ensures).
    pub fn find(&self, path: &str) -> Option<EntityRef> {
        if path == "cluster" {
            return Some(EntityRef::Cluster);
        }
        if let Some(name) = path.strip_prefix("node/") {
            return position(&self.nodes, |n| n.name == name).map(|i| EntityRef::Node(NodeId(i)));
        }
        let mut parts = path.split('/');
        let app_name = parts.next()?;
        let app = position(&self.apps, |a| a.name == app_name).map(AppId)?;
        let second = parts.next();
        let third = parts.next();
        let fourth = parts.next();
        if parts.next().is_some() {
            return None;
        }
        let Some(second) = second else {
            return Some(EntityRef::App(app));
        };
        let a = &self.apps[app.index()];
        if let Some(&sg) = a.sgs.iter().find(|s| self.sgs[s.index()].name == second) {
            let Some(third) = third else {
                return Some(EntityRef::Sg(sg));
            };
            let su = *self.sgs[sg.index()]
                .sus
                .iter()
                .find(|s| self.sus[s.index()].name == third)?;
            let Some(fourth) = fourth else {
                return Some(EntityRef::Su(su));
            };
            let comp = *self.sus[su.index()]
                .comps
                .iter()
                .find(|c| self.comps[c.index()].name == fourth)?;
            return Some(EntityRef::Comp(comp));
        }
        let si = *a.sis.iter().find(|s| self.sis[s.index()].name == second)?;
        match (third, fourth) {
            (None, _) => Some(EntityRef::Si(si)),
            (Some(csi_name), None) => self.sis[si.index()]
                .csis
                .iter()
                .find(|c| self.csis[c.index()].name == csi_name)
                .map(|&c| EntityRef::Csi(c)),
            _ => None,
        }
    }

    /// The entity path of an entity, as used in the CLI, the API, logs and events.
    pub fn path(&self, entity: EntityRef) -> String {
        match entity {
            EntityRef::Cluster => "cluster".to_string(),
            EntityRef::Node(n) => format!("node/{}", self.nodes[n.index()].name),
            EntityRef::App(a) => self.apps[a.index()].name.clone(),
            EntityRef::Sg(s) => self.sgs[s.index()].path.clone(),
            EntityRef::Su(s) => self.sus[s.index()].path.clone(),
            EntityRef::Comp(c) => self.comps[c.index()].path.clone(),
            EntityRef::Si(s) => self.sis[s.index()].path.clone(),
            EntityRef::Csi(c) => self.csis[c.index()].path.clone(),
        }
    }
}

fn position<T>(items: &[T], pred: impl Fn(&T) -> bool) -> Option<u32> {
    items.iter().position(pred).map(|i| i as u32)
}
