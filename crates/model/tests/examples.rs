//! Every shipped example loads without errors or warnings and means what its comment says.

mod common;

use common::ok;
use nines_model::{EntityRef, Loaded, Redundancy};

fn example(name: &str) -> Loaded {
    let path = format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        text.starts_with('#'),
        "{name} must start with a comment saying what it shows"
    );
    let loaded = ok(&text);
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(warnings.is_empty(), "{name}: {warnings:?}");
    loaded
}

#[test]
fn every_yaml_in_examples_loads() {
    let dir = format!("{}/../../examples", env!("CARGO_MANIFEST_DIR"));
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") {
            example(&name);
            count += 1;
        }
    }
    assert!(count >= 6, "only {count} examples");
}

#[test]
fn two_n() {
    let m = example("two-n.yaml").model;
    assert_eq!(m.nodes.len(), 2);
    assert_eq!(m.sgs[0].redundancy, Redundancy::TwoN);
    assert!(m.sgs[0].fail_back);
    assert!(m.comps[0].healthcheck.is_some());
    let Some(EntityRef::Comp(c)) = m.find("counter/sg/su-1/counterd") else {
        panic!("no counterd")
    };
    assert_eq!(
        m.comps[c.index()].instantiate,
        ["nines", "example", "counter"]
    );
    assert_eq!(m.sis[0].preferred_standby, 1);
}

#[test]
fn n_plus_m() {
    let m = example("n-plus-m.yaml").model;
    assert_eq!(m.nodes.len(), 4);
    assert_eq!(
        m.sgs[0].redundancy,
        Redundancy::NPlusM {
            active_sus: 3,
            standby_sus: 1
        }
    );
    assert_eq!(m.sgs[0].sus.len(), 4);
}

#[test]
fn n_way() {
    let m = example("n-way.yaml").model;
    assert_eq!(m.sgs[0].redundancy, Redundancy::NWay);
    assert_eq!(m.sgs[0].sus.len(), 3);
    assert!(m.sis.iter().all(|si| si.preferred_standby == 2));
}

#[test]
fn n_way_active() {
    let m = example("n-way-active.yaml").model;
    assert_eq!(m.sgs[0].redundancy, Redundancy::NWayActive);
    assert_eq!(m.sgs[0].sus.len(), 3);
    assert_eq!(m.sis[0].preferred_active, 3);
    assert_eq!(m.sis[0].preferred_standby, 0);
}

#[test]
fn no_redundancy() {
    let m = example("no-redundancy.yaml").model;
    assert_eq!(m.sgs[0].redundancy, Redundancy::NoRedundancy);
    assert!(m.sis.len() <= m.sus.len());
}

#[test]
fn sim_mix_has_everything_the_simulator_needs() {
    let m = example("sim-mix.yaml").model;
    assert!((3..=6).contains(&m.nodes.len()));
    let models: Vec<&str> = m.sgs.iter().map(|sg| sg.redundancy.name()).collect();
    for wanted in ["2n", "n+m", "n-way", "n-way-active", "no-redundancy"] {
        assert!(models.contains(&wanted), "no {wanted} SG");
    }
    assert_eq!(m.apps.len(), 5);
    assert!(m.sgs.iter().all(|sg| sg.sis.len() >= 2), "a few SIs per SG");
    assert!(m.sgs.iter().any(|sg| {
        let ranks: Vec<u32> = sg.sis.iter().map(|s| m.sis[s.index()].rank).collect();
        ranks.windows(2).any(|w| w[0] != w[1])
    }));
    assert!(m
        .sis
        .iter()
        .any(|si| si.depends_on.iter().any(|d| !d.tolerance.is_zero())));
    assert!(m.sgs.iter().any(|sg| sg.fail_back));
    assert!(m.sgs.iter().any(|sg| !sg.fail_back));
    assert!(m.sgs.iter().any(|sg| sg.component_names.len() >= 2));
}

#[test]
fn vm_2n() {
    let m = example("vm-2n.yaml").model;
    assert_eq!(m.sgs[0].redundancy, Redundancy::TwoN);
    assert_eq!(m.comps.len(), 2);
    let vms: Vec<_> = m.comps.iter().map(|c| c.vm.clone().expect("vm")).collect();
    assert_ne!(m.sus[0].node, m.sus[1].node, "one VM per node");
    // One host runs both nodes under `nines run`: each VM has its own host port, probed.
    assert_ne!(vms[0].forwards[0].host, vms[1].forwards[0].host);
    for vm in &vms {
        assert!(vm.health.is_some());
        assert!(vm.kernel.ends_with("vmlinux"));
    }
}
