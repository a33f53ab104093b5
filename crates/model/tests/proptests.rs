//! Property tests: `load` never panics on any input, and every generated valid config loads and
//! satisfies the model's invariants.

mod common;

use std::fmt::Write;

use proptest::prelude::*;

fn load_does_not_panic(text: &str) {
    match nines_model::load(text, "fuzz.yaml") {
        Ok(loaded) => common::check_invariants(&loaded.model),
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                assert_eq!(e.file, "fuzz.yaml");
                let _ = e.to_string();
            }
        }
    }
}

/// Pieces of config-like YAML, so random text gets past the parser often enough to exercise
/// decoding and building.
const TOKENS: &[&str] = &[
    "cluster:",
    "nodes:",
    "apps:",
    "sgs:",
    "sis:",
    "units:",
    "components:",
    "redundancy:",
    "2n",
    "n+m",
    "n-way",
    "n-way-active",
    "no-redundancy",
    "node:",
    "rank:",
    "kind:",
    "sa-aware",
    "process",
    "instantiate:",
    "csis:",
    "component:",
    "sg:",
    "depends_on:",
    "tolerance:",
    "active:",
    "standbys:",
    "active_sus:",
    "standby_sus:",
    "escalation:",
    "comp_restart:",
    "within:",
    "max:",
    "healthcheck:",
    "period:",
    "timeouts:",
    "attrs:",
    "n1",
    "n2",
    "a",
    "g",
    "s",
    "c",
    "x",
    "u1",
    "[",
    "]",
    "{",
    "}",
    ",",
    "- ",
    "\n",
    "  ",
    "    ",
    " ",
    ":",
    "0",
    "1",
    "-1",
    "2",
    "99999999999999999999999",
    "1.5",
    "10s",
    "0s",
    "1m30s",
    "10x",
    "~",
    "null",
    "true",
    "yes",
    "&a ",
    "*a",
    "<<: ",
    "!!str ",
    "!!int ",
    "'",
    "\"",
    "#",
    "|",
    ">",
    "? ",
    "---",
    "...",
    "%YAML 1.2\n",
    "é",
    "\t",
    "/",
    "node",
];

fn yamlish() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..80).prop_map(|t| t.concat())
}

fn example_text() -> String {
    let path = format!("{}/../../examples/sim-mix.yaml", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).unwrap_or_default()
}

// ---- generated valid configs ---------------------------------------------------------------

#[derive(Clone, Debug)]
struct SgSpec {
    model: u8,
    sus: Vec<(u32, usize)>,
    comps: usize,
    fail_back: bool,
    split: usize,
}

#[derive(Clone, Debug)]
struct SiSpec {
    sg: usize,
    rank: Option<u32>,
    csis: Vec<usize>,
    deps: Vec<usize>,
    pref: usize,
}

#[derive(Clone, Debug)]
struct AppSpec {
    sgs: Vec<SgSpec>,
    sis: Vec<SiSpec>,
}

fn sg_spec() -> impl Strategy<Value = SgSpec> {
    (
        0u8..5,
        prop::collection::vec((1u32..4, any::<usize>()), 1..6),
        1usize..4,
        any::<bool>(),
        any::<usize>(),
    )
        .prop_map(|(model, sus, comps, fail_back, split)| SgSpec {
            model,
            sus,
            comps,
            fail_back,
            split,
        })
}

fn si_spec() -> impl Strategy<Value = SiSpec> {
    (
        any::<usize>(),
        prop::option::of(1u32..4),
        prop::collection::vec(any::<usize>(), 1..4),
        prop::collection::vec(any::<usize>(), 0..3),
        any::<usize>(),
    )
        .prop_map(|(sg, rank, csis, deps, pref)| SiSpec {
            sg,
            rank,
            csis,
            deps,
            pref,
        })
}

fn app_spec() -> impl Strategy<Value = AppSpec> {
    (
        prop::collection::vec(sg_spec(), 1..4),
        prop::collection::vec(si_spec(), 0..7),
    )
        .prop_map(|(sgs, sis)| AppSpec { sgs, sis })
}

/// Renders a spec as YAML; returns the text and the expected (SUs, components, CSIs) counts.
fn render(nodes: usize, apps: &[AppSpec], map_form: bool) -> (String, usize, usize, usize) {
    const MODELS: [&str; 5] = ["2n", "n+m", "n-way", "n-way-active", "no-redundancy"];
    let (mut sus, mut comps, mut csis) = (0, 0, 0);
    let mut t = String::from("cluster: gen\n");
    if map_form {
        t.push_str("nodes:\n");
        for n in 0..nodes {
            let _ = writeln!(
                t,
                "  node-{n}: {{ escalation: {{ su_failover: {{ max: {n}, within: {}s }} }} }}",
                n + 1
            );
        }
    } else {
        let names: Vec<String> = (0..nodes).map(|n| format!("node-{n}")).collect();
        let _ = writeln!(t, "nodes: [{}]", names.join(", "));
    }
    t.push_str("apps:\n");
    for (a, app) in apps.iter().enumerate() {
        let _ = writeln!(t, "  app-{a}:\n    sgs:");
        let mut su_counts = Vec::new();
        for (g, sg) in app.sgs.iter().enumerate() {
            let model = MODELS[sg.model as usize];
            let mut units = sg.sus.clone();
            if model == "n+m" && units.len() < 2 {
                units.push((2, 0));
            }
            let _ = writeln!(
                t,
                "      sg-{g}:\n        redundancy: {model}\n        fail_back: {}",
                sg.fail_back
            );
            if model == "n+m" {
                let active = 1 + sg.split % (units.len() - 1);
                let standby = 1 + sg.split % (units.len() - active);
                let _ = writeln!(
                    t,
                    "        active_sus: {active}\n        standby_sus: {standby}"
                );
            }
            t.push_str("        units:\n");
            for (u, (rank, node)) in units.iter().enumerate() {
                let _ = writeln!(
                    t,
                    "          su-{u}: {{ node: node-{}, rank: {rank} }}",
                    node % nodes
                );
            }
            t.push_str("        components:\n");
            for c in 0..sg.comps {
                let _ = writeln!(
                    t,
                    "          comp-{c}: {{ kind: process, instantiate: [/bin/c{c}] }}"
                );
            }
            sus += units.len();
            comps += units.len() * sg.comps;
            su_counts.push((model, units.len(), sg.comps));
        }
        t.push_str("    sis:\n");
        for (i, si) in app.sis.iter().enumerate() {
            let g = si.sg % app.sgs.len();
            let (model, su_count, comp_count) = su_counts[g];
            let _ = writeln!(t, "      si-{i}:\n        sg: sg-{g}");
            if let Some(rank) = si.rank {
                let _ = writeln!(t, "        rank: {rank}");
            }
            match model {
                "2n" | "n+m" => {
                    let _ = writeln!(t, "        standbys: {}", si.pref % 2);
                }
                "n-way" => {
                    let _ = writeln!(t, "        standbys: {}", si.pref % su_count);
                }
                "n-way-active" => {
                    let _ = writeln!(t, "        active: {}", 1 + si.pref % su_count);
                }
                _ => {}
            }
            if i > 0 && !si.deps.is_empty() {
                let mut deps: Vec<usize> = si.deps.iter().map(|d| d % i).collect();
                deps.sort_unstable();
                deps.dedup();
                t.push_str("        depends_on:\n");
                for d in deps {
                    let _ = writeln!(t, "          si-{d}: {{ tolerance: {d}ms }}");
                }
            }
            t.push_str("        csis:\n");
            for (k, c) in si.csis.iter().enumerate() {
                let _ = writeln!(
                    t,
                    "          csi-{k}: {{ component: comp-{}, attrs: {{ k: v{k} }} }}",
                    c % comp_count
                );
            }
            csis += si.csis.len();
        }
    }
    (t, sus, comps, csis)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        load_does_not_panic(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn random_yamlish_text_never_panics(text in yamlish()) {
        load_does_not_panic(&text);
    }

    #[test]
    fn mutated_examples_never_panic(
        cuts in prop::collection::vec((any::<usize>(), 0usize..40, prop::sample::select(TOKENS)), 1..4)
    ) {
        let mut text = example_text();
        for (at, len, token) in cuts {
            let mut start = at % (text.len() + 1);
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = (start + len).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.replace_range(start..end, token);
        }
        load_does_not_panic(&text);
    }

    #[test]
    fn generated_valid_configs_load(
        nodes in 1usize..6,
        apps in prop::collection::vec(app_spec(), 1..4),
        map_form in any::<bool>(),
    ) {
        let (text, sus, comps, csis) = render(nodes, &apps, map_form);
        let loaded = match nines_model::load(&text, "gen.yaml") {
            Ok(loaded) => loaded,
            Err(errors) => panic!("{}\n--- in ---\n{text}", common::render(&errors)),
        };
        let m = &loaded.model;
        common::check_invariants(m);
        prop_assert_eq!(m.nodes.len(), nodes);
        prop_assert_eq!(m.apps.len(), apps.len());
        prop_assert_eq!(m.sgs.len(), apps.iter().map(|a| a.sgs.len()).sum::<usize>());
        prop_assert_eq!(m.sis.len(), apps.iter().map(|a| a.sis.len()).sum::<usize>());
        prop_assert_eq!(m.sus.len(), sus);
        prop_assert_eq!(m.comps.len(), comps);
        prop_assert_eq!(m.csis.len(), csis);
        for sg in &m.sgs {
            let ranks: Vec<u32> = sg.sus.iter().map(|s| m.sus[s.index()].rank).collect();
            prop_assert!(ranks.windows(2).all(|w| w[0] <= w[1]));
            let ranks: Vec<u32> = sg.sis.iter().map(|s| m.sis[s.index()].rank).collect();
            prop_assert!(ranks.windows(2).all(|w| w[0] <= w[1]));
        }
        // Summary mentions every SG.
        let summary = nines_model::summary(m);
        for sg in &m.sgs {
            prop_assert!(summary.contains(&sg.path));
        }
    }
}
