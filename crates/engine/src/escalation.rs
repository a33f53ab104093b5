//! Escalation: counting recoveries inside probation windows and climbing the ladder
//! component restart → SU restart → SU failover → node failover.

use nines_model::{Probation, SuId};

use crate::action::{Event, FaultId, RecoveryStep};
use crate::time::Instant;
use crate::Engine;

/// Counts one more recovery in `history` if the probation allows it; returns false (and starts
/// the count afresh) when the recovery must escalate instead.
pub(crate) fn admit(history: &mut Vec<Instant>, rule: Probation, now: Instant) -> bool {
    prune(history, rule, now);
    if (history.len() as u64) < u64::from(rule.max) {
        history.push(now);
        true
    } else {
        history.clear();
        false
    }
}

/// Drops entries that left the window.
pub(crate) fn prune(history: &mut Vec<Instant>, rule: Probation, now: Instant) {
    history.retain(|&t| now.saturating_since(t) < rule.within);
}

/// How many entries of `history` are still inside the window at `now`.
pub(crate) fn count(history: &[Instant], rule: Probation, now: Instant) -> u32 {
    history
        .iter()
        .filter(|&&t| now.saturating_since(t) < rule.within)
        .count() as u32
}

impl Engine {
    /// The step actually carried out for `requested` on `su`, after escalation.
    pub(crate) fn escalate(
        &mut self,
        fault: FaultId,
        su: SuId,
        requested: RecoveryStep,
    ) -> RecoveryStep {
        let now = self.now;
        let sg = &self.model.sgs[self.model.sus[su.index()].sg.index()];
        let node = self.su_host(su);
        let (comp_rule, su_rule) = (sg.comp_restart, sg.su_restart);
        let node_rule = self.model.nodes[node.index()].su_failover;
        let mut step = requested;
        // Escalation levels stick: while SU restarts are inside their window, a component
        // failure restarts the whole SU again (AMF's escalation level 1).
        if step == RecoveryStep::ComponentRestart
            && (count(&self.sus[su.index()].su_restarts, su_rule, now) > 0
                || !admit(&mut self.sus[su.index()].comp_restarts, comp_rule, now))
        {
            step = RecoveryStep::SuRestart;
        }
        if step == RecoveryStep::SuRestart
            && !admit(&mut self.sus[su.index()].su_restarts, su_rule, now)
        {
            step = RecoveryStep::SuFailover;
        }
        if step == RecoveryStep::SuFailover
            && !admit(&mut self.nodes[node.index()].su_failovers, node_rule, now)
        {
            step = RecoveryStep::NodeFailover;
        }
        if step != requested {
            self.record(Event::Escalated {
                fault,
                from: requested,
                to: step,
            });
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(v: u64) -> Instant {
        Instant::from_nanos(v * 1_000_000)
    }

    #[test]
    fn admits_up_to_max_inside_the_window_then_escalates() {
        let rule = Probation {
            max: 2,
            within: Duration::from_millis(100),
        };
        let mut h = Vec::new();
        assert!(admit(&mut h, rule, ms(0)));
        assert!(admit(&mut h, rule, ms(10)));
        assert!(
            !admit(&mut h, rule, ms(20)),
            "third inside window escalates"
        );
        assert!(h.is_empty(), "escalation restarts the count");
    }

    #[test]
    fn entries_leave_the_window() {
        let rule = Probation {
            max: 1,
            within: Duration::from_millis(100),
        };
        let mut h = Vec::new();
        assert!(admit(&mut h, rule, ms(0)));
        assert!(admit(&mut h, rule, ms(100)), "the first left the window");
        assert_eq!(count(&h, rule, ms(150)), 1);
        assert_eq!(count(&h, rule, ms(250)), 0);
    }

    #[test]
    fn max_zero_always_escalates() {
        let rule = Probation {
            max: 0,
            within: Duration::from_secs(1),
        };
        let mut h = Vec::new();
        assert!(!admit(&mut h, rule, ms(0)));
    }
}
