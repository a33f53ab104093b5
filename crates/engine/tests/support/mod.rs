//! A tiny scripted world for engine tests: it answers every action at once (successfully,
//! unless a test says otherwise), keeps timers, and offers lookups by entity path.
#![allow(dead_code)]

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use nines_engine::{
    Action, ActionKind, Command, Engine, Event, HaState, Input, Instant, Outcome, Timer,
};
use nines_model::{CompId, EntityRef, Model, NodeId, SiId, SuId};

pub struct World {
    pub engine: Engine,
    pub model: Arc<Model>,
    pub now: Instant,
    pub queue: VecDeque<Input>,
    pub timers: Vec<(Instant, Timer)>,
    pub log: Vec<Action>,
    /// Components whose instantiation fails.
    pub failing: BTreeSet<CompId>,
    /// When false, answers are queued but not delivered until `run`.
    pub auto: bool,
    /// Answer quiescing with QuiescingComplete.
    pub complete_quiescing: bool,
    /// Nodes fenced by the engine (the world reboots them only when a test says so).
    pub fenced: Vec<NodeId>,
    /// The live-migration step that fails: 1 prepare, 2 send, 3 finish (0: none).
    pub failing_migration_step: u8,
    next_request: u64,
}

pub fn load(yaml: &str) -> Arc<Model> {
    match nines_model::load(yaml, "test.yaml") {
        Ok(l) => Arc::new(l.model),
        Err(errors) => {
            let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            panic!("test config rejected:\n{}", text.join("\n"));
        }
    }
}

impl World {
    /// Loads `yaml`, starts the engine and runs until nothing is left to answer.
    pub fn start(yaml: &str) -> World {
        let mut w = World::new(yaml);
        w.feed(Input::Start);
        w
    }

    pub fn new(yaml: &str) -> World {
        let model = load(yaml);
        World {
            engine: Engine::new(model.clone()),
            model,
            now: Instant::ZERO,
            queue: VecDeque::new(),
            timers: Vec::new(),
            log: Vec::new(),
            failing: BTreeSet::new(),
            auto: true,
            complete_quiescing: true,
            fenced: Vec::new(),
            failing_migration_step: 0,
            next_request: 1,
        }
    }

    /// Handles one input, then (in auto mode) every answer it causes. Returns the actions of
    /// the whole exchange.
    pub fn feed(&mut self, input: Input) -> Vec<Action> {
        let start = self.log.len();
        self.step(input);
        if self.auto {
            self.run();
        }
        self.log[start..].to_vec()
    }

    fn step(&mut self, input: Input) {
        let actions = self.engine.handle(self.now, input);
        for a in &actions {
            self.answer(a);
        }
        self.log.extend(actions);
    }

    /// Delivers queued answers until none is left.
    pub fn run(&mut self) {
        let mut guard = 0;
        while let Some(input) = self.queue.pop_front() {
            self.step(input);
            guard += 1;
            assert!(guard < 100_000, "the engine does not settle");
        }
    }

    /// Moves time forward, firing due timers (and answering what they cause).
    pub fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            self.timers.sort();
            let due = self.timers.first().copied().filter(|(at, _)| *at <= until);
            let Some((at, timer)) = due else { break };
            self.timers.remove(0);
            self.now = self.now.max(at);
            self.feed(Input::TimerFired { timer });
        }
        self.now = until;
    }

    fn migration_outcome(&self, step: u8) -> Outcome {
        if self.failing_migration_step == step {
            Outcome::Failed
        } else {
            Outcome::Ok
        }
    }

    fn answer(&mut self, a: &Action) {
        let input = match a.kind {
            ActionKind::Instantiate { comp, .. } => Input::CommandDone {
                comp,
                command: Command::Instantiate,
                outcome: if self.failing.contains(&comp) {
                    Outcome::Failed
                } else {
                    Outcome::Ok
                },
            },
            ActionKind::Terminate { comp } => Input::CommandDone {
                comp,
                command: Command::Terminate,
                outcome: Outcome::Ok,
            },
            ActionKind::Cleanup { comp } => Input::CommandDone {
                comp,
                command: Command::Cleanup,
                outcome: Outcome::Ok,
            },
            ActionKind::AssignCsi {
                comp,
                csi,
                ha_state,
            } => {
                if ha_state == HaState::Quiescing && self.complete_quiescing {
                    self.queue.push_back(Input::CsiAssigned {
                        comp,
                        csi,
                        ha_state,
                        outcome: Outcome::Ok,
                    });
                    Input::QuiescingComplete { comp, csi }
                } else {
                    Input::CsiAssigned {
                        comp,
                        csi,
                        ha_state,
                        outcome: Outcome::Ok,
                    }
                }
            }
            ActionKind::RemoveCsi { comp, csi } => Input::CsiRemoved {
                comp,
                csi,
                outcome: Outcome::Ok,
            },
            ActionKind::Fence { node } => {
                self.fenced.push(node);
                Input::FenceDone {
                    node,
                    outcome: Outcome::Ok,
                }
            }
            ActionKind::MigrateIn { comp, .. } => Input::MigrationPrepared {
                comp,
                port: (self.failing_migration_step != 1).then_some(4444),
            },
            ActionKind::MigrateOut { comp, .. } => Input::MigrationSent {
                comp,
                outcome: self.migration_outcome(2),
            },
            ActionKind::MigrateFinish { comp, commit, .. } => {
                if !commit {
                    return;
                }
                Input::MigrationFinished {
                    comp,
                    outcome: self.migration_outcome(3),
                }
            }
            ActionKind::StartTimer { timer, at } => {
                self.timers.push((at, timer));
                return;
            }
            ActionKind::AdminReply { .. } | ActionKind::Record(_) => return,
        };
        self.queue.push_back(input);
    }

    // ---- lookups -------------------------------------------------------------------------

    pub fn entity(&self, path: &str) -> EntityRef {
        self.model
            .find(path)
            .unwrap_or_else(|| panic!("no entity {path}"))
    }
    pub fn su(&self, path: &str) -> SuId {
        match self.entity(path) {
            EntityRef::Su(s) => s,
            e => panic!("{path} is {e:?}, not an SU"),
        }
    }
    pub fn si(&self, path: &str) -> SiId {
        match self.entity(path) {
            EntityRef::Si(s) => s,
            e => panic!("{path} is {e:?}, not an SI"),
        }
    }
    pub fn comp(&self, path: &str) -> CompId {
        match self.entity(path) {
            EntityRef::Comp(c) => c,
            e => panic!("{path} is {e:?}, not a component"),
        }
    }
    pub fn node(&self, path: &str) -> NodeId {
        match self.entity(path) {
            EntityRef::Node(n) => n,
            e => panic!("{path} is {e:?}, not a node"),
        }
    }

    /// Paths of the SUs holding `si` in `ha` (confirmed), sorted.
    pub fn holders(&self, si: &str, ha: HaState) -> Vec<String> {
        let mut v: Vec<String> = self
            .engine
            .assignments(self.si(si))
            .into_iter()
            .filter(|a| a.ha_state == ha && a.confirmed)
            .map(|a| self.model.sus[a.su.index()].path.clone())
            .collect();
        v.sort();
        v
    }
    pub fn active(&self, si: &str) -> Vec<String> {
        self.holders(si, HaState::Active)
    }
    pub fn standby(&self, si: &str) -> Vec<String> {
        self.holders(si, HaState::Standby)
    }

    // ---- inputs --------------------------------------------------------------------------

    pub fn kill(&mut self, comp: &str) -> Vec<Action> {
        let comp = self.comp(comp);
        self.feed(Input::ComponentFailed {
            comp,
            kind: nines_engine::FaultKind::Exited,
            recommended: None,
        })
    }

    pub fn report(&mut self, comp: &str, r: nines_model::Recovery) -> Vec<Action> {
        let comp = self.comp(comp);
        self.feed(Input::ComponentFailed {
            comp,
            kind: nines_engine::FaultKind::ErrorReport,
            recommended: Some(r),
        })
    }

    /// Runs an admin op; returns the engine's reply.
    pub fn adm(
        &mut self,
        op: nines_engine::AdminOp,
        path: &str,
    ) -> Result<(), nines_engine::AdminError> {
        let target = self.entity(path);
        let request = self.next_request;
        self.next_request += 1;
        let actions = self.feed(Input::Admin {
            request,
            op,
            target,
        });
        actions
            .iter()
            .find_map(|a| match &a.kind {
                ActionKind::AdminReply { request: r, result } if *r == request => {
                    Some(result.clone())
                }
                _ => None,
            })
            .expect("every admin request gets a reply")
    }

    // ---- log queries ---------------------------------------------------------------------

    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.log.iter().filter_map(|a| match &a.kind {
            ActionKind::Record(e) => Some(e),
            _ => None,
        })
    }

    /// HA states the engine asked component `comp` to take, in order.
    pub fn requested(&self, comp: &str) -> Vec<HaState> {
        let c = self.comp(comp);
        self.log
            .iter()
            .filter_map(|a| match a.kind {
                ActionKind::AssignCsi { comp, ha_state, .. } if comp == c => Some(ha_state),
                _ => None,
            })
            .collect()
    }

    /// How many times `command` was issued to component `comp`.
    pub fn commands(&self, comp: &str, command: Command) -> usize {
        let c = self.comp(comp);
        self.count(|k| {
            matches!(
                (k, command),
                (ActionKind::Instantiate { comp, .. }, Command::Instantiate)
                    | (ActionKind::Terminate { comp }, Command::Terminate)
                    | (ActionKind::Cleanup { comp }, Command::Cleanup) if *comp == c
            )
        })
    }

    pub fn count(&self, pred: impl Fn(&ActionKind) -> bool) -> usize {
        self.log.iter().filter(|a| pred(&a.kind)).count()
    }

    /// Replays the log and asserts no SI ever had two actives (confirmed or requested) at once.
    pub fn assert_never_two_actives(&self) {
        use std::collections::BTreeMap;
        // (si, su) -> requested HA state, from AssignCsi/RemoveCsi and dropped assignments.
        let mut state: BTreeMap<(u32, u32), HaState> = BTreeMap::new();
        for a in &self.log {
            match &a.kind {
                ActionKind::AssignCsi {
                    comp,
                    csi,
                    ha_state,
                    ..
                } => {
                    let si = self.model.csis[csi.index()].si.0;
                    let su = self.model.comps[comp.index()].su.0;
                    state.insert((si, su), *ha_state);
                }
                ActionKind::Record(Event::Assignment {
                    si,
                    su,
                    ha_state: None,
                }) => {
                    state.remove(&(si.0, su.0));
                }
                _ => {}
            }
            let mut per_si: BTreeMap<u32, u32> = BTreeMap::new();
            for ((si, _), ha) in &state {
                if *ha == HaState::Active {
                    *per_si.entry(*si).or_default() += 1;
                }
            }
            for (si, n) in per_si {
                let sim = &self.model.sis[si as usize];
                let multi = self.model.sgs[sim.sg.index()].redundancy
                    == nines_model::Redundancy::NWayActive;
                assert!(
                    multi || n <= 1,
                    "{} had {n} actives at {:?}",
                    sim.path,
                    a.at
                );
            }
        }
    }
}

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}
