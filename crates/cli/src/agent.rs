//! `nines agent --node NAME --director ADDR[,ADDR...] --key FILE`: one node of a cluster.
//! Runs until SIGINT/SIGTERM, then terminates its components; losing the director does not
//! stop them (the node reconnects).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use nines_link::ConnectOptions;
use nines_node::NodeOptions;
use tokio::sync::watch;

use crate::cluster_args::{init_logging, LinkArgs};

#[derive(Args, Debug)]
pub(crate) struct AgentArgs {
    /// This node's name in the config (node/NAME).
    #[arg(long, value_name = "NAME")]
    node: String,
    /// The directors, tried in order (comma-separated host:port).
    #[arg(
        long,
        value_name = "ADDR[,ADDR...]",
        value_delimiter = ',',
        required = true
    )]
    director: Vec<SocketAddr>,
    #[command(flatten)]
    link: LinkArgs,
    /// Where the agent keeps its socket, component logs and process records
    /// [default: $NINES_STATE_DIR, else ./.nines-agent].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Log info lines too (default: warnings and errors).
    #[arg(long, short)]
    verbose: bool,
}

pub(crate) fn agent(args: &AgentArgs) -> ExitCode {
    init_logging(args.verbose);
    let key = match args.link.cluster_key() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("nines: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state_dir = args.state_dir.clone().unwrap_or_else(|| {
        std::env::var_os("NINES_STATE_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".nines-agent"))
    });
    let opts = NodeOptions {
        name: args.node.clone(),
        directors: args.director.clone(),
        key,
        state_dir,
        connect: ConnectOptions {
            link: args.link.link(),
            // A node without a director waits at most this long between rounds: a new
            // leader is elected about a second after the old one died, and should not wait
            // for its nodes much longer than that.
            max_backoff: Duration::from_millis(250),
            ..ConnectOptions::default()
        },
    };
    let Some(rt) = crate::command_runtime() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        let Some((mut int, mut term)) = crate::stop_signals() else {
            return ExitCode::FAILURE;
        };
        let (stop, stop_rx) = watch::channel(false);
        let node = tokio::spawn(nines_node::run(opts, stop_rx));
        tokio::pin!(node);
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            r = &mut node => return finish(r),
        }
        eprintln!("nines: stopping the node's components");
        let _ = stop.send(true);
        finish(node.await)
    })
}

fn finish(r: Result<Result<(), nines_node::NodeError>, tokio::task::JoinError>) -> ExitCode {
    match r {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("nines: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("nines: the node task failed: {e}");
            ExitCode::FAILURE
        }
    }
}
