//! Floating IPs on a real testbed: addresses added and removed in node namespaces, the
//! gratuitous ARPs seen by other nodes, and a TCP client following a move. Root only.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{
    acquire, addrs, arp_frames, bed, capture, connect_until, eventually, held, ip, mac, neigh, on,
    release, Arp, Server,
};
use nines_vip::{Error, Vip};

#[test]
fn acquire_adds_the_address_and_a_second_acquire_changes_nothing() {
    let Some((bed, vip)) = bed(1) else { return };
    let a = bed.node(0);
    let cidr = format!("{}/24", vip.addr());
    assert!(!held(a, &vip));

    let (started, added, announced, already) = acquire(a, &vip);
    assert!(started <= added && added <= announced);
    assert!(!already, "the address was not there before");
    assert_eq!(addrs(a), vec![format!("{}/24", a.addr()), cidr.clone()]);
    assert!(held(a, &vip));

    let (.., already) = acquire(a, &vip);
    assert!(already, "the second acquire found the address");
    assert_eq!(addrs(a).iter().filter(|x| **x == cidr).count(), 1);
    assert!(held(a, &vip));
}

#[test]
fn release_removes_the_address_and_releasing_an_absent_one_is_fine() {
    let Some((bed, vip)) = bed(1) else { return };
    let a = bed.node(0);
    release(a, &vip); // never acquired
    acquire(a, &vip);
    release(a, &vip);
    assert_eq!(addrs(a), vec![format!("{}/24", a.addr())]);
    assert!(!held(a, &vip));
    release(a, &vip);
    assert!(!held(a, &vip));
}

#[test]
fn the_address_configured_otherwise_is_a_conflict_and_release_still_removes_it() {
    let Some((bed, vip)) = bed(1) else { return };
    let a = bed.node(0);
    ip(
        a,
        &["addr", "add", &format!("{}/32", vip.addr()), "dev", "eth0"],
    );
    assert!(held(a, &vip), "held with any prefix length");
    let err = on(a, || nines_vip::acquire(&vip)).expect_err("conflict");
    let msg = err.to_string();
    assert!(matches!(err, Error::Conflict { prefix: 32, .. }), "{msg}");
    assert!(
        msg.contains(&vip.to_string()) && msg.contains("on eth0 as /32"),
        "{msg}"
    );
    // Never left on after a release, whatever prefix length it has.
    release(a, &vip);
    assert_eq!(addrs(a), vec![format!("{}/24", a.addr())]);
}

#[test]
fn without_an_interface_the_subnets_interface_is_picked() {
    let Some((bed, vip)) = bed(1) else { return };
    let a = bed.node(0);
    let text = format!("{}/24", vip.addr());
    let parsed = on(a, || Vip::parse(&text)).expect("parse");
    assert_eq!(parsed, vip);
    // The prefix given is the one added; the interface comes from the node's own /24.
    let host = format!("{}/32", vip.addr());
    let parsed = on(a, || Vip::parse(&host)).expect("parse");
    assert_eq!((parsed.iface(), parsed.prefix()), ("eth0", 32));

    let err = on(a, || Vip::parse("192.0.2.10/24")).expect_err("no subnet");
    assert!(matches!(err, Error::NoInterface { .. }), "{err}");
    assert!(err.to_string().contains("192.0.2.10"), "{err}");

    let err = on(a, || Vip::parse("10.77.1.100/33")).expect_err("bad prefix");
    assert!(err.to_string().contains("prefix length `33`"), "{err}");
}

#[test]
fn a_missing_or_non_ethernet_interface_is_refused_by_name() {
    let Some((bed, vip)) = bed(1) else { return };
    let a = bed.node(0);
    let nosuch = Vip::new(vip.addr(), 24, "nosuch0").expect("vip");
    let err = on(a, || nines_vip::acquire(&nosuch)).expect_err("no interface");
    assert!(matches!(err, Error::NoSuchInterface { .. }), "{err}");
    assert!(err.to_string().contains("no interface nosuch0"), "{err}");
    assert!(err.to_string().contains(&vip.addr().to_string()), "{err}");
    // Nothing to hold on an interface that does not exist, nothing to release.
    assert!(!held(a, &nosuch));
    release(a, &nosuch);

    let lo = Vip::new(Ipv4Addr::new(10, 255, 0, 1), 32, "lo").expect("vip");
    let err = on(a, || nines_vip::acquire(&lo)).expect_err("not Ethernet");
    assert!(matches!(err, Error::NotEthernet { .. }), "{err}");
    assert!(!held(a, &lo), "a refused acquire adds nothing");
}

/// The announcements of one acquire: `ANNOUNCEMENTS` requests and as many replies, each a
/// broadcast with the holder's MAC, in the forms Linux takes as gratuitous.
fn check_announcements(frames: &[Arp], vip: &Vip, holder: [u8; 6]) {
    let count = |op| frames.iter().filter(|f| f.op == op).count();
    let n = nines_vip::ANNOUNCEMENTS as usize;
    assert_eq!((count(1), count(2)), (n, n), "{frames:#?}");
    for f in frames {
        assert_eq!(f.eth_dst, [0xff; 6], "{f:?}");
        assert_eq!((f.eth_src, f.sender_mac), (holder, holder), "{f:?}");
        assert_eq!(
            (f.sender_ip, f.target_ip),
            (vip.addr(), vip.addr()),
            "{f:?}"
        );
        let target = if f.op == 1 { [0; 6] } else { holder };
        assert_eq!(f.target_mac, target, "{f:?}");
    }
}

#[test]
fn another_node_receives_the_gratuitous_arps() {
    let Some((bed, vip)) = bed(2) else { return };
    let (a, b) = (bed.node(0), bed.node(1));
    let cap = capture(b);
    acquire(a, &vip);
    let n = 2 * nines_vip::ANNOUNCEMENTS as usize;
    let frames = arp_frames(&cap, vip.addr(), Duration::from_secs(5), |f| f.len() >= n);
    check_announcements(&frames, &vip, mac(a));
    // And no more than those.
    let more = arp_frames(&cap, vip.addr(), Duration::from_millis(100), |_| false);
    assert!(more.is_empty(), "{more:#?}");
}

#[test]
fn a_peers_stale_entry_follows_the_announcement() {
    let Some((bed, vip)) = bed(2) else { return };
    let (a, b) = (bed.node(0), bed.node(1));
    let addr = vip.addr().to_string();
    let old = "02:00:00:00:00:01";
    ip(
        b,
        &[
            "neigh", "replace", &addr, "lladdr", old, "dev", "eth0", "nud", "stale",
        ],
    );
    assert!(neigh(b, vip.addr()).contains(old));
    acquire(a, &vip);
    let a_mac = hex(mac(a));
    assert!(
        eventually(Duration::from_secs(5), || neigh(b, vip.addr())
            .contains(&a_mac)),
        "B's entry for {addr}: {} (A is {a_mac})",
        neigh(b, vip.addr())
    );
}

#[test]
fn release_stops_the_announcements_of_an_acquire() {
    let Some((bed, vip)) = bed(2) else { return };
    let (a, b) = (bed.node(0), bed.node(1));
    let cap = capture(b);
    on(a, || async {
        let acquired = nines_vip::acquire(&vip).await.expect("acquire");
        nines_vip::release(&vip).await.expect("release");
        // The announcer task is still alive, and has slept past its next turns by now.
        tokio::time::sleep(4 * nines_vip::ANNOUNCE_INTERVAL).await;
        acquired.announcements_done().await;
    });
    let frames = arp_frames(&cap, vip.addr(), Duration::from_millis(200), |_| false);
    let ops: Vec<u16> = frames.iter().map(|f| f.op).collect();
    assert_eq!(ops, vec![1, 2], "only the first announcement: {frames:#?}");
    assert!(!held(a, &vip));
}

#[test]
fn after_a_move_a_client_reaches_the_new_holder() {
    let Some((bed, vip)) = bed(3) else { return };
    let (a, b, c) = (bed.node(0), bed.node(1), bed.node(2));
    let port = 7100;
    let (_sa, _sb) = (Server::start(a, "A", port), Server::start(b, "B", port));
    let to = SocketAddr::from((vip.addr(), port));
    let client = |want: &'static str| {
        c.enter(|| connect_until(to, want, Duration::from_millis(5), Duration::from_secs(5)))
            .expect("enter")
    };

    acquire(a, &vip);
    client("A").expect("the client reaches A");
    assert!(
        neigh(c, vip.addr()).contains(&hex(mac(a))),
        "C learnt A's MAC"
    );

    release(a, &vip);
    acquire(b, &vip);
    assert!(!held(a, &vip) && held(b, &vip));
    // Without the announcement C would keep sending to A's MAC until its entry expired.
    let b_mac = hex(mac(b));
    assert!(
        eventually(Duration::from_secs(1), || neigh(c, vip.addr())
            .contains(&b_mac)),
        "C's entry: {} (B is {b_mac})",
        neigh(c, vip.addr())
    );
    client("B").expect("the client reaches B");
}

fn hex(mac: [u8; 6]) -> String {
    mac.map(|x| format!("{x:02x}")).join(":")
}
