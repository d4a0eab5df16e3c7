//! Time as the core sees it: a number of microseconds handed in by the driver.
//!
//! The core never reads a clock. Every `handle_*` call carries `now`, and the core answers with
//! the earliest [`Instant`] at which it wants [`crate::Node::handle_timeout`] to be called.

use core::ops::{Add, Sub};
use core::time::Duration;

/// Microseconds since the driver's epoch (process start in the mio driver, 0 in the simulator).
///
/// Arithmetic saturates: an `Instant` never wraps, so a timer far in the future stays far in
/// the future instead of firing at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(pub u64);

impl Instant {
    /// The driver's epoch.
    pub const ZERO: Instant = Instant(0);
    /// Never: later than every real instant.
    pub const NEVER: Instant = Instant(u64::MAX);

    /// From milliseconds since the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms.saturating_mul(1000))
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Milliseconds since the epoch (rounded down).
    pub const fn as_millis(self) -> u64 {
        self.0 / 1000
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(micros(d)))
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(micros(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Instant::NEVER + Duration::from_secs(1), Instant::NEVER);
        assert_eq!(Instant::ZERO - Duration::from_secs(1), Instant::ZERO);
        assert_eq!(Instant::from_millis(3).since(Instant::from_millis(1)), Duration::from_millis(2));
        assert_eq!(Instant::from_millis(1).since(Instant::from_millis(3)), Duration::ZERO);
    }
}
