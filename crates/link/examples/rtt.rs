//! Round-trip time and heartbeat-loss detection time of links over loopback.
//!
//! ```text
//! cargo run -p nines-link --release --example rtt [-- --pings 20000 --runs 30]
//! ```
//!
//! Round trip: one agent link sends a ping, the director's end echoes it, the agent waits for
//! the echo before the next (so this is latency, not throughput); frames are sealed and checked
//! both ways, as in production. Loss detection: a fresh link per run, the agent falls silent
//! (`pause_sending`, as a hung host), and the time from then to the director's lost signal is
//! measured, with the default 50 ms × 4 heartbeats. The expected value is between 150 ms
//! (the last heartbeat went out just before the pause) and 200 ms, plus scheduling.

use std::time::{Duration, Instant};

use nines_link::{connect, ClusterKey, ConnectOptions, LinkConfig, Listener};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
enum Up {
    Ping(u64),
}

#[derive(Serialize, Deserialize)]
enum Down {
    Pong(u64),
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pings = arg("--pings", 20_000);
    let runs = arg("--runs", 30);
    let key = ClusterKey::from_bytes(b"rtt example cluster key, not secret".to_vec())?;
    let cfg = LinkConfig::default();
    let opts = ConnectOptions {
        link: cfg.clone(),
        ..ConnectOptions::default()
    };
    let mut listener =
        Listener::<Down, Up>::bind("127.0.0.1:0".parse()?, key.clone(), "director", cfg.clone())
            .await?;
    let addr = listener.local_addr();
    let (lost_tx, mut lost_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let mut link = listener.accept().await;
            let lost_tx = lost_tx.clone();
            tokio::spawn(async move {
                let signal = link.lost_signal();
                while let Some(Up::Ping(n)) = link.recv().await {
                    if link.send(&Down::Pong(n)).await.is_err() {
                        break;
                    }
                }
                let _ = lost_tx.send(signal.get()).await;
            });
        }
    });

    // Round trips.
    let mut agent = connect::<Up, Down>(addr, &key, "node-1", &opts).await?;
    let mut rtts = Vec::with_capacity(pings);
    for n in 0..(pings as u64 + 1000) {
        let sent = Instant::now();
        agent.send(&Up::Ping(n)).await?;
        match agent.recv().await {
            Some(Down::Pong(m)) if m == n => {}
            _ => return Err("echo lost or out of order".into()),
        }
        if n >= 1000 {
            // The first thousand warm up.
            rtts.push(sent.elapsed());
        }
    }
    rtts.sort();
    println!(
        "round trip over loopback ({pings} pings, sealed frames): p50 {:?}  p99 {:?}  max {:?}",
        pct(&rtts, 0.50),
        pct(&rtts, 0.99),
        pct(&rtts, 1.0)
    );
    drop(agent);
    let _ = lost_rx.recv().await;

    // Heartbeat-loss detection.
    let mut detect = Vec::with_capacity(runs);
    let mut silent = Vec::with_capacity(runs);
    for run in 0..runs {
        let agent = connect::<Up, Down>(addr, &key, "node-1", &opts).await?;
        // Vary the phase of the pause against the heartbeat schedule.
        tokio::time::sleep(Duration::from_millis(100 + (run as u64 * 7) % 50)).await;
        let paused = Instant::now();
        agent.pause_sending(true);
        let lost = match lost_rx.recv().await {
            Some(Some(lost)) => lost,
            _ => return Err("the director's end ended without a loss".into()),
        };
        detect.push(lost.at.duration_since(paused));
        silent.push(lost.at.duration_since(lost.last_heard));
        drop(agent);
    }
    detect.sort();
    silent.sort();
    println!(
        "heartbeat loss detection ({runs} runs, {:?} x {}): from silence p50 {:?}  min {:?}  max {:?}; \
         from the last frame heard p50 {:?}",
        cfg.heartbeat_interval,
        cfg.miss_count,
        pct(&detect, 0.50),
        pct(&detect, 0.0),
        pct(&detect, 1.0),
        pct(&silent, 0.50),
    );
    Ok(())
}
