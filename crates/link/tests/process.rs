//! A peer that is a whole other process (`nines-link-peer`), frozen with SIGSTOP as a hung
//! host, or killed as a crashed one.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nines_link::{ClusterKey, LinkConfig, Listener, LostReason};

const KEY: &str = "process test cluster key";

/// The peer process; killed and reaped on drop, also when a test fails.
struct Peer(Child);

impl Peer {
    fn spawn(listener: &Listener<u64, u64>, name: &str) -> Peer {
        let child = Command::new(env!("CARGO_BIN_EXE_nines-link-peer"))
            .args([&listener.local_addr().to_string(), name])
            .env("NINES_LINK_KEY", KEY)
            .spawn()
            .expect("spawn nines-link-peer");
        Peer(child)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.0.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Its exit status within `limit`.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "peer process still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn listener() -> Listener<u64, u64> {
    let key = ClusterKey::from_bytes(KEY.as_bytes().to_vec()).expect("key");
    Listener::bind(
        "127.0.0.1:0".parse().expect("addr"),
        key,
        "director-1",
        LinkConfig::default(),
    )
    .await
    .expect("bind")
}

async fn within<F: std::future::Future>(limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("not done within {limit:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_peer_process_is_lost_within_the_bound() {
    let mut listener = listener().await;
    let mut peer = Peer::spawn(&listener, "node-p");
    let mut link = within(Duration::from_secs(10), listener.accept()).await;
    assert_eq!(link.peer_name(), "node-p");
    link.send(&41).await.expect("send");
    assert_eq!(within(Duration::from_secs(5), link.recv()).await, Some(41));
    tokio::time::sleep(Duration::from_millis(120)).await;

    let cfg = LinkConfig::default();
    let stopped = Instant::now();
    peer.signal("-STOP");
    let lost = within(Duration::from_secs(5), link.lost_signal().wait()).await;
    let detected = lost.at.duration_since(stopped);
    let lower = cfg.heartbeat_interval * (cfg.miss_count - 1);
    let upper = cfg.silence_limit() * 5;
    assert!(
        detected >= lower && detected <= upper,
        "detected after {detected:?}, expected within [{lower:?}, {upper:?}]"
    );
    assert!(
        matches!(lost.reason, LostReason::HeartbeatTimeout { .. }),
        "{lost:?}"
    );
    // Thawed, the peer finds its link closed and exits cleanly.
    peer.signal("-CONT");
    assert!(peer.wait(Duration::from_secs(5)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_peer_process_is_lost_at_once() {
    let mut listener = listener().await;
    let mut peer = Peer::spawn(&listener, "node-k");
    let link = within(Duration::from_secs(10), listener.accept()).await;
    let killed = Instant::now();
    peer.signal("-KILL");
    let lost = within(Duration::from_secs(2), link.lost_signal().wait()).await;
    assert!(
        matches!(lost.reason, LostReason::Closed | LostReason::Io(_)),
        "{lost:?}"
    );
    let took = lost.at.duration_since(killed);
    assert!(took < Duration::from_millis(100), "{took:?}");
    peer.wait(Duration::from_secs(5));
}
