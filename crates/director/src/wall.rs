//! Wall-clock timestamps for the event log.
//!
//! Engine instants are nanoseconds since the run's clock started; people and other tools want
//! calendar time. We take one (instant, wall time) pair at start and derive the wall time of
//! every event from it, so the two columns of a line never disagree. RFC 3339 is written by
//! hand (days-to-civil conversion) rather than pulling in a date crate for one format.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nines_engine::Instant;

/// Maps engine instants to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    at: Instant,
    wall: SystemTime,
}

impl WallClock {
    /// Anchors engine instant `at` to the wall time `wall` (both read at the same moment).
    pub fn new(at: Instant, wall: SystemTime) -> WallClock {
        WallClock { at, wall }
    }

    /// The RFC 3339 UTC time (microseconds) of an engine instant.
    pub fn rfc3339(&self, t: Instant) -> String {
        let wall = if t >= self.at {
            self.wall + (t - self.at)
        } else {
            self.wall - (self.at - t)
        };
        rfc3339(wall)
    }
}

/// Formats a wall time as `2025-01-31T12:34:56.789012Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Howard Hinnant's days-since-1970 to (year, month, day) for the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29T12:00:00.5Z, a leap day.
        let t = UNIX_EPOCH + Duration::from_millis(951_825_600_500);
        assert_eq!(rfc3339(t), "2000-02-29T12:00:00.500000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59.000000Z");
    }

    #[test]
    fn wall_clock_offsets_from_its_anchor() {
        let w = WallClock::new(
            Instant::from_nanos(1_000_000_000),
            UNIX_EPOCH + Duration::from_secs(10),
        );
        assert_eq!(
            w.rfc3339(Instant::from_nanos(1_500_000_000)),
            "1970-01-01T00:00:10.500000Z"
        );
        assert_eq!(
            w.rfc3339(Instant::from_nanos(0)),
            "1970-01-01T00:00:09.000000Z"
        );
    }
}
