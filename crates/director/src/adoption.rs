//! From what the agents adopted to the engine's `Input::Resume`.
//!
//! A component is running if its agent adopted it. An SU holds an SI in an HA state if every
//! SA-aware component of the SU that serves a CSI of the SI says it holds that CSI in that
//! state (the components' own account, given when they registered again). SUs of process
//! components only claim nothing: their CSI callbacks do not reach the process, so the engine
//! simply places their work again. The engine then keeps what is consistent and removes the
//! rest (see `nines_engine`'s resume module).

use std::collections::BTreeSet;

use nines_agent::Adopted;
use nines_engine::{HaState, Input};
use nines_model::{CompKind, Model, SiId, SuId};

/// The `Resume` input for `adopted`.
pub(crate) fn resume_input(model: &Model, adopted: &[Adopted]) -> Input {
    let running: Vec<_> = adopted.iter().map(|a| a.comp).collect();
    let by_comp = |c| adopted.iter().find(|a| a.comp == c);
    let mut assignments: BTreeSet<(SiId, SuId, HaState)> = BTreeSet::new();
    for (s, su) in model.sus.iter().enumerate() {
        let su_id = SuId(s as u32);
        if !su.comps.iter().all(|c| by_comp(*c).is_some()) {
            continue;
        }
        for &si in &model.sgs[su.sg.index()].sis {
            let mut state: Option<HaState> = None;
            let mut agreed = true;
            for &csi in &model.sis[si.index()].csis {
                let comp = model.comp_for(su_id, csi);
                if model.comps[comp.index()].kind != CompKind::SaAware {
                    continue;
                }
                let held = by_comp(comp)
                    .and_then(|a| a.held.iter().find(|(c, _)| *c == csi).map(|(_, h)| *h));
                match (held, state) {
                    (None, _) => agreed = false,
                    (Some(h), None) => state = Some(h),
                    (Some(h), Some(s)) if h != s => agreed = false,
                    _ => {}
                }
            }
            if let (true, Some(ha)) = (agreed, state) {
                assignments.insert((si, su_id, ha));
            }
        }
    }
    Input::Resume {
        running,
        // Actives first, so that the engine, which takes at most the model's number of
        // actives, never drops a real active in favour of a claimed one.
        assignments: {
            let mut v: Vec<_> = assignments.into_iter().collect();
            v.sort_by_key(|(si, su, h)| (*h != HaState::Active, *si, *su));
            v
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nines_model::{CompId, EntityRef};

    const CONFIG: &str = r#"
cluster: t
nodes: [n1, n2]
apps:
  app:
    sgs:
      sg:
        redundancy: 2n
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
        components:
          a: { kind: sa-aware, instantiate: [/bin/true] }
          b: { kind: sa-aware, instantiate: [/bin/true] }
          p: { kind: process, instantiate: [/bin/true] }
    sis:
      si: { sg: sg, csis: { x: { component: a }, y: { component: b }, z: { component: p } } }
"#;

    fn model() -> Model {
        match nines_model::load(CONFIG, "t.yaml") {
            Ok(l) => l.model,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn comp(m: &Model, path: &str) -> CompId {
        match m.find(path) {
            Some(EntityRef::Comp(c)) => c,
            other => panic!("{path}: {other:?}"),
        }
    }

    fn csi(m: &Model, path: &str) -> nines_model::CsiId {
        match m.find(path) {
            Some(EntityRef::Csi(c)) => c,
            other => panic!("{path}: {other:?}"),
        }
    }

    fn adopted(m: &Model, su: &str, ha: [Option<HaState>; 2]) -> Vec<Adopted> {
        let held = |c: &str, h: Option<HaState>| {
            h.map(|h| vec![(csi(m, &format!("app/si/{c}")), h)])
                .unwrap_or_default()
        };
        vec![
            Adopted {
                comp: comp(m, &format!("app/sg/{su}/a")),
                pid: 10,
                held: held("x", ha[0]),
            },
            Adopted {
                comp: comp(m, &format!("app/sg/{su}/b")),
                pid: 11,
                held: held("y", ha[1]),
            },
            Adopted {
                comp: comp(m, &format!("app/sg/{su}/p")),
                pid: 12,
                held: Vec::new(),
            },
        ]
    }

    fn assignments(i: Input) -> Vec<(SiId, SuId, HaState)> {
        match i {
            Input::Resume { assignments, .. } => assignments,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_su_whose_sa_aware_components_agree_holds_the_si_actives_first() {
        let m = model();
        let mut all = adopted(&m, "su-2", [Some(HaState::Standby); 2]);
        all.extend(adopted(&m, "su-1", [Some(HaState::Active); 2]));
        let si = SiId(0);
        let (su1, su2) = (m.sgs[0].sus[0], m.sgs[0].sus[1]);
        let input = resume_input(&m, &all);
        if let Input::Resume { running, .. } = &input {
            assert_eq!(running.len(), 6, "every adopted component runs");
        }
        assert_eq!(
            assignments(input),
            vec![(si, su1, HaState::Active), (si, su2, HaState::Standby)]
        );
    }

    #[test]
    fn components_that_disagree_or_hold_nothing_claim_nothing() {
        let m = model();
        let split = adopted(&m, "su-1", [Some(HaState::Active), Some(HaState::Standby)]);
        assert_eq!(assignments(resume_input(&m, &split)), vec![]);
        let half = adopted(&m, "su-1", [Some(HaState::Active), None]);
        assert_eq!(assignments(resume_input(&m, &half)), vec![]);
    }

    #[test]
    fn an_su_with_a_component_missing_claims_nothing() {
        let m = model();
        let mut all = adopted(&m, "su-1", [Some(HaState::Active); 2]);
        all.retain(|a| a.pid != 12);
        let input = resume_input(&m, &all);
        if let Input::Resume { running, .. } = &input {
            assert_eq!(running.len(), 2);
        }
        assert_eq!(assignments(input), vec![]);
    }
}
