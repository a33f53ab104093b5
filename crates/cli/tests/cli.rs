//! End-to-end tests of the `nines` binary: the real executable, real files, real exit codes.
//!
//! The model and simulator crates have their own unit tests; these check what only the binary
//! can get wrong: arguments, which stream says what, exit codes, and that every shipped example
//! really validates.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs `nines` with `args` from the repository root (so relative example paths work).
fn nines(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nines"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("the nines binary runs")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Both streams, for assertions that should not care which one a message went to.
fn all_output(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// A config file in the temp dir, removed when dropped (also when the test fails).
struct TempConfig {
    path: PathBuf,
}

impl TempConfig {
    fn new(tag: &str, text: &str) -> TempConfig {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "nines-cli-test-{}-{n}-{tag}.yaml",
            std::process::id()
        ));
        std::fs::write(&path, text).expect("temp dir is writable");
        TempConfig { path }
    }

    fn as_str(&self) -> &str {
        self.path.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A small valid 2N config; the invalid-config tests change one line of it, so the line
/// numbers they expect are the line numbers here (1-based).
const VALID: &str = "\
cluster: demo
nodes: [node-1, node-2]
apps:
  counter:
    sgs:
      sg:
        redundancy: 2n
        units:
          su-1: { node: node-1, rank: 1 }
          su-2: { node: node-2, rank: 2 }
        components:
          counterd:
            kind: process
            instantiate: [/bin/true]
    sis:
      si: { sg: sg, rank: 1, csis: { main: { component: counterd } } }
";

/// `VALID` with line `line` (1-based) replaced by `with`.
fn valid_with_line(line: usize, with: &str) -> String {
    let mut lines: Vec<&str> = VALID.lines().collect();
    lines[line - 1] = with;
    lines.join("\n") + "\n"
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples"))
        .expect("examples/ exists")
        .map(|e| e.expect("examples/ is readable").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// The `redundancy:` values a config text uses.
fn redundancy_models(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("redundancy:"))
        .map(|v| v.split('#').next().unwrap_or("").trim().to_string())
        .collect()
}

#[test]
fn every_example_validates_and_its_summary_names_its_redundancy_models() {
    let files = examples();
    assert!(!files.is_empty(), "examples/ has no .yaml files");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("example is readable");
        let o = nines(&["validate", file.to_str().expect("UTF-8 path")]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{} should validate:\n{}",
            file.display(),
            all_output(&o)
        );
        let out = stdout(&o);
        for model in redundancy_models(&text) {
            assert!(
                out.contains(&model),
                "summary of {} does not mention {model}:\n{out}",
                file.display()
            );
        }
    }
}

#[test]
fn examples_cover_all_five_redundancy_models() {
    let used: Vec<String> = examples()
        .iter()
        .flat_map(|f| redundancy_models(&std::fs::read_to_string(f).expect("readable")))
        .collect();
    for model in ["2n", "n+m", "n-way", "n-way-active", "no-redundancy"] {
        assert!(used.iter().any(|u| u == model), "no example uses {model}");
    }
}

#[test]
fn validate_accepts_a_valid_config() {
    let f = TempConfig::new("valid", VALID);
    let o = nines(&["validate", f.as_str()]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    assert!(stdout(&o).contains("2n"), "{}", stdout(&o));
}

#[test]
fn dangling_node_reference_names_file_line_and_su() {
    let f = TempConfig::new(
        "dangling",
        &valid_with_line(10, "          su-2: { node: node-9, rank: 2 }"),
    );
    let o = nines(&["validate", f.as_str()]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    let out = all_output(&o);
    assert!(out.contains(&format!("{}:10:", f.as_str())), "{out}");
    assert!(out.contains("counter/sg/su-2"), "{out}");
    assert!(out.contains("node-9"), "{out}");
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let f = TempConfig::new("unknown-key", &valid_with_line(7, "        colour: red"));
    let o = nines(&["validate", f.as_str()]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    let out = all_output(&o);
    assert!(out.contains(&format!("{}:7:", f.as_str())), "{out}");
    assert!(out.contains("colour"), "{out}");
}

#[test]
fn every_file_is_checked_even_after_a_bad_one() {
    let bad = TempConfig::new("bad-first", &valid_with_line(7, "        redundancy: 3n"));
    let good = TempConfig::new("good-second", VALID);
    let o = nines(&["validate", bad.as_str(), good.as_str()]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    let out = all_output(&o);
    assert!(out.contains(&format!("{}:7:", bad.as_str())), "{out}");
    assert!(out.contains(&format!("{}: ok", good.as_str())), "{out}");
}

#[test]
fn unreadable_file_is_named_and_fails() {
    let missing = std::env::temp_dir().join(format!(
        "nines-cli-test-{}-does-not-exist.yaml",
        std::process::id()
    ));
    let missing = missing.to_str().expect("UTF-8 path");
    for args in [
        &["validate", missing][..],
        &["sim", "--runs", "1", "--config", missing],
    ] {
        let o = nines(args);
        assert_eq!(
            o.status.code(),
            Some(1),
            "nines {args:?}: {}",
            all_output(&o)
        );
        assert!(stderr(&o).contains(missing), "{}", stderr(&o));
    }
}

#[test]
fn explain_lists_keys_with_defaults() {
    let o = nines(&["validate", "--explain"]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    let out = stdout(&o);
    for key in [
        "comp_restart",
        "su_restart",
        "fail_back",
        "redundancy",
        "healthcheck",
    ] {
        assert!(
            out.contains(key),
            "--explain does not mention {key}:\n{out}"
        );
    }
    // A key's entry is its line plus the indented continuation lines under it.
    let lines: Vec<&str> = out.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with("fail_back"))
        .expect("a line for fail_back");
    let entry: Vec<&str> = std::iter::once(lines[start])
        .chain(
            lines[start + 1..]
                .iter()
                .copied()
                .take_while(|l| l.starts_with("          ") && !l.trim().is_empty()),
        )
        .collect();
    let entry = entry.join("\n");
    assert!(
        entry.contains("Default: false"),
        "fail_back's entry does not give its default:\n{entry}"
    );
}

#[test]
fn sim_short_run_has_no_violations() {
    let o = nines(&["sim", "--runs", "20", "--seed", "1"]);
    let out = stdout(&o);
    let last = out.lines().last().unwrap_or("");
    assert!(
        last.starts_with("sim: 20 runs, ") && last.ends_with(" steps, 0 invariant violations"),
        "closing line: {last:?}\n{}",
        all_output(&o)
    );
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
}

#[test]
fn sim_with_an_invalid_config_fails_before_running() {
    let f = TempConfig::new("sim-bad", &valid_with_line(7, "        colour: red"));
    let o = nines(&["sim", "--runs", "1", "--config", f.as_str()]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    assert!(
        stderr(&o).contains(&format!("{}:7:", f.as_str())),
        "{}",
        stderr(&o)
    );
    assert!(
        !stdout(&o).contains("invariant violations"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn bad_arguments_exit_2_with_clap_errors() {
    let cases: &[&[&str]] = &[
        &[],
        &["frobnicate"],
        &["validate"],
        &["validate", "--explain", "x.yaml"],
        &["sim", "--runs", "many"],
        &["sim", "--runs", "0"],
        &["sim", "--threads", "0"],
        &["sim", "--seed", "-1"],
        &["sim", "--replay", "7", "--runs", "5"],
        &["sim", "--no-such-flag"],
    ];
    for args in cases {
        let o = nines(args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "nines {args:?}: {}",
            all_output(&o)
        );
        assert!(
            stderr(&o).contains("error") || stderr(&o).contains("Usage"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn help_lists_only_what_exists() {
    let o = nines(&["--help"]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    let out = stdout(&o);
    assert!(out.contains("validate") && out.contains("sim"), "{out}");
    for now in [
        "run", "director", "agent", "status", "adm", "events", "demo", "bench",
    ] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(now)),
            "--help does not list {now}: {out}"
        );
    }
    // The hidden example components are not listed.
    assert!(
        !out.lines().any(|l| l.trim_start().starts_with("example")),
        "--help lists example: {out}"
    );
}

#[test]
fn replay_prints_the_log_stats_and_closing_line() {
    let o = nines(&["sim", "--replay", "5", "--steps", "5"]);
    let out = stdout(&o);
    assert!(out.contains("<- Start"), "no input log:\n{out}");
    assert!(out.contains("replay of run seed 5:"), "no stats:\n{out}");
    let last = out.lines().last().unwrap_or("");
    assert!(
        last.starts_with("sim: 1 runs, ") && last.ends_with(" invariant violations"),
        "closing line: {last:?}"
    );
    let clean = last.ends_with(" 0 invariant violations");
    assert_eq!(
        o.status.code(),
        Some(if clean { 0 } else { 1 }),
        "{}",
        all_output(&o)
    );
}

/// The README's config example is what newcomers copy first; it must stay valid.
#[test]
fn readme_config_example_validates() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let example: String = readme
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README.md has a ```yaml block")
        .to_string();
    let f = TempConfig::new("readme", &example);
    let o = nines(&["validate", f.as_str()]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    // The reader of stdout is gone before nines writes (`nines validate ... | true`).
    let (read_end, write_end) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
    drop(read_end);
    let o = Command::new(env!("CARGO_BIN_EXE_nines"))
        .args(["validate", "examples/two-n.yaml", "examples/n-way.yaml"])
        .current_dir(repo_root())
        .stdout(std::process::Stdio::from(write_end))
        .output()
        .expect("the nines binary runs");
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(0), "{err}");
}
