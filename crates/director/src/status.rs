//! The status document: every entity's states and every SI's assignments at one instant, as
//! `nines status` shows it and `nines status --json` prints it. Built by the engine loop (the
//! only owner of the engine), so it is one consistent snapshot.

use std::collections::HashMap;

use nines_engine::{Engine, Instant};
use nines_model::{CompId, EntityRef, NodeId, SgId, SiId, SuId};
use serde::{Deserialize, Serialize};

use crate::names;

/// The whole runtime at one instant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Cluster name.
    pub cluster: String,
    /// Which start of `nines run` this is (see the event log).
    pub run: u64,
    /// Engine instant of the snapshot (nanoseconds since this run's clock started).
    pub t_ns: u64,
    /// The cluster's admin state.
    pub admin: String,
    /// Faults whose service recovery or repair is still awaited.
    pub open_faults: usize,
    /// Every node.
    pub nodes: Vec<NodeStatus>,
    /// Every application.
    pub apps: Vec<AppStatus>,
    /// Every SG, with its SUs and SIs.
    pub sgs: Vec<SgStatus>,
}

/// A node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `node/NAME`.
    pub path: String,
    /// Whether the engine considers it up.
    pub up: bool,
    /// Admin state.
    pub admin: String,
}

/// An application.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    /// Its name (which is its path).
    pub path: String,
    /// Admin state.
    pub admin: String,
}

/// A service group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgStatus {
    /// `app/sg`.
    pub path: String,
    /// Redundancy model (`2n`, `n+m`, ...).
    pub redundancy: String,
    /// Admin state.
    pub admin: String,
    /// Its SUs, in rank order.
    pub sus: Vec<SuStatus>,
    /// Its SIs, in rank order.
    pub sis: Vec<SiStatus>,
}

/// A service unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuStatus {
    /// `app/sg/su`.
    pub path: String,
    /// `node/NAME` it runs on.
    pub node: String,
    /// Rank (1 is the most preferred).
    pub rank: u32,
    /// Admin state.
    pub admin: String,
    /// Operational state.
    pub oper: String,
    /// Presence state.
    pub presence: String,
    /// Readiness.
    pub readiness: String,
    /// Its components.
    pub components: Vec<CompStatus>,
}

/// A component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompStatus {
    /// `app/sg/su/comp`.
    pub path: String,
    /// Presence state.
    pub presence: String,
    /// Process id, while the agent has a process for it.
    pub pid: Option<u32>,
}

/// A service instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiStatus {
    /// `app/si`.
    pub path: String,
    /// Admin state.
    pub admin: String,
    /// Assignment state (`fully-assigned`, ...).
    pub state: String,
    /// Who holds it.
    pub assignments: Vec<AssignmentStatus>,
}

/// One SU's share of an SI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssignmentStatus {
    /// `app/sg/su`.
    pub su: String,
    /// `active`, `standby`, `quiescing`, `quiesced`.
    pub ha_state: String,
    /// Whether every component confirmed it.
    pub confirmed: bool,
}

impl Status {
    /// Snapshot of `engine` at `now`; `pids` are the agents' running processes.
    pub fn build(engine: &Engine, run: u64, now: Instant, pids: &[(CompId, u32)]) -> Status {
        let m = engine.model();
        let pids: HashMap<CompId, u32> = pids.iter().copied().collect();
        let admin = |e: EntityRef| {
            names::admin(
                engine
                    .admin_state(e)
                    .unwrap_or(nines_engine::AdminState::Unlocked),
            )
            .to_string()
        };
        let su_status = |su: SuId| {
            let s = &m.sus[su.index()];
            SuStatus {
                path: s.path.clone(),
                node: m.path(EntityRef::Node(engine.su_host(su))),
                rank: s.rank,
                admin: admin(EntityRef::Su(su)),
                oper: names::oper(engine.su_oper(su)).to_string(),
                presence: names::presence(engine.su_presence(su)).to_string(),
                readiness: names::readiness(engine.su_readiness(su)).to_string(),
                components: s
                    .comps
                    .iter()
                    .map(|&c| CompStatus {
                        path: m.comps[c.index()].path.clone(),
                        presence: names::presence(engine.comp_presence(c)).to_string(),
                        pid: pids.get(&c).copied(),
                    })
                    .collect(),
            }
        };
        let si_status = |si: SiId| SiStatus {
            path: m.sis[si.index()].path.clone(),
            admin: admin(EntityRef::Si(si)),
            state: names::si_state(engine.si_state(si)).to_string(),
            assignments: engine
                .assignments(si)
                .iter()
                .map(|a| AssignmentStatus {
                    su: m.sus[a.su.index()].path.clone(),
                    ha_state: a.ha_state.name().to_string(),
                    confirmed: a.confirmed,
                })
                .collect(),
        };
        Status {
            cluster: m.cluster.clone(),
            run,
            t_ns: now.as_nanos(),
            admin: admin(EntityRef::Cluster),
            open_faults: engine.open_faults(),
            nodes: (0..m.nodes.len() as u32)
                .map(NodeId)
                .map(|n| NodeStatus {
                    path: m.path(EntityRef::Node(n)),
                    up: engine.node_up(n),
                    admin: admin(EntityRef::Node(n)),
                })
                .collect(),
            apps: (0..m.apps.len() as u32)
                .map(|a| AppStatus {
                    path: m.apps[a as usize].name.clone(),
                    admin: admin(EntityRef::App(nines_model::AppId(a))),
                })
                .collect(),
            sgs: (0..m.sgs.len() as u32)
                .map(SgId)
                .map(|sg| {
                    let g = &m.sgs[sg.index()];
                    SgStatus {
                        path: g.path.clone(),
                        redundancy: g.redundancy.name().to_string(),
                        admin: admin(EntityRef::Sg(sg)),
                        sus: g.sus.iter().map(|&su| su_status(su)).collect(),
                        sis: g.sis.iter().map(|&si| si_status(si)).collect(),
                    }
                })
                .collect(),
        }
    }

    /// The SU holding `si` in `ha_state` (the first, for models with several actives).
    pub fn holder(&self, si: &str, ha_state: &str) -> Option<&str> {
        self.sgs
            .iter()
            .flat_map(|g| &g.sis)
            .find(|s| s.path == si)?
            .assignments
            .iter()
            .find(|a| a.ha_state == ha_state)
            .map(|a| a.su.as_str())
    }

    /// The SU with this path.
    pub fn su(&self, path: &str) -> Option<&SuStatus> {
        self.sgs
            .iter()
            .flat_map(|g| &g.sus)
            .find(|s| s.path == path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nines_engine::Input;
    use std::sync::Arc;

    #[test]
    fn a_fresh_engine_reports_everything_uninstantiated() {
        let text = "\
cluster: t
nodes: [n1, n2]
apps:
  a:
    sgs:
      sg:
        redundancy: 2n
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
        components:
          c: { kind: process, instantiate: [/bin/true] }
    sis:
      si: { sg: sg, rank: 1, csis: { main: { component: c } } }
";
        let m = match nines_model::load(text, "t.yaml") {
            Ok(l) => Arc::new(l.model),
            Err(e) => panic!("{e:?}"),
        };
        let mut e = Engine::new(m);
        let s = Status::build(&e, 1, Instant::ZERO, &[]);
        assert_eq!(s.sgs.len(), 1);
        assert_eq!(s.sgs[0].redundancy, "2n");
        assert_eq!(s.sgs[0].sus[0].presence, "uninstantiated");
        assert_eq!(s.nodes[1].path, "node/n2");
        e.handle(Instant::ZERO, Input::Start);
        let s = Status::build(&e, 1, Instant::ZERO, &[(CompId(0), 42)]);
        let su = s.su("a/sg/su-1").expect("su-1");
        assert_eq!(su.components[0].presence, "instantiating");
        assert_eq!(su.components[0].pid, Some(42));
        assert_eq!(su.node, "node/n1");
        assert_eq!(s.holder("a/si", "active"), None);
        let json = serde_json::to_string(&s).expect("json");
        let back: Status = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, s);
    }
}
