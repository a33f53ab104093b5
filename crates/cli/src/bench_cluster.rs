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
    counter_config, load_avg, ms, no_regressions, object, self_exe, settled, summary_json,
    BenchArgs, CounterConfig, Harness, Measured, Metrics, Rng, Scenario, COUNTER_SI, MAX_PHASE,
};

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
        let log = std::fs::File::create(self.dir.join(format!("agent-{i}.log")))
            .map_err(|e| format!("agent log: {e}"))?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(["agent", "--node", &format!("node-{i}")])
            .args(["--director", &self.director.to_string()])
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

fn write_key(path: &Path) -> Result<(), String> {
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

/// The testbed node running SU `su-N`.
fn node_of_su(su: &str) -> Option<usize> {
    su.rsplit('-').next()?.parse().ok()
}

pub(crate) fn run(args: &BenchArgs) -> Result<(), String> {
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
    let config = counter_config(
        &exe,
        &CounterConfig {
            host: Some("0.0.0.0"),
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
    let addrs = [
        SocketAddr::from((nodes.bed.node(1).addr(), PORT)),
        SocketAddr::from((nodes.bed.node(2).addr(), PORT)),
    ];
    let probe = nodes
        .bed
        .node(0)
        .enter(|| {
            Probe::start(ProbeOptions {
                others: vec![addrs[1]],
                connect_timeout: Duration::from_millis(20),
                timeout: Duration::from_millis(50),
                spacing: Duration::from_micros(args.spacing_us),
                ..ProbeOptions::new(addrs[0], Mode::Counter)
            })
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot start the probe: {e}"))?;
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
        println!("{out}");
        return lost;
    }
    println!(
        "bench {name}: {} runs in {:.1} s, seed {seed}, load average {}",
        args.runs,
        started.elapsed().as_secs_f64(),
        load.map_or("-".to_owned(), |l| format!("{l:.2}"))
    );
    println!(
        "{:<18}{:>10}{:>10}{:>10}{:>10}",
        "", "p50", "p90", "p99", "max"
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
    for (label, metric, what) in rows {
        if let Some(s) = metric.summary() {
            println!(
                "{label:<18}{:>10.3}{:>10.3}{:>10.3}{:>10.3}   {what}",
                s.p50, s.p90, s.p99, s.max
            );
        }
    }
    println!(
        "probe: {} answers, {} failed attempts, {} regressions of the counter",
        report.answered,
        report.failures,
        report.regressions.len()
    );
    lost
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
