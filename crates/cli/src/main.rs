//! The `nines` command.
//!
//! Deliberately thin: it parses arguments, reads files, hands their text to the crates that do
//! the work (`nines_model` validates, `nines_sim` simulates, `nines_director` runs a cluster on
//! this host and answers on its control socket) and turns their results into output and an
//! exit code. Nothing here decides anything about availability, so everything worth testing
//! stays testable without a process. One file per subcommand.
//!
//! Exit codes: 0 success, 1 the check failed (invalid config, unreadable file, invariant
//! violation, no runtime running, refused admin operation), 2 bad command line (clap's own
//! errors).

/// `println!` that never panics (see [`stdout`]): a closed stdout drops the output.
macro_rules! outln {
    () => {
        $crate::stdout::print_out(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::stdout::print_out(format_args!($($arg)*), true)
    };
}

/// `print!` that never panics (see [`stdout`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::print_out(format_args!($($arg)*), false)
    };
}

mod adm;
mod agent;
mod bench;
mod bench_cluster;
mod bench_vm;
mod cluster_args;
mod counter_command;
mod demo;
mod director;
mod events;
mod example;
mod inherited_fds;
mod run;
mod sim;
mod state_dir;
mod status;
mod stdout;
mod validate;

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nines_model::Model;

/// nines: availability management for services (AMF-style: SGs, SUs, SIs, 2N, N+M, ...).
#[derive(Parser, Debug)]
#[command(name = "nines", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check config files and print a summary of each (or every error, with file:line).
    Validate(validate::ValidateArgs),
    /// Run the deterministic simulator: seeded random faults, invariants checked every step.
    Sim(sim::SimArgs),
    /// Run a cluster on this host until SIGINT/SIGTERM, logging every event.
    Run(run::RunArgs),
    /// Direct a multi-host cluster: nodes running `nines agent` join it over TCP.
    Director(director::DirectorArgs),
    /// Run one node of a multi-host cluster, joined to its directors.
    Agent(agent::AgentArgs),
    /// Show every SG, SU, component and SI of the running cluster with their states.
    Status(status::StatusArgs),
    /// Run an admin operation (lock, unlock, switchover, ...) on an entity.
    Adm(adm::AdmArgs),
    /// Print the event log and a per-fault table (reaction, outage, repair).
    Events(events::EventsArgs),
    /// Start a 2N counter service here, kill its active component and show the failover.
    Demo(demo::DemoArgs),
    /// Inject process faults repeatedly and report outage percentiles.
    Bench(bench::BenchArgs),
    /// Run an example component (what the demo's and bench's configs start).
    #[command(hide = true)]
    Example(example::ExampleArgs),
}

fn main() -> ExitCode {
    if let Some(code) = example::direct(std::env::args_os()) {
        return code;
    }
    // Before any thread exists (the counter above inherits nothing: the agent's descriptors
    // are close-on-exec).
    inherited_fds::keep_from_children();
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => validate::validate(&args),
        Command::Sim(args) => sim::sim(&args),
        Command::Run(args) => run::run(&args),
        Command::Director(args) => director::director(&args),
        Command::Agent(args) => agent::agent(&args),
        Command::Status(args) => status::status(&args),
        Command::Adm(args) => adm::adm(&args),
        Command::Events(args) => events::events(&args),
        Command::Demo(args) => demo::demo(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Example(args) => example::example(&args),
    }
}

/// The tokio runtime the long-running commands (`run`, `director`, `agent`) and the
/// benchmarks use; the error says why it could not start.
///
/// One worker thread: the engine is one task, and a failover is a chain of small steps
/// handed from task to task (the exit watcher, the engine, the session writer). With two
/// workers each hand-over could wake the other worker (an eventfd write and a context
/// switch) and the steps ran in whatever order the two threads were scheduled: `nines bench
/// sa-kill --runs 200` outage p50 1.25 ms with two workers against 1.18-1.20 ms with one, on
/// the 2-vCPU development VM, when this was changed. Blocking work (spawning, the /proc
/// scans, store commits, the event log) has threads of its own.
pub(crate) fn async_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("nines-rt")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// [`async_runtime`] for a command's `main`: `None` after printing why it could not start.
pub(crate) fn command_runtime() -> Option<tokio::runtime::Runtime> {
    async_runtime().map_err(|e| eprintln!("nines: {e}")).ok()
}

/// SIGINT and SIGTERM, the signals that stop the long-running commands; `None` after
/// printing why they cannot be handled.
pub(crate) fn stop_signals() -> Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)> {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => Some((i, t)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("nines: cannot handle signals: {e}");
            None
        }
    }
}

/// Reads and validates one config file, printing its warnings or errors. `None` means the
/// problem was already reported.
pub(crate) fn load_file(path: &Path) -> Option<Model> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_text(&text, &path.display().to_string()),
        Err(e) => {
            eprintln!("nines: cannot read {}: {e}", path.display());
            None
        }
    }
}

/// Validates config text; `file` is the name errors are reported under.
pub(crate) fn load_text(text: &str, file: &str) -> Option<Model> {
    match nines_model::load(text, file) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            Some(loaded.model)
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            let n = errors.len();
            eprintln!("nines: {file}: {n} error{}", if n == 1 { "" } else { "s" });
            None
        }
    }
}

/// The crates' texts may or may not end in a newline; the terminal should not care.
pub(crate) fn with_newline(mut s: String) -> String {
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

pub(crate) fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
