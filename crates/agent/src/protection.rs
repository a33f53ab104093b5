//! Protection groups: which components hold an SI, in which HA state, pushed to trackers.
//!
//! A component that tracks an SI (typically to find its peer for state transfer) gets the
//! current members at once and again on every change. Membership follows what components
//! *confirmed*: a CSI assignment counts once it was answered ok, a quiescing one becomes
//! quiesced when the component reports quiescing complete, and a component leaves every group
//! when its CSI is removed or its process ends. This agent knows only its own node's members;
//! a cluster-wide view comes with the director (issue 4).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use nines_engine::HaState;
use nines_model::{CompId, CsiId, Model, SiId};
use nines_proto::ToComponent;

use crate::session::SessionLink;
use crate::wire::ha_to_wire;

/// Members and trackers of every SI this agent serves.
#[derive(Default)]
pub(crate) struct ProtectionGroups {
    members: HashMap<SiId, BTreeMap<(CompId, CsiId), HaState>>,
    trackers: HashMap<SiId, Vec<Arc<SessionLink>>>,
}

impl ProtectionGroups {
    /// Record that `comp` holds `csi` in `ha` (`None`: no longer holds it); push if it changed.
    pub(crate) fn set(&mut self, model: &Model, comp: CompId, csi: CsiId, ha: Option<HaState>) {
        let Some(c) = model.csis.get(csi.index()) else {
            return;
        };
        let si = c.si;
        let members = self.members.entry(si).or_default();
        let changed = match ha {
            Some(ha) => members.insert((comp, csi), ha) != Some(ha),
            None => members.remove(&(comp, csi)).is_some(),
        };
        if changed {
            self.push(model, si, None);
        }
    }

    /// What `comp` holds, as it confirmed it (sorted by CSI).
    pub(crate) fn held_by(&self, comp: CompId) -> Vec<(CsiId, HaState)> {
        let mut out: Vec<(CsiId, HaState)> = self
            .members
            .values()
            .flat_map(|m| m.iter())
            .filter(|((c, _), _)| *c == comp)
            .map(|((_, csi), ha)| (*csi, *ha))
            .collect();
        out.sort_by_key(|(csi, _)| *csi);
        out
    }

    /// `comp` holds nothing any more (its process ended).
    pub(crate) fn remove_comp(&mut self, model: &Model, comp: CompId) {
        let mut changed = Vec::new();
        for (si, members) in &mut self.members {
            let before = members.len();
            members.retain(|(c, _), _| *c != comp);
            if members.len() != before {
                changed.push(*si);
            }
        }
        for si in changed {
            self.push(model, si, None);
        }
    }

    /// Start pushing `si`'s group to `link`, beginning with its current members.
    pub(crate) fn track(&mut self, model: &Model, si: SiId, link: Arc<SessionLink>) {
        let list = self.trackers.entry(si).or_default();
        if !list.iter().any(|l| l.id == link.id) {
            list.push(link.clone());
        }
        self.push(model, si, Some(&link));
    }

    /// A session ended: it tracks nothing any more.
    pub(crate) fn forget_session(&mut self, session: u64) {
        for list in self.trackers.values_mut() {
            list.retain(|l| l.id != session);
        }
    }

    fn message(&self, model: &Model, si: SiId) -> ToComponent {
        // One entry per component; a component serving several CSIs of the SI is listed with
        // the state of its first CSI (the engine moves an SU's CSIs of one SI together).
        let mut members: Vec<(String, nines_proto::HaState)> = Vec::new();
        if let Some(m) = self.members.get(&si) {
            let mut last = None;
            for ((comp, _), ha) in m {
                if last == Some(*comp) {
                    continue;
                }
                last = Some(*comp);
                if let Some(c) = model.comps.get(comp.index()) {
                    members.push((c.path.clone(), ha_to_wire(*ha)));
                }
            }
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        ToComponent::ProtectionGroup {
            si: model.sis[si.index()].path.clone(),
            members,
        }
    }

    /// Send the group of `si` to one tracker, or to all of them (dropping closed sessions).
    fn push(&mut self, model: &Model, si: SiId, only: Option<&Arc<SessionLink>>) {
        if model.sis.get(si.index()).is_none() {
            return;
        }
        let msg = self.message(model, si);
        match only {
            Some(link) => {
                let _ = link.send(&msg);
            }
            None => {
                if let Some(list) = self.trackers.get_mut(&si) {
                    list.retain(|l| l.send(&msg).is_ok());
                }
            }
        }
    }
}
