//! One test per rejection rule: each asserts the error names the entity and the line (marked
//! `# <-` in the config text) and says what is wrong.

mod common;

use common::{app, errors, reject, render, SG_2N, SI_S};

// ---- syntax and structure ------------------------------------------------------------------

#[test]
fn yaml_syntax_error() {
    let e = reject(
        "cluster: c\nnodes: [n1\napps: {}   # <-\n",
        "cluster",
        &["invalid YAML"],
    );
    assert!(e.column >= 1);
}

#[test]
fn duplicate_yaml_key() {
    reject(
        "cluster: c\nnodes: [n1]\nnodes: [n2]   # <-\n",
        "cluster",
        &["duplicate key `nodes`"],
    );
}

#[test]
fn empty_file() {
    let errs = errors("");
    assert_eq!(errs[0].line, 1);
    assert!(
        errs[0].message.contains("expected a map"),
        "{}",
        render(&errs)
    );
}

#[test]
fn root_not_a_map() {
    reject(
        "- cluster   # <-\n",
        "cluster",
        &["expected a map", "found a list"],
    );
}

#[test]
fn missing_cluster_and_nodes() {
    let errs = errors("apps: {}\n");
    let text = render(&errs);
    assert!(text.contains("missing key `cluster`"), "{text}");
    assert!(text.contains("missing key `nodes`"), "{text}");
}

// ---- unknown keys, everywhere --------------------------------------------------------------

#[test]
fn unknown_top_level_key() {
    reject(
        "cluster: c\nnodes: [n1]\nnode: [n2]   # <-\n",
        "cluster",
        &["unknown key `node`", "cluster, nodes, apps"],
    );
}

#[test]
fn unknown_node_key() {
    reject(
        "cluster: c\nnodes:\n  n1: { escalaton: {} }   # <-\n",
        "node/n1",
        &["unknown key `escalaton`", "escalation"],
    );
    reject(
        "cluster: c\nnodes:\n  n1: { escalation: { su_restart: {} } }   # <-\n",
        "node/n1",
        &["unknown key `escalation.su_restart`", "su_failover"],
    );
}

#[test]
fn unknown_app_key() {
    reject(
        "cluster: c\nnodes: [n1]\napps:\n  a:\n    sg: {}   # <-\n",
        "a",
        &["unknown key `sg`", "sgs, sis"],
    );
}

#[test]
fn unknown_sg_key() {
    let sg = format!("{SG_2N}\n  failback: true   # <-");
    reject(
        &app(&sg, SI_S),
        "a/g",
        &["unknown key `failback`", "fail_back"],
    );
}

#[test]
fn unknown_escalation_key() {
    let sg = format!("{SG_2N}\n  escalation: {{ comp_restart: {{ max: 1, whithin: 1s }} }}   # <-");
    reject(
        &app(&sg, SI_S),
        "a/g",
        &[
            "unknown key `escalation.comp_restart.whithin`",
            "max, within",
        ],
    );
}

#[test]
fn unknown_su_key() {
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1, rnak: 1 }, u2: { node: n2 } }   # <-
  components: { c: { kind: process, instantiate: [x] } }";
    reject(&app(sg, SI_S), "a/g/u1", &["unknown key `rnak`", "rank"]);
}

#[test]
fn unknown_component_keys() {
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components:
    c:
      kind: process
      instantiate: [x]
      timeouts: { start: 1s }   # <-";
    reject(
        &app(sg, SI_S),
        "a/g/*/c",
        &["unknown key `timeouts.start`", "instantiate"],
    );
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components:
    c:
      kind: process
      instantiate: [x]
      instantiation: { retry: 1 }   # <-";
    reject(
        &app(sg, SI_S),
        "a/g/*/c",
        &["unknown key `instantiation.retry`"],
    );
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components:
    c:
      kind: sa-aware
      instantiate: [x]
      healthcheck: { period: 1s, max_duration: 1s, timeout: 1s }   # <-";
    reject(
        &app(sg, SI_S),
        "a/g/*/c",
        &["unknown key `healthcheck.timeout`"],
    );
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components:
    c:
      kind: process
      command: [x]   # <-
      instantiate: [x]";
    reject(&app(sg, SI_S), "a/g/*/c", &["unknown key `command`"]);
}

#[test]
fn unknown_si_csi_and_dependency_keys() {
    let sis = "s: { sg: g, priority: 1, csis: { x: { component: c } } }   # <-";
    reject(&app(SG_2N, sis), "a/s", &["unknown key `priority`", "rank"]);
    let sis = "s: { sg: g, csis: { x: { component: c, attr: {} } } }   # <-";
    reject(&app(SG_2N, sis), "a/s/x", &["unknown key `attr`", "attrs"]);
    let sis = "t: { sg: g, csis: { x: { component: c } } }
s: { sg: g, depends_on: { t: { tolerence: 1s } }, csis: { x: { component: c } } }   # <-";
    reject(
        &app(SG_2N, sis),
        "a/s",
        &["unknown key `depends_on.t.tolerence`"],
    );
}

// ---- wrong types ---------------------------------------------------------------------------

#[test]
fn wrong_types() {
    let sg = format!("{SG_2N}\n  fail_back: yes   # <-");
    reject(
        &app(&sg, SI_S),
        "a/g",
        &["`fail_back`", "expected true or false", "a string"],
    );
    let sis = "s: { sg: g, rank: first, csis: { x: { component: c } } }   # <-";
    reject(
        &app(SG_2N, sis),
        "a/s",
        &["`rank`", "expected a whole number"],
    );
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: process, instantiate: /bin/true } }   # <-";
    reject(
        &app(sg, SI_S),
        "a/g/*/c",
        &["`instantiate`", "list of arguments"],
    );
    reject(
        "cluster: c\nnodes: 3   # <-\n",
        "nodes",
        &["list of node names"],
    );
    let sg = "g:
  redundancy: 2n
  units: [u1, u2]   # <-
  components: { c: { kind: process, instantiate: [x] } }";
    reject(
        &app(sg, SI_S),
        "a/g",
        &["`units`", "expected a map of names"],
    );
    let sis = "s: { sg: g, csis: { x: { component: c, attrs: { port: 1.5 } } } }   # <-";
    reject(&app(SG_2N, sis), "a/s/x", &["`attrs.port`", "quote it"]);
}

#[test]
fn negative_and_huge_numbers() {
    let sis = "s: { sg: g, rank: -1, csis: { x: { component: c } } }   # <-";
    reject(&app(SG_2N, sis), "a/s", &["`rank` must be at least 1"]);
    let sis = "s: { sg: g, rank: 4294967296, csis: { x: { component: c } } }   # <-";
    reject(&app(SG_2N, sis), "a/s", &["`rank` is too large"]);
}

#[test]
fn empty_command() {
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: process, instantiate: [] } }   # <-";
    reject(&app(sg, SI_S), "a/g/*/c", &["`instantiate`", "empty"]);
}

#[test]
fn missing_required_keys() {
    let sg = "g:   # <-
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: process, instantiate: [x] } }";
    reject(
        &app(sg, SI_S),
        "a/g",
        &["missing key `redundancy`", "2n, n+m"],
    );
    let sg = "g:
  redundancy: 2n
  units: { u1: { rank: 1 }, u2: { node: n2 } }   # <-
  components: { c: { kind: process, instantiate: [x] } }";
    reject(&app(sg, SI_S), "a/g/u1", &["missing key `node`"]);
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { instantiate: [x] } }   # <-";
    reject(
        &app(sg, SI_S),
        "a/g/*/c",
        &["missing key `kind`", "sa-aware, process, vm"],
    );
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: process } }   # <-";
    reject(&app(sg, SI_S), "a/g/*/c", &["missing key `instantiate`"]);
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: vm } }   # <-";
    reject(&app(sg, SI_S), "a/g/*/c", &["missing key `vm`"]);
    reject(
        &app(SG_2N, "s: { csis: { x: { component: c } } }   # <-"),
        "a/s",
        &["missing key `sg`"],
    );
    reject(
        &app(SG_2N, "s: { sg: g, csis: { x: { } } }   # <-"),
        "a/s/x",
        &["missing key `component`"],
    );
}

// ---- enums ---------------------------------------------------------------------------------

#[test]
fn bad_redundancy_lists_the_allowed_values() {
    let sg = "g:
  redundancy: 2N+1   # <-
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: process, instantiate: [x] } }";
    reject(
        &app(sg, SI_S),
        "a/g",
        &[
            "`redundancy`",
            "`2N+1`",
            "2n, n+m, n-way, n-way-active, no-redundancy",
        ],
    );
}

#[test]
fn bad_kind_lists_the_allowed_values() {
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: daemon, instantiate: [x] } }   # <-";
    reject(
        &app(sg, SI_S),
        "a/g/*/c",
        &["`kind`", "`daemon`", "sa-aware, process, vm"],
    );
}

#[test]
fn bad_recovery_lists_the_allowed_values() {
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: process, instantiate: [x], recovery: reboot } }   # <-";
    reject(
        &app(sg, SI_S),
        "a/g/*/c",
        &[
            "`recovery`",
            "`reboot`",
            "restart, failover, node-switchover, node-failover, node-failfast, app-restart, cluster-reset",
        ],
    );
}

// ---- durations -----------------------------------------------------------------------------

#[test]
fn bad_durations_name_the_key() {
    let sg = format!("{SG_2N}\n  escalation: {{ su_restart: {{ within: 30 }} }}   # <-");
    reject(
        &app(&sg, SI_S),
        "a/g",
        &["`escalation.su_restart.within`", "bad duration", "no unit"],
    );
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components:
    c:
      kind: process
      instantiate: [x]
      timeouts: { cleanup: 5sec }   # <-";
    reject(
        &app(sg, SI_S),
        "a/g/*/c",
        &["`timeouts.cleanup`", "bad duration", "`5sec`"],
    );
    let sis = "t: { sg: g, csis: { x: { component: c } } }
s: { sg: g, depends_on: { t: { tolerance: soon } }, csis: { x: { component: c } } }   # <-";
    reject(
        &app(SG_2N, sis),
        "a/s",
        &["`depends_on.t.tolerance`", "bad duration"],
    );
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components:
    c:
      kind: process
      instantiate: [x]
      instantiation: { retry_delay: [1s] }   # <-";
    reject(
        &app(sg, SI_S),
        "a/g/*/c",
        &["`instantiation.retry_delay`", "bad duration"],
    );
}

#[test]
fn probation_window_must_be_positive() {
    let sg = format!("{SG_2N}\n  escalation: {{ comp_restart: {{ max: 1, within: 0s }} }}   # <-");
    reject(
        &app(&sg, SI_S),
        "a/g",
        &["`escalation.comp_restart.within` must be greater than 0"],
    );
    reject(
        "cluster: c\nnodes:\n  n1: { escalation: { su_failover: { within: 0 } } }   # <-\n",
        "node/n1",
        &["`escalation.su_failover.within` must be greater than 0"],
    );
}

#[test]
fn healthcheck_only_for_sa_aware() {
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components:
    c:
      kind: process
      instantiate: [x]
      healthcheck: { period: 1s, max_duration: 1s }   # <-";
    reject(
        &app(sg, SI_S),
        "a/g/*/c",
        &["`healthcheck` is only for sa-aware", "`process`"],
    );
}

#[test]
fn healthcheck_needs_both_keys() {
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components:
    c:
      kind: sa-aware
      instantiate: [x]
      healthcheck: { period: 1s }   # <-";
    reject(
        &app(sg, SI_S),
        "a/g/*/c",
        &["`healthcheck`: missing key `max_duration`"],
    );
}

// ---- names ---------------------------------------------------------------------------------

#[test]
fn empty_name() {
    reject(
        "cluster: c\nnodes: [n1, '']   # <-\n",
        "node/",
        &["is empty"],
    );
}

#[test]
fn name_with_slash() {
    let sg = "g:
  redundancy: 2n
  units: { u/1: { node: n1 }, u2: { node: n2 } }   # <-
  components: { c: { kind: process, instantiate: [x] } }";
    reject(&app(sg, SI_S), "a/g/u/1", &["name `u/1`", "'/'"]);
}

#[test]
fn name_with_whitespace() {
    let sis = "s: { sg: g, csis: { 'my csi': { component: c } } }   # <-";
    reject(&app(SG_2N, sis), "a/s/my csi", &["whitespace"]);
    reject(
        "cluster: my cluster   # <-\nnodes: [n1]\n",
        "cluster",
        &["whitespace"],
    );
}

#[test]
fn reserved_app_names() {
    for name in ["node", "cluster"] {
        let text = format!("cluster: c\nnodes: [n1]\napps:\n  {name}: {{}}   # <-\n");
        reject(&text, name, &["may not be named", name]);
    }
}

#[test]
fn sg_and_si_names_share_a_namespace() {
    let sis = "g: { sg: g, csis: { x: { component: c } } }   # <-";
    reject(&app(SG_2N, sis), "a/g", &["same name as an SG"]);
}

#[test]
fn names_equal_as_text_are_duplicates() {
    let sg = "g:
  redundancy: 2n
  units: { 1: { node: n1 }, '1': { node: n2 } }   # <-
  components: { c: { kind: process, instantiate: [x] } }";
    reject(&app(sg, SI_S), "a/g/1", &["used twice"]);
}

#[test]
fn at_least_one_node() {
    reject(
        "cluster: c\nnodes: []   # <-\n",
        "nodes",
        &["at least one node"],
    );
    reject(
        "cluster: c\nnodes: {}   # <-\n",
        "nodes",
        &["at least one node"],
    );
}

#[test]
fn node_names_unique() {
    reject(
        "cluster: c\nnodes:\n  - n1\n  - n2\n  - n1   # <-\n",
        "node/n1",
        &["listed twice"],
    );
}

// ---- dangling references -------------------------------------------------------------------

#[test]
fn su_on_unknown_node_lists_known_nodes() {
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n9 } }   # <-
  components: { c: { kind: process, instantiate: [x] } }";
    reject(
        &app(sg, SI_S),
        "a/g/u2",
        &["unknown node `n9`", "n1, n2, n3"],
    );
}

#[test]
fn si_naming_unknown_sg() {
    let sis = "s: { sg: gg, csis: { x: { component: c } } }   # <-";
    reject(&app(SG_2N, sis), "a/s", &["unknown SG `gg`", "its SGs: g"]);
}

#[test]
fn si_naming_an_sg_of_another_app() {
    let text = format!(
        "cluster: c\nnodes: [n1, n2]\napps:\n  a:\n    sgs:\n{}\n  b:\n    sis:\n      s: {{ sg: g, csis: {{ x: {{ component: c }} }} }}   # <-\n",
        common::indent(SG_2N, 6)
    );
    reject(&text, "b/s", &["unknown SG `g` in app `b`"]);
}

#[test]
fn csi_naming_a_component_its_sg_lacks() {
    let sis = "s: { sg: g, csis: { x: { component: d } } }   # <-";
    reject(
        &app(SG_2N, sis),
        "a/s/x",
        &["SG `a/g` has no component `d`", "its components: c"],
    );
}

#[test]
fn dependency_on_unknown_si() {
    let sis = "s: { sg: g, depends_on: { t: {} }, csis: { x: { component: c } } }   # <-";
    reject(&app(SG_2N, sis), "a/s", &["unknown SI `t`", "its SIs: s"]);
}

#[test]
fn dependency_on_si_of_another_app() {
    let text = format!(
        "cluster: c\nnodes: [n1, n2]\napps:\n  a:\n    sgs:\n{sg}\n    sis:\n      s: {{ sg: g, csis: {{ x: {{ component: c }} }} }}\n  b:\n    sgs:\n{sg}\n    sis:\n      s: {{ sg: g, depends_on: {{ a/s: {{ tolerance: 1s }} }}, csis: {{ x: {{ component: c }} }} }}   # <-\n",
        sg = common::indent(SG_2N, 6)
    );
    reject(&text, "b/s", &["`a/s` is an SI of app `a`", "its own app"]);
}

// ---- dependency cycles ---------------------------------------------------------------------

#[test]
fn dependency_cycle_is_named() {
    let sis = "a1: { sg: g, depends_on: { a2: {} }, csis: { x: { component: c } } }
a2: { sg: g, depends_on: { a3: {} }, csis: { x: { component: c } } }
a3: { sg: g, depends_on: { a1: {} }, csis: { x: { component: c } } }   # <-";
    reject(
        &app(SG_2N, sis),
        "a/a3",
        &["SI dependency cycle: a1 -> a2 -> a3 -> a1"],
    );
}

#[test]
fn self_dependency_is_a_cycle() {
    let sis = "s: { sg: g, depends_on: { s: {} }, csis: { x: { component: c } } }   # <-";
    reject(&app(SG_2N, sis), "a/s", &["cycle: s -> s"]);
}

#[test]
fn each_cycle_reported_once_and_acyclic_diamonds_pass() {
    let sis = "a1: { sg: g, depends_on: { a2: {} }, csis: { x: { component: c } } }
a2: { sg: g, depends_on: { a1: {} }, csis: { x: { component: c } } }";
    let errs = errors(&app(SG_2N, sis));
    assert_eq!(errs.len(), 1, "{}", render(&errs));
    let sis = "top: { sg: g, csis: { x: { component: c } } }
l: { sg: g, depends_on: { top: {} }, csis: { x: { component: c } } }
r: { sg: g, depends_on: { top: {} }, csis: { x: { component: c } } }
bottom: { sg: g, depends_on: { l: {}, r: {} }, csis: { x: { component: c } } }";
    common::ok(&app(SG_2N, sis));
}

// ---- impossible redundancy -----------------------------------------------------------------

#[test]
fn n_plus_m_with_too_few_sus() {
    let sg = "g:   # <-
  redundancy: n+m
  active_sus: 2
  standby_sus: 1
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: process, instantiate: [x] } }";
    reject(&app(sg, SI_S), "a/g", &["needs at least 3 SUs", "has 2"]);
}

#[test]
fn n_plus_m_needs_its_sizes() {
    let sg = "g:   # <-
  redundancy: n+m
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: process, instantiate: [x] } }";
    reject(&app(sg, SI_S), "a/g", &["needs `active_sus`"]);
    reject(&app(sg, SI_S), "a/g", &["needs `standby_sus`"]);
}

#[test]
fn n_plus_m_sizes_only_for_n_plus_m() {
    let sg = format!("{SG_2N}\n  active_sus: 1   # <-");
    reject(
        &app(&sg, SI_S),
        "a/g",
        &["`active_sus` is only for n+m", "2n"],
    );
    let sg = format!("{SG_2N}\n  standby_sus: 1   # <-");
    reject(&app(&sg, SI_S), "a/g", &["`standby_sus` is only for n+m"]);
}

#[test]
fn max_sis_per_su_only_where_meaningful() {
    let sg = format!("{SG_2N}\n  max_active_sis_per_su: 2   # <-");
    reject(
        &app(&sg, SI_S),
        "a/g",
        &["`max_active_sis_per_su` is only for"],
    );
    let sg = "g:
  redundancy: n-way-active
  max_standby_sis_per_su: 2   # <-
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: process, instantiate: [x] } }";
    reject(
        &app(sg, SI_S),
        "a/g",
        &["`max_standby_sis_per_su` is only for", "n-way-active"],
    );
    let sg = "g:
  redundancy: n-way
  max_active_sis_per_su: 0   # <-
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: process, instantiate: [x] } }";
    reject(
        &app(sg, SI_S),
        "a/g",
        &["`max_active_sis_per_su` must be at least 1"],
    );
}

#[test]
fn ranks_must_be_at_least_one() {
    let sg = "g:
  redundancy: 2n
  units: { u1: { node: n1, rank: 0 }, u2: { node: n2 } }   # <-
  components: { c: { kind: process, instantiate: [x] } }";
    reject(&app(sg, SI_S), "a/g/u1", &["`rank` must be at least 1"]);
    let sis = "s: { sg: g, rank: 0, csis: { x: { component: c } } }   # <-";
    reject(&app(SG_2N, sis), "a/s", &["`rank` must be at least 1"]);
}

#[test]
fn sg_without_sus() {
    let sg = "g:   # <-
  redundancy: 2n
  units: {}
  components: { c: { kind: process, instantiate: [x] } }";
    reject(&app(sg, SI_S), "a/g", &["has no SUs"]);
    let sg = "g:   # <-
  redundancy: 2n
  components: { c: { kind: process, instantiate: [x] } }";
    reject(&app(sg, SI_S), "a/g", &["has no SUs"]);
}

#[test]
fn sg_without_components() {
    let sg = "g:   # <-
  redundancy: 2n
  units: { u1: { node: n1 }, u2: { node: n2 } }";
    reject(
        &app(sg, "s: { sg: g, csis: { x: { component: c } } }"),
        "a/g",
        &["has no components"],
    );
}

#[test]
fn si_without_csis() {
    reject(&app(SG_2N, "s: { sg: g }   # <-"), "a/s", &["has no CSIs"]);
    reject(
        &app(SG_2N, "s: { sg: g, csis: {} }   # <-"),
        "a/s",
        &["has no CSIs"],
    );
}

#[test]
fn at_most_one_standby_for_2n_and_n_plus_m() {
    let sis = "s: { sg: g, standbys: 2, csis: { x: { component: c } } }   # <-";
    reject(
        &app(SG_2N, sis),
        "a/s",
        &["`standbys` is 2", "at most one standby"],
    );
    let sg = "g:
  redundancy: n+m
  active_sus: 1
  standby_sus: 1
  units: { u1: { node: n1 }, u2: { node: n2 } }
  components: { c: { kind: process, instantiate: [x] } }";
    reject(&app(sg, sis), "a/s", &["at most one standby", "n+m"]);
}

#[test]
fn no_standbys_for_n_way_active_and_no_redundancy() {
    for model in ["n-way-active", "no-redundancy"] {
        let sg = format!(
            "g:
  redundancy: {model}
  units: {{ u1: {{ node: n1 }}, u2: {{ node: n2 }} }}
  components: {{ c: {{ kind: process, instantiate: [x] }} }}"
        );
        let sis = "s: { sg: g, standbys: 1, csis: { x: { component: c } } }   # <-";
        reject(&app(&sg, sis), "a/s", &["`standbys` must be 0", model]);
    }
}

#[test]
fn active_only_for_n_way_active() {
    for model in ["2n", "n-way", "no-redundancy"] {
        let sg = format!(
            "g:
  redundancy: {model}
  units: {{ u1: {{ node: n1 }}, u2: {{ node: n2 }} }}
  components: {{ c: {{ kind: process, instantiate: [x] }} }}"
        );
        let sis = "s: { sg: g, active: 2, csis: { x: { component: c } } }   # <-";
        reject(
            &app(&sg, sis),
            "a/s",
            &["`active` is only for SIs of n-way-active", model],
        );
    }
}

// ---- collecting ----------------------------------------------------------------------------

#[test]
fn all_errors_are_reported_in_file_order() {
    let sg = "g:
  redundancy: 3n
  fail_back: maybe
  units: { u1: { node: n9, rank: 0 } }
  components: { c: { kind: daemon, instantiate: [x], timeouts: { instantiate: 1 } } }";
    let sis = "s: { sg: h, rank: 0, csis: { x: { component: c } } }
t: { sg: g, depends_on: { t: {} }, csis: { y: { component: d } } }";
    let errs = errors(&app(sg, sis));
    let text = render(&errs);
    for fragment in [
        "unknown value `3n`",
        "`fail_back`",
        "unknown node `n9`",
        "`rank` must be at least 1",
        "unknown value `daemon`",
        "`timeouts.instantiate`",
        "unknown SG `h`",
        "cycle: t -> t",
        "no component `d`",
    ] {
        assert!(text.contains(fragment), "missing {fragment:?} in:\n{text}");
    }
    assert!(errs.len() >= 10, "{text}");
    let positions: Vec<(u64, u64)> = errs.iter().map(|e| (e.line, e.column)).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted);
}

#[test]
fn error_display_format() {
    let e = nines_model::ConfigError {
        file: "f.yaml".into(),
        line: 3,
        column: 7,
        entity: "counter/sg/su-1".into(),
        message: "boom".into(),
    };
    assert_eq!(e.to_string(), "f.yaml:3:7: counter/sg/su-1: boom");
    let w = nines_model::ConfigWarning {
        file: "f.yaml".into(),
        line: 3,
        column: 7,
        entity: "counter/sg".into(),
        message: "hmm".into(),
    };
    assert_eq!(w.to_string(), "f.yaml:3:7: warning: counter/sg: hmm");
    let _: &dyn std::error::Error = &e;
}
