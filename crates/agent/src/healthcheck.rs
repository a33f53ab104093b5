//! Active health monitoring: healthchecks of SA-aware components, AMF-invoked (configured; the
//! agent asks, the component answers) and component-invoked (the component starts them and
//! confirms on its own), and the external `monitor` command.
//!
//! All of them watch one incarnation and stop on their own as soon as it is no longer running,
//! or has already been reported failed: a hung component is reported once, and the engine's
//! cleanup follows. A missed healthcheck of either kind is the same fact for the engine,
//! `ComponentFailed { kind: HealthcheckMissed }`.

use std::sync::Arc;
use std::time::Duration;

use nines_engine::FaultKind;
use nines_model::CompId;
use nines_proto::{ToComponent, MAX_HEALTHCHECK_PERIOD};
use tokio::sync::{oneshot, watch};
use tokio::time::{interval_at, MissedTickBehavior};

use crate::agent::{Agent, Phase};
use crate::commands::{self, CommandResult, CommandSpec};
use crate::session::{Beat, Pending, SessionLink};

/// How often the `monitor` command of a component runs. One second matches the granularity an
/// external check can offer without loading the host (each run is a fork and exec); faster
/// detection is what SA-aware healthchecks are for.
pub const MONITOR_PERIOD: Duration = Duration::from_secs(1);

/// How long one run of the `monitor` command may take before it counts as failed (and is
/// killed). Equal to the period, so runs never overlap.
pub const MONITOR_TIMEOUT: Duration = Duration::from_secs(1);

/// Start the `monitor` command loop for incarnation `gen`, if the component has one.
pub(crate) fn start_monitor(agent: &Arc<Agent>, comp: CompId, gen: u64) {
    if agent.comp(comp).monitor.is_none() {
        return;
    }
    let a = agent.clone();
    tokio::spawn(async move { monitor_loop(&a, comp, gen).await });
}

async fn monitor_loop(agent: &Arc<Agent>, comp: CompId, gen: u64) {
    let m = agent.comp(comp);
    let Some(argv) = &m.monitor else { return };
    let mut tick = interval_at(tokio::time::Instant::now() + MONITOR_PERIOD, MONITOR_PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pid = {
            let comps = agent.comps();
            match comps.get(&comp) {
                Some(i) if i.gen == gen && i.phase == Phase::Running && !i.failed => i.proc.pid(),
                _ => return,
            }
        };
        let env = agent.command_env(comp, Some(pid));
        let log = agent.log_path(comp);
        let spec = CommandSpec {
            what: "monitor",
            component: &m.path,
            argv,
            env: &env,
            log: log.as_deref(),
        };
        let result = commands::run(&spec, MONITOR_TIMEOUT, agent.clock, &agent.live).await;
        if result == CommandResult::Success {
            continue;
        }
        let at = agent.clock.now();
        if agent.fail(comp, gen, FaultKind::HealthcheckMissed, None, at) {
            tracing::warn!(component = %m.path, ?result, "monitor command reports a failure");
        }
        return;
    }
}

/// Start healthchecking incarnation `gen` (just registered), if the component has a healthcheck.
pub(crate) fn start_healthcheck(agent: &Arc<Agent>, comp: CompId, gen: u64) {
    let Some(hc) = agent.comp(comp).healthcheck else {
        return;
    };
    let a = agent.clone();
    tokio::spawn(async move { healthcheck_loop(&a, comp, gen, hc).await });
}

async fn healthcheck_loop(
    agent: &Arc<Agent>,
    comp: CompId,
    gen: u64,
    hc: nines_model::Healthcheck,
) {
    let path = &agent.comp(comp).path;
    let mut tick = interval_at(tokio::time::Instant::now() + hc.period, hc.period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let link = {
            let comps = agent.comps();
            match comps.get(&comp) {
                Some(i) if i.gen == gen && i.phase == Phase::Running && !i.failed => {
                    i.session.clone()
                }
                _ => return,
            }
        };
        let invocation = agent.next_id();
        let (tx, rx) = oneshot::channel();
        // Without a session (it was closed) the check cannot be answered and times out, which
        // is the truth: nobody can vouch for the component any more.
        let mut _unanswerable = None;
        match &link {
            Some(link) => {
                link.add_pending(invocation, Pending::Healthcheck(tx));
                let _ = link.send(&ToComponent::Healthcheck { invocation });
            }
            None => _unanswerable = Some(tx),
        }
        let confirmed = matches!(tokio::time::timeout(hc.max_duration, rx).await, Ok(Ok(())));
        if confirmed {
            continue;
        }
        if let Some(link) = &link {
            link.take_pending(invocation);
        }
        let at = agent.clock.now();
        if agent.fail(comp, gen, FaultKind::HealthcheckMissed, None, at) {
            tracing::warn!(
                component = %path,
                invocation,
                max_duration = ?hc.max_duration,
                "healthcheck not confirmed in time"
            );
        }
        return;
    }
}

/// Start the component-invoked healthcheck `key` that the component asked for on `link`, or
/// say why not (the reason goes back to the component).
pub(crate) fn start_component_invoked(
    agent: &Arc<Agent>,
    link: &SessionLink,
    key: &str,
    period: Duration,
    max_duration: Duration,
) -> Result<(), String> {
    if key.is_empty() {
        return Err("a healthcheck key must not be empty".into());
    }
    for (name, d) in [("period", period), ("max_duration", max_duration)] {
        if d.is_zero() {
            return Err(format!(
                "healthcheck {key:?}: {name} must be greater than zero"
            ));
        }
        if d > MAX_HEALTHCHECK_PERIOD {
            return Err(format!(
                "healthcheck {key:?}: {name} {d:?} exceeds the limit of {MAX_HEALTHCHECK_PERIOD:?}"
            ));
        }
    }
    let beats = link.start_self_check(key)?;
    let a = agent.clone();
    let (comp, gen, key) = (link.comp, link.gen, key.to_owned());
    tokio::spawn(async move {
        component_invoked_loop(&a, comp, gen, &key, period + max_duration, beats).await
    });
    Ok(())
}

/// Watch one component-invoked healthcheck: every beat from the session moves the deadline
/// to `limit` from now; reaching it is a missed healthcheck. Ends when the component stops the
/// check, the agent stops, or the incarnation is gone.
async fn component_invoked_loop(
    agent: &Arc<Agent>,
    comp: CompId,
    gen: u64,
    key: &str,
    limit: Duration,
    mut beats: watch::Receiver<Beat>,
) {
    let mut stop = agent.stop.subscribe();
    let mut deadline = tokio::time::Instant::now() + limit;
    let mut session_open = true;
    loop {
        tokio::select! {
            changed = beats.changed(), if session_open => match changed {
                Ok(()) => match *beats.borrow_and_update() {
                    Beat::Stopped => return,
                    Beat::Started | Beat::Confirmed => {
                        deadline = tokio::time::Instant::now() + limit;
                    }
                },
                // The session is gone, so nobody can confirm any more. If the process runs on,
                // that is the truth the deadline will tell; if it is gone, its exit was reported.
                Err(_) => {
                    if !running(agent, comp, gen) {
                        return;
                    }
                    session_open = false;
                }
            },
            () = tokio::time::sleep_until(deadline) => break,
            () = crate::agent::stopped(&mut stop) => return,
        }
    }
    let at = agent.clock.now();
    if agent.fail(comp, gen, FaultKind::HealthcheckMissed, None, at) {
        tracing::warn!(
            component = %agent.comp(comp).path,
            key,
            limit = ?limit,
            "component-invoked healthcheck not confirmed in time"
        );
    }
}

/// Whether incarnation `gen` of `comp` runs and has not been reported failed.
fn running(agent: &Agent, comp: CompId, gen: u64) -> bool {
    agent
        .comps()
        .get(&comp)
        .is_some_and(|i| i.gen == gen && i.phase == Phase::Running && !i.failed)
}
