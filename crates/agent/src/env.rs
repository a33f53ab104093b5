//! The environment a component (and its CLC commands) starts with.
//!
//! A non-SA-aware component has no other way to learn its work than its environment, so every
//! attribute of every CSI it may serve is handed over as a variable; an SA-aware one also gets
//! where to find the agent and how to name itself when it registers.

use std::path::Path;

use nines_model::{CompId, Model, NodeId};

/// Entity path of the component (`app/sg/su/comp`); the name it registers with.
pub const ENV_COMPONENT: &str = nines_proto::ENV_COMPONENT;
/// Name of the node the component runs on.
pub const ENV_NODE: &str = "NINES_NODE";
/// Path of the agent's Unix socket for SA-aware sessions.
pub const ENV_AGENT_SOCKET: &str = nines_proto::ENV_AGENT_SOCKET;
/// Pid (= process group id) of the running component; only in CLC commands' environment, so a
/// `terminate` or `cleanup` command knows whom to stop.
pub const ENV_COMPONENT_PID: &str = "NINES_COMPONENT_PID";

/// `NINES_CSI_<CSI>_<ATTR>`: CSI and attribute names upper-cased, every other character than
/// ASCII letters and digits turned into `_` (so `data-dir` of CSI `main` is
/// `NINES_CSI_MAIN_DATA_DIR`).
pub fn csi_var(csi: &str, attr: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("NINES_CSI_{}_{}", clean(csi), clean(attr))
}

/// The variables of a component: identity, agent socket, and the attributes of every CSI that
/// its slot serves in any SI of its SG.
pub(crate) fn component_env(
    model: &Model,
    comp: CompId,
    node: NodeId,
    socket: &Path,
) -> Vec<(String, String)> {
    let c = &model.comps[comp.index()];
    let su = &model.sus[c.su.index()];
    let mut env = vec![
        (ENV_COMPONENT.to_string(), c.path.clone()),
        (ENV_NODE.to_string(), model.nodes[node.index()].name.clone()),
        (
            ENV_AGENT_SOCKET.to_string(),
            socket.to_string_lossy().into_owned(),
        ),
    ];
    let Some(slot) = su.comps.iter().position(|&x| x == comp) else {
        return env;
    };
    for si in &model.sgs[su.sg.index()].sis {
        for csi in &model.sis[si.index()].csis {
            let csi = &model.csis[csi.index()];
            if csi.comp_slot != slot {
                continue;
            }
            for (attr, value) in &csi.attrs {
                let name = csi_var(&csi.name, attr);
                if env.iter().any(|(n, _)| *n == name) {
                    tracing::warn!(
                        component = %c.path,
                        variable = %name,
                        csi = %csi.path,
                        "two CSIs of this component map to the same variable; the later one wins"
                    );
                    env.retain(|(n, _)| *n != name);
                }
                env.push((name, value.clone()));
            }
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_upper_cased_and_cleaned() {
        assert_eq!(csi_var("main", "port"), "NINES_CSI_MAIN_PORT");
        assert_eq!(csi_var("db-1", "data.dir"), "NINES_CSI_DB_1_DATA_DIR");
        assert_eq!(csi_var("é", "x"), "NINES_CSI___X");
    }
}
