//! `nines example counter|daemon` (hidden): the example components, run by the `nines` binary
//! itself, so that `nines demo` and `nines bench` need nothing built besides it: the daemon
//! always, the counter when no `nines-counter` that speaks this build's protocol is beside the
//! binary (see `counter_command`). The example configs name them so too
//! (`instantiate: [nines, example, counter]`).
//! The components live in `nines-example-counter`; this only chooses one and maps its result
//! to an exit code.

use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub(crate) struct ExampleArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand, Debug)]
enum Which {
    /// The SA-aware checkpointed counter service (started by a nines agent: it needs
    /// NINES_AGENT_SOCKET and NINES_COMPONENT).
    Counter,
    /// A plain daemon that runs until SIGTERM, then exits 0.
    Daemon {
        /// Also echo lines on 127.0.0.1:PORT, so a client can see whether it is up.
        #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
    },
}

/// `nines example counter`, recognised before the command line parser runs: the counter is
/// what the demo and `nines bench sa-kill` start, kill and start again when `nines-counter`
/// is not there. Building clap's whole command tree touches about a megabyte more of this
/// binary (counter resident text 2.0 MB with it, 1.1 MB without), and the kernel must unmap
/// every page a process touched before its death is visible: part of every outage the
/// benchmark measures. `None` for any other command line, which clap then parses as usual
/// (the subcommand stays there too, with its help).
pub(crate) fn direct(args: impl IntoIterator<Item = std::ffi::OsString>) -> Option<ExitCode> {
    let mut args = args.into_iter().skip(1);
    let is_counter = args.next().is_some_and(|a| a == "example")
        && args.next().is_some_and(|a| a == "counter")
        && args.next().is_none();
    is_counter.then(|| finish(run_counter()))
}

fn run_counter() -> Result<(), String> {
    nines_example_counter::run().map_err(|e| format!("counter: {e}"))
}

pub(crate) fn example(args: &ExampleArgs) -> ExitCode {
    let result = match args.which {
        Which::Counter => run_counter(),
        Which::Daemon { port } => {
            nines_example_counter::daemon::run(port).map_err(|e| format!("daemon: {e}"))
        }
    };
    finish(result)
}

fn finish(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nines example {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<std::ffi::OsString> {
        words.iter().map(|w| w.into()).collect()
    }

    #[test]
    fn only_the_exact_counter_command_line_skips_the_parser() {
        // The counter itself would run (and fail without an agent): only the refusals are
        // checked here; the integration tests start it through an agent.
        for words in [
            &["nines"][..],
            &["nines", "example"],
            &["nines", "example", "daemon"],
            &["nines", "example", "counter", "--help"],
            &["nines", "example", "counterx"],
            &["nines", "run", "counter"],
            &["nines", "counter", "example"],
        ] {
            assert!(direct(args(words)).is_none(), "{words:?}");
        }
    }
}
