//! Renderings for people: one line per event (the `nines run` console and `nines events`),
//! the status tables (`nines status`) and the per-fault table. They live here rather than in
//! the CLI so they are unit-tested without a process.

use serde_json::Value;

use crate::faults::FaultRow;
use crate::status::Status;

/// One event-log line as a human line: `   12.345s  fault #3 app/sg/su-1/c exited -> su-failover`.
/// `None` for lines not worth a human line: accepted admin replies (the `admin-done` line of
/// the same step says it) and lines that are not events (garbage from a torn write).
pub fn event_line(v: &Value) -> Option<String> {
    let event = v.get("event")?.as_str()?;
    let t = v.get("t_ns").and_then(Value::as_u64).unwrap_or(0);
    let s = |k: &str| match v.get(k) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => "-".to_string(),
        Some(other) => other.to_string(),
    };
    let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let text = match event {
        "fault-detected" => {
            let affected = v
                .get("affected")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let kind = match v.get("kind") {
                Some(Value::String(k)) => k.clone(),
                _ => "down".to_string(),
            };
            let mut line = format!(
                "fault #{} {} {kind} -> {}",
                s("fault"),
                s("entity"),
                s("recovery")
            );
            if !affected.is_empty() {
                line.push_str(&format!(" (affects {affected})"));
            }
            if let Some(r) = v.get("reaction_ms").and_then(Value::as_f64) {
                line.push_str(&format!(" reaction {r:.3} ms"));
            }
            line
        }
        "fault-ignored" => format!("report on {} ignored: {}", s("entity"), s("reason")),
        "escalated" => format!("escalated #{} {} -> {}", s("fault"), s("from"), s("to")),
        "service-recovered" => format!("recovered #{} outage {:.3} ms", s("fault"), f("outage_ms")),
        "repaired" => format!("repaired #{} after {:.1} ms", s("fault"), f("repair_ms")),
        "presence" => format!("{} {}", s("entity"), s("presence")),
        "oper" => format!("{} {}", s("entity"), s("oper")),
        "readiness" => format!("{} {}", s("entity"), s("readiness")),
        "admin" => format!("{} admin {}", s("entity"), s("admin")),
        "assignment" => match v.get("ha_state").and_then(Value::as_str) {
            Some(ha) => format!("{} {ha} on {}", s("si"), s("su")),
            None => format!("{} removed from {}", s("si"), s("su")),
        },
        "si-state" => format!("{} {}", s("si"), s("state")),
        "node" => {
            let up = v.get("up").and_then(Value::as_bool).unwrap_or(false);
            format!("{} {}", s("node"), if up { "up" } else { "down" })
        }
        "admin-done" => format!("admin {} {} accepted", s("op"), s("target")),
        "admin-reply" => {
            if v.get("ok").and_then(Value::as_bool) == Some(true) {
                // `admin-done` (same step) already said it was accepted.
                return None;
            }
            format!("admin refused: {}", s("error"))
        }
        "run-started" => format!(
            "run {} started: cluster {}, {} nodes, state dir {} (pid {})",
            s("run"),
            s("cluster"),
            s("nodes"),
            s("state_dir"),
            s("pid")
        ),
        "run-stopping" => "stopping: terminating every component".to_string(),
        "run-stopped" => format!("run {} stopped", s("run")),
        "admin-restored" => format!("restored admin state {} {}", s("entity"), s("admin")),
        "admin-imported" => format!(
            "imported {} saved admin state(s) from {} into state.redb",
            s("states"),
            s("file")
        ),
        "persist-error" => format!("cannot save to {}: {}", s("store"), s("error")),
        "restore-skipped" => format!(
            "saved admin state of {} not restored: {}",
            s("entity"),
            s("reason")
        ),
        "adopted" => format!(
            "adopted {} (pid {}), left running by an earlier run, holding {} CSI(s)",
            s("comp"),
            s("pid"),
            s("held")
        ),
        "fence" => format!(
            "fencing {}: stopping its agent and every component on it",
            s("node")
        ),
        "fence-done" => format!("{} fenced", s("node")),
        "node-rebooted" => format!("{} rebooted (agent restarted)", s("node")),
        "agent-error" => format!("agent of {}: {}", s("node"), s("error")),
        other => {
            let mut line = other.to_string();
            if let Some(obj) = v.as_object() {
                for (k, val) in obj {
                    if !matches!(k.as_str(), "seq" | "run" | "t_ns" | "wall" | "event") {
                        line.push_str(&format!(" {k}={val}"));
                    }
                }
            }
            line
        }
    };
    Some(format!("{:>10.3}s  {text}", t as f64 / 1e9))
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn table(rows: &[Vec<String>], indent: &str) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = indent.to_string();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The status document as tables, one block per SG (like `crm_mon`): its SUs with their states
/// and component pids, then its SIs with who is active and standby.
pub fn status_table(s: &Status) -> String {
    let nodes: Vec<String> = s
        .nodes
        .iter()
        .map(|n| {
            let mut t = format!("{} {}", n.path, if n.up { "up" } else { "DOWN" });
            if n.admin != "unlocked" {
                t.push_str(&format!(" ({})", n.admin));
            }
            t
        })
        .collect();
    let mut out = format!(
        "cluster {} (run {}, {:.1}s){}  open faults: {}\nnodes: {}\n",
        s.cluster,
        s.run,
        s.t_ns as f64 / 1e9,
        if s.admin == "unlocked" {
            String::new()
        } else {
            format!(" {}", s.admin)
        },
        s.open_faults,
        nodes.join(", ")
    );
    for a in s.apps.iter().filter(|a| a.admin != "unlocked") {
        out.push_str(&format!("app {} {}\n", a.path, a.admin));
    }
    for g in &s.sgs {
        out.push_str(&format!("\nSG {} ({}", g.path, g.redundancy));
        if g.admin != "unlocked" {
            out.push_str(&format!(", {}", g.admin));
        }
        out.push_str(")\n");
        let mut rows = vec![[
            "SU",
            "NODE",
            "RANK",
            "ADMIN",
            "OPER",
            "PRESENCE",
            "READINESS",
            "PIDS",
        ]
        .map(String::from)
        .to_vec()];
        for su in &g.sus {
            let pids: Vec<String> = su
                .components
                .iter()
                .map(|c| {
                    let name = c.path.rsplit('/').next().unwrap_or(&c.path);
                    match c.pid {
                        Some(p) => format!("{name}={p}"),
                        None => format!("{name}=-"),
                    }
                })
                .collect();
            rows.push(vec![
                su.path.clone(),
                su.node.clone(),
                su.rank.to_string(),
                su.admin.clone(),
                su.oper.clone(),
                su.presence.clone(),
                su.readiness.clone(),
                pids.join(","),
            ]);
        }
        out.push_str(&table(&rows, "  "));
        let mut rows = vec![["SI", "ADMIN", "STATE", "ACTIVE", "STANDBY", "OTHER"]
            .map(String::from)
            .to_vec()];
        for si in &g.sis {
            let holders = |ha: &str| {
                let v: Vec<String> = si
                    .assignments
                    .iter()
                    .filter(|a| a.ha_state == ha)
                    .map(|a| {
                        if a.confirmed {
                            a.su.clone()
                        } else {
                            format!("{}*", a.su)
                        }
                    })
                    .collect();
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(",")
                }
            };
            let other: Vec<String> = si
                .assignments
                .iter()
                .filter(|a| a.ha_state != "active" && a.ha_state != "standby")
                .map(|a| {
                    format!(
                        "{}:{}{}",
                        a.su,
                        a.ha_state,
                        if a.confirmed { "" } else { "*" }
                    )
                })
                .collect();
            rows.push(vec![
                si.path.clone(),
                si.admin.clone(),
                si.state.clone(),
                holders("active"),
                holders("standby"),
                if other.is_empty() {
                    "-".to_string()
                } else {
                    other.join(",")
                },
            ]);
        }
        out.push_str(&table(&rows, "  "));
    }
    if s.sgs
        .iter()
        .flat_map(|g| &g.sis)
        .any(|si| si.assignments.iter().any(|a| !a.confirmed))
    {
        out.push_str("\n* not yet confirmed by every component\n");
    }
    out
}

/// The per-fault table printed after `nines events`.
pub fn fault_table(rows: &[FaultRow]) -> String {
    if rows.is_empty() {
        return "no faults\n".to_string();
    }
    let ms = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
    let mut t = vec![[
        "RUN",
        "FAULT",
        "ENTITY",
        "KIND",
        "RECOVERY",
        "REACTION_MS",
        "OUTAGE_MS",
        "REPAIR_MS",
    ]
    .map(String::from)
    .to_vec()];
    for r in rows {
        let recovery = match &r.escalated_from {
            Some(from) => format!("{} (escalated from {from})", r.recovery),
            None => r.recovery.clone(),
        };
        t.push(vec![
            r.run.to_string(),
            format!("#{}", r.fault),
            r.entity.clone(),
            r.kind.clone(),
            recovery,
            ms(r.reaction_ms),
            ms(r.outage_ms),
            ms(r.repair_ms),
        ]);
    }
    table(&t, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{AssignmentStatus, CompStatus, NodeStatus, SgStatus, SiStatus, SuStatus};
    use serde_json::json;

    #[test]
    fn event_lines_read_like_a_console() {
        let v = json!({"seq":4,"run":1,"t_ns":12_345_000_000u64,"event":"fault-detected","fault":3,
            "entity":"counter/sg/su-1/counterd","kind":"exited","recovery":"su-failover",
            "affected":["counter/si"],"reaction_ms":0.0123});
        assert_eq!(
            event_line(&v).as_deref(),
            Some("    12.345s  fault #3 counter/sg/su-1/counterd exited -> su-failover (affects counter/si) reaction 0.012 ms")
        );
        let v = json!({"t_ns":1,"event":"service-recovered","fault":3,"outage_ms":0.84});
        assert!(event_line(&v).is_some_and(|l| l.ends_with("recovered #3 outage 0.840 ms")));
        let v = json!({"t_ns":1,"event":"assignment","si":"a/si","su":"a/sg/su-2","ha_state":null});
        assert!(event_line(&v).is_some_and(|l| l.ends_with("a/si removed from a/sg/su-2")));
        let v = json!({"t_ns":1,"event":"brand-new","x":1});
        assert!(event_line(&v).is_some_and(|l| l.ends_with("brand-new x=1")));
        assert_eq!(event_line(&json!("garbage")), None);
        let v = json!({"t_ns":1,"event":"admin-reply","ok":true,"op":"lock","target":"a/sg"});
        assert_eq!(event_line(&v), None);
        let v = json!({"t_ns":1,"event":"admin-reply","ok":false,"error":"lock a refused: x"});
        assert!(event_line(&v).is_some_and(|l| l.ends_with("admin refused: lock a refused: x")));
    }

    #[test]
    fn status_table_shows_sus_and_who_is_active() {
        let s = Status {
            cluster: "demo".into(),
            run: 2,
            t_ns: 1_500_000_000,
            admin: "unlocked".into(),
            open_faults: 0,
            nodes: vec![NodeStatus {
                path: "node/n1".into(),
                up: true,
                admin: "unlocked".into(),
            }],
            apps: vec![],
            sgs: vec![SgStatus {
                path: "a/sg".into(),
                redundancy: "2n".into(),
                admin: "unlocked".into(),
                sus: vec![SuStatus {
                    path: "a/sg/su-1".into(),
                    node: "node/n1".into(),
                    rank: 1,
                    admin: "unlocked".into(),
                    oper: "enabled".into(),
                    presence: "instantiated".into(),
                    readiness: "in-service".into(),
                    components: vec![CompStatus {
                        path: "a/sg/su-1/c".into(),
                        presence: "instantiated".into(),
                        pid: Some(77),
                    }],
                }],
                sis: vec![SiStatus {
                    path: "a/si".into(),
                    admin: "unlocked".into(),
                    state: "partially-assigned".into(),
                    assignments: vec![AssignmentStatus {
                        su: "a/sg/su-1".into(),
                        ha_state: "active".into(),
                        confirmed: false,
                    }],
                }],
            }],
        };
        let t = status_table(&s);
        assert!(t.contains("SG a/sg (2n)"), "{t}");
        assert!(
            t.contains(
                "a/sg/su-1  node/n1  1     unlocked  enabled  instantiated  in-service  c=77"
            ),
            "{t}"
        );
        assert!(
            t.contains("a/si  unlocked  partially-assigned  a/sg/su-1*  -"),
            "{t}"
        );
        assert!(t.contains("not yet confirmed"), "{t}");
    }

    #[test]
    fn fault_table_has_a_row_per_fault() {
        let rows = vec![FaultRow {
            run: 1,
            fault: 3,
            entity: "a/sg/su-1/c".into(),
            kind: "exited".into(),
            recovery: "su-failover".into(),
            escalated_from: None,
            failed_ns: 0,
            reaction_ms: Some(0.01),
            outage_ms: Some(0.84),
            repair_ms: None,
        }];
        let t = fault_table(&rows);
        assert!(t.starts_with("RUN  FAULT  ENTITY"), "{t}");
        assert!(
            t.contains("1    #3     a/sg/su-1/c  exited  su-failover  0.010        0.840      -"),
            "{t}"
        );
        assert_eq!(fault_table(&[]), "no faults\n");
    }
}
