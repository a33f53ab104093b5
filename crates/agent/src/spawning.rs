//! Components whose process is being started on the spawner thread, and the actions that wait
//! for it.
//!
//! Instantiation returns before the process exists (see [`crate::spawner`]), but the engine
//! may act on the component meanwhile: clean it up after a fence, terminate it for an admin
//! operation. Such an action must apply to the process being started, not to the previous
//! incarnation or to nothing, so while a spawn is in flight every action for that component
//! is queued here and replayed in order once the new incarnation is recorded. A replayed
//! `Instantiate` may start another spawn; replay then pauses again until that one is done, so
//! the order the engine asked for is the order things happen in.
//!
//! Registration of an SA-aware component and the agent's shutdown wait for the component's
//! spawns to end ([`settled`], [`all_settled`]), so neither can miss an incarnation that is
//! about to be recorded.

use std::collections::HashMap;
use std::sync::Arc;

use nines_engine::ActionKind;
use nines_model::CompId;

use crate::agent::Agent;

/// One component's spawns in flight and the actions waiting for them.
#[derive(Debug, Default)]
pub(crate) struct Spawning {
    jobs: usize,
    deferred: Vec<ActionKind>,
}

/// Every component with a spawn in flight (a component without one has no entry).
pub(crate) type SpawningMap = HashMap<CompId, Spawning>;

/// A spawn of `comp` is queued: until it ends, its actions wait.
pub(crate) fn begin(agent: &Agent, comp: CompId) {
    agent
        .spawning
        .send_modify(|m| m.entry(comp).or_default().jobs += 1);
}

/// Queues `action` if `comp` has a spawn in flight; returns whether it did (the caller then
/// must not carry it out now).
pub(crate) fn defer(agent: &Agent, comp: CompId, action: &ActionKind) -> bool {
    let mut deferred = false;
    agent.spawning.send_if_modified(|m| {
        if let Some(s) = m.get_mut(&comp) {
            s.deferred.push(action.clone());
            deferred = true;
        }
        false
    });
    deferred
}

/// A spawn of `comp` ended (its incarnation is recorded, or the spawn failed). Once no other
/// spawn of it is in flight, the waiting actions are carried out in order with `run`; an
/// action that starts a new spawn pauses the replay until that one ends in turn.
pub(crate) fn end(agent: &Arc<Agent>, comp: CompId) {
    agent.spawning.send_if_modified(|m| match m.get_mut(&comp) {
        Some(s) => {
            s.jobs = s.jobs.saturating_sub(1);
            false
        }
        None => false,
    });
    loop {
        let mut next = None;
        agent.spawning.send_if_modified(|m| {
            let Some(s) = m.get_mut(&comp) else {
                return false;
            };
            if s.jobs > 0 {
                return false;
            }
            if s.deferred.is_empty() {
                m.remove(&comp);
                return true;
            }
            next = Some(s.deferred.remove(0));
            false
        });
        match next {
            Some(action) => crate::actions::run(agent, &action),
            None => return,
        }
    }
}

/// Resolves once `comp` has no spawn in flight.
pub(crate) async fn settled(agent: &Agent, comp: CompId) {
    let mut rx = agent.spawning.subscribe();
    let _ = rx.wait_for(|m| !m.contains_key(&comp)).await;
}

/// Resolves once no component has a spawn in flight.
pub(crate) async fn all_settled(agent: &Agent) {
    let mut rx = agent.spawning.subscribe();
    let _ = rx.wait_for(|m| m.is_empty()).await;
}
