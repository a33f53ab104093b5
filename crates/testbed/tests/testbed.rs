//! The testbed on real namespaces (no mocks). Every test needs root; without it each test says
//! so and returns. With root, nothing is skipped.
//!
//! No test sends a packet towards an address outside a testbed: "the root namespace cannot
//! reach the nodes" is checked on the configuration (no address, no interface, no route into a
//! testbed), because a probe from the root namespace would leave the machine by its default
//! route.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nines_testbed::{Error, Node, Process, Testbed};

const PROBE: &str = env!("CARGO_BIN_EXE_nines-testbed-probe");
const PORT: u16 = 7000;

fn bed(nodes: usize) -> Option<Testbed> {
    if !nines_testbed::is_root() {
        eprintln!("SKIPPED: the testbed needs root (network and PID namespaces)");
        return None;
    }
    Some(Testbed::new(nodes).expect("create the testbed"))
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `program args...` with stdout piped or not.
fn command(program: &str, args: &[&str], piped: bool) -> Command {
    let mut c = Command::new(program);
    c.args(args)
        .stdout(if piped { Stdio::piped() } else { Stdio::null() });
    c
}

/// Spawn a probe and return it with the first line it printed.
fn probe(node: &Node, args: &[&str]) -> (Process, String) {
    let mut p = node
        .spawn(command(PROBE, args, true))
        .expect("spawn the probe");
    let mut line = String::new();
    BufReader::new(p.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the probe");
    (p, line)
}

/// A listener owned by the test process but living in `node`'s network.
fn listen_in(node: &Node) -> TcpListener {
    node.enter(|| TcpListener::bind((node.addr(), PORT)))
        .expect("enter")
        .expect("bind")
}

/// Whether a TCP handshake from `from` to `to` completes within `timeout`.
fn connects(from: &Node, to: &Node, timeout: Duration) -> bool {
    let to = SocketAddr::from((to.addr(), PORT));
    from.enter(|| TcpStream::connect_timeout(&to, timeout))
        .expect("enter")
        .is_ok()
}

fn eventually(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn netns_list() -> String {
    sh("ip netns list")
}

#[test]
fn nodes_reach_each_other_over_tcp() {
    let Some(bed) = bed(3) else { return };
    let a = bed.node(0);
    let at = format!("{}:{PORT}", a.addr());
    let (listener, line) = probe(a, &["listen", &at]);
    assert_eq!(line.trim(), "listening");
    // A process on node 1 connects...
    let (client, answer) = probe(bed.node(1), &["connect", &at]);
    assert_eq!(answer.trim(), format!("hello from {at}"));
    let status = client
        .wait_timeout(Duration::from_secs(5))
        .expect("wait")
        .expect("exited");
    assert!(status.success(), "{status}");
    // ...and so does test code entered into node 2's network.
    let mut line = String::new();
    let conn = bed
        .node(2)
        .enter(|| TcpStream::connect(&at))
        .expect("enter")
        .expect("connect");
    BufReader::new(conn).read_line(&mut line).expect("read");
    assert_eq!(line.trim(), format!("hello from {at}"));
    assert!(
        listener.try_wait().expect("try_wait").is_none(),
        "the listener keeps running"
    );
}

#[test]
fn the_root_namespace_has_no_way_into_a_testbed() {
    let Some(bed) = bed(2) else { return };
    let [a, b, c, _] = bed.node(0).addr().octets();
    let prefix = format!("{a}.{b}.{c}.");
    let addrs = sh("ip -4 -o addr show");
    assert!(
        !addrs.contains(&prefix),
        "root has an address in {prefix}0/24:\n{addrs}"
    );
    let links = sh("ip -o link show");
    assert!(
        !links.contains(bed.name()),
        "a root interface is linked into the testbed:\n{links}"
    );
    let routes = sh("ip -4 route show table all");
    assert!(
        !routes.contains(&prefix),
        "root routes into {prefix}0/24:\n{routes}"
    );
    // The nodes have no default route either: nothing they send can leave the testbed.
    for node in bed.nodes() {
        let routes = sh(&format!("ip -n {} -4 route show table all", node.netns()));
        assert!(!routes.contains("default"), "{}: {routes}", node.netns());
    }
    // And what is reachable in a node is the node's own: its loopback works.
    let lo: SocketAddr = ([127, 0, 0, 1], PORT).into();
    let b = bed.node(1);
    let l = b
        .enter(|| TcpListener::bind(lo))
        .expect("enter")
        .expect("bind lo");
    assert!(b.enter(|| TcpStream::connect(lo)).expect("enter").is_ok());
    drop(l);
}

#[test]
fn kill_node_kills_and_reaps_every_process_of_the_node() {
    let Some(bed) = bed(2) else { return };
    let (n0, n1) = (bed.node(0), bed.node(1));
    let (tree, line) = probe(n0, &["tree"]);
    assert_eq!(line.trim(), "ready");
    let _sleeper = n0.spawn(command(PROBE, &["sleep"], false)).expect("spawn");
    let other = n1.spawn(command(PROBE, &["sleep"], false)).expect("spawn");
    // init, tree, tree's child (a grandchild of this process), the sleeper.
    eventually("4 processes on node 0", Duration::from_secs(5), || {
        n0.pids().len() >= 4
    });
    let pids = n0.pids();
    let init = n0.init_pid().expect("up");
    assert!(
        pids.contains(&init) && pids.contains(&tree.id()),
        "{pids:?}"
    );

    bed.kill_node(0).expect("kill node 0");
    for pid in &pids {
        // Not even a zombie: /proc/PID exists for those.
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} survived kill_node"
        );
    }
    assert!(!n0.is_up());
    assert!(n0.pids().is_empty());
    assert!(tree.try_wait().expect("try_wait").is_some());
    assert!(
        other.try_wait().expect("try_wait").is_none(),
        "node 1 is untouched"
    );
    let r = n0.spawn(Command::new(PROBE));
    assert!(matches!(r, Err(Error::NodeDown(0))), "{r:?}");
    bed.kill_node(0).expect("killing a dead node is a no-op");

    bed.restart_node(0).expect("restart node 0");
    let new_init = n0.init_pid().expect("up again");
    assert!(!pids.contains(&new_init));
    // A fresh PID namespace, and the node's /proc shows only its own processes.
    let inside = command("sh", &["-c", "echo $$; ls -d /proc/[0-9]*"], true);
    let mut ls = n0.spawn(inside).expect("spawn on the restarted node");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut ls.stdout.take().expect("stdout"), &mut out).expect("read");
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("2"),
        "the first process after the init is pid 2: {out}"
    );
    let inside: Vec<&str> = lines.collect();
    assert!(
        inside.contains(&"/proc/1") && inside.len() <= 3,
        "{inside:?}"
    );
}

#[test]
fn orphans_are_reaped_by_the_node_init() {
    let Some(bed) = bed(1) else { return };
    let node = bed.node(0);
    let init = node.init_pid().expect("up");
    // sh exits at once; its child sleep is orphaned to the node's init.
    let parent = node
        .spawn(command("sh", &["-c", "sleep 1 & exit 0"], false))
        .expect("spawn");
    parent
        .wait_timeout(Duration::from_secs(5))
        .expect("wait")
        .expect("sh exited");
    let orphans: Vec<u32> = node.pids().into_iter().filter(|&p| p != init).collect();
    assert_eq!(orphans.len(), 1, "the orphaned sleep: {orphans:?}");
    let orphan = format!("/proc/{}", orphans[0]);
    let status = std::fs::read_to_string(format!("{orphan}/status")).expect("status");
    assert!(
        status.contains(&format!("PPid:\t{init}")),
        "reparented to the node init:\n{status}"
    );
    eventually("the orphan is reaped", Duration::from_secs(5), || {
        !Path::new(&orphan).exists()
    });
}

#[test]
fn cut_link_stops_traffic_and_heal_link_restores_it() {
    let Some(bed) = bed(2) else { return };
    let (a, b) = (bed.node(0), bed.node(1));
    let _l = listen_in(a);
    let short = Duration::from_millis(300);
    assert!(connects(b, a, Duration::from_secs(2)));
    bed.cut_link(1).expect("cut");
    assert!(!connects(b, a, short), "traffic crossed a cut link");
    bed.heal_link(1).expect("heal");
    eventually("traffic after heal_link", Duration::from_secs(3), || {
        connects(b, a, short)
    });
}

#[test]
fn partition_splits_groups_and_heal_joins_them() {
    let Some(bed) = bed(3) else { return };
    let _l: Vec<TcpListener> = bed.nodes().map(listen_in).collect();
    let short = Duration::from_millis(300);
    let n = |i| bed.node(i);
    bed.partition(&[&[0, 1], &[2]]).expect("partition");
    assert!(
        connects(n(0), n(1), Duration::from_secs(2)),
        "within a group"
    );
    assert!(!connects(n(0), n(2), short), "across groups");
    assert!(!connects(n(2), n(1), short), "across groups");
    // A cut link stays cut through partition changes.
    bed.cut_link(1).expect("cut");
    bed.heal_partition().expect("heal partition");
    eventually("0 and 2 together again", Duration::from_secs(3), || {
        connects(n(0), n(2), short)
    });
    assert!(!connects(n(0), n(1), short), "node 1's link is still cut");
    bed.heal_link(1).expect("heal link");
    eventually("all together", Duration::from_secs(3), || {
        connects(n(2), n(1), short)
    });

    let r = bed.partition(&[&[0], &[0, 1]]);
    assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    let r = bed.partition(&[&[7]]);
    assert!(
        matches!(r, Err(Error::NoSuchNode { index: 7, nodes: 3 })),
        "{r:?}"
    );
}

/// How long a TCP handshake from `from` to `to` takes.
fn handshake(from: &Node, to: &Node) -> Duration {
    let to = SocketAddr::from((to.addr(), PORT));
    from.enter(|| {
        let t = Instant::now();
        TcpStream::connect_timeout(&to, Duration::from_secs(5)).map(|_| t.elapsed())
    })
    .expect("enter")
    .expect("connect")
}

/// Delay and loss on node 1's link, seen from node 0; the impairment composes with cuts.
fn check_set_link(bed: &Testbed) {
    let (a, b) = (bed.node(0), bed.node(1));
    let _l: Vec<TcpListener> = bed.nodes().map(listen_in).collect();
    assert!(matches!(
        bed.set_link(1, Duration::ZERO, 101.0),
        Err(Error::Invalid(_))
    ));
    bed.set_link(1, Duration::from_millis(50), 0.0)
        .expect("set_link");
    // 50 ms each way: a handshake takes at least 100 ms; only a lower bound is checked.
    let rtt = handshake(b, a);
    assert!(rtt >= Duration::from_millis(40), "rtt {rtt:?}");
    let rtt = handshake(a, b);
    assert!(rtt >= Duration::from_millis(40), "rtt {rtt:?}");
    // A cut link stays cut under an impairment, and heals back to the impairment.
    bed.cut_link(1).expect("cut");
    assert!(!connects(b, a, Duration::from_millis(400)));
    bed.heal_link(1).expect("heal");
    eventually("traffic after heal", Duration::from_secs(3), || {
        connects(b, a, Duration::from_millis(400))
    });
    // Total loss stops everything; changing the impairment takes effect at once.
    bed.set_link(1, Duration::ZERO, 100.0).expect("total loss");
    assert!(!connects(b, a, Duration::from_millis(300)));
    bed.set_link(1, Duration::ZERO, 0.0).expect("clear");
    eventually("traffic after clearing", Duration::from_secs(3), || {
        connects(b, a, Duration::from_millis(300))
    });
    bed.set_link(1, Duration::ZERO, 0.0)
        .expect("clearing twice is fine");
}

#[test]
fn set_link_delays_and_drops_traffic() {
    let Some(bed) = bed(2) else { return };
    check_set_link(&bed);
}

#[test]
fn set_link_in_user_space_delays_and_drops_traffic() {
    if !nines_testbed::is_root() {
        eprintln!("SKIPPED: the testbed needs root");
        return;
    }
    let bed = Testbed::builder()
        .nodes(3)
        .user_space_impairment(true)
        .build()
        .expect("testbed");
    check_set_link(&bed);
    // A relayed link moves with a partition like any other.
    let _l: Vec<TcpListener> = bed.nodes().map(listen_in).collect();
    bed.set_link(1, Duration::from_millis(1), 0.0)
        .expect("relay");
    bed.partition(&[&[0], &[1, 2]]).expect("partition");
    let short = Duration::from_millis(300);
    assert!(!connects(bed.node(1), bed.node(0), short), "across groups");
    eventually("within a group", Duration::from_secs(3), || {
        connects(bed.node(1), bed.node(2), short)
    });
    bed.heal_partition().expect("heal");
    eventually("together again", Duration::from_secs(3), || {
        connects(bed.node(1), bed.node(0), short)
    });
    // Bulk data crosses intact both ways (large, offloaded frames keep their metadata).
    let (a, b) = (bed.node(0), bed.node(1));
    let bulk = a
        .enter(|| TcpListener::bind((a.addr(), PORT + 1)))
        .expect("enter")
        .expect("bind");
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let to = SocketAddr::from((a.addr(), PORT + 1));
    let mut out = b
        .enter(|| TcpStream::connect(to))
        .expect("enter")
        .expect("connect");
    let (mut served, _) = bulk.accept().expect("accept");
    served
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        std::io::Write::write_all(&mut out, &sent).expect("write");
        out.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut back).expect("read back");
        back
    });
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut served, &mut got).expect("read");
    assert!(
        got == data,
        "{} of {} bytes, or corrupted",
        got.len(),
        data.len()
    );
    std::io::Write::write_all(&mut served, &got).expect("write back");
    drop(served);
    let back = writer.join().expect("writer");
    assert!(
        back == data,
        "{} of {} bytes back, or corrupted",
        back.len(),
        data.len()
    );
}

#[test]
fn drop_kills_everything_and_deletes_every_namespace() {
    let Some(bed) = bed(2) else { return };
    let other = Testbed::new(1).expect("a second testbed at the same time");
    assert_ne!(bed.name(), other.name());
    let names = bed.netns_names();
    assert_eq!(names.len(), 3);
    let listed = netns_list();
    assert!(
        names.iter().all(|n| listed.contains(n.as_str())),
        "{listed}"
    );
    let p = bed
        .node(1)
        .spawn(command(PROBE, &["tree"], false))
        .expect("spawn");
    let inits: Vec<u32> = bed.nodes().filter_map(Node::init_pid).collect();
    let pid = p.id();
    drop(p); // the handle is gone; the testbed still reaps the process
    drop(bed);
    let listed = netns_list();
    for n in &names {
        assert!(
            !listed.contains(n.as_str()),
            "{n} survived the drop:\n{listed}"
        );
    }
    for p in inits.iter().chain([&pid]) {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "pid {p} survived the drop"
        );
    }
    assert!(other.node(0).is_up(), "the other testbed is untouched");
}

#[test]
fn drop_cleans_up_when_a_test_panics() {
    if !nines_testbed::is_root() {
        eprintln!("SKIPPED: the testbed needs root");
        return;
    }
    let seen = std::sync::Mutex::new((Vec::new(), 0u32));
    let r = std::panic::catch_unwind(|| {
        let bed = Testbed::new(2).expect("testbed");
        let p = bed
            .node(0)
            .spawn(command(PROBE, &["sleep"], false))
            .expect("spawn");
        *seen.lock().expect("lock") = (bed.netns_names(), p.id());
        panic!("a deliberate test failure");
    });
    assert!(r.is_err());
    let (names, pid) = seen.into_inner().expect("lock");
    assert_eq!(names.len(), 3);
    let listed = netns_list();
    for n in &names {
        assert!(
            !listed.contains(n.as_str()),
            "{n} survived the panic:\n{listed}"
        );
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} survived the panic"
    );
}

#[test]
fn sweep_stale_removes_what_a_dead_process_left() {
    if !nines_testbed::is_root() {
        eprintln!("SKIPPED: the testbed needs root");
        return;
    }
    // A pid that just died stands for a test process killed before its Drop ran.
    let mut dead = Command::new("true").spawn().expect("spawn true");
    dead.wait().expect("wait");
    let stale = format!("ntb{}x0-n0", dead.id());
    // Something still running in it, as a node's process would be: a process in a network
    // namespace of its own, which then gets the stale name. (Naming first and entering after
    // would race with the sweep of a concurrent test's `Testbed::new`.)
    let mut inside = Command::new("unshare")
        .args(["--net", PROBE, "sleep"])
        .spawn()
        .expect("spawn in a new network namespace");
    let net = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    let pid = inside.id().to_string();
    eventually(
        "the probe is in its namespace",
        Duration::from_secs(5),
        || net(&pid) != net("self"),
    );
    sh(&format!("ip netns attach {stale} {pid}"));
    let mine = Testbed::new(1).expect("a live testbed");
    nines_testbed::sweep_stale().expect("sweep");
    let listed = netns_list();
    assert!(
        !listed.contains(&stale),
        "{stale} survived the sweep:\n{listed}"
    );
    assert!(
        listed.contains(mine.switch_netns()),
        "a live testbed was swept:\n{listed}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = inside.try_wait().expect("try_wait") {
            assert!(!status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stale namespace's process survived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The helper role of `a_killed_test_process_takes_its_nodes_with_it`: this same test binary,
/// run again with this variable set, builds a testbed, reports it and waits to be killed.
const CHILD_ROLE: &str = "NINES_TESTBED_TEST_CHILD";

#[test]
fn a_killed_test_process_takes_its_nodes_with_it() {
    if std::env::var_os(CHILD_ROLE).is_some() {
        let bed = Testbed::builder()
            .nodes(2)
            .sweep_stale(false)
            .build()
            .expect("testbed");
        let p = bed
            .node(1)
            .spawn(command(PROBE, &["tree"], false))
            .expect("spawn");
        let init = bed.node(1).init_pid().expect("up");
        println!("CHILD {} {} {}", bed.name(), init, p.id());
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    if !nines_testbed::is_root() {
        eprintln!("SKIPPED: the testbed needs root");
        return;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let args = [
        "--exact",
        "a_killed_test_process_takes_its_nodes_with_it",
        "--nocapture",
    ];
    let mut child = Command::new(exe)
        .args(args)
        .env(CHILD_ROLE, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the helper role");
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    while !line.starts_with("CHILD ") {
        line.clear();
        assert!(
            out.read_line(&mut line).expect("read") > 0,
            "the helper ended early"
        );
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let (name, init, grandchild) = (words[1].to_string(), words[2], words[3]);
    child.kill().expect("SIGKILL the helper: no Drop runs");
    child.wait().expect("reap the helper");
    // Its inits see their lifeline close and exit; the kernel kills their nodes. The inits
    // themselves are reaped by whoever adopted them (PID 1, slowly), so allow zombies there.
    let gone = |pid: &str| !Path::new(&format!("/proc/{pid}")).exists();
    let dead = |pid: &str| {
        gone(pid)
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
    };
    eventually("the node's processes die", Duration::from_secs(5), || {
        gone(grandchild)
    });
    eventually("the node's init exits", Duration::from_secs(5), || {
        dead(init)
    });
    // The namespaces are left behind for the next sweep (maybe a concurrent test's).
    nines_testbed::sweep_stale().expect("sweep");
    let listed = netns_list();
    assert!(
        !listed.contains(&name),
        "{name} survived the sweep:\n{listed}"
    );
}

/// A connection from `from` to the probe listening at `at`, its greeting read.
fn open(from: &Node, at: &str) -> TcpStream {
    let conn = from
        .enter(|| TcpStream::connect(at))
        .expect("enter")
        .expect("connect");
    let mut line = String::new();
    BufReader::new(conn.try_clone().expect("clone"))
        .read_line(&mut line)
        .expect("greeting");
    assert!(line.starts_with("hello"), "{line:?}");
    conn
}

/// What a read on an open connection gives within `timeout`.
fn read_within(mut conn: &TcpStream, timeout: Duration) -> std::io::Result<usize> {
    conn.set_read_timeout(Some(timeout))
        .expect("set_read_timeout");
    std::io::Read::read(&mut conn, &mut [0u8; 16])
}

fn connect_error(from: &Node, at: &str, timeout: Duration) -> std::io::ErrorKind {
    let to: SocketAddr = at.parse().expect("addr");
    match from
        .enter(|| TcpStream::connect_timeout(&to, timeout))
        .expect("enter")
    {
        Ok(_) => panic!("connected to {at}"),
        Err(e) => e.kind(),
    }
}

#[test]
fn crash_node_is_silent_where_kill_node_is_not() {
    use std::io::ErrorKind::{ConnectionRefused, TimedOut, WouldBlock};
    let Some(bed) = bed(2) else { return };
    let (a, b) = (bed.node(0), bed.node(1));
    let at = format!("{}:{PORT}", a.addr());

    // kill_node: the node's kernel lives on and closes the dead processes' connections.
    let _listener = probe(a, &["listen", &at]);
    let conn = open(b, &at);
    bed.kill_node(0).expect("kill");
    match read_within(&conn, Duration::from_secs(3)) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        r => panic!("after kill_node the peer should see the end at once: {r:?}"),
    }
    assert_eq!(
        connect_error(b, &at, Duration::from_secs(2)),
        ConnectionRefused
    );

    // crash_node: nothing at all reaches the peer.
    bed.restart_node(0).expect("restart");
    let _listener = probe(a, &["listen", &at]);
    let conn = open(b, &at);
    bed.crash_node(0).expect("crash");
    assert!(!a.is_up());
    match read_within(&conn, Duration::from_millis(500)) {
        Err(e) if matches!(e.kind(), WouldBlock | TimedOut) => {}
        r => panic!("after crash_node the peer should hear nothing: {r:?}"),
    }
    assert_eq!(connect_error(b, &at, Duration::from_millis(300)), TimedOut);

    // restart_node brings the link back with the node: refused (nothing listens) is an answer.
    bed.restart_node(0).expect("restart");
    eventually("node 0 answers again", Duration::from_secs(3), || {
        connect_error(b, &at, Duration::from_millis(300)) == ConnectionRefused
    });
}
