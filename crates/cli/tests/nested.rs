//! Nested clusters with real TCG guests: two host agents each run a service VM whose guest
//! (a static nines inside) joins the cluster as a node and runs the SA-aware counter, 2N
//! across the two guests (`nines bench vm-*` builds exactly that). Each test asserts what its
//! name says through the bench's JSON and the probe's counter checks: the counter never goes
//! back or repeats across the failover (a regression fails the bench), the fault is handled
//! as the guest's node failover, and no QEMU outlives the run.
//!
//! Needs QEMU and the guest image (scripts/build-guest-image.sh, run here; idempotent).
//! Skipped with a message when QEMU is missing, outside CI; in CI a missing part fails.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_nines");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The guest image, built if needed; `None` (skip) when this machine cannot run guests and
/// this is not CI.
fn image() -> Option<PathBuf> {
    let ci = std::env::var_os("CI").is_some();
    let have_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_qemu {
        assert!(
            !ci,
            "qemu-system-x86_64 is missing (CI installs qemu-system-x86)"
        );
        eprintln!("skipping: qemu-system-x86_64 is not installed");
        return None;
    }
    let out = root().join("target/tmp/nines-guest-image");
    let st = Command::new(root().join("scripts/build-guest-image.sh"))
        .arg(&out)
        .current_dir(root())
        .status()
        .expect("run scripts/build-guest-image.sh");
    assert!(st.success(), "the guest image did not build");
    Some(out)
}

/// One nested cluster at a time: each boots two TCG guests, and this machine has two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `nines bench SCENARIO --runs N --json` on the image; its JSON object. Every run's
/// fault must have been the guest's node failover (the VM's cleanup as its fence).
fn bench(scenario: &str, runs: u32) -> Option<Value> {
    bench_handled_by(scenario, runs, &["-> node-failover"])
}

/// As [`bench`], with every run handled by one of `handling` (as the bench's run lines say).
fn bench_handled_by(scenario: &str, runs: u32, handling: &[&str]) -> Option<Value> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let image = image()?;
    let out = Command::new(EXE)
        .args([
            "bench",
            scenario,
            "--runs",
            &runs.to_string(),
            "--json",
            "--seed",
            "7",
        ])
        .arg("--image")
        .arg(&image)
        .output()
        .expect("run nines bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "nines bench {scenario} failed:\n{stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["scenario"], scenario);
    assert_eq!(v["runs"], runs);
    assert_eq!(v["counter_regressions"], 0, "{stderr}");
    for metric in ["outage_ms", "reaction_ms", "recovery_ms", "repair_ms"] {
        assert!(v[metric]["p50"].as_f64().is_some(), "{metric} in {v}");
    }
    let faults: usize = handling.iter().map(|h| stderr.matches(h).count()).sum();
    assert_eq!(faults, runs as usize, "{stderr}");
    assert_no_qemu_left(&image);
    Some(v)
}

/// No QEMU of this image survives the bench (the host agents terminate their VMs).
fn assert_no_qemu_left(image: &std::path::Path) {
    let needle = image.to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("qemu-system") && c.contains(&needle))
        .collect();
    assert!(left.is_empty(), "QEMU left running: {left:?}");
}

#[test]
fn a_killed_vm_fails_its_guests_counter_over_to_the_other_guest_without_losing_a_value() {
    // QEMU's death is reported twice: by the host agent (the VM component exited: its
    // restart) and by the director (the link to the guest broke: its node failover).
    // Whichever comes first opens the fault and the other joins it; either way the guest's
    // work fails over once the VM is cleaned up.
    let Some(v) = bench_handled_by("vm-kill", 2, &["-> node-failover", "-> component-restart"])
    else {
        return;
    };
    // The VM came back and its guest rejoined: repair is measured.
    assert!(
        v["repair_ms"]["max"].as_f64().is_some_and(|r| r > 0.0),
        "{v}"
    );
}

#[test]
fn a_hung_vm_is_reset_through_its_guests_lost_heartbeats() {
    bench("vm-hang", 1);
}

#[test]
fn repeated_errors_inside_a_guest_escalate_to_a_restart_of_its_vm() {
    let Some(v) = bench("vm-escalation", 1) else {
        return;
    };
    // The counter failed over to the other guest instead of waiting for the reset VM to boot:
    // one error report is one fault (a second request to the new active would reset both VMs),
    // and the app's gap is shorter than the VM's repair.
    let outage = v["outage_ms"]["max"].as_f64().unwrap_or(f64::NAN);
    let repair = v["repair_ms"]["max"].as_f64().unwrap_or(f64::NAN);
    assert!(
        outage < repair,
        "outage {outage} ms, repair {repair} ms: {v}"
    );
}

#[test]
fn locking_a_host_live_migrates_its_vm_and_the_counter_inside_keeps_serving() {
    // The bench fails the run if the lock opened any fault (no failover, no VM restart), if
    // either migration failed, or if the counter went back.
    let Some(v) = bench_handled_by("vm-migrate", 1, &["-> live-migration"]) else {
        return;
    };
    // Both moves happened and were timed: away on lock (recovery) and home on unlock (repair).
    for metric in ["recovery_ms", "repair_ms"] {
        assert!(
            v[metric]["max"].as_f64().is_some_and(|t| t > 0.0),
            "{metric} in {v}"
        );
    }
    // A hang guard, not a speed goal: a migration's gap is far below a VM's reboot.
    assert!(
        v["outage_ms"]["max"].as_f64().is_some_and(|o| o < 30_000.0),
        "{v}"
    );
}
