//! Hunts engine bugs: runs the simulator on the built-in config (or a config file) and prints
//! one violation per invariant plus a count per invariant.
//!
//! `cargo run --release -p nines-sim --example hunt -- [RUNS] [SEED] [CONFIG]`; with
//! `HUNT_LIST=1` it also lists every failing seed; `HUNT_STEPS=N` sets the injected steps per run.

use std::collections::BTreeMap;
use std::sync::Arc;

fn main() {
    let mut args = std::env::args().skip(1);
    let runs = args.next().and_then(|s| s.parse().ok()).unwrap_or(200);
    let seed = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let (text, name) = match args.next() {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(t) => (t, path),
            Err(e) => {
                eprintln!("hunt: cannot read {path}: {e}");
                std::process::exit(2);
            }
        },
        None => (
            nines_sim::builtin_config().to_string(),
            "<builtin>".to_string(),
        ),
    };
    let model = match nines_model::load(&text, &name) {
        Ok(loaded) => Arc::new(loaded.model),
        Err(errors) => {
            for e in errors {
                eprintln!("{e:?}");
            }
            std::process::exit(2);
        }
    };
    let steps = std::env::var("HUNT_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(nines_sim::DEFAULT_STEPS);
    let opts = nines_sim::SimOptions {
        seed,
        runs,
        steps,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let report = nines_sim::run(model, &opts, &mut |_| {});
    let elapsed = started.elapsed();
    let mut count: BTreeMap<&str, (u32, Vec<u64>)> = BTreeMap::new();
    for v in &report.violations {
        let e = count.entry(v.invariant).or_default();
        if e.0 == 0 {
            println!("{v}\n");
        }
        e.0 += 1;
        if e.1.len() < 5 {
            e.1.push(v.seed);
        }
    }
    if std::env::var_os("HUNT_LIST").is_some() {
        for v in &report.violations {
            println!("seed {} {} step {}", v.seed, v.invariant, v.step);
        }
    }
    for (name, (n, seeds)) in &count {
        println!("{name}: {n} runs, e.g. seeds {seeds:?}");
    }
    println!(
        "{} runs, {} steps, {} violations in {:.2?}",
        report.runs,
        report.steps,
        report.violations.len(),
        elapsed
    );
}
