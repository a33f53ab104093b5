//! The libvirt domain XML of a [`VmSpec`]: the same guest the QEMU driver's command line
//! boots (VM-RECIPE.md §7), as a pure function, so it is testable without libvirt and the
//! two drivers cannot drift apart on what matters (the kernel command line comes from the
//! same function).
//!
//! What libvirt 9.0 needs for a microvm guest, each measured: `<features><acpi/></features>`
//! (without it libvirt adds `-no-acpi` and the guest finds no virtio-mmio device), no USB
//! controller and no memory balloon (else "No PCI buses available"), user-mode networking with
//! port forwards through `<qemu:commandline>` (libvirt's own `<interface type='user'>` cannot
//! forward ports without passt), and a fixed `<uuid>` so that defining the domain again
//! replaces it instead of failing with "domain already exists with uuid".

use std::fmt::Write as _;
use std::path::Path;

use crate::qemu::{kernel_cmdline, validate};
use crate::{Accel, Error, HostFacts, Network, VmSpec, DEFAULT_QEMU};

/// The QEMU namespace of `<qemu:commandline>`.
const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// Where the domain's boot files are: copies of the spec's kernel and initrd that QEMU (user
/// `libvirt-qemu` under `qemu:///system`) can read. libvirt's dynamic ownership chowns them
/// while the domain runs, so they must not be the originals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles<'a> {
    /// The kernel copy.
    pub kernel: &'a Path,
    /// The initrd copy, when the spec has one.
    pub initrd: Option<&'a Path>,
}

/// A UUID fixed by the domain's name (FNV-1a, 128 bits, laid out as a version-8 UUID): the
/// same name always gives the same UUID, so a domain left defined by an earlier run is
/// replaced by the next definition, and two names do not share one.
pub fn domain_uuid(name: &str) -> String {
    // FNV-1a 128: offset basis and prime from the FNV specification.
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in name.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    // Version 8 (custom) and the RFC 4122 variant.
    h = (h & !(0xf << 76)) | (0x8 << 76);
    h = (h & !(0x3 << 62)) | (0x2 << 62);
    let x = format!("{h:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// The domain XML of `spec`, named `domain`, booting `files`. Refuses what the driver cannot
/// express: an invalid spec (as the QEMU driver does), a domain name that is not a safe word,
/// and a tap network (QEMU runs unprivileged under libvirt and cannot open a tap itself).
/// The QMP socket of the spec is not used: libvirt owns QEMU's monitor.
pub fn domain_xml(
    domain: &str,
    spec: &VmSpec,
    host: &HostFacts,
    files: &BootFiles<'_>,
) -> Result<String, Error> {
    validate(spec)?;
    let safe = !domain.is_empty()
        && domain.len() <= 200
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !safe {
        return Err(Error::InvalidSpec(format!(
            "libvirt domain name {domain:?}: use 1-200 letters, digits, '.', '_' or '-'"
        )));
    }
    if spec.incoming {
        // libvirt migrates a domain through its own API (virDomainMigrate), not by defining a
        // second domain that waits for QMP's migrate-incoming.
        return Err(Error::InvalidSpec(
            "incoming migration: not supported by the libvirt driver (use the qemu driver)".into(),
        ));
    }
    let kind = match (spec.accel, host.kvm_usable) {
        (Accel::Tcg, _) | (Accel::Auto, false) => "qemu",
        (Accel::Kvm, _) | (Accel::Auto, true) => "kvm",
    };
    let text = |p: &Path, what: &str| {
        p.to_str()
            .map(escape)
            .ok_or_else(|| Error::InvalidSpec(format!("{what} path is not UTF-8")))
    };
    let mut x = String::new();
    // `write!` to a String cannot fail.
    let _ = writeln!(x, "<domain type='{kind}' xmlns:qemu='{QEMU_NS}'>");
    let _ = writeln!(x, "  <name>{}</name>", escape(domain));
    let _ = writeln!(x, "  <uuid>{}</uuid>", domain_uuid(domain));
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", spec.memory_mib);
    let _ = writeln!(x, "  <vcpu>{}</vcpu>", spec.vcpus);
    x.push_str("  <os>\n    <type arch='x86_64' machine='microvm'>hvm</type>\n");
    let _ = writeln!(x, "    <kernel>{}</kernel>", text(files.kernel, "kernel")?);
    if let Some(initrd) = files.initrd {
        let _ = writeln!(x, "    <initrd>{}</initrd>", text(initrd, "initrd")?);
    }
    let _ = writeln!(
        x,
        "    <cmdline>{}</cmdline>",
        escape(&kernel_cmdline(spec, host))
    );
    x.push_str("  </os>\n  <features><acpi/></features>\n");
    // Any end of the guest is an end of the domain (as `-no-reboot` and
    // `panic=exit-failure` make it one of QEMU): the agent reports it, the engine repairs.
    x.push_str(
        "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>destroy</on_reboot>\n  <on_crash>destroy</on_crash>\n",
    );
    x.push_str("  <devices>\n");
    if spec.qemu != Path::new(DEFAULT_QEMU) {
        let _ = writeln!(x, "    <emulator>{}</emulator>", text(&spec.qemu, "QEMU")?);
    }
    x.push_str("    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n");
    let _ = writeln!(
        x,
        "    <serial type='file'><source path='{}'/><target port='0'/></serial>",
        text(&spec.serial_log, "serial log")?
    );
    x.push_str("    <panic model='isa'/>\n  </devices>\n");
    // Pass-through arguments: libvirt's own <rng> and <interface> need a PCI bus, which
    // microvm has not. The rng is there for the same reason as in the QEMU driver.
    let mut args: Vec<String> = [
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-device,rng=rng0",
    ]
    .map(String::from)
    .to_vec();
    match &spec.network {
        Network::None => {}
        Network::User { forwards } => {
            let mut netdev = String::from("user,id=n0");
            for f in forwards {
                let _ = write!(netdev, ",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest);
            }
            args.extend(
                ["-netdev", &netdev, "-device", "virtio-net-device,netdev=n0"].map(String::from),
            );
        }
        Network::Tap { ifname, .. } => {
            return Err(Error::InvalidSpec(format!(
                "tap network {ifname}: not supported by the libvirt driver (use the qemu driver)"
            )))
        }
    }
    x.push_str("  <qemu:commandline>\n");
    for arg in &args {
        let _ = writeln!(x, "    <qemu:arg value='{}'/>", escape(arg));
    }
    x.push_str("  </qemu:commandline>\n");
    x.push_str("</domain>\n");
    Ok(x)
}

/// XML text and attribute escaping.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PortForward;
    use std::path::PathBuf;

    const HOST: HostFacts = HostFacts {
        tsc_khz: 2_596_146,
        kvm_usable: false,
    };

    fn spec() -> VmSpec {
        let mut s = VmSpec::new(
            "vm1",
            "/img/vmlinux",
            Some("/img/initramfs.cpio".into()),
            Path::new("/run/x"),
        );
        s.network = Network::User {
            forwards: vec![PortForward {
                host: 18080,
                guest: 80,
            }],
        };
        s.serial_log = "/log/a&b.serial".into();
        s
    }

    fn files() -> (PathBuf, PathBuf) {
        ("/lv/d/vmlinux".into(), "/lv/d/initrd".into())
    }

    fn xml(spec: &VmSpec, host: &HostFacts) -> Result<String, Error> {
        let (k, i) = files();
        let f = BootFiles {
            kernel: &k,
            initrd: spec.initrd.as_ref().map(|_| i.as_path()),
        };
        domain_xml("nines.c.vm1", spec, host, &f)
    }

    #[test]
    fn the_recipe_domain() {
        let x = xml(&spec(), &HOST).expect("valid");
        for part in [
            "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>",
            "<name>nines.c.vm1</name>",
            &format!("<uuid>{}</uuid>", domain_uuid("nines.c.vm1")),
            "<memory unit='MiB'>128</memory>",
            "<vcpu>1</vcpu>",
            "<type arch='x86_64' machine='microvm'>hvm</type>",
            "<kernel>/lv/d/vmlinux</kernel>",
            "<initrd>/lv/d/initrd</initrd>",
            "<cmdline>console=ttyS0 quiet tsc_early_khz=2596146 tsc=reliable lpj=10384584 pci=off cryptomgr.notests svcname=vm1</cmdline>",
            "<features><acpi/></features>",
            "<on_crash>destroy</on_crash>",
            "<controller type='usb' model='none'/>",
            "<memballoon model='none'/>",
            "<serial type='file'><source path='/log/a&amp;b.serial'/>",
            "<panic model='isa'/>",
            "<qemu:arg value='user,id=n0,hostfwd=tcp:127.0.0.1:18080-:80'/>",
            "<qemu:arg value='virtio-net-device,netdev=n0'/>",
        ] {
            assert!(x.contains(part), "{part} not in\n{x}");
        }
        assert!(!x.contains("<emulator>"), "the default QEMU is libvirt's");
    }

    #[test]
    fn kvm_emulator_no_initrd_no_network() {
        let mut s = spec();
        s.accel = Accel::Kvm;
        s.initrd = None;
        s.network = Network::None;
        s.qemu = "/opt/qemu/bin/qemu-system-x86_64".into();
        let x = xml(&s, &HOST).expect("valid");
        assert!(x.starts_with("<domain type='kvm'"), "{x}");
        assert!(!x.contains("<initrd>") && !x.contains("-netdev"), "{x}");
        assert!(
            x.contains("virtio-rng-device"),
            "the rng is always there: {x}"
        );
        assert!(x.contains("<emulator>/opt/qemu/bin/qemu-system-x86_64</emulator>"));
        s.accel = Accel::Auto;
        assert!(xml(&s, &HOST)
            .expect("valid")
            .starts_with("<domain type='qemu'"));
    }

    #[test]
    fn what_the_driver_cannot_run_is_refused() {
        let mut s = spec();
        s.network = Network::Tap {
            ifname: "t0".into(),
            mac: None,
        };
        assert!(matches!(xml(&s, &HOST), Err(Error::InvalidSpec(m)) if m.contains("tap")));
        let mut s = spec();
        s.incoming = true;
        assert!(matches!(xml(&s, &HOST), Err(Error::InvalidSpec(m)) if m.contains("incoming")));
        let mut s = spec();
        s.memory_mib = 1;
        assert!(matches!(xml(&s, &HOST), Err(Error::InvalidSpec(_))));
        let (k, _) = files();
        let f = BootFiles {
            kernel: &k,
            initrd: None,
        };
        assert!(matches!(
            domain_xml("a'b", &spec(), &HOST, &f),
            Err(Error::InvalidSpec(_))
        ));
    }

    #[test]
    fn uuids_are_fixed_by_the_name_and_well_formed() {
        let a = domain_uuid("nines.c.vm1");
        assert_eq!(a, domain_uuid("nines.c.vm1"));
        assert_ne!(a, domain_uuid("nines.c.vm2"));
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{a}");
        assert_eq!(&a[14..15], "8", "version 8: {a}");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "variant: {a}");
    }
}
