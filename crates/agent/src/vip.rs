//! Floating IPs: the CSI attribute `vip` (`ADDR/PREFIX` or `ADDR/PREFIX@IFACE`) puts the
//! address on whichever node holds the CSI *active*, so clients keep one address while the
//! service moves.
//!
//! The agent follows what its components *confirmed*, like protection groups do: an active
//! assignment takes the address once the component accepted it, and the engine hears `Ok`
//! only after the address is on and announced (so its "service recovered" is when clients can
//! reach it); an acquire that fails, or an attribute that does not parse, answers `Failed`.
//! Every other confirmed state (standby, quiescing, quiesced) and a removal let go of it
//! before they are answered, so the next active takes a free address; a component's exit,
//! stop or cleanup, and the agent's start and stop, let go of it too (nobody waits for those).
//!
//! The netlink calls are async and never run on the caller's thread: every floating IP has
//! one *lane*, a task that carries out its changes one at a time, in the order they were
//! asked, each bounded by [`VIP_TIMEOUT`], and then sends the answer that waited for it. The
//! order matters twice: a release asked after an acquire must not overtake it (the address
//! would stay), and an answer must not overtake the one before it for the same CSI (a
//! quiescing component's `QuiescingComplete` after its `CsiAssigned`). CSIs without the
//! attribute take none of this path: their answers go out at once, as before.
//!
//! Lanes belong to the [`Host`](crate::host::Host): agents of one cluster in one process (the
//! nodes of `nines run`) share one network namespace, so the address is on while *any* of
//! them claims it, and one node's release cannot remove what another just took. Each lane
//! keeps its claims as `(component, CSI)` pairs. All netlink calls happen in the network
//! namespace of the runtime's threads, which is the agent's.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nines_engine::{HaState, Outcome};
use nines_model::{CompId, CsiId, Model, NodeId};
use nines_vip::{ParseError, Vip, VipSpec};
use tokio::sync::{mpsc, oneshot, watch};

use crate::agent::Agent;

/// The CSI attribute that names a floating IP (`ADDR/PREFIX[@IFACE]`, see
/// [`nines_vip::VipSpec`]); other attributes are the component's own.
pub const VIP_ATTR: &str = "vip";

/// The longest one floating-IP change (resolving the interface, adding or removing the
/// address, the first announcement) may take; a netlink round trip takes microseconds, so
/// this only catches a kernel that does not answer. A change that takes longer counts as
/// failed: an acquire answers the assignment `Failed`.
pub const VIP_TIMEOUT: Duration = Duration::from_secs(2);

/// What a confirmed HA state (or `None`: no longer held) means for the CSI's floating IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The component holds the CSI active: the address must be here.
    Hold,
    /// Any other state, or no assignment: this component no longer needs the address.
    Drop,
}

/// The rule: only an active assignment holds the address. Quiescing lets go too: the SI is
/// being taken away, and the address must be free before the next active takes it.
pub(crate) fn claim_for(ha: Option<HaState>) -> Claim {
    match ha {
        Some(HaState::Active) => Claim::Hold,
        Some(HaState::Standby | HaState::Quiescing | HaState::Quiesced) | None => Claim::Drop,
    }
}

/// What a lane does to the address for one change of its claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Add and announce it (again: acquiring a held address re-announces it).
    Acquire,
    /// Remove it (idempotent: also when nothing here holds it, which is how a restarted
    /// agent clears what it held before a fence).
    Release,
    /// Leave it: another component of this host still holds it active.
    Nothing,
}

/// The lane's rule: a claim acquires; dropping the last claim releases; dropping one while
/// others remain leaves the address to them.
pub(crate) fn op_for(claim: Claim, claims_left: usize) -> Op {
    match claim {
        Claim::Hold => Op::Acquire,
        Claim::Drop if claims_left == 0 => Op::Release,
        Claim::Drop => Op::Nothing,
    }
}

/// The `vip` attribute of `csi`, if it has one.
pub(crate) fn attr(model: &Model, csi: CsiId) -> Option<&str> {
    model
        .csis
        .get(csi.index())
        .and_then(|c| c.attrs.get(VIP_ATTR))
        .map(String::as_str)
}

/// A floating IP one component of this node could hold: it serves a CSI with a `vip`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeVip {
    pub comp: CompId,
    pub csi: CsiId,
    pub spec: VipSpec,
}

/// Every floating IP this node's components could hold (the CSIs of every SI of every SG with
/// an SU here, with their serving component here), and the attributes that do not parse.
pub(crate) fn of_node(
    model: &Model,
    node: NodeId,
) -> (Vec<NodeVip>, Vec<(CsiId, String, ParseError)>) {
    let mut vips = Vec::new();
    let mut bad = Vec::new();
    for (i, csi) in model.csis.iter().enumerate() {
        let Some(text) = csi.attrs.get(VIP_ATTR) else {
            continue;
        };
        let id = CsiId(i as u32);
        let sg = model.sis[csi.si.index()].sg;
        let comps: Vec<CompId> = model.sgs[sg.index()]
            .sus
            .iter()
            .filter(|su| model.sus[su.index()].node == node)
            .map(|&su| model.comp_for(su, id))
            .collect();
        if comps.is_empty() {
            continue;
        }
        match text.parse::<VipSpec>() {
            Ok(spec) => vips.extend(comps.into_iter().map(|comp| NodeVip {
                comp,
                csi: id,
                spec: spec.clone(),
            })),
            Err(e) => bad.push((id, text.clone(), e)),
        }
    }
    (vips, bad)
}

/// One change for a lane: claims to add or drop, and the answer that waits for it.
struct Job {
    /// `None`: no change, the answer only keeps its place in line.
    claim: Option<Claim>,
    keys: Vec<(CompId, CsiId)>,
    spec: VipSpec,
    /// For the log (see [`what`]).
    what: String,
    /// The agent that asks; a claim made while it is stopping is refused, so nothing it
    /// acquires outlives its stop.
    stopping: watch::Receiver<bool>,
    done: Box<dyn FnOnce(Result<(), String>) + Send>,
}

impl Job {
    fn new(
        agent: &Agent,
        csi: CsiId,
        spec: VipSpec,
        claim: Option<Claim>,
        keys: Vec<(CompId, CsiId)>,
        done: impl FnOnce(Result<(), String>) + Send + 'static,
    ) -> Job {
        Job {
            claim,
            keys,
            spec,
            what: what(agent, csi),
            stopping: agent.stop.subscribe(),
            done: Box::new(done),
        }
    }
}

/// The lanes of one host, by address.
#[derive(Default)]
pub(crate) struct Lanes {
    lanes: Mutex<HashMap<Ipv4Addr, mpsc::UnboundedSender<Job>>>,
}

impl Lanes {
    /// Queue `job` on its address's lane, starting the lane on `agent`'s runtime if needed
    /// (or again, if the runtime it ran on is gone).
    fn push(&self, agent: &Agent, job: Job) {
        let addr = job.spec.addr();
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let job = match lanes.get(&addr) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        agent.rt.spawn(lane(rx));
        // A fresh receiver is alive until the runtime drops the task; if it is already gone
        // the answer is dropped with the job, as every answer of a dead runtime is.
        let _ = tx.send(job);
        lanes.insert(addr, tx);
    }
}

/// One address's lane: its claims, the interface it was last acquired on, and its changes
/// carried out in order.
async fn lane(mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut claims: BTreeSet<(CompId, CsiId)> = BTreeSet::new();
    let mut held: Option<Vip> = None;
    while let Some(job) = jobs.recv().await {
        let result = match job.claim {
            None => Ok(()),
            Some(Claim::Hold) if *job.stopping.borrow() => {
                Err("the agent is shutting down".to_string())
            }
            Some(claim) => {
                for key in &job.keys {
                    match claim {
                        Claim::Hold => claims.insert(*key),
                        Claim::Drop => claims.remove(key),
                    };
                }
                match op_for(claim, claims.len()) {
                    Op::Acquire => match acquire(&job.spec).await {
                        Ok(vip) => {
                            held = Some(vip);
                            Ok(())
                        }
                        Err(e) => {
                            for key in &job.keys {
                                claims.remove(key);
                            }
                            if claims.is_empty() {
                                // A timed-out acquire may have added the address already.
                                let _ = release(held.take(), &job.spec).await;
                            }
                            Err(e)
                        }
                    },
                    Op::Release => release(held.take(), &job.spec).await,
                    Op::Nothing => Ok(()),
                }
            }
        };
        match (&result, job.claim) {
            (Err(e), Some(Claim::Hold)) => {
                tracing::error!(csi = %job.what, "cannot acquire the floating IP: {e}")
            }
            (Err(e), _) => tracing::error!(csi = %job.what, "cannot release the floating IP: {e}"),
            (Ok(()), Some(claim)) => {
                tracing::debug!(csi = %job.what, ?claim, claims = claims.len(), "floating IP")
            }
            (Ok(()), None) => {}
        }
        (job.done)(result);
    }
}

/// Resolve the interface and add and announce the address, bounded by [`VIP_TIMEOUT`].
async fn acquire(spec: &VipSpec) -> Result<Vip, String> {
    let work = async {
        let vip = spec.clone().resolve().await?;
        let acquired = nines_vip::acquire(&vip).await?;
        tracing::info!(
            %vip,
            already_held = acquired.already_held,
            took = ?acquired.announced - acquired.started,
            "floating IP acquired"
        );
        Ok::<Vip, nines_vip::Error>(vip)
    };
    match tokio::time::timeout(VIP_TIMEOUT, work).await {
        Ok(Ok(vip)) => Ok(vip),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer from the kernel within {VIP_TIMEOUT:?}")),
    }
}

/// Remove the address from where it was acquired, or else from where the spec resolves to
/// (what an earlier agent may have left), bounded by [`VIP_TIMEOUT`]. No interface with a
/// subnet for it means nothing here can hold it: done.
async fn release(held: Option<Vip>, spec: &VipSpec) -> Result<(), String> {
    let work = async {
        let vip = match held {
            Some(vip) => vip,
            None => match spec.clone().resolve().await {
                Ok(vip) => vip,
                Err(nines_vip::Error::NoInterface { .. }) => return Ok(()),
                Err(e) => return Err(e),
            },
        };
        nines_vip::release(&vip).await?;
        tracing::info!(%vip, "floating IP released");
        Ok(())
    };
    match tokio::time::timeout(VIP_TIMEOUT, work).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer from the kernel within {VIP_TIMEOUT:?}")),
    }
}

/// `CSI path (vip ATTR)`, how the log names a floating IP.
fn what(agent: &Agent, csi: CsiId) -> String {
    let path = agent
        .model
        .csis
        .get(csi.index())
        .map_or("?", |c| c.path.as_str());
    let text = attr(&agent.model, csi).unwrap_or_default();
    format!("{path} ({VIP_ATTR} {text})")
}

/// Carry out what `comp` confirming `csi` in `ha` (`None`: removed) means for the CSI's
/// floating IP, then call `then` with the outcome to answer: `Failed` if the component took
/// the CSI active but the address cannot be acquired (or the attribute does not parse), `Ok`
/// otherwise (a failed release is logged: the engine's next step does not depend on it).
///
/// A CSI without a `vip` calls `then` at once, on this thread; one with a `vip` calls it from
/// its lane, after every earlier change of that address.
pub(crate) fn settle(
    agent: &Arc<Agent>,
    comp: CompId,
    csi: CsiId,
    ha: Option<HaState>,
    then: impl FnOnce(Outcome) + Send + 'static,
) {
    let Some(text) = attr(&agent.model, csi) else {
        return then(Outcome::Ok);
    };
    let claim = claim_for(ha);
    let spec = match text.parse::<VipSpec>() {
        Ok(spec) => spec,
        Err(e) if claim == Claim::Hold => {
            tracing::error!(csi = %what(agent, csi), "cannot acquire the floating IP: {e}");
            return then(Outcome::Failed);
        }
        // Never acquired, so nothing to release.
        Err(_) => return then(Outcome::Ok),
    };
    let job = Job::new(agent, csi, spec, Some(claim), vec![(comp, csi)], move |r| {
        then(match (claim, r) {
            (Claim::Hold, Err(_)) => Outcome::Failed,
            _ => Outcome::Ok,
        })
    });
    agent.host.vips.push(agent, job);
}

/// Call `then` once every change of `csi`'s floating IP asked before has been carried out
/// (at once if it has none), so an answer keeps its place after the ones before it.
pub(crate) fn after(agent: &Arc<Agent>, csi: CsiId, then: impl FnOnce() + Send + 'static) {
    let Some(spec) = attr(&agent.model, csi).and_then(|t| t.parse::<VipSpec>().ok()) else {
        return then();
    };
    let job = Job::new(agent, csi, spec, None, Vec::new(), move |_| then());
    agent.host.vips.push(agent, job);
}

/// `comp` holds nothing any more (it exited, or is being stopped or cleaned up): let go of
/// every floating IP it could hold. Nobody waits for it.
pub(crate) fn drop_comp(agent: &Arc<Agent>, comp: CompId) {
    for v in agent.vips.iter().filter(|v| v.comp == comp) {
        let keys = vec![(v.comp, v.csi)];
        let job = Job::new(
            agent,
            v.csi,
            v.spec.clone(),
            Some(Claim::Drop),
            keys,
            |_| {},
        );
        agent.host.vips.push(agent, job);
    }
}

/// Releases of this node's floating IPs, asked for; [`Released::wait`] waits for them.
pub(crate) struct Released(Vec<oneshot::Receiver<()>>);

impl Released {
    /// Wait until every release asked for is carried out, bounded (each change is bounded
    /// by [`VIP_TIMEOUT`]; changes queued before them may add one such bound each).
    pub(crate) async fn wait(self) {
        let all = async {
            for rx in self.0 {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(VIP_TIMEOUT * 2, all).await.is_err() {
            tracing::error!("floating IPs not released within {:?}", VIP_TIMEOUT * 2);
        }
    }
}

/// Let go of every floating IP any component of this node could hold, one change per
/// address: at start (a restarted node must not keep an address from before a fence; a
/// component that still holds the CSI active claims it again when it registers) and at stop.
pub(crate) fn release_node(agent: &Arc<Agent>) -> Released {
    let mut by_addr: HashMap<Ipv4Addr, Vec<&NodeVip>> = HashMap::new();
    for v in agent.vips.iter() {
        by_addr.entry(v.spec.addr()).or_default().push(v);
    }
    let mut waits = Vec::new();
    for (_, vs) in by_addr {
        let Some(first) = vs.first() else { continue };
        let (tx, rx) = oneshot::channel();
        let keys = vs.iter().map(|v| (v.comp, v.csi)).collect();
        let spec = first.spec.clone();
        let job = Job::new(agent, first.csi, spec, Some(Claim::Drop), keys, move |_| {
            let _ = tx.send(());
        });
        agent.host.vips.push(agent, job);
        waits.push(rx);
    }
    Released(waits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(yaml: &str) -> Model {
        match nines_model::load(yaml, "t.yaml") {
            Ok(l) => l.model,
            Err(e) => panic!("bad test config: {e:?}"),
        }
    }

    const CONFIG: &str = "cluster: t
nodes: [n1, n2, n3]
apps:
  app:
    sgs:
      sg:
        redundancy: 2n
        units:
          su1: { node: n1 }
          su2: { node: n2 }
        components:
          c: { kind: process, instantiate: [sleep, '60'] }
          d: { kind: process, instantiate: [sleep, '60'] }
    sis:
      si:
        sg: sg
        csis:
          main: { component: c, attrs: { vip: 10.77.0.100/24 } }
          side: { component: d, attrs: { port: '80' } }
      bad:
        sg: sg
        csis:
          b: { component: d, attrs: { vip: 10.77.0.300/24 } }
";

    #[test]
    fn only_active_holds_the_address() {
        assert_eq!(claim_for(Some(HaState::Active)), Claim::Hold);
        for ha in [
            Some(HaState::Standby),
            Some(HaState::Quiescing),
            Some(HaState::Quiesced),
            None,
        ] {
            assert_eq!(claim_for(ha), Claim::Drop, "{ha:?}");
        }
    }

    #[test]
    fn the_last_claim_dropped_releases_and_a_claim_always_acquires() {
        assert_eq!(op_for(Claim::Hold, 1), Op::Acquire);
        assert_eq!(op_for(Claim::Hold, 2), Op::Acquire);
        assert_eq!(op_for(Claim::Drop, 0), Op::Release);
        assert_eq!(op_for(Claim::Drop, 1), Op::Nothing);
    }

    #[test]
    fn a_node_could_hold_the_vips_of_the_sgs_it_has_units_of() {
        let m = model(CONFIG);
        let main = CsiId(0);
        assert_eq!(m.csis[main.index()].path, "app/si/main");
        assert_eq!(attr(&m, main), Some("10.77.0.100/24"));
        assert_eq!(attr(&m, CsiId(1)), None);
        assert_eq!(attr(&m, CsiId(99)), None);
        for (node, su) in [(0u32, 0usize), (1, 1)] {
            let (vips, bad) = of_node(&m, NodeId(node));
            assert_eq!(vips.len(), 1, "n{}", node + 1);
            assert_eq!(vips[0].csi, main);
            assert_eq!(vips[0].comp, m.sus[su].comps[0]);
            assert_eq!(vips[0].spec.to_string(), "10.77.0.100/24");
            assert_eq!(bad.len(), 1);
            assert_eq!(bad[0].1, "10.77.0.300/24");
            assert!(
                bad[0].2.to_string().contains("`10.77.0.300`"),
                "{}",
                bad[0].2
            );
        }
        // n3 has no unit of the SG: nothing to hold, nothing to complain about.
        assert_eq!(of_node(&m, NodeId(2)), (Vec::new(), Vec::new()));
    }

    #[test]
    fn the_attribute_takes_both_text_forms() {
        let s: VipSpec = "10.77.0.100/24@eth0".parse().expect("valid");
        assert_eq!(s.iface(), Some("eth0"));
        let s: VipSpec = "10.77.0.100/24".parse().expect("valid");
        assert_eq!(s.iface(), None);
        assert!("10.77.0.100".parse::<VipSpec>().is_err());
    }
}
