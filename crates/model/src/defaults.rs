//! Every default of the config format, in one place.
//!
//! The loader applies these and [`crate::explain`] prints them, so the documentation and the
//! behaviour cannot drift apart. Change a default here and both follow.

use std::time::Duration;

use crate::entities::{InstantiationPolicy, Probation, Recovery, Timeouts, VmAccel, VmDriver};

/// `sgs.*.fail_back`: leave work where it is after a repair; moving it back costs an outage of
/// its own, so it is opt-in.
pub const FAIL_BACK: bool = false;

/// `sgs.*.auto_repair`: re-instantiate a failed-over SU without waiting for an operator.
pub const AUTO_REPAIR: bool = true;

/// `sgs.*.escalation.comp_restart`: two component restarts per 10 s, then restart the SU.
pub const COMP_RESTART: Probation = Probation {
    max: 2,
    within: Duration::from_secs(10),
};

/// `sgs.*.escalation.su_restart`: one SU restart per 30 s, then fail the SU over.
pub const SU_RESTART: Probation = Probation {
    max: 1,
    within: Duration::from_secs(30),
};

/// `nodes.*.escalation.su_failover`: two SU failovers per minute on a node, then fail the
/// whole node over (a node that keeps failing SUs is probably sick itself).
pub const SU_FAILOVER: Probation = Probation {
    max: 2,
    within: Duration::from_secs(60),
};

/// `components.*.timeouts`: instantiate 10 s, terminate 5 s, cleanup 5 s, callback 1 s.
pub const TIMEOUTS: Timeouts = Timeouts {
    instantiate: Duration::from_secs(10),
    terminate: Duration::from_secs(5),
    cleanup: Duration::from_secs(5),
    callback: Duration::from_secs(1),
};

/// `components.*.instantiation`: 2 immediate retries, then 2 more 1 s apart.
pub const INSTANTIATION: InstantiationPolicy = InstantiationPolicy {
    retries: 2,
    delayed_retries: 2,
    retry_delay: Duration::from_secs(1),
};

/// `components.*.recovery`: fail the SU over, the action that restores service fastest when a
/// standby exists.
pub const RECOVERY: Recovery = Recovery::ComponentFailover;

/// `units.*.rank`: unranked SUs are equally preferred; ties keep config order, so the SU
/// written first is preferred.
pub const SU_RANK: u32 = 1;

/// `units.*.locked_instantiation`: SUs start instantiated.
pub const LOCKED_INSTANTIATION: bool = false;

/// `sis.*.rank`: all SIs equally important unless ranked.
pub const SI_RANK: u32 = 1;

/// `sis.*.standbys` for N-Way (2N and N+M always have exactly one standby).
pub const NWAY_STANDBYS: u32 = 1;

/// `sis.*.depends_on.*.tolerance`: a dependent SI is removed as soon as its sponsor is lost.
pub const DEPENDENCY_TOLERANCE: Duration = Duration::ZERO;

/// `components.*.vm.memory`: 128 MiB, plenty for a service guest (the image of
/// `scripts/build-vm-image.sh` boots in less than 64 MiB).
pub const VM_MEMORY_MIB: u32 = 128;

/// The least `components.*.vm.memory` accepted, in MiB: less does not boot a Linux guest, and
/// it is the driver's (`nines-vm`) own lower bound.
pub const VM_MIN_MEMORY_MIB: u32 = 16;

/// `components.*.vm.cpus`: one vCPU; under TCG each vCPU is a host thread, and a service guest
/// rarely needs more.
pub const VM_CPUS: u32 = 1;

/// The most `components.*.vm.cpus` accepted (the driver's upper bound).
pub const VM_MAX_CPUS: u32 = 64;

/// `components.*.vm.accel`: KVM where the node really has it, TCG elsewhere (the agent
/// decides when it starts the VM).
pub const VM_ACCEL: VmAccel = VmAccel::Auto;

/// `components.*.vm.driver`: the agent runs QEMU itself, which needs nothing beside QEMU on
/// the node and sees a QEMU death fastest; libvirt is for sites that want their VMs in it.
pub const VM_DRIVER: VmDriver = VmDriver::Qemu;

/// `components.*.vm.migrate`: off. A node's lock or shutdown stops its VMs (their SIs switch
/// over) unless the VM asks to be live-migrated, which needs the same image on every node of
/// the SG and a migration port open between them.
pub const VM_MIGRATE: bool = false;

/// `components.*.vm.health.period`: probe every 500 ms. The probe also paces the wait for a
/// booting guest, so a longer period delays every repair by up to a period; a shorter one
/// costs the guest a request more often. Measured with the service image under TCG: one
/// probe (a CGI fork in the guest) costs about 17 ms of host CPU, so 500 ms is about 4 % of a
/// core per VM, 200 ms about 7 %.
pub const VM_HEALTH_PERIOD: Duration = Duration::from_millis(500);

/// `components.*.vm.health.timeout`: a probe unanswered for 1 s is a missed healthcheck. A
/// TCG guest on a busy host answers in tens of milliseconds; a hung one never does.
pub const VM_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
