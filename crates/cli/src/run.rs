//! `nines run CONFIG`: run a cluster on this host until SIGINT/SIGTERM, printing one line per
//! event; then stop every component and exit 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use nines_director::{format, RunOptions, Runtime};
use tokio::sync::broadcast::error::RecvError;

use crate::load_file;
use crate::state_dir::StateDirArg;
use crate::stdout;

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// The cluster's config (YAML); every node in it runs on this host.
    #[arg(value_name = "CONFIG")]
    config: PathBuf,
    #[command(flatten)]
    state_dir: StateDirArg,
}

pub(crate) fn run(args: &RunArgs) -> ExitCode {
    let Some(model) = load_file(&args.config) else {
        return ExitCode::FAILURE;
    };
    let Some(rt) = crate::command_runtime() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(serve(RunOptions {
        model: Arc::new(model),
        state_dir: args.state_dir.resolve(),
        cluster: None,
    }))
    .into()
}

/// How [`serve`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Served {
    /// Stopped by SIGINT or SIGTERM.
    Signalled,
    /// The runtime stopped by itself (a director that lost its leadership).
    Stopped,
    /// It could not start (the reason is printed).
    Failed,
}

impl From<Served> for ExitCode {
    fn from(s: Served) -> ExitCode {
        match s {
            Served::Signalled | Served::Stopped => ExitCode::SUCCESS,
            Served::Failed => ExitCode::FAILURE,
        }
    }
}

/// Runs a director (single-host or cluster) until SIGINT/SIGTERM, printing its events.
pub(crate) async fn serve(opts: RunOptions) -> Served {
    // Signals first: a SIGTERM during start-up must still end in a clean shutdown.
    let Some((mut int, mut term)) = crate::stop_signals() else {
        return Served::Failed;
    };
    let cluster = opts.cluster.is_some();
    let runtime = match Runtime::start(opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nines: {e}");
            return Served::Failed;
        }
    };
    eprintln!(
        "nines: running; control socket {} (stop with Ctrl-C or SIGTERM)",
        runtime.control_socket().display()
    );
    // The console is a plain thread: a slow terminal or a full pipe must never block the
    // async workers the engine runs on (a follower that falls behind skips lines instead).
    let printer = match runtime.subscribe(runtime.first_seq()) {
        Ok((backlog, mut rx)) => Some(std::thread::spawn(move || {
            let mut next = 0;
            let mut print = |l: &nines_director::LogLine| {
                if l.seq < next {
                    return;
                }
                next = l.seq + 1;
                if let Ok(v) = serde_json::from_str(&l.json) {
                    if let Some(line) = format::event_line(&v) {
                        outln!("{line}");
                    }
                }
            };
            for l in &backlog {
                print(l);
            }
            // Until the run ends, or nobody reads the console any more.
            while !stdout::closed() {
                match rx.blocking_recv() {
                    Ok(l) => print(&l),
                    Err(RecvError::Lagged(n)) => {
                        outln!("... {n} events not shown (see `nines events`)")
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        })),
        Err(e) => {
            eprintln!("nines: cannot read the event log: {e}");
            None
        }
    };
    let why = tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        () = runtime.wait() => "the engine stopped",
    };
    let served = if why == "the engine stopped" {
        Served::Stopped
    } else {
        Served::Signalled
    };
    if cluster {
        eprintln!("nines: {why}: stopping the director (the nodes keep their components)");
    } else {
        eprintln!("nines: {why}: stopping every component");
    }
    runtime.shutdown().await;
    if let Some(p) = printer {
        // The log closes with the runtime; the printer ends once it printed the last line.
        let join = tokio::task::spawn_blocking(move || p.join());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), join).await;
    }
    eprintln!("nines: stopped");
    served
}
