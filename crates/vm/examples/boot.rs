//! Boots the service VM and prints timings: spawn → QMP greeting → first HTTP answer, then
//! SIGKILL → pidfd / QMP EOF, and repair (kill → respawn → HTTP), plus the CPU time QEMU spent
//! booting (less sensitive to other load than the wall time). One VM at a time.
//!
//! ```sh
//! cargo run -p nines-vm --example boot            # one run
//! cargo run -p nines-vm --example boot -- 5       # five runs, with medians
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::TestVm;
use nines_vm::QmpEventKind;

fn main() {
    let runs: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 1,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: boot [RUNS]");
            std::process::exit(2);
        }
    };
    let Some(image) = common::image() else {
        std::process::exit(1);
    };
    let (mut boot, mut pidfd, mut eof, mut repair) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut boot_cpu = Vec::new();
    let load_before = common::loadavg();
    let cpu_before = cpu_times();
    let wall = Instant::now();
    common::runtime().block_on(async {
        for run in 0..runs {
            let name = format!("boot{run}");
            let dir = common::vm_dir(&name);
            let port = common::free_port();
            let mut vm = TestVm::spawn(common::spec(image, &name, &dir, port), dir);
            let (qmp, mut events) = common::until_serving(&vm, port).await;
            boot.push(vm.spawned.elapsed());
            if let Some(cpu) = cpu_of(vm.pid()) {
                boot_cpu.push(cpu);
            }

            let killed = Instant::now();
            if let Err(e) = nines_vm::cleanup(Some(vm.pid()), &vm.spec) {
                eprintln!("cleanup: {e}");
                std::process::exit(1);
            }
            vm.exited().await;
            pidfd.push(killed.elapsed());
            let seen = common::wait_event(&mut events, Duration::from_secs(5), |k| {
                matches!(k, QmpEventKind::Closed(_))
            })
            .await;
            if let Some(last) = seen.last() {
                eof.push(last.at.saturating_duration_since(killed));
            }
            drop(qmp);
            vm.reap(Duration::from_secs(5)).await;
            vm.respawn();
            let _qmp = common::until_serving(&vm, port).await;
            repair.push(killed.elapsed());
        }
    });
    let busy = match (cpu_before, cpu_times()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            format!("{:.0} %", 100.0 * (b1 - b0) as f64 / (t1 - t0) as f64)
        }
        _ => "?".into(),
    };
    println!(
        "runs: {runs} (one VM at a time, TCG, 128 MiB, 1 vCPU), {:.1} s",
        wall.elapsed().as_secs_f64()
    );
    println!("spawn -> HTTP:        {}", summary(&boot));
    println!("QEMU CPU time to HTTP: {}", summary(&boot_cpu));
    println!("SIGKILL -> pidfd:     {}", summary(&pidfd));
    println!("SIGKILL -> QMP EOF:   {}", summary(&eof));
    println!("repair (kill -> HTTP): {}", summary(&repair));
    println!(
        "host: load average {load_before} before, {} after; all CPUs {busy} busy meanwhile",
        common::loadavg()
    );
}

/// `median (min-max)` of the samples.
fn summary(samples: &[Duration]) -> String {
    let mut s: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    s.sort_by(f64::total_cmp);
    match (s.first(), s.last()) {
        (Some(min), Some(max)) => {
            let mid = s.len() / 2;
            let median = if s.len() % 2 == 1 {
                s[mid]
            } else {
                (s[mid - 1] + s[mid]) / 2.0
            };
            format!("median {median:.1} ms ({min:.1}-{max:.1}), n={}", s.len())
        }
        _ => "no samples".into(),
    }
}

/// CPU time (user + system) a process used so far, from /proc/PID/stat: how much work a boot
/// is, whatever else competes for the CPUs.
fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // /proc reports in USER_HZ, which is 100 on Linux whatever the kernel's HZ.
    Some(Duration::from_millis(ticks * 10))
}

/// (busy, total) jiffies of all CPUs, from /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}
