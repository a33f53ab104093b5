//! `nines bench node-kill` and `nines bench partition`: node failures on the namespace
//! testbed. Node 0 hosts the director's listener and the probe; nodes 1 and 2 run
//! `nines agent` (each in its own PID namespace) with the 2N counter. Each run takes the
//! active's node away (crashed: silent, then dead; or cut off: alive but unreachable), waits
//! for the service to come back on the other node, then repairs the node (a fresh PID
//! namespace, the agent again) and waits until it rejoined as the standby.
//!
//! The director runs in this process (its listener socket is created inside node 0's network
//! namespace), fencing by killing the node's PID namespace: what powering a host off does.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nines_director::cluster::{ClusterOptions, FenceMethod, Listen};
use nines_example_counter::probe::{gap, Mode, Probe, ProbeOptions};
use nines_link::{ClusterKey, LinkConfig};
use nines_testbed::{Process, Testbed};
use serde_json::{json, Value};

use crate::bench::{
    counter_config, load_avg, ms, no_regressions, object, print_table, self_exe, settled,
    summary_json, BenchArgs, CounterConfig, Harness, Measured, Metrics, Rng, Scenario, COUNTER_SI,
    MAX_PHASE,
};
use crate::counter_command::CounterCommand;

/// The counter's port on both nodes.
const PORT: u16 = 7100;
/// The director's port on node 0.
const DIRECTOR_PORT: u16 = 7400;
/// Patience for each milestone (generous: a slow machine is not a broken one).
const MILESTONE: Duration = Duration::from_secs(30);

/// The testbed and the agents running on it.
struct Nodes {
    bed: Testbed,
    agents: Mutex<Vec<Option<Process>>>,
    exe: String,
    dir: PathBuf,
    director: SocketAddr,
}

impl Nodes {
    fn key(&self) -> PathBuf {
        self.dir.join("cluster.key")
    }

    /// Starts `nines agent` for node `i` (testbed node `i` is `node-i`).
    fn start_agent(&self, i: usize) -> Result<(), String> {
        self.start_agent_to(i, &self.director.to_string())
    }

    /// Starts `nines agent` for node `i`, joining `directors` (`A[,B...]`).
    fn start_agent_to(&self, i: usize, directors: &str) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.join(format!("agent-{i}.log")))
            .map_err(|e| format!("agent log: {e}"))?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(["agent", "--node", &format!("node-{i}")])
            .args(["--director", directors])
            .arg("--key")
            .arg(self.key())
            .arg("--state-dir")
            .arg(self.dir.join(format!("agent-{i}")))
            .stdout(Stdio::null())
            .stderr(log);
        let p = self
            .bed
            .node(i)
            .spawn(cmd)
            .map_err(|e| format!("cannot start the agent of node-{i}: {e}"))?;
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents[i] = Some(p);
        Ok(())
    }

    /// The fence: every process of the node dies (its PID namespace is killed).
    fn fence(&self, name: &str) -> Result<(), String> {
        let i = name
            .strip_prefix("node-")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|i| (1..self.bed.len()).contains(i))
            .ok_or_else(|| format!("no testbed node for {name}"))?;
        self.bed.kill_node(i).map_err(|e| e.to_string())
    }
}

pub(crate) fn write_key(path: &Path) -> Result<(), String> {
    let mut bytes = [0u8; 32];
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut r = Rng(t ^ u64::from(std::process::id()));
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&r.next().to_le_bytes());
    }
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A counter probe in node 0's network that tries `addrs` in turn, with short timeouts so
/// that a dead node holds it up only briefly.
fn probe_from_node0(bed: &Testbed, addrs: &[SocketAddr], spacing_us: u64) -> Result<Probe, String> {
    let (first, others) = addrs.split_first().ok_or("no address to probe")?;
    bed.node(0)
        .enter(|| {
            Probe::start(ProbeOptions {
                others: others.to_vec(),
                connect_timeout: Duration::from_millis(20),
                timeout: Duration::from_millis(50),
                spacing: Duration::from_micros(spacing_us),
                ..ProbeOptions::new(*first, Mode::Counter)
            })
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot start the probe: {e}"))
}

/// The testbed node running SU `su-N`.
fn node_of_su(su: &str) -> Option<usize> {
    su.rsplit('-').next()?.parse().ok()
}

pub(crate) fn run(args: &BenchArgs) -> Result<(), String> {
    if args.scenario == Scenario::DirectorKill {
        return run_director_kill(args);
    }
    let name = args.scenario.name();
    if !nines_testbed::is_root() {
        return Err(format!(
            "{name} builds network namespaces (the cluster testbed) and needs root"
        ));
    }
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng(seed);
    let exe = self_exe()?;
    let dir = std::env::temp_dir().join(format!("nines-testbed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let bed = Testbed::new(3).map_err(|e| format!("cannot build the testbed: {e}"))?;
    let director = SocketAddr::from((bed.node(0).addr(), DIRECTOR_PORT));
    let nodes = Arc::new(Nodes {
        bed,
        agents: Mutex::new(vec![None, None, None]),
        exe: exe.clone(),
        dir: dir.clone(),
        director,
    });
    write_key(&nodes.key())?;
    let key = ClusterKey::from_file(&nodes.key()).map_err(|e| e.to_string())?;
    let listener = nodes
        .bed
        .node(0)
        .enter(|| std::net::TcpListener::bind(director))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot listen on {director} in node 0: {e}"))?;
    // The floating IP, when there is one: a spare address of the testbed's subnet.
    let vip = {
        let o = nodes.bed.node(0).addr().octets();
        std::net::Ipv4Addr::new(o[0], o[1], o[2], 100)
    };
    let config = counter_config(
        &CounterCommand::beside(&exe),
        &CounterConfig {
            host: Some("0.0.0.0"),
            vip: (args.scenario == Scenario::Vip).then(|| format!("{vip}/24")),
            ..CounterConfig::two_n(PORT)
        },
    );
    let link = LinkConfig::default();
    eprintln!(
        "bench {name}: {} runs, seed {seed}, 2N counter on node-1 and node-2 ({} and {}), \
         director on {director}, heartbeats {:?} x {}",
        args.runs,
        nodes.bed.node(1).addr(),
        nodes.bed.node(2).addr(),
        link.heartbeat_interval,
        link.miss_count
    );
    for i in 1..3 {
        nodes.start_agent(i)?;
    }
    let fencer = nodes.clone();
    let cluster = ClusterOptions {
        config_text: config.clone(),
        name: "director".into(),
        listener: Listen::Bound(listener),
        etcd: None,
        key,
        link,
        fence: FenceMethod::Hook(Arc::new(move |node: &str| fencer.fence(node))),
        join_timeout: MILESTONE,
    };
    let mut h = Harness::start_with(&config, &format!("bench-{name}"), args.keep, Some(cluster))?;
    if args.keep {
        eprintln!("bench {name}: state directory {}", h.dir().display());
    }
    h.wait_status(MILESTONE, "the cluster's start", |s| {
        settled(s, COUNTER_SI, 1)
    })?;
    // The probe tries both nodes, or only the floating IP.
    let addrs = if args.scenario == Scenario::Vip {
        vec![SocketAddr::from((vip, PORT))]
    } else {
        vec![
            SocketAddr::from((nodes.bed.node(1).addr(), PORT)),
            SocketAddr::from((nodes.bed.node(2).addr(), PORT)),
        ]
    };
    let probe = probe_from_node0(&nodes.bed, &addrs, args.spacing_us)?;
    if probe.wait_answer_after(Instant::now(), MILESTONE).is_none() {
        return Err("the probe on node 0 never reached the counter".into());
    }

    let mut metrics = Metrics::new()?;
    let started = Instant::now();
    for run in 1..=args.runs {
        let m = one_node_fault(&mut h, &nodes, &probe, args.scenario, rng.delay(MAX_PHASE))
            .map_err(|e| format!("run {run}: {e}"))?;
        metrics.record(&m);
        eprintln!(
            "bench {name}: run {run}/{}: {} -> {}: outage {:.3} ms (engine {}), reaction {:.3} ms, \
             recovery {:.3} ms, repair {:.1} ms",
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
    }
    let report = probe.stop();
    h.shutdown();
    // Dropping the testbed kills the agents and everything they run.
    drop(nodes);
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let load = load_avg();
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
        (
            "heartbeat",
            object(&[("interval_ms", "50".into()), ("miss_count", "4".into())]),
        ),
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
    let rows = [
        (
            "outage_ms",
            &metrics.outage,
            "probe: last answer before the fault to the first after",
        ),
        (
            "reaction_ms",
            &metrics.reaction,
            "fault injected to the engine's detection (heartbeats)",
        ),
        (
            "recovery_ms",
            &metrics.recovery,
            "detection to the probe's first answer (fence, failover)",
        ),
        (
            "repair_ms",
            &metrics.repair,
            "engine: failure to the node's SU back in service",
        ),
        (
            "engine_outage_ms",
            &metrics.engine_outage,
            "engine: detection to service recovered",
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

/// A switchover: the floating IP moves with the active. Reaction: the request until the
/// engine assigned the new active; recovery: from there to the probe's first answer through
/// the floating IP.
fn planned_move(
    h: &mut Harness,
    probe: &Probe,
    active: &str,
    from: usize,
) -> Result<Measured, String> {
    let fault_at = Instant::now();
    h.adm("switchover", COUNTER_SI)?;
    let assigned = h.wait_event(from, MILESTONE, |v| {
        v["event"] == "assignment" && v["ha_state"] == "active" && v["su"] != active
    })?;
    let back = probe
        .wait_answer_after(fault_at, MILESTONE)
        .ok_or("the floating IP did not answer after the switchover")?;
    let g = gap(&probe.take(), fault_at).ok_or("no answer on one side of the switchover")?;
    let at_ns = h.history[assigned]["t_ns"]
        .as_u64()
        .map(i128::from)
        .unwrap_or_else(|| h.clock.ns(fault_at));
    let nanos = |x: i128| Duration::from_nanos(u64::try_from(x.max(0)).unwrap_or(u64::MAX));
    h.wait_status(MILESTONE, "the switchover settled", |s| {
        settled(s, COUNTER_SI, 1) && s.holder(COUNTER_SI, "active") != Some(active)
    })?;
    Ok(Measured {
        fault: 0,
        recovery: "switchover".into(),
        fault_at,
        gap: g,
        reaction: nanos(at_ns - h.clock.ns(fault_at)),
        recovery_time: nanos(h.clock.ns(back.received) - at_ns),
        repair_ms: f64::NAN,
        engine_outage_ms: None,
        lines: from..h.history.len(),
    })
}

/// One node fault and its repair.
fn one_node_fault(
    h: &mut Harness,
    nodes: &Nodes,
    probe: &Probe,
    scenario: Scenario,
    phase: Duration,
) -> Result<Measured, String> {
    let s = h.wait_status(MILESTONE, "both SUs assigned", |s| {
        settled(s, COUNTER_SI, 1)
    })?;
    let active = s
        .holder(COUNTER_SI, "active")
        .map(str::to_owned)
        .ok_or("no active assignment")?;
    let victim = node_of_su(&active).ok_or_else(|| format!("no node for {active}"))?;
    let other = 3 - victim;
    // The service must be answering before the fault, from a random phase on.
    probe
        .wait_answer_after(Instant::now(), MILESTONE)
        .ok_or("the service does not answer before the fault")?;
    std::thread::sleep(phase);
    h.drain();
    let from = h.history.len();
    if scenario == Scenario::Vip {
        return planned_move(h, probe, &active, from);
    }
    match scenario {
        Scenario::Partition => nodes
            .bed
            .partition(&[&[victim], &[0, other]])
            .map_err(|e| e.to_string())?,
        _ => nodes.bed.crash_node(victim).map_err(|e| e.to_string())?,
    }
    let fault_at = Instant::now();
    let node_path = format!("node/node-{victim}");
    let back = probe
        .wait_answer_after(fault_at, MILESTONE)
        .ok_or("the service did not come back on the other node")?;
    let g = gap(&probe.take(), fault_at).ok_or("no answer on one side of the fault")?;
    let detected = h.wait_event(from, MILESTONE, |v| {
        v["event"] == "fault-detected" && v["entity"] == node_path.as_str()
    })?;
    let det = h.history[detected].clone();
    let fault = det["fault"].as_u64().unwrap_or(0);
    let recovery = det["recovery"].as_str().unwrap_or("?").to_owned();
    let recovered = h.wait_event(detected, MILESTONE, |v| {
        v["event"] == "service-recovered" && v["fault"] == fault
    })?;
    let engine_outage_ms = h.history[recovered]["outage_ms"].as_f64();
    // Repair: heal the network, boot the node again, start its agent; it joins clean.
    if scenario == Scenario::Partition {
        nodes.bed.heal_partition().map_err(|e| e.to_string())?;
    }
    nodes.bed.restart_node(victim).map_err(|e| e.to_string())?;
    nodes.start_agent(victim)?;
    let repaired = h.wait_event(recovered, MILESTONE, |v| {
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
        recovery_time: nanos(h.clock.ns(back.received) - detected_ns),
        repair_ms,
        engine_outage_ms,
        lines: from..h.history.len(),
    })
}

/// `nines bench director-kill`: two `nines director` processes (in node 0's network) elect a
/// leader in etcd (also in node 0's network); each run SIGKILLs the leader, waits for the
/// other to be elected and for the cluster to settle under it with the same component pids,
/// and restarts the killed one as the new standby. Outage: the probe's gap across the kill
/// (expected: none); reaction: kill to the standby's `elected`; recovery: elected to the
/// cluster settled under the new leader; repair: the killed director campaigning again.
pub(crate) fn run_director_kill(args: &BenchArgs) -> Result<(), String> {
    use nines_director::{control_socket_path, events_path, ControlClient};

    let name = args.scenario.name();
    if !nines_testbed::is_root() {
        return Err(format!("{name} builds network namespaces and needs root"));
    }
    let exe = self_exe()?;
    let dir = std::env::temp_dir().join(format!("nines-testbed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let bed = Testbed::new(3).map_err(|e| format!("cannot build the testbed: {e}"))?;
    let node0 = bed.node(0).addr();
    let addrs = [
        SocketAddr::from((node0, DIRECTOR_PORT)),
        SocketAddr::from((node0, DIRECTOR_PORT + 1)),
    ];
    let nodes = Nodes {
        bed,
        agents: Mutex::new(vec![None, None, None]),
        exe: exe.clone(),
        dir: dir.clone(),
        director: addrs[0],
    };
    write_key(&nodes.key())?;
    let etcd = nodes
        .bed
        .node(0)
        .enter(nines_store::testing::EtcdServer::start)
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot start etcd: {e}"))?;
    let config = counter_config(
        &CounterCommand::beside(&exe),
        &CounterConfig {
            host: Some("0.0.0.0"),
            ..CounterConfig::two_n(PORT)
        },
    );
    let config_path = dir.join("cluster.yaml");
    std::fs::write(&config_path, &config).map_err(|e| e.to_string())?;
    // The directors run in node 0's namespaces, outside the testbed's control: they fence a
    // node by killing every process in its network namespace, and confirm none is left.
    let netns: Vec<String> = (0..3)
        .map(|i| nodes.bed.node(i).netns().to_owned())
        .collect();
    let fence = format!(
        "case $NINES_FENCE_NODE in node-1) n={};; node-2) n={};; *) exit 1;; esac; \
         for _ in $(seq 500); do p=$(ip netns pids $n); [ -z \"$p\" ] && exit 0; \
         kill -KILL $p 2>/dev/null; sleep 0.01; done; exit 1",
        netns[1], netns[2]
    );
    let states = [dir.join("d1"), dir.join("d2")];
    let spawn_director = |k: usize| -> Result<std::process::Child, String> {
        let log = std::fs::File::create(dir.join(format!("d{}.log", k + 1)))
            .map_err(|e| e.to_string())?;
        Command::new("ip")
            .args(["netns", "exec", nodes.bed.node(0).netns(), &exe, "director"])
            .arg(&config_path)
            .args([
                "--listen",
                &addrs[k].to_string(),
                "--name",
                &format!("d{}", k + 1),
            ])
            .arg("--key")
            .arg(nodes.key())
            .args(["--etcd", etcd.endpoint(), "--fence-command", &fence])
            .arg("--state-dir")
            .arg(&states[k])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start director d{}: {e}", k + 1))
    };
    let count = |k: usize, event: &str| -> usize {
        let needle = format!("\"event\":\"{event}\"");
        std::fs::read_to_string(events_path(&states[k]))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    };
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| -> Result<Instant, String> {
        let deadline = Instant::now() + MILESTONE;
        while !ok() {
            if Instant::now() > deadline {
                return Err(format!("{what}: not within {MILESTONE:?}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Instant::now())
    };
    let status = |k: usize| {
        ControlClient::connect(&control_socket_path(&states[k]))
            .and_then(|mut c| c.status())
            .ok()
    };
    let pids_of = |s: &nines_director::Status| -> Vec<u32> {
        let mut v: Vec<u32> = s
            .sgs
            .iter()
            .flat_map(|g| g.sus.iter())
            .flat_map(|su| su.components.iter())
            .filter_map(|c| c.pid)
            .collect();
        v.sort();
        v
    };
    let ready = |k: usize| status(k).filter(|s| settled(s, COUNTER_SI, 1) && pids_of(s).len() == 2);

    let mut directors: [Option<std::process::Child>; 2] = [Some(spawn_director(0)?), None];
    wait_for("d1 elected", &|| count(0, "elected") == 1)?;
    directors[1] = Some(spawn_director(1)?);
    wait_for("d2 campaigning", &|| count(1, "campaigning") == 1)?;
    let joined = format!("{},{}", addrs[0], addrs[1]);
    for i in 1..3 {
        nodes.start_agent_to(i, &joined)?;
    }
    wait_for("the cluster settled under d1", &|| ready(0).is_some())?;
    let counters = [
        SocketAddr::from((nodes.bed.node(1).addr(), PORT)),
        SocketAddr::from((nodes.bed.node(2).addr(), PORT)),
    ];
    let probe = probe_from_node0(&nodes.bed, &counters, args.spacing_us)?;
    probe
        .wait_answer_after(Instant::now(), MILESTONE)
        .ok_or("the probe never reached the counter")?;
    eprintln!(
        "bench {name}: {} runs, directors d1 {} and d2 {}, etcd {} (lease 1 s)",
        args.runs,
        addrs[0],
        addrs[1],
        etcd.endpoint()
    );

    let mut metrics = Metrics::new()?;
    let mut leader = 0usize;
    let result = (|| -> Result<(), String> {
        for run in 1..=args.runs {
            let other = 1 - leader;
            let before = ready(leader).ok_or("no settled cluster before the kill")?;
            let elected_before = count(other, "elected");
            let campaigning_before = count(leader, "campaigning");
            std::thread::sleep(Duration::from_millis(200));
            if let Some(mut d) = directors[leader].take() {
                let _ = d.kill();
                let _ = d.wait();
            }
            let killed = Instant::now();
            let elected = wait_for("the standby elected", &|| {
                count(other, "elected") > elected_before
            })?;
            let settled_at = wait_for("the cluster settled under the new leader", &|| {
                ready(other).is_some()
            })?;
            let after = ready(other).ok_or("no status from the new leader")?;
            if pids_of(&after) != pids_of(&before) {
                return Err(format!(
                    "run {run}: components were restarted: pids {:?} before, {:?} after",
                    pids_of(&before),
                    pids_of(&after)
                ));
            }
            probe
                .wait_answer_after(settled_at, MILESTONE)
                .ok_or("the service stopped")?;
            let samples = probe.take();
            let g = gap(&samples, killed).ok_or("no answers around the kill")?;
            directors[leader] = Some(spawn_director(leader)?);
            let back = wait_for("the killed director campaigning again", &|| {
                count(leader, "campaigning") > campaigning_before
            })?;
            let m = Measured {
                fault: run.into(),
                recovery: "director-failover".into(),
                fault_at: killed,
                gap: g,
                reaction: elected - killed,
                recovery_time: settled_at - elected,
                repair_ms: ms(back - killed),
                engine_outage_ms: None,
                lines: 0..0,
            };
            eprintln!(
                "bench {name}: run {run}/{}: d{} killed: service gap {:.3} ms, new leader d{} in {:.1} ms, settled {:.1} ms later",
                args.runs,
                leader + 1,
                ms(m.gap.outage()),
                other + 1,
                ms(m.reaction),
                ms(m.recovery_time)
            );
            metrics.record(&m);
            leader = other;
        }
        Ok(())
    })();
    let report = probe.stop();
    for d in directors.iter_mut().flatten() {
        let _ = d.kill();
        let _ = d.wait();
    }
    drop(nodes);
    drop(etcd);
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result?;
    let load = load_avg();
    let out = object(&[
        ("scenario", Value::from(name).to_string()),
        ("runs", args.runs.to_string()),
        ("outage_ms", summary_json(metrics.outage.summary())),
        ("reaction_ms", summary_json(metrics.reaction.summary())),
        ("recovery_ms", summary_json(metrics.recovery.summary())),
        ("repair_ms", summary_json(metrics.repair.summary())),
        ("load_avg", json!(load).to_string()),
        ("counter_regressions", report.regressions.len().to_string()),
    ]);
    let lost = no_regressions(&report);
    if args.json {
        outln!("{out}");
        return lost;
    }
    let rows = [
        (
            "outage_ms",
            &metrics.outage,
            "probe: the service's gap across the kill",
        ),
        (
            "reaction_ms",
            &metrics.reaction,
            "kill to the standby elected (new leader)",
        ),
        (
            "recovery_ms",
            &metrics.recovery,
            "elected to the nodes joined and the cluster settled",
        ),
        (
            "repair_ms",
            &metrics.repair,
            "kill to the restarted director campaigning",
        ),
    ];
    print_table(&rows);
    outln!(
        "probe: {} answers, {} failed attempts, {} regressions; load average {}",
        report.answered,
        report.failures,
        report.regressions.len(),
        load.map_or("-".to_owned(), |l| format!("{l:.2}"))
    );
    lost
}
