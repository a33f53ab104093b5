//! The deterministic simulator of nines: a seeded world that drives the engine through faults,
//! admin operations and slow or lost answers, and checks its invariants after every step.
//!
//! A run is a pure function of (model, seed, steps): the world keeps virtual time and an event
//! queue ordered by (time, sequence number), draws every choice from a SplitMix64 generator
//! written out in this crate, and never iterates a hash map. A violation therefore comes with a
//! seed that replays it exactly (`nines sim --replay SEED`), which is what makes a failing seed
//! a complete bug report.
//!
//! What one run does:
//! 1. `Start` at t=0, then `steps` injections, each after a random pause (sometimes after the
//!    world went quiet, sometimes in the middle of a recovery): component failures (exit, missed
//!    healthcheck, error report with a random recommended recovery), node deaths (membership
//!    notices after a delay, the node reboots seconds later), random admin operations on random
//!    entities (valid or not), and repairs/unlocks now and then so capacity does not run out.
//! 2. Every action is answered after 0.1–50 ms, sometimes late (up to the command's timeout),
//!    sometimes failed, sometimes lost (reported as timed out at the timeout). A dead node's
//!    agent answers nothing, and nothing it owed is delivered after it comes back.
//! 3. At the end the operator repairs and unlocks everything, every answer succeeds, and the
//!    world runs until quiet; then the settle invariants are checked one last time.
//!
//! The invariants are listed in [`invariants`].

#![warn(missing_docs)]

mod check;
mod fmt;
mod rng;
mod world;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use nines_engine::Engine;
use nines_model::Model;

use crate::check::SimEngine;
use crate::world::{Mode, World};

/// Names of the invariants a [`Violation`] may report; each constant's doc says what it means.
///
/// Checked after every `handle` call: [`ONE_ACTIVE`](invariants::ONE_ACTIVE),
/// [`WORLD_ONE_ACTIVE`](invariants::WORLD_ONE_ACTIVE) (on what the components hold),
/// [`PLACEMENT`](invariants::PLACEMENT), [`ESCALATION`](invariants::ESCALATION),
/// [`FAULT_ANSWERED`](invariants::FAULT_ANSWERED), [`FAULT_RECOVERED`](invariants::FAULT_RECOVERED)
/// (bookkeeping), [`ADMIN_REPLY`](invariants::ADMIN_REPLY), [`ENGINE_PANIC`](invariants::ENGINE_PANIC),
/// [`BAD_OUTPUT`](invariants::BAD_OUTPUT).
/// Checked whenever the world is quiet (no answer outstanding, no timer due soon) and at the
/// end of the run: [`SETTLED_STUCK`](invariants::SETTLED_STUCK),
/// [`SETTLED_LEFTOVER`](invariants::SETTLED_LEFTOVER),
/// [`SETTLED_ASSIGNED`](invariants::SETTLED_ASSIGNED). At the end only: every fault got its
/// `ServiceRecovered` and every admin request its reply. [`LIVELOCK`](invariants::LIVELOCK)
/// when the world never gets quiet without new faults.
pub mod invariants {
    pub use crate::check::{
        ADMIN_REPLY, BAD_OUTPUT, ENGINE_PANIC, ESCALATION, FAULT_ANSWERED, FAULT_RECOVERED,
        LIVELOCK, ONE_ACTIVE, PLACEMENT, SETTLED_ASSIGNED, SETTLED_LEFTOVER, SETTLED_STUCK,
        WORLD_ONE_ACTIVE,
    };
}

/// The injected steps per run when none are given: enough for escalations and overlapping
/// failures to happen, few enough that 10,000 runs take well under a minute on two cores.
pub const DEFAULT_STEPS: u32 = 200;

/// Violations beyond this many (in run order) are reported without a trace: each trace costs a
/// replay, and the seed replays it anyway.
pub const MAX_TRACED: usize = 20;

/// How much to simulate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOptions {
    /// The seed every run's seed is derived from (run `i` uses [`run_seed`]`(seed, i)`).
    pub seed: u64,
    /// How many independent runs.
    pub runs: u64,
    /// Injected faults and admin operations per run.
    pub steps: u32,
    /// Worker threads; the report is the same whatever this is.
    pub threads: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 1,
            runs: 1000,
            steps: DEFAULT_STEPS,
            threads: 2,
        }
    }
}

/// The seed of run `index` of a simulation started with `seed`: the `index + 1`-th output of
/// SplitMix64 seeded with `seed`. It is also the seed that replays that run alone.
pub fn run_seed(seed: u64, index: u64) -> u64 {
    rng::run_seed(seed, index)
}

/// The cluster `nines sim` simulates when given no config: one application per redundancy
/// model, so one command exercises every code path of the engine.
pub fn builtin_config() -> &'static str {
    include_str!("../../../examples/sim-mix.yaml")
}

/// What one run did. Equal for equal (model, seed, steps): the determinism tests compare them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// The run's seed.
    pub seed: u64,
    /// Inputs handed to the engine (`handle` calls).
    pub inputs: u64,
    /// Actions the engine returned.
    pub actions: u64,
    /// Faults and admin operations injected (including the final repairs).
    pub injected: u64,
    /// `ComponentFailed` inputs injected.
    pub component_faults: u64,
    /// Node faults the world injected: nodes killed, and nodes cut off (alive until fenced).
    pub node_downs: u64,
    /// Simulated driver restarts (the engine resumed from what ran).
    pub driver_restarts: u64,
    /// Admin requests sent.
    pub admin_ops: u64,
    /// Admin requests the engine refused.
    pub admin_refused: u64,
    /// Fence actions carried out.
    pub fences: u64,
    /// `FaultDetected` events.
    pub faults_detected: u64,
    /// `FaultIgnored` events.
    pub faults_ignored: u64,
    /// `ServiceRecovered` events.
    pub services_recovered: u64,
    /// Actions and answers lost because their node was dead.
    pub dropped_answers: u64,
    /// Times the world was quiet and the settle invariants were checked.
    pub settle_checks: u64,
    /// Virtual time the run took.
    pub virtual_time: Duration,
    /// Every input and action, one line each (only filled by [`replay`]).
    pub log: Vec<String>,
}

/// A broken invariant, with everything needed to replay and understand it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The seed that replays it as a single run.
    pub seed: u64,
    /// Injected steps of the run it happened in (a replay needs the same number).
    pub steps: u32,
    /// The input (1-based count of `handle` calls in the run) after which it was seen.
    pub step: u64,
    /// Which invariant (see [`invariants`]).
    pub invariant: &'static str,
    /// What is wrong, naming entities by path.
    pub message: String,
    /// Every injected fault and admin operation of the run, then the last inputs (`<-`) and
    /// actions (`->`) before the violation, each with its step and virtual time. Empty for
    /// violations past [`MAX_TRACED`] in a multi-run report; replay the seed to see it.
    pub trace: Vec<String>,
}

impl Violation {
    /// The command that replays this violation.
    pub fn replay_command(&self) -> String {
        if self.steps == DEFAULT_STEPS {
            format!("nines sim --replay {}", self.seed)
        } else {
            format!("nines sim --replay {} --steps {}", self.seed, self.steps)
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "invariant {} violated at step {} (seed {})",
            self.invariant, self.step, self.seed
        )?;
        writeln!(f, "  {}", self.message)?;
        if self.trace.is_empty() {
            writeln!(f, "  (no trace kept; replay the seed to see it)")?;
        } else {
            writeln!(f, "  trace:")?;
            for line in &self.trace {
                writeln!(f, "    {line}")?;
            }
        }
        write!(f, "  replay: {}", self.replay_command())
    }
}

/// The result of many runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Runs done.
    pub runs: u64,
    /// Inputs handed to the engine over all runs (its `handle` calls), a measure of work done.
    pub steps: u64,
    /// One per failing run, in run order (a violation stops its run).
    pub violations: Vec<Violation>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for v in &self.violations {
            writeln!(f, "{v}")?;
            writeln!(f)?;
        }
        write!(
            f,
            "{} runs, {} engine steps, {} violations",
            self.runs,
            self.steps,
            self.violations.len()
        )
    }
}

/// One run of any engine; the generic core of [`run`] and [`replay`].
fn simulate<E: SimEngine>(
    model: &Model,
    engine: E,
    seed: u64,
    steps: u32,
    mode: Mode,
) -> (RunStats, Option<Violation>) {
    let mut world = World::new(model, engine, seed, mode);
    let result = world.run(steps);
    let stats = std::mem::take(&mut world.stats);
    let violation = result.err().map(|f| Violation {
        seed,
        steps,
        step: f.step,
        invariant: f.found.invariant,
        message: f.found.message,
        trace: f.trace,
    });
    (stats, violation)
}

/// Runs `opts.runs` independent runs of `model` on `opts.threads` threads and reports every
/// violation, in run order, the first [`MAX_TRACED`] with their traces. `progress` is called on
/// the calling thread with the number of runs done, after each run.
pub fn run(model: Arc<Model>, opts: &SimOptions, progress: &mut dyn FnMut(u64)) -> Report {
    run_with(&model, opts, progress, &|m: &Arc<Model>| {
        Engine::new(m.clone())
    })
}

/// [`run`] for any engine `make` builds (one per run): tests drive it with broken engines.
fn run_with<E, F>(
    model: &Arc<Model>,
    opts: &SimOptions,
    progress: &mut dyn FnMut(u64),
    make: &F,
) -> Report
where
    E: SimEngine,
    F: Fn(&Arc<Model>) -> E + Sync,
{
    let runs = opts.runs;
    let one =
        |i: u64, mode: Mode| simulate(model, make(model), run_seed(opts.seed, i), opts.steps, mode);
    let threads = opts
        .threads
        .max(1)
        .min(usize::try_from(runs).unwrap_or(usize::MAX).max(1));
    let mut results: Vec<(u64, u64, Option<Violation>)> = Vec::new();
    if threads <= 1 {
        for i in 0..runs {
            let (stats, v) = one(i, Mode::Fast);
            results.push((i, stats.inputs, v));
            progress(i + 1);
        }
    } else {
        // Runs are handed out in small chunks so a slow run does not idle the other threads;
        // results are put back in run order below, so the report does not depend on timing.
        const CHUNK: u64 = 8;
        let next = AtomicU64::new(0);
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            for _ in 0..threads {
                let tx = tx.clone();
                let (next, one) = (&next, &one);
                s.spawn(move || loop {
                    let start = next.fetch_add(CHUNK, Ordering::Relaxed);
                    if start >= runs {
                        break;
                    }
                    for i in start..(start + CHUNK).min(runs) {
                        let (stats, v) = one(i, Mode::Fast);
                        if tx.send((i, stats.inputs, v)).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            for r in rx {
                results.push(r);
                progress(results.len() as u64);
            }
        });
    }
    results.sort_by_key(|r| r.0);
    let mut report = Report {
        runs: results.len() as u64,
        ..Report::default()
    };
    let mut failing = Vec::new();
    for (i, inputs, v) in results {
        report.steps += inputs;
        if let Some(v) = v {
            failing.push(i);
            report.violations.push(v);
        }
    }
    // Traces cost formatting on every step, so the fast runs keep none: the first few failing
    // runs are simply run again with tracing on, which also proves they replay.
    for (v, &i) in report.violations.iter_mut().zip(&failing).take(MAX_TRACED) {
        match one(i, Mode::Trace).1 {
            Some(again) if again.step == v.step && again.invariant == v.invariant => {
                v.trace = again.trace
            }
            other => {
                v.trace = vec![format!(
                    "NONDETERMINISM: running seed {} again gave {:?}",
                    v.seed,
                    other.map(|a| (a.step, a.invariant, a.message))
                )];
            }
        }
    }
    report
}

/// Runs the single run of `seed` (a [`Violation::seed`]) again, logging every input and action
/// into [`RunStats::log`], and returns its statistics and violation, if any.
pub fn replay(model: Arc<Model>, seed: u64, steps: u32) -> (RunStats, Option<Violation>) {
    simulate(
        &model,
        Engine::new(model.clone()),
        seed,
        steps,
        Mode::Verbose,
    )
}
