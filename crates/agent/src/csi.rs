//! CSI assignment and removal: callbacks to SA-aware components, immediate answers for others.
//!
//! A process component has no way to take or drop work at run time (it got its CSI attributes
//! in its environment), so its assignments are confirmed at once, and a quiescing one completes
//! at once. So are a VM's: the guest is not SA-aware (an application inside has its own
//! cluster, if any). An SA-aware component gets a `CsiSet`/`CsiRemove` with a fresh invocation; whichever
//! comes first, its `Response` (handled in [`crate::session`]) or the callback timeout, answers
//! the engine, exactly once. A CSI with a floating IP ([`crate::vip`]) is answered once the
//! address has followed the confirmed state.

use std::sync::Arc;

use nines_engine::{HaState, Input, Outcome};
use nines_model::{CompId, CompKind, CsiId};
use nines_proto::ToComponent;

use crate::agent::{Agent, Phase};
use crate::session::{Pending, SessionLink};
use crate::vip;
use crate::wire::ha_to_wire;

/// Which callback, for the shared path.
#[derive(Clone, Copy)]
enum Callback {
    Assign(HaState),
    Remove,
}

fn answer(agent: &Agent, comp: CompId, csi: CsiId, cb: &Callback, outcome: Outcome) {
    let at = agent.clock.now();
    match cb {
        Callback::Assign(ha_state) => agent.report(
            at,
            Input::CsiAssigned {
                comp,
                csi,
                ha_state: *ha_state,
                outcome,
            },
        ),
        Callback::Remove => agent.report(at, Input::CsiRemoved { comp, csi, outcome }),
    }
}

/// Give `comp` the CSI in `ha` (answer `CsiAssigned`).
pub(crate) fn assign(agent: &Arc<Agent>, comp: CompId, csi: CsiId, ha: HaState) {
    callback(agent, comp, csi, Callback::Assign(ha));
}

/// Take the CSI away from `comp` (answer `CsiRemoved`).
pub(crate) fn remove(agent: &Arc<Agent>, comp: CompId, csi: CsiId) {
    callback(agent, comp, csi, Callback::Remove);
}

fn callback(agent: &Arc<Agent>, comp: CompId, csi: CsiId, cb: Callback) {
    let m = agent.comp(comp);
    if !agent.valid_csi(csi) {
        tracing::error!(component = %m.path, csi = csi.0, "CSI callback for an unknown CSI");
        return answer(agent, comp, csi, &cb, Outcome::Failed);
    }
    let csi_path = &agent.model.csis[csi.index()].path;
    let (running, link) = {
        let comps = agent.comps();
        match comps.get(&comp) {
            Some(i) if i.phase == Phase::Running => (true, i.session.clone()),
            _ => (false, None),
        }
    };
    if !running {
        return match cb {
            Callback::Assign(_) => {
                tracing::warn!(component = %m.path, csi = %csi_path, "cannot assign: component not running");
                answer(agent, comp, csi, &cb, Outcome::Failed)
            }
            // Nothing runs that could hold it: it is gone, as asked.
            Callback::Remove => removed(agent, comp, csi, Outcome::Ok),
        };
    }
    if m.kind != CompKind::SaAware {
        return match cb {
            Callback::Assign(ha) => {
                let a = agent.clone();
                vip::settle(agent, comp, csi, Some(ha), move |outcome| {
                    answer(&a, comp, csi, &cb, outcome);
                    if outcome != Outcome::Ok {
                        return;
                    }
                    if ha == HaState::Quiescing {
                        a.report(a.clock.now(), Input::QuiescingComplete { comp, csi });
                        a.set_membership(comp, csi, Some(HaState::Quiesced));
                    } else {
                        a.set_membership(comp, csi, Some(ha));
                    }
                });
            }
            Callback::Remove => removed(agent, comp, csi, Outcome::Ok),
        };
    }
    let Some(link) = link else {
        tracing::warn!(component = %m.path, csi = %csi_path, "no session to send the CSI callback on");
        return match cb {
            Callback::Remove => removed(agent, comp, csi, Outcome::Failed),
            Callback::Assign(_) => answer(agent, comp, csi, &cb, Outcome::Failed),
        };
    };
    send_callback(agent, comp, csi, cb, link);
}

/// The CSI is no longer `comp`'s (removed, or its removal answered `outcome` otherwise): let
/// go of its floating IP, then record it and answer the engine.
pub(crate) fn removed(agent: &Arc<Agent>, comp: CompId, csi: CsiId, outcome: Outcome) {
    let a = agent.clone();
    vip::settle(agent, comp, csi, None, move |_| {
        a.set_membership(comp, csi, None);
        answer(&a, comp, csi, &Callback::Remove, outcome);
    });
}

fn send_callback(
    agent: &Arc<Agent>,
    comp: CompId,
    csi: CsiId,
    cb: Callback,
    link: Arc<SessionLink>,
) {
    let c = &agent.model.csis[csi.index()];
    let si = agent.model.sis[c.si.index()].path.clone();
    let invocation = agent.next_id();
    let msg = match cb {
        Callback::Assign(ha) => {
            link.add_pending(invocation, Pending::Assign { csi, ha });
            if ha == HaState::Quiescing {
                link.expect_quiescing(invocation, csi);
            }
            let attrs: Vec<(String, String)> = c
                .attrs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let checkpoint = (ha == HaState::Active)
                .then(|| agent.host.checkpoints.snapshot_for_activation(&si, &attrs))
                .flatten();
            ToComponent::CsiSet {
                invocation,
                csi: c.path.clone(),
                ha: ha_to_wire(ha),
                attrs,
                checkpoint,
                si,
            }
        }
        Callback::Remove => {
            link.add_pending(invocation, Pending::Remove { csi });
            ToComponent::CsiRemove {
                invocation,
                si,
                csi: c.path.clone(),
            }
        }
    };
    // A send that fails (session closing, frame too large) leaves the callback to time out.
    if let Err(e) = link.send(&msg) {
        tracing::warn!(component = %agent.comp(comp).path, error = %e, "cannot send CSI callback");
    }
    let limit = agent.comp(comp).timeouts.callback;
    let a = agent.clone();
    tokio::spawn(async move {
        tokio::time::sleep(limit).await;
        let Some(pending) = link.take_pending(invocation) else {
            return; // answered
        };
        link.forget_quiescing(invocation);
        tracing::warn!(
            component = %a.comp(comp).path,
            csi = %a.model.csis[csi.index()].path,
            invocation,
            timeout = ?limit,
            "CSI callback not answered in time"
        );
        match pending {
            Pending::Assign { ha, .. } => {
                answer(&a, comp, csi, &Callback::Assign(ha), Outcome::TimedOut)
            }
            Pending::Remove { .. } => removed(&a, comp, csi, Outcome::TimedOut),
            _ => {}
        }
    });
}
