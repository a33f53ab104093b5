//! Guest nodes (`nodes: { NAME: { vm: APP/SG/SU/COMP } }`): a node that is a VM's guest.

mod common;

use common::{errors, ok, render};

/// Nodes h1, h2 and `guests` (flow map entries), a VM SG `vms` with units on h1/h2 and an SG
/// `app` with `comp` (kind) on the guests.
fn config(guests: &str, kind: &str) -> String {
    format!(
        "cluster: t
nodes:
  h1: ~
  h2: ~
{guests}
apps:
  infra:
    sgs:
      vms:
        redundancy: n-way-active
        units: {{ vm-1: {{ node: h1 }}, vm-2: {{ node: h2 }} }}
        components:
          guest: {{ kind: {kind} }}
    sis:
      hosting: {{ sg: vms, active: 2, csis: {{ main: {{ component: guest }} }} }}
"
    )
}

const VM: &str = "vm, vm: { kernel: /img/vmlinux }";
const PROC: &str = "process, instantiate: [/bin/true]";

#[test]
fn a_guest_node_names_its_vm_and_the_vm_names_its_guest() {
    let text = config("  g1: { vm: infra/vms/vm-1/guest }", VM);
    let m = ok(&text).model;
    let g1 = m.nodes.iter().position(|n| n.name == "g1").expect("g1");
    let vm = m.nodes[g1].vm.expect("g1 is a guest");
    assert_eq!(m.comps[vm.index()].path, "infra/vms/vm-1/guest");
    assert_eq!(m.comps[vm.index()].guest.map(|n| n.index()), Some(g1));
    assert!(m.nodes[0].vm.is_none(), "h1 is physical");
}

#[test]
fn the_vm_must_be_a_vm_component() {
    let e = render(&errors(&config("  g1: { vm: infra/vms/vm-1/guest }", PROC)));
    assert!(
        e.contains("node/g1: vm") && e.contains("is a process component"),
        "{e}"
    );
    let e = render(&errors(&config("  g1: { vm: infra/vms/vm-9/guest }", VM)));
    assert!(
        e.contains("node/g1: vm") && e.contains("is not a component"),
        "{e}"
    );
}

#[test]
fn one_vm_is_one_node() {
    let e = render(&errors(&config(
        "  g1: { vm: infra/vms/vm-1/guest }\n  g2: { vm: infra/vms/vm-1/guest }",
        VM,
    )));
    assert!(e.contains("already the VM of node/g1"), "{e}");
}

#[test]
fn a_node_cannot_run_inside_its_own_guest() {
    // h1's VM runs on h1.
    let text = config("", VM).replace("h1: ~\n", "h1: { vm: infra/vms/vm-1/guest }\n");
    let e = render(&errors(&text));
    assert!(e.contains("runs on node/h1 itself"), "{e}");
}
