//! The engine's events as event-log fields: entity paths instead of ids, states by name,
//! durations in milliseconds (floats), so the log can be read and joined without the model.

use std::time::Duration;

use nines_engine::{Event, Instant};
use nines_model::{EntityRef, Model};
use serde_json::{json, Value};

use crate::names;

/// The fields of one event-log line after the common ones (`seq`, `run`, `t_ns`, `wall`).
/// Kept in insertion order, so a line reads `event` first, then the entity, then the details.
pub type Fields = Vec<(&'static str, Value)>;

/// Milliseconds as a float, the unit of every duration in the log.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Timing the engine cannot know: when the director fed the input that detected a fault. A
/// fault's failure instant is the instant of the input that reported it (for a process exit,
/// when the agent saw its pidfd become readable); `detected` is when the engine decided.
#[derive(Clone, Copy, Debug)]
pub struct Detection {
    /// The instant of the report that revealed the fault (the engine's `now`).
    pub failed: Instant,
    /// When the engine's decision came back to the director.
    pub detected: Instant,
}

/// The event name and fields of one engine event.
pub fn event_fields(model: &Model, event: &Event, detection: Detection) -> (&'static str, Fields) {
    let path = |e: EntityRef| Value::String(model.path(e));
    match event {
        Event::FaultDetected {
            fault,
            entity,
            kind,
            recovery,
            affected,
        } => (
            "fault-detected",
            vec![
                ("fault", json!(fault)),
                ("entity", path(*entity)),
                (
                    "kind",
                    kind.map(names::fault_kind).map_or(Value::Null, Value::from),
                ),
                ("recovery", json!(recovery.name())),
                (
                    "affected",
                    Value::Array(affected.iter().map(|&si| path(EntityRef::Si(si))).collect()),
                ),
                ("failed_ns", json!(detection.failed.as_nanos())),
                ("detected_ns", json!(detection.detected.as_nanos())),
                (
                    "reaction_ms",
                    json!(ms(detection.detected.saturating_since(detection.failed))),
                ),
            ],
        ),
        Event::FaultIgnored { entity, reason } => (
            "fault-ignored",
            vec![("entity", path(*entity)), ("reason", json!(reason))],
        ),
        Event::Escalated { fault, from, to } => (
            "escalated",
            vec![
                ("fault", json!(fault)),
                ("from", json!(from.name())),
                ("to", json!(to.name())),
            ],
        ),
        Event::GuestHeld {
            fault,
            node,
            vm,
            affected,
        } => (
            "guest-held",
            vec![
                ("fault", json!(fault)),
                ("node", path(EntityRef::Node(*node))),
                ("vm", path(EntityRef::Comp(*vm))),
                (
                    "affected",
                    Value::Array(affected.iter().map(|&si| path(EntityRef::Si(si))).collect()),
                ),
            ],
        ),
        Event::GuestReset {
            fault,
            node,
            vm,
            recovery,
        } => (
            "guest-reset",
            vec![
                ("fault", json!(fault)),
                ("node", path(EntityRef::Node(*node))),
                ("vm", path(EntityRef::Comp(*vm))),
                ("recovery", json!(recovery.name())),
            ],
        ),
        Event::ServiceRecovered { fault, outage } => (
            "service-recovered",
            vec![("fault", json!(fault)), ("outage_ms", json!(ms(*outage)))],
        ),
        Event::Repaired { fault, repair } => (
            "repaired",
            vec![("fault", json!(fault)), ("repair_ms", json!(ms(*repair)))],
        ),
        Event::Presence { comp, presence } => (
            "presence",
            vec![
                ("entity", path(EntityRef::Comp(*comp))),
                ("presence", json!(names::presence(*presence))),
            ],
        ),
        Event::Oper { su, oper } => (
            "oper",
            vec![
                ("entity", path(EntityRef::Su(*su))),
                ("oper", json!(names::oper(*oper))),
            ],
        ),
        Event::Readiness { su, readiness } => (
            "readiness",
            vec![
                ("entity", path(EntityRef::Su(*su))),
                ("readiness", json!(names::readiness(*readiness))),
            ],
        ),
        Event::Admin { entity, admin } => (
            "admin",
            vec![
                ("entity", path(*entity)),
                ("admin", json!(names::admin(*admin))),
            ],
        ),
        Event::Assignment { si, su, ha_state } => (
            "assignment",
            vec![
                ("si", path(EntityRef::Si(*si))),
                ("su", path(EntityRef::Su(*su))),
                (
                    "ha_state",
                    ha_state.map_or(Value::Null, |h| Value::from(h.name())),
                ),
            ],
        ),
        Event::SiState { si, state } => (
            "si-state",
            vec![
                ("si", path(EntityRef::Si(*si))),
                ("state", json!(names::si_state(*state))),
            ],
        ),
        Event::Node { node, up } => (
            "node",
            vec![("node", path(EntityRef::Node(*node))), ("up", json!(up))],
        ),
        Event::AdminDone { op, target } => (
            "admin-done",
            vec![("op", json!(op.name())), ("target", path(*target))],
        ),
        Event::MigrationStarted { su, comp, from, to } => (
            "migration-started",
            vec![
                ("entity", path(EntityRef::Su(*su))),
                ("vm", path(EntityRef::Comp(*comp))),
                ("from", path(EntityRef::Node(*from))),
                ("to", path(EntityRef::Node(*to))),
            ],
        ),
        Event::Migrated {
            su,
            comp,
            from,
            to,
            took,
        } => (
            "migrated",
            vec![
                ("entity", path(EntityRef::Su(*su))),
                ("vm", path(EntityRef::Comp(*comp))),
                ("from", path(EntityRef::Node(*from))),
                ("to", path(EntityRef::Node(*to))),
                ("took_ms", json!(ms(*took))),
            ],
        ),
        Event::MigrationFailed {
            su,
            comp,
            from,
            to,
            reason,
        } => (
            "migration-failed",
            vec![
                ("entity", path(EntityRef::Su(*su))),
                ("vm", path(EntityRef::Comp(*comp))),
                ("from", path(EntityRef::Node(*from))),
                ("to", to.map_or(Value::Null, |n| path(EntityRef::Node(n)))),
                ("reason", json!(reason)),
            ],
        ),
        Event::GuestRelinking { node } => (
            "guest-relinking",
            vec![("node", path(EntityRef::Node(*node)))],
        ),
        Event::GuestRelinked { node } => (
            "guest-relinked",
            vec![("node", path(EntityRef::Node(*node)))],
        ),
        #[allow(unreachable_patterns)]
        other => ("other", vec![("debug", json!(format!("{other:?}")))]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nines_engine::{FaultKind, HaState, RecoveryStep};
    use nines_model::{CompId, SiId, SuId};

    fn model() -> Model {
        let text = "\
cluster: t
nodes: [n1, n2]
apps:
  a:
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
    fn fault_detected_names_paths_and_reaction() {
        let m = model();
        let ev = Event::FaultDetected {
            fault: 3,
            entity: EntityRef::Comp(CompId(0)),
            kind: Some(FaultKind::Exited),
            recovery: RecoveryStep::SuFailover,
            affected: vec![SiId(0)],
        };
        let d = Detection {
            failed: Instant::from_nanos(1_000_000),
            detected: Instant::from_nanos(1_250_000),
        };
        let (name, fields) = event_fields(&m, &ev, d);
        assert_eq!(name, "fault-detected");
        let get = |k: &str| fields.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("entity"), Some(json!("a/sg/su-1/c")));
        assert_eq!(get("kind"), Some(json!("exited")));
        assert_eq!(get("recovery"), Some(json!("su-failover")));
        assert_eq!(get("affected"), Some(json!(["a/si"])));
        assert_eq!(get("reaction_ms"), Some(json!(0.25)));
    }

    #[test]
    fn assignment_removal_is_null() {
        let m = model();
        let ev = Event::Assignment {
            si: SiId(0),
            su: SuId(1),
            ha_state: None,
        };
        let d = Detection {
            failed: Instant::ZERO,
            detected: Instant::ZERO,
        };
        let (_, fields) = event_fields(&m, &ev, d);
        assert_eq!(fields[2], ("ha_state", Value::Null));
        let ev = Event::Assignment {
            si: SiId(0),
            su: SuId(1),
            ha_state: Some(HaState::Standby),
        };
        let (_, fields) = event_fields(&m, &ev, d);
        assert_eq!(fields[1], ("su", json!("a/sg/su-2")));
        assert_eq!(fields[2], ("ha_state", json!("standby")));
    }
}
