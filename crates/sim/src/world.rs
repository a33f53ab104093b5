//! One simulated run: a seeded world around one engine.
//!
//! The world owns virtual time and an event queue ordered by (time, sequence number). It
//! answers every action the engine emits after a random delay, injects faults and admin
//! operations between answers, and checks the invariants after every `handle` call. Nothing
//! here iterates a hash map or reads a clock, so the seed alone decides the run.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use nines_engine::{
    ActionKind, AdminOp, AdminState, Command, Event, FaultKind, HaState, Input, Instant, OperState,
    Outcome, Presence, Timer,
};
use nines_model::{
    AppId, CompId, CompKind, CsiId, EntityRef, Model, NodeId, Recovery, SgId, SiId, SuId,
};

use crate::check::{self, AdminBook, FaultBook, Found, SimEngine};
use crate::fmt;
use crate::rng::Rng;
use crate::RunStats;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

/// How many inputs and actions before a violation a trace shows.
const TRACE_TAIL: usize = 40;
/// Events one quiet wait may take before the run is declared a livelock.
const MAX_EVENTS_PER_WAIT: u64 = 200_000;
/// Inputs one run may take in all before it is declared a livelock.
const MAX_INPUTS_PER_RUN: u64 = 2_000_000;

/// How much a run records besides its statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Nothing: the fast path for thousands of runs.
    Fast,
    /// A violation carries its trace (injections plus the last inputs and actions).
    Trace,
    /// As `Trace`, and every input and action goes to `RunStats::log`.
    Verbose,
}

/// What the queue holds.
#[derive(Clone, Debug)]
enum Pending {
    /// An answer from the agent of `node` (dropped if the node dies first).
    Answer { input: Input, node: NodeId },
    /// An engine timer.
    Timer(Timer),
    /// Membership noticed that a node died.
    NodeDown(NodeId),
    /// Membership lost contact with a node (dead or cut off; the engine must fence it).
    NodeLost(NodeId),
    /// A node finished rebooting.
    NodeUp(NodeId),
    /// A guest whose link a migration cut joins again, keeping what it runs.
    Relink(NodeId),
    /// The fencing device finished.
    FenceDone(NodeId),
}

#[derive(Debug)]
struct Queued {
    at: Instant,
    seq: u64,
    what: Pending,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One line of a trace, formatted only when a violation needs it.
#[derive(Clone, Debug)]
enum TraceItem {
    In(Input),
    Out(ActionKind),
    Note(String),
}

#[derive(Clone, Debug)]
struct TraceLine {
    step: u64,
    at: Instant,
    item: TraceItem,
}

/// A run's outcome before it is turned into a public `Violation`.
#[derive(Clone, Debug)]
pub struct Failure {
    pub step: u64,
    pub found: Found,
    pub trace: Vec<String>,
}

/// Precomputed lookups so the hot path never searches the model.
struct Index {
    /// SGs with an SU on each node.
    node_sgs: Vec<Vec<SgId>>,
    /// SG of each component.
    comp_sg: Vec<SgId>,
    /// Time past which a pending timer no longer keeps the world from being "quiet".
    far: u64,
}

impl Index {
    fn new(m: &Model) -> Index {
        let mut node_sgs = vec![Vec::new(); m.nodes.len()];
        for su in &m.sus {
            let list: &mut Vec<SgId> = &mut node_sgs[su.node.index()];
            if !list.contains(&su.sg) {
                list.push(su.sg);
            }
        }
        for l in &mut node_sgs {
            l.sort();
        }
        let comp_sg = m.comps.iter().map(|c| m.sus[c.su.index()].sg).collect();
        let mut far = 60 * SEC;
        for c in &m.comps {
            far = far.max(dur(c.instantiation.retry_delay).saturating_mul(2));
        }
        for s in &m.sis {
            for d in &s.depends_on {
                far = far.max(dur(d.tolerance).saturating_mul(2));
            }
        }
        Index {
            node_sgs,
            comp_sg,
            far,
        }
    }
}

fn dur(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The world of one run.
pub struct World<'m, E: SimEngine> {
    m: &'m Model,
    engine: E,
    rng: Rng,
    mode: Mode,
    idx: Index,
    now: Instant,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    /// Queued items that are not timers: while any exist, answers are outstanding.
    non_timers: usize,
    /// Whether each node is really up (the engine learns it later, through NodeDown/NodeUp).
    alive: Vec<bool>,
    /// A NodeUp (reboot) is queued for the node.
    rebooting: Vec<bool>,
    /// Last answer instant per component: one component's answers arrive in order.
    fifo: Vec<Instant>,
    /// End phase: every answer is quick and successful.
    healing: bool,
    /// Whether each component's process really runs (what a restarted driver would adopt).
    running: Vec<bool>,
    /// The node each component runs on: its SU's node, until a live migration moves it.
    comp_host: Vec<NodeId>,
    /// The CSIs each SA-aware component has accepted and holds, in which HA state: what it
    /// would say when it registers again with a restarted driver.
    held: Vec<Vec<(CsiId, HaState)>>,
    /// `handle` calls so far.
    step: u64,
    next_request: u64,
    admin: AdminBook,
    faults: FaultBook,
    dirty: Vec<bool>,
    dirty_list: Vec<SgId>,
    tail: VecDeque<TraceLine>,
    injected: Vec<TraceLine>,
    pub stats: RunStats,
}

impl<'m, E: SimEngine> World<'m, E> {
    /// A world for `engine`, seeded with `seed`.
    pub fn new(m: &'m Model, engine: E, seed: u64, mode: Mode) -> World<'m, E> {
        World {
            m,
            engine,
            rng: Rng::new(seed),
            mode,
            idx: Index::new(m),
            now: Instant::ZERO,
            queue: BinaryHeap::new(),
            seq: 0,
            non_timers: 0,
            // A guest node is not there until its VM booted.
            alive: m.nodes.iter().map(|n| n.vm.is_none()).collect(),
            rebooting: vec![false; m.nodes.len()],
            fifo: vec![Instant::ZERO; m.comps.len()],
            healing: false,
            running: vec![false; m.comps.len()],
            comp_host: m.comps.iter().map(|c| m.sus[c.su.index()].node).collect(),
            held: vec![Vec::new(); m.comps.len()],
            step: 0,
            next_request: 1,
            admin: AdminBook::default(),
            faults: FaultBook::default(),
            dirty: vec![false; m.sgs.len()],
            dirty_list: Vec::new(),
            tail: VecDeque::new(),
            injected: Vec::new(),
            stats: RunStats {
                seed,
                ..RunStats::default()
            },
        }
    }

    /// The whole run: start, `steps` injections, heal, final checks.
    pub fn run(&mut self, steps: u32) -> Result<(), Failure> {
        let result = self.run_inner(steps).map_err(|found| self.failure(found));
        self.stats.virtual_time = Duration::from_nanos(self.now.as_nanos());
        result
    }

    fn run_inner(&mut self, steps: u32) -> Result<(), Found> {
        self.feed(Input::Start)?;
        for _ in 0..steps {
            let gap = if self.rng.chance(400) {
                self.run_until_quiet()?;
                self.rng.range(MS, 100 * MS)
            } else {
                self.rng.range(0, 200 * MS)
            };
            self.run_until(self.now + Duration::from_nanos(gap))?;
            self.inject()?;
        }
        self.heal()
    }

    fn failure(&self, found: Found) -> Failure {
        let trace = if self.mode == Mode::Fast {
            Vec::new()
        } else {
            let mut t = Vec::new();
            t.push(format!(
                "injected ({} faults, node deaths and admin operations):",
                self.injected.len()
            ));
            for l in &self.injected {
                t.push(self.line(l));
            }
            t.push(format!(
                "last {} inputs and actions before the violation:",
                self.tail.len()
            ));
            for l in &self.tail {
                t.push(self.line(l));
            }
            t
        };
        Failure {
            step: self.step,
            found,
            trace,
        }
    }

    fn line(&self, l: &TraceLine) -> String {
        let (arrow, text) = match &l.item {
            TraceItem::In(i) => ("<-", fmt::input(self.m, i)),
            TraceItem::Out(a) => ("->", fmt::action(self.m, a)),
            TraceItem::Note(s) => ("**", s.clone()),
        };
        format!("#{:<6} {:>12} {} {}", l.step, fmt::time(l.at), arrow, text)
    }

    fn remember(&mut self, item: TraceItem) {
        if self.mode == Mode::Fast {
            return;
        }
        let l = TraceLine {
            step: self.step,
            at: self.now,
            item,
        };
        if self.mode == Mode::Verbose {
            let s = self.line(&l);
            self.stats.log.push(s);
        }
        // Keep the last lines, but never cut into the step being handled: the violation is
        // usually in its last action.
        while self.tail.len() >= TRACE_TAIL
            && self.tail.front().is_some_and(|f| f.step != self.step)
        {
            self.tail.pop_front();
        }
        self.tail.push_back(l);
    }

    // ---- the queue -------------------------------------------------------------------------

    fn push(&mut self, at: Instant, what: Pending) {
        if !matches!(what, Pending::Timer(_)) {
            self.non_timers += 1;
        }
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at: at.max(self.now),
            seq: self.seq,
            what,
        }));
    }

    /// Whether the world is quiet: no answer outstanding and no timer due soon.
    fn quiet(&self) -> bool {
        self.non_timers == 0
            && self.queue.peek().is_none_or(|Reverse(q)| {
                q.at.as_nanos() > self.now.as_nanos().saturating_add(self.idx.far)
            })
    }

    /// Delivers the earliest queued item.
    fn pop(&mut self) -> Result<bool, Found> {
        let Some(Reverse(q)) = self.queue.pop() else {
            return Ok(false);
        };
        if !matches!(q.what, Pending::Timer(_)) {
            self.non_timers -= 1;
        }
        self.now = self.now.max(q.at);
        let input = match q.what {
            Pending::Answer { input, .. } => input,
            Pending::Timer(timer) => Input::TimerFired { timer },
            Pending::NodeDown(node) => Input::NodeDown { node },
            Pending::NodeLost(node) => Input::NodeLost { node },
            Pending::NodeUp(node) => {
                if let Some(vm) = self.m.nodes[node.index()].vm {
                    if !self.running[vm.index()] {
                        self.rebooting[node.index()] = false;
                        return Ok(true); // the VM stopped before its guest joined
                    }
                }
                self.alive[node.index()] = true;
                self.rebooting[node.index()] = false;
                Input::NodeUp { node }
            }
            Pending::Relink(node) => Input::NodeRelinked { node },
            Pending::FenceDone(node) => Input::FenceDone {
                node,
                outcome: Outcome::Ok,
            },
        };
        self.feed(input)?;
        Ok(true)
    }

    fn run_until(&mut self, t: Instant) -> Result<(), Found> {
        while self.queue.peek().is_some_and(|Reverse(q)| q.at <= t) {
            self.pop()?;
        }
        self.now = self.now.max(t);
        Ok(())
    }

    fn run_until_quiet(&mut self) -> Result<(), Found> {
        let mut n = 0;
        while !self.quiet() {
            if !self.pop()? {
                break;
            }
            n += 1;
            if n > MAX_EVENTS_PER_WAIT {
                return Err(Found::new(
                    check::LIVELOCK,
                    format!(
                        "{MAX_EVENTS_PER_WAIT} events without the world becoming quiet \
                         (no new fault was injected meanwhile); {} answers outstanding",
                        self.non_timers
                    ),
                ));
            }
        }
        Ok(())
    }

    // ---- the engine ------------------------------------------------------------------------

    fn mark_sg(&mut self, sg: SgId) {
        if !self.dirty[sg.index()] {
            self.dirty[sg.index()] = true;
            self.dirty_list.push(sg);
        }
    }

    fn mark_entity(&mut self, e: EntityRef) {
        let m = self.m;
        match e {
            EntityRef::Cluster => {
                for i in 0..m.sgs.len() {
                    self.mark_sg(SgId(i as u32));
                }
            }
            EntityRef::Node(n) => self.mark_node(n),
            EntityRef::App(a) => self.mark_app(a),
            EntityRef::Sg(s) => self.mark_sg(s),
            EntityRef::Su(s) => self.mark_sg(m.sus[s.index()].sg),
            EntityRef::Comp(c) => self.mark_sg(self.idx.comp_sg[c.index()]),
            EntityRef::Si(s) => self.mark_sg(m.sis[s.index()].sg),
            EntityRef::Csi(c) => self.mark_si(m.csis[c.index()].si),
        }
    }

    fn mark_node(&mut self, n: NodeId) {
        for i in 0..self.idx.node_sgs[n.index()].len() {
            let sg = self.idx.node_sgs[n.index()][i];
            self.mark_sg(sg);
        }
    }

    fn mark_app(&mut self, a: AppId) {
        let m = self.m;
        for &sg in &m.apps[a.index()].sgs {
            self.mark_sg(sg);
        }
    }

    fn mark_si(&mut self, s: SiId) {
        self.mark_sg(self.m.sis[s.index()].sg);
    }

    fn mark_input(&mut self, i: &Input) {
        match i {
            Input::Start => self.mark_entity(EntityRef::Cluster),
            Input::CommandDone { comp, .. }
            | Input::ComponentFailed { comp, .. }
            | Input::CsiAssigned { comp, .. }
            | Input::CsiRemoved { comp, .. }
            | Input::QuiescingComplete { comp, .. } => self.mark_entity(EntityRef::Comp(*comp)),
            Input::NodeDown { node }
            | Input::NodeLost { node }
            | Input::NodeUp { node }
            | Input::FenceDone { node, .. } => self.mark_node(*node),
            Input::TimerFired { timer } => match timer {
                Timer::InstantiateRetry { comp, .. } => self.mark_entity(EntityRef::Comp(*comp)),
                Timer::SponsorTolerance { dependent, .. } => self.mark_si(*dependent),
                #[allow(unreachable_patterns)]
                _ => self.mark_entity(EntityRef::Cluster),
            },
            Input::Admin { target, .. } => self.mark_entity(*target),
            #[allow(unreachable_patterns)]
            _ => self.mark_entity(EntityRef::Cluster),
        }
    }

    /// Hands one input to the engine, carries out its actions and checks the invariants.
    fn feed(&mut self, input: Input) -> Result<(), Found> {
        self.step += 1;
        self.stats.inputs += 1;
        if self.stats.inputs > MAX_INPUTS_PER_RUN {
            return Err(Found::new(
                check::LIVELOCK,
                format!("more than {MAX_INPUTS_PER_RUN} inputs in one run"),
            ));
        }
        if self.mode != Mode::Fast {
            self.remember(TraceItem::In(input.clone()));
        }
        self.mark_input(&input);
        let failed_comp = match input {
            Input::ComponentFailed { comp, .. } => Some(comp),
            _ => None,
        };
        // Between Resume and Start the engine has not started: nothing is assigned yet, by
        // design, so the world is not judged settled then (Start follows at once).
        let resuming = matches!(input, Input::Resume { .. });
        let now = self.now;
        let engine = &mut self.engine;
        let actions = match catch_unwind(AssertUnwindSafe(|| engine.handle(now, input))) {
            Ok(a) => a,
            Err(payload) => {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".to_string());
                return Err(Found::new(
                    check::ENGINE_PANIC,
                    format!("the engine panicked: {what}"),
                ));
            }
        };
        self.stats.actions += actions.len() as u64;
        if let Some(comp) = failed_comp {
            check::check_fault_answered(self.m, comp, &actions)?;
        }
        for a in &actions {
            check::check_action_ids(self.m, &a.kind)?;
        }
        if self.mode != Mode::Fast {
            for a in &actions {
                self.remember(TraceItem::Out(a.kind.clone()));
            }
        }
        for a in actions {
            self.act(a.kind)?;
        }
        // Invariants 1–3 on every SG this step touched.
        let m = self.m;
        let mut result = Ok(());
        for i in 0..self.dirty_list.len() {
            let sg = self.dirty_list[i];
            self.dirty[sg.index()] = false;
            if result.is_ok() {
                result = check::check_sg(m, &self.engine, sg);
            }
        }
        self.dirty_list.clear();
        result?;
        check::check_world_actives(m, &self.held)?;
        for n in 0..m.nodes.len() {
            check::check_node_escalation(m, &self.engine, NodeId(n as u32))?;
        }
        if self.quiet() && !resuming {
            self.stats.settle_checks += 1;
            check::check_all(m, &self.engine)?;
            check::check_settled(m, &self.engine)?;
        }
        Ok(())
    }

    // ---- answering actions -----------------------------------------------------------------

    /// A random answer delay and outcome. `fail`/`timeout` are per-mille chances.
    fn answer_timing(&mut self, limit: Duration, fail: u32, timeout: u32) -> (u64, Outcome) {
        let limit = dur(limit).max(MS);
        if self.healing {
            return (self.rng.range(MS / 10, 50 * MS), Outcome::Ok);
        }
        let r = self.rng.below(1000) as u32;
        if r < timeout {
            // Lost: the agent gives up at the timeout.
            (limit, Outcome::TimedOut)
        } else if r < timeout + fail {
            (self.rng.range(MS / 10, 50 * MS), Outcome::Failed)
        } else if self.rng.chance(60) {
            // Late, but within the timeout.
            (self.rng.range(50 * MS, limit.min(5 * SEC)), Outcome::Ok)
        } else {
            (self.rng.range(MS / 10, 50 * MS), Outcome::Ok)
        }
    }

    /// Queues an answer for a component, in order with its earlier answers.
    fn answer(&mut self, comp: CompId, delay: u64, input: Input) -> Instant {
        self.answer_from(self.agent_of(comp), comp, delay, input)
    }

    /// The node whose agent is told about `comp`: where the engine says its SU runs (the
    /// director routes by that). Only during a migration may the VM itself be elsewhere.
    fn agent_of(&self, comp: CompId) -> NodeId {
        let su = self.m.comps[comp.index()].su;
        self.engine
            .su_host(su)
            .unwrap_or(self.m.sus[su.index()].node)
    }

    /// Queues an answer about `comp` from the agent of `node` (its own, or a migration's
    /// destination), in order with the component's earlier answers.
    fn answer_from(&mut self, node: NodeId, comp: CompId, delay: u64, input: Input) -> Instant {
        let c = comp.index();
        let at = (self.now + Duration::from_nanos(delay))
            .max(self.fifo[c] + Duration::from_nanos(1_000));
        self.fifo[c] = at;
        self.push(at, Pending::Answer { input, node });
        at
    }

    /// A live migration's actions: the destination prepares (or cannot), the source sends
    /// (the VM moves the moment it succeeds, and a guest's link is cut by it and rejoins),
    /// the destination takes over (or loses the VM) or discards its waiting copy.
    fn act_migration(&mut self, a: ActionKind) {
        match a {
            ActionKind::MigrateIn { comp, to } => {
                self.mark_entity(EntityRef::Comp(comp));
                if !self.alive[to.index()] {
                    self.stats.dropped_answers += 1;
                    return;
                }
                let port = (!self.rng.chance(100)).then_some(49152);
                let d = self.rng.range(10 * MS, 300 * MS);
                self.answer_from(to, comp, d, Input::MigrationPrepared { comp, port });
            }
            ActionKind::MigrateOut { comp, to, .. } => {
                self.mark_entity(EntityRef::Comp(comp));
                if !self.reachable(comp) {
                    return;
                }
                let ok =
                    self.running[comp.index()] && self.alive[to.index()] && !self.rng.chance(150);
                let d = self.rng.range(50 * MS, 2 * SEC);
                let from = self.comp_host[comp.index()];
                if ok {
                    self.comp_host[comp.index()] = to;
                    if let Some(guest) = self.m.comps[comp.index()].guest {
                        if self.alive[guest.index()] && !self.rebooting[guest.index()] {
                            let lost =
                                self.now + Duration::from_nanos(self.rng.range(MS, 100 * MS));
                            self.push(lost, Pending::NodeLost(guest));
                            let back =
                                lost + Duration::from_nanos(self.rng.range(100 * MS, 6 * SEC));
                            self.push(back, Pending::Relink(guest));
                        }
                    }
                }
                let outcome = if ok { Outcome::Ok } else { Outcome::Failed };
                self.answer_from(from, comp, d, Input::MigrationSent { comp, outcome });
            }
            ActionKind::MigrateFinish { comp, to, commit } => {
                self.mark_entity(EntityRef::Comp(comp));
                if !commit {
                    // The waiting copy is discarded; a VM already sent there is gone with it.
                    if self.comp_host[comp.index()] == to && self.alive[to.index()] {
                        self.stopped(comp);
                    }
                    return;
                }
                if !self.reachable(comp) {
                    return;
                }
                let ok = self.running[comp.index()] && !self.rng.chance(30);
                if !ok {
                    self.stopped(comp);
                }
                let outcome = if ok { Outcome::Ok } else { Outcome::Failed };
                let d = self.rng.range(10 * MS, 500 * MS);
                self.answer(comp, d, Input::MigrationFinished { comp, outcome });
            }
            _ => {}
        }
    }

    /// Whether the component's agent is alive to answer; counts the dropped action if not.
    fn reachable(&mut self, comp: CompId) -> bool {
        if self.alive[self.agent_of(comp).index()] {
            true
        } else {
            self.stats.dropped_answers += 1;
            false
        }
    }

    fn act(&mut self, a: ActionKind) -> Result<(), Found> {
        let m = self.m;
        match a {
            ActionKind::Instantiate { comp, .. } => {
                self.mark_entity(EntityRef::Comp(comp));
                // It starts where the engine says its SU runs (a migration may have moved it).
                let su = m.comps[comp.index()].su;
                self.comp_host[comp.index()] =
                    self.engine.su_host(su).unwrap_or(m.sus[su.index()].node);
                if self.reachable(comp) {
                    let (d, outcome) =
                        self.answer_timing(m.comps[comp.index()].timeouts.instantiate, 50, 30);
                    if outcome == Outcome::Ok {
                        self.running[comp.index()] = true;
                    }
                    let done = self.answer(
                        comp,
                        d,
                        Input::CommandDone {
                            comp,
                            command: Command::Instantiate,
                            outcome,
                        },
                    );
                    // A VM's guest boots and joins as its node some time after the VM runs.
                    if let (Outcome::Ok, Some(guest)) = (outcome, m.comps[comp.index()].guest) {
                        let boot = Duration::from_nanos(self.rng.range(200 * MS, 3 * SEC));
                        self.cancel_reboot(guest);
                        self.rebooting[guest.index()] = true;
                        self.push(done + boot, Pending::NodeUp(guest));
                    }
                }
            }
            ActionKind::Terminate { comp } | ActionKind::Cleanup { comp } => {
                self.mark_entity(EntityRef::Comp(comp));
                let (command, limit, fail, timeout) = match a {
                    ActionKind::Terminate { .. } => (
                        Command::Terminate,
                        m.comps[comp.index()].timeouts.terminate,
                        20,
                        10,
                    ),
                    _ => (
                        Command::Cleanup,
                        m.comps[comp.index()].timeouts.cleanup,
                        10,
                        5,
                    ),
                };
                if self.reachable(comp) {
                    let (d, outcome) = self.answer_timing(limit, fail, timeout);
                    // Both isolate the component the moment they are issued, which the engine
                    // relies on to give its work to another SU in the same step: a cleanup
                    // SIGKILLs the whole process group whatever its command does, and an
                    // SA-aware component stops serving when it receives the terminate callback
                    // (AMF's contract; the agent kills it after the terminate timeout anyway).
                    self.stopped(comp);
                    self.answer(
                        comp,
                        d,
                        Input::CommandDone {
                            comp,
                            command,
                            outcome,
                        },
                    );
                }
            }
            ActionKind::AssignCsi {
                comp,
                csi,
                ha_state,
            } => {
                self.mark_entity(EntityRef::Comp(comp));
                self.mark_entity(EntityRef::Csi(csi));
                if self.reachable(comp) {
                    let (d, outcome) =
                        self.answer_timing(m.comps[comp.index()].timeouts.callback, 20, 10);
                    // Only a running SA-aware component is told (a process component's
                    // callbacks are answered by its agent and never reach the process).
                    if outcome == Outcome::Ok
                        && self.running[comp.index()]
                        && m.comps[comp.index()].kind == CompKind::SaAware
                    {
                        let held = &mut self.held[comp.index()];
                        held.retain(|(c, _)| *c != csi);
                        held.push((csi, ha_state));
                    }
                    self.answer(
                        comp,
                        d,
                        Input::CsiAssigned {
                            comp,
                            csi,
                            ha_state,
                            outcome,
                        },
                    );
                    if ha_state == HaState::Quiescing && outcome == Outcome::Ok {
                        let d = self.rng.range(MS, 200 * MS);
                        self.answer(comp, d, Input::QuiescingComplete { comp, csi });
                    }
                }
            }
            ActionKind::RemoveCsi { comp, csi } => {
                self.mark_entity(EntityRef::Comp(comp));
                self.mark_entity(EntityRef::Csi(csi));
                if self.reachable(comp) {
                    let (d, outcome) =
                        self.answer_timing(m.comps[comp.index()].timeouts.callback, 0, 10);
                    // Either way the CSI is gone from the component.
                    self.held[comp.index()].retain(|(c, _)| *c != csi);
                    self.answer(comp, d, Input::CsiRemoved { comp, csi, outcome });
                }
            }
            ActionKind::Fence { node } if m.nodes[node.index()].vm.is_some() => {
                return Err(Found::new(
                    check::GUEST_FENCED,
                    format!(
                        "Fence for {}, a VM's guest (it must be isolated through its VM)",
                        m.path(EntityRef::Node(node))
                    ),
                ));
            }
            ActionKind::Fence { node } => {
                self.mark_node(node);
                self.stats.fences += 1;
                self.kill(node);
                let done = self.now + Duration::from_nanos(self.rng.range(10 * MS, 300 * MS));
                self.push(done, Pending::FenceDone(node));
                // The reboot follows the fence, whatever was planned before.
                if self.rebooting[node.index()] {
                    self.cancel_reboot(node);
                }
                self.schedule_reboot(node, done);
            }
            ActionKind::StartTimer { timer, at } => {
                self.push(at, Pending::Timer(timer));
            }
            ActionKind::MigrateIn { .. }
            | ActionKind::MigrateOut { .. }
            | ActionKind::MigrateFinish { .. } => self.act_migration(a),
            ActionKind::AdminReply { request, result } => {
                if result.is_err() {
                    self.stats.admin_refused += 1;
                }
                self.admin.reply(request)?;
            }
            ActionKind::Record(event) => {
                self.record(&event)?;
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
        Ok(())
    }

    fn record(&mut self, event: &Event) -> Result<(), Found> {
        match event {
            Event::FaultDetected { affected, .. } => {
                self.stats.faults_detected += 1;
                for &si in affected {
                    self.mark_si(si);
                }
            }
            Event::FaultIgnored { .. } => self.stats.faults_ignored += 1,
            Event::ServiceRecovered { .. } => self.stats.services_recovered += 1,
            Event::Presence { comp, .. } => self.mark_entity(EntityRef::Comp(*comp)),
            Event::Oper { su, .. } | Event::Readiness { su, .. } => {
                self.mark_entity(EntityRef::Su(*su))
            }
            Event::Admin { entity, .. } | Event::AdminDone { target: entity, .. } => {
                self.mark_entity(*entity)
            }
            Event::Assignment { si, .. } | Event::SiState { si, .. } => self.mark_si(*si),
            Event::Node { node, .. } => self.mark_node(*node),
            _ => {}
        }
        self.faults.observe(self.m, self.step, event)
    }

    // ---- nodes -----------------------------------------------------------------------------

    /// The node dies now: its agent's pending answers are lost with it.
    fn kill(&mut self, node: NodeId) {
        if !self.alive[node.index()] {
            return;
        }
        self.alive[node.index()] = false;
        let before = self.queue.len();
        self.queue.retain(|Reverse(q)| {
            !matches!(&q.what, Pending::Answer { node: n, .. } | Pending::Relink(n) if *n == node)
        });
        let dropped = before - self.queue.len();
        self.non_timers -= dropped;
        self.stats.dropped_answers += dropped as u64;
        for c in 0..self.m.comps.len() {
            if self.comp_host[c] == node {
                self.fifo[c] = Instant::ZERO;
                self.stopped(CompId(c as u32));
            }
        }
    }

    /// A component's process is gone, and with it the work it held. A VM takes its guest
    /// node with it; the guest's link drops, which membership reports 1–100 ms later.
    fn stopped(&mut self, comp: CompId) {
        self.running[comp.index()] = false;
        self.held[comp.index()].clear();
        if let Some(guest) = self.m.comps[comp.index()].guest {
            if self.rebooting[guest.index()] {
                self.cancel_reboot(guest);
            }
            if self.alive[guest.index()] {
                self.kill(guest);
                let seen = self.now + Duration::from_nanos(self.rng.range(MS, 100 * MS));
                self.push(seen, Pending::NodeLost(guest));
            }
        }
    }

    fn cancel_reboot(&mut self, node: NodeId) {
        let before = self.queue.len();
        self.queue
            .retain(|Reverse(q)| !matches!(&q.what, Pending::NodeUp(n) if *n == node));
        self.non_timers -= before - self.queue.len();
        self.rebooting[node.index()] = false;
    }

    fn schedule_reboot(&mut self, node: NodeId, after: Instant) {
        let at = after + Duration::from_nanos(self.rng.range(SEC, 6 * SEC));
        self.rebooting[node.index()] = true;
        self.push(at, Pending::NodeUp(node));
    }

    // ---- injection -------------------------------------------------------------------------

    fn note_injection(&mut self, input: &Input) {
        self.stats.injected += 1;
        if self.mode != Mode::Fast {
            self.injected.push(TraceLine {
                step: self.step + 1,
                at: self.now,
                item: TraceItem::In(input.clone()),
            });
        }
    }

    fn send_admin(&mut self, op: AdminOp, target: EntityRef) -> Result<(), Found> {
        let request = self.next_request;
        self.next_request += 1;
        self.stats.admin_ops += 1;
        self.admin
            .sent(request, format!("{} {}", op.name(), self.m.path(target)));
        let input = Input::Admin {
            request,
            op,
            target,
        };
        self.note_injection(&input);
        self.feed(input)
    }

    fn inject(&mut self) -> Result<(), Found> {
        match self.rng.weighted(&[50, 7, 25, 18, 2]) {
            0 => {
                let comp = self.inject_comp_fault(None)?;
                // Aftershocks: failures rarely come alone, and recoveries that overlap are
                // where bugs hide.
                if let Some(comp) = comp {
                    if self.rng.chance(150) {
                        self.aftershock(comp)?;
                    }
                }
                Ok(())
            }
            1 => self.inject_node_down(),
            2 => self.inject_admin(),
            3 => self.inject_heal(),
            _ => self.inject_restart(),
        }
    }

    /// The driver (director and agents of every node) dies and a new one starts, as a
    /// restarted `nines run` does: everything in flight is lost (answers, timers, admin
    /// requests, open faults), the components keep running with the work they accepted, and
    /// the new engine re-applies the persisted admin states, resumes from what the running
    /// components hold (`nines_engine::resume_input`, the director's rule), then starts. Only
    /// while every node is up: a node's death during the restart is another story (issue 4).
    fn inject_restart(&mut self) -> Result<(), Found> {
        let settled_nodes = self.alive.iter().all(|a| *a) && !self.rebooting.iter().any(|r| *r);
        let fresh = match self.engine.restarted() {
            Some(e) if settled_nodes && !self.healing => e,
            _ => return self.inject_comp_fault(None).map(drop),
        };
        let m = self.m;
        let saved: Vec<(EntityRef, AdminState)> = check::admin_entities(m)
            .into_iter()
            .filter_map(|e| self.engine.admin_state(e).map(|a| (e, a)))
            .collect();
        self.queue.clear();
        self.non_timers = 0;
        self.fifo.iter_mut().for_each(|f| *f = Instant::ZERO);
        self.admin.outstanding.clear();
        self.faults.open.clear();
        self.stats.injected += 1;
        self.stats.driver_restarts += 1;
        if self.mode != Mode::Fast {
            let l = TraceLine {
                step: self.step,
                at: self.now,
                item: TraceItem::Note("the driver restarts: it adopts what runs".to_string()),
            };
            self.injected.push(l.clone());
            self.tail.push_back(l);
        }
        self.engine = fresh;
        for (entity, target) in saved {
            let Some(current) = self.engine.admin_state(entity) else {
                continue;
            };
            for op in nines_engine::restore_ops(current, target) {
                self.send_admin(op, entity)?;
            }
        }
        let adopted: Vec<(CompId, Vec<(CsiId, HaState)>)> = (0..m.comps.len())
            .filter(|&c| self.running[c])
            .map(|c| (CompId(c as u32), self.held[c].clone()))
            .collect();
        let moved = (0..m.sus.len())
            .filter_map(|s| {
                let first = *m.sus[s].comps.first()?;
                let host = self.comp_host[first.index()];
                (host != m.sus[s].node).then_some((SuId(s as u32), host))
            })
            .collect();
        let resume = nines_engine::resume_input(&adopted, moved);
        self.note_injection(&resume);
        self.feed(resume)?;
        self.feed(Input::Start)
    }

    /// A second fault 0–20 ms after the failure of `comp`: the same report again, another
    /// component of its SU, its node dying, or any component.
    fn aftershock(&mut self, comp: CompId) -> Result<(), Found> {
        let gap = self.rng.range(0, 20 * MS);
        self.run_until(self.now + Duration::from_nanos(gap))?;
        let m = self.m;
        let su = m.comps[comp.index()].su;
        match self.rng.weighted(&[40, 30, 10, 20]) {
            0 => self.inject_comp_fault(Some(&[comp])).map(drop),
            1 => self
                .inject_comp_fault(Some(&m.sus[su.index()].comps))
                .map(drop),
            2 => self.kill_and_notice(m.sus[su.index()].node),
            _ => self.inject_comp_fault(None).map(drop),
        }
    }

    /// A component failure, among `among` (default: every component). Mostly running ones:
    /// a report about a component that is not running must be ignored, which is tested too.
    /// Returns the component, if one on a live node was found.
    fn inject_comp_fault(&mut self, among: Option<&[CompId]>) -> Result<Option<CompId>, Found> {
        let m = self.m;
        let mut running = Vec::new();
        let mut reachable = Vec::new();
        let all: Vec<CompId>;
        let among = match among {
            Some(a) => a,
            None => {
                all = (0..m.comps.len()).map(|c| CompId(c as u32)).collect();
                &all
            }
        };
        for &comp in among {
            if !self.alive[self.comp_host[comp.index()].index()] {
                continue;
            }
            reachable.push(comp);
            if self.engine.comp_presence(comp) == Presence::Instantiated {
                running.push(comp);
            }
        }
        let pool = if !running.is_empty() && self.rng.chance(850) {
            &running
        } else {
            &reachable
        };
        let Some(comp) = self.rng.pick(pool) else {
            return Ok(None);
        };
        let kind = [
            FaultKind::Exited,
            FaultKind::HealthcheckMissed,
            FaultKind::ErrorReport,
        ][self.rng.weighted(&[40, 25, 35])];
        let recommended = if kind == FaultKind::ErrorReport && self.rng.chance(600) {
            // Restarts and failovers are common; node-, app- and cluster-wide ones rare.
            Some(Recovery::ALL[self.rng.weighted(&[30, 30, 6, 6, 4, 3, 1])])
        } else {
            None
        };
        self.stats.component_faults += 1;
        if kind == FaultKind::Exited {
            self.stopped(comp);
        }
        let input = Input::ComponentFailed {
            comp,
            kind,
            recommended,
        };
        self.note_injection(&input);
        self.feed(input)?;
        Ok(Some(comp))
    }

    fn inject_node_down(&mut self) -> Result<(), Found> {
        let up: Vec<NodeId> = (0..self.m.nodes.len())
            .filter(|&n| self.alive[n])
            .map(|n| NodeId(n as u32))
            .collect();
        match self.rng.pick(&up) {
            Some(node) if self.rng.chance(300) => {
                self.cut_off(node);
                Ok(())
            }
            Some(node) => self.kill_and_notice(node),
            None => Ok(()),
        }
    }

    /// The node is cut off but keeps running (a partition): membership loses it 1–100 ms
    /// later and the engine must fence it before its work runs anywhere else.
    fn cut_off(&mut self, node: NodeId) {
        self.stats.node_downs += 1;
        self.stats.injected += 1;
        if self.mode != Mode::Fast {
            let what = format!(
                "{} is cut off (NodeLost follows; it runs until fenced)",
                self.m.path(EntityRef::Node(node))
            );
            self.injected.push(TraceLine {
                step: self.step,
                at: self.now,
                item: TraceItem::Note(what.clone()),
            });
            self.remember(TraceItem::Note(what));
        }
        let seen = self.now + Duration::from_nanos(self.rng.range(MS, 100 * MS));
        self.push(seen, Pending::NodeLost(node));
    }

    /// The node dies now; membership notices 1–100 ms later; it reboots 1–6 s after that.
    fn kill_and_notice(&mut self, node: NodeId) -> Result<(), Found> {
        if !self.alive[node.index()] {
            return Ok(());
        }
        self.stats.node_downs += 1;
        self.stats.injected += 1;
        if self.mode != Mode::Fast {
            self.injected.push(TraceLine {
                step: self.step,
                at: self.now,
                item: TraceItem::Note(format!(
                    "{} dies (NodeDown follows, then a reboot)",
                    self.m.path(EntityRef::Node(node))
                )),
            });
            self.remember(TraceItem::Note(format!(
                "{} dies",
                self.m.path(EntityRef::Node(node))
            )));
        }
        self.kill(node);
        let seen = self.now + Duration::from_nanos(self.rng.range(MS, 100 * MS));
        if self.m.nodes[node.index()].vm.is_some() {
            // A guest that dies (a hung or crashed kernel under a running VM) only goes
            // silent; only resetting its VM brings it back.
            self.push(seen, Pending::NodeLost(node));
            return Ok(());
        }
        // Membership either knows the node is dead (a confirmed power-off) or only that it
        // went silent, and then the engine fences it first.
        let notice = if self.rng.chance(500) {
            Pending::NodeLost(node)
        } else {
            Pending::NodeDown(node)
        };
        self.push(seen, notice);
        self.schedule_reboot(node, seen);
        Ok(())
    }

    fn random_entity(&mut self) -> EntityRef {
        let m = self.m;
        let n = |len: usize, rng: &mut Rng| rng.below(len as u64) as u32;
        loop {
            let e = match self.rng.weighted(&[30, 20, 12, 12, 8, 4, 7, 7]) {
                0 if !m.sus.is_empty() => EntityRef::Su(SuId(n(m.sus.len(), &mut self.rng))),
                1 if !m.sis.is_empty() => EntityRef::Si(SiId(n(m.sis.len(), &mut self.rng))),
                2 if !m.sgs.is_empty() => EntityRef::Sg(SgId(n(m.sgs.len(), &mut self.rng))),
                3 if !m.nodes.is_empty() => {
                    EntityRef::Node(NodeId(n(m.nodes.len(), &mut self.rng)))
                }
                4 if !m.apps.is_empty() => EntityRef::App(AppId(n(m.apps.len(), &mut self.rng))),
                6 if !m.comps.is_empty() => {
                    EntityRef::Comp(CompId(n(m.comps.len(), &mut self.rng)))
                }
                7 if !m.csis.is_empty() => EntityRef::Csi(CsiId(n(m.csis.len(), &mut self.rng))),
                5 => EntityRef::Cluster,
                _ => continue,
            };
            return e;
        }
    }

    fn inject_admin(&mut self) -> Result<(), Found> {
        let op = AdminOp::ALL[self.rng.below(AdminOp::ALL.len() as u64) as usize];
        let target = self.random_entity();
        self.send_admin(op, target)
    }

    /// What an operator would do to give the cluster its capacity back.
    fn repairs(&self) -> Vec<(AdminOp, EntityRef)> {
        let mut v = Vec::new();
        for e in check::admin_entities(self.m) {
            match self.engine.admin_state(e) {
                Some(AdminState::Locked) => v.push((AdminOp::Unlock, e)),
                Some(AdminState::LockedInstantiation) => v.push((AdminOp::UnlockInstantiation, e)),
                _ => {}
            }
        }
        for su in 0..self.m.sus.len() {
            let su = SuId(su as u32);
            if self.engine.su_oper(su) == OperState::Disabled {
                v.push((AdminOp::Repaired, EntityRef::Su(su)));
            }
        }
        v
    }

    fn inject_heal(&mut self) -> Result<(), Found> {
        let candidates = self.repairs();
        match self.rng.pick(&candidates) {
            Some((op, e)) => self.send_admin(op, e),
            None => self.inject_comp_fault(None).map(drop),
        }
    }

    /// The end of a run: no more faults, the operator repairs and unlocks everything, and the
    /// world must settle into a state where every invariant (including the settle ones) holds.
    fn heal(&mut self) -> Result<(), Found> {
        self.healing = true;
        if self.mode != Mode::Fast {
            let l = TraceLine {
                step: self.step,
                at: self.now,
                item: TraceItem::Note("end of faults: repairing everything".to_string()),
            };
            self.injected.push(l.clone());
            self.tail.push_back(l);
        }
        for _round in 0..4 {
            self.run_until_quiet()?;
            let mut todo = self.repairs();
            if todo.is_empty() {
                break;
            }
            // Unlock-instantiation first, then unlock, then repaired: each needs the last.
            todo.sort_by_key(|(op, _)| match op {
                AdminOp::UnlockInstantiation => 0,
                AdminOp::Unlock => 1,
                _ => 2,
            });
            for (op, e) in todo {
                self.run_until(self.now + Duration::from_nanos(MS))?;
                self.send_admin(op, e)?;
            }
        }
        self.run_until_quiet()?;
        let m = self.m;
        check::check_all(m, &self.engine)?;
        check::check_settled(m, &self.engine)?;
        check::check_faults_recovered(m, &self.engine, &self.faults)?;
        self.admin.all_answered()
    }
}
