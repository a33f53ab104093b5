//! `nines sim`: the deterministic simulator.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use nines_sim::SimOptions;

use crate::{exit, load_file, load_text};

#[derive(Args, Debug)]
pub(crate) struct SimArgs {
    /// Number of independent seeded runs.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Seed from which every run's own seed is derived; the same seed gives the same result.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Faults and admin operations injected per run (each leads to many engine steps).
    #[arg(long, default_value_t = SimOptions::default().steps,
          value_parser = clap::value_parser!(u32).range(1..))]
    steps: u32,
    /// Worker threads; the result does not depend on it.
    #[arg(long, default_value_t = 2, value_parser = positive_usize)]
    threads: usize,
    /// Config to simulate [default: examples/sim-mix.yaml, built in: all five redundancy models].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Replay the single run with this run seed (as printed with a violation) and print its
    /// statistics and any violation.
    #[arg(long, value_name = "SEED", conflicts_with_all = ["runs", "seed", "threads"])]
    replay: Option<u64>,
}

/// Parses a thread count. clap's ranged parsers do not cover `usize`, and zero threads would
/// mean no progress at all, so it is refused here with a precise message.
fn positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `nines sim`: many seeded runs, or one run replayed by its seed.
pub(crate) fn sim(args: &SimArgs) -> ExitCode {
    let model = match &args.config {
        Some(path) => load_file(path),
        None => load_text(nines_sim::builtin_config(), "<builtin>"),
    };
    let Some(model) = model else {
        return ExitCode::FAILURE;
    };
    let model = Arc::new(model);

    if let Some(seed) = args.replay {
        let (stats, violation) = nines_sim::replay(model, seed, args.steps);
        for line in &stats.log {
            outln!("{line}");
        }
        print_stats(&stats);
        if let Some(v) = &violation {
            outln!("{v}");
        }
        return finish(1, stats.inputs, usize::from(violation.is_some()));
    }

    let opts = SimOptions {
        seed: args.seed,
        runs: args.runs,
        steps: args.steps,
        threads: args.threads,
    };
    // Progress only where someone watches (a terminal) or the run is long enough to wonder
    // about; one line per tenth keeps CI logs short.
    let show = std::io::stderr().is_terminal() || args.runs >= 1000;
    let mut last_tenth = 0;
    let mut progress = |done: u64| {
        let tenth = done.saturating_mul(10) / args.runs;
        if show && tenth > last_tenth && done < args.runs {
            last_tenth = tenth;
            eprintln!("sim: {done}/{} runs ({}%)", args.runs, tenth * 10);
        }
    };
    let started = Instant::now();
    let report = nines_sim::run(model, &opts, &mut progress);
    for v in &report.violations {
        outln!("{v}\n");
    }
    if args.config.is_some() && !report.violations.is_empty() {
        outln!("(replays need the same config: add --config to the replay command)");
    }
    eprintln!("sim: took {:.1?}", started.elapsed());
    finish(report.runs, report.steps, report.violations.len())
}

/// Prints the closing line scripts and CI look for, and turns the violation count into the exit
/// code. `steps` counts inputs handed to the engine.
fn finish(runs: u64, steps: u64, violations: usize) -> ExitCode {
    outln!("sim: {runs} runs, {steps} steps, {violations} invariant violations");
    exit(violations == 0)
}

/// What a replayed run did, after its input/action log, so a trace can be judged at a glance.
fn print_stats(s: &nines_sim::RunStats) {
    outln!("replay of run seed {}:", s.seed);
    outln!("  virtual time      {:?}", s.virtual_time);
    outln!("  engine inputs     {}", s.inputs);
    outln!("  engine actions    {}", s.actions);
    outln!(
        "  injected          {} ({} component faults, {} node downs, {} admin ops of which {} refused, {} driver restarts)",
        s.injected, s.component_faults, s.node_downs, s.admin_ops, s.admin_refused, s.driver_restarts
    );
    outln!(
        "  faults            {} detected, {} ignored, {} services recovered, {} fences",
        s.faults_detected,
        s.faults_ignored,
        s.services_recovered,
        s.fences
    );
    outln!("  answers dropped   {}", s.dropped_answers);
    outln!("  settle checks     {}", s.settle_checks);
}
