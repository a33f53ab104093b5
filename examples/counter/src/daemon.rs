//! A plain (non-SA-aware) daemon: what most software managed as a `process` component looks
//! like. It knows nothing of nines: it runs until SIGTERM, then exits 0.
//!
//! With a port it also echoes lines on 127.0.0.1:PORT, so that a client (the benchmark's
//! probe) can tell from outside whether the service is up: the only way to measure the outage
//! of a component that does not talk to the AMF.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

use crate::protocol::MAX_LINE;

/// Runs the daemon until SIGTERM (or SIGINT). `port`: echo lines on 127.0.0.1:`port`.
pub fn run(port: Option<u16>) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let listener = match port {
            Some(p) => Some(listen(p)?),
            None => None,
        };
        if let Some(p) = port {
            eprintln!("daemon: echoing lines on 127.0.0.1:{p}");
        }
        let accept = async {
            match &listener {
                Some(l) => loop {
                    match l.accept().await {
                        Ok((stream, _)) => {
                            tokio::spawn(echo(stream));
                        }
                        Err(e) => eprintln!("daemon: accept failed: {e}"),
                    }
                },
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term.recv() => eprintln!("daemon: SIGTERM, exiting"),
            _ = int.recv() => eprintln!("daemon: SIGINT, exiting"),
            () = accept => {}
        }
        Ok(())
    })
}

/// Binds with `SO_REUSEADDR` (see [`crate::server::bind`]), so a restarted daemon gets its port
/// back at once.
fn listen(port: u16) -> io::Result<TcpListener> {
    let std = crate::server::bind(port)?;
    std.set_nonblocking(true)?;
    TcpListener::from_std(std).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {}: {e}",
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
            ),
        )
    })
}

/// Echoes each line back until the client hangs up or sends an over-long line.
async fn echo(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded: a client that never sends a newline cannot make the daemon buffer forever.
        let mut bounded = (&mut lines).take(MAX_LINE as u64 + 1);
        match bounded.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if line.len() > MAX_LINE => return,
            Ok(_) => {
                if write.write_all(&line).await.is_err() {
                    return;
                }
            }
        }
    }
}
