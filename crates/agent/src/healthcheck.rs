//! Active health monitoring: AMF-invoked healthchecks of SA-aware components, and the external
//! `monitor` command.
//!
//! Both watch one incarnation and stop on their own as soon as it is no longer running, or has
//! already been reported failed: a hung component is reported once, and the engine's cleanup
//! follows.

use std::sync::Arc;
use std::time::Duration;

use nines_engine::FaultKind;
use nines_model::CompId;
use nines_proto::ToComponent;
use tokio::sync::oneshot;
use tokio::time::{interval_at, MissedTickBehavior};

use crate::agent::{Agent, Phase};
use crate::commands::{self, CommandResult, CommandSpec};
use crate::session::Pending;

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
