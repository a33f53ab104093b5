//! Engine speed: deciding the failover of a node that hosts 1,000 active SIs, and bringing
//! 10,000 components on 1,000 nodes to a fully assigned steady state.
//!
//! The world answers every action at once, so what is measured is the engine's own decision
//! time (DESIGN.md target: < 10 ms per node failover).

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use nines_engine::{ActionKind, Command, Engine, Input, Instant, Outcome};
use nines_model::{Model, NodeId};

/// `sgs` 2N SGs of `sis_per_sg` SIs; every active SU on node-0, standbys spread over the
/// other `nodes - 1` nodes; `comps` components per SU.
fn config(nodes: usize, sgs: usize, sis_per_sg: usize, comps: usize, spread: bool) -> String {
    let mut y = String::from("cluster: bench\nnodes: [");
    for n in 0..nodes {
        let _ = write!(y, "{}node-{n}", if n > 0 { ", " } else { "" });
    }
    y.push_str("]\napps:\n  app:\n    sgs:\n");
    for g in 0..sgs {
        let (a, b) = if spread {
            (2 * g % nodes, (2 * g + 1) % nodes)
        } else {
            (0, 1 + g % (nodes - 1))
        };
        let _ = write!(
            y,
            "      sg{g}:\n        redundancy: 2n\n        units:\n          a: {{ node: node-{a}, rank: 1 }}\n          b: {{ node: node-{b}, rank: 2 }}\n        components:\n"
        );
        for c in 0..comps {
            let _ = writeln!(
                y,
                "          c{c}: {{ kind: sa-aware, instantiate: [/bin/true] }}"
            );
        }
    }
    y.push_str("    sis:\n");
    for g in 0..sgs {
        for s in 0..sis_per_sg {
            let _ = write!(y, "      si{g}x{s}: {{ sg: sg{g}, csis: {{ ");
            for c in 0..comps {
                let _ = write!(
                    y,
                    "{}k{c}: {{ component: c{c} }}",
                    if c > 0 { ", " } else { "" }
                );
            }
            y.push_str(" } }\n");
        }
    }
    y
}

fn model(yaml: &str) -> Arc<Model> {
    match nines_model::load(yaml, "bench.yaml") {
        Ok(l) => Arc::new(l.model),
        Err(e) => panic!("bench config rejected: {}", e[0]),
    }
}

/// Answers every action at once until the engine has nothing left to ask.
fn settle(engine: &mut Engine, first: Input) -> usize {
    let now = Instant::from_nanos(1);
    let mut queue = vec![first];
    let mut handled = 0;
    while let Some(input) = queue.pop() {
        handled += 1;
        for a in engine.handle(now, input) {
            queue.push(match a.kind {
                ActionKind::Instantiate { comp, .. } => Input::CommandDone {
                    comp,
                    command: Command::Instantiate,
                    outcome: Outcome::Ok,
                },
                ActionKind::Cleanup { comp } => Input::CommandDone {
                    comp,
                    command: Command::Cleanup,
                    outcome: Outcome::Ok,
                },
                ActionKind::Terminate { comp } => Input::CommandDone {
                    comp,
                    command: Command::Terminate,
                    outcome: Outcome::Ok,
                },
                ActionKind::AssignCsi {
                    comp,
                    csi,
                    ha_state,
                } => Input::CsiAssigned {
                    comp,
                    csi,
                    ha_state,
                    outcome: Outcome::Ok,
                },
                _ => continue,
            });
        }
    }
    handled
}

fn node_failover(c: &mut Criterion) {
    // 100 SGs x 10 SIs = 1,000 SIs active on node-0.
    let m = model(&config(11, 100, 10, 1, false));
    let mut engine = Engine::new(m);
    settle(&mut engine, Input::Start);
    let mut g = c.benchmark_group("engine");
    g.bench_function("node_failover_1000_sis_decide", |b| {
        b.iter_batched(
            || engine.clone(),
            |mut e| {
                black_box(e.handle(Instant::from_nanos(2), Input::NodeDown { node: NodeId(0) }))
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("node_failover_1000_sis_until_recovered", |b| {
        b.iter_batched(
            || engine.clone(),
            |mut e| black_box(settle(&mut e, Input::NodeDown { node: NodeId(0) })),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn steady_state(c: &mut Criterion) {
    // 1,000 nodes, 500 2N SGs of 10 components per SU: 10,000 components, 1,000 SIs.
    let m = model(&config(1000, 500, 2, 10, true));
    assert_eq!(m.comps.len(), 10_000);
    let mut g = c.benchmark_group("engine");
    g.sample_size(10);
    g.bench_function("start_10000_components_1000_nodes", |b| {
        b.iter_batched(
            || Engine::new(m.clone()),
            |mut e| black_box(settle(&mut e, Input::Start)),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, node_failover, steady_state);
criterion_main!(benches);
