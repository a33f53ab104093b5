//! Link impairment in user space, for kernels without `sch_netem`.
//!
//! The node's switch-side port `nI` is taken off the bridge and a second veth pair takes its
//! place (`rI` on the bridge, `qI` loose). Two threads copy frames between `nI` and `qI`
//! through raw packet sockets, holding each frame for the configured delay and dropping the
//! configured share. The sockets use `PACKET_VNET_HDR`, so checksum-offload and GSO frames
//! cross with their metadata, as they would through the bridge.
//!
//! It is coarser than netem (the threads wake at millisecond granularity and a busy machine
//! adds its scheduling delay), which suits tests that need "at least this much latency" or
//! "about this much loss", not a precise emulation.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sys::{self, PacketSocket};

/// Frames held at most per direction (a full queue drops, like a qdisc's limit).
const QUEUE_LIMIT: usize = 10_000;
/// The longest a pump sleeps, so it notices `stop` and parameter changes promptly.
const TICK: Duration = Duration::from_millis(20);
/// Room for one GSO frame (64 KiB) plus its headers.
const FRAME_MAX: usize = 1 << 17;

/// The impairment, shared by the two pumps and changed in place by `set`.
#[derive(Debug)]
struct Params {
    delay_us: AtomicU64,
    /// Loss in parts per million.
    loss_ppm: AtomicU32,
}

/// A running relay between a node's port and its replacement on the bridge.
#[derive(Debug)]
pub(crate) struct Relay {
    params: Arc<Params>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Bind to `node_port` and `bridge_end` in the switch namespace and start pumping.
    pub fn start(
        switch_ns: &OwnedFd,
        node_port: &str,
        bridge_end: &str,
        delay: Duration,
        loss_percent: f64,
    ) -> io::Result<Relay> {
        let (a, b) = sys::in_netns(switch_ns, || -> io::Result<_> {
            Ok((
                PacketSocket::bind(node_port)?,
                PacketSocket::bind(bridge_end)?,
            ))
        })??;
        let (a, b) = (Arc::new(a), Arc::new(b));
        let params = Arc::new(Params {
            delay_us: AtomicU64::new(0),
            loss_ppm: AtomicU32::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut relay = Relay {
            params,
            stop,
            threads: Vec::new(),
        };
        relay.set(delay, loss_percent);
        let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let seed = clock.map_or(0, |d| d.as_nanos() as u64) ^ 0x9E37_79B9_7F4A_7C15;
        for (k, (rx, tx)) in [(a.clone(), b.clone()), (b, a)].into_iter().enumerate() {
            let (params, stop) = (relay.params.clone(), relay.stop.clone());
            let seed = seed
                .wrapping_add(k as u64)
                .wrapping_mul(0xBF58_476D_1CE4_E5B9)
                | 1;
            let name = format!("testbed-relay-{node_port}-{k}");
            let t = std::thread::Builder::new()
                .name(name)
                .spawn(move || pump(&rx, &tx, &params, &stop, seed))?;
            relay.threads.push(t);
        }
        Ok(relay)
    }

    /// Change the impairment; frames already held keep their release time.
    pub fn set(&self, delay: Duration, loss_percent: f64) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.params.delay_us.store(us, Ordering::Relaxed);
        let ppm = (loss_percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
        self.params.loss_ppm.store(ppm, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    /// Stop both pumps and wait for them (each notices within one tick).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// xorshift64: loss decisions need no quality beyond "about this share".
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Copy frames from `rx` to `tx`, each released `delay` after it arrived, some dropped.
fn pump(rx: &PacketSocket, tx: &PacketSocket, params: &Params, stop: &AtomicBool, mut rng: u64) {
    let mut buf = vec![0u8; FRAME_MAX];
    let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, frame)) = held.pop_front() {
                // A frame the interface refuses is lost, as on a real link.
                let _ = tx.send(&frame);
            }
        }
        let wait = held
            .front()
            .map_or(TICK, |(due, _)| due.saturating_duration_since(now));
        // Round up, so a wait shorter than a millisecond does not spin.
        let wait = (wait + Duration::from_micros(999)).min(TICK);
        match rx.recv(&mut buf, wait) {
            Ok(Some(n)) => {
                let loss = u64::from(params.loss_ppm.load(Ordering::Relaxed));
                if loss > 0 && next(&mut rng) % 1_000_000 < loss {
                    continue;
                }
                let delay = Duration::from_micros(params.delay_us.load(Ordering::Relaxed));
                if delay.is_zero() && held.is_empty() {
                    let _ = tx.send(&buf[..n]);
                } else if held.len() < QUEUE_LIMIT {
                    held.push_back((Instant::now() + delay, buf[..n].to_vec()));
                }
            }
            Ok(None) => {}
            // The interface is going away (teardown): wait for `stop`.
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}
