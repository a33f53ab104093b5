//! One-line, path-named renderings of inputs and actions for traces and verbose replays.
//!
//! A trace is read by a person hunting a bug, so it names entities by path (never by index)
//! and keeps one fact per line. Only integers are formatted, so a trace is the same byte for
//! byte on every platform.

use nines_engine::{
    ActionKind, AdminState, Command, Event, FaultKind, HaState, Input, Instant, Outcome, Timer,
};
use nines_model::{CompId, CsiId, EntityRef, Model, SiId};

/// `12.345ms`: virtual time in milliseconds with microsecond digits.
pub fn time(t: Instant) -> String {
    let ns = t.as_nanos();
    format!("{}.{:03}ms", ns / 1_000_000, (ns / 1_000) % 1_000)
}

fn comp(m: &Model, c: CompId) -> &str {
    &m.comps[c.index()].path
}

fn csi(m: &Model, c: CsiId) -> &str {
    &m.csis[c.index()].path
}

fn si(m: &Model, s: SiId) -> &str {
    &m.sis[s.index()].path
}

fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Failed => "FAILED",
        Outcome::TimedOut => "TIMED-OUT",
    }
}

fn command(c: Command) -> &'static str {
    match c {
        Command::Instantiate => "instantiate",
        Command::Terminate => "terminate",
        Command::Cleanup => "cleanup",
    }
}

/// The name of a fault kind, as in events.
pub fn fault_kind(k: FaultKind) -> &'static str {
    match k {
        FaultKind::Exited => "exited",
        FaultKind::HealthcheckMissed => "healthcheck-missed",
        FaultKind::ErrorReport => "error-report",
    }
}

fn admin_state(a: AdminState) -> &'static str {
    match a {
        AdminState::Unlocked => "unlocked",
        AdminState::Locked => "locked",
        AdminState::LockedInstantiation => "locked-instantiation",
        AdminState::ShuttingDown => "shutting-down",
    }
}

fn timer(m: &Model, t: &Timer) -> String {
    match t {
        Timer::InstantiateRetry {
            comp: c,
            generation,
        } => {
            format!("instantiate-retry {} gen {}", comp(m, *c), generation)
        }
        Timer::SponsorTolerance {
            dependent,
            generation,
        } => format!("sponsor-tolerance {} gen {}", si(m, *dependent), generation),
        #[allow(unreachable_patterns)]
        other => format!("{other:?}"),
    }
}

fn ha(h: HaState) -> &'static str {
    h.name()
}

/// An input, e.g. `CommandDone app/sg/su/comp instantiate ok`.
pub fn input(m: &Model, i: &Input) -> String {
    match i {
        Input::Start => "Start".to_string(),
        Input::Resume {
            running,
            held,
            moved,
        } => {
            let moved: Vec<String> = moved
                .iter()
                .map(|(su, n)| {
                    format!(
                        "{} on {}",
                        m.path(EntityRef::Su(*su)),
                        m.path(EntityRef::Node(*n))
                    )
                })
                .collect();
            let running: Vec<&str> = running.iter().map(|c| comp(m, *c)).collect();
            let held: Vec<String> = held
                .iter()
                .map(|(c, csi, h)| {
                    format!(
                        "{} {} {}",
                        comp(m, *c),
                        m.path(EntityRef::Csi(*csi)),
                        ha(*h)
                    )
                })
                .collect();
            format!(
                "Resume running [{}] holding [{}] moved [{}]",
                running.join(", "),
                held.join(", "),
                moved.join(", ")
            )
        }
        Input::CommandDone {
            comp: c,
            command: k,
            outcome: o,
        } => format!(
            "CommandDone {} {} {}",
            comp(m, *c),
            command(*k),
            outcome(*o)
        ),
        Input::ComponentFailed {
            comp: c,
            kind,
            recommended,
        } => format!(
            "ComponentFailed {} {}{}",
            comp(m, *c),
            fault_kind(*kind),
            recommended.map_or(String::new(), |r| format!(" recommends {}", r.name()))
        ),
        Input::CsiAssigned {
            comp: c,
            csi: s,
            ha_state,
            outcome: o,
        } => format!(
            "CsiAssigned {} {} {} {}",
            comp(m, *c),
            csi(m, *s),
            ha(*ha_state),
            outcome(*o)
        ),
        Input::CsiRemoved {
            comp: c,
            csi: s,
            outcome: o,
        } => format!("CsiRemoved {} {} {}", comp(m, *c), csi(m, *s), outcome(*o)),
        Input::QuiescingComplete { comp: c, csi: s } => {
            format!("QuiescingComplete {} {}", comp(m, *c), csi(m, *s))
        }
        Input::NodeDown { node } => format!("NodeDown {}", m.path(EntityRef::Node(*node))),
        Input::NodeLost { node } => format!("NodeLost {}", m.path(EntityRef::Node(*node))),
        Input::NodeUp { node } => format!("NodeUp {}", m.path(EntityRef::Node(*node))),
        Input::FenceDone { node, outcome: o } => format!(
            "FenceDone {} {}",
            m.path(EntityRef::Node(*node)),
            outcome(*o)
        ),
        Input::TimerFired { timer: t } => format!("TimerFired {}", timer(m, t)),
        Input::Admin {
            request,
            op,
            target,
        } => format!("Admin #{} {} {}", request, op.name(), m.path(*target)),
        #[allow(unreachable_patterns)]
        Input::NodeRelinked { node } => {
            format!("NodeRelinked {}", m.path(EntityRef::Node(*node)))
        }
        Input::MigrationPrepared { comp: c, port } => match port {
            Some(p) => format!("MigrationPrepared {} port {p}", comp(m, *c)),
            None => format!("MigrationPrepared {} failed", comp(m, *c)),
        },
        Input::MigrationSent { comp: c, outcome } => {
            format!("MigrationSent {} {outcome:?}", comp(m, *c))
        }
        Input::MigrationFinished { comp: c, outcome } => {
            format!("MigrationFinished {} {outcome:?}", comp(m, *c))
        }
    }
}

/// A recorded event, e.g. `FaultDetected #3 app/sg/su/comp exited -> su-failover [app/si]`.
pub fn event(m: &Model, e: &Event) -> String {
    match e {
        Event::FaultDetected {
            fault,
            entity,
            kind,
            recovery,
            affected,
        } => {
            let a: Vec<&str> = affected.iter().map(|s| si(m, *s)).collect();
            format!(
                "FaultDetected #{} {} {} -> {} affects [{}]",
                fault,
                m.path(*entity),
                kind.map_or("node", fault_kind),
                recovery.name(),
                a.join(", ")
            )
        }
        Event::FaultIgnored { entity, reason } => {
            format!("FaultIgnored {} ({})", m.path(*entity), reason)
        }
        Event::Escalated { fault, from, to } => {
            format!("Escalated #{} {} -> {}", fault, from.name(), to.name())
        }
        Event::GuestHeld {
            fault,
            node,
            vm,
            affected,
        } => {
            let a: Vec<&str> = affected.iter().map(|s| si(m, *s)).collect();
            format!(
                "GuestHeld #{} {} (vm {}) holds [{}]",
                fault,
                m.path(EntityRef::Node(*node)),
                comp(m, *vm),
                a.join(", ")
            )
        }
        Event::GuestReset {
            fault,
            node,
            vm,
            recovery,
        } => format!(
            "GuestReset #{} {} by {} of {}",
            fault,
            m.path(EntityRef::Node(*node)),
            recovery.name(),
            comp(m, *vm)
        ),
        Event::ServiceRecovered { fault, outage } => format!(
            "ServiceRecovered #{} outage {}",
            fault,
            time(Instant::from_nanos(
                u64::try_from(outage.as_nanos()).unwrap_or(u64::MAX)
            ))
        ),
        Event::Repaired { fault, repair } => format!(
            "Repaired #{} after {}",
            fault,
            time(Instant::from_nanos(
                u64::try_from(repair.as_nanos()).unwrap_or(u64::MAX)
            ))
        ),
        Event::Presence { comp: c, presence } => {
            format!("Presence {} {:?}", comp(m, *c), presence)
        }
        Event::Oper { su, oper } => format!("Oper {} {:?}", m.path(EntityRef::Su(*su)), oper),
        Event::Readiness { su, readiness } => {
            format!("Readiness {} {:?}", m.path(EntityRef::Su(*su)), readiness)
        }
        Event::Admin { entity, admin } => {
            format!("AdminState {} {}", m.path(*entity), admin_state(*admin))
        }
        Event::Assignment {
            si: s,
            su,
            ha_state,
        } => format!(
            "Assignment {} on {} {}",
            si(m, *s),
            m.path(EntityRef::Su(*su)),
            ha_state.map_or("removed", ha)
        ),
        Event::SiState { si: s, state } => format!("SiState {} {:?}", si(m, *s), state),
        Event::Node { node, up } => format!(
            "Node {} {}",
            m.path(EntityRef::Node(*node)),
            if *up { "up" } else { "down" }
        ),
        Event::AdminDone { op, target } => {
            format!("AdminDone {} {}", op.name(), m.path(*target))
        }
        #[allow(unreachable_patterns)]
        Event::MigrationStarted {
            comp: c, from, to, ..
        } => format!(
            "MigrationStarted {} {} -> {}",
            comp(m, *c),
            m.path(EntityRef::Node(*from)),
            m.path(EntityRef::Node(*to))
        ),
        Event::Migrated {
            comp: c, to, took, ..
        } => format!(
            "Migrated {} to {} in {:.3}ms",
            comp(m, *c),
            m.path(EntityRef::Node(*to)),
            took.as_secs_f64() * 1e3
        ),
        Event::MigrationFailed {
            comp: c, reason, ..
        } => format!("MigrationFailed {}: {reason}", comp(m, *c)),
        Event::GuestRelinking { node } => {
            format!("GuestRelinking {}", m.path(EntityRef::Node(*node)))
        }
        Event::GuestRelinked { node } => {
            format!("GuestRelinked {}", m.path(EntityRef::Node(*node)))
        }
    }
}

/// An action, e.g. `AssignCsi app/sg/su/comp app/si/csi active`.
pub fn action(m: &Model, a: &ActionKind) -> String {
    match a {
        ActionKind::Instantiate { comp: c, .. } => format!("Instantiate {}", comp(m, *c)),
        ActionKind::Terminate { comp: c } => format!("Terminate {}", comp(m, *c)),
        ActionKind::Cleanup { comp: c } => format!("Cleanup {}", comp(m, *c)),
        ActionKind::AssignCsi {
            comp: c,
            csi: s,
            ha_state,
        } => format!("AssignCsi {} {} {}", comp(m, *c), csi(m, *s), ha(*ha_state)),
        ActionKind::RemoveCsi { comp: c, csi: s } => {
            format!("RemoveCsi {} {}", comp(m, *c), csi(m, *s))
        }
        ActionKind::Fence { node } => format!("Fence {}", m.path(EntityRef::Node(*node))),
        ActionKind::StartTimer { timer: t, at } => {
            format!("StartTimer {} at {}", timer(m, t), time(*at))
        }
        ActionKind::AdminReply { request, result } => match result {
            Ok(()) => format!("AdminReply #{request} ok"),
            Err(e) => format!("AdminReply #{request} refused: {e}"),
        },
        ActionKind::Record(e) => format!("Record {}", event(m, e)),
        #[allow(unreachable_patterns)]
        ActionKind::MigrateIn { comp: c, to } => format!(
            "MigrateIn {} on {}",
            comp(m, *c),
            m.path(EntityRef::Node(*to))
        ),
        ActionKind::MigrateOut { comp: c, to, port } => format!(
            "MigrateOut {} to {}:{port}",
            comp(m, *c),
            m.path(EntityRef::Node(*to))
        ),
        ActionKind::MigrateFinish {
            comp: c,
            to,
            commit,
        } => format!(
            "MigrateFinish {} on {} {}",
            comp(m, *c),
            m.path(EntityRef::Node(*to)),
            if *commit { "commit" } else { "discard" }
        ),
    }
}
