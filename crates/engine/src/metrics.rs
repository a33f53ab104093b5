//! Fault bookkeeping for the seeds' metrics: each fault is followed from detection to service
//! recovery (its SIs active again) and to repair (the faulty entity back in service).

use nines_model::{EntityRef, NodeId, SiId, SuId};

use crate::action::{Event, FaultId, RecoveryStep};
use crate::input::FaultKind;
use crate::states::Readiness;
use crate::time::Instant;
use crate::Engine;

/// Most faults followed at once; older ones are forgotten (their metrics are then not emitted),
/// so a storm of faults on a capacity-less cluster cannot grow memory without bound.
const MAX_OPEN_FAULTS: usize = 4096;

/// A fault whose recovery or repair is still awaited.
#[derive(Clone, Debug)]
pub(crate) struct OpenFault {
    pub id: FaultId,
    pub at: Instant,
    pub affected: Vec<SiId>,
    pub faulty: Vec<SuId>,
    pub node: Option<NodeId>,
    pub recovered: bool,
    pub repaired: bool,
}

impl Engine {
    /// Opens a fault with a fresh id and records its detection.
    pub(crate) fn open_fault(
        &mut self,
        entity: EntityRef,
        kind: Option<FaultKind>,
        recovery: RecoveryStep,
        affected: Vec<SiId>,
        faulty: Vec<SuId>,
        node: Option<NodeId>,
    ) -> FaultId {
        let id = self.next_fault;
        self.next_fault += 1;
        self.open_fault_with_id(id, entity, kind, recovery, affected, faulty, node);
        id
    }

    /// Opens a fault whose id was taken earlier (escalation events already name it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open_fault_with_id(
        &mut self,
        id: FaultId,
        entity: EntityRef,
        kind: Option<FaultKind>,
        recovery: RecoveryStep,
        affected: Vec<SiId>,
        faulty: Vec<SuId>,
        node: Option<NodeId>,
    ) {
        self.record(Event::FaultDetected {
            fault: id,
            entity,
            kind,
            recovery,
            affected: affected.clone(),
        });
        if self.faults.len() >= MAX_OPEN_FAULTS {
            self.faults.remove(0);
        }
        self.faults.push(OpenFault {
            id,
            at: self.now,
            affected,
            faulty,
            node,
            recovered: false,
            repaired: false,
        });
    }

    /// Emits recovery and repair milestones that became true in this step.
    pub(crate) fn check_faults(&mut self) {
        if self.faults.is_empty() {
            return;
        }
        let mut faults = std::mem::take(&mut self.faults);
        for f in &mut faults {
            if !f.recovered && f.affected.iter().all(|&si| !self.unserved(si)) {
                f.recovered = true;
                self.record(Event::ServiceRecovered {
                    fault: f.id,
                    outage: self.now - f.at,
                });
            }
            if !f.repaired
                && f.node.is_none_or(|n| self.nodes[n.index()].up)
                && f.faulty
                    .iter()
                    .all(|&su| self.readiness(su) == Readiness::InService && !self.busy(su))
            {
                f.repaired = true;
                self.record(Event::Repaired {
                    fault: f.id,
                    repair: self.now - f.at,
                });
            }
        }
        faults.retain(|f| !(f.recovered && f.repaired));
        faults.append(&mut self.faults);
        self.faults = faults;
    }
}
