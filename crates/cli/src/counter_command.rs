//! Which command line starts the example counter in the configs that `nines demo` and
//! `nines bench` generate: the small `nines-counter` binary when it was built beside this one,
//! else this binary itself (`nines example counter`).
//!
//! Why it matters: the kernel tears a SIGKILLed process down before its death becomes visible,
//! and that teardown is part of every outage the benchmark measures. A process of the whole
//! `nines` binary (every subcommand linked in, its relocations applied at start) has about
//! 4.3 MB resident against 2.4 MB for `nines-counter`, which made the engine's reaction to a
//! kill about 0.1 ms longer on the development VM. A real service is its own binary too.
//! `cargo build --release` builds both; `cargo run -- demo` builds only `nines`, hence the
//! fallback, which also covers a `nines-counter` left from an older build that speaks another
//! version of the agent protocol (it answers `--protocol-version`).

use std::path::Path;
use std::process::{Command, Stdio};

use nines_proto::PROTOCOL_VERSION;

use crate::bench::yaml_str;

/// The name of the standalone counter binary (`src/bin/nines_counter.rs`).
pub(crate) const COUNTER_BINARY: &str = "nines-counter";

/// A component command line: the program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CounterCommand(Vec<String>);

impl CounterCommand {
    /// The counter to start for the `nines` binary at `exe`: `nines-counter` in the same
    /// directory if it is an executable file that speaks this build's agent protocol, else
    /// `exe example counter` (saying why on stderr when a `nines-counter` was passed over).
    pub(crate) fn beside(exe: &str) -> Self {
        let Some(counter) = sibling(Path::new(exe)) else {
            return Self::of_nines(exe);
        };
        match protocol_of(Path::new(&counter)) {
            Some(v) if v == PROTOCOL_VERSION => Self(vec![counter]),
            spoken => {
                let spoken =
                    spoken.map_or("no known".to_owned(), |v| format!("version {v} of the"));
                eprintln!(
                    "nines: not using {}: it speaks {spoken} agent protocol, this nines version \
                     {PROTOCOL_VERSION} (left from another build?); the components are \
                     `{exe} example counter`",
                    counter
                );
                Self::of_nines(exe)
            }
        }
    }

    /// `exe example counter`: the counter run by the `nines` binary itself.
    pub(crate) fn of_nines(exe: &str) -> Self {
        Self(vec![exe.to_owned(), "example".into(), "counter".into()])
    }

    /// The command as a YAML flow sequence, for `instantiate:`.
    pub(crate) fn yaml(&self) -> String {
        let words: Vec<String> = self.0.iter().map(|w| yaml_str(w)).collect();
        format!("[{}]", words.join(", "))
    }
}

impl std::fmt::Display for CounterCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// What `counter --protocol-version` prints, if it runs and prints a version.
fn protocol_of(counter: &Path) -> Option<u8> {
    let out = Command::new(counter)
        .arg("--protocol-version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// The path of an executable `nines-counter` in the directory of `exe`.
fn sibling(exe: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let candidate = exe.parent()?.join(COUNTER_BINARY);
    let meta = std::fs::metadata(&candidate).ok()?;
    let executable = meta.is_file() && meta.permissions().mode() & 0o111 != 0;
    executable.then(|| candidate.to_str().map(str::to_owned))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "nines-counter-command-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }

    /// A stand-in `nines-counter` in `dir` that answers `--protocol-version` with `answer`.
    fn fake_counter(dir: &Path, answer: &str) -> PathBuf {
        let counter = dir.join(COUNTER_BINARY);
        // Written to a temporary name and renamed, so no writer holds the file when it runs.
        let tmp = dir.join("counter.tmp");
        let script = format!("#!/bin/sh\n[ \"$1\" = --protocol-version ] && echo {answer}\n");
        std::fs::write(&tmp, script).expect("write");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::rename(&tmp, &counter).expect("rename");
        counter
    }

    #[test]
    fn a_counter_beside_nines_that_speaks_its_protocol_is_chosen() {
        let dir = scratch("chosen");
        let counter = fake_counter(&dir, &PROTOCOL_VERSION.to_string());
        let exe = dir.join("nines");
        let chosen = CounterCommand::beside(exe.to_str().expect("utf-8"));
        assert_eq!(chosen, CounterCommand(vec![counter.display().to_string()]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_counter_of_another_protocol_or_none_is_passed_over() {
        let dir = scratch("stale");
        let exe = dir.join("nines").display().to_string();
        for answer in [
            (PROTOCOL_VERSION - 1).to_string(),
            "garbage".to_owned(),
            String::new(),
        ] {
            fake_counter(&dir, &answer);
            assert_eq!(
                CounterCommand::beside(&exe),
                CounterCommand::of_nines(&exe),
                "answer {answer:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_one_nines_runs_the_counter_itself() {
        let dir = scratch("absent");
        let exe = dir.join("nines").display().to_string();
        assert_eq!(CounterCommand::beside(&exe), CounterCommand::of_nines(&exe));
        // Neither a file that cannot be executed nor a directory of that name counts.
        let counter = dir.join(COUNTER_BINARY);
        std::fs::write(&counter, b"not a program").expect("write");
        std::fs::set_permissions(&counter, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(CounterCommand::beside(&exe), CounterCommand::of_nines(&exe));
        std::fs::remove_file(&counter).expect("remove");
        std::fs::create_dir(&counter).expect("mkdir");
        assert_eq!(CounterCommand::beside(&exe), CounterCommand::of_nines(&exe));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_yaml_form_quotes_every_word() {
        let c = CounterCommand::of_nines("/opt/nines dir/nines");
        assert_eq!(
            c.yaml(),
            r#"["/opt/nines dir/nines", "example", "counter"]"#
        );
        assert_eq!(c.to_string(), "/opt/nines dir/nines example counter");
    }
}
