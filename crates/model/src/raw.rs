//! The config file's shape, decoded but not yet cross-checked.
//!
//! Each value is typed and range-checked already (by `decode`); what is left for `build` are
//! the relations between entities (references, name clashes, redundancy rules, cycles). Raw
//! entities keep their names, entity paths and positions so `build` can point at them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::entities::{
    CompKind, Healthcheck, InstantiationPolicy, Probation, Recovery, Timeouts, VmAccel, VmDriver,
    VmForward, VmHealth,
};
use crate::error::Pos;

/// A value and where it was written.
#[derive(Clone, Debug)]
pub(crate) struct Sp<T> {
    pub value: T,
    pub pos: Pos,
}

/// A named entity: a map entry whose key is the entity's name.
#[derive(Clone, Debug)]
pub(crate) struct Entry<T> {
    pub name: String,
    /// Position of the name (the map key).
    pub pos: Pos,
    /// Entity path, for messages.
    pub path: String,
    pub item: T,
}

/// The whole file.
#[derive(Clone, Debug, Default)]
pub(crate) struct RawConfig {
    pub cluster: String,
    pub nodes: Vec<Entry<RawNode>>,
    /// Where `nodes` was written (or the document start when missing).
    pub nodes_pos: Pos,
    pub apps: Vec<Entry<RawApp>>,
}

#[derive(Clone, Debug)]
pub(crate) struct RawNode {
    pub su_failover: Probation,
    /// `vm`: the entity path of the VM component whose guest is this node, and where it was
    /// written.
    pub vm: Option<Sp<String>>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct RawApp {
    pub sgs: Vec<Entry<RawSg>>,
    pub sis: Vec<Entry<RawSi>>,
}

/// The redundancy model as named in the file; N+M's sizes are separate keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RedundancyKind {
    TwoN,
    NPlusM,
    NWay,
    NWayActive,
    NoRedundancy,
}

#[derive(Clone, Debug)]
pub(crate) struct RawSg {
    /// `None` when missing or invalid (already reported); redundancy rules are then skipped.
    pub redundancy: Option<Sp<RedundancyKind>>,
    pub active_sus: Option<Sp<u32>>,
    pub standby_sus: Option<Sp<u32>>,
    pub fail_back: bool,
    pub auto_repair: bool,
    pub max_active_sis_per_su: Option<Sp<u32>>,
    pub max_standby_sis_per_su: Option<Sp<u32>>,
    pub comp_restart: Probation,
    pub su_restart: Probation,
    pub units: Vec<Entry<RawSu>>,
    pub components: Vec<Entry<RawComp>>,
}

#[derive(Clone, Debug)]
pub(crate) struct RawSu {
    /// `None` when missing or invalid (already reported).
    pub node: Option<Sp<String>>,
    pub rank: u32,
    pub locked_instantiation: bool,
    /// `vm:` overrides of this SU, by component name (checked against the SG's components in
    /// `build`).
    pub vm: Vec<Entry<RawVm>>,
}

#[derive(Clone, Debug)]
pub(crate) struct RawComp {
    pub kind: CompKind,
    pub instantiate: Vec<String>,
    pub terminate: Option<Vec<String>>,
    pub cleanup: Option<Vec<String>>,
    pub monitor: Option<Vec<String>>,
    pub timeouts: Timeouts,
    pub healthcheck: Option<Healthcheck>,
    pub recovery: Recovery,
    pub instantiation: InstantiationPolicy,
    /// The `vm` block (vm components only; a missing one is already reported).
    pub vm: Option<RawVm>,
}

/// A `vm` block, of a component or of an SU's override: every key optional here, because an
/// override gives only what differs. `build` merges the two (an override's key replaces the
/// component's) and checks what the result must have. A key whose value was bad (already
/// reported) is present with a placeholder, so no "missing key" follows the real error.
#[derive(Clone, Debug, Default)]
pub(crate) struct RawVm {
    /// Where the block was written.
    pub pos: Pos,
    pub kernel: Option<Sp<String>>,
    pub initrd: Option<Sp<String>>,
    pub memory_mib: Option<u32>,
    pub cpus: Option<u32>,
    pub accel: Option<VmAccel>,
    pub driver: Option<VmDriver>,
    pub forwards: Option<Vec<Sp<VmForward>>>,
    /// `None` inside: given, but bad.
    pub health: Option<Sp<Option<VmHealth>>>,
    pub cmdline_extra: Option<Vec<String>>,
    pub migrate: Option<Sp<bool>>,
}

#[derive(Clone, Debug)]
pub(crate) struct RawSi {
    /// `None` when missing or invalid (already reported).
    pub sg: Option<Sp<String>>,
    pub rank: u32,
    pub active: Option<Sp<u32>>,
    pub standbys: Option<Sp<u32>>,
    /// Sponsors by name (as written) with their tolerance.
    pub depends_on: Vec<Entry<Duration>>,
    pub csis: Vec<Entry<RawCsi>>,
}

#[derive(Clone, Debug)]
pub(crate) struct RawCsi {
    /// `None` when missing or invalid (already reported).
    pub component: Option<Sp<String>>,
    pub attrs: BTreeMap<String, String>,
}
