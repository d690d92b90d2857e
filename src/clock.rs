//! Where "now" comes from: the system clock, or a clock that tests and backfills set.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// A source of the current time. Every time-lock decision in a round reads one.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that says what it is told: the CLI's `--now`, and tests. It holds whole
/// microseconds (the tables' resolution) in an atomic, so a round's many reads of it from
/// concurrent calls never wait on each other.
#[derive(Debug)]
pub struct FixedClock(AtomicI64);

impl FixedClock {
    /// A clock stopped at `now`.
    pub fn new(now: DateTime<Utc>) -> Self {
        FixedClock(AtomicI64::new(to_micros(now)))
    }

    /// Moves the clock to `now`.
    pub fn set(&self, now: DateTime<Utc>) {
        self.0.store(to_micros(now), Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        from_micros(self.0.load(Ordering::SeqCst))
    }
}

/// Truncates a time to whole microseconds, the resolution of the tables' timestamps.
pub fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The inverse of [`to_micros`].
pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Rounds a time up to whole milliseconds, the resolution of Delta's file statistics, so
/// a time lock read back from the statistics is exact.
pub fn ceil_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    let us = to_micros(t);
    match us.rem_euclid(1000) {
        0 => t,
        r => from_micros(us - r + 1000),
    }
}

/// Rounds a time down to whole milliseconds (see [`ceil_millis`]).
pub fn floor_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    let us = to_micros(t);
    from_micros(us - us.rem_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_milliseconds() {
        let t = from_micros(1_700_000_000_123_456);
        assert_eq!(to_micros(ceil_millis(t)), 1_700_000_000_124_000);
        assert_eq!(to_micros(floor_millis(t)), 1_700_000_000_123_000);
        let whole = from_micros(1_700_000_000_123_000);
        assert_eq!(ceil_millis(whole), whole);
        assert_eq!(floor_millis(whole), whole);
    }
}
