//! `nines director CONFIG --listen ADDR --key FILE`: the director of a multi-host cluster.
//! Nodes run `nines agent` and join it; `status`, `adm` and `events` work as with `nines run`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use nines_director::cluster::{ClusterOptions, FenceMethod, Listen};
use nines_director::RunOptions;

use crate::cluster_args::{duration, init_logging, LinkArgs};
use crate::load_file;
use crate::run::Served;
use crate::state_dir::StateDirArg;

#[derive(Args, Debug)]
pub(crate) struct DirectorArgs {
    /// The cluster's config (YAML); sent to every node that joins.
    #[arg(value_name = "CONFIG")]
    config: std::path::PathBuf,
    /// Address to accept nodes on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7400")]
    listen: SocketAddr,
    /// This director's name on the links.
    #[arg(long, value_name = "NAME", default_value = "director")]
    name: String,
    /// Shell command that powers a lost node off, run with NINES_FENCE_NODE and
    /// NINES_FENCE_ADDR set; exit 0 means fenced. A lost node's work moves only after it.
    #[arg(long, value_name = "CMD", conflicts_with = "no_fencing")]
    fence_command: Option<String>,
    /// Fail a lost node's work over without fencing it (unsafe: a node that is only cut off
    /// keeps serving). Needed when no fence command is given.
    #[arg(long)]
    no_fencing: bool,
    /// etcd client URLs (comma-separated): several directors of one cluster elect a leader
    /// there; the others wait and take over when it stops. Without it this director is the
    /// only one.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    etcd: Vec<String>,
    /// How long to wait at start for every node to join; the rest are fenced.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    join_timeout: Duration,
    #[command(flatten)]
    link: LinkArgs,
    #[command(flatten)]
    state_dir: StateDirArg,
    /// Log info lines too (default: warnings and errors).
    #[arg(long, short)]
    verbose: bool,
}

pub(crate) fn director(args: &DirectorArgs) -> ExitCode {
    init_logging(args.verbose);
    let fence = match (&args.fence_command, args.no_fencing) {
        (Some(c), _) => FenceMethod::Command(c.clone()),
        (None, true) => FenceMethod::Unsafe,
        (None, false) => {
            eprintln!(
                "nines: give --fence-command CMD (how to power a lost node off), or --no-fencing to run without fencing (unsafe)"
            );
            return ExitCode::FAILURE;
        }
    };
    let Some(model) = load_file(&args.config) else {
        return ExitCode::FAILURE;
    };
    let model = Arc::new(model);
    let config_text = match std::fs::read_to_string(&args.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nines: {}: {e}", args.config.display());
            return ExitCode::FAILURE;
        }
    };
    let key = match args.link.cluster_key() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("nines: {e}");
            return ExitCode::FAILURE;
        }
    };
    let etcd = (!args.etcd.is_empty()).then(|| {
        nines_store::EtcdOptions::new(args.etcd.clone(), format!("/nines/{}", model.cluster))
    });
    let Some(rt) = crate::command_runtime() else {
        return ExitCode::FAILURE;
    };
    let run_once = || {
        crate::run::serve(RunOptions {
            model: model.clone(),
            state_dir: args.state_dir.resolve(),
            cluster: Some(ClusterOptions {
                config_text: config_text.clone(),
                name: args.name.clone(),
                listener: Listen::At(args.listen),
                etcd: etcd.clone(),
                key: key.clone(),
                link: args.link.link(),
                fence: fence.clone(),
                join_timeout: args.join_timeout,
            }),
        })
    };
    rt.block_on(async {
        loop {
            match run_once().await {
                // A director of several that lost its leadership (its lease outlived by an
                // etcd election, a partition from etcd) campaigns again: the nodes run on
                // headless meanwhile and it resumes from them if it wins.
                Served::Stopped if etcd.is_some() => {
                    eprintln!("nines: no longer the leader; campaigning again");
                }
                other => return other.into(),
            }
        }
    })
}
