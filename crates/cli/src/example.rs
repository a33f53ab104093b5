//! `nines example counter|daemon` (hidden): the example components, run by the `nines` binary
//! itself so that `nines demo` and `nines bench` need nothing built besides it. Their configs
//! name the binary as the component's command (`instantiate: [nines, example, counter]`).
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

pub(crate) fn example(args: &ExampleArgs) -> ExitCode {
    let result = match args.which {
        Which::Counter => nines_example_counter::run().map_err(|e| format!("counter: {e}")),
        Which::Daemon { port } => {
            nines_example_counter::daemon::run(port).map_err(|e| format!("daemon: {e}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nines example {e}");
            ExitCode::FAILURE
        }
    }
}
