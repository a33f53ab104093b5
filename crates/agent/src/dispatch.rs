//! What the agent does with each message of a registered component.
//!
//! Answers (`Response`, `QuiescingComplete`, `HealthcheckConfirm`) complete the request they
//! name, if it is still pending; an answer to an expired request is logged and dropped, since
//! its timeout was already reported. Error reports become failures of the incarnation (once).
//! Checkpoint and protection-group requests are served from the host's shared state.

use std::sync::Arc;

use nines_engine::{FaultKind, HaState, Input, Outcome};
use nines_model::EntityRef;
use nines_proto::{ToAgent, ToComponent};

use crate::agent::Agent;
use crate::session::{Pending, SendError, SessionLink};
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
                    if !ok {
                        link.forget_quiescing(invocation);
                        tracing::warn!(component = %path, csi = %agent.model.csis[csi.index()].path, "refused a CSI assignment");
                    }
                    agent.report(
                        agent.clock.now(),
                        Input::CsiAssigned {
                            comp,
                            csi,
                            ha_state: ha,
                            outcome,
                        },
                    );
                    if ok {
                        agent.set_membership(comp, csi, Some(ha));
                    }
                }
                Some(Pending::Remove { csi }) => {
                    agent.report(agent.clock.now(), Input::CsiRemoved { comp, csi, outcome });
                    agent.set_membership(comp, csi, None);
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
                    agent.report(agent.clock.now(), Input::QuiescingComplete { comp, csi });
                    agent.set_membership(comp, csi, Some(HaState::Quiesced));
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
            sync: _,
        } => {
            // On one host a local store is all the replication there is: sync and async writes
            // are both acknowledged once stored. Under `while_open`: once the agent saw the
            // process end, its writes still in the socket are dropped rather than applied after
            // the engine heard of the exit.
            let stored =
                link.while_open(|| agent.host.checkpoints.write(&checkpoint, &section, data));
            let Some(stored) = stored else {
                tracing::debug!(component = %path, %checkpoint, "checkpoint write after the session closed; dropped");
                return;
            };
            let reply = match stored {
                Ok(()) => ToComponent::CheckpointAck {
                    request,
                    ok: true,
                    reason: None,
                },
                Err(reason) => {
                    tracing::warn!(component = %path, %checkpoint, %reason, "checkpoint write refused");
                    ToComponent::CheckpointAck {
                        request,
                        ok: false,
                        reason: Some(reason),
                    }
                }
            };
            let _ = link.send(&reply);
        }
        ToAgent::CheckpointRead {
            request,
            checkpoint,
        } => {
            let sections = agent.host.checkpoints.read(&checkpoint);
            if let Err(SendError::TooLarge(e)) =
                link.send(&ToComponent::CheckpointData { request, sections })
            {
                let _ = link.send(&ToComponent::CheckpointAck {
                    request,
                    ok: false,
                    reason: Some(format!(
                        "checkpoint {checkpoint} does not fit in a reply: {e}"
                    )),
                });
            }
        }
    }
}
