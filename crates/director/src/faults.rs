//! Per-fault metrics from the event log: for each fault, when it failed, how fast the engine
//! reacted, how long the service was out and how long until the faulty entity was repaired.
//! Fault ids restart with each run, so a fault is `(run, fault)`.

use std::collections::BTreeMap;

use serde_json::Value;

/// One fault, joined across its events.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRow {
    /// The run that saw it.
    pub run: u64,
    /// Its id within the run.
    pub fault: u64,
    /// The failed entity's path.
    pub entity: String,
    /// How it was seen (`exited`, ...), or `node` for node faults.
    pub kind: String,
    /// The recovery the engine carried out (after escalation).
    pub recovery: String,
    /// What escalation replaced, if anything.
    pub escalated_from: Option<String>,
    /// The failure instant (engine time of the report), ns.
    pub failed_ns: u64,
    /// Failure report to engine decision, ms.
    pub reaction_ms: Option<f64>,
    /// Failure to every affected SI active again, ms.
    pub outage_ms: Option<f64>,
    /// Failure to the faulty entity back in service, ms.
    pub repair_ms: Option<f64>,
}

/// Joins the fault events of `lines` (parsed event-log lines, any order of runs) into one row
/// per fault, in the order the faults were detected.
pub fn summarize<'a>(lines: impl IntoIterator<Item = &'a Value>) -> Vec<FaultRow> {
    let mut rows: Vec<FaultRow> = Vec::new();
    let mut index: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    let mut escalated: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for v in lines {
        let (Some(run), Some(fault)) = (
            v.get("run").and_then(Value::as_u64),
            v.get("fault").and_then(Value::as_u64),
        ) else {
            continue;
        };
        let key = (run, fault);
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        match v.get("event").and_then(Value::as_str) {
            Some("escalated") => {
                // Comes before the detection it belongs to; the first `from` is what was asked.
                if let Some(from) = s("from") {
                    escalated.entry(key).or_insert(from);
                }
            }
            Some("fault-detected") => {
                index.insert(key, rows.len());
                rows.push(FaultRow {
                    run,
                    fault,
                    entity: s("entity").unwrap_or_default(),
                    kind: s("kind").unwrap_or_else(|| "node".to_string()),
                    recovery: s("recovery").unwrap_or_default(),
                    escalated_from: escalated.remove(&key),
                    failed_ns: v
                        .get("failed_ns")
                        .or_else(|| v.get("t_ns"))
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    reaction_ms: f("reaction_ms"),
                    outage_ms: None,
                    repair_ms: None,
                });
            }
            Some("service-recovered") => {
                if let Some(&i) = index.get(&key) {
                    rows[i].outage_ms = f("outage_ms");
                }
            }
            Some("repaired") => {
                if let Some(&i) = index.get(&key) {
                    rows[i].repair_ms = f("repair_ms");
                }
            }
            _ => {}
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn joins_detection_recovery_and_repair_per_run() {
        let lines = [
            json!({"run":1,"t_ns":5,"event":"escalated","fault":1,"from":"component-restart","to":"su-failover"}),
            json!({"run":1,"t_ns":5,"event":"fault-detected","fault":1,"entity":"a/sg/su-1/c","kind":"exited","recovery":"su-failover","failed_ns":5,"reaction_ms":0.01}),
            json!({"run":1,"t_ns":9,"event":"service-recovered","fault":1,"outage_ms":0.5}),
            json!({"run":2,"t_ns":3,"event":"fault-detected","fault":1,"entity":"node/n1","kind":null,"recovery":"node-failover"}),
            json!({"run":1,"t_ns":99,"event":"repaired","fault":1,"repair_ms":12.5}),
            json!({"run":1,"event":"presence"}),
        ];
        let rows = summarize(&lines);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].escalated_from.as_deref(), Some("component-restart"));
        assert_eq!(rows[0].outage_ms, Some(0.5));
        assert_eq!(rows[0].repair_ms, Some(12.5));
        assert_eq!(rows[0].reaction_ms, Some(0.01));
        assert_eq!(rows[1].run, 2);
        assert_eq!(rows[1].kind, "node");
        assert_eq!(rows[1].failed_ns, 3);
        assert_eq!(rows[1].outage_ms, None);
    }
}
