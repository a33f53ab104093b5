//! What the agent does with each message of a registered component.
//!
//! Answers (`Response`, `QuiescingComplete`, `HealthcheckConfirm`) complete the request they
//! name, if it is still pending; an answer to an expired request is logged and dropped, since
//! its timeout was already reported. Error reports become failures of the incarnation (once).
//! Checkpoint and protection-group requests are served from the host's shared state; a sync
//! checkpoint write is acknowledged, an async one is answered only if refused. Component-invoked
//! healthchecks are started, confirmed and stopped on the session ([`crate::healthcheck`]);
//! a request that makes no sense is refused with a reason, never acted on.
//!
//! Messages of one session are handled one at a time, in the order sent: that is what lets a
//! component rely on its asynchronous writes being applied before its next read or flush.
//! The engine's answers for a CSI with a floating IP wait for the address ([`crate::vip`]),
//! still in order: a `QuiescingComplete` never overtakes the assignment answer before it.

use std::sync::Arc;

use nines_engine::{FaultKind, HaState, Input, Outcome};
use nines_model::EntityRef;
use nines_proto::{ToAgent, ToComponent};

use crate::agent::Agent;
use crate::checkpoint::{Durability, ReplicaWrite, REPLICATION_TIMEOUT};
use crate::healthcheck;
use crate::session::{Pending, SendError, SessionLink};
use crate::vip;
use crate::wire::recovery_from_wire;

/// Act on one message of a registered component.
pub(crate) fn handle(agent: &Arc<Agent>, link: &Arc<SessionLink>, msg: ToAgent) {
    let comp = link.comp;
    let path = &agent.comp(comp).path;
    match msg {
        ToAgent::Register { .. } => {
            tracing::warn!(component = %path, "second Register on a session; ignored");
        }
        ToAgent::Response { invocation, ok } => {
            let outcome = if ok { Outcome::Ok } else { Outcome::Failed };
            match link.take_pending(invocation) {
                Some(Pending::Assign { csi, ha }) => {
                    let a = agent.clone();
                    let assigned = move |outcome| {
                        a.report(
                            a.clock.now(),
                            Input::CsiAssigned {
                                comp,
                                csi,
                                ha_state: ha,
                                outcome,
                            },
                        );
                        if outcome == Outcome::Ok {
                            a.set_membership(comp, csi, Some(ha));
                        }
                    };
                    if ok {
                        // The floating IP follows first, so `Ok` means clients can reach it.
                        vip::settle(agent, comp, csi, Some(ha), assigned);
                    } else {
                        link.forget_quiescing(invocation);
                        tracing::warn!(component = %path, csi = %agent.model.csis[csi.index()].path, "refused a CSI assignment");
                        vip::after(agent, csi, move || assigned(outcome));
                    }
                }
                Some(Pending::Remove { csi }) => {
                    let a = agent.clone();
                    vip::settle(agent, comp, csi, None, move |_| {
                        a.report(a.clock.now(), Input::CsiRemoved { comp, csi, outcome });
                        a.set_membership(comp, csi, None);
                    });
                }
                Some(Pending::Terminate(tx)) => {
                    let _ = tx.send(ok);
                }
                Some(p @ Pending::Healthcheck(_)) => {
                    tracing::warn!(component = %path, invocation, "Response to a healthcheck; expected HealthcheckConfirm");
                    link.add_pending(invocation, p);
                }
                None => {
                    tracing::warn!(component = %path, invocation, "Response to an unknown or expired invocation");
                }
            }
        }
        ToAgent::QuiescingComplete { invocation } => {
            let csi = link.take_quiescing(invocation);
            match csi {
                Some(csi) => {
                    // After the quiescing answer, which may still wait for its floating IP.
                    let a = agent.clone();
                    vip::after(agent, csi, move || {
                        a.report(a.clock.now(), Input::QuiescingComplete { comp, csi });
                        a.set_membership(comp, csi, Some(HaState::Quiesced));
                    });
                }
                None => {
                    tracing::warn!(component = %path, invocation, "QuiescingComplete for no quiescing callback")
                }
            }
        }
        ToAgent::HealthcheckConfirm { invocation } => match link.take_pending(invocation) {
            Some(Pending::Healthcheck(tx)) => {
                let _ = tx.send(());
            }
            Some(other) => {
                tracing::warn!(component = %path, invocation, "HealthcheckConfirm for a callback");
                link.add_pending(invocation, other);
            }
            None => tracing::debug!(component = %path, invocation, "late healthcheck confirmation"),
        },
        ToAgent::ErrorReport { recommended } => {
            let at = agent.clock.now();
            let recommended = recovery_from_wire(recommended);
            if agent.fail(comp, link.gen, FaultKind::ErrorReport, recommended, at) {
                tracing::warn!(component = %path, ?recommended, "component reports an error");
            } else {
                tracing::info!(component = %path, "error report for a component already failed or stopping; ignored");
            }
        }
        ToAgent::TrackProtectionGroup { si } => match agent.model.find(&si) {
            Some(EntityRef::Si(id)) => agent.groups().track(&agent.model, id, link.clone()),
            _ => tracing::warn!(component = %path, si = %si, "cannot track an unknown SI"),
        },
        ToAgent::CheckpointWrite {
            request,
            checkpoint,
            section,
            data,
            sync,
        } => {
            let durability = Durability::of_write(sync);
            let replicator = agent.replicator.get().cloned();
            let replica = replicator.as_ref().map(|_| ReplicaWrite {
                checkpoint: checkpoint.clone(),
                section: section.clone(),
                data: data.clone(),
            });
            // Under `while_open`: once the agent saw the process end, its writes still in the
            // socket are dropped rather than applied after the engine heard of the exit.
            let stored = link.while_open(|| {
                agent
                    .host
                    .checkpoints
                    .write(&checkpoint, &section, data, durability)
            });
            let Some(result) = stored else {
                tracing::debug!(component = %path, %checkpoint, "checkpoint write after the session closed; dropped");
                return;
            };
            if let Err(reason) = &result {
                tracing::warn!(component = %path, %checkpoint, %section, sync, %reason, "checkpoint write refused");
            }
            if let (Ok(()), Some(r)) = (&result, &replicator) {
                // Stored here; the standbys' nodes get it in order. A sync writer hears back
                // once they have it.
                let wait = r.replicate(replica, durability == Durability::Standby);
                if let Some(wait) = wait {
                    answer_when_replicated(agent, link, request, wait);
                }
                return;
            }
            let reply = match (result, durability) {
                (Ok(()), Durability::Local) => return,
                (result, Durability::Standby) => checkpoint_ack(request, result),
                (Err(reason), Durability::Local) => ToComponent::CheckpointWriteRefused {
                    request,
                    checkpoint,
                    section,
                    reason,
                },
            };
            let _ = link.send(&reply);
        }
        ToAgent::CheckpointFlush { request } => {
            if let Some(r) = agent.replicator.get() {
                if let Some(wait) = r.replicate(None, true) {
                    return answer_when_replicated(agent, link, request, wait);
                }
            }
            let result = agent.host.checkpoints.flush();
            let _ = link.send(&checkpoint_ack(request, result));
        }
        ToAgent::HealthcheckStart {
            request,
            key,
            period,
            max_duration,
        } => {
            let result =
                healthcheck::start_component_invoked(agent, link, &key, period, max_duration);
            match &result {
                Ok(()) => {
                    tracing::info!(component = %path, %key, ?period, ?max_duration, "component-invoked healthcheck started")
                }
                Err(reason) => {
                    tracing::warn!(component = %path, %key, %reason, "healthcheck start refused")
                }
            }
            let _ = link.send(&healthcheck_ack(request, result));
        }
        ToAgent::HealthcheckStop { request, key } => {
            let result = if link.stop_self_check(&key) {
                tracing::info!(component = %path, %key, "component-invoked healthcheck stopped");
                Ok(())
            } else {
                tracing::warn!(component = %path, %key, "stop of a healthcheck that is not running");
                Err(format!("healthcheck {key:?} is not running"))
            };
            let _ = link.send(&healthcheck_ack(request, result));
        }
        ToAgent::HealthcheckSelfConfirm { key } => {
            if !link.confirm_self_check(&key) {
                if link.first_stray_confirm() {
                    tracing::warn!(component = %path, %key, "confirmation of a healthcheck that is not running; ignored (further ones are logged at debug level)");
                } else {
                    tracing::debug!(component = %path, %key, "confirmation of a healthcheck that is not running; ignored");
                }
            }
        }
        ToAgent::CheckpointRead {
            request,
            checkpoint,
        } => {
            let sections = agent.host.checkpoints.read(&checkpoint);
            if let Err(SendError::TooLarge(e)) =
                link.send(&ToComponent::CheckpointData { request, sections })
            {
                let _ = link.send(&checkpoint_ack(
                    request,
                    Err(format!(
                        "checkpoint {checkpoint} does not fit in a reply: {e}"
                    )),
                ));
            }
        }
    }
}

/// The answer to a checkpoint request that succeeded or was refused.
/// Answers checkpoint request `request` once its replication is acknowledged (or failed, or
/// [`REPLICATION_TIMEOUT`] passed).
fn answer_when_replicated(
    agent: &Arc<Agent>,
    link: &Arc<SessionLink>,
    request: u64,
    wait: tokio::sync::oneshot::Receiver<Result<(), String>>,
) {
    let link = link.clone();
    agent.rt.spawn(async move {
        let result = match tokio::time::timeout(REPLICATION_TIMEOUT, wait).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the replication was abandoned".to_string()),
            Err(_) => Err(format!(
                "no acknowledgement from the standbys' nodes within {REPLICATION_TIMEOUT:?}"
            )),
        };
        let _ = link.send(&checkpoint_ack(request, result));
    });
}

fn checkpoint_ack(request: u64, result: Result<(), String>) -> ToComponent {
    let (ok, reason) = ok_reason(result);
    ToComponent::CheckpointAck {
        request,
        ok,
        reason,
    }
}

/// The answer to a healthcheck start or stop.
fn healthcheck_ack(request: u64, result: Result<(), String>) -> ToComponent {
    let (ok, reason) = ok_reason(result);
    ToComponent::HealthcheckAck {
        request,
        ok,
        reason,
    }
}

fn ok_reason(result: Result<(), String>) -> (bool, Option<String>) {
    match result {
        Ok(()) => (true, None),
        Err(reason) => (false, Some(reason)),
    }
}
