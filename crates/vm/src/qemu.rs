//! The QEMU command line for a service VM (VM-RECIPE.md §3): `qemu-system-x86_64 -M microvm`,
//! a kernel and an initramfs, virtio-net, pvpanic, a serial log file and a QMP socket.
//!
//! [`command`] only builds a [`Command`]; the caller spawns it (as its own direct child, so it
//! can watch it with a pidfd and reap it at once) and owns the process from then on.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Error;

/// The QEMU binary used when [`VmSpec::qemu`] is not changed; looked up on `PATH`.
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";

/// The id of the guest's one netdev (`-netdev user,id=n0` / `tap,id=n0`): what HMP's
/// `hostfwd_add` names ([`crate::Qmp::hostfwd_add`]) to add a port forward to a running VM,
/// e.g. on the destination of a live migration, which starts without its forwards.
pub const NETDEV_ID: &str = "n0";

/// Longest path a Unix socket address holds (`sun_path` is 108 bytes with the NUL). QEMU fails
/// with an obscure message on a longer one, so the spec is refused up front.
const MAX_SOCKET_PATH: usize = 107;

/// How the guest's CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// QEMU's binary translator: slower, but works everywhere (and is what works here).
    Tcg,
    /// Hardware virtualization through /dev/kvm. Only meaningful on a VMX/SVM host: on a PVM
    /// host (`/sys/module/kvm_pvm`) a stock kernel hangs or dies, see VM-RECIPE.md §0.
    Kvm,
    /// KVM where the host really has VMX/SVM KVM (QEMU itself falls back to TCG if KVM then
    /// fails to initialise), TCG otherwise, including on PVM hosts.
    Auto,
}

/// One TCP port forward of user-mode networking: `127.0.0.1:host` on the host reaches
/// `guest` on the guest's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    /// Port on the host's loopback (0 is refused: the agent must know the port to probe it).
    pub host: u16,
    /// Port in the guest.
    pub guest: u16,
}

/// The guest's one network interface (virtio-net on the microvm's virtio-mmio bus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// No network device at all.
    None,
    /// QEMU's user-mode network (slirp): the guest is 10.0.2.15/24 behind a NAT, reachable
    /// only through the port forwards. Needs no privileges. Note that the host side of a
    /// forward is accepted by QEMU itself, so a TCP connect succeeds even when the guest is
    /// hung: probe such a guest over HTTP.
    User {
        /// Host loopback → guest forwards.
        forwards: Vec<PortForward>,
    },
    /// An existing tap interface (e.g. on a bridge in a network namespace); the guest's
    /// address then comes from `svcip=`/`svcgw=` in [`VmSpec::cmdline`].
    Tap {
        /// The tap interface's name; QEMU runs no ifup/ifdown scripts.
        ifname: String,
        /// The guest's MAC address (`52:54:00:..`); QEMU picks one when absent, the same for
        /// every VM, so set it when several guests share a bridge.
        mac: Option<String>,
    },
}

/// Everything that defines one VM component: what [`command`] turns into QEMU's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The VM's name: QEMU's `-name`, and `svcname=` on the guest command line. Letters,
    /// digits, `.`, `_` and `-` only, so it is safe in QEMU options and file names.
    pub name: String,
    /// The QEMU binary (default [`DEFAULT_QEMU`], looked up on `PATH`).
    pub qemu: PathBuf,
    /// The guest kernel: a bzImage (`vmlinuz` from `scripts/build-vm-image.sh`) or, faster
    /// to boot under TCG, the uncompressed ELF with a PVH entry point (its `vmlinux`).
    pub kernel: PathBuf,
    /// The initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line words after the ones [`command`] always sets (`key=value`
    /// pairs become the guest init's environment, e.g. `svcpanic=1`). One word each.
    pub cmdline: Vec<String>,
    /// Guest memory in MiB (128 is plenty for the service image).
    pub memory_mib: u32,
    /// Virtual CPUs (1 for the service image; TCG runs each on a host thread).
    pub vcpus: u32,
    /// The accelerator.
    pub accel: Accel,
    /// The network.
    pub network: Network,
    /// Where the guest's serial console (ttyS0) is written; kept after the VM is gone, since
    /// it is what tells why a guest died.
    pub serial_log: PathBuf,
    /// The QMP Unix socket QEMU listens on (created by QEMU; removed by [`crate::cleanup`]).
    pub qmp_socket: PathBuf,
    /// Start as the destination of a live migration: QEMU gets `-incoming defer` (it waits,
    /// CPUs stopped, for [`crate::Qmp::migrate_incoming`]) and a user network starts without
    /// its host forwards, because the source QEMU still holds those ports on this host; they
    /// are added with [`crate::Qmp::hostfwd_add`] after the switch. Everything else in the
    /// command line stays the source's: a migration needs the same machine and devices.
    pub incoming: bool,
}

impl VmSpec {
    /// A spec with the defaults that boot the service image quickly: 128 MiB, 1 vCPU, `Auto`
    /// accelerator, no network, and `DIR/NAME.serial` and `DIR/NAME.qmp` for the console log
    /// and the QMP socket.
    pub fn new(
        name: impl Into<String>,
        kernel: impl Into<PathBuf>,
        initrd: Option<PathBuf>,
        dir: &Path,
    ) -> VmSpec {
        let name = name.into();
        VmSpec {
            serial_log: dir.join(format!("{name}.serial")),
            qmp_socket: dir.join(format!("{name}.qmp")),
            name,
            qemu: PathBuf::from(DEFAULT_QEMU),
            kernel: kernel.into(),
            initrd,
            cmdline: Vec::new(),
            memory_mib: 128,
            vcpus: 1,
            accel: Accel::Auto,
            network: Network::None,
            incoming: false,
        }
    }
}

/// What [`command_with`] needs to know about the host; [`HostFacts::probe`] reads it. Kept
/// apart so the command line is a pure function of spec and facts (and testable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// The host TSC frequency in kHz (`cpu MHz` of /proc/cpuinfo × 1000). Passed to the guest
    /// as `tsc_early_khz` and `lpj`: microvm has no HPET or PM timer, and under TCG on a busy
    /// host the guest's PIT calibration fails and it hangs forever (VM-RECIPE.md §3).
    pub tsc_khz: u64,
    /// Whether /dev/kvm is real VMX/SVM KVM (not PVM) and usable: what `Accel::Auto` follows.
    pub kvm_usable: bool,
}

impl HostFacts {
    /// Reads the facts from /proc/cpuinfo, /dev/kvm and /sys/module.
    pub fn probe() -> Result<HostFacts, Error> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")
            .map_err(|e| Error::Host(format!("read /proc/cpuinfo: {e}")))?;
        Ok(HostFacts {
            tsc_khz: tsc_khz_from_cpuinfo(&cpuinfo)?,
            kvm_usable: kvm_usable(),
        })
    }
}

/// The first `cpu MHz` line of /proc/cpuinfo, in kHz.
fn tsc_khz_from_cpuinfo(cpuinfo: &str) -> Result<u64, Error> {
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key.trim() == "cpu MHz" {
            let mhz: f64 = value
                .trim()
                .parse()
                .map_err(|_| Error::Host(format!("bad `cpu MHz` in /proc/cpuinfo: {value:?}")))?;
            if !(mhz.is_finite() && (1.0..1.0e6).contains(&mhz)) {
                return Err(Error::Host(format!("implausible `cpu MHz`: {mhz}")));
            }
            return Ok((mhz * 1000.0) as u64);
        }
    }
    Err(Error::Host("no `cpu MHz` line in /proc/cpuinfo".into()))
}

/// Real KVM: /dev/kvm can be opened, the PVM backend is absent, and a VMX/SVM backend is loaded
/// (or built in, which also shows in /sys/module).
fn kvm_usable() -> bool {
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let hw =
        Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists();
    let open = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    !pvm && hw && open
}

/// The QEMU command for `spec` on this host ([`HostFacts::probe`] + [`command_with`]).
pub fn command(spec: &VmSpec) -> Result<Command, Error> {
    command_with(spec, &HostFacts::probe()?)
}

/// The QEMU command for `spec` given the host's facts. Stdin is null; stdout and stderr are
/// inherited (QEMU writes nothing there unless it fails to start, and then it says why), so
/// redirect them if they should go to the component's log. Nothing else about the process is
/// set: its process group, its pidfd and its reaping are the caller's.
pub fn command_with(spec: &VmSpec, host: &HostFacts) -> Result<Command, Error> {
    let args = args(spec, host)?;
    let mut cmd = Command::new(&spec.qemu);
    cmd.args(args).stdin(Stdio::null());
    Ok(cmd)
}

/// The argument list (without the binary), validated.
fn args(spec: &VmSpec, host: &HostFacts) -> Result<Vec<OsString>, Error> {
    validate(spec)?;
    let accel: &[&str] = match (spec.accel, host.kvm_usable) {
        (Accel::Tcg, _) | (Accel::Auto, false) => &["-accel", "tcg"],
        (Accel::Kvm, _) => &["-accel", "kvm"],
        // QEMU tries the accelerators in order: TCG if KVM fails to initialise.
        (Accel::Auto, true) => &["-accel", "kvm", "-accel", "tcg"],
    };
    let mut a: Vec<OsString> = Vec::new();
    push(&mut a, accel);
    push(
        &mut a,
        &[
            "-M",
            "microvm",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ],
    );
    let (mem, smp) = (spec.memory_mib.to_string(), spec.vcpus.to_string());
    push(&mut a, &["-m", &mem, "-smp", &smp, "-name", &spec.name]);
    a.push("-kernel".into());
    a.push(spec.kernel.clone().into_os_string());
    if let Some(initrd) = &spec.initrd {
        a.push("-initrd".into());
        a.push(initrd.clone().into_os_string());
    }
    a.push("-append".into());
    a.push(kernel_cmdline(spec, host).into());
    match &spec.network {
        Network::None => {}
        Network::User { forwards } => {
            let mut netdev = format!("user,id={NETDEV_ID}");
            // A migration destination binds no host ports yet: the source still holds them.
            if !spec.incoming {
                for f in forwards {
                    netdev.push_str(&format!(",hostfwd={}", hostfwd_rule(f.host, f.guest)));
                }
            }
            a.extend(["-netdev".into(), netdev.into()]);
            a.extend([
                "-device".into(),
                format!("virtio-net-device,netdev={NETDEV_ID}").into(),
            ]);
        }
        Network::Tap { ifname, mac } => {
            let netdev = format!("tap,id={NETDEV_ID},ifname={ifname},script=no,downscript=no");
            let mut device = format!("virtio-net-device,netdev={NETDEV_ID}");
            if let Some(mac) = mac {
                device.push_str(&format!(",mac={mac}"));
            }
            a.extend(["-netdev".into(), netdev.into()]);
            a.extend(["-device".into(), device.into()]);
        }
    }
    // Entropy from the host (virtio-rng): a fresh guest's kernel otherwise takes many seconds
    // under TCG to seed its random generator, and getrandom(2) (every Rust HashMap, TLS, the
    // nines agent inside a guest) blocks until it has.
    push(
        &mut a,
        &[
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-device,rng=rng0",
        ],
    );
    // A guest panic (pvpanic) makes QEMU exit with status 1; a guest reboot is an exit too:
    // either way the agent sees the process end and the engine decides what happens next.
    push(
        &mut a,
        &[
            "-device",
            "pvpanic",
            "-action",
            "panic=exit-failure",
            "-no-reboot",
        ],
    );
    a.push("-serial".into());
    a.push(option_path("file:", &spec.serial_log, "")?);
    a.push("-qmp".into());
    a.push(option_path(
        "unix:",
        &spec.qmp_socket,
        ",server=on,wait=off",
    )?);
    if spec.incoming {
        // `defer`: the listening address is given later over QMP (`migrate-incoming`), so the
        // caller can pick it (port 0) and learn it, and QMP is up before anything connects.
        push(&mut a, &["-incoming", "defer"]);
    }
    Ok(a)
}

/// One user-network port forward as QEMU writes it (after `hostfwd=` on the command line, and
/// as HMP `hostfwd_add`'s argument): the host side on loopback only, so the guest is not
/// exposed beyond it. One function, so a forward added after a migration is the same rule.
pub(crate) fn hostfwd_rule(host: u16, guest: u16) -> String {
    format!("tcp:127.0.0.1:{host}-:{guest}")
}

/// The guest kernel's command line: what every driver passes (the TSC parameters without which
/// a microvm guest hangs on a busy host, `svcname=`), then the spec's own words.
pub(crate) fn kernel_cmdline(spec: &VmSpec, host: &HostFacts) -> String {
    let khz = host.tsc_khz;
    // `cryptomgr.notests`: the kernel's crypto self-tests take most of a second under TCG
    // (crypto_algapi_init was the slowest initcall by far); a service VM does not need them.
    let mut cmdline = format!(
        "console=ttyS0 quiet tsc_early_khz={khz} tsc=reliable lpj={} pci=off cryptomgr.notests svcname={}",
        khz * 4,
        spec.name
    );
    for word in &spec.cmdline {
        cmdline.push(' ');
        cmdline.push_str(word);
    }
    cmdline
}

fn push(a: &mut Vec<OsString>, items: &[&str]) {
    a.extend(items.iter().map(OsString::from));
}

/// `PREFIX` + path with QEMU's comma escaping (`,` doubled) + `SUFFIX`.
fn option_path(prefix: &str, path: &Path, suffix: &str) -> Result<OsString, Error> {
    let s = path
        .to_str()
        .ok_or_else(|| Error::InvalidSpec(format!("path is not UTF-8: {}", path.display())))?;
    Ok(format!("{prefix}{}{suffix}", s.replace(',', ",,")).into())
}

/// Refuses a spec no driver can run (see [`Error::InvalidSpec`]).
pub(crate) fn validate(spec: &VmSpec) -> Result<(), Error> {
    let bad = |msg: String| Err(Error::InvalidSpec(msg));
    let safe = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    if !safe(&spec.name) {
        return bad(format!(
            "name {:?}: use 1-64 letters, digits, '.', '_' or '-'",
            spec.name
        ));
    }
    if spec.memory_mib < 16 {
        return bad(format!("memory {} MiB: at least 16", spec.memory_mib));
    }
    if spec.vcpus == 0 || spec.vcpus > 64 {
        return bad(format!("vcpus {}: 1 to 64", spec.vcpus));
    }
    for word in &spec.cmdline {
        if word.is_empty() || word.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad(format!(
                "kernel command line word {word:?}: one word, no spaces"
            ));
        }
    }
    for (what, path) in [("kernel", &spec.kernel), ("serial log", &spec.serial_log)]
        .into_iter()
        .chain(spec.initrd.as_ref().map(|p| ("initrd", p)))
    {
        if path.as_os_str().is_empty() {
            return bad(format!("{what} path is empty"));
        }
        if path.to_str().is_none() {
            return bad(format!("{what} path is not UTF-8: {}", path.display()));
        }
    }
    let qmp = spec.qmp_socket.as_os_str().len();
    if qmp == 0 || qmp > MAX_SOCKET_PATH {
        return bad(format!(
            "QMP socket path {} is {qmp} bytes: a Unix socket path must be 1-{MAX_SOCKET_PATH}",
            spec.qmp_socket.display()
        ));
    }
    match &spec.network {
        Network::None => {}
        Network::User { forwards } => {
            for f in forwards {
                if f.host == 0 || f.guest == 0 {
                    return bad(format!(
                        "port forward {}->{}: ports must be non-zero",
                        f.host, f.guest
                    ));
                }
            }
        }
        Network::Tap { ifname, mac } => {
            let ok = !ifname.is_empty()
                && ifname.len() <= 15
                && ifname
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                return bad(format!(
                    "tap interface name {ifname:?}: 1-15 letters, digits, '.', '_', '-'"
                ));
            }
            if let Some(mac) = mac {
                let parts: Vec<&str> = mac.split(':').collect();
                let ok = parts.len() == 6
                    && parts
                        .iter()
                        .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
                if !ok {
                    return bad(format!(
                        "MAC address {mac:?}: six hex pairs separated by ':'"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostFacts = HostFacts {
        tsc_khz: 2_596_146,
        kvm_usable: false,
    };

    fn spec() -> VmSpec {
        let mut s = VmSpec::new(
            "vm1",
            "/img/vmlinuz",
            Some("/img/initramfs.cpio".into()),
            Path::new("/run/x"),
        );
        s.network = Network::User {
            forwards: vec![PortForward {
                host: 18080,
                guest: 80,
            }],
        };
        s
    }

    fn line(spec: &VmSpec, host: &HostFacts) -> String {
        let args = args(spec, host).expect("valid spec");
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_recipe_command_line() {
        assert_eq!(
            line(&spec(), &HOST),
            "-accel tcg -M microvm -nodefaults -no-user-config -display none -m 128 -smp 1 -name vm1 \
             -kernel /img/vmlinuz -initrd /img/initramfs.cpio \
             -append console=ttyS0 quiet tsc_early_khz=2596146 tsc=reliable lpj=10384584 pci=off cryptomgr.notests svcname=vm1 \
             -netdev user,id=n0,hostfwd=tcp:127.0.0.1:18080-:80 -device virtio-net-device,netdev=n0 \
             -object rng-random,id=rng0,filename=/dev/urandom -device virtio-rng-device,rng=rng0 \
             -device pvpanic -action panic=exit-failure -no-reboot \
             -serial file:/run/x/vm1.serial -qmp unix:/run/x/vm1.qmp,server=on,wait=off"
        );
    }

    #[test]
    fn a_migration_destination_is_the_same_machine_without_host_forwards() {
        let source = line(&spec(), &HOST);
        let mut s = spec();
        s.incoming = true;
        let dest = line(&s, &HOST);
        assert_eq!(
            dest,
            format!(
                "{} -incoming defer",
                source.replace(",hostfwd=tcp:127.0.0.1:18080-:80", "")
            )
        );
        assert!(dest.contains("-netdev user,id=n0 -device virtio-net-device,netdev=n0 "));
        // Several forwards: none of them on the destination.
        if let Network::User { forwards } = &mut s.network {
            forwards.push(PortForward {
                host: 18081,
                guest: 81,
            });
        }
        assert!(!line(&s, &HOST).contains("hostfwd"));
        s.incoming = false;
        assert!(line(&s, &HOST).contains(
            "-netdev user,id=n0,hostfwd=tcp:127.0.0.1:18080-:80,hostfwd=tcp:127.0.0.1:18081-:81 "
        ));
        // A tap network is the same device either way.
        let mut t = spec();
        t.network = Network::Tap {
            ifname: "vmtap0".into(),
            mac: None,
        };
        let tap_source = line(&t, &HOST);
        t.incoming = true;
        assert_eq!(line(&t, &HOST), format!("{tap_source} -incoming defer"));
    }

    #[test]
    fn accelerators() {
        let mut s = spec();
        let kvm = HostFacts {
            kvm_usable: true,
            ..HOST
        };
        assert!(line(&s, &kvm).starts_with("-accel kvm -accel tcg -M"));
        s.accel = Accel::Tcg;
        assert!(line(&s, &kvm).starts_with("-accel tcg -M"));
        s.accel = Accel::Kvm;
        assert!(line(&s, &HOST).starts_with("-accel kvm -M"));
    }

    #[test]
    fn tap_extras_and_comma_escaping() {
        let mut s = spec();
        s.network = Network::Tap {
            ifname: "vmtap0".into(),
            mac: Some("52:54:00:00:00:10".into()),
        };
        s.cmdline = vec!["svcip=192.168.77.10/24".into(), "svcpanic=1".into()];
        s.serial_log = "/run/a,b/vm1.serial".into();
        let l = line(&s, &HOST);
        assert!(
            l.contains(
                "pci=off cryptomgr.notests svcname=vm1 svcip=192.168.77.10/24 svcpanic=1 -netdev"
            ),
            "{l}"
        );
        assert!(l.contains(
            "-netdev tap,id=n0,ifname=vmtap0,script=no,downscript=no \
             -device virtio-net-device,netdev=n0,mac=52:54:00:00:00:10"
        ));
        assert!(l.contains("-serial file:/run/a,,b/vm1.serial"), "{l}");
    }

    #[test]
    fn bad_specs_are_refused() {
        type Change = Box<dyn Fn(&mut VmSpec)>;
        let cases: Vec<Change> = vec![
            Box::new(|s| s.name = "a,b".into()),
            Box::new(|s| s.name = String::new()),
            Box::new(|s| s.memory_mib = 0),
            Box::new(|s| s.vcpus = 0),
            Box::new(|s| s.cmdline = vec!["a b".into()]),
            Box::new(|s| s.qmp_socket = PathBuf::from(format!("/{}", "x".repeat(120)))),
            Box::new(|s| {
                s.network = Network::User {
                    forwards: vec![PortForward { host: 0, guest: 80 }],
                }
            }),
            Box::new(|s| {
                s.network = Network::Tap {
                    ifname: "tap,x".into(),
                    mac: None,
                }
            }),
            Box::new(|s| {
                s.network = Network::Tap {
                    ifname: "t0".into(),
                    mac: Some("52:54".into()),
                }
            }),
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut s = spec();
            change(&mut s);
            assert!(
                matches!(args(&s, &HOST), Err(Error::InvalidSpec(_))),
                "case {i}"
            );
        }
    }

    #[test]
    fn cpuinfo_parsing() {
        let text = "processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2596.146\ncache size\t: 1 KB\n";
        assert_eq!(tsc_khz_from_cpuinfo(text).ok(), Some(2_596_146));
        assert!(tsc_khz_from_cpuinfo("processor: 0\n").is_err());
        assert!(tsc_khz_from_cpuinfo("cpu MHz : fast\n").is_err());
        assert!(tsc_khz_from_cpuinfo("cpu MHz : -3\n").is_err());
    }

    #[test]
    fn this_host_has_facts() {
        let facts = HostFacts::probe().expect("x86 Linux has cpu MHz");
        assert!(facts.tsc_khz > 100_000);
    }
}
