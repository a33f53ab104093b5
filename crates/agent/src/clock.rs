//! The agent's clock: turns wall-clock moments into the engine's [`Instant`].

use nines_engine::Instant;

/// Stamps facts with the moment they were observed, as nanoseconds since an epoch.
///
/// The engine never reads a clock, so whoever feeds it must agree on one epoch: the director and
/// every agent of one process share a copy of the same `Clock` (it is `Copy`), and their
/// timestamps are then directly comparable (outage = recovery stamp - failure stamp).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: std::time::Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Clock {
            epoch: std::time::Instant::now(),
        }
    }

    /// A clock with a given epoch, so that a driver can align it with timestamps it already has.
    pub fn with_epoch(epoch: std::time::Instant) -> Self {
        Clock { epoch }
    }

    /// The current instant, for stamping a fact at the moment it is seen.
    pub fn now(&self) -> Instant {
        self.at(std::time::Instant::now())
    }

    /// The engine instant of a moment measured elsewhere (e.g. when a readiness event fired);
    /// moments before the epoch map to the epoch.
    pub fn at(&self, moment: std::time::Instant) -> Instant {
        let nanos = moment.saturating_duration_since(self.epoch).as_nanos();
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
