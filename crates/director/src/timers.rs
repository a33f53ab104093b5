//! The engine's timers: `StartTimer{timer, at}` is answered by `TimerFired{timer}` at `at`.
//!
//! A set ordered by due instant, and one tokio sleep until the earliest. Timers are never
//! cancelled: the engine recognises a stale one by its generation and ignores it, so firing it
//! anyway is harmless and keeps this trivially correct.

use std::collections::BTreeSet;

use nines_engine::{Instant, Timer};

/// Pending timers, earliest first.
#[derive(Debug, Default)]
pub struct Timers {
    pending: BTreeSet<(Instant, Timer)>,
}

impl Timers {
    /// Remembers a timer due at `at`.
    pub fn start(&mut self, timer: Timer, at: Instant) {
        self.pending.insert((at, timer));
    }

    /// The earliest due instant.
    pub fn next(&self) -> Option<Instant> {
        self.pending.first().map(|(at, _)| *at)
    }

    /// Removes and returns every timer due at or before `now`, earliest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<(Instant, Timer)> {
        let mut due = Vec::new();
        while let Some(&(at, timer)) = self.pending.first() {
            if at > now {
                break;
            }
            self.pending.pop_first();
            due.push((at, timer));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nines_model::CompId;

    #[test]
    fn due_timers_come_out_in_order() {
        let t = |g| Timer::InstantiateRetry {
            comp: CompId(0),
            generation: g,
        };
        let mut timers = Timers::default();
        timers.start(t(2), Instant::from_nanos(20));
        timers.start(t(1), Instant::from_nanos(10));
        timers.start(t(3), Instant::from_nanos(30));
        assert_eq!(timers.next(), Some(Instant::from_nanos(10)));
        let due = timers.take_due(Instant::from_nanos(25));
        assert_eq!(
            due.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
            vec![t(1), t(2)]
        );
        assert_eq!(timers.next(), Some(Instant::from_nanos(30)));
        assert_eq!(timers.take_due(Instant::from_nanos(30)).len(), 1);
        assert_eq!(timers.next(), None);
    }
}
