//! `nines bench vm-kill | vm-hang | vm-escalation`: a nested cluster on this host. Two host
//! nodes (`nines agent` processes) each run a service VM (QEMU, TCG) whose guest is a node
//! of the same cluster and runs the SA-aware counter, 2N across the two guests. The director
//! runs in this process and listens on loopback, which the guests reach as 10.0.2.2 through
//! QEMU's user-mode network; the probe calls the counter through both VMs' forwarded ports.
//!
//! * `vm-kill`: SIGKILL the QEMU of the VM whose guest holds the active. The guest's link
//!   closes with QEMU, the guest's work fails over to the other VM, the VM boots again and its
//!   guest rejoins as the standby.
//! * `vm-hang`: SIGSTOP that QEMU (the guest freezes, its link stays open): the guest's
//!   heartbeats stop, the engine resets the VM (cleanup = SIGKILL) and fails over.
//! * `vm-escalation` (OPNFV UC9): the active counter reports errors (its `fail` request)
//!   until the guest's node tolerates no more SU failovers: the guest is reset through its VM.
//! * `vm-migrate` (planned maintenance): `adm lock` the host of the VM whose guest holds the
//!   active; the VM (`migrate: true`) is live-migrated to the other host while the counter in
//!   it keeps serving, its guest relinks, and `adm unlock` brings it home (fail-back). Outage:
//!   the probe's longest gap from the lock to the migration's end; reaction: lock to
//!   migration start; recovery: the migration's duration; repair: the fail-back migration's.
//!
//! Outage: the probe's gap (for vm-escalation the longest from the error report until the
//! service recovered: the failing counter answers until it is stopped); reaction: injection
//! to the engine's detection; recovery:
//! detection to the probe's first answer; repair: the engine's failure to repaired (the VM
//! instantiated and its guest joined again).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nines_director::cluster::{ClusterOptions, FenceMethod, Listen};
use nines_example_counter::probe::{gap, Gap, Mode, Probe, ProbeOptions, Sample};
use nines_link::{ClusterKey, LinkConfig};
use rustix::process::Signal;
use serde_json::{json, Value};

use crate::bench::{
    free_port, load_avg, ms, no_regressions, object, print_table, self_exe, settled, signal,
    summary_json, BenchArgs, Harness, Measured, Metrics, Rng, Scenario, COUNTER_SI, MAX_PHASE,
};

/// Where `scripts/build-guest-image.sh` puts the guest image by default.
pub(crate) const DEFAULT_IMAGE: &str = "target/tmp/nines-guest-image";
/// Patience for each milestone: a VM boot under TCG on a busy host takes seconds.
const MILESTONE: Duration = Duration::from_secs(60);
/// The counter's port inside the guests.
const GUEST_PORT: u16 = 7100;

/// The nested config: hosts `host-1`/`host-2` run VMs `infra/vms/vm-N/guest`, whose guests
/// are nodes `guest-N`, where the 2N counter runs (`fail` enabled for vm-escalation).
pub(crate) fn nested_config(image: &Path, forwards: [u16; 2], scenario: Scenario) -> String {
    let img = |f: &str| crate::bench::yaml_str(&image.join(f).to_string_lossy());
    let hook = if scenario == Scenario::VmEscalation {
        ", fail_hook: \"on\""
    } else {
        ""
    };
    let (migrate, fail_back) = if scenario == Scenario::VmMigrate {
        (", migrate: true", "\n        fail_back: true")
    } else {
        ("", "")
    };
    format!(
        "cluster: nested
nodes:
  host-1: {{ escalation: {{ su_failover: {{ max: 100000, within: 1s }} }} }}
  host-2: {{ escalation: {{ su_failover: {{ max: 100000, within: 1s }} }} }}
  guest-1: {{ vm: infra/vms/vm-1/guest, escalation: {{ su_failover: {{ max: 1, within: 60s }} }} }}
  guest-2: {{ vm: infra/vms/vm-2/guest, escalation: {{ su_failover: {{ max: 1, within: 60s }} }} }}
apps:
  infra:
    sgs:
      vms:
        redundancy: n-way-active{fail_back}
        escalation: {{ comp_restart: {{ max: 100000, within: 1s }} }}
        units:
          vm-1: {{ node: host-1, vm: {{ guest: {{ forwards: [{{ host: {f1}, guest: {GUEST_PORT} }}] }} }} }}
          vm-2: {{ node: host-2, vm: {{ guest: {{ forwards: [{{ host: {f2}, guest: {GUEST_PORT} }}] }} }} }}
        components:
          guest:
            kind: vm
            timeouts: {{ instantiate: 60s, terminate: 5s }}
            recovery: restart
            vm: {{ kernel: {kernel}, initrd: {initrd}, memory: 128M, cpus: 1, accel: auto{migrate} }}
    sis:
      hosting: {{ sg: vms, active: 2, csis: {{ main: {{ component: guest }} }} }}
  counter:
    sgs:
      sg:
        redundancy: 2n
        fail_back: false
        escalation: {{ comp_restart: {{ max: 0, within: 1s }}, su_restart: {{ max: 0, within: 1s }} }}
        units:
          su-1: {{ node: guest-1, rank: 1 }}
          su-2: {{ node: guest-2, rank: 2 }}
        components:
          counterd:
            kind: sa-aware
            instantiate: [nines, example, counter]
            timeouts: {{ instantiate: 20s, terminate: 2s, cleanup: 2s, callback: 2s }}
            healthcheck: {{ period: 1s, max_duration: 1s }}
            recovery: failover
    sis:
      si:
        sg: sg
        csis:
          main: {{ component: counterd, attrs: {{ port: \"{GUEST_PORT}\", host: \"0.0.0.0\"{hook} }} }}
",
        f1 = forwards[0],
        f2 = forwards[1],
        kernel = img(if image.join("vmlinux").exists() {
            "vmlinux"
        } else {
            "vmlinuz"
        }),
        initrd = img("initramfs.cpio"),
    )
}

/// The guest image: `--image`, else the default; it must hold a nines binary.
fn image_dir(args: &BenchArgs) -> Result<PathBuf, String> {
    let dir = args
        .image
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE));
    let stamp = dir.join("initramfs.cpio");
    if !stamp.is_file() {
        return Err(format!(
            "no guest image in {}: build it with scripts/build-guest-image.sh {} (or pass --image DIR)",
            dir.display(),
            dir.display()
        ));
    }
    std::fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// The two host agents, children of this process (QEMU is a child of each).
struct Hosts {
    agents: Vec<Child>,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // SIGTERM: each agent terminates its VM before it exits.
        for a in &self.agents {
            let _ = signal(a.id(), Signal::TERM);
        }
        for a in &mut self.agents {
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(a.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

fn start_host(exe: &str, dir: &Path, i: usize, director: SocketAddr) -> Result<Child, String> {
    let log = std::fs::File::create(dir.join(format!("host-{i}.log")))
        .map_err(|e| format!("agent log: {e}"))?;
    Command::new(exe)
        .args(["agent", "--node", &format!("host-{i}")])
        .args(["--director", &director.to_string()])
        .arg("--key")
        .arg(dir.join("cluster.key"))
        .arg("--state-dir")
        .arg(dir.join(format!("host-{i}")))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start the agent of host-{i}: {e}"))
}

/// Every VM instantiated, every guest up, the counter active and standby.
fn all_settled(s: &nines_director::Status) -> bool {
    settled(s, COUNTER_SI, 1)
        && s.nodes.iter().all(|n| n.up)
        && s.sgs
            .iter()
            .flat_map(|g| &g.sus)
            .flat_map(|su| &su.components)
            .all(|c| c.presence == "instantiated")
}

/// The VM component's pid for guest N.
fn vm_pid(s: &nines_director::Status, n: usize) -> Option<u32> {
    let path = format!("infra/vms/vm-{n}/guest");
    s.sgs
        .iter()
        .flat_map(|g| &g.sus)
        .flat_map(|su| &su.components)
        .find(|c| c.path == path)
        .and_then(|c| c.pid)
}

/// Asks the active counter (through whichever of `addrs` reaches it) to report an error; a
/// standby's port answers nothing, so both are tried, for up to a few seconds. Returns when
/// the request that was accepted went out: that is the fault's instant, not the return (a
/// guest still booting can hold a connection through QEMU's port forward for seconds first).
///
/// A request is accepted when the counter answers `failing`, or when the engine detected an
/// error report (after event `before`) although no answer came: the fault's own recovery can
/// kill the VM before the answer leaves it. Asking again then would fail the new active too.
fn request_fail(h: &mut Harness, addrs: &[SocketAddr], before: usize) -> Result<Instant, String> {
    use std::io::{BufRead, BufReader, Write};
    let reported = |v: &Value| v["event"] == "fault-detected" && v["kind"] == "error-report";
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        for addr in addrs {
            let Ok(mut s) = std::net::TcpStream::connect_timeout(addr, Duration::from_millis(200))
            else {
                continue;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let sent = Instant::now();
            if s.write_all(b"fail\n").is_err() {
                continue;
            }
            let mut line = String::new();
            let _ = BufReader::new(&s).read_line(&mut line);
            if line.trim() == "failing" {
                return Ok(sent);
            }
            // No answer (a standby, or an answer lost with its VM) or a refusal (`ERR ...`).
            if !line.starts_with("ERR")
                && h.wait_event(before, Duration::from_millis(200), reported)
                    .is_ok()
            {
                return Ok(sent);
            }
            seen.push(format!("{addr}: {:?}", line.trim()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    seen.dedup();
    Err(format!(
        "no counter accepted the `fail` request (replies: {})",
        seen.join("; ")
    ))
}

pub(crate) fn run(args: &BenchArgs) -> Result<(), String> {
    let name = args.scenario.name();
    let image = image_dir(args)?;
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng(seed);
    let exe = self_exe()?;
    let dir = std::env::temp_dir().join(format!("nines-hosts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    crate::bench_cluster::write_key(&dir.join("cluster.key"))?;
    let key = ClusterKey::from_file(&dir.join("cluster.key")).map_err(|e| e.to_string())?;
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let director = listener.local_addr().map_err(|e| e.to_string())?;
    let forwards = [free_port()?, free_port()?];
    let config = nested_config(&image, forwards, args.scenario);
    eprintln!(
        "bench {name}: {} runs, seed {seed}, 2N counter in two TCG guests (ports {} and {}), \
         director on {director}, image {}",
        args.runs,
        forwards[0],
        forwards[1],
        image.display()
    );
    let cluster = ClusterOptions {
        config_text: config.clone(),
        name: "director".into(),
        listener: Listen::Bound(listener),
        etcd: None,
        key,
        link: LinkConfig::default(),
        // The hosts are never lost here; the guests are isolated through their VMs.
        fence: FenceMethod::Unsafe,
        join_timeout: MILESTONE,
    };
    // The hosts first: the director waits for its physical nodes before it boots.
    let hosts = Hosts {
        agents: vec![
            start_host(&exe, &dir, 1, director)?,
            start_host(&exe, &dir, 2, director)?,
        ],
    };
    let mut h = Harness::start_with(&config, &format!("bench-{name}"), args.keep, Some(cluster))?;
    if args.keep {
        eprintln!(
            "bench {name}: state directories {} and {}",
            h.dir().display(),
            dir.display()
        );
    }
    eprintln!("bench {name}: booting the VMs and waiting for their guests to join");
    h.wait_status(MILESTONE, "both VMs up, both guests joined", all_settled)?;
    let addrs: Vec<SocketAddr> = forwards
        .iter()
        .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, *p)))
        .collect();
    let probe = Probe::start(ProbeOptions {
        others: addrs[1..].to_vec(),
        connect_timeout: Duration::from_millis(20),
        timeout: Duration::from_millis(50),
        spacing: Duration::from_micros(args.spacing_us),
        ..ProbeOptions::new(addrs[0], Mode::Counter)
    })
    .map_err(|e| format!("cannot start the probe: {e}"))?;
    probe
        .wait_answer_after(Instant::now(), MILESTONE)
        .ok_or("the probe never reached the counter in the guests")?;

    let mut metrics = Metrics::new()?;
    let started = Instant::now();
    let result = (|| -> Result<(), String> {
        for run in 1..=args.runs {
            let m = one_vm_fault(&mut h, &probe, &addrs, args.scenario, rng.delay(MAX_PHASE))
                .map_err(|e| format!("run {run}: {e}"))?;
            eprintln!(
                "bench {name}: run {run}/{}: fault #{} -> {}: outage {:.3} ms (engine {}), \
                 reaction {:.3} ms, recovery {:.3} ms, VM repair {:.1} ms",
                args.runs,
                m.fault,
                m.recovery,
                ms(m.gap.outage()),
                m.engine_outage_ms
                    .map_or("-".to_owned(), |o| format!("{o:.3} ms")),
                ms(m.reaction),
                ms(m.recovery_time),
                m.repair_ms,
            );
            metrics.record(&m);
        }
        Ok(())
    })();
    let load = load_avg();
    let report = probe.stop();
    drop(hosts);
    h.shutdown();
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result?;
    let out = object(&[
        ("scenario", Value::from(name).to_string()),
        ("runs", args.runs.to_string()),
        ("outage_ms", summary_json(metrics.outage.summary())),
        ("reaction_ms", summary_json(metrics.reaction.summary())),
        ("recovery_ms", summary_json(metrics.recovery.summary())),
        ("repair_ms", summary_json(metrics.repair.summary())),
        ("load_avg", json!(load).to_string()),
        (
            "engine_outage_ms",
            summary_json(metrics.engine_outage.summary()),
        ),
        ("seed", seed.to_string()),
        ("counter_regressions", report.regressions.len().to_string()),
    ]);
    let lost = no_regressions(&report);
    if args.json {
        outln!("{out}");
        return lost;
    }
    outln!(
        "bench {name}: {} runs in {:.1} s, seed {seed}, load average {}",
        args.runs,
        started.elapsed().as_secs_f64(),
        load.map_or("-".to_owned(), |l| format!("{l:.2}"))
    );
    let planned = args.scenario == Scenario::VmMigrate;
    let rows = [
        (
            "outage_ms",
            &metrics.outage,
            if planned {
                "probe: the app's longest gap from the lock to the migration's end"
            } else if args.scenario == Scenario::VmEscalation {
                "probe: the app's longest gap from the error report until it answers again"
            } else {
                "probe: the app's gap (last answer before the fault to the first after)"
            },
        ),
        (
            "reaction_ms",
            &metrics.reaction,
            if planned {
                "lock to the migration's start"
            } else {
                "fault injected to the engine's detection"
            },
        ),
        (
            "recovery_ms",
            &metrics.recovery,
            if planned {
                "engine: the live migration, start to the destination running it"
            } else {
                "detection to the probe's first answer (failover in the other guest)"
            },
        ),
        (
            "repair_ms",
            &metrics.repair,
            if planned {
                "engine: the fail-back migration home after the unlock"
            } else {
                "engine: failure to the VM back and its guest joined"
            },
        ),
        (
            "engine_outage_ms",
            &metrics.engine_outage,
            "engine: detection to the app's SI active again",
        ),
    ];
    print_table(&rows);
    outln!(
        "probe: {} answers, {} failed attempts, {} regressions of the counter",
        report.answered,
        report.failures,
        report.regressions.len()
    );
    lost
}

/// One fault of `scenario` on the VM whose guest holds the counter's active.
fn one_vm_fault(
    h: &mut Harness,
    probe: &Probe,
    addrs: &[SocketAddr],
    scenario: Scenario,
    phase: Duration,
) -> Result<Measured, String> {
    let s = h.wait_status(MILESTONE, "everything back in service", all_settled)?;
    let active = s
        .holder(COUNTER_SI, "active")
        .map(str::to_owned)
        .ok_or("no active assignment")?;
    // counter/sg/su-N runs on guest-N, the guest of infra/vms/vm-N/guest.
    let n: usize = active
        .rsplit('-')
        .next()
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| format!("no guest for {active}"))?;
    let pid = vm_pid(&s, n).ok_or_else(|| format!("no pid for the VM of guest-{n}"))?;
    probe
        .wait_answer_after(Instant::now(), MILESTONE)
        .ok_or("the service does not answer before the fault")?;
    std::thread::sleep(phase);
    h.drain();
    let from = h.history.len();
    let guest = format!("node/guest-{n}");
    let vm = format!("infra/vms/vm-{n}/guest");
    if scenario == Scenario::VmEscalation {
        return escalate(h, probe, addrs, from);
    }
    if scenario == Scenario::VmMigrate {
        return migrate(h, probe, &s, n, from);
    }
    let sig = if scenario == Scenario::VmHang {
        Signal::STOP
    } else {
        Signal::KILL
    };
    signal(pid, sig)?;
    let fault_at = Instant::now();
    let back = probe
        .wait_answer_after(fault_at, MILESTONE)
        .ok_or("the service did not come back in the other guest")?;
    let g = gap(&probe.take(), fault_at).ok_or("no answer on one side of the fault")?;
    // Whichever is seen first opens the fault: the guest's link (closed with QEMU, or its
    // heartbeats), or the VM's own exit.
    let detected = h.wait_event(from, MILESTONE, |v| {
        v["event"] == "fault-detected" && (v["entity"] == guest.as_str() || v["entity"] == vm)
    })?;
    measure(h, detected, fault_at, back.received, g)
}

/// The escalated fault's milestones into a [`Measured`].
fn measure(
    h: &mut Harness,
    detected: usize,
    fault_at: Instant,
    back: Instant,
    g: nines_example_counter::probe::Gap,
) -> Result<Measured, String> {
    let det = h.history[detected].clone();
    let fault = det["fault"].as_u64().unwrap_or(0);
    let recovery = det["recovery"].as_str().unwrap_or("?").to_owned();
    let recovered = h.wait_event(detected, MILESTONE, |v| {
        v["event"] == "service-recovered" && v["fault"] == fault
    })?;
    let engine_outage_ms = h.history[recovered]["outage_ms"].as_f64();
    let repaired = h.wait_event(detected, MILESTONE, |v| {
        v["event"] == "repaired" && v["fault"] == fault
    })?;
    let repair_ms = h.history[repaired]["repair_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let detected_ns = det["detected_ns"]
        .as_u64()
        .map(i128::from)
        .unwrap_or_else(|| h.clock.ns(fault_at));
    let nanos = |x: i128| Duration::from_nanos(u64::try_from(x.max(0)).unwrap_or(u64::MAX));
    Ok(Measured {
        fault,
        recovery,
        fault_at,
        gap: g,
        reaction: nanos(detected_ns - h.clock.ns(fault_at)),
        recovery_time: nanos(h.clock.ns(back) - detected_ns),
        repair_ms,
        engine_outage_ms,
        lines: detected..h.history.len(),
    })
}

/// UC9: `fail` requests to the active counter until an SU failover escalates to the node of
/// a guest, which resets its VM. The measured fault is the escalated one.
fn escalate(
    h: &mut Harness,
    probe: &Probe,
    addrs: &[SocketAddr],
    from: usize,
) -> Result<Measured, String> {
    for _ in 0..4 {
        let before = h.history.len();
        let fault_at = request_fail(h, addrs, before)?;
        let detected = h.wait_event(before, MILESTONE, |v| v["event"] == "fault-detected")?;
        let fault = h.history[detected]["fault"].clone();
        let escalated_to_guest = h
            .wait_event(detected, Duration::from_millis(500), |v| {
                v["event"] == "guest-reset"
            })
            .is_ok();
        // The failing counter goes on answering until the engine stops it (with its VM, once
        // escalated), so the outage is not the gap around the request: it is the longest gap
        // from the request to an answer sent after the service recovered.
        h.wait_event(detected, MILESTONE, |v| {
            v["event"] == "service-recovered" && v["fault"] == fault
        })?;
        let back = probe
            .wait_answer_after(Instant::now(), MILESTONE)
            .ok_or("the service did not come back")?;
        // Taken only here: the earlier rounds' answers stay, because the last answer before
        // this request may have come before the previous round ended (a quick settle).
        if escalated_to_guest {
            let g = longest_gap(&probe.take(), fault_at, back.received)
                .ok_or("no answer before the error report")?;
            return measure(h, detected, fault_at, g.first_after, g);
        }
        // Not yet: let the failed SU come back as the standby before the next failure.
        h.wait_status(MILESTONE, "the failed SU back as standby", all_settled)?;
    }
    Err(format!(
        "four error reports (from event {from}) never escalated to a guest's VM"
    ))
}

/// The longest gap between consecutive answers to requests sent in `from..to`, bounded by the
/// last answer before `from`: a planned move has no instant of failure to measure around, and
/// a component that reported an error goes on answering until the engine stops it.
fn longest_gap(samples: &[Sample], from: Instant, to: Instant) -> Option<Gap> {
    let mut times: Vec<Instant> = samples
        .iter()
        .filter(|s| s.sent < to)
        .map(|s| s.received)
        .collect();
    times.sort();
    let start = times.iter().rposition(|t| *t < from)?;
    times[start..]
        .windows(2)
        .map(|w| Gap {
            last_before: w[0],
            first_after: w[1],
        })
        .max_by_key(Gap::outage)
}

/// vm-migrate: lock the host of guest-`n`'s VM, measure the live migration, unlock it and
/// measure the migration home. Neither may open a fault.
fn migrate(
    h: &mut Harness,
    probe: &Probe,
    s: &nines_director::Status,
    n: usize,
    from: usize,
) -> Result<Measured, String> {
    let vm_su = format!("infra/vms/vm-{n}");
    let host = s
        .sgs
        .iter()
        .flat_map(|g| &g.sus)
        .find(|su| su.path == vm_su)
        .map(|su| su.node.clone())
        .ok_or_else(|| format!("no node for {vm_su}"))?;
    let locked_at = Instant::now();
    h.adm("lock", &host)?;
    let is = |what: &'static str| {
        let su = vm_su.clone();
        move |v: &Value| {
            (v["event"] == what || v["event"] == "migration-failed") && v["entity"] == su.as_str()
        }
    };
    let started = h.wait_event(from, MILESTONE, is("migration-started"))?;
    let moved = h.wait_event(started, MILESTONE, is("migrated"))?;
    if h.history[moved]["event"] == "migration-failed" {
        return Err(format!("the migration failed: {}", h.history[moved]));
    }
    let moved_at = Instant::now();
    // The service must answer again before the gap is judged.
    probe
        .wait_answer_after(moved_at, MILESTONE)
        .ok_or("the service does not answer after the migration")?;
    let g =
        longest_gap(&probe.take(), locked_at, moved_at).ok_or("no answer around the migration")?;
    let started_ns = h.history[started]["t_ns"].as_u64().map(i128::from);
    let took_ms = h.history[moved]["took_ms"].as_f64().unwrap_or(f64::NAN);
    h.adm("unlock", &host)?;
    let back_start = h.wait_event(moved + 1, MILESTONE, is("migration-started"))?;
    let back = h.wait_event(back_start, MILESTONE, is("migrated"))?;
    if h.history[back]["event"] == "migration-failed" {
        return Err(format!(
            "the fail-back migration failed: {}",
            h.history[back]
        ));
    }
    let repair_ms = h.history[back]["took_ms"].as_f64().unwrap_or(f64::NAN);
    h.wait_status(MILESTONE, "everything back in service", all_settled)?;
    h.drain();
    if let Some(f) = h.history[from..]
        .iter()
        .find(|v| v["event"] == "fault-detected")
    {
        return Err(format!("a planned migration opened a fault: {f}"));
    }
    let nanos = |x: i128| Duration::from_nanos(u64::try_from(x.max(0)).unwrap_or(u64::MAX));
    let reaction = started_ns.map_or(Duration::ZERO, |t| nanos(t - h.clock.ns(locked_at)));
    Ok(Measured {
        fault: 0,
        recovery: "live-migration".into(),
        fault_at: locked_at,
        gap: g,
        reaction,
        recovery_time: Duration::from_secs_f64(took_ms.max(0.0) / 1e3),
        repair_ms,
        engine_outage_ms: None,
        lines: from..h.history.len(),
    })
}
