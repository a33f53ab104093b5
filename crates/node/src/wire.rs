//! What agents and directors say to each other over a link.
//!
//! The messages mirror the engine's component actions and the facts an agent reports, but
//! they are their own types: the wire stays stable and versioned (the link's frames carry
//! `nines_proto::PROTOCOL_VERSION`) while the engine's enums evolve, and decoding checks every
//! index against the model both ends run, so a confused or malicious peer's message is
//! refused with a reason instead of indexing out of bounds.
//!
//! A connection goes: agent `Join` → director `Welcome` (the config, and whether the agent
//! keeps what runs) → agent `Running` (what it runs and holds) → then `Order`s one way and
//! `Report`s the other, until the link is lost.

use nines_engine::{ActionKind, Command, FaultKind, HaState, Input, Outcome};
use nines_model::{CompId, CsiId, Model, NodeId, Recovery};
use serde::{Deserialize, Serialize};

/// Messages from an agent to a director.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToDirector {
    /// First message on every connection. `incarnation` is random per agent process, so a
    /// director can tell a reconnecting agent from a restarted one in its logs.
    Join {
        /// Random per agent process.
        incarnation: u64,
    },
    /// Everything the agent runs, after a `Welcome` (empty after a reset).
    Running {
        /// One entry per running component.
        comps: Vec<RunningComp>,
    },
    /// A checkpoint write of an active here (or, with `write: None`, a barrier), numbered
    /// per connection; with `wait` the writer waits for `CheckpointAck{seq}`.
    Checkpoint {
        /// Per-connection sequence number.
        seq: u64,
        /// The write; `None` is a barrier (acknowledged after everything before it).
        write: Option<Replica>,
        /// Whether the writer waits for the acknowledgement.
        wait: bool,
    },
    /// The main process of every component the agent runs, whenever that changed (for
    /// status output: pids are the node's own, in its PID namespace).
    Pids(Vec<(u32, u32)>),
    /// A `Replica` from `origin`'s write `seq` is stored here.
    ReplicaAck {
        /// The node whose active wrote it.
        origin: u32,
        /// Its sequence number.
        seq: u64,
    },
    /// A fact, `age_ns` nanoseconds old when sent (the director stamps it on its own clock:
    /// agents and directors share no epoch).
    Report {
        /// How long before sending it was observed.
        age_ns: u64,
        /// What happened.
        fact: Fact,
    },
}

/// One component an agent runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunningComp {
    /// Component index in the model.
    pub comp: u32,
    /// Its main process (in the node's PID namespace).
    pub pid: u32,
    /// CSIs it holds: CSI index and HA state.
    pub held: Vec<(u32, WireHa)>,
}

/// Messages from a director to an agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToAgent {
    /// The answer to `Join`.
    Welcome {
        /// The cluster config (YAML); both ends run the model it describes.
        config: String,
        /// Keep (adopt) what runs; false: the node was fenced, so kill everything first.
        keep: bool,
    },
    /// Carry out a component action.
    Order(Order),
    /// Store another node's checkpoint write (or pass a barrier) and answer `ReplicaAck`.
    /// `origin` is `u32::MAX` for the catch-up a joining node gets (no answer needed).
    Replica {
        /// The writer's node.
        origin: u32,
        /// The writer's sequence number.
        seq: u64,
        /// The write; `None` for a barrier.
        write: Option<Replica>,
    },
    /// Every node that must have write `seq` (`Checkpoint{seq}`) has it, or why not.
    CheckpointAck {
        /// The write.
        seq: u64,
        /// `Ok`, or the reason it is not durable.
        result: Result<(), String>,
    },
}

/// One checkpoint section's new contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// Checkpoint name.
    pub checkpoint: String,
    /// Section name.
    pub section: String,
    /// Contents.
    pub data: Vec<u8>,
}

impl From<nines_agent::ReplicaWrite> for Replica {
    fn from(w: nines_agent::ReplicaWrite) -> Self {
        Replica {
            checkpoint: w.checkpoint,
            section: w.section,
            data: w.data,
        }
    }
}

impl From<Replica> for nines_agent::ReplicaWrite {
    fn from(r: Replica) -> Self {
        nines_agent::ReplicaWrite {
            checkpoint: r.checkpoint,
            section: r.section,
            data: r.data,
        }
    }
}

/// Catch-up replicas carry this origin: nobody waits for them.
pub const CATCH_UP: u32 = u32::MAX;

/// HA states on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum WireHa {
    Active,
    Standby,
    Quiescing,
    Quiesced,
}

/// A component action for the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Order {
    Instantiate {
        comp: u32,
        urgent: bool,
    },
    Terminate {
        comp: u32,
    },
    Cleanup {
        comp: u32,
    },
    AssignCsi {
        comp: u32,
        csi: u32,
        ha: WireHa,
    },
    RemoveCsi {
        comp: u32,
        csi: u32,
    },
    /// Live migration, step 1, to the destination node `to`.
    MigrateIn {
        comp: u32,
        to: u32,
    },
    /// Step 2, to the VM's node: send the VM to `ip:port` (the destination's address, which
    /// only the director knows).
    MigrateOut {
        comp: u32,
        to: u32,
        ip: std::net::IpAddr,
        port: u16,
    },
    /// Step 3, to the destination.
    MigrateFinish {
        comp: u32,
        to: u32,
        commit: bool,
    },
}

/// Command outcomes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum WireOutcome {
    Ok,
    Failed,
    TimedOut,
}

/// A fact an agent reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Fact {
    /// `command`: 0 instantiate, 1 terminate, 2 cleanup.
    CommandDone {
        comp: u32,
        command: u8,
        outcome: WireOutcome,
    },
    /// `kind`: 0 exited, 1 healthcheck missed, 2 error report; `recommended` indexes
    /// `Recovery::ALL`.
    ComponentFailed {
        comp: u32,
        kind: u8,
        recommended: Option<u8>,
    },
    CsiAssigned {
        comp: u32,
        csi: u32,
        ha: WireHa,
        outcome: WireOutcome,
    },
    CsiRemoved {
        comp: u32,
        csi: u32,
        outcome: WireOutcome,
    },
    QuiescingComplete {
        comp: u32,
        csi: u32,
    },
    MigrationPrepared {
        comp: u32,
        port: Option<u16>,
    },
    MigrationSent {
        comp: u32,
        outcome: WireOutcome,
    },
    MigrationFinished {
        comp: u32,
        outcome: WireOutcome,
    },
}

/// Why a message was refused: names the field and the bad value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value} is out of range (the model has {limit})")]
pub struct BadIndex {
    /// Which field.
    pub field: &'static str,
    /// The value received.
    pub value: u32,
    /// How many there are.
    pub limit: usize,
}

fn check(field: &'static str, value: u32, limit: usize) -> Result<u32, BadIndex> {
    if (value as usize) < limit {
        Ok(value)
    } else {
        Err(BadIndex {
            field,
            value,
            limit,
        })
    }
}

fn comp(m: &Model, c: u32) -> Result<CompId, BadIndex> {
    check("component", c, m.comps.len()).map(CompId)
}

fn node(m: &Model, n: u32) -> Result<NodeId, BadIndex> {
    Ok(NodeId(check("node", n, m.nodes.len())?))
}

fn csi(m: &Model, c: u32) -> Result<CsiId, BadIndex> {
    check("csi", c, m.csis.len()).map(CsiId)
}

impl From<HaState> for WireHa {
    fn from(h: HaState) -> Self {
        match h {
            HaState::Active => WireHa::Active,
            HaState::Standby => WireHa::Standby,
            HaState::Quiescing => WireHa::Quiescing,
            HaState::Quiesced => WireHa::Quiesced,
        }
    }
}

impl From<WireHa> for HaState {
    fn from(h: WireHa) -> Self {
        match h {
            WireHa::Active => HaState::Active,
            WireHa::Standby => HaState::Standby,
            WireHa::Quiescing => HaState::Quiescing,
            WireHa::Quiesced => HaState::Quiesced,
        }
    }
}

impl From<Outcome> for WireOutcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Ok => WireOutcome::Ok,
            Outcome::Failed => WireOutcome::Failed,
            Outcome::TimedOut => WireOutcome::TimedOut,
        }
    }
}

impl From<WireOutcome> for Outcome {
    fn from(o: WireOutcome) -> Self {
        match o {
            WireOutcome::Ok => Outcome::Ok,
            WireOutcome::Failed => Outcome::Failed,
            WireOutcome::TimedOut => Outcome::TimedOut,
        }
    }
}

impl Order {
    /// The order for a component action; `None` for actions that are not an agent's.
    pub fn from_action(a: &ActionKind) -> Option<Order> {
        Some(match *a {
            ActionKind::Instantiate { comp, urgent } => Order::Instantiate {
                comp: comp.0,
                urgent,
            },
            ActionKind::Terminate { comp } => Order::Terminate { comp: comp.0 },
            ActionKind::Cleanup { comp } => Order::Cleanup { comp: comp.0 },
            ActionKind::AssignCsi {
                comp,
                csi,
                ha_state,
            } => Order::AssignCsi {
                comp: comp.0,
                csi: csi.0,
                ha: ha_state.into(),
            },
            ActionKind::RemoveCsi { comp, csi } => Order::RemoveCsi {
                comp: comp.0,
                csi: csi.0,
            },
            ActionKind::MigrateIn { comp, to } => Order::MigrateIn {
                comp: comp.0,
                to: to.0,
            },
            ActionKind::MigrateFinish { comp, to, commit } => Order::MigrateFinish {
                comp: comp.0,
                to: to.0,
                commit,
            },
            // Needs the destination's address: see `Order::migrate_out`.
            _ => return None,
        })
    }

    /// The order for the engine's `MigrateOut`, with the destination's address.
    pub fn migrate_out(a: &ActionKind, ip: std::net::IpAddr) -> Option<Order> {
        match *a {
            ActionKind::MigrateOut { comp, to, port } => Some(Order::MigrateOut {
                comp: comp.0,
                to: to.0,
                ip,
                port,
            }),
            _ => None,
        }
    }

    /// The engine action, checked against the model.
    pub fn to_action(&self, m: &Model) -> Result<ActionKind, BadIndex> {
        Ok(match *self {
            Order::Instantiate { comp: c, urgent } => ActionKind::Instantiate {
                comp: comp(m, c)?,
                urgent,
            },
            Order::Terminate { comp: c } => ActionKind::Terminate { comp: comp(m, c)? },
            Order::Cleanup { comp: c } => ActionKind::Cleanup { comp: comp(m, c)? },
            Order::AssignCsi {
                comp: c,
                csi: s,
                ha,
            } => ActionKind::AssignCsi {
                comp: comp(m, c)?,
                csi: csi(m, s)?,
                ha_state: ha.into(),
            },
            Order::RemoveCsi { comp: c, csi: s } => ActionKind::RemoveCsi {
                comp: comp(m, c)?,
                csi: csi(m, s)?,
            },
            Order::MigrateIn { comp: c, to } => ActionKind::MigrateIn {
                comp: comp(m, c)?,
                to: node(m, to)?,
            },
            Order::MigrateOut {
                comp: c, to, port, ..
            } => ActionKind::MigrateOut {
                comp: comp(m, c)?,
                to: node(m, to)?,
                port,
            },
            Order::MigrateFinish {
                comp: c,
                to,
                commit,
            } => ActionKind::MigrateFinish {
                comp: comp(m, c)?,
                to: node(m, to)?,
                commit,
            },
        })
    }
}

impl Fact {
    /// The fact for an agent's report; `None` for inputs an agent never reports.
    pub fn from_input(i: &Input) -> Option<Fact> {
        Some(match *i {
            Input::CommandDone {
                comp,
                command,
                outcome,
            } => Fact::CommandDone {
                comp: comp.0,
                command: match command {
                    Command::Instantiate => 0,
                    Command::Terminate => 1,
                    Command::Cleanup => 2,
                },
                outcome: outcome.into(),
            },
            Input::ComponentFailed {
                comp,
                kind,
                recommended,
            } => Fact::ComponentFailed {
                comp: comp.0,
                kind: match kind {
                    FaultKind::Exited => 0,
                    FaultKind::HealthcheckMissed => 1,
                    FaultKind::ErrorReport => 2,
                },
                recommended: recommended
                    .and_then(|r| Recovery::ALL.iter().position(|x| *x == r))
                    .map(|i| i as u8),
            },
            Input::CsiAssigned {
                comp,
                csi,
                ha_state,
                outcome,
            } => Fact::CsiAssigned {
                comp: comp.0,
                csi: csi.0,
                ha: ha_state.into(),
                outcome: outcome.into(),
            },
            Input::CsiRemoved { comp, csi, outcome } => Fact::CsiRemoved {
                comp: comp.0,
                csi: csi.0,
                outcome: outcome.into(),
            },
            Input::QuiescingComplete { comp, csi } => Fact::QuiescingComplete {
                comp: comp.0,
                csi: csi.0,
            },
            Input::MigrationPrepared { comp, port } => {
                Fact::MigrationPrepared { comp: comp.0, port }
            }
            Input::MigrationSent { comp, outcome } => Fact::MigrationSent {
                comp: comp.0,
                outcome: outcome.into(),
            },
            Input::MigrationFinished { comp, outcome } => Fact::MigrationFinished {
                comp: comp.0,
                outcome: outcome.into(),
            },
            _ => return None,
        })
    }

    /// The engine input, checked against the model.
    pub fn to_input(&self, m: &Model) -> Result<Input, BadIndex> {
        Ok(match *self {
            Fact::CommandDone {
                comp: c,
                command,
                outcome,
            } => Input::CommandDone {
                comp: comp(m, c)?,
                command: match check("command", u32::from(command), 3)? {
                    0 => Command::Instantiate,
                    1 => Command::Terminate,
                    _ => Command::Cleanup,
                },
                outcome: outcome.into(),
            },
            Fact::ComponentFailed {
                comp: c,
                kind,
                recommended,
            } => Input::ComponentFailed {
                comp: comp(m, c)?,
                kind: match check("fault kind", u32::from(kind), 3)? {
                    0 => FaultKind::Exited,
                    1 => FaultKind::HealthcheckMissed,
                    _ => FaultKind::ErrorReport,
                },
                recommended: match recommended {
                    None => None,
                    Some(r) => Some(
                        Recovery::ALL
                            [check("recovery", u32::from(r), Recovery::ALL.len())? as usize],
                    ),
                },
            },
            Fact::CsiAssigned {
                comp: c,
                csi: s,
                ha,
                outcome,
            } => Input::CsiAssigned {
                comp: comp(m, c)?,
                csi: csi(m, s)?,
                ha_state: ha.into(),
                outcome: outcome.into(),
            },
            Fact::CsiRemoved {
                comp: c,
                csi: s,
                outcome,
            } => Input::CsiRemoved {
                comp: comp(m, c)?,
                csi: csi(m, s)?,
                outcome: outcome.into(),
            },
            Fact::QuiescingComplete { comp: c, csi: s } => Input::QuiescingComplete {
                comp: comp(m, c)?,
                csi: csi(m, s)?,
            },
            Fact::MigrationPrepared { comp: c, port } => Input::MigrationPrepared {
                comp: comp(m, c)?,
                port,
            },
            Fact::MigrationSent { comp: c, outcome } => Input::MigrationSent {
                comp: comp(m, c)?,
                outcome: outcome.into(),
            },
            Fact::MigrationFinished { comp: c, outcome } => Input::MigrationFinished {
                comp: comp(m, c)?,
                outcome: outcome.into(),
            },
        })
    }
}

impl RunningComp {
    /// The agent's account of an adopted (or running) component.
    pub fn from_adopted(a: &nines_agent::Adopted) -> RunningComp {
        RunningComp {
            comp: a.comp.0,
            pid: a.pid,
            held: a.held.iter().map(|(c, h)| (c.0, (*h).into())).collect(),
        }
    }

    /// Back to the agent's type, checked against the model.
    pub fn to_adopted(&self, m: &Model) -> Result<nines_agent::Adopted, BadIndex> {
        Ok(nines_agent::Adopted {
            comp: comp(m, self.comp)?,
            pid: self.pid,
            held: self
                .held
                .iter()
                .map(|(c, h)| Ok((csi(m, *c)?, HaState::from(*h))))
                .collect::<Result<_, BadIndex>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model() -> Model {
        let text = "cluster: c\nnodes: [n1, n2]\napps:\n  a:\n    sgs:\n      sg:\n        redundancy: 2n\n        units:\n          su-1: { node: n1 }\n          su-2: { node: n2 }\n        components:\n          p: { kind: sa-aware, instantiate: [true] }\n    sis:\n      si:\n        sg: sg\n        csis:\n          main: { component: p }\n";
        nines_model::load(text, "test").expect("valid").model
    }

    #[test]
    fn every_agent_action_and_fact_survives_the_wire() {
        let m = model();
        let (c, s) = (CompId(1), CsiId(0));
        let actions = [
            ActionKind::Instantiate {
                comp: c,
                urgent: true,
            },
            ActionKind::Instantiate {
                comp: c,
                urgent: false,
            },
            ActionKind::Terminate { comp: c },
            ActionKind::Cleanup { comp: c },
            ActionKind::AssignCsi {
                comp: c,
                csi: s,
                ha_state: HaState::Quiescing,
            },
            ActionKind::RemoveCsi { comp: c, csi: s },
            ActionKind::MigrateIn {
                comp: c,
                to: NodeId(0),
            },
            ActionKind::MigrateFinish {
                comp: c,
                to: NodeId(0),
                commit: true,
            },
            ActionKind::MigrateOut {
                comp: c,
                to: NodeId(0),
                port: 4444,
            },
        ];
        for a in actions {
            let ip = std::net::IpAddr::from([10, 0, 0, 2]);
            let order = Order::from_action(&a)
                .or_else(|| Order::migrate_out(&a, ip))
                .expect("an agent action");
            let bytes = postcard::to_stdvec(&ToAgent::Order(order)).expect("encodes");
            let ToAgent::Order(back) = postcard::from_bytes(&bytes).expect("decodes") else {
                panic!("not an order");
            };
            assert_eq!(back.to_action(&m), Ok(a));
        }
        let inputs = [
            Input::CommandDone {
                comp: c,
                command: Command::Cleanup,
                outcome: Outcome::TimedOut,
            },
            Input::ComponentFailed {
                comp: c,
                kind: FaultKind::ErrorReport,
                recommended: Some(Recovery::NodeFailfast),
            },
            Input::CsiAssigned {
                comp: c,
                csi: s,
                ha_state: HaState::Standby,
                outcome: Outcome::Failed,
            },
            Input::CsiRemoved {
                comp: c,
                csi: s,
                outcome: Outcome::Ok,
            },
            Input::QuiescingComplete { comp: c, csi: s },
            Input::MigrationPrepared {
                comp: c,
                port: Some(4444),
            },
            Input::MigrationSent {
                comp: c,
                outcome: Outcome::Failed,
            },
            Input::MigrationFinished {
                comp: c,
                outcome: Outcome::Ok,
            },
        ];
        for i in inputs {
            let fact = Fact::from_input(&i).expect("an agent fact");
            assert_eq!(fact.to_input(&m), Ok(i));
        }
        assert_eq!(
            Order::from_action(&ActionKind::Fence {
                node: nines_model::NodeId(0)
            }),
            None
        );
        assert_eq!(Fact::from_input(&Input::Start), None);
    }

    #[test]
    fn an_index_outside_the_model_is_refused_by_name() {
        let m = model();
        let e = Order::Instantiate {
            comp: 2,
            urgent: true,
        }
        .to_action(&m)
        .expect_err("2 comps");
        assert_eq!(e.field, "component");
        assert!(e.to_string().contains("component 2"), "{e}");
        let e = Fact::CommandDone {
            comp: 0,
            command: 3,
            outcome: WireOutcome::Ok,
        }
        .to_input(&m)
        .expect_err("no command 3");
        assert_eq!(e.field, "command");
        let e = Fact::ComponentFailed {
            comp: 0,
            kind: 0,
            recommended: Some(7),
        }
        .to_input(&m)
        .expect_err("7 recoveries");
        assert_eq!(e.field, "recovery");
    }

    proptest! {
        /// Whatever a peer sends, decoding either fails or yields a message whose indices are
        /// checked before use: never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let m = model();
            if let Ok(ToDirector::Report { fact, .. }) = postcard::from_bytes::<ToDirector>(&bytes) {
                let _ = fact.to_input(&m);
            }
            if let Ok(ToAgent::Order(o)) = postcard::from_bytes::<ToAgent>(&bytes) {
                let _ = o.to_action(&m);
            }
            if let Ok(ToDirector::Running { comps }) = postcard::from_bytes::<ToDirector>(&bytes) {
                for c in comps {
                    let _ = c.to_adopted(&m);
                }
            }
        }
    }
}
