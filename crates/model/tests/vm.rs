//! `kind: vm` components: the `vm` block, its defaults, per-SU overrides, and every rejection
//! (each names the entity and the line marked `# <-`).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{app, errors, ok, reject, render, warn, SI_S};
use nines_model::{defaults, CompKind, VmAccel, VmConfig, VmDriver, VmForward, VmHealth, VmProbe};

/// A 2N SG `g` (u1 on n1, u2 on n2) with vm component `c` whose `vm` block is `vm` (flow map
/// text) and units written as `units`.
fn sg(units: &str, vm: &str) -> String {
    format!(
        "g:
  redundancy: 2n
  units: {units}
  components:
    c:
      kind: vm
      vm: {vm}"
    )
}

const UNITS: &str = "{ u1: { node: n1, rank: 1 }, u2: { node: n2, rank: 2 } }";

/// A `vm` block with the given keys added to a kernel, one forward and its HTTP probe.
fn vm_with(extra: &str) -> String {
    format!(
        "{{ kernel: /img/vmlinux, forwards: [{{ host: 18080, guest: 80 }}], \
         health: {{ http: \"127.0.0.1:18080/cgi-bin/health\" }}{extra} }}"
    )
}

fn vm_of(text: &str, comp: usize) -> VmConfig {
    let m = ok(text).model;
    assert_eq!(m.comps[comp].kind, CompKind::Vm);
    m.comps[comp].vm.clone().expect("a vm component has its VM")
}

#[test]
fn a_minimal_vm_takes_the_defaults() {
    let text = app(&sg(UNITS, "{ kernel: /img/vmlinux }"), SI_S);
    let vm = vm_of(&text, 0);
    assert_eq!(
        vm,
        VmConfig {
            kernel: "/img/vmlinux".into(),
            initrd: None,
            memory_mib: defaults::VM_MEMORY_MIB,
            cpus: defaults::VM_CPUS,
            accel: defaults::VM_ACCEL,
            driver: VmDriver::Qemu,
            forwards: Vec::new(),
            health: None,
            cmdline_extra: Vec::new(),
            migrate: false,
        }
    );
    let m = ok(&text).model;
    assert!(m.comps[0].instantiate.is_empty());
    assert!(m.comps[0].terminate.is_none() && m.comps[0].monitor.is_none());
}

#[test]
fn every_key() {
    let vm = "
        kernel: /img/vmlinux
        initrd: /img/initramfs.cpio
        memory: 1G
        cpus: 2
        accel: tcg
        driver: libvirt
        forwards: [{ host: 18080, guest: 80 }, { host: 18443, guest: 443 }]
        health: { http: \"http://127.0.0.1:18080/cgi-bin/health\", expect: healthy, period: 200ms, timeout: 2s }
        cmdline_extra: [svcdebug=1, quiet]";
    let text = app(&sg(UNITS, vm), SI_S);
    let got = vm_of(&text, 1);
    assert_eq!(
        got,
        VmConfig {
            kernel: "/img/vmlinux".into(),
            initrd: Some("/img/initramfs.cpio".into()),
            memory_mib: 1024,
            cpus: 2,
            accel: VmAccel::Tcg,
            driver: VmDriver::Libvirt,
            forwards: vec![
                VmForward {
                    host: 18080,
                    guest: 80
                },
                VmForward {
                    host: 18443,
                    guest: 443
                }
            ],
            health: Some(VmHealth {
                probe: VmProbe::Http {
                    addr: SocketAddr::from(([127, 0, 0, 1], 18080)),
                    path: "/cgi-bin/health".into(),
                    expect: Some("healthy".into()),
                },
                period: Duration::from_millis(200),
                timeout: Duration::from_secs(2),
            }),
            cmdline_extra: vec!["svcdebug=1".into(), "quiet".into()],
            migrate: false,
        }
    );
}

#[test]
fn memory_units_and_probe_defaults() {
    for (text, mib) in [("256M", 256), ("512MiB", 512), ("2G", 2048), ("1GiB", 1024)] {
        let t = app(&sg(UNITS, &vm_with(&format!(", memory: {text}"))), SI_S);
        assert_eq!(vm_of(&t, 0).memory_mib, mib, "{text}");
    }
    let t = app(&sg(UNITS, &vm_with("")), SI_S);
    let health = vm_of(&t, 0).health.expect("health");
    assert_eq!(health.period, defaults::VM_HEALTH_PERIOD);
    assert_eq!(health.timeout, defaults::VM_HEALTH_TIMEOUT);
    // No path: `/`.
    let t = app(
        &sg(
            UNITS,
            "{ kernel: k, forwards: [{ host: 9, guest: 80 }], health: { http: \"127.0.0.1:9\" } }",
        ),
        SI_S,
    );
    let Some(VmHealth {
        probe: VmProbe::Http { path, .. },
        ..
    }) = vm_of(&t, 0).health
    else {
        panic!("http probe")
    };
    assert_eq!(path, "/");
}

/// Two SUs of one SG share the component's `vm` block; each may override keys, and an
/// overridden key replaces the component's whole key.
#[test]
fn per_su_overrides() {
    let units = "
    u1: { node: n1, rank: 1 }
    u2:
      node: n1
      rank: 2
      vm:
        c:
          memory: 256M
          driver: libvirt
          forwards: [{ host: 18081, guest: 80 }]
          health: { tcp: \"127.0.0.1:18081\" }";
    let text = app(
        &sg(units, &vm_with(", memory: 64M, cmdline_extra: [a=1]")),
        SI_S,
    );
    let loaded = ok(&text);
    let (u1, u2) = (
        loaded.model.comps[0].vm.clone().expect("vm"),
        loaded.model.comps[1].vm.clone().expect("vm"),
    );
    assert_eq!(u1.memory_mib, 64);
    assert_eq!(u2.memory_mib, 256);
    assert_eq!(u1.driver, VmDriver::Qemu, "the default");
    assert_eq!(u2.driver, VmDriver::Libvirt, "u2's override");
    assert_eq!(u1.forwards[0].host, 18080);
    assert_eq!(u2.forwards[0].host, 18081);
    assert_eq!(u2.kernel, "/img/vmlinux", "not overridden: the component's");
    assert_eq!(u2.cmdline_extra, ["a=1"]);
    assert_eq!(
        u2.health.expect("health").probe,
        VmProbe::Tcp {
            addr: SocketAddr::from(([127, 0, 0, 1], 18081))
        }
    );
    assert_eq!(loaded.warnings.len(), 1, "the tcp probe is warned about");
}

#[test]
fn same_port_on_different_nodes_is_fine_on_one_node_it_is_not() {
    ok(&app(&sg(UNITS, &vm_with("")), SI_S));
    let units = "{ u1: { node: n1, rank: 1 }, u2: { node: n1, rank: 2 } }";
    let text = app(&sg(units, &vm_with("")), SI_S);
    let e = errors(&text);
    assert!(
        e.iter().any(|e| e.entity == "a/g/u2/c"
            && e.message
                .contains("host port 18080 is also forwarded by `a/g/u1/c` on node `n1`")),
        "{}",
        render(&e)
    );
    // Across SGs and apps too.
    let text = "cluster: c
nodes: [n1]
apps:
  a:
    sgs:
      g:
        redundancy: no-redundancy
        units: { u: { node: n1 } }
        components: { c: { kind: vm, vm: { kernel: k, forwards: [{ host: 7, guest: 1 }] } } }
    sis: { s: { sg: g, csis: { x: { component: c } } } }
  b:
    sgs:
      g:
        redundancy: no-redundancy
        units: { u: { node: n1 } }
        components: { d: { kind: vm, vm: { kernel: k, forwards: [{ host: 7, guest: 2 }] } } }   # <-
    sis: { s: { sg: g, csis: { x: { component: d } } } }
";
    reject(text, "b/g/u/d", &["host port 7", "`a/g/u/c`"]);
}

#[test]
fn tcp_probes_are_legal_but_warned_about() {
    let vm = "{ kernel: k, forwards: [{ host: 9, guest: 80 }],
      health: { tcp: \"127.0.0.1:9\" } }   # <-";
    warn(
        &app(&sg(UNITS, vm), SI_S),
        "a/g/u1/c",
        "answered by QEMU itself",
    );
}

// ---- rejections ----------------------------------------------------------------------------

fn reject_vm(vm: &str, entity: &str, fragments: &[&str]) {
    reject(&app(&sg(UNITS, vm), SI_S), entity, fragments);
}

#[test]
fn bad_values() {
    // Errors in the component's block name its definition; those found only once the
    // block is merged with an SU's override name that SU's instance.
    let (def, su) = ("a/g/*/c", "a/g/u1/c");
    let cases: &[(&str, &str, &[&str])] = &[
        ("{ kernel: \"\" }   # <-", def, &["`vm.kernel` is empty"]),
        (
            "{ kernel: 5 }   # <-",
            def,
            &["`vm.kernel`", "expected a string"],
        ),
        (
            "{ kernel: k, initrd: \"\" }   # <-",
            def,
            &["`vm.initrd` is empty"],
        ),
        (
            "{ kernel: k, memory: 512 }   # <-",
            def,
            &["`vm.memory`", "no unit", "256M"],
        ),
        ("{ kernel: k, memory: 0M }   # <-", def, &["at least 16M"]),
        (
            "{ kernel: k, memory: 8M }   # <-",
            def,
            &["at least 16M", "found 8M"],
        ),
        (
            "{ kernel: k, memory: 1T }   # <-",
            def,
            &["unknown unit `T`"],
        ),
        (
            "{ kernel: k, memory: 5000000G }   # <-",
            def,
            &["too large"],
        ),
        (
            "{ kernel: k, cpus: 0 }   # <-",
            def,
            &["`vm.cpus` must be at least 1"],
        ),
        (
            "{ kernel: k, cpus: 65 }   # <-",
            def,
            &["`vm.cpus` is 65", "at most 64"],
        ),
        (
            "{ kernel: k, accel: hvf }   # <-",
            def,
            &["`vm.accel`", "tcg, kvm, auto"],
        ),
        (
            "{ kernel: k, driver: xen }   # <-",
            def,
            &["`vm.driver`", "qemu, libvirt"],
        ),
        (
            "{ kernel: k, forwards: 80 }   # <-",
            def,
            &["`vm.forwards`", "expected a list"],
        ),
        (
            "{ kernel: k, forwards: [{ host: 0, guest: 80 }] }   # <-",
            def,
            &["`vm.forwards.host` must be at least 1"],
        ),
        (
            "{ kernel: k, forwards: [{ host: 70000, guest: 80 }] }   # <-",
            def,
            &["not a TCP port"],
        ),
        (
            "{ kernel: k, forwards: [{ host: 1 }] }   # <-",
            def,
            &["missing key `guest`"],
        ),
        (
            "{ kernel: k, forwards: [{ host: 1, guest: 2, proto: udp }] }   # <-",
            def,
            &["unknown key `vm.forwards.proto`"],
        ),
        (
            "{ kernel: k, forwards: [{ host: 1, guest: 2 }, { host: 1, guest: 3 }] }   # <-",
            su,
            &["host port 1 is forwarded twice"],
        ),
        (
            "{ kernel: k, cmdline_extra: [\"a b\"] }   # <-",
            def,
            &["`vm.cmdline_extra`", "one word"],
        ),
        (
            "{ kernel: k, cmdline_extra: [\"\"] }   # <-",
            def,
            &["one word"],
        ),
        (
            "{ kernel: k, cmdline_extra: x=1 }   # <-",
            def,
            &["expected a list"],
        ),
        (
            "{ kernel: k, disk: /x }   # <-",
            def,
            &["unknown key `vm.disk`", "kernel, initrd"],
        ),
        ("{ memory: 64M }   # <-", su, &["missing key `vm.kernel`"]),
    ];
    for (vm, entity, fragments) in cases {
        reject_vm(vm, entity, fragments);
    }
}

#[test]
fn bad_probes() {
    let fwd = "kernel: k, forwards: [{ host: 9, guest: 80 }]";
    let cases: &[(String, &str, &[&str])] = &[
        (
            format!("{{ {fwd}, health: {{ http: \"localhost:9/\" }} }}   # <-"),
            "a/g/*/c",
            &["`vm.health.http`", "not IP:PORT"],
        ),
        (
            format!("{{ {fwd}, health: {{ http: \"127.0.0.1:9/a b\" }} }}   # <-"),
            "a/g/*/c",
            &["whitespace"],
        ),
        (
            format!("{{ {fwd}, health: {{ tcp: \"127.0.0.1\" }} }}   # <-"),
            "a/g/*/c",
            &["`vm.health.tcp`", "not IP:PORT"],
        ),
        (
            format!("{{ {fwd}, health: {{ period: 1s }} }}   # <-"),
            "a/g/*/c",
            &["`vm.health`: missing the probe"],
        ),
        (
            format!(
                "{{ {fwd}, health: {{ http: \"127.0.0.1:9\", tcp: \"127.0.0.1:9\" }} }}   # <-"
            ),
            "a/g/*/c",
            &["either `http` or `tcp`"],
        ),
        (
            format!("{{ {fwd}, health: {{ tcp: \"127.0.0.1:9\", expect: ok }} }}   # <-"),
            "a/g/*/c",
            &["`vm.health.expect` is only for http"],
        ),
        (
            format!("{{ {fwd}, health: {{ http: \"127.0.0.1:9\", period: 0 }} }}   # <-"),
            "a/g/*/c",
            &["`vm.health.period` must be greater than 0"],
        ),
        (
            format!("{{ {fwd}, health: {{ http: \"127.0.0.1:9\", timeout: 5 }} }}   # <-"),
            "a/g/*/c",
            &["`vm.health.timeout`", "no unit"],
        ),
        (
            format!("{{ {fwd}, health: {{ http: \"127.0.0.1:9\", expect: \"\" }} }}   # <-"),
            "a/g/*/c",
            &["`vm.health.expect` is empty"],
        ),
        // Aimed at something that is not this VM's forward: another port, another address.
        (
            format!("{{ {fwd}, health: {{ http: \"127.0.0.1:10/x\" }} }}   # <-"),
            "a/g/u1/c",
            &["the probe goes to 127.0.0.1:10", "listen on 127.0.0.1:9"],
        ),
        (
            format!("{{ {fwd}, health: {{ http: \"10.0.2.15:80/x\" }} }}   # <-"),
            "a/g/u2/c",
            &["the probe goes to 10.0.2.15:80", "127.0.0.1 only"],
        ),
        (
            "{ kernel: k, health: { http: \"127.0.0.1:9\" } }   # <-".to_string(),
            "a/g/u1/c",
            &["this VM forwards no port"],
        ),
    ];
    for (vm, entity, fragments) in cases {
        reject_vm(vm, entity, fragments);
    }
}

/// SG `g` (SU u1 written as `u1`, u2 on n2) with the components given as lines of the
/// `components` map (at its indentation).
const U1: &str = "{ node: n1, rank: 1 }";

fn sg_of(u1: &str, components: &str) -> String {
    format!(
        "g:
  redundancy: 2n
  units:
    u1: {u1}
    u2: {{ node: n2, rank: 2 }}
  components:
{components}"
    )
}

#[test]
fn vm_components_have_no_commands_and_others_have_no_vm() {
    let vm_with_key = |key: &str| {
        sg_of(
            U1,
            &format!("    c:\n      kind: vm\n      vm: {{ kernel: k }}\n      {key}   # <-"),
        )
    };
    for key in [
        "instantiate: [q]",
        "terminate: [t]",
        "cleanup: [c]",
        "monitor: [m]",
    ] {
        let name = key.split(':').next().unwrap_or("");
        reject(
            &app(&vm_with_key(key), SI_S),
            "a/g/*/c",
            &[&format!("`{name}` is not for vm components")],
        );
    }
    reject(
        &app(
            &vm_with_key("healthcheck: { period: 1s, max_duration: 1s }"),
            SI_S,
        ),
        "a/g/*/c",
        &["only for sa-aware", "use `vm.health`"],
    );
    let process = sg_of(
        U1,
        "    c:\n      kind: process\n      instantiate: [x]\n      vm: { kernel: k }   # <-",
    );
    reject(
        &app(&process, SI_S),
        "a/g/*/c",
        &["`vm` is only for vm components", "`process`"],
    );
}

#[test]
fn overrides_must_name_a_vm_component_of_the_sg() {
    let two = "    c: { kind: vm, vm: { kernel: k } }\n    p: { kind: process, instantiate: [x] }";
    let over = |o: &str| {
        let u1 = format!("{{ node: n1, rank: 1, vm: {o} }}   # <-");
        app(&sg_of(&u1, two), SI_S)
    };
    reject(
        &over("{ nope: { memory: 64M } }"),
        "a/g/u1/nope",
        &["SG `a/g` has no component `nope`", "c, p"],
    );
    reject(
        &over("{ p: { memory: 64M } }"),
        "a/g/u1/p",
        &["component `p` is `process`, not a vm component"],
    );
    // Errors inside an override name the SU's instance of the component.
    reject(
        &over("{ c: { memory: 1 } }"),
        "a/g/u1/c",
        &["`vm.memory`", "no unit"],
    );
}

#[test]
fn explain_lists_every_vm_key_and_its_default() {
    let text = nines_model::explain();
    for key in [
        "kernel",
        "initrd",
        "memory",
        "cpus",
        "accel",
        "driver",
        "forwards",
        "health",
        "period",
        "timeout",
        "cmdline_extra",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{key} "))),
            "explain lacks `{key}`"
        );
    }
    assert!(text.contains(&format!("Default: {}M", defaults::VM_MEMORY_MIB)));
    assert!(text.contains("Default: 500ms"), "health period");
    assert!(text.contains("units.SU.vm.COMP"));
    assert!(text.contains("Default: qemu."), "driver default");
    assert!(
        text.contains("NINES_LIBVIRT_URI"),
        "where the libvirt URI comes from"
    );
}
