//! How long a floating IP takes to move between two nodes, as a client sees it.
//!
//! A 3-node testbed: A and B each run a TCP server on `0.0.0.0:7100` that answers with its
//! name; C is the client. The address starts on A (C has talked to it, so C's neighbour cache
//! holds A's MAC). Each move releases the address on the current holder and acquires it on
//! the other, while C connects to the address again and again (each attempt bounded by 1 ms,
//! so an attempt sent to the old MAC is abandoned quickly) until the new holder answers. The
//! time printed is from the start of the release to the moment that connection was
//! established. It includes entering each node's namespace from this test process (a thread
//! and a runtime each, which an agent already has: the gap between "released" and "acquire
//! started"), and up to one 1 ms attempt that C sent to the old MAC before the announcement
//! arrived, so the crate's own steps are printed too.
//!
//! `cargo run -p nines-vip --example move [MOVES]` (root; default 20 moves).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{bed, connect_until, on, Server};

fn main() {
    let moves: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 20,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: move [MOVES]  (a positive number, default 20)");
            std::process::exit(2);
        }
    };
    let Some((bed, vip)) = bed(3) else { return };
    let nodes = [(bed.node(0), "A"), (bed.node(1), "B")];
    let c = bed.node(2);
    let port = 7100;
    let _servers = nodes.map(|(node, name)| Server::start(node, name, port));
    let to = SocketAddr::from((vip.addr(), port));
    let (attempt, within) = (Duration::from_millis(1), Duration::from_secs(10));

    common::acquire(nodes[0].0, &vip);
    c.enter(|| connect_until(to, "A", attempt, within))
        .expect("enter")
        .expect("C reaches A");

    println!("times from the start of the release:");
    println!("move  released  acquire started  address added  announced  client connected");
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut totals = Vec::with_capacity(moves);
    for i in 0..moves {
        let (from, to_node) = (nodes[i % 2], nodes[(i + 1) % 2]);
        let go = Barrier::new(2);
        let (t0, released, acquired, connected) = std::thread::scope(|s| {
            let client = s.spawn(|| {
                c.enter(|| {
                    go.wait();
                    connect_until(to, to_node.1, attempt, within)
                })
            });
            go.wait();
            let t0 = Instant::now();
            let released = on(from.0, || async {
                nines_vip::release(&vip).await.expect("release");
                Instant::now()
            });
            let acquired = on(to_node.0, || async {
                let a = nines_vip::acquire(&vip).await.expect("acquire");
                let times = (a.started, a.added, a.announced);
                a.announcements_done().await;
                times
            });
            let connected = client.join().expect("client thread").expect("enter");
            (t0, released, acquired, connected)
        });
        let connected = match connected {
            Ok(at) => at - t0,
            Err(last) => panic!("move {i}: the client never reached {}: {last}", to_node.1),
        };
        println!(
            "{}→{}  {:>6.0}µs  {:>13.0}µs  {:>11.0}µs  {:>7.0}µs  {:>13.0}µs",
            from.1,
            to_node.1,
            us(released - t0),
            us(acquired.0 - t0),
            us(acquired.1 - t0),
            us(acquired.2 - t0),
            us(connected)
        );
        totals.push(connected);
    }
    totals.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{moves} moves: client reconnected after p50 {:.2} ms, max {:.2} ms",
        ms(totals[totals.len() / 2]),
        ms(totals[totals.len() - 1])
    );
}
