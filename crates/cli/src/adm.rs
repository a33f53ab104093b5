//! `nines adm OP ENTITY`: one admin operation on the running cluster; prints `ok: OP ENTITY`
//! or the refusal (exit 1).

use std::process::ExitCode;

use clap::builder::PossibleValuesParser;
use clap::Args;
use nines_director::{control_socket_path, ControlClient};
use nines_engine::AdminOp;

use crate::state_dir::StateDirArg;

#[derive(Args, Debug)]
pub(crate) struct AdmArgs {
    /// The operation.
    #[arg(value_name = "OP", value_parser = PossibleValuesParser::new(AdminOp::ALL.map(AdminOp::name)))]
    op: String,
    /// Entity path: app/sg/su, app/sg/su/comp, app/si, app/sg, app, node/NAME or cluster.
    #[arg(value_name = "ENTITY")]
    entity: String,
    #[command(flatten)]
    state_dir: StateDirArg,
}

pub(crate) fn adm(args: &AdmArgs) -> ExitCode {
    let socket = control_socket_path(&args.state_dir.resolve());
    let result = ControlClient::connect(&socket).and_then(|mut c| c.adm(&args.op, &args.entity));
    match result {
        Ok(()) => {
            outln!("ok: {} {}", args.op, args.entity);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nines: {e}");
            ExitCode::FAILURE
        }
    }
}
