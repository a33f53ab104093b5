//! Links over real TCP on 127.0.0.1: messages, authentication, timeouts, heartbeat loss,
//! garbage, and connecting to one of several directors.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nines_link::{
    connect, connect_any, ClusterKey, ConnectError, ConnectOptions, Error, Link, LinkConfig,
    Listener, LostReason, Refusal, SendError, MAX_MESSAGE,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Up {
    Hello(String),
    Seq(u64),
    Blob(Vec<u8>),
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Down {
    Ack(u64),
}

type AgentLink = Link<Up, Down>;
type DirectorLink = Link<Down, Up>;

fn key(s: &str) -> ClusterKey {
    ClusterKey::from_bytes(format!("test cluster key: {s}").into_bytes()).expect("long enough")
}

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

fn fast() -> LinkConfig {
    LinkConfig {
        heartbeat_interval: Duration::from_millis(50),
        miss_count: 4,
        handshake_timeout: Duration::from_millis(500),
        ..LinkConfig::default()
    }
}

/// For tests that check a link stays up: the same 50 ms heartbeats, but 10 misses, because on
/// a loaded machine shared with other builds a test thread can lose the CPU for more than the
/// 150 ms that 4 misses tolerate. (Tests of detection use `fast`.)
fn tolerant() -> LinkConfig {
    LinkConfig {
        miss_count: 10,
        ..fast()
    }
}

fn opts(link: LinkConfig) -> ConnectOptions {
    ConnectOptions {
        link,
        connect_timeout: Duration::from_millis(500),
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        give_up_after: Some(Duration::from_secs(5)),
    }
}

async fn director(cfg: LinkConfig) -> Listener<Down, Up> {
    Listener::bind(local(), key("right"), "director-1", cfg)
        .await
        .expect("bind")
}

/// An agent link and the director's end of it.
async fn pair(cfg: LinkConfig) -> (Listener<Down, Up>, AgentLink, DirectorLink) {
    let mut listener = director(cfg.clone()).await;
    let agent = connect::<Up, Down>(listener.local_addr(), &key("right"), "node-1", &opts(cfg))
        .await
        .expect("connect");
    let dir = within(Duration::from_secs(5), listener.accept()).await;
    (listener, agent, dir)
}

/// A TCP server that accepts connections and never says a word (abort the task to stop it).
async fn mute_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let mute = TcpListener::bind(local()).await.expect("bind");
    let addr = mute.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            held.push(s);
        }
    });
    (addr, hold)
}

/// A local address nobody listens on: connecting is refused at once.
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

async fn within<F: std::future::Future>(limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("not done within {limit:?}"))
}

/// Poll `cond` until it holds or `limit` passes.
async fn eventually(limit: Duration, what: &str, cond: impl Fn() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_both_ways_in_order() {
    let (_l, mut agent, mut dir) = pair(tolerant()).await;
    assert_eq!(agent.peer_name(), "director-1");
    assert_eq!(dir.peer_name(), "node-1");
    agent.send(&Up::Hello("hi".into())).await.expect("send");
    for i in 0..2000 {
        agent.send(&Up::Seq(i)).await.expect("send");
    }
    assert_eq!(dir.recv().await, Some(Up::Hello("hi".into())));
    for i in 0..2000 {
        let Some(Up::Seq(got)) = within(Duration::from_secs(5), dir.recv()).await else {
            panic!("expected Seq({i})")
        };
        assert_eq!(got, i);
        dir.send(&Down::Ack(got)).await.expect("send back");
    }
    for i in 0..2000 {
        assert_eq!(
            within(Duration::from_secs(5), agent.recv()).await,
            Some(Down::Ack(i))
        );
    }
    // A big message (just under the limit) makes it too.
    let blob = vec![0xA5; MAX_MESSAGE - 16];
    let sent = Instant::now();
    agent.send(&Up::Blob(blob.clone())).await.expect("big send");
    let got = within(Duration::from_secs(5), dir.recv()).await;
    eprintln!("a {} byte message took {:?}", blob.len(), sent.elapsed());
    // (Not assert_eq: a failure would print a megabyte.)
    assert!(got == Some(Up::Blob(blob)), "big message garbled");
    assert_eq!(
        (agent.lost(), dir.lost()),
        (None, None),
        "no side may be lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_message_is_refused_and_link_stays_up() {
    let (_l, agent, mut dir) = pair(fast()).await;
    let err = agent
        .send(&Up::Blob(vec![0; MAX_MESSAGE + 1]))
        .await
        .expect_err("too large");
    assert!(matches!(err, SendError::Encode(_)), "{err}");
    agent.send(&Up::Seq(1)).await.expect("still up");
    assert_eq!(dir.recv().await, Some(Up::Seq(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_refused_on_both_sides() {
    let mut listener = director(fast()).await;
    let err = connect::<Up, Down>(
        listener.local_addr(),
        &key("wrong"),
        "node-x",
        &opts(fast()),
    )
    .await
    .err()
    .expect("wrong key must be refused");
    assert!(
        matches!(
            err,
            Error::Refused {
                reason: Refusal::WrongKey,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("wrong cluster key"), "{text}");
    assert!(text.contains(&listener.local_addr().to_string()), "{text}");
    assert!(err.is_permanent());
    eventually(Duration::from_secs(2), "server counts the refusal", || {
        listener.refused() == 1
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), listener.accept())
            .await
            .is_err(),
        "a refused peer must never come out of accept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_stalls_the_handshake_is_cut_off() {
    let (addr, hold) = mute_server().await;
    let mut cfg = fast();
    cfg.handshake_timeout = Duration::from_millis(300);
    let start = Instant::now();
    let err = connect::<Up, Down>(addr, &key("right"), "node-1", &opts(cfg))
        .await
        .err()
        .expect("no handshake");
    let took = start.elapsed();
    assert!(matches!(err, Error::HandshakeTimeout { .. }), "{err:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stalls_the_handshake_is_cut_off() {
    let mut cfg = fast();
    cfg.handshake_timeout = Duration::from_millis(300);
    let listener = director(cfg).await;
    let mut raw = TcpStream::connect(listener.local_addr())
        .await
        .expect("connect");
    let start = Instant::now();
    let mut buf = [0u8; 64];
    // Say nothing; the listener sends nothing either and closes after its timeout.
    let n = within(Duration::from_secs(3), raw.read(&mut buf))
        .await
        .unwrap_or(0);
    let took = start.elapsed();
    assert_eq!(n, 0, "the server sends nothing to a silent stranger");
    assert!(took >= Duration::from_millis(290), "{took:?}");
    eventually(Duration::from_secs(1), "refusal counted", || {
        listener.refused() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_refused_and_the_listener_keeps_serving() {
    let mut listener = director(fast()).await;
    let addr = listener.local_addr();
    // An HTTP request, then a few streams of seeded random bytes of random lengths.
    let mut inputs: Vec<Vec<u8>> = vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20 {
        let len = (next() % 3000) as usize + 1;
        inputs.push((0..len).map(|_| next() as u8).collect());
    }
    // A plausible header with a valid small length but a bad body.
    inputs.push(vec![0, 0, 0, 3, nines_proto::PROTOCOL_VERSION, 0xFF, 0xFF]);
    let count = inputs.len() as u64;
    for bytes in inputs {
        let mut raw = TcpStream::connect(addr).await.expect("connect");
        let _ = raw.write_all(&bytes).await;
        let mut sink = Vec::new();
        // The listener closes the connection (perhaps after its handshake timeout, when the
        // random bytes happen to form an incomplete frame).
        let _ = within(Duration::from_secs(3), raw.read_to_end(&mut sink)).await;
    }
    eventually(
        Duration::from_secs(3),
        "every garbage stream refused",
        || listener.refused() == count,
    )
    .await;
    let mut agent = connect::<Up, Down>(addr, &key("right"), "node-2", &opts(fast()))
        .await
        .expect("a good peer still gets in");
    let dir = within(Duration::from_secs(2), listener.accept()).await;
    assert_eq!(dir.peer_name(), "node-2");
    dir.send(&Down::Ack(7)).await.expect("send");
    assert_eq!(agent.recv().await, Some(Down::Ack(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frame_after_the_handshake_closes_only_that_link() {
    // The agent speaks a message type the director cannot decode: authentic frames, bad body.
    let mut listener = director(fast()).await;
    let addr = listener.local_addr();
    let odd = connect::<String, Down>(addr, &key("right"), "node-odd", &opts(fast()))
        .await
        .expect("connect");
    let mut dir_odd = within(Duration::from_secs(2), listener.accept()).await;
    odd.send(&"not an Up".to_string()).await.expect("send");
    let lost = within(Duration::from_secs(2), dir_odd.lost_signal().wait()).await;
    assert!(
        matches!(&lost.reason, LostReason::Protocol(why) if why.contains("malformed")),
        "{lost:?}"
    );
    assert_eq!(dir_odd.recv().await, None);
    // The agent sees its link closed at once, and others are unaffected.
    let lost = within(Duration::from_secs(2), odd.lost_signal().wait()).await;
    assert!(
        matches!(lost.reason, LostReason::Closed | LostReason::Io(_)),
        "{lost:?}"
    );
    let mut agent = connect::<Up, Down>(addr, &key("right"), "node-2", &opts(fast()))
        .await
        .expect("connect");
    let dir = within(Duration::from_secs(2), listener.accept()).await;
    dir.send(&Down::Ack(1)).await.expect("send");
    assert_eq!(agent.recv().await, Some(Down::Ack(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_link_stays_up_on_heartbeats() {
    let (_l, agent, dir) = pair(tolerant()).await;
    // Three times the detection bound, no application traffic at all: only heartbeats (every
    // 50 ms) keep it up.
    tokio::time::sleep(tolerant().silence_limit() * 3).await;
    assert_eq!(agent.lost(), None);
    assert_eq!(dir.lost(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_lost_within_the_bound() {
    let cfg = fast();
    let (_l, agent, dir) = pair(cfg.clone()).await;
    // Let a few heartbeats flow first.
    tokio::time::sleep(Duration::from_millis(120)).await;
    let paused = Instant::now();
    agent.pause_sending(true);
    let lost = within(Duration::from_secs(5), dir.lost_signal().wait()).await;
    let detected = lost.at.duration_since(paused);
    let lower = cfg.heartbeat_interval * (cfg.miss_count - 1);
    let upper = cfg.silence_limit() * 5;
    assert!(
        detected >= lower && detected <= upper,
        "detected after {detected:?}, expected within [{lower:?}, {upper:?}]"
    );
    match lost.reason {
        LostReason::HeartbeatTimeout { silent_for } => {
            assert!(silent_for >= cfg.silence_limit(), "{silent_for:?}")
        }
        other => panic!("expected a heartbeat timeout, got {other:?}"),
    }
    // Nothing was heard after the pause but perhaps a heartbeat already on its way.
    assert!(lost.last_heard <= paused + Duration::from_millis(50));
    // The director's side closed, so the paused agent hears of it at once.
    let lost = within(Duration::from_secs(2), agent.lost_signal().wait()).await;
    assert!(
        matches!(lost.reason, LostReason::Closed | LostReason::Io(_)),
        "{lost:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_peer_is_lost_at_once() {
    let (_l, agent, dir) = pair(fast()).await;
    let closed = Instant::now();
    drop(agent);
    let lost = within(Duration::from_secs(2), dir.lost_signal().wait()).await;
    assert_eq!(lost.reason, LostReason::Closed);
    let took = lost.at.duration_since(closed);
    // Far below the 200 ms heartbeat bound: the end of stream says it all.
    assert!(took < Duration::from_millis(100), "{took:?}");
    assert!(matches!(
        dir.send(&Down::Ack(0)).await,
        Err(SendError::Lost(LostReason::Closed))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_neither_loses_messages_nor_the_peer() {
    let cfg = LinkConfig {
        inbound_capacity: 4,
        outbound_capacity: 4,
        ..tolerant()
    };
    let (_l, agent, mut dir) = pair(cfg).await;
    let sender = tokio::spawn(async move {
        for i in 0..200 {
            agent.send(&Up::Seq(i)).await.expect("send");
        }
        agent
    });
    // The director's application reads nothing for twice the detection bound.
    tokio::time::sleep(tolerant().silence_limit() * 2).await;
    assert_eq!(dir.lost(), None, "a slow reader must not lose its peer");
    for i in 0..200 {
        assert_eq!(
            within(Duration::from_secs(5), dir.recv()).await,
            Some(Up::Seq(i))
        );
    }
    let agent = within(Duration::from_secs(5), sender)
        .await
        .expect("sender task");
    assert_eq!(agent.lost(), None);
    // And the director's heartbeats kept the agent's side up meanwhile.
    assert_eq!(dir.lost(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_any_skips_dead_and_mute_addresses() {
    // A port nobody listens on (connection refused at once).
    let dead = dead_addr();
    let (mute_addr, hold) = mute_server().await;
    let mut listener = director(fast()).await;
    let mut cfg = fast();
    cfg.handshake_timeout = Duration::from_millis(200);
    let start = Instant::now();
    let mut agent = connect_any::<Up, Down>(
        &[dead, mute_addr, listener.local_addr()],
        &key("right"),
        "node-1",
        &opts(cfg),
    )
    .await
    .expect("the third address answers");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(agent.peer_addr(), listener.local_addr());
    let dir = within(Duration::from_secs(2), listener.accept()).await;
    dir.send(&Down::Ack(3)).await.expect("send");
    assert_eq!(agent.recv().await, Some(Down::Ack(3)));
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_any_stops_when_every_director_refuses_the_key() {
    let a = director(fast()).await;
    let b = director(fast()).await;
    let mut o = opts(fast());
    o.give_up_after = None;
    let err = within(
        Duration::from_secs(5),
        connect_any::<Up, Down>(
            &[a.local_addr(), b.local_addr()],
            &key("wrong"),
            "node-1",
            &o,
        ),
    )
    .await
    .err()
    .expect("refused");
    match &err {
        ConnectError::Refused { errors } => assert_eq!(errors.len(), 2),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(err.to_string().contains("wrong cluster key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_any_gives_up_in_time_and_finds_a_late_director() {
    let dead = dead_addr();
    let mut o = opts(fast());
    o.give_up_after = Some(Duration::from_millis(300));
    let start = Instant::now();
    let err = connect_any::<Up, Down>(&[dead], &key("right"), "node-1", &o)
        .await
        .err()
        .expect("nobody there");
    assert!(matches!(err, ConnectError::GaveUp { .. }), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(2));

    // A director that comes up while the agent is retrying is found.
    let addr = dead_addr();
    o.give_up_after = Some(Duration::from_secs(5));
    let agent =
        tokio::spawn(
            async move { connect_any::<Up, Down>(&[addr], &key("right"), "node-1", &o).await },
        );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut listener = Listener::<Down, Up>::bind(addr, key("right"), "director-1", fast())
        .await
        .expect("bind the same port");
    let _dir = within(Duration::from_secs(5), listener.accept()).await;
    let link = within(Duration::from_secs(5), agent)
        .await
        .expect("task")
        .expect("found the late director");
    assert_eq!(link.peer_name(), "director-1");
}
