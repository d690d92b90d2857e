//! The retry policy: how long a record waits after its n-th failure, and when it gives up.
//!
//! The math is pure: randomness comes in through an [`rand::Rng`] the caller owns, so a
//! seeded generator gives the same schedule every time.

use std::time::Duration;

use rand::Rng;

use crate::error::{Error, Result};

/// How random spread is added to the exponential delay, after the AWS Architecture blog
/// "Exponential Backoff And Jitter".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// No randomness: `min(cap, base * multiplier^n)`. The original Spark job's behaviour.
    #[default]
    None,
    /// `random_between(0, min(cap, base * multiplier^n))`.
    Full,
    /// `temp / 2 + random_between(0, temp / 2)` with `temp = min(cap, base * multiplier^n)`.
    Equal,
    /// `min(cap, random_between(base, previous * 3))`, where `previous` is the un-jittered
    /// delay of the retry before (the queue keeps no per-record history of drawn delays).
    Decorrelated,
}

impl std::str::FromStr for Jitter {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Jitter::None),
            "full" => Ok(Jitter::Full),
            "equal" => Ok(Jitter::Equal),
            "decorrelated" => Ok(Jitter::Decorrelated),
            other => Err(Error::InvalidPolicy(format!(
                "unknown jitter '{other}' (expected none, full, equal or decorrelated)"
            ))),
        }
    }
}

/// What happens to a record after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after `delay`; `retry_count` is the record's new retry count (1-based).
    Retry {
        /// The record's retry count after this failure.
        retry_count: u32,
        /// How long the record stays locked.
        delay: Duration,
    },
    /// The record has used all its retries: dead-letter it with reason `retries_exhausted`.
    Exhausted,
}

/// Exponential backoff with a cap, optional jitter and a retry budget.
///
/// The defaults reproduce the seed: retries wait 2, 4, 8, 16 and 32 minutes and the sixth
/// failure dead-letters the record.
///
/// ```
/// use std::time::Duration;
/// use retrylake::RetryPolicy;
///
/// let policy = RetryPolicy::default();
/// let minutes: Vec<u64> = (1..=5).map(|n| policy.base_delay(n).as_secs() / 60).collect();
/// assert_eq!(minutes, [2, 4, 8, 16, 32]);
///
/// let custom = RetryPolicy::builder()
///     .base(Duration::from_secs(10))
///     .multiplier(3.0)
///     .max_retries(3)
///     .build()
///     .unwrap();
/// assert_eq!(custom.base_delay(2), Duration::from_secs(90));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    base: Duration,
    multiplier: f64,
    max_retries: u32,
    max_backoff: Duration,
    jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(60),
            multiplier: 2.0,
            max_retries: 5,
            max_backoff: Duration::from_secs(3600),
            jitter: Jitter::None,
        }
    }
}

impl RetryPolicy {
    /// A builder starting from the defaults.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            policy: RetryPolicy::default(),
        }
    }

    /// The base delay. Default value is 1 minute.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The growth factor per retry. Default value is `2`.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// Retries before a record is dead-lettered. Default value is `5`.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The cap on any delay, jitter included. Default value is 1 hour.
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
    }

    /// The jitter mode. Default value is [`Jitter::None`].
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The delay before retry `n` without jitter: `min(base * multiplier^n, max_backoff)`.
    /// Saturates at the cap for any `n`, however large.
    pub fn base_delay(&self, n: u32) -> Duration {
        let cap = self.max_backoff.as_secs_f64();
        let exponent = i32::try_from(n).unwrap_or(i32::MAX);
        let secs = self.base.as_secs_f64() * self.multiplier.powi(exponent);
        if !secs.is_finite() || secs >= cap {
            self.max_backoff
        } else {
            // Round to whole microseconds, the resolution of the tables' timestamps.
            Duration::from_micros((secs * 1e6).round() as u64).min(self.max_backoff)
        }
    }

    /// The delay before retry `n` (1-based), jitter drawn from `rng`. Never above the cap.
    pub fn delay<R: Rng + ?Sized>(&self, n: u32, rng: &mut R) -> Duration {
        let temp = self.base_delay(n);
        let delay = match self.jitter {
            Jitter::None => temp,
            Jitter::Full => random_between(rng, Duration::ZERO, temp),
            Jitter::Equal => {
                let half = temp / 2;
                half + random_between(rng, Duration::ZERO, temp - half)
            }
            Jitter::Decorrelated => {
                let previous = if n <= 1 {
                    self.base
                } else {
                    self.base_delay(n - 1)
                };
                let high = previous.saturating_mul(3).max(self.base);
                random_between(rng, self.base, high)
            }
        };
        delay.min(self.max_backoff)
    }

    /// What to do with a record whose retry count was `retry_count` when it failed
    /// transiently: retry it (with the new count and delay) or give up.
    pub fn decide<R: Rng + ?Sized>(&self, retry_count: u32, rng: &mut R) -> RetryDecision {
        if retry_count >= self.max_retries {
            RetryDecision::Exhausted
        } else {
            let n = retry_count + 1;
            RetryDecision::Retry {
                retry_count: n,
                delay: self.delay(n, rng),
            }
        }
    }
}

fn random_between<R: Rng + ?Sized>(rng: &mut R, low: Duration, high: Duration) -> Duration {
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let (low, high) = (micros(low), micros(high));
    if high <= low {
        return Duration::from_micros(low);
    }
    Duration::from_micros(rng.random_range(low..=high))
}

/// Builds a validated [`RetryPolicy`].
#[derive(Debug, Clone)]
pub struct RetryPolicyBuilder {
    policy: RetryPolicy,
}

impl RetryPolicyBuilder {
    /// Sets the base delay (must be above zero). Default value is 1 minute.
    pub fn base(mut self, base: Duration) -> Self {
        self.policy.base = base;
        self
    }

    /// Sets the growth factor (at least 1, finite). Default value is `2`.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.policy.multiplier = multiplier;
        self
    }

    /// Sets how many retries a record gets before it is dead-lettered. Default value is `5`.
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.policy.max_retries = max_retries;
        self
    }

    /// Sets the cap on every delay (at least the base). Default value is 1 hour.
    pub fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.policy.max_backoff = max_backoff;
        self
    }

    /// Sets the jitter mode. Default value is [`Jitter::None`].
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.policy.jitter = jitter;
        self
    }

    /// Checks the settings and returns the policy, or [`Error::InvalidPolicy`] naming the
    /// setting that makes no sense.
    pub fn build(self) -> Result<RetryPolicy> {
        let p = self.policy;
        if p.base.is_zero() {
            return Err(Error::InvalidPolicy(
                "base backoff must be above zero".into(),
            ));
        }
        if !p.multiplier.is_finite() || p.multiplier < 1.0 {
            return Err(Error::InvalidPolicy(format!(
                "multiplier must be a number of at least 1, got {}",
                p.multiplier
            )));
        }
        if p.max_backoff < p.base {
            return Err(Error::InvalidPolicy(format!(
                "max backoff ({}) must not be below the base backoff ({})",
                humantime::format_duration(p.max_backoff),
                humantime::format_duration(p.base)
            )));
        }
        // Timestamps are microseconds in an i64; keep far from its end.
        const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        if p.max_backoff > LONGEST {
            return Err(Error::InvalidPolicy(
                "max backoff must not exceed 100 years".into(),
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn mins(m: u64) -> Duration {
        Duration::from_secs(m * 60)
    }

    #[test]
    fn defaults_reproduce_the_original_jobs_table() {
        let p = RetryPolicy::default();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut waits = vec![];
        let mut count = 0;
        while let RetryDecision::Retry { retry_count, delay } = p.decide(count, &mut rng) {
            waits.push(delay);
            count = retry_count;
        }
        assert_eq!(waits, [mins(2), mins(4), mins(8), mins(16), mins(32)]);
        assert_eq!(count, 5);
    }

    #[test]
    fn cap_applies() {
        let p = RetryPolicy::builder().max_backoff(mins(5)).build().unwrap();
        assert_eq!(p.base_delay(2), mins(4));
        assert_eq!(p.base_delay(3), mins(5));
        assert_eq!(p.base_delay(u32::MAX), mins(5));
    }

    #[test]
    fn nonsense_is_refused() {
        let zero = RetryPolicy::builder().base(Duration::ZERO).build();
        assert!(zero.unwrap_err().to_string().contains("base backoff"));
        let low = RetryPolicy::builder().multiplier(0.5).build();
        assert!(low.unwrap_err().to_string().contains("multiplier"));
        let nan = RetryPolicy::builder().multiplier(f64::NAN).build();
        assert!(nan.is_err());
        let below = RetryPolicy::builder()
            .base(mins(10))
            .max_backoff(mins(1))
            .build();
        assert!(below.unwrap_err().to_string().contains("max backoff"));
    }

    #[test]
    fn jitter_parses() {
        assert_eq!("equal".parse::<Jitter>().unwrap(), Jitter::Equal);
        assert!("sometimes".parse::<Jitter>().is_err());
    }

    /// The longest backoff the builder accepts, in microseconds.
    const LONGEST_US: u64 = 100 * 365 * 24 * 3600 * 1_000_000;

    fn any_jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated)
        ]
    }

    proptest! {
        #[test]
        fn delay_within_bounds(
            base_ms in 1u64..10_000_000,
            multiplier in 1.0f64..1000.0,
            cap_factor in 1u64..1_000_000,
            n in any::<u32>(),
            jitter in any_jitter(),
            seed in any::<u64>(),
        ) {
            let base = Duration::from_millis(base_ms);
            let cap = base.saturating_mul(cap_factor as u32).min(Duration::from_secs(3_000_000_000));
            let policy = RetryPolicy::builder()
                .base(base).multiplier(multiplier).max_backoff(cap).jitter(jitter)
                .build().unwrap();
            let mut rng = SmallRng::seed_from_u64(seed);
            let d = policy.delay(n, &mut rng);
            prop_assert!(d <= cap);
            match jitter {
                Jitter::None => prop_assert_eq!(d, policy.base_delay(n)),
                Jitter::Full => {}
                Jitter::Equal => prop_assert!(d >= policy.base_delay(n) / 2),
                Jitter::Decorrelated => prop_assert!(d >= base.min(cap)),
            }
        }

        #[test]
        fn never_decreases_without_jitter(
            base_ms in 1u64..100_000,
            multiplier in 1.0f64..10.0,
            n in 0u32..10_000,
        ) {
            let policy = RetryPolicy::builder()
                .base(Duration::from_millis(base_ms)).multiplier(multiplier)
                .max_backoff(Duration::from_secs(86_400 * 365))
                .build().unwrap();
            prop_assert!(policy.base_delay(n) <= policy.base_delay(n + 1));
        }

        #[test]
        fn extreme_settings_never_panic(
            base_us in prop_oneof![Just(1u64), Just(LONGEST_US), 1u64..=LONGEST_US],
            cap_us in prop_oneof![Just(LONGEST_US), 1u64..=LONGEST_US],
            multiplier in prop_oneof![Just(1.0f64), Just(f64::MAX), 1.0f64..f64::MAX],
            max_retries in prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()],
            retry_count in prop_oneof![Just(0u32), Just(u32::MAX), Just(u32::MAX - 1), any::<u32>()],
            jitter in any_jitter(),
            seed in any::<u64>(),
        ) {
            let (base, cap) = (Duration::from_micros(base_us), Duration::from_micros(cap_us));
            let built = RetryPolicy::builder()
                .base(base).multiplier(multiplier).max_backoff(cap)
                .max_retries(max_retries).jitter(jitter)
                .build();
            let Ok(policy) = built else {
                prop_assert!(cap < base);
                return Ok(());
            };
            let mut rng = SmallRng::seed_from_u64(seed);
            match policy.decide(retry_count, &mut rng) {
                RetryDecision::Retry { retry_count: n, delay } => {
                    prop_assert_eq!(n, retry_count + 1);
                    prop_assert!(delay <= cap);
                }
                RetryDecision::Exhausted => prop_assert!(retry_count >= max_retries),
            }
            prop_assert!(policy.delay(u32::MAX, &mut rng) <= cap);
            prop_assert!(policy.base_delay(u32::MAX) <= cap);
        }

        #[test]
        fn jitter_is_zero_exactly_when_off(seed in any::<u64>(), n in 1u32..20) {
            let policy = RetryPolicy::default();
            let mut rng = SmallRng::seed_from_u64(seed);
            prop_assert_eq!(policy.delay(n, &mut rng), policy.base_delay(n));
        }
    }
}
