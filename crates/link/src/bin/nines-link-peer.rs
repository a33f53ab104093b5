//! A stand-alone agent end of a link, for this crate's tests: a whole process that a test can
//! freeze (SIGSTOP) or kill, as a hung or crashed host.
//!
//! `nines-link-peer ADDR NAME` with the cluster key in `$NINES_LINK_KEY`: connects, then echoes
//! every `u64` it receives until the link ends. Exits by itself after 60 s, so that a test that
//! dies never leaves it behind for long.

use std::time::Duration;

use nines_link::{connect, ClusterKey, ConnectOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(name)) = (args.next(), args.next()) else {
        eprintln!("usage: nines-link-peer ADDR NAME   (key in $NINES_LINK_KEY)");
        std::process::exit(2);
    };
    let run = async {
        let addr = addr
            .parse()
            .map_err(|e| format!("bad address {addr}: {e}"))?;
        let key = ClusterKey::from_env("NINES_LINK_KEY").map_err(|e| e.to_string())?;
        let mut link = connect::<u64, u64>(addr, &key, &name, &ConnectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        while let Some(n) = link.recv().await {
            if link.send(&n).await.is_err() {
                break;
            }
        }
        Ok::<(), String>(())
    };
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(60), run).await {
        eprintln!("nines-link-peer: {e}");
        std::process::exit(1);
    }
}
