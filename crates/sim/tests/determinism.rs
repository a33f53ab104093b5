//! A seed is a bug report only if it replays exactly: these tests hold the simulator to that,
//! through the public API and with the real engine on the built-in config.

use std::sync::Arc;

use nines_model::Model;
use nines_sim::{builtin_config, replay, run, run_seed, SimOptions};

fn builtin() -> Arc<Model> {
    match nines_model::load(builtin_config(), "<builtin>") {
        Ok(loaded) => Arc::new(loaded.model),
        Err(errors) => panic!("the built-in config does not load: {errors:?}"),
    }
}

#[test]
fn builtin_config_covers_every_redundancy_model() {
    let m = builtin();
    let mut names: Vec<&str> = m.sgs.iter().map(|g| g.redundancy.name()).collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names,
        ["2n", "n+m", "n-way", "n-way-active", "no-redundancy"]
    );
}

/// Run seeds are part of the replay contract: `nines sim --seed 1` must name the same runs in
/// every version.
#[test]
fn run_seeds_are_pinned() {
    assert_eq!(run_seed(0, 0), 0xE220_A839_7B1D_CDAF);
    assert_eq!(run_seed(0, 1), 0x6E78_9E6A_A1B9_65F4);
    assert_ne!(run_seed(1, 0), run_seed(2, 0));
}

#[test]
fn same_seed_same_run_byte_for_byte() {
    let m = builtin();
    for i in 0..5 {
        let seed = run_seed(11, i);
        let (a, va) = replay(m.clone(), seed, 120);
        let (b, vb) = replay(m.clone(), seed, 120);
        assert_eq!(a, b, "stats and logs of seed {seed}");
        assert_eq!(va, vb, "violation of seed {seed}");
        assert!(a.inputs > 100 && !a.log.is_empty());
        assert_eq!(a.log.len() as u64, a.inputs + a.actions + a.node_downs);
    }
    let (c, _) = replay(m.clone(), run_seed(11, 0), 120);
    let (d, _) = replay(m, run_seed(11, 1), 120);
    assert_ne!(c.log, d.log, "different seeds, different runs");
}

#[test]
fn thread_count_does_not_change_the_report() {
    let m = builtin();
    let mut opts = SimOptions {
        seed: 3,
        runs: 48,
        steps: 100,
        threads: 1,
    };
    let mut seen = Vec::new();
    let one = run(m.clone(), &opts, &mut |d| seen.push(d));
    assert_eq!(seen, (1..=48).collect::<Vec<u64>>());
    opts.threads = 2;
    let mut last = 0;
    let two = run(m.clone(), &opts, &mut |d| last = d);
    assert_eq!(last, 48);
    opts.threads = 5;
    let five = run(m, &opts, &mut |_| {});
    assert_eq!(one, two);
    assert_eq!(one, five);
    assert_eq!(one.runs, 48);
    assert!(one.steps > 48 * 100);
}

/// Every violation a multi-run report gives must come back, identical, from its seed alone.
#[test]
fn violations_replay_from_their_seed() {
    let m = builtin();
    let opts = SimOptions {
        seed: 1,
        runs: 200,
        ..SimOptions::default()
    };
    let report = run(m.clone(), &opts, &mut |_| {});
    for v in report.violations.iter().take(5) {
        let (_, again) = replay(m.clone(), v.seed, v.steps);
        let again = again.expect("the violation replays");
        assert_eq!(
            (again.step, again.invariant, &again.message),
            (v.step, v.invariant, &v.message)
        );
        assert_eq!(again.trace, v.trace);
        assert!(v
            .to_string()
            .contains(&format!("nines sim --replay {}", v.seed)));
    }
}
