//! `nines demo`: the 2N counter on this host, a client counting, the active component killed,
//! and what happened, with the outage as the client saw it and as the engine logged it.
//!
//! Builds nothing: the components are `nines-counter` beside this binary, or this binary itself
//! (`nines example counter`), and the config is generated with their absolute path. Everything lives in a temporary state directory that is
//! removed at the end; the exit code is 0 only if the service came back and the counter never
//! went back.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use nines_director::format;
use nines_example_counter::probe::{Mode, Probe, ProbeOptions};
use serde_json::Value;

use crate::bench::{
    active_component, counter_config, free_port, one_fault, self_exe, settled, CounterConfig,
    Harness, Inject, Target, COUNTER_SI,
};
use crate::counter_command::CounterCommand;

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Keep the temporary state directory (event log, component logs) and print its path.
    #[arg(long)]
    keep: bool,
}

pub(crate) fn demo(args: &DemoArgs) -> ExitCode {
    match run_demo(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nines demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How long the client counts before the kill, and after the repair, so that the counting is
/// visible on both sides of the fault.
const COUNTING: Duration = Duration::from_millis(1500);

fn say(msg: impl AsRef<str>) {
    outln!("demo: {}", msg.as_ref());
}

fn run_demo(args: &DemoArgs) -> Result<(), String> {
    let started = Instant::now();
    let exe = self_exe()?;
    let port = free_port()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let counter = CounterCommand::beside(&exe);
    let config = counter_config(&counter, &CounterConfig::two_n(port));
    say(format!(
        "starting a 2N counter service on 127.0.0.1:{port}: counter/sg/su-1 on node-1 \
         (preferred), counter/sg/su-2 on node-2; the components are `{counter}`"
    ));
    let mut h = Harness::start(&config, "demo", args.keep)?;
    if args.keep {
        say(format!("state directory {}", h.dir().display()));
    }
    let status = h.wait_status(Duration::from_secs(60), "the counter's start", |s| {
        settled(s, COUNTER_SI, 1)
    })?;
    let (active, pid) =
        active_component(&status, COUNTER_SI).ok_or("the counter has no active component")?;
    let standby = status
        .holder(COUNTER_SI, "standby")
        .unwrap_or("?")
        .to_owned();
    say(format!(
        "up after {:.0} ms: {active} (pid {pid}) is active, {standby} is standby",
        started.elapsed().as_secs_f64() * 1e3
    ));

    let probe = Probe::start(ProbeOptions::new(addr, Mode::Counter))
        .map_err(|e| format!("cannot start the client: {e}"))?;
    let first = probe
        .wait_answer_after(Instant::now(), Duration::from_secs(10))
        .ok_or("the client gets no answer from the counter")?;
    say(format!(
        "client: sending `inc` continuously (one request in flight, 100 us apart); first answer: {}",
        first.value
    ));
    std::thread::sleep(COUNTING);
    let r = probe.report();
    say(format!(
        "client: {} increments acknowledged so far, counter at {}",
        r.answered,
        r.last_value.unwrap_or(0)
    ));

    say(format!(
        "killing the active component {active} (pid {pid}) with SIGKILL"
    ));
    let before_kill = probe.report();
    let target = Target {
        si: COUNTER_SI,
        standbys: 1,
        addr,
        manual_repair: false,
    };
    let m = one_fault(&mut h, &probe, target, Inject::Kill, Duration::ZERO)?;
    let fault_ns = h.clock.ns(m.fault_at);
    say("what the engine logged, in milliseconds after the kill:");
    for v in &h.history[m.lines.clone()] {
        if !interesting(v) {
            continue;
        }
        let t = v["t_ns"]
            .as_u64()
            .map_or(f64::NAN, |t| (i128::from(t) - fault_ns) as f64 / 1e6);
        if let Some(line) = format::event_line(v) {
            // The formatter starts with the run-relative time; show time since the kill.
            let text = line.trim_start();
            let text = text
                .split_once("  ")
                .map_or(text, |(_, rest)| rest.trim_start());
            outln!("  {t:>+9.3}  {text}");
        }
    }
    say(format!(
        "outage seen by the client: {:.3} ms (last answer before the kill to the first after it)",
        m.gap.outage().as_secs_f64() * 1e3
    ));
    say(format!(
        "outage logged by the engine: {} (failure to the SI active again); detection took {:.3} ms \
         after the kill, the client had its answer {:.3} ms after detection",
        m.engine_outage_ms
            .map_or("-".to_owned(), |o| format!("{o:.3} ms")),
        m.reaction.as_secs_f64() * 1e3,
        m.recovery_time.as_secs_f64() * 1e3
    ));
    let status = h.status()?;
    let (new_active, new_pid) =
        active_component(&status, COUNTER_SI).ok_or("the counter has no active component")?;
    say(format!(
        "{} -> repaired after {:.1} ms: {new_active} (pid {new_pid}) is active, {} is standby again",
        m.recovery,
        m.repair_ms,
        status.holder(COUNTER_SI, "standby").unwrap_or("?")
    ));

    std::thread::sleep(COUNTING);
    let report = probe.stop();
    say(format!(
        "client: {} increments acknowledged in all ({} before the kill), counter at {}; {} \
         attempts failed during the outage (connection reset or refused) and were retried",
        report.answered,
        before_kill.answered,
        report.last_value.unwrap_or(0),
        report.failures.saturating_sub(before_kill.failures)
    ));
    if !report.regressions.is_empty() {
        return Err(format!(
            "the counter went back {} times (first: {:?}): an acknowledged increment was lost",
            report.regressions.len(),
            report.regressions[0]
        ));
    }
    say("the counter never went back: no acknowledged increment was lost in the failover");
    say("stopping every component");
    h.shutdown();
    say(format!("done in {:.1} s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// The lines that tell the story of a failover; the rest (readiness, oper) is in the log.
fn interesting(v: &Value) -> bool {
    matches!(
        v["event"].as_str(),
        Some(
            "fault-detected"
                | "escalated"
                | "assignment"
                | "service-recovered"
                | "repaired"
                | "presence"
        )
    )
}
