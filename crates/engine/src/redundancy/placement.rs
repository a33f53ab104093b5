//! Generic placement: from the model's rules, the in-service SUs and the current assignments,
//! compute where each SI of an SG should be active and standby.
//!
//! SUs are named by their position in `Sg::sus`, which is rank order, so "best-ranked first" is
//! plain iteration. Placement is stable: an SI keeps SUs it already uses unless fail-back or an
//! admin switchover asks otherwise, and an SI that lost its active prefers its standby (the SU
//! that already has its state). SIs are served in SI-rank order, so when capacity is short the
//! most important SIs are placed first.

use nines_model::{Sg, Si};

use super::RedundancyModel;

/// What placement needs to know about one SI.
#[derive(Clone, Debug, Default)]
pub(crate) struct SiView {
    /// The SI should be assigned at all (unlocked, not blocked by a fence or its sponsors).
    pub wanted: bool,
    /// A new active may be added (its sponsors are active).
    pub may_add_active: bool,
    /// Positions of in-service SUs holding it active now.
    pub actives: Vec<usize>,
    /// Positions of in-service SUs holding it standby now.
    pub standbys: Vec<usize>,
    /// Admin switchover target.
    pub prefer: Option<usize>,
    /// Place by rank, ignoring current holders (fail-back of an SI that is being served).
    pub ideal: bool,
}

/// Where one SI should be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Desired {
    /// Positions of the SUs that should hold it active.
    pub actives: Vec<usize>,
    /// Positions of the SUs that should hold it standby.
    pub standbys: Vec<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    None,
    Active,
    Standby,
}

struct Loads<'a> {
    rules: &'a dyn RedundancyModel,
    eligible: &'a [bool],
    active_cap: u32,
    standby_cap: u32,
    max_active_sus: u32,
    max_standby_sus: u32,
    active_load: Vec<u32>,
    standby_load: Vec<u32>,
    role: Vec<Role>,
    active_sus: u32,
    standby_sus: u32,
}

impl Loads<'_> {
    fn free(&self, p: usize, d: &Desired) -> bool {
        self.eligible.get(p).copied().unwrap_or(false)
            && !d.actives.contains(&p)
            && !d.standbys.contains(&p)
    }

    fn can_active(&self, p: usize, d: &Desired) -> bool {
        if !self.free(p, d) || self.active_load[p] >= self.active_cap {
            return false;
        }
        if !self.rules.exclusive_roles() {
            return true;
        }
        match self.role[p] {
            Role::Active => true,
            Role::Standby => false,
            Role::None => self.active_sus < self.max_active_sus,
        }
    }

    fn can_standby(&self, p: usize, d: &Desired) -> bool {
        if !self.free(p, d) || self.standby_load[p] >= self.standby_cap {
            return false;
        }
        if !self.rules.exclusive_roles() {
            return true;
        }
        match self.role[p] {
            Role::Standby => true,
            Role::Active => false,
            Role::None => self.standby_sus < self.max_standby_sus,
        }
    }

    fn take_active(&mut self, p: usize, d: &mut Desired) {
        self.active_load[p] += 1;
        if self.role[p] == Role::None {
            self.role[p] = Role::Active;
            self.active_sus += 1;
        }
        d.actives.push(p);
    }

    fn take_standby(&mut self, p: usize, d: &mut Desired) {
        self.standby_load[p] += 1;
        if self.role[p] == Role::None {
            self.role[p] = Role::Standby;
            self.standby_sus += 1;
        }
        d.standbys.push(p);
    }
}

/// Computes the desired assignments of every SI of `sg`. `sis` and `views` are in `Sg::sis`
/// order; `eligible[p]` says whether the SU at position `p` of `Sg::sus` is in service.
pub(crate) fn place(
    rules: &dyn RedundancyModel,
    sg: &Sg,
    sis: &[&Si],
    eligible: &[bool],
    views: &[SiView],
) -> Vec<Desired> {
    let n = eligible.len();
    let mut l = Loads {
        rules,
        eligible,
        active_cap: rules.active_capacity(sg),
        standby_cap: rules.standby_capacity(sg),
        max_active_sus: rules.max_active_sus(sg),
        max_standby_sus: rules.max_standby_sus(sg),
        active_load: vec![0; n],
        standby_load: vec![0; n],
        role: vec![Role::None; n],
        active_sus: 0,
        standby_sus: 0,
    };
    let mut out: Vec<Desired> = vec![Desired::default(); views.len()];

    // Pass 1: SIs keep the actives they have (stability), in SI-rank order.
    for (i, v) in views.iter().enumerate() {
        if !v.wanted || v.ideal || v.prefer.is_some() {
            continue;
        }
        let max = rules.max_actives(sis[i]) as usize;
        for &p in &v.actives {
            if out[i].actives.len() < max && l.can_active(p, &out[i]) {
                l.take_active(p, &mut out[i]);
            }
        }
    }
    // Pass 2: SIs short of actives take the switchover target, then their standby, then the
    // best-ranked SU with room.
    for (i, v) in views.iter().enumerate() {
        if !v.wanted || (!v.may_add_active && v.actives.is_empty()) {
            continue;
        }
        let max = rules.max_actives(sis[i]) as usize;
        let own_standbys: &[usize] = if v.ideal { &[] } else { &v.standbys };
        let candidates = v.prefer.iter().chain(own_standbys).copied().chain(0..n);
        for p in candidates {
            if out[i].actives.len() >= max {
                break;
            }
            if l.can_active(p, &out[i]) {
                l.take_active(p, &mut out[i]);
            }
        }
    }
    // Pass 3: keep standbys; pass 4: fill standbys by rank. An SI with no active gets none.
    for keep in [true, false] {
        for (i, v) in views.iter().enumerate() {
            if !v.wanted || out[i].actives.is_empty() || (keep && v.ideal) {
                continue;
            }
            let max = rules.max_standbys(sis[i]) as usize;
            let kept: &[usize] = if keep { &v.standbys } else { &[] };
            let candidates = kept.iter().copied().chain((0..n).filter(|_| !keep));
            for p in candidates {
                if out[i].standbys.len() >= max {
                    break;
                }
                if l.can_standby(p, &out[i]) {
                    l.take_standby(p, &mut out[i]);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redundancy::model_of;
    use nines_model::{AppId, Probation, Redundancy, SgId, SiId, SuId};
    use proptest::prelude::*;
    use std::time::Duration;

    fn sg(redundancy: Redundancy, sus: usize, sis: usize, cap: Option<u32>) -> Sg {
        let p = Probation {
            max: 1,
            within: Duration::from_secs(1),
        };
        Sg {
            app: AppId(0),
            name: "sg".into(),
            path: "a/sg".into(),
            redundancy,
            fail_back: false,
            auto_repair: true,
            comp_restart: p,
            su_restart: p,
            max_active_sis_per_su: cap,
            max_standby_sis_per_su: cap,
            sus: (0..sus as u32).map(SuId).collect(),
            sis: (0..sis as u32).map(SiId).collect(),
            component_names: vec!["c".into()],
        }
    }

    fn si(i: u32, active: u32, standby: u32) -> Si {
        Si {
            app: AppId(0),
            sg: SgId(0),
            name: format!("si{i}"),
            path: format!("a/si{i}"),
            rank: i + 1,
            preferred_active: active,
            preferred_standby: standby,
            depends_on: Vec::new(),
            csis: Vec::new(),
        }
    }

    fn redundancy() -> impl Strategy<Value = Redundancy> {
        prop_oneof![
            Just(Redundancy::TwoN),
            (1u32..3, 0u32..3).prop_map(|(a, s)| Redundancy::NPlusM {
                active_sus: a,
                standby_sus: s
            }),
            Just(Redundancy::NWay),
            Just(Redundancy::NWayActive),
            Just(Redundancy::NoRedundancy),
        ]
    }

    proptest! {
        /// Whatever the eligibility and current holders, placement obeys the model's rules.
        #[test]
        fn placement_obeys_the_rules(
            r in redundancy(),
            eligible in proptest::collection::vec(any::<bool>(), 1..6),
            n_sis in 1usize..6,
            cap in proptest::option::of(1u32..3),
            current in proptest::collection::vec((0usize..6, 0usize..6), 6),
            fail_back in any::<bool>(),
        ) {
            let n = eligible.len();
            let g = sg(r, n, n_sis, cap);
            let rules = model_of(r);
            let sis: Vec<Si> = (0..n_sis as u32).map(|i| si(i, 2, 2)).collect();
            let refs: Vec<&Si> = sis.iter().collect();
            let views: Vec<SiView> = (0..n_sis)
                .map(|i| {
                    let (a, s) = current[i % current.len()];
                    let a = a % n;
                    let s = s % n;
                    SiView {
                        wanted: true,
                        may_add_active: true,
                        actives: if eligible[a] { vec![a] } else { vec![] },
                        standbys: if eligible[s] && s != a { vec![s] } else { vec![] },
                        prefer: None,
                        ideal: fail_back,
                    }
                })
                .collect();
            let out = place(rules, &g, &refs, &eligible, &views);
            let mut active_load = vec![0u32; n];
            let mut standby_load = vec![0u32; n];
            for (i, d) in out.iter().enumerate() {
                prop_assert!(d.actives.len() as u32 <= rules.max_actives(&sis[i]));
                prop_assert!(d.standbys.len() as u32 <= rules.max_standbys(&sis[i]));
                for &p in d.actives.iter().chain(&d.standbys) {
                    prop_assert!(eligible[p], "only in-service SUs");
                }
                for &p in &d.actives {
                    prop_assert!(!d.standbys.contains(&p), "never active and standby at once");
                    active_load[p] += 1;
                }
                for &p in &d.standbys { standby_load[p] += 1; }
                prop_assert!(d.standbys.is_empty() || !d.actives.is_empty());
            }
            for p in 0..n {
                prop_assert!(active_load[p] <= rules.active_capacity(&g));
                prop_assert!(standby_load[p] <= rules.standby_capacity(&g));
                if rules.exclusive_roles() {
                    prop_assert!(active_load[p] == 0 || standby_load[p] == 0, "role mix on {p}");
                }
            }
            if rules.exclusive_roles() {
                let a = active_load.iter().filter(|&&l| l > 0).count() as u32;
                let s = standby_load.iter().filter(|&&l| l > 0).count() as u32;
                prop_assert!(a <= rules.max_active_sus(&g));
                prop_assert!(s <= rules.max_standby_sus(&g));
            }
            // Work-conserving: an SI with no active means no eligible SU could take one.
            for (i, d) in out.iter().enumerate() {
                if d.actives.is_empty() && r != Redundancy::TwoN && cap.is_none()
                    && !matches!(r, Redundancy::NPlusM { .. } | Redundancy::NoRedundancy)
                {
                    prop_assert!(!eligible.iter().any(|&e| e), "si{i} left out");
                }
            }
        }
    }

    #[test]
    fn two_n_puts_all_sis_on_one_active_and_one_standby_su() {
        let g = sg(Redundancy::TwoN, 3, 3, None);
        let sis: Vec<Si> = (0..3).map(|i| si(i, 1, 1)).collect();
        let refs: Vec<&Si> = sis.iter().collect();
        let views = vec![
            SiView {
                wanted: true,
                may_add_active: true,
                ..SiView::default()
            };
            3
        ];
        let out = place(model_of(Redundancy::TwoN), &g, &refs, &[true; 3], &views);
        for d in out {
            assert_eq!(d.actives, [0]);
            assert_eq!(d.standbys, [1]);
        }
    }

    #[test]
    fn a_lost_active_prefers_its_standby_over_better_ranked_sus() {
        let g = sg(Redundancy::NWay, 3, 1, None);
        let sis = [si(0, 1, 1)];
        let views = [SiView {
            wanted: true,
            may_add_active: true,
            standbys: vec![2],
            ..SiView::default()
        }];
        let out = place(
            model_of(Redundancy::NWay),
            &g,
            &[&sis[0]],
            &[true; 3],
            &views,
        );
        assert_eq!(out[0].actives, [2], "the standby has the state");
    }

    #[test]
    fn fail_back_places_by_rank() {
        let g = sg(Redundancy::TwoN, 2, 1, None);
        let sis = [si(0, 1, 1)];
        let views = [SiView {
            wanted: true,
            may_add_active: true,
            actives: vec![1],
            ideal: true,
            ..SiView::default()
        }];
        let out = place(
            model_of(Redundancy::TwoN),
            &g,
            &[&sis[0]],
            &[true; 2],
            &views,
        );
        assert_eq!(out[0].actives, [0]);
        assert_eq!(out[0].standbys, [1]);
    }
}
