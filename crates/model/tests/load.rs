//! Successful loads: warnings, defaults, rank order, component slots, paths, explain, summary.

mod common;

use std::time::Duration;

use common::{app, ok, warn, SG_2N, SI_S};
use nines_model::{defaults, CompKind, EntityRef, Healthcheck, Probation, Recovery, Redundancy};

// ---- warnings ------------------------------------------------------------------------------

#[test]
fn two_n_with_one_su_warns() {
    let sg = "g:   # <-
  redundancy: 2n
  units: { u1: { node: n1 } }
  components: { c: { kind: process, instantiate: [x] } }";
    warn(&app(sg, SI_S), "a/g", "only one SU");
}

#[test]
fn no_redundancy_with_more_sis_than_sus_warns() {
    let sg = "g:   # <-
  redundancy: no-redundancy
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: process, instantiate: [x] } }";
    let sis = "s1: { sg: g, csis: { x: { component: c } } }
s2: { sg: g, csis: { x: { component: c } } }
s3: { sg: g, csis: { x: { component: c } } }";
    warn(&app(sg, sis), "a/g", "3 SIs but only 2 SUs");
}

#[test]
fn unreachable_preferences_warn() {
    let sg = "g:
  redundancy: n-way
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: process, instantiate: [x] } }";
    let sis = "s: { sg: g, standbys: 2, csis: { x: { component: c } } }   # <-";
    warn(&app(sg, sis), "a/s", "at most 1 standbys");
    let sg = "g:
  redundancy: n-way-active
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: process, instantiate: [x] } }";
    let sis = "s: { sg: g, active: 3, csis: { x: { component: c } } }   # <-";
    warn(&app(sg, sis), "a/s", "at most 2 active");
}

#[test]
fn a_clean_config_has_no_warnings() {
    assert!(ok(&app(SG_2N, SI_S)).warnings.is_empty());
}

// ---- defaults ------------------------------------------------------------------------------

#[test]
fn defaults_are_applied() {
    let text = "\
cluster: c
nodes: [n1, n2]
apps:
  a:
    sgs:
      g:
        redundancy: 2n
        units: { u1: { node: n1 }, u2: { node: n2 } }
        components: { c: { kind: sa-aware, instantiate: [x] } }
    sis:
      s: { sg: g, csis: { x: { component: c } } }
      t: { sg: g, depends_on: { s: ~ }, csis: { x: { component: c } } }
";
    let m = ok(text).model;
    assert_eq!(m.nodes[0].su_failover, defaults::SU_FAILOVER);
    let sg = &m.sgs[0];
    assert_eq!(sg.fail_back, defaults::FAIL_BACK);
    assert_eq!(sg.auto_repair, defaults::AUTO_REPAIR);
    assert_eq!(sg.comp_restart, defaults::COMP_RESTART);
    assert_eq!(sg.su_restart, defaults::SU_RESTART);
    assert_eq!(sg.max_active_sis_per_su, None);
    assert_eq!(sg.max_standby_sis_per_su, None);
    let su = &m.sus[0];
    assert_eq!(su.rank, defaults::SU_RANK);
    assert_eq!(su.locked_instantiation, defaults::LOCKED_INSTANTIATION);
    let c = &m.comps[0];
    assert_eq!(c.kind, CompKind::SaAware);
    assert_eq!(c.timeouts, defaults::TIMEOUTS);
    assert_eq!(c.instantiation, defaults::INSTANTIATION);
    assert_eq!(c.recovery, defaults::RECOVERY);
    assert_eq!(c.healthcheck, None);
    assert_eq!(
        (c.terminate.clone(), c.cleanup.clone(), c.monitor.clone()),
        (None, None, None)
    );
    let si = &m.sis[0];
    assert_eq!(si.rank, defaults::SI_RANK);
    assert_eq!((si.preferred_active, si.preferred_standby), (1, 1));
    assert_eq!(
        m.sis[1].depends_on[0].tolerance,
        defaults::DEPENDENCY_TOLERANCE
    );
}

#[test]
fn the_chosen_defaults() {
    // The values promised in the design brief; change them deliberately, not by accident.
    assert_eq!(
        defaults::COMP_RESTART,
        Probation {
            max: 2,
            within: Duration::from_secs(10)
        }
    );
    assert_eq!(
        defaults::SU_RESTART,
        Probation {
            max: 1,
            within: Duration::from_secs(30)
        }
    );
    assert_eq!(
        defaults::SU_FAILOVER,
        Probation {
            max: 2,
            within: Duration::from_secs(60)
        }
    );
    assert_eq!(defaults::TIMEOUTS.instantiate, Duration::from_secs(10));
    assert_eq!(defaults::TIMEOUTS.terminate, Duration::from_secs(5));
    assert_eq!(defaults::TIMEOUTS.cleanup, Duration::from_secs(5));
    assert_eq!(defaults::TIMEOUTS.callback, Duration::from_secs(1));
    assert_eq!(defaults::INSTANTIATION.retries, 2);
    assert_eq!(defaults::INSTANTIATION.delayed_retries, 2);
    assert_eq!(defaults::INSTANTIATION.retry_delay, Duration::from_secs(1));
    assert_eq!(defaults::RECOVERY, Recovery::ComponentFailover);
    const { assert!(!defaults::FAIL_BACK) };
    const { assert!(defaults::AUTO_REPAIR) };
}

#[test]
fn partial_blocks_keep_the_other_defaults() {
    let sg = "g:
  redundancy: 2n
  escalation: { comp_restart: { max: 5 }, su_restart: { within: 1m } }
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components:
    c:
      kind: process
      instantiate: [x]
      timeouts: { terminate: 2s }
      instantiation: { retries: 0 }";
    let m = ok(&app(sg, SI_S)).model;
    let sg = &m.sgs[0];
    assert_eq!(sg.comp_restart.max, 5);
    assert_eq!(sg.comp_restart.within, defaults::COMP_RESTART.within);
    assert_eq!(sg.su_restart.max, defaults::SU_RESTART.max);
    assert_eq!(sg.su_restart.within, Duration::from_secs(60));
    let c = &m.comps[0];
    assert_eq!(c.timeouts.terminate, Duration::from_secs(2));
    assert_eq!(c.timeouts.instantiate, defaults::TIMEOUTS.instantiate);
    assert_eq!(c.instantiation.retries, 0);
    assert_eq!(
        c.instantiation.delayed_retries,
        defaults::INSTANTIATION.delayed_retries
    );
}

#[test]
fn per_model_assignment_defaults() {
    let cases = [
        ("2n", "", 1, 1),
        ("n+m\n  active_sus: 2\n  standby_sus: 1", "", 1, 1),
        ("n-way", "", 1, defaults::NWAY_STANDBYS),
        ("n-way", "standbys: 2, ", 1, 2),
        ("n-way-active", "", 3, 0),
        ("n-way-active", "active: 2, ", 2, 0),
        ("no-redundancy", "", 1, 0),
        ("2n", "standbys: 0, ", 1, 0),
    ];
    for (model, si_keys, active, standby) in cases {
        let sg = format!(
            "g:
  redundancy: {model}
  units: {{ u1: {{ node: n1 }}, u2: {{ node: n2 }}, u3: {{ node: n3 }} }}
  components: {{ c: {{ kind: process, instantiate: [x] }} }}"
        );
        let sis = format!("s: {{ sg: g, {si_keys}csis: {{ x: {{ component: c }} }} }}");
        let m = ok(&app(&sg, &sis)).model;
        assert_eq!(
            (m.sis[0].preferred_active, m.sis[0].preferred_standby),
            (active, standby),
            "{model} {si_keys}"
        );
    }
}

#[test]
fn every_key_is_read() {
    let text = "\
cluster: full
nodes:
  n1: { escalation: { su_failover: { max: 7, within: 1m30s } } }
  n2: {}
  n3:
apps:
  a:
    sgs:
      g:
        redundancy: n+m
        active_sus: 2
        standby_sus: 1
        fail_back: true
        auto_repair: false
        max_active_sis_per_su: 4
        max_standby_sis_per_su: 5
        escalation: { comp_restart: { max: 3, within: 20s }, su_restart: { max: 0, within: 1h } }
        units:
          u1: { node: n1, rank: 1 }
          u2: { node: n2, rank: 2, locked_instantiation: true }
          u3: { node: n3, rank: 3 }
        components:
          c:
            kind: process
            instantiate: [qemu, -m, 512, --snapshot, true]
            terminate: [stop]
            cleanup: [kill]
            monitor: [check, --deep]
            timeouts: { instantiate: 500us, terminate: 100ms, cleanup: 2s, callback: 1h }
            recovery: node-failfast
            instantiation: { retries: 4, delayed_retries: 6, retry_delay: 250ms }
          d:
            kind: sa-aware
            instantiate: [d]
            healthcheck: { period: 100ms, max_duration: 50ms }
    sis:
      s:
        sg: g
        rank: 2
        standbys: 1
        depends_on: { t: { tolerance: 2s } }
        csis:
          x: { component: d, attrs: { port: 7100, on: true, name: x } }
          y: { component: c }
      t: { sg: g, rank: 1, csis: { z: { component: c } } }
";
    let m = ok(text).model;
    assert_eq!(m.cluster, "full");
    assert_eq!(
        m.nodes[0].su_failover,
        Probation {
            max: 7,
            within: Duration::from_secs(90)
        }
    );
    assert_eq!(m.nodes[1].su_failover, defaults::SU_FAILOVER);
    let sg = &m.sgs[0];
    assert_eq!(
        sg.redundancy,
        Redundancy::NPlusM {
            active_sus: 2,
            standby_sus: 1
        }
    );
    assert!(sg.fail_back && !sg.auto_repair);
    assert_eq!(
        (sg.max_active_sis_per_su, sg.max_standby_sis_per_su),
        (Some(4), Some(5))
    );
    assert_eq!(
        sg.comp_restart,
        Probation {
            max: 3,
            within: Duration::from_secs(20)
        }
    );
    assert_eq!(
        sg.su_restart,
        Probation {
            max: 0,
            within: Duration::from_secs(3600)
        }
    );
    assert_eq!(sg.component_names, ["c", "d"]);
    assert!(m.sus[1].locked_instantiation && !m.sus[0].locked_instantiation);
    let c = &m.comps[0];
    assert_eq!(c.kind, CompKind::Process);
    assert_eq!(c.instantiate, ["qemu", "-m", "512", "--snapshot", "true"]);
    assert_eq!(c.terminate.as_deref(), Some(&["stop".to_string()][..]));
    assert_eq!(c.cleanup.as_deref(), Some(&["kill".to_string()][..]));
    assert_eq!(c.monitor.as_ref().map(Vec::len), Some(2));
    assert_eq!(c.timeouts.instantiate, Duration::from_micros(500));
    assert_eq!(c.timeouts.terminate, Duration::from_millis(100));
    assert_eq!(c.timeouts.cleanup, Duration::from_secs(2));
    assert_eq!(c.timeouts.callback, Duration::from_secs(3600));
    assert_eq!(c.recovery, Recovery::NodeFailfast);
    assert_eq!(c.instantiation.retries, 4);
    assert_eq!(c.instantiation.delayed_retries, 6);
    assert_eq!(c.instantiation.retry_delay, Duration::from_millis(250));
    assert_eq!(
        m.comps[1].healthcheck,
        Some(Healthcheck {
            period: Duration::from_millis(100),
            max_duration: Duration::from_millis(50)
        })
    );
    let s = &m.sis[0];
    assert_eq!(s.rank, 2);
    assert_eq!(s.depends_on.len(), 1);
    assert_eq!(m.sis[s.depends_on[0].sponsor.index()].name, "t");
    assert_eq!(s.depends_on[0].tolerance, Duration::from_secs(2));
    let x = &m.csis[s.csis[0].index()];
    assert_eq!(x.comp_slot, 1);
    assert_eq!(x.attrs["port"], "7100");
    assert_eq!(x.attrs["on"], "true");
    assert_eq!(x.attrs["name"], "x");
    assert_eq!(m.csis[s.csis[1].index()].comp_slot, 0);
    // SIs by rank: t (1) before s (2).
    assert_eq!(
        sg.sis
            .iter()
            .map(|s| m.sis[s.index()].name.as_str())
            .collect::<Vec<_>>(),
        ["t", "s"]
    );
}

#[test]
fn every_recovery_spelling_loads() {
    for r in Recovery::ALL {
        let sg = format!(
            "g:
  redundancy: 2n
  units: {{ u1: {{ node: n1 }}, u2: {{ node: n2 }} }}
  components: {{ c: {{ kind: process, instantiate: [x], recovery: {} }} }}",
            r.name()
        );
        assert_eq!(ok(&app(&sg, SI_S)).model.comps[0].recovery, r);
    }
}

// ---- order, slots, paths -------------------------------------------------------------------

#[test]
fn sus_and_sis_sorted_by_rank_ties_in_config_order() {
    let sg = "g:
  redundancy: n-way
  units:
    u-a: { node: n1, rank: 3 }
    u-b: { node: n2, rank: 1 }
    u-c: { node: n3, rank: 2 }
    u-d: { node: n1, rank: 1 }
    u-e: { node: n2 }
  components: { c: { kind: process, instantiate: [x] } }";
    let sis = "s-a: { sg: g, rank: 2, csis: { x: { component: c } } }
s-b: { sg: g, rank: 1, csis: { x: { component: c } } }
s-c: { sg: g, rank: 2, csis: { x: { component: c } } }
s-d: { sg: g, csis: { x: { component: c } } }";
    let m = ok(&app(sg, sis)).model;
    let sus: Vec<&str> = m.sgs[0]
        .sus
        .iter()
        .map(|s| m.sus[s.index()].name.as_str())
        .collect();
    assert_eq!(sus, ["u-b", "u-d", "u-e", "u-c", "u-a"]);
    let sis: Vec<&str> = m.sgs[0]
        .sis
        .iter()
        .map(|s| m.sis[s.index()].name.as_str())
        .collect();
    assert_eq!(sis, ["s-b", "s-d", "s-a", "s-c"]);
    // Node::sus in id (config) order.
    let n1: Vec<&str> = m.nodes[0]
        .sus
        .iter()
        .map(|s| m.sus[s.index()].name.as_str())
        .collect();
    assert_eq!(n1, ["u-a", "u-d"]);
}

#[test]
fn comp_slots_follow_component_order() {
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components:
    zeta: { kind: process, instantiate: [z] }
    alpha: { kind: process, instantiate: [a] }
    mid: { kind: process, instantiate: [m] }";
    let sis = "s: { sg: g, csis: { one: { component: mid }, two: { component: zeta }, three: { component: alpha } } }";
    let m = ok(&app(sg, sis)).model;
    assert_eq!(m.sgs[0].component_names, ["zeta", "alpha", "mid"]);
    let slots: Vec<usize> = m.csis.iter().map(|c| c.comp_slot).collect();
    assert_eq!(slots, [2, 0, 1]);
    for &su in &m.sgs[0].sus {
        for (i, csi) in m.csis.iter().enumerate() {
            let comp = &m.comps[m.comp_for(su, nines_model::CsiId(i as u32)).index()];
            let wanted = ["mid", "zeta", "alpha"][i];
            assert_eq!(comp.name, wanted, "{}", csi.name);
            assert_eq!(comp.su, su);
        }
    }
}

#[test]
fn find_and_path_round_trip() {
    let m = ok(&app(SG_2N, SI_S)).model;
    for e in common::all_entities(&m) {
        assert_eq!(m.find(&m.path(e)), Some(e));
    }
    assert_eq!(
        m.find("a/g/u1/c").map(|e| m.path(e)).as_deref(),
        Some("a/g/u1/c")
    );
    assert!(matches!(m.find("a/s/x"), Some(EntityRef::Csi(_))));
    assert!(matches!(m.find("node/n1"), Some(EntityRef::Node(_))));
    assert_eq!(m.find("a/nope"), None);
}

#[test]
fn map_form_and_list_form_nodes_agree() {
    let list = ok(&app(SG_2N, SI_S)).model;
    let text = app(SG_2N, SI_S).replace(
        "nodes: [n1, n2, n3]",
        "nodes:\n  n1: ~\n  n2: {}\n  n3: { escalation: {} }",
    );
    let map = ok(&text).model;
    assert_eq!(list, map);
}

#[test]
fn anchors_and_merges_work() {
    let text = "\
cluster: c
nodes: [n1, n2]
apps:
  a:
    sgs:
      g:
        redundancy: 2n
        units: { u1: { node: n1 }, u2: { node: n2 } }
        components:
          c: &proc { kind: process, instantiate: [x], recovery: restart }
          d: { <<: *proc, instantiate: [y] }
    sis:
      s: { sg: g, csis: { x: { component: c } } }
";
    let m = ok(text).model;
    assert_eq!(m.comps[1].recovery, Recovery::ComponentRestart);
    assert_eq!(m.comps[1].instantiate, ["y"]);
}

// ---- explain and summary -------------------------------------------------------------------

#[test]
fn explain_documents_every_key_and_default() {
    let text = nines_model::explain();
    for key in [
        "cluster",
        "nodes",
        "apps",
        "su_failover",
        "sgs",
        "sis",
        "redundancy",
        "active_sus",
        "standby_sus",
        "fail_back",
        "auto_repair",
        "max_active_sis_per_su",
        "max_standby_sis_per_su",
        "comp_restart",
        "su_restart",
        "units",
        "node",
        "rank",
        "locked_instantiation",
        "components",
        "kind",
        "instantiate",
        "terminate",
        "cleanup",
        "monitor",
        "timeouts.instantiate",
        "timeouts.terminate",
        "timeouts.cleanup",
        "timeouts.callback",
        "healthcheck",
        "period",
        "max_duration",
        "recovery",
        "instantiation.retries",
        "instantiation.delayed_retries",
        "instantiation.retry_delay",
        "sg",
        "active",
        "standbys",
        "depends_on",
        "tolerance",
        "csis",
        "component",
        "attrs",
    ] {
        assert!(text.contains(key), "explain() does not mention `{key}`");
    }
    for default in [
        "max 2 within 10s",
        "max 1 within 30s",
        "max 2 within 1m",
        "Default: 10s",
        "Default: 5s",
        "Default: 1s",
        "Default: failover",
        "Default: false",
        "Default: true",
    ] {
        assert!(text.contains(default), "explain() lacks `{default}`");
    }
    for r in Recovery::ALL {
        assert!(text.contains(r.name()));
    }
}

#[test]
fn summary_counts_and_lists_sgs() {
    let m = ok(&app(SG_2N, SI_S)).model;
    let s = nines_model::summary(&m);
    assert!(
        s.contains("3 nodes, 1 apps, 1 SGs, 2 SUs, 2 components, 1 SIs, 1 CSIs"),
        "{s}"
    );
    assert!(s.contains("a/g: 2n; SUs: u1@n1#1 u2@n2#2; SIs: s#1"), "{s}");
}

#[test]
fn large_config_loads_quickly() {
    // The simulator's scale target: 10,000 components across 1,000 nodes.
    let mut t = String::from("cluster: big\nnodes:\n");
    for n in 0..1000 {
        t.push_str(&format!("  - node-{n}\n"));
    }
    t.push_str("apps:\n  big:\n    sgs:\n");
    for g in 0..1000 {
        t.push_str(&format!(
            "      sg-{g}:\n        redundancy: 2n\n        units: {{ a: {{ node: node-{}, rank: 1 }}, b: {{ node: node-{}, rank: 2 }} }}\n        components:\n",
            g,
            (g + 1) % 1000
        ));
        for c in 0..5 {
            t.push_str(&format!(
                "          c{c}: {{ kind: process, instantiate: [x] }}\n"
            ));
        }
    }
    t.push_str("    sis:\n");
    for s in 0..2000 {
        t.push_str(&format!(
            "      si-{s}: {{ sg: sg-{}, rank: {}, csis: {{ x: {{ component: c0 }} }} }}\n",
            s % 1000,
            s % 3 + 1
        ));
    }
    let start = std::time::Instant::now();
    let m = ok(&t).model;
    assert_eq!(m.comps.len(), 10_000);
    assert_eq!(m.sis.len(), 2000);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}
