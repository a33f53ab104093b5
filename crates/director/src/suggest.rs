//! "No entity named X (did you mean ...)": operators type entity paths by hand, and the most
//! common mistakes are a typo or a bare name (`su-1` for `app/sg/su-1`).

use nines_model::Model;

/// Every entity path of the model, in model order.
pub fn all_paths(m: &Model) -> Vec<String> {
    let mut v = vec!["cluster".to_string()];
    v.extend(m.nodes.iter().map(|n| format!("node/{}", n.name)));
    v.extend(m.apps.iter().map(|a| a.name.clone()));
    v.extend(m.sgs.iter().map(|x| x.path.clone()));
    v.extend(m.sus.iter().map(|x| x.path.clone()));
    v.extend(m.comps.iter().map(|x| x.path.clone()));
    v.extend(m.sis.iter().map(|x| x.path.clone()));
    v.extend(m.csis.iter().map(|x| x.path.clone()));
    v
}

/// The message for an unknown entity path, with up to three likely meant paths.
pub fn unknown_entity(m: &Model, name: &str) -> String {
    let paths = all_paths(m);
    // Paths ending in what was typed (a bare or partial name), then close typos.
    let mut picks: Vec<&String> = paths
        .iter()
        .filter(|p| p.ends_with(&format!("/{name}")))
        .collect();
    let limit = (name.chars().count() / 3).max(2);
    let mut near: Vec<(usize, &String)> = paths
        .iter()
        .map(|p| (distance(p, name), p))
        .filter(|(d, p)| *d <= limit && !picks.contains(p))
        .collect();
    near.sort_by_key(|(d, _)| *d);
    picks.extend(near.into_iter().map(|(_, p)| p));
    picks.truncate(3);
    if picks.is_empty() {
        format!("no entity named {name} (paths look like app/sg/su, app/sg/su/comp, app/si, node/NAME, cluster)")
    } else {
        let list: Vec<&str> = picks.iter().map(|p| p.as_str()).collect();
        format!("no entity named {name} (did you mean {}?)", list.join(", "))
    }
}

/// Levenshtein distance between two strings, by characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let text = "\
cluster: t
nodes: [n1, n2]
apps:
  counter:
    sgs:
      sg:
        redundancy: 2n
        units:
          su-1: { node: n1, rank: 1 }
          su-2: { node: n2, rank: 2 }
        components:
          c: { kind: process, instantiate: [/bin/true] }
    sis:
      si: { sg: sg, rank: 1, csis: { main: { component: c } } }
";
        match nines_model::load(text, "t.yaml") {
            Ok(l) => l.model,
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn distances() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("same", "same"), 0);
    }

    #[test]
    fn suggests_full_paths_for_bare_names_and_typos() {
        let m = model();
        let msg = unknown_entity(&m, "su-1");
        assert!(
            msg.starts_with("no entity named su-1 (did you mean counter/sg/su-1"),
            "{msg}"
        );
        let msg = unknown_entity(&m, "counter/sg/su-3");
        assert!(msg.contains("counter/sg/su-1"), "{msg}");
        let msg = unknown_entity(&m, "zzzzzzzzzzzzzzzzzzzzz");
        assert!(msg.contains("paths look like"), "{msg}");
    }
}
