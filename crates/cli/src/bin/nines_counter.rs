//! `nines-counter`: the example SA-aware counter service (the same component as
//! `nines example counter`) as a binary of its own. `nines demo` and `nines bench` start it
//! when it was built beside `nines`: a small process is torn down faster when it is killed,
//! and that teardown is part of every outage they measure. No argument parser, for the same
//! reason: the process should touch as little as it can.

use std::process::ExitCode;

const USAGE: &str = "\
nines-counter: the example SA-aware counter service, a component started by a nines agent
(it needs NINES_AGENT_SOCKET and NINES_COMPONENT, which the agent sets). Use it in a config as
  instantiate: [nines-counter]
or run `nines demo`. It takes no arguments (`--protocol-version` prints the version of the
agent protocol it speaks).";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    match args.next() {
        None => {}
        Some(a) if a == "--help" || a == "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        // For `nines demo` and `nines bench`, which start this binary only if it speaks their
        // protocol (it may be left from an older build).
        Some(a) if a == "--protocol-version" => {
            println!("{}", nines_proto::PROTOCOL_VERSION);
            return ExitCode::SUCCESS;
        }
        Some(a) => {
            eprintln!("nines-counter: unexpected argument {a:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    match nines_example_counter::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nines-counter: {e}");
            ExitCode::FAILURE
        }
    }
}
