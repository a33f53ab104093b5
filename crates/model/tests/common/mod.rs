//! Helpers shared by the integration tests: config snippets, error matchers and the model
//! invariants every loaded config must satisfy.
#![allow(dead_code)]

use nines_model::{
    load, AppId, CompId, CompKind, ConfigError, CsiId, EntityRef, Loaded, Model, NodeId, SgId,
    SiId, SuId,
};

/// Indents every non-empty line of `text` by `n` spaces.
pub fn indent(text: &str, n: usize) -> String {
    text.lines()
        .map(|l| {
            if l.trim().is_empty() {
                String::new()
            } else {
                format!("{}{l}", " ".repeat(n))
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A cluster with nodes n1..n3 and one app `a` with the given SGs and SIs (both written at
/// column 0, as the bodies of `sgs:` and `sis:`).
pub fn app(sgs: &str, sis: &str) -> String {
    format!(
        "cluster: c\nnodes: [n1, n2, n3]\napps:\n  a:\n    sgs:\n{}\n    sis:\n{}\n",
        indent(sgs, 6),
        indent(sis, 6)
    )
}

/// A valid 2N SG `g` with SUs u1 (n1), u2 (n2) and component `c`.
pub const SG_2N: &str = "\
g:
  redundancy: 2n
  units: { u1: { node: n1, rank: 1 }, u2: { node: n2, rank: 2 } }
  components: { c: { kind: process, instantiate: [/bin/true] } }";

/// A valid SI `s` of SG `g` with CSI `x` served by `c`.
pub const SI_S: &str = "s: { sg: g, csis: { x: { component: c } } }";

/// Loads a config that must be valid; panics with every error otherwise.
pub fn ok(text: &str) -> Loaded {
    match load(text, "test.yaml") {
        Ok(loaded) => {
            check_invariants(&loaded.model);
            loaded
        }
        Err(errors) => panic!("{}\n--- in ---\n{text}", render(&errors)),
    }
}

/// Loads a config that must be rejected; returns the errors.
pub fn errors(text: &str) -> Vec<ConfigError> {
    match load(text, "test.yaml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(errors) => {
            assert!(!errors.is_empty(), "Err with no errors");
            errors
        }
    }
}

pub fn render(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The 1-based line of the only line of `text` containing `# <-`.
pub fn marked_line(text: &str) -> u64 {
    let lines: Vec<u64> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("# <-"))
        .map(|(i, _)| i as u64 + 1)
        .collect();
    assert_eq!(lines.len(), 1, "mark exactly one line with `# <-`:\n{text}");
    lines[0]
}

/// Asserts `text` is rejected with an error on the line marked `# <-`, about `entity`, whose
/// message contains every fragment.
pub fn reject(text: &str, entity: &str, fragments: &[&str]) -> ConfigError {
    let line = marked_line(text);
    let errors = errors(text);
    let found = errors.iter().find(|e| {
        e.line == line && e.entity == entity && fragments.iter().all(|f| e.message.contains(f))
    });
    match found {
        Some(e) => {
            assert_eq!(e.file, "test.yaml");
            assert!(e.column >= 1, "no column: {e}");
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("test.yaml:{line}:{}: {entity}: ", e.column)),
                "{shown}"
            );
            e.clone()
        }
        None => panic!(
            "expected an error on line {line} about `{entity}` containing {fragments:?}; got:\n{}\n--- in ---\n{text}",
            render(&errors)
        ),
    }
}

/// Asserts `text` loads with a warning on the marked line about `entity` containing `fragment`.
pub fn warn(text: &str, entity: &str, fragment: &str) {
    let line = marked_line(text);
    let loaded = ok(text);
    let found = loaded
        .warnings
        .iter()
        .any(|w| w.line == line && w.entity == entity && w.message.contains(fragment));
    let shown: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(
        found,
        "expected a warning on line {line} about `{entity}` containing {fragment:?}; got:\n{}",
        shown.join("\n")
    );
    for w in &loaded.warnings {
        assert!(w.to_string().contains(": warning: "), "{w}");
    }
}

/// Every entity of the model, for round trips.
pub fn all_entities(m: &Model) -> Vec<EntityRef> {
    let mut all = vec![EntityRef::Cluster];
    all.extend((0..m.nodes.len()).map(|i| EntityRef::Node(NodeId(i as u32))));
    all.extend((0..m.apps.len()).map(|i| EntityRef::App(AppId(i as u32))));
    all.extend((0..m.sgs.len()).map(|i| EntityRef::Sg(SgId(i as u32))));
    all.extend((0..m.sus.len()).map(|i| EntityRef::Su(SuId(i as u32))));
    all.extend((0..m.comps.len()).map(|i| EntityRef::Comp(CompId(i as u32))));
    all.extend((0..m.sis.len()).map(|i| EntityRef::Si(SiId(i as u32))));
    all.extend((0..m.csis.len()).map(|i| EntityRef::Csi(CsiId(i as u32))));
    all
}

/// The structural promises of `Model` (see entities.rs) that the engine relies on.
pub fn check_invariants(m: &Model) {
    assert!(!m.nodes.is_empty());
    for (i, app) in m.apps.iter().enumerate() {
        let id = AppId(i as u32);
        let sgs: Vec<SgId> = (0..m.sgs.len() as u32)
            .map(SgId)
            .filter(|s| m.sgs[s.index()].app == id)
            .collect();
        assert_eq!(app.sgs, sgs, "App::sgs of {}", app.name);
        let sis: Vec<SiId> = (0..m.sis.len() as u32)
            .map(SiId)
            .filter(|s| m.sis[s.index()].app == id)
            .collect();
        assert_eq!(app.sis, sis, "App::sis of {}", app.name);
    }
    for (i, sg) in m.sgs.iter().enumerate() {
        let id = SgId(i as u32);
        assert!(sg.app.index() < m.apps.len());
        assert_eq!(
            sg.path,
            format!("{}/{}", m.apps[sg.app.index()].name, sg.name)
        );
        assert!(!sg.sus.is_empty() && !sg.component_names.is_empty());
        // SUs: exactly those of this SG, by rank, ties in config (= id) order.
        let mut mine: Vec<SuId> = (0..m.sus.len() as u32)
            .map(SuId)
            .filter(|s| m.sus[s.index()].sg == id)
            .collect();
        mine.sort_by_key(|s| (m.sus[s.index()].rank, *s));
        assert_eq!(sg.sus, mine, "Sg::sus of {}", sg.path);
        let mut sis: Vec<SiId> = (0..m.sis.len() as u32)
            .map(SiId)
            .filter(|s| m.sis[s.index()].sg == id)
            .collect();
        sis.sort_by_key(|s| (m.sis[s.index()].rank, *s));
        assert_eq!(sg.sis, sis, "Sg::sis of {}", sg.path);
    }
    for (i, su) in m.sus.iter().enumerate() {
        let id = SuId(i as u32);
        let sg = &m.sgs[su.sg.index()];
        assert!(su.node.index() < m.nodes.len());
        assert!(su.rank >= 1);
        assert_eq!(su.path, format!("{}/{}", sg.path, su.name));
        assert_eq!(su.comps.len(), sg.component_names.len());
        for (slot, c) in su.comps.iter().enumerate() {
            let comp = &m.comps[c.index()];
            assert_eq!(comp.su, id);
            assert_eq!(comp.name, sg.component_names[slot]);
            assert_eq!(comp.path, format!("{}/{}", su.path, comp.name));
            // A vm component is run from its `vm` block, every other kind by its command.
            assert_eq!(comp.instantiate.is_empty(), comp.kind == CompKind::Vm);
            assert_eq!(comp.vm.is_some(), comp.kind == CompKind::Vm);
        }
    }
    for (i, node) in m.nodes.iter().enumerate() {
        let mine: Vec<SuId> = (0..m.sus.len() as u32)
            .map(SuId)
            .filter(|s| m.sus[s.index()].node == NodeId(i as u32))
            .collect();
        assert_eq!(node.sus, mine, "Node::sus of {}", node.name);
    }
    for (i, si) in m.sis.iter().enumerate() {
        let id = SiId(i as u32);
        let sg = &m.sgs[si.sg.index()];
        assert_eq!(sg.app, si.app);
        assert!(si.rank >= 1);
        assert_eq!(
            si.path,
            format!("{}/{}", m.apps[si.app.index()].name, si.name)
        );
        assert!(!si.csis.is_empty());
        for d in &si.depends_on {
            assert_eq!(m.sis[d.sponsor.index()].app, si.app);
        }
        for c in &si.csis {
            let csi = &m.csis[c.index()];
            assert_eq!(csi.si, id);
            assert!(csi.comp_slot < sg.component_names.len());
            assert_eq!(csi.path, format!("{}/{}", si.path, csi.name));
            for &su in &sg.sus {
                assert_eq!(m.comp_for(su, *c), m.sus[su.index()].comps[csi.comp_slot]);
            }
        }
    }
    let csi_total: usize = m.sis.iter().map(|s| s.csis.len()).sum();
    assert_eq!(csi_total, m.csis.len());
    for e in all_entities(m) {
        let path = m.path(e);
        assert_eq!(m.find(&path), Some(e), "find({path})");
    }
}
