//! `nines validate`: what a config file describes, in a few lines, so a user can check that the
//! loader understood the file the way they meant it (ranks, placement, redundancy).

use std::fmt::Write;

use crate::entities::{Model, Redundancy};

/// Counts of entities per kind, then one line per SG with its redundancy model, its SUs in rank
/// order (`su@node#rank`) and its SIs in rank order.
pub fn summary(model: &Model) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "cluster {}: {} nodes, {} apps, {} SGs, {} SUs, {} components, {} SIs, {} CSIs",
        model.cluster,
        model.nodes.len(),
        model.apps.len(),
        model.sgs.len(),
        model.sus.len(),
        model.comps.len(),
        model.sis.len(),
        model.csis.len()
    );
    for sg in &model.sgs {
        let redundancy = match sg.redundancy {
            Redundancy::NPlusM {
                active_sus,
                standby_sus,
            } => format!("n+m ({active_sus}+{standby_sus})"),
            other => other.name().to_string(),
        };
        let sus = sg
            .sus
            .iter()
            .map(|&su| {
                let su = &model.sus[su.index()];
                format!(
                    "{}@{}#{}",
                    su.name,
                    model.nodes[su.node.index()].name,
                    su.rank
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        let sis = sg
            .sis
            .iter()
            .map(|&si| {
                let si = &model.sis[si.index()];
                format!("{}#{}", si.name, si.rank)
            })
            .collect::<Vec<_>>()
            .join(" ");
        let flags = if sg.fail_back { ", fail-back" } else { "" };
        let _ = writeln!(
            out,
            "  {}: {redundancy}{flags}; SUs: {sus}; SIs: {}",
            sg.path,
            if sis.is_empty() { "none" } else { &sis }
        );
    }
    out
}
