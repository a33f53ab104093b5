//! `nines events [--follow] [--json]`: the event log as human lines (or the raw JSON lines),
//! then one row per fault: reaction, outage and repair times.
//!
//! Without `--follow` it also works when no runtime is running: it then reads
//! `events.jsonl` from the state directory directly.

use std::process::ExitCode;

use clap::Args;
use nines_director::{
    control_socket_path, events_path, faults, format, ClientError, ControlClient,
};
use serde_json::Value;

use crate::state_dir::StateDirArg;
use crate::stdout;

#[derive(Args, Debug)]
pub(crate) struct EventsArgs {
    /// Keep printing new events as they happen (needs a running runtime).
    #[arg(long)]
    follow: bool,
    /// Print the raw JSON lines of the log (and no fault table).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    state_dir: StateDirArg,
}

pub(crate) fn events(args: &EventsArgs) -> ExitCode {
    let dir = args.state_dir.resolve();
    let socket = control_socket_path(&dir);
    let mut parsed: Vec<Value> = Vec::new();
    let mut show = |line: &str| {
        let v: Option<Value> = serde_json::from_str(line).ok();
        if args.json {
            outln!("{line}");
        } else if let Some(text) = v.as_ref().and_then(format::event_line) {
            outln!("{text}");
        }
        if let Some(v) = v {
            parsed.push(v);
        }
        // Nobody reads any more (`nines events --follow | grep -m1 ...`): stop following.
        !stdout::closed()
    };
    let result = match ControlClient::connect(&socket) {
        Ok(c) => c.events(0, args.follow, &mut show),
        Err(e @ ClientError::NotRunning { .. }) if !args.follow => {
            let path = events_path(&dir);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    for line in String::from_utf8_lossy(&bytes).lines() {
                        show(line);
                    }
                    Ok(())
                }
                Err(read) => {
                    eprintln!("nines: {e}; and cannot read {}: {read}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("nines: {e}");
        return ExitCode::FAILURE;
    }
    if !args.json {
        outln!();
        out!("{}", format::fault_table(&faults::summarize(&parsed)));
    }
    ExitCode::SUCCESS
}
