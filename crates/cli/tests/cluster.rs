//! A real cluster on the namespace testbed: `nines director` in node 0's network, `nines agent`
//! on nodes 1 and 2 (each in its own PID namespace), the 2N counter across them, and a probe
//! client on node 0. Node faults are real: a crashed node's processes all die at once and its
//! link goes silent.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nines_example_counter::probe::{gap, Mode, Probe, ProbeOptions};
use nines_testbed::{Process, Testbed};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_nines");
const PORT: u16 = 7100;

/// A temp directory removed on drop (also when the test fails). Short: it holds sockets.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ncl-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config() -> String {
    format!(
        "cluster: counter-3n\n\
         nodes: [node-1, node-2]\n\
         apps:\n  counter:\n    sgs:\n      sg:\n        redundancy: 2n\n        fail_back: false\n\
         \x20       units:\n          su-1: {{ node: node-1, rank: 1 }}\n          su-2: {{ node: node-2, rank: 2 }}\n\
         \x20       components:\n          counterd:\n            kind: sa-aware\n\
         \x20           instantiate: [{EXE}, example, counter]\n\
         \x20           timeouts: {{ instantiate: 10s, terminate: 2s, cleanup: 2s, callback: 1s }}\n\
         \x20           healthcheck: {{ period: 1s, max_duration: 500ms }}\n\
         \x20           recovery: failover\n\
         \x20   sis:\n      si:\n        sg: sg\n        csis:\n\
         \x20         main: {{ component: counterd, attrs: {{ port: \"{PORT}\", host: 0.0.0.0 }} }}\n"
    )
}

struct Cluster {
    bed: Testbed,
    dir: TempDir,
    director: Option<Killed>,
    agents: Vec<Option<Process>>,
    director_addr: SocketAddr,
    /// What agents get as `--director`.
    directors: String,
}

impl Cluster {
    fn state(&self) -> String {
        self.dir.0.join("director").display().to_string()
    }

    fn key(&self) -> PathBuf {
        self.dir.0.join("cluster.key")
    }

    /// Starts the director in node 0's network namespace (but this PID namespace, so that its
    /// fence command can kill a node's init), fencing by SIGKILL of the node's init.
    fn start(tag: &str) -> Option<Cluster> {
        Self::start_with(tag, true)
    }

    /// The testbed, key and config; the director too if `start_director`.
    fn start_with(tag: &str, start_director: bool) -> Option<Cluster> {
        if !nines_testbed::is_root() {
            eprintln!("skipped: the cluster tests need root (network namespaces)");
            return None;
        }
        let bed = Testbed::new(3).expect("testbed");
        let dir = TempDir::new(tag);
        write_key(&dir.0.join("cluster.key"), &[7u8; 32]);
        std::fs::write(dir.0.join("cluster.yaml"), config()).expect("config");
        let director_addr = SocketAddr::from((bed.node(0).addr(), 7400));
        let mut c = Cluster {
            bed,
            dir,
            director: None,
            agents: vec![None, None, None],
            director_addr,
            directors: director_addr.to_string(),
        };
        c.write_inits();
        if start_director {
            c.start_director();
        }
        Some(c)
    }

    /// The fence command kills every process of the network namespace `inits/NODE` names.
    fn write_inits(&self) {
        let d = self.dir.0.join("inits");
        std::fs::create_dir_all(&d).expect("inits dir");
        for i in 1..3 {
            std::fs::write(d.join(format!("node-{i}")), self.bed.node(i).netns()).expect("netns");
        }
    }

    fn start_director(&mut self) {
        let child = self.spawn_director("director", self.director_addr, &self.state(), &[]);
        self.director = Some(child);
    }

    /// `nines director` named `name` in node 0's network namespace, listening on `addr`,
    /// with its state in `state` and `extra` arguments.
    fn spawn_director(&self, name: &str, addr: SocketAddr, state: &str, extra: &[&str]) -> Killed {
        // Kill every process in the node's network namespace, and return only once none is
        // left: a fence must confirm, not just ask.
        let fence = format!(
            "n=$(cat {}/inits/$NINES_FENCE_NODE) || exit 1; for _ in $(seq 500); do \
             p=$(ip netns pids $n); [ -z \"$p\" ] && exit 0; kill -KILL $p 2>/dev/null; \
             sleep 0.01; done; exit 1",
            self.dir.0.display()
        );
        let log = std::fs::File::create(self.dir.0.join(format!("{name}.log"))).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", self.bed.node(0).netns(), EXE, "director"])
            .arg(self.dir.0.join("cluster.yaml"))
            .args(["--listen", &addr.to_string(), "--name", name])
            .arg("--key")
            .arg(self.key())
            .args(["--fence-command", &fence, "--join-timeout", "20s", "-v"])
            .args(["--state-dir", state])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nines director runs");
        Killed(child)
    }

    fn start_agent(&mut self, i: usize, key: &Path) -> &Process {
        let directors = self.directors.clone();
        self.start_agent_of(i, key, &directors)
    }

    fn start_agent_of(&mut self, i: usize, key: &Path, directors: &str) -> &Process {
        let log = std::fs::File::create(self.dir.0.join(format!("agent-{i}.log"))).expect("log");
        let mut cmd = Command::new(EXE);
        cmd.args(["agent", "--node", &format!("node-{i}")])
            .args(["--director", directors])
            .arg("--key")
            .arg(key)
            .arg("--state-dir")
            .arg(self.dir.0.join(format!("agent-{i}")))
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(log);
        let p = self.bed.node(i).spawn(cmd).expect("nines agent runs");
        self.agents[i] = Some(p);
        self.agents[i].as_ref().expect("just set")
    }

    /// Starts both agents with the right key and waits for the 2N counter to settle (active
    /// on node 1); returns the key.
    fn start_both(&mut self) -> PathBuf {
        let key = self.key();
        self.start_agent(1, &key);
        self.start_agent(2, &key);
        self.wait_status("the 2N counter settled", Duration::from_secs(30), |s| {
            settled(s, "counter/sg/su-1", "counter/sg/su-2")
        });
        key
    }

    fn status(&self) -> Option<Value> {
        self.status_of(&self.state())
    }

    /// Starts both agents, waits until the director using `state` shows the counter settled
    /// with both pids, and starts a probe that got an answer; returns that status.
    fn agents_settled_under(&mut self, state: &str) -> (Value, Probe) {
        let key = self.key();
        self.start_agent(1, &key);
        self.start_agent(2, &key);
        let deadline = Instant::now() + Duration::from_secs(30);
        let before = loop {
            if let Some(s) = self.status_of(state) {
                if settled(&s, "counter/sg/su-1", "counter/sg/su-2") && pids(&s).len() == 2 {
                    break s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no settled cluster\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let probe = self.probe();
        assert!(probe
            .wait_answer_after(Instant::now(), Duration::from_secs(10))
            .is_some());
        (before, probe)
    }

    fn status_of(&self, state: &str) -> Option<Value> {
        let o = Command::new(EXE)
            .args(["status", "--json", "--state-dir", state])
            .output()
            .ok()?;
        if o.status.code() != Some(0) {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    fn wait_status(&self, what: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.status() {
                if ok(&s) {
                    return s;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last status {:?}\n{}",
                    self.status(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for f in [
            "director.log",
            "d1.log",
            "d2.log",
            "agent-1.log",
            "agent-2.log",
        ] {
            let text = std::fs::read_to_string(self.dir.0.join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- {f} (last lines)\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// The director's event log once `ready` holds for it: lines reach the file in batches a
    /// couple of milliseconds after the engine recorded them, so a test that saw a state in
    /// the status waits for the lines about it. Bounded, to catch a hang.
    fn events_once(&self, what: &str, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ev = self.events();
            if ready(&ev) {
                return ev;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not in the event log: {ev:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(Path::new(&self.state()).join("events.jsonl"))
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A probe on node 0 that tries both nodes' counter addresses.
    fn probe(&self) -> Probe {
        let a = SocketAddr::from((self.bed.node(1).addr(), PORT));
        let b = SocketAddr::from((self.bed.node(2).addr(), PORT));
        self.bed
            .node(0)
            .enter(|| {
                Probe::start(ProbeOptions {
                    others: vec![b],
                    connect_timeout: Duration::from_millis(20),
                    timeout: Duration::from_millis(50),
                    spacing: Duration::from_micros(200),
                    ..ProbeOptions::new(a, Mode::Counter)
                })
            })
            .expect("enter node 0")
            .expect("probe starts")
    }
}

fn write_key(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("key mode");
}

fn holder(s: &Value, ha: &str) -> Option<String> {
    s["sgs"][0]["sis"][0]["assignments"]
        .as_array()?
        .iter()
        .find(|a| a["ha_state"] == ha && a["confirmed"] == true)
        .and_then(|a| a["su"].as_str())
        .map(str::to_string)
}

fn settled(s: &Value, active: &str, standby: &str) -> bool {
    holder(s, "active").as_deref() == Some(active)
        && holder(s, "standby").as_deref() == Some(standby)
}

#[test]
fn a_crashed_node_is_fenced_its_work_fails_over_and_it_rejoins_clean() {
    let Some(mut c) = Cluster::start("crash") else {
        return;
    };
    let key = c.start_both();
    let probe = c.probe();
    assert!(
        probe
            .wait_answer_after(Instant::now(), Duration::from_secs(10))
            .is_some(),
        "the probe on node 0 reaches the active on node 1\n{}",
        c.logs()
    );
    std::thread::sleep(Duration::from_millis(300));

    c.bed.crash_node(1).expect("crash node 1");
    // Node 1 is silent and dead from here on (the link cut takes a few commands).
    let crash = Instant::now();
    let after = probe.wait_answer_after(crash, Duration::from_secs(15));
    assert!(
        after.is_some(),
        "the service came back on node 2\n{}",
        c.logs()
    );
    let outage = gap(&probe.take(), crash).map(|g| g.outage());
    c.wait_status("node 2 active", Duration::from_secs(10), |s| {
        holder(s, "active").as_deref() == Some("counter/sg/su-2")
    });
    let names: Vec<String> = c
        .events_once("the fence", |ev| {
            ev.iter().any(|e| e["event"] == "fence-done")
        })
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_string))
        .collect();
    let pos = |n: &str| names.iter().position(|x| x == n);
    let (lost, fence, done) = (pos("node-lost"), pos("fence"), pos("fence-done"));
    assert!(
        lost.is_some() && fence > lost && done > fence,
        "lost, then fenced, then failed over: {names:?}"
    );
    eprintln!("node-kill outage seen by the probe: {outage:?}");

    // The node comes back: a fresh PID namespace, the agent again; it joins clean and its SU
    // becomes the standby.
    c.bed.restart_node(1).expect("restart node 1");
    c.start_agent(1, &key);
    c.wait_status("node 1 rejoined as standby", Duration::from_secs(30), |s| {
        settled(s, "counter/sg/su-2", "counter/sg/su-1")
    });
    let report = probe.stop();
    if std::env::var_os("NINES_TEST_VERBOSE").is_some() {
        for e in c.events() {
            eprintln!("{e}");
        }
        eprintln!("{}", c.logs());
    }
    assert!(report.answered > 0);
    // Every increment was acknowledged only once node 2 had it: the counter went on from
    // where node 1 left it, through the crash and the rejoin.
    assert!(
        report.regressions.is_empty(),
        "the counter went back: {:?}\n{}",
        report.regressions,
        c.logs()
    );
    eprintln!("probe: {report:?}");
}

#[test]
fn an_agent_with_the_wrong_key_is_refused_and_says_so() {
    let Some(mut c) = Cluster::start("key") else {
        return;
    };
    let wrong = c.dir.0.join("wrong.key");
    write_key(&wrong, &[9u8; 32]);
    let p = c.start_agent(1, &wrong);
    let status = p
        .wait_timeout(Duration::from_secs(20))
        .expect("wait")
        .expect("a refused agent exits");
    assert!(!status.success(), "exit status {status}");
    let log = std::fs::read_to_string(c.dir.0.join("agent-1.log")).unwrap_or_default();
    assert!(
        log.contains("refused"),
        "the agent says it was refused: {log}"
    );
    // No node joined, so nothing runs: the director never saw node 1.
    let joined = c.events().iter().any(|e| e["event"] == "node-joined");
    assert!(!joined);
}

/// Which of nodes 1 and 2 accept connections on the counter's port right now (seen from
/// inside each node, so a partition does not hide a node's listener).
fn listeners(bed: &Testbed) -> Vec<usize> {
    (1..3)
        .filter(|&i| {
            bed.node(i)
                .enter(|| {
                    std::net::TcpStream::connect_timeout(
                        &SocketAddr::from(([127, 0, 0, 1], PORT)),
                        Duration::from_millis(20),
                    )
                    .is_ok()
                })
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_partitioned_active_is_fenced_before_its_work_moves_never_two_actives() {
    let Some(mut c) = Cluster::start("part") else {
        return;
    };
    c.start_both();
    let probe = c.probe();
    assert!(probe
        .wait_answer_after(Instant::now(), Duration::from_secs(10))
        .is_some());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (samples, doubles) = std::thread::scope(|s| {
        let observer = s.spawn(|| {
            let (mut samples, mut doubles) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let l = listeners(&c.bed);
                samples += 1;
                if l.len() > 1 {
                    doubles.push(l);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (samples, doubles)
        });
        std::thread::sleep(Duration::from_millis(200));
        // Node 1 (the active's) is cut off but keeps running: it must be fenced before
        // node 2 serves.
        c.bed.partition(&[&[1], &[0, 2]]).expect("partition");
        let cut = Instant::now();
        let back = probe.wait_answer_after(cut, Duration::from_secs(15));
        assert!(back.is_some(), "the service came back\n{}", c.logs());
        c.wait_status("node 2 active", Duration::from_secs(10), |s| {
            holder(s, "active").as_deref() == Some("counter/sg/su-2")
        });
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        observer.join().expect("observer")
    });
    assert!(samples > 20, "the observer sampled ({samples})");
    assert!(
        doubles.is_empty(),
        "two nodes served at once {} times: {doubles:?}",
        doubles.len()
    );
    assert_eq!(
        listeners(&c.bed),
        vec![2],
        "node 2 serves, node 1 was fenced"
    );
    c.bed.heal_partition().expect("heal");
    let report = probe.stop();
    assert!(report.regressions.is_empty(), "{:?}", report.regressions);
}

fn pids(s: &Value) -> Vec<u64> {
    let mut v: Vec<u64> = s["sgs"][0]["sus"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|su| su["components"].as_array().into_iter().flatten())
        .filter_map(|c| c["pid"].as_u64())
        .collect();
    v.sort();
    v
}

#[test]
fn a_killed_leader_director_is_replaced_without_restarting_or_interrupting_anything() {
    let Some(mut c) = Cluster::start_with("ha", false) else {
        return;
    };
    // etcd in node 0's network, where both directors run.
    let etcd = c
        .bed
        .node(0)
        .enter(nines_store::testing::EtcdServer::start)
        .expect("enter node 0")
        .expect("etcd starts");
    let endpoint = etcd.endpoint().to_string();
    let node0 = c.bed.node(0).addr();
    let (a1, a2) = (
        SocketAddr::from((node0, 7400)),
        SocketAddr::from((node0, 7401)),
    );
    let (s1, s2) = (
        c.dir.0.join("d1").display().to_string(),
        c.dir.0.join("d2").display().to_string(),
    );
    let mut d1 = c.spawn_director("d1", a1, &s1, &["--etcd", &endpoint]);
    // d1 leads before d2 starts campaigning.
    let deadline = Instant::now() + Duration::from_secs(20);
    let elected = |state: &str| {
        std::fs::read_to_string(Path::new(state).join("events.jsonl"))
            .unwrap_or_default()
            .contains("\"event\":\"elected\"")
    };
    while !elected(&s1) {
        assert!(Instant::now() < deadline, "d1 never led\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let _d2 = c.spawn_director("d2", a2, &s2, &["--etcd", &endpoint]);
    c.directors = format!("{a1},{a2}");
    let (before, probe) = c.agents_settled_under(&s1);
    std::thread::sleep(Duration::from_millis(300));

    let _ = d1.0.kill();
    let _ = d1.0.wait();
    let killed = Instant::now();
    let after = loop {
        if let Some(s) = c.status_of(&s2) {
            if settled(&s, "counter/sg/su-1", "counter/sg/su-2") && pids(&s).len() == 2 {
                break s;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "d2 did not take over\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = killed.elapsed();
    eprintln!("d2 leads with the cluster settled {took:?} after d1 was killed");
    assert_eq!(pids(&after), pids(&before), "no component was restarted");
    let events: Vec<Value> = std::fs::read_to_string(Path::new(&s2).join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(events.iter().any(|e| e["event"] == "elected"));
    let restarted = events
        .iter()
        .filter(|e| e["event"] == "presence" && e["presence"] == "instantiating")
        .count();
    assert_eq!(restarted, 0, "the new leader instantiated nothing");
    // The service never stopped: the active kept serving while no director was up.
    let samples = probe.take();
    let g = gap(&samples, killed).expect("answers on both sides of the kill");
    eprintln!("service gap around the director kill: {:?}", g.outage());
    assert!(
        g.outage() < Duration::from_millis(100),
        "the service paused {:?} while the director changed",
        g.outage()
    );
    let report = probe.stop();
    assert!(report.regressions.is_empty(), "{:?}", report.regressions);
    drop(etcd);
}

#[test]
fn an_etcd_member_lost_restarts_nothing_and_the_service_goes_on() {
    let Some(mut c) = Cluster::start_with("etcd3", false) else {
        return;
    };
    let mut etcd = c
        .bed
        .node(0)
        .enter(|| nines_store::testing::EtcdCluster::start(3))
        .expect("enter node 0")
        .expect("a 3-member etcd starts");
    let endpoints = etcd.endpoints().join(",");
    let s1 = c.dir.0.join("d1").display().to_string();
    let _d1 = c.spawn_director("d1", c.director_addr, &s1, &["--etcd", &endpoints]);
    let (before, probe) = c.agents_settled_under(&s1);
    std::thread::sleep(Duration::from_millis(200));
    let killed = Instant::now();
    etcd.kill(0);
    // Longer than the director's lease (1 s) and than an etcd leader election. If the lost
    // member was etcd's raft leader, the election can outlast the lease: the director then
    // steps down and, being the only one, is elected again and resumes from the nodes.
    std::thread::sleep(Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        if let Some(s) = c.status_of(&s1) {
            if settled(&s, "counter/sg/su-1", "counter/sg/su-2") && pids(&s).len() == 2 {
                break s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no settled cluster after the etcd member's loss\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(pids(&after), pids(&before), "nothing restarted");
    let events = std::fs::read_to_string(Path::new(&s1).join("events.jsonl")).unwrap_or_default();
    eprintln!(
        "etcd member lost: the director {}",
        if events.contains("\"event\":\"leadership-lost\"") {
            "stepped down and was elected again"
        } else {
            "kept its leadership"
        }
    );
    let g = gap(&probe.take(), killed).expect("answers on both sides");
    assert!(
        g.outage() < Duration::from_millis(100),
        "gap {:?}",
        g.outage()
    );
    let report = probe.stop();
    assert!(report.regressions.is_empty(), "{:?}", report.regressions);
}

#[test]
fn a_slow_link_is_not_a_lost_node() {
    let Some(mut c) = Cluster::start("slow") else {
        return;
    };
    c.start_both();
    // 40 ms each way on node 1's link: every heartbeat arrives late, but never 200 ms after
    // the one before. (Loss is another matter: TCP's 200 ms minimum retransmission timeout
    // holds every later frame behind a lost segment, so 50 ms x 4 cannot ride out loss.)
    c.bed
        .set_link(1, Duration::from_millis(40), 0.0)
        .expect("impair node 1's link");
    std::thread::sleep(Duration::from_secs(2));
    c.bed
        .set_link(1, Duration::ZERO, 0.0)
        .expect("restore node 1's link");
    let names: Vec<String> = c
        .events()
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_string))
        .collect();
    assert!(
        !names.iter().any(|n| n == "node-lost"),
        "a slow link is not a lost node: {names:?}\n{}",
        c.logs()
    );
    let s = c.status().expect("status");
    assert!(settled(&s, "counter/sg/su-1", "counter/sg/su-2"));
}
