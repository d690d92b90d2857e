//! Where "now" comes from: the system clock, or a clock that tests and backfills set.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

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

/// The inverse of [`to_micros`]. A count of microseconds past either end of the times a
/// [`DateTime`] holds (about 262,000 years either side of 1970) gives that end.
pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(if us < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// `t + d`, or the last time a [`DateTime`] holds when that is past it. Never panics,
/// whatever a flag or a downstream asked for: time arithmetic on durations that come from
/// outside goes through here, never through `+`.
pub(crate) fn add_saturating(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Rounds a time up to whole milliseconds, the resolution of Delta's file statistics, so
/// a time lock read back from the statistics is exact. Past the last whole millisecond a
/// [`DateTime`] holds, that millisecond.
pub fn ceil_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    let us = to_micros(t);
    match us.rem_euclid(1000) {
        0 => t,
        r => us
            .checked_add(1000 - r)
            .and_then(DateTime::from_timestamp_micros)
            .unwrap_or_else(|| floor_millis(DateTime::<Utc>::MAX_UTC)),
    }
}

/// Rounds a time down to whole milliseconds (see [`ceil_millis`]).
pub fn floor_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    let us = to_micros(t);
    from_micros(us - us.rem_euclid(1000))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rounds_to_milliseconds() {
        let t = from_micros(1_700_000_000_123_456);
        assert_eq!(to_micros(ceil_millis(t)), 1_700_000_000_124_000);
        assert_eq!(to_micros(floor_millis(t)), 1_700_000_000_123_000);
        let whole = from_micros(1_700_000_000_123_000);
        assert_eq!(ceil_millis(whole), whole);
        assert_eq!(floor_millis(whole), whole);
    }

    #[test]
    fn the_ends_of_time_saturate() {
        let (min, max) = (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC);
        assert_eq!(from_micros(i64::MAX), max);
        assert_eq!(from_micros(i64::MIN), min);
        assert_eq!(from_micros(to_micros(min)), min);
        assert_eq!(add_saturating(max, Duration::from_nanos(1)), max);
        assert_eq!(add_saturating(min, Duration::MAX), max);
        let last = ceil_millis(max);
        assert!(last <= max && max - last < TimeDelta::milliseconds(1));
        assert_eq!(to_micros(last).rem_euclid(1000), 0);
        assert_eq!(floor_millis(min), min);
    }

    /// Any time a `DateTime` holds, the ends and their neighbours most often.
    pub(crate) fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
        let (min, max) = (
            to_micros(DateTime::<Utc>::MIN_UTC),
            to_micros(DateTime::<Utc>::MAX_UTC),
        );
        prop_oneof![
            (min..=max).prop_map(from_micros),
            (0i64..10_000_000).prop_map(move |d| from_micros(max - d)),
            (0i64..10_000_000).prop_map(move |d| from_micros(min + d)),
            Just(DateTime::<Utc>::MAX_UTC),
            Just(DateTime::<Utc>::MIN_UTC),
            (0i64..4_000_000_000_000_000).prop_map(from_micros),
        ]
    }

    /// Any duration, from zero to `Duration::MAX`, the extremes most often.
    pub(crate) fn any_duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            Just(Duration::from_secs(u64::MAX)),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            (0u64..100 * 365 * 86_400).prop_map(Duration::from_secs),
            (0u64..1_000_000_000).prop_map(Duration::from_nanos),
        ]
    }

    proptest! {
        #[test]
        fn adding_never_panics_and_never_goes_back(t in any_time(), d in any_duration()) {
            let sum = add_saturating(t, d);
            prop_assert!(sum >= t);
            if sum < DateTime::<Utc>::MAX_UTC {
                prop_assert_eq!(sum - t, TimeDelta::from_std(d).unwrap());
            }
            let rounded = ceil_millis(sum);
            prop_assert_eq!(to_micros(rounded).rem_euclid(1000), 0);
            prop_assert!(rounded <= DateTime::<Utc>::MAX_UTC);
            let floored = floor_millis(sum);
            prop_assert!(floored <= sum);
        }

        #[test]
        fn micros_round_trip(t in any_time()) {
            let back = from_micros(to_micros(t));
            prop_assert!(back <= t && t - back < TimeDelta::microseconds(1));
            prop_assert!(ceil_millis(t) >= floor_millis(t));
        }
    }
}
