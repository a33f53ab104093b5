//! `nines status [--json]`: the running cluster's states, as tables per SG (like `crm_mon`),
//! or the status document as JSON.

use std::process::ExitCode;

use clap::Args;
use nines_director::{control_socket_path, format, ControlClient};

use crate::state_dir::StateDirArg;

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Print the status document (JSON) instead of tables.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    state_dir: StateDirArg,
}

pub(crate) fn status(args: &StatusArgs) -> ExitCode {
    let socket = control_socket_path(&args.state_dir.resolve());
    let status = ControlClient::connect(&socket).and_then(|mut c| c.status());
    match status {
        Ok(s) if args.json => match serde_json::to_string_pretty(&s) {
            Ok(text) => {
                outln!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("nines: cannot encode the status: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(s) => {
            out!("{}", format::status_table(&s));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nines: {e}");
            ExitCode::FAILURE
        }
    }
}
