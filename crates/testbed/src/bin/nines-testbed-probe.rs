//! A helper process for the testbed's own tests (and for trying a testbed by hand): small
//! network and process behaviours that must run *inside* a node, as a separate process.
//!
//! - `listen ADDR:PORT`: accept connections, greet each with `hello from ADDR:PORT\n` and
//!   keep it open until the client closes it.
//! - `connect ADDR:PORT`: connect (2 s timeout), print the answer; exit 1 if that fails.
//! - `tree`: start a child `sleep` (a grandchild of whoever spawned us), print `ready`, sleep.
//! - `sleep`: sleep.
//!
//! Every mode that waits exits by itself after 60 s, so a leaked probe cannot outlive a test
//! run for long.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitCode};
use std::time::Duration;

const LIFETIME: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    std::thread::spawn(|| {
        std::thread::sleep(LIFETIME);
        std::process::exit(3);
    });
    match run(arg(0), arg(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nines-testbed-probe {}: {e}", args.join(" "));
            ExitCode::FAILURE
        }
    }
}

fn run(mode: &str, addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    match mode {
        "listen" => {
            let listener = TcpListener::bind(addr)?;
            println!("listening");
            std::io::stdout().flush()?;
            for conn in listener.incoming() {
                let mut conn = conn?;
                // A client that went away is not the listener's problem. The connection stays
                // open until the client closes it, so tests can watch what a fault does to it.
                let _ = writeln!(conn, "hello from {addr}");
                std::thread::spawn(move || std::io::copy(&mut conn, &mut std::io::sink()));
            }
            Ok(())
        }
        "connect" => {
            let to: SocketAddr = addr.parse()?;
            let conn = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            conn.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut line = String::new();
            BufReader::new(conn).read_line(&mut line)?;
            print!("{line}");
            Ok(())
        }
        "tree" => {
            let exe = std::env::current_exe()?;
            let _child = Command::new(exe).arg("sleep").spawn()?;
            println!("ready");
            std::io::stdout().flush()?;
            std::thread::sleep(LIFETIME);
            Ok(())
        }
        "sleep" => {
            std::thread::sleep(LIFETIME);
            Ok(())
        }
        _ => Err(format!("unknown mode {mode:?} (listen|connect ADDR:PORT, tree, sleep)").into()),
    }
}
