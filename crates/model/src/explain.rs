//! `nines validate --explain`: every config key, what it means and its default.
//!
//! This is the one place defaults are documented; the values are read from [`crate::defaults`]
//! (the same constants the loader applies), so the text cannot drift from the behaviour.

use std::fmt::Write;

use crate::decode::{ACCEL_NAMES, DRIVER_NAMES, KIND_NAMES, REDUNDANCY_NAMES, RESERVED_APP_NAMES};
use crate::defaults as d;
use crate::duration::{self, format as dur};
use crate::entities::Probation;

fn probation(p: Probation) -> String {
    format!("max {} within {}", p.max, dur(p.within))
}

fn names<T>(table: &[(&str, T)]) -> String {
    table
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The reference of the config format: every key with its meaning and default, as plain text.
/// Printed by `nines validate --explain`.
pub fn explain() -> String {
    let t = d::TIMEOUTS;
    let i = d::INSTANTIATION;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "\
nines config reference
======================

A config file is YAML. Unknown keys are errors. Names (of nodes, apps, SGs, SUs, components, SIs,
CSIs) must be non-empty and contain no '/' and no whitespace. Entity paths: node/NODE, APP,
APP/SG, APP/SG/SU, APP/SG/SU/COMP, APP/SI, APP/SI/CSI. Error messages about a component
definition (shared by every SU of its SG) name it APP/SG/*/COMP.

Durations: {syntax}.
Examples: 500us, 100ms, 2s, 1m30s, 1h.
A probation rule {{ max: N, within: DURATION }} tolerates N recoveries of one level inside the
window before escalating to the next level; `within` must be greater than 0. Each of its two
keys may be left out and then takes the default of that rule.

cluster                          required. The cluster's name.

nodes                            required, at least one. Either a list of node names:
                                   nodes: [node-1, node-2]
                                 or a map from node name to node settings:
                                   nodes: {{ node-1: {{ escalation: ... }}, node-2: ~ }}
  NODE.escalation.su_failover    SU failovers tolerated on this node before the whole node is
                                 failed over. Default: {su_failover}.
  NODE.vm                        the path APP/SG/SU/COMP of a `kind: vm` component whose guest
                                 is this node (a nested cluster: the guest's nines agent joins
                                 as this node). The node lives and dies with that VM: when the
                                 VM stops its work is held, and once the VM is cleaned up it
                                 fails over; a lost guest is fenced by restarting its VM, and
                                 an escalation to node failover of the guest restarts the VM.
                                 Default: none (a physical node).

apps                             map from app name to app. Default: none. An app may not be
                                 named {reserved}.
  APP.sgs                        map from SG name to service group. SG and SI names of one app
                                 must differ (they share the path APP/NAME).
  APP.sis                        map from SI name to service instance.

SG keys (apps.APP.sgs.SG):
  redundancy                     required. {redundancies}
                                   2n             one SU active for all SIs, one standby
                                                  (a single SU is allowed, with a warning)
                                   n+m            active_sus SUs hold actives, standby_sus SUs
                                                  hold standbys; needs at least N+M SUs
                                   n-way          each SU may hold actives and standbys
                                   n-way-active   each SI active on several SUs, no standbys
                                   no-redundancy  one SI per SU, no standby (more SIs than SUs
                                                  is allowed, with a warning)
  active_sus                     n+m only, required there, >= 1: N.
  standby_sus                    n+m only, required there, >= 1: M.
  fail_back                      return work to the best-ranked SU once it is back in service.
                                 Default: {fail_back}.
  auto_repair                    re-instantiate a failed-over SU automatically (otherwise it
                                 waits for an operator's `repaired`). Default: {auto_repair}.
  max_active_sis_per_su          n+m, n-way, n-way-active: most SIs one SU may hold active.
                                 Default: unlimited.
  max_standby_sis_per_su         n+m, n-way: most SIs one SU may hold standby.
                                 Default: unlimited.
  escalation.comp_restart        component restarts tolerated per SU before the SU is
                                 restarted. Default: {comp_restart}.
  escalation.su_restart          SU restarts tolerated per SU before the SU is failed over.
                                 Default: {su_restart}.
  units                          required, at least one: map from SU name to SU.
    node                         required. The node it runs on (must be listed in `nodes`).
    rank                         >= 1; 1 is the most preferred. Default: {su_rank}. Equal ranks
                                 keep config order (the SU written first is preferred).
    locked_instantiation         start locked for instantiation (not started until an operator
                                 unlocks it). Default: {locked}.
    vm                           map from vm component name to keys of its `vm` block that
                                 differ for this SU (see VM keys); each key given replaces the
                                 component's whole key (a `health` given here is complete).
                                 For what must differ per SU, such as host ports on one host:
                                   vm: {{ web: {{ forwards: [{{ host: 18081, guest: 80 }}],
                                     health: {{ http: \"127.0.0.1:18081/cgi-bin/health\" }} }} }}
  components                     required, at least one: map from component name to
                                 component. Every SU of the SG gets one of each.
    kind                         required. {kinds}
                                   sa-aware  links the client library: registers, takes CSI
                                             assignments, answers healthchecks
                                   process   a plain process, watched by pidfd
                                   vm        a virtual machine: QEMU run by the agent from
                                             the `vm` block (see VM keys); it has no
                                             instantiate, terminate, cleanup or monitor
    instantiate                  required, except for vm. The command that starts it, as a
                                 list (argv): [/usr/bin/prog, --port, \"7100\"]. Numbers and
                                 booleans in the list are taken as text; quote anything else.
    terminate                    command that stops it gracefully. Default: SIGTERM.
    cleanup                      command that cleans up after a failure. Default: SIGKILL to
                                 the process group.
    monitor                      external monitor command. Default: none.
    timeouts.instantiate         the start (SA-aware: registration; vm: a healthy guest) must
                                 finish within this.
                                 Default: {t_inst}.
    timeouts.terminate           graceful stop must finish within this, then it is killed.
                                 Default: {t_term}.
    timeouts.cleanup             cleanup must finish within this. Default: {t_clean}.
    timeouts.callback            an SA-aware component must answer a CSI callback within this.
                                 Default: {t_cb}.
    healthcheck                  sa-aware only: {{ period: DURATION, max_duration: DURATION }},
                                 both required and > 0: check every `period`, a check
                                 unanswered after `max_duration` is a failure.
                                 Default: no healthcheck (crashes are still detected).
    recovery                     recovery when a failure comes without a recommendation:
                                   restart          restart the component in place
                                   failover         fail its SU over to another SU
                                   node-switchover  fail its SU over, switch the node's
                                                    other SUs over gracefully
                                   node-failover    fail over every SU of the node
                                   node-failfast    fence the node, fail over its SUs
                                   app-restart      restart every SU of the app
                                   cluster-reset    restart every SU of the cluster
                                 Default: {recovery}.
    instantiation.retries        immediate retries after a failed start. Default: {retries}.
    instantiation.delayed_retries
                                 further retries, each after retry_delay. Default: {delayed}.
    instantiation.retry_delay    Default: {retry_delay}.
    vm                           vm only, required there: the guest (see VM keys).

VM keys (apps.APP.sgs.SG.components.COMP.vm, kind: vm; an SU may override any of them with
units.SU.vm.COMP). Paths are not checked at load: they must exist on the node that runs the
VM, and a missing one fails the instantiation there. The agent runs qemu-system-x86_64 (on
PATH), microvm machine, user-mode network (outbound NAT plus the forwards), and watches it:
QEMU's exit, a guest panic, a guest shutdown or a stop it did not ask for, and the health
probe are failures. It is instantiated once the probe passes, within timeouts.instantiate;
terminate is ACPI power-down, then QEMU quit, then SIGKILL, within timeouts.terminate.
  kernel                         required. Path of the guest kernel (bzImage, or an ELF
                                 vmlinux with a PVH entry point, which boots faster).
  initrd                         path of the initramfs. Default: none.
  memory                         guest memory with a binary unit: 256M, 512MiB, 1G, 2GiB (a
                                 bare number is refused). At least {vm_min_mem}M.
                                 Default: {vm_mem}M.
  cpus                           virtual CPUs, 1 to {vm_max_cpus}. Default: {vm_cpus}.
  accel                          {accels}. Default: {vm_accel}.
                                   tcg   QEMU's binary translator: slow, works everywhere
                                   kvm   hardware virtualization through /dev/kvm
                                   auto  kvm when the node's /dev/kvm is real, usable KVM,
                                         tcg otherwise (decided by the node's agent)
  driver                         {drivers}. Default: {vm_driver}.
                                   qemu     the agent runs QEMU as its own child process
                                   libvirt  the node's libvirt daemon runs QEMU as a domain
                                            (same guest; needs a nines built with its
                                            `libvirt` feature, the default; the daemon's URI
                                            is $NINES_LIBVIRT_URI, default qemu:///system)
  forwards                       list of {{ host: PORT, guest: PORT }}: 127.0.0.1:host on the
                                 node reaches the guest's port. Host ports must differ among
                                 the VMs of one node. Default: none.
  health                         how a running guest is judged. Either
                                   {{ http: \"127.0.0.1:PORT/PATH\", expect: TEXT }}
                                 (GET PATH must answer 200, containing TEXT when given), or
                                   {{ tcp: \"127.0.0.1:PORT\" }}
                                 (a connect must succeed; QEMU itself accepts connections to
                                 a forward, so this does not see a hung guest: a warning).
                                 PORT must be one of the VM's forwarded host ports. Default:
                                 none (instantiated once QEMU runs; a hung guest goes unseen).
    period                       probe interval, also while the guest boots. Default: {vm_period}.
    timeout                      a probe without a good answer within this is a missed
                                 healthcheck. Default: {vm_timeout}.
  cmdline_extra                  words added to the guest kernel command line, one word each:
                                 [svcdebug=1]. Default: none.
  migrate                        true: a lock or shutdown of its node live-migrates the running
                                 VM to another node of its SG (driver qemu; same image paths
                                 there); a failed migration falls back to stopping it. With the
                                 SG's fail_back, it migrates home once its node is unlocked.
                                 Default: {vm_migrate}.

SI keys (apps.APP.sis.SI):
  sg                             required. The SG (of the same app) that protects it.
  rank                           >= 1; 1 is the most important (assigned first, dropped last).
                                 Default: {si_rank}. Equal ranks keep config order.
  active                         n-way-active only, >= 1: preferred number of active
                                 assignments. Default: the number of SUs in the SG.
                                 (Every other model has exactly one active.)
  standbys                       preferred number of standby assignments.
                                   2n, n+m        0 or 1. Default: 1.
                                   n-way          Default: {nway_standbys}.
                                   n-way-active,
                                   no-redundancy  must be 0. Default: 0.
  depends_on                     map from sponsor SI name (same app) to
                                 {{ tolerance: DURATION }}: the sponsor must be active first;
                                 tolerance is how long this SI may stay assigned while its
                                 sponsor is unassigned. Default tolerance: {tolerance}.
                                 Cycles are errors.
  csis                           required, at least one: map from CSI name to CSI.
    component                    required. The component (of the SI's SG) that serves it.
    attrs                        map of name to text handed to the component. Default: none.
",
        syntax = duration::SYNTAX,
        su_failover = probation(d::SU_FAILOVER),
        reserved = RESERVED_APP_NAMES.join(" or "),
        redundancies = names(&REDUNDANCY_NAMES),
        fail_back = d::FAIL_BACK,
        auto_repair = d::AUTO_REPAIR,
        comp_restart = probation(d::COMP_RESTART),
        su_restart = probation(d::SU_RESTART),
        su_rank = d::SU_RANK,
        locked = d::LOCKED_INSTANTIATION,
        kinds = names(&KIND_NAMES),
        t_inst = dur(t.instantiate),
        t_term = dur(t.terminate),
        t_clean = dur(t.cleanup),
        t_cb = dur(t.callback),
        recovery = d::RECOVERY.name(),
        retries = i.retries,
        delayed = i.delayed_retries,
        retry_delay = dur(i.retry_delay),
        si_rank = d::SI_RANK,
        nway_standbys = d::NWAY_STANDBYS,
        tolerance = dur(d::DEPENDENCY_TOLERANCE),
        vm_min_mem = d::VM_MIN_MEMORY_MIB,
        vm_mem = d::VM_MEMORY_MIB,
        vm_max_cpus = d::VM_MAX_CPUS,
        vm_cpus = d::VM_CPUS,
        accels = names(&ACCEL_NAMES),
        vm_accel = d::VM_ACCEL.name(),
        drivers = names(&DRIVER_NAMES),
        vm_driver = d::VM_DRIVER.name(),
        vm_period = dur(d::VM_HEALTH_PERIOD),
        vm_migrate = d::VM_MIGRATE,
        vm_timeout = dur(d::VM_HEALTH_TIMEOUT),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::Recovery;

    /// The value tables are written out by hand with a description each; every value the
    /// loader accepts must have its line.
    #[test]
    fn every_accepted_value_is_described() {
        let text = explain();
        let described = |name: &str| {
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{name}  ")))
        };
        for r in Recovery::ALL {
            assert!(described(r.name()), "recovery {}", r.name());
        }
        for (name, _) in REDUNDANCY_NAMES {
            assert!(described(name), "redundancy {name}");
        }
        for (name, _) in KIND_NAMES {
            assert!(described(name), "kind {name}");
        }
        for (name, _) in ACCEL_NAMES {
            assert!(described(name), "accel {name}");
        }
        for (name, _) in DRIVER_NAMES {
            assert!(described(name), "driver {name}");
        }
    }
}
