//! Building the `Command` for a component or one of its CLC commands.
//!
//! Every process the agent starts leads its own process group, so that stopping a component
//! stops everything it started, and gets no stdin (nothing would ever feed it). Output goes to
//! the component's log file when the agent has a log directory, otherwise nowhere: an unread
//! pipe would eventually block the component.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::os::unix::process::CommandExt;

/// The log file of a component: its entity path with `/` turned into `-`, plus `.log`.
pub fn log_file(dir: &Path, comp_path: &str) -> PathBuf {
    dir.join(format!("{}.log", comp_path.replace('/', "-")))
}

/// A command for `argv` with `env` added to the agent's environment, in a new process group.
pub(crate) fn command(
    argv: &[String],
    env: &[(String, String)],
    log: Option<&Path>,
) -> io::Result<Command> {
    let Some((program, args)) = argv.split_first() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty command line",
        ));
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    prepare(&mut cmd, env, log)?;
    Ok(cmd)
}

/// Makes `cmd` (built here or elsewhere, e.g. QEMU's by `nines-vm`) a component process: `env`
/// added, no stdin, its own process group, output to `log` or nowhere.
pub(crate) fn prepare(
    cmd: &mut Command,
    env: &[(String, String)],
    log: Option<&Path>,
) -> io::Result<()> {
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0);
    match log {
        Some(path) => {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    Ok(())
}
