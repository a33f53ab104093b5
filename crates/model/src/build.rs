//! [`RawConfig`] → [`Model`]: references, name clashes, redundancy rules and SI dependency
//! cycles, then the precomputed tables the engine relies on (rank order, component slots, paths).
//!
//! Like decoding, building never stops at the first problem; the model it returns is only used
//! when no error was reported.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::decode::kind_name as comp_kind_name;
use crate::defaults;
use crate::entities::{
    App, Comp, CompKind, Csi, EntityRef, Model, Node, Redundancy, Sg, Si, SiDependency, Su,
    VmConfig, VmDriver, VmProbe,
};
use crate::error::{Diagnostics, Pos};
use crate::ids::{AppId, CompId, CsiId, NodeId, SgId, SiId, SuId};
use crate::raw::{Entry, RawApp, RawComp, RawConfig, RawSg, RawSi, RawVm, RedundancyKind};

/// One VM host port forward, for the per-node uniqueness check.
struct PortUse {
    node: NodeId,
    port: u16,
    pos: Pos,
    /// Entity path of the VM component (`app/sg/su/comp`).
    comp: String,
}

/// Builds the model, reporting every relation problem into `diag`.
pub(crate) fn build(raw: &RawConfig, diag: &mut Diagnostics) -> Model {
    let mut model = Model {
        cluster: raw.cluster.clone(),
        nodes: Vec::new(),
        apps: Vec::new(),
        sgs: Vec::new(),
        sus: Vec::new(),
        comps: Vec::new(),
        sis: Vec::new(),
        csis: Vec::new(),
    };
    let mut node_ids: HashMap<&str, NodeId> = HashMap::new();
    for node in &raw.nodes {
        if node_ids.contains_key(node.name.as_str()) {
            diag.error(
                node.pos,
                &node.path,
                format!("node `{}` is listed twice", node.name),
            );
            continue;
        }
        node_ids.insert(&node.name, NodeId(model.nodes.len() as u32));
        model.nodes.push(Node {
            name: node.name.clone(),
            su_failover: node.item.su_failover,
            sus: Vec::new(),
            vm: None,
        });
    }
    let node_list = model
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let ctx = Ctx {
        raw,
        node_ids,
        node_list,
    };
    let mut ports = Vec::new();
    for (index, app) in raw.apps.iter().enumerate() {
        let app_id = AppId(index as u32);
        model.apps.push(App {
            name: app.name.clone(),
            sgs: Vec::new(),
            sis: Vec::new(),
        });
        ctx.app(&mut model, diag, app_id, app, &mut ports);
    }
    add_migration_ports(&model, &mut ports);
    check_host_ports(&model, diag, &ports);
    for (index, su) in model.sus.iter().enumerate() {
        if let Some(node) = model.nodes.get_mut(su.node.index()) {
            node.sus.push(SuId(index as u32));
        }
    }
    link_guests(&mut model, diag, raw);
    model
}

/// Resolves each node's `vm` (the VM component whose guest the node is): it must name a `vm`
/// component, no VM can be two nodes, and no node can run inside itself, not even through a
/// chain of VMs (its VM runs on a node that is, in the end, its own guest).
fn link_guests(model: &mut Model, diag: &mut Diagnostics, raw: &RawConfig) {
    for node in &raw.nodes {
        let Some(vm) = &node.item.vm else { continue };
        // (A name listed twice is reported already; the first one is the node.)
        let Some(id) = model.nodes.iter().position(|n| n.name == node.name) else {
            continue;
        };
        let field = format!("{}: vm", node.path);
        let comp = match model.find(&vm.value) {
            Some(EntityRef::Comp(c)) => c,
            _ => {
                diag.error(
                    vm.pos,
                    &field,
                    format!(
                        "`{}` is not a component (expected the path APP/SG/SU/COMP of a `kind: vm` component)",
                        vm.value
                    ),
                );
                continue;
            }
        };
        let c = &model.comps[comp.index()];
        if c.kind != CompKind::Vm {
            diag.error(
                vm.pos,
                &field,
                format!(
                    "`{}` is a {} component; only a `kind: vm` component has a guest that can be a node",
                    vm.value,
                    comp_kind_name(c.kind)
                ),
            );
            continue;
        }
        if let Some(other) = c.guest {
            diag.error(
                vm.pos,
                &field,
                format!(
                    "`{}` is already the VM of node/{}; one VM is one node",
                    vm.value,
                    model.nodes[other.index()].name
                ),
            );
            continue;
        }
        let me = NodeId(id as u32);
        // Walk down: the node the VM runs on, that node's VM's node, ... must never be `me`.
        let mut host = model.sus[c.su.index()].node;
        let mut steps = 0;
        let cyclic = loop {
            if host == me {
                break true;
            }
            match model.nodes[host.index()].vm {
                Some(up) if steps < model.nodes.len() => {
                    host = model.sus[model.comps[up.index()].su.index()].node;
                    steps += 1;
                }
                _ => break false,
            }
        };
        if cyclic {
            diag.error(
                vm.pos,
                &field,
                format!(
                    "`{}` runs on node/{} itself (directly or through other VMs); a node cannot run inside its own guest",
                    vm.value, node.name
                ),
            );
            continue;
        }
        model.comps[comp.index()].guest = Some(me);
        model.nodes[id].vm = Some(comp);
    }
}

/// What every app needs to see of the whole file.
struct Ctx<'r> {
    raw: &'r RawConfig,
    node_ids: HashMap<&'r str, NodeId>,
    /// Known node names, for "unknown node" messages.
    node_list: String,
}

impl Ctx<'_> {
    fn app(
        &self,
        model: &mut Model,
        diag: &mut Diagnostics,
        app_id: AppId,
        app: &Entry<RawApp>,
        ports: &mut Vec<PortUse>,
    ) {
        let mut sg_ids: HashMap<&str, SgId> = HashMap::new();
        for sg in &app.item.sgs {
            let id = self.sg(model, diag, app_id, sg, ports);
            sg_ids.insert(&sg.name, id);
            model.apps[app_id.index()].sgs.push(id);
        }
        let sg_list = app
            .item
            .sgs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");

        // First pass: ids, so dependencies can point forward.
        let first_si = model.sis.len();
        let mut si_ids: HashMap<&str, SiId> = HashMap::new();
        for (offset, si) in app.item.sis.iter().enumerate() {
            if sg_ids.contains_key(si.name.as_str()) {
                diag.error(
                    si.pos,
                    &si.path,
                    format!(
                        "SI `{}` has the same name as an SG of app `{}`; SGs and SIs share the \
                         entity path namespace `{}/NAME`",
                        si.name, app.name, app.name
                    ),
                );
            }
            si_ids.insert(&si.name, SiId((first_si + offset) as u32));
        }
        for si in &app.item.sis {
            let sg = match &si.item.sg {
                Some(name) => match sg_ids.get(name.value.as_str()) {
                    Some(&id) => Some(id),
                    None => {
                        diag.error(
                            name.pos,
                            &si.path,
                            format!(
                                "`sg`: unknown SG `{}` in app `{}` (its SGs: {})",
                                name.value,
                                app.name,
                                none_if_empty(&sg_list)
                            ),
                        );
                        None
                    }
                },
                None => None,
            };
            let id = self.si(model, diag, app_id, si, sg, &si_ids);
            model.apps[app_id.index()].sis.push(id);
        }
        check_cycles(model, diag, app, first_si);

        // Per-SG views that need all SIs.
        for &sg_id in &model.apps[app_id.index()].sgs {
            let sg = &model.sgs[sg_id.index()];
            let mut sis = sg.sis.clone();
            sis.sort_by_key(|si| model.sis[si.index()].rank);
            let raw_sg = &app.item.sgs[sg_id.index() - model.apps[app_id.index()].sgs[0].index()];
            if sg.redundancy == Redundancy::NoRedundancy && sis.len() > sg.sus.len() {
                diag.warning(
                    raw_sg.pos,
                    &sg.path,
                    format!(
                        "no-redundancy SG has {} SIs but only {} SUs; each SU takes one SI, so {} \
                         SI(s) will stay unassigned",
                        sis.len(),
                        sg.sus.len(),
                        sis.len() - sg.sus.len()
                    ),
                );
            }
            model.sgs[sg_id.index()].sis = sis;
        }
    }

    /// Adds one SG with its SUs and components; returns its id.
    fn sg(
        &self,
        model: &mut Model,
        diag: &mut Diagnostics,
        app: AppId,
        sg: &Entry<RawSg>,
        ports: &mut Vec<PortUse>,
    ) -> SgId {
        let id = SgId(model.sgs.len() as u32);
        let raw = &sg.item;
        let redundancy = self.redundancy(diag, sg);
        let component_names: Vec<String> = raw.components.iter().map(|c| c.name.clone()).collect();
        let mut sus = Vec::with_capacity(raw.units.len());
        for unit in &raw.units {
            let su_id = SuId(model.sus.len() as u32);
            let node = match &unit.item.node {
                Some(name) => match self.node_ids.get(name.value.as_str()) {
                    Some(&node) => node,
                    None => {
                        diag.error(
                            name.pos,
                            &unit.path,
                            format!(
                                "`node`: unknown node `{}` (known nodes: {})",
                                name.value,
                                none_if_empty(&self.node_list)
                            ),
                        );
                        NodeId(0)
                    }
                },
                None => NodeId(0),
            };
            check_vm_overrides(diag, sg, unit);
            let mut comps = Vec::with_capacity(raw.components.len());
            for comp in &raw.components {
                let comp_id = CompId(model.comps.len() as u32);
                let c = &comp.item;
                let path = format!("{}/{}", unit.path, comp.name);
                let vm = if c.kind == CompKind::Vm {
                    let over = unit.item.vm.iter().find(|o| o.name == comp.name);
                    vm_config(diag, comp, over, &path, node, ports)
                } else {
                    None
                };
                model.comps.push(Comp {
                    su: su_id,
                    name: comp.name.clone(),
                    path,
                    kind: c.kind,
                    instantiate: c.instantiate.clone(),
                    terminate: c.terminate.clone(),
                    cleanup: c.cleanup.clone(),
                    monitor: c.monitor.clone(),
                    timeouts: c.timeouts,
                    healthcheck: c.healthcheck,
                    recovery: c.recovery,
                    instantiation: c.instantiation,
                    vm,
                    guest: None,
                });
                comps.push(comp_id);
            }
            model.sus.push(Su {
                sg: id,
                name: unit.name.clone(),
                path: unit.path.clone(),
                node,
                rank: unit.item.rank,
                locked_instantiation: unit.item.locked_instantiation,
                comps,
            });
            sus.push(su_id);
        }
        // Stable: equal ranks keep config order.
        sus.sort_by_key(|su| model.sus[su.index()].rank);
        model.sgs.push(Sg {
            app,
            name: sg.name.clone(),
            path: sg.path.clone(),
            redundancy: redundancy.unwrap_or(Redundancy::NWay),
            fail_back: raw.fail_back,
            auto_repair: raw.auto_repair,
            comp_restart: raw.comp_restart,
            su_restart: raw.su_restart,
            max_active_sis_per_su: raw.max_active_sis_per_su.as_ref().map(|m| m.value),
            max_standby_sis_per_su: raw.max_standby_sis_per_su.as_ref().map(|m| m.value),
            sus,
            sis: Vec::new(),
            component_names,
        });
        id
    }

    /// The SG's redundancy model after checking the keys that only some models allow.
    /// `None` when the model itself was invalid (already reported by `decode`).
    fn redundancy(&self, diag: &mut Diagnostics, sg: &Entry<RawSg>) -> Option<Redundancy> {
        let raw = &sg.item;
        let kind = raw.redundancy.as_ref()?.value;
        let name = kind_name(kind);
        let only = |diag: &mut Diagnostics,
                    key: &str,
                    value: &Option<crate::raw::Sp<u32>>,
                    allowed: &[RedundancyKind],
                    list: &str| {
            if let Some(v) = value {
                if !allowed.contains(&kind) {
                    diag.error(
                        v.pos,
                        &sg.path,
                        format!("`{key}` is only for {list} SGs (this one is {name})"),
                    );
                }
            }
        };
        use RedundancyKind as K;
        only(diag, "active_sus", &raw.active_sus, &[K::NPlusM], "n+m");
        only(diag, "standby_sus", &raw.standby_sus, &[K::NPlusM], "n+m");
        only(
            diag,
            "max_active_sis_per_su",
            &raw.max_active_sis_per_su,
            &[K::NPlusM, K::NWay, K::NWayActive],
            "n+m, n-way and n-way-active",
        );
        only(
            diag,
            "max_standby_sis_per_su",
            &raw.max_standby_sis_per_su,
            &[K::NPlusM, K::NWay],
            "n+m and n-way",
        );
        let su_count = raw.units.len();
        Some(match kind {
            K::TwoN => {
                if su_count == 1 {
                    diag.warning(
                        sg.pos,
                        &sg.path,
                        "2n SG has only one SU: there is no standby to fail over to",
                    );
                }
                Redundancy::TwoN
            }
            K::NPlusM => {
                let mut missing = |key: &str, what: &str| {
                    diag.error(
                        sg.pos,
                        &sg.path,
                        format!("an n+m SG needs `{key}` ({what})"),
                    );
                };
                if raw.active_sus.is_none() {
                    missing("active_sus", "N, how many SUs hold active assignments");
                }
                if raw.standby_sus.is_none() {
                    missing("standby_sus", "M, how many SUs hold standby assignments");
                }
                let active_sus = raw.active_sus.as_ref().map_or(1, |v| v.value);
                let standby_sus = raw.standby_sus.as_ref().map_or(1, |v| v.value);
                let needed = u64::from(active_sus) + u64::from(standby_sus);
                if raw.active_sus.is_some()
                    && raw.standby_sus.is_some()
                    && (su_count as u64) < needed
                {
                    diag.error(
                        sg.pos,
                        &sg.path,
                        format!(
                            "n+m with active_sus {active_sus} and standby_sus {standby_sus} needs \
                             at least {needed} SUs, but `units` has {su_count}"
                        ),
                    );
                }
                Redundancy::NPlusM {
                    active_sus,
                    standby_sus,
                }
            }
            K::NWay => Redundancy::NWay,
            K::NWayActive => Redundancy::NWayActive,
            K::NoRedundancy => Redundancy::NoRedundancy,
        })
    }

    /// Adds one SI with its CSIs; returns its id. `sg` is `None` when it could not be resolved.
    fn si(
        &self,
        model: &mut Model,
        diag: &mut Diagnostics,
        app: AppId,
        si: &Entry<RawSi>,
        sg: Option<SgId>,
        si_ids: &HashMap<&str, SiId>,
    ) -> SiId {
        let id = SiId(model.sis.len() as u32);
        let raw = &si.item;
        // The redundancy rules need the SG's model; skip them if the SG or its model is invalid.
        let sg_info = sg.and_then(|sg_id| {
            let app_sgs = &self.raw.apps[app.index()].item.sgs;
            let first = model.apps[app.index()].sgs.first()?.index();
            let raw_sg = app_sgs.get(sg_id.index() - first)?;
            let kind = raw_sg.item.redundancy.as_ref()?.value;
            Some((sg_id, kind, raw_sg.item.units.len() as u32))
        });
        let (preferred_active, preferred_standby) = match sg_info {
            Some((_, kind, su_count)) => self.assignments(diag, si, kind, su_count),
            None => (1, 0),
        };

        let mut depends_on = Vec::new();
        for dep in &raw.depends_on {
            match si_ids.get(dep.name.as_str()) {
                Some(&sponsor) => depends_on.push(SiDependency {
                    sponsor,
                    tolerance: dep.item,
                }),
                None => {
                    let app_name = &self.raw.apps[app.index()].name;
                    let message = match self.other_app_si(&dep.name) {
                        Some(other) if other != app_name.as_str() => format!(
                            "`depends_on`: `{}` is an SI of app `{other}`; an SI may only depend \
                             on SIs of its own app",
                            dep.name
                        ),
                        _ => format!(
                            "`depends_on`: unknown SI `{}` in app `{app_name}` (its SIs: {})",
                            dep.name,
                            none_if_empty(
                                &self.raw.apps[app.index()]
                                    .item
                                    .sis
                                    .iter()
                                    .map(|s| s.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        ),
                    };
                    diag.error(dep.pos, &si.path, message);
                }
            }
        }

        let mut csis = Vec::with_capacity(raw.csis.len());
        for csi in &raw.csis {
            let csi_id = CsiId(model.csis.len() as u32);
            let mut comp_slot = 0;
            if let (Some(component), Some(sg_id)) = (&csi.item.component, sg) {
                let sg = &model.sgs[sg_id.index()];
                match sg
                    .component_names
                    .iter()
                    .position(|c| *c == component.value)
                {
                    Some(slot) => comp_slot = slot,
                    None => diag.error(
                        component.pos,
                        &csi.path,
                        format!(
                            "`component`: SG `{}` has no component `{}` (its components: {})",
                            sg.path,
                            component.value,
                            none_if_empty(&sg.component_names.join(", "))
                        ),
                    ),
                }
            }
            model.csis.push(Csi {
                si: id,
                name: csi.name.clone(),
                path: csi.path.clone(),
                comp_slot,
                attrs: csi.item.attrs.clone(),
            });
            csis.push(csi_id);
        }

        if let Some(sg_id) = sg {
            model.sgs[sg_id.index()].sis.push(id);
        }
        model.sis.push(Si {
            app,
            sg: sg.unwrap_or(SgId(0)),
            name: si.name.clone(),
            path: si.path.clone(),
            rank: raw.rank,
            preferred_active,
            preferred_standby,
            depends_on,
            csis,
        });
        id
    }

    /// Preferred (active, standby) assignment counts of an SI under its SG's redundancy model.
    fn assignments(
        &self,
        diag: &mut Diagnostics,
        si: &Entry<RawSi>,
        kind: RedundancyKind,
        su_count: u32,
    ) -> (u32, u32) {
        use RedundancyKind as K;
        let raw = &si.item;
        let name = kind_name(kind);
        let active = match (&raw.active, kind) {
            (Some(a), K::NWayActive) => {
                if a.value > su_count {
                    diag.warning(
                        a.pos,
                        &si.path,
                        format!(
                            "`active` is {} but the SG has only {su_count} SUs; at most \
                             {su_count} active assignments are possible",
                            a.value
                        ),
                    );
                }
                a.value
            }
            (None, K::NWayActive) => su_count.max(1),
            (Some(a), _) => {
                diag.error(
                    a.pos,
                    &si.path,
                    format!(
                        "`active` is only for SIs of n-way-active SGs (this SI's SG is {name})"
                    ),
                );
                1
            }
            (None, _) => 1,
        };
        let standby = match (&raw.standbys, kind) {
            (Some(s), K::TwoN | K::NPlusM) => {
                if s.value > 1 {
                    diag.error(
                        s.pos,
                        &si.path,
                        format!(
                            "`standbys` is {}, but a {name} SG keeps at most one standby per SI",
                            s.value
                        ),
                    );
                }
                s.value.min(1)
            }
            (None, K::TwoN | K::NPlusM) => 1,
            (Some(s), K::NWay) => {
                if s.value >= su_count {
                    diag.warning(
                        s.pos,
                        &si.path,
                        format!(
                            "`standbys` is {} but the SG has only {su_count} SUs; at most {} \
                             standbys are possible",
                            s.value,
                            su_count.saturating_sub(1)
                        ),
                    );
                }
                s.value
            }
            (None, K::NWay) => defaults::NWAY_STANDBYS,
            (Some(s), K::NWayActive | K::NoRedundancy) => {
                if s.value > 0 {
                    diag.error(
                        s.pos,
                        &si.path,
                        format!(
                            "`standbys` must be 0 for SIs of {name} SGs (they have no standbys)"
                        ),
                    );
                }
                0
            }
            (None, K::NWayActive | K::NoRedundancy) => 0,
        };
        (active, standby)
    }

    /// For a sponsor written as `app/si`: the app, if that app has such an SI.
    fn other_app_si<'a>(&self, name: &'a str) -> Option<&'a str> {
        let (app, si) = name.split_once('/')?;
        let found = self
            .raw
            .apps
            .iter()
            .any(|a| a.name == app && a.item.sis.iter().any(|s| s.name == si));
        found.then_some(app)
    }
}

/// Reports every SI dependency cycle of one app (SIs `first_si..`), naming it `a -> b -> a`.
fn check_cycles(model: &Model, diag: &mut Diagnostics, app: &Entry<RawApp>, first_si: usize) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let count = app.item.sis.len();
    let local = |id: SiId| id.index() - first_si;
    let mut mark = vec![Mark::New; count];
    for start in 0..count {
        if mark[start] != Mark::New {
            continue;
        }
        // Iterative DFS: (SI, next dependency to look at). Deep chains cannot overflow the stack.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = Mark::OnPath;
        while let Some(&mut (si, ref mut next)) = stack.last_mut() {
            let deps = &model.sis[first_si + si].depends_on;
            if *next >= deps.len() {
                mark[si] = Mark::Done;
                stack.pop();
                continue;
            }
            let edge = *next;
            *next += 1;
            let sponsor = local(deps[edge].sponsor);
            match mark[sponsor] {
                Mark::New => {
                    mark[sponsor] = Mark::OnPath;
                    stack.push((sponsor, 0));
                }
                Mark::OnPath => {
                    let from = stack.iter().position(|&(s, _)| s == sponsor).unwrap_or(0);
                    let mut names: Vec<&str> = stack[from..]
                        .iter()
                        .map(|&(s, _)| app.item.sis[s].name.as_str())
                        .collect();
                    names.push(&app.item.sis[sponsor].name);
                    let raw_si = &app.item.sis[si];
                    // The dependency entry that closes the cycle (resolved deps keep file order
                    // minus unknown names, so find it by name).
                    let pos = raw_si
                        .item
                        .depends_on
                        .iter()
                        .find(|d| d.name == app.item.sis[sponsor].name)
                        .map_or(raw_si.pos, |d| d.pos);
                    diag.error(
                        pos,
                        &raw_si.path,
                        format!("SI dependency cycle: {}", names.join(" -> ")),
                    );
                }
                Mark::Done => {}
            }
        }
    }
}

/// Every `units.SU.vm.COMP` override must name a vm component of the SG.
fn check_vm_overrides(diag: &mut Diagnostics, sg: &Entry<RawSg>, unit: &Entry<crate::raw::RawSu>) {
    for over in &unit.item.vm {
        match sg.item.components.iter().find(|c| c.name == over.name) {
            None => diag.error(
                over.pos,
                &over.path,
                format!(
                    "`vm`: SG `{}` has no component `{}` (its components: {})",
                    sg.path,
                    over.name,
                    none_if_empty(
                        &sg.item
                            .components
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                ),
            ),
            Some(c) if c.item.kind != CompKind::Vm => diag.error(
                over.pos,
                &over.path,
                format!(
                    "`vm`: component `{}` is `{}`, not a vm component",
                    over.name,
                    comp_kind_name(c.item.kind)
                ),
            ),
            Some(_) => {}
        }
    }
}

/// The VM of one SU's instance of `comp` (at entity path `path`, on `node`): the component's
/// `vm` block with the SU's override applied key by key, then the checks that need both (a
/// kernel somewhere; the probe aimed at one of this VM's own forwards). Records the host
/// ports for [`check_host_ports`]. `None` when the component's block is missing (reported).
fn vm_config(
    diag: &mut Diagnostics,
    comp: &Entry<RawComp>,
    over: Option<&Entry<RawVm>>,
    path: &str,
    node: NodeId,
    ports: &mut Vec<PortUse>,
) -> Option<VmConfig> {
    let base = comp.item.vm.as_ref()?;
    let over = over.map(|o| &o.item);
    // The override's key if it has it, else the component's.
    fn pick<'a, T>(
        base: &'a RawVm,
        over: Option<&'a RawVm>,
        f: impl Fn(&'a RawVm) -> Option<T>,
    ) -> Option<T> {
        over.and_then(&f).or_else(|| f(base))
    }
    let kernel = pick(base, over, |v| v.kernel.as_ref());
    if kernel.is_none() {
        diag.error(
            base.pos,
            path,
            "missing key `vm.kernel` (the guest kernel; in the component's `vm` block or in \
             this SU's `vm` override)",
        );
    }
    let forwards = pick(base, over, |v| v.forwards.as_ref())
        .cloned()
        .unwrap_or_default();
    let mut hosts: Vec<u16> = Vec::new();
    for f in &forwards {
        if hosts.contains(&f.value.host) {
            diag.error(
                f.pos,
                path,
                format!(
                    "`vm.forwards`: host port {} is forwarded twice",
                    f.value.host
                ),
            );
            continue;
        }
        hosts.push(f.value.host);
        ports.push(PortUse {
            node,
            port: f.value.host,
            pos: f.pos,
            comp: path.to_string(),
        });
    }
    let health = pick(base, over, |v| v.health.as_ref());
    if let Some(h) = health {
        if let Some(probe) = &h.value {
            check_probe(diag, &probe.probe, h.pos, path, &hosts);
        }
    }
    let driver = pick(base, over, |v| v.driver).unwrap_or(defaults::VM_DRIVER);
    let migrate = pick(base, over, |v| v.migrate.as_ref());
    if let Some(m) = migrate.filter(|m| m.value && driver == VmDriver::Libvirt) {
        diag.error(
            m.pos,
            path,
            "`vm.migrate`: live migration is implemented for `driver: qemu` only; a libvirt \
             VM is stopped and its SIs switch over when its node is locked",
        );
    }
    Some(VmConfig {
        kernel: kernel.map(|k| k.value.clone()).unwrap_or_default(),
        initrd: pick(base, over, |v| v.initrd.as_ref()).map(|i| i.value.clone()),
        memory_mib: pick(base, over, |v| v.memory_mib).unwrap_or(defaults::VM_MEMORY_MIB),
        cpus: pick(base, over, |v| v.cpus).unwrap_or(defaults::VM_CPUS),
        accel: pick(base, over, |v| v.accel).unwrap_or(defaults::VM_ACCEL),
        driver,
        forwards: forwards.iter().map(|f| f.value).collect(),
        health: health.and_then(|h| h.value.clone()),
        cmdline_extra: pick(base, over, |v| v.cmdline_extra.clone()).unwrap_or_default(),
        migrate: migrate.is_some_and(|m| m.value),
    })
}

/// A VM's guest is reachable only through its own forwards, which QEMU binds on 127.0.0.1: a
/// probe aimed elsewhere would judge another VM, or nothing. A TCP probe through a forward is
/// accepted by QEMU itself whatever the guest does, so it is legal but warned about.
fn check_probe(diag: &mut Diagnostics, probe: &VmProbe, pos: Pos, path: &str, hosts: &[u16]) {
    let (addr, key) = match probe {
        VmProbe::Http { addr, .. } => (addr, "vm.health.http"),
        VmProbe::Tcp { addr } => (addr, "vm.health.tcp"),
    };
    let listed = hosts
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(", ");
    if addr.ip() != IpAddr::V4(Ipv4Addr::LOCALHOST) || !hosts.contains(&addr.port()) {
        let forwards = if hosts.is_empty() {
            "this VM forwards no port (add `vm.forwards`)".to_string()
        } else {
            format!("this VM's forwards listen on {listed}")
        };
        diag.error(
            pos,
            path,
            format!(
                "`{key}`: the probe goes to {addr}, but {forwards}; QEMU binds forwards on \
                 127.0.0.1 only, so the probe must use one of them"
            ),
        );
    }
    if matches!(probe, VmProbe::Tcp { .. }) {
        diag.warning(
            pos,
            path,
            "a tcp probe through a port forward is answered by QEMU itself, so it does not \
             notice a hung guest; an http probe does",
        );
    }
}

/// A VM that may be live-migrated may run on any node of its SG: its host ports are in use
/// there too, as far as [`check_host_ports`] is concerned.
fn add_migration_ports(model: &Model, ports: &mut Vec<PortUse>) {
    let mut extra = Vec::new();
    for p in ports.iter() {
        let Some(comp) = model.comps.iter().find(|c| c.path == p.comp) else {
            continue;
        };
        if !comp.vm.as_ref().is_some_and(|v| v.migrate) {
            continue;
        }
        let Some(su) = model.sus.get(comp.su.index()) else {
            continue;
        };
        for node in model.sg_nodes(su.sg).into_iter().filter(|&n| n != p.node) {
            extra.push(PortUse {
                node,
                port: p.port,
                pos: p.pos,
                comp: p.comp.clone(),
            });
        }
    }
    ports.extend(extra);
}

/// No two VMs of one node may forward the same host port: the second QEMU would fail to
/// start. (VMs of different nodes may; nodes are different hosts.)
fn check_host_ports(model: &Model, diag: &mut Diagnostics, ports: &[PortUse]) {
    let mut first: HashMap<(NodeId, u16), &PortUse> = HashMap::new();
    for p in ports {
        match first.get(&(p.node, p.port)) {
            Some(earlier) if earlier.comp != p.comp => {
                let node = model
                    .nodes
                    .get(p.node.index())
                    .map_or("?", |n| n.name.as_str());
                diag.error(
                    p.pos,
                    &p.comp,
                    format!(
                        "`vm.forwards`: host port {} is also forwarded by `{}` on node `{node}`; \
                         VMs of one node need their own host ports (give an SU its own with \
                         `units.SU.vm.COMPONENT.forwards`; a VM with `vm.migrate` may run on \
                         any node of its SG)",
                        p.port, earlier.comp
                    ),
                );
            }
            Some(_) => {}
            None => {
                first.insert((p.node, p.port), p);
            }
        }
    }
}

fn kind_name(kind: RedundancyKind) -> &'static str {
    crate::decode::REDUNDANCY_NAMES
        .iter()
        .find(|(_, k)| *k == kind)
        .map_or("?", |(name, _)| *name)
}

fn none_if_empty(list: &str) -> &str {
    if list.is_empty() {
        "none"
    } else {
        list
    }
}
