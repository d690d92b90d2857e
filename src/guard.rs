//! What stands between a round and a struggling downstream: a circuit breaker, a rate limit
//! and the pauses a downstream asks for with Retry-After.
//!
//! A call the guard holds back is *deferred*: the record goes back to `retry_queue` as it
//! was, no attempt counted and no retry spent (after a Retry-After, with its time lock
//! moved to the end of the pause). The guard lives as long as the process's
//! [`RoundConfig`](crate::RoundConfig), so `worker` and `run --drain` keep its state from
//! one round to the next.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::clock::add_saturating;
use crate::error::{Error, Result};
use crate::outcome::Outcome;

/// When the circuit breaker opens, and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// The share of the last `window` calls that must have failed transiently to open it.
    /// Default value is `0.5`.
    pub failure_share: f64,
    /// How many of the latest calls are weighed. Default value is `100`.
    pub window: usize,
    /// The fewest calls in the window before it may open (so two failures out of three
    /// calls do not). Default value is `50`: a downstream that fails 30% of calls at
    /// random then opens it about once in a hundred thousand calls, one that is down
    /// after 50 calls plus those in flight.
    pub min_calls: usize,
    /// How long it stays open before one probe call decides. Default value is 30 seconds.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_share: 0.5,
            window: 100,
            min_calls: 50,
            cool_down: Duration::from_secs(30),
        }
    }
}

impl BreakerConfig {
    /// Refuses settings under which the breaker can never open: a window smaller than
    /// `min_calls`, or a share of failures outside (0, 1].
    pub fn check(&self) -> Result<()> {
        if self.window < self.min_calls {
            return Err(Error::InvalidConfig(format!(
                "--breaker-window {} is smaller than --breaker-min-calls {}: the breaker would \
                 never hold enough calls to open; raise --breaker-window or lower \
                 --breaker-min-calls",
                self.window, self.min_calls
            )));
        }
        if !(self.failure_share > 0.0 && self.failure_share <= 1.0) {
            return Err(Error::InvalidConfig(format!(
                "--breaker-failure-rate {} is not a share above 0 and at most 1",
                self.failure_share
            )));
        }
        Ok(())
    }
}

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; their results are weighed.
    Closed,
    /// No calls until the cool-down ends.
    Open {
        /// When the cool-down ends.
        until: DateTime<Utc>,
    },
    /// The cool-down ended: one probe call is (or may be) in flight; its result decides.
    HalfOpen {
        /// Whether the probe has been let through.
        probing: bool,
    },
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half-open",
        })
    }
}

/// A circuit breaker over a sliding window of calls: pure state, times given by the caller.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    /// The latest calls' results, `true` for a transient failure; at most `window`.
    recent: std::collections::VecDeque<bool>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: BreakerState::Closed,
            // Grows to the window as calls come; a window of usize::MAX allocates nothing.
            recent: std::collections::VecDeque::with_capacity(config.window.min(1024)),
        }
    }

    /// The state at `now` (an open breaker whose cool-down has ended is half-open).
    pub fn state(&mut self, now: DateTime<Utc>) -> BreakerState {
        if let BreakerState::Open { until } = self.state
            && now >= until
        {
            self.change(BreakerState::HalfOpen { probing: false });
        }
        self.state
    }

    /// Whether a call may start at `now`. A half-open breaker lets exactly one through.
    pub fn admit(&mut self, now: DateTime<Utc>) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open { .. } | BreakerState::HalfOpen { probing: true } => false,
            BreakerState::HalfOpen { probing: false } => {
                self.state = BreakerState::HalfOpen { probing: true };
                true
            }
        }
    }

    /// Gives up a probe that was admitted but never made (its round dropped mid-call): the
    /// next round may probe again.
    fn abandon_probe(&mut self) {
        if self.state == (BreakerState::HalfOpen { probing: true }) {
            self.state = BreakerState::HalfOpen { probing: false };
        }
    }

    /// Weighs a finished call: `failed` for a transient failure (a timeout, a 5xx, a
    /// refused connection); a success or a permanent failure shows the downstream answers.
    pub fn record(&mut self, failed: bool, now: DateTime<Utc>) {
        match self.state {
            BreakerState::HalfOpen { .. } if failed => self.open(now),
            BreakerState::HalfOpen { .. } => {
                self.recent.clear();
                self.change(BreakerState::Closed);
            }
            // A call admitted before the breaker opened: the state is already decided.
            BreakerState::Open { .. } => {}
            BreakerState::Closed => {
                if self.recent.len() == self.config.window.max(1) {
                    self.recent.pop_front();
                }
                self.recent.push_back(failed);
                let failures = self.recent.iter().filter(|f| **f).count();
                let calls = self.recent.len();
                if calls >= self.config.min_calls.max(1)
                    && failures as f64 >= self.config.failure_share * calls as f64
                {
                    self.open(now);
                }
            }
        }
    }

    fn open(&mut self, now: DateTime<Utc>) {
        let until = add_saturating(now, self.config.cool_down);
        self.recent.clear();
        self.change(BreakerState::Open { until });
    }

    fn change(&mut self, to: BreakerState) {
        if std::mem::discriminant(&self.state) != std::mem::discriminant(&to) {
            match to {
                BreakerState::Open { until } => tracing::warn!(
                    "circuit breaker open: the downstream is failing; no calls until {until}"
                ),
                BreakerState::HalfOpen { .. } => {
                    tracing::info!("circuit breaker half-open: one probe call decides")
                }
                BreakerState::Closed => tracing::info!("circuit breaker closed: calls resume"),
            }
        }
        self.state = to;
    }
}

/// A rate limit on calls, `N/s`, `N/m` or `N/h` (`--rate`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Calls allowed per `per`.
    pub calls: u32,
    /// The period.
    pub per: Duration,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Rate, String> {
        let bad = || format!("'{s}' is not a rate: expected N/s, N/m or N/h, like 50/s");
        let (calls, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let calls: u32 = calls.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if calls == 0 {
            return Err(format!("'{s}': the rate must allow at least one call"));
        }
        Ok(Rate { calls, per })
    }
}

impl Rate {
    /// A token bucket of one call, refilled every `per / calls`: calls are spaced evenly,
    /// so no burst exceeds the rate over any window.
    fn quota(&self) -> Quota {
        // governor counts in u64 nanoseconds (it panics past 584 years), and a rate of
        // zero calls cannot be spaced: keep the interval between 1 ns and 100 years.
        const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        let interval = (self.per / self.calls.max(1)).clamp(Duration::from_nanos(1), LONGEST);
        Quota::with_period(interval)
            .expect("a non-zero period")
            .allow_burst(NonZeroU32::MIN)
    }
}

/// How the guard is set up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    /// The circuit breaker; `None` turns it off. Default value is on, with
    /// [`BreakerConfig::default`].
    pub breaker: Option<BreakerConfig>,
    /// The most calls per period across the process's rounds. Default value is `None`.
    pub rate: Option<Rate>,
}

impl Default for GuardConfig {
    /// The breaker on, no rate limit.
    fn default() -> Self {
        GuardConfig {
            breaker: Some(BreakerConfig::default()),
            rate: None,
        }
    }
}

impl GuardConfig {
    /// Refuses a breaker that could never open ([`BreakerConfig::check`]); whether or not
    /// the breaker is on, such settings are a mistake.
    pub fn check(&self) -> Result<()> {
        self.breaker.as_ref().map_or(Ok(()), BreakerConfig::check)
    }
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call the processor.
    Call,
    /// Call the processor: the half-open breaker's one probe. A probe that fails
    /// transiently says the outage goes on; the record is not charged for it, unless its
    /// probe also failed the time before ([`Guard::charge_failed_probe`]).
    Probe,
    /// Do not call: the record goes back untouched, its time lock raised to `until` when
    /// the downstream asked for a pause.
    Defer {
        /// The end of a Retry-After pause, if that is why.
        until: Option<DateTime<Utc>>,
    },
}

/// The breaker, the rate limit and the Retry-After pause, shared by a process's rounds and
/// by the calls of a round.
#[derive(Clone)]
pub struct Guard {
    config: GuardConfig,
    inner: Arc<Mutex<Inner>>,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

struct Inner {
    breaker: Option<Breaker>,
    /// Calls paused until then, as a downstream asked (Retry-After on a transient failure).
    paused_until: Option<DateTime<Utc>>,
    /// The record whose probe call failed last, until a call shows the downstream answers.
    failed_probe: Option<String>,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock().expect("guard lock");
        f.debug_struct("Guard")
            .field("breaker", &inner.breaker)
            .field("paused_until", &inner.paused_until)
            .field("failed_probe", &inner.failed_probe)
            .field("rate_limited", &self.limiter.is_some())
            .finish()
    }
}

impl Default for Guard {
    /// A guard with the breaker on and no rate limit ([`GuardConfig::default`]).
    fn default() -> Self {
        Guard::new(GuardConfig::default())
    }
}

impl Guard {
    /// A guard with a closed breaker and no pause.
    pub fn new(config: GuardConfig) -> Guard {
        Guard {
            config,
            inner: Arc::new(Mutex::new(Inner {
                breaker: config.breaker.map(Breaker::new),
                paused_until: None,
                failed_probe: None,
            })),
            limiter: config
                .rate
                .map(|rate| Arc::new(RateLimiter::direct(rate.quota()))),
        }
    }

    /// The settings it was made with.
    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Until when no call may start, as seen at `now`: the end of an open breaker's
    /// cool-down or of a Retry-After pause. `None` when calls may start now.
    pub fn blocked_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut inner = self.inner.lock().expect("guard lock");
        let breaker = match inner.breaker.as_mut().map(|b| b.state(now)) {
            Some(BreakerState::Open { until }) => Some(until),
            _ => None,
        };
        let paused = inner.paused_until.filter(|until| *until > now);
        breaker.into_iter().chain(paused).max()
    }

    /// The breaker's state at `now` (`None` when it is off).
    pub fn breaker(&self, now: DateTime<Utc>) -> Option<BreakerState> {
        let mut inner = self.inner.lock().expect("guard lock");
        inner.breaker.as_mut().map(|b| b.state(now))
    }

    /// Waits for the rate limit, then decides whether a call may start; `now` reads the
    /// queue's clock after the wait.
    pub async fn admit(&self, now: impl Fn() -> DateTime<Utc>) -> Admission {
        if let Some(defer) = self.refusal(now()) {
            return defer;
        }
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        let now = now();
        if let Some(defer) = self.refusal(now) {
            return defer;
        }
        let mut inner = self.inner.lock().expect("guard lock");
        let Some(breaker) = inner.breaker.as_mut() else {
            return Admission::Call;
        };
        let probe = breaker.state(now) == BreakerState::HalfOpen { probing: false };
        match (breaker.admit(now), probe) {
            (false, _) => Admission::Defer { until: None },
            (true, true) => Admission::Probe,
            (true, false) => Admission::Call,
        }
    }

    /// The end of the Retry-After pause in force at `now`, if any.
    pub fn paused_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let inner = self.inner.lock().expect("guard lock");
        inner.paused_until.filter(|until| *until > now)
    }

    fn refusal(&self, now: DateTime<Utc>) -> Option<Admission> {
        let mut inner = self.inner.lock().expect("guard lock");
        if let Some(until) = inner.paused_until.filter(|until| *until > now) {
            return Some(Admission::Defer { until: Some(until) });
        }
        match inner.breaker.as_mut().map(|b| b.state(now)) {
            Some(BreakerState::Open { .. } | BreakerState::HalfOpen { probing: true }) => {
                Some(Admission::Defer { until: None })
            }
            _ => None,
        }
    }

    /// Whether the probe call of `sample_id`, which just failed transiently, is charged to
    /// its record: `true` when the same record's probe also failed the time before (so the
    /// failure may well be the record's own doing: it is charged as any transient failure,
    /// with its backoff, and the next probe falls on another record), `false` otherwise
    /// (the outage goes on: the record goes back uncharged). Call it after
    /// [`record`](Guard::record) for a probe ([`Admission::Probe`]) that failed transiently.
    ///
    /// The guard remembers the last failed probe's record (clones share it); a call that
    /// shows the downstream answers (a success, a permanent failure) forgets it. So a
    /// record whose own content makes the downstream fail cannot hold the breaker open
    /// forever: its second probe in a row is charged, until its retries run out.
    pub fn charge_failed_probe(&self, sample_id: &str) -> bool {
        let mut inner = self.inner.lock().expect("guard lock");
        let again = inner.failed_probe.as_deref() == Some(sample_id);
        if !again {
            inner.failed_probe = Some(sample_id.to_owned());
        }
        again
    }

    /// Gives up a probe that [`Guard::admit`] admitted but whose call was never made or
    /// weighed (the round was dropped while it ran), so that the breaker does not wait for
    /// it forever. Does nothing when no probe is in flight.
    pub fn abandon_probe(&self) {
        let mut inner = self.inner.lock().expect("guard lock");
        if let Some(breaker) = inner.breaker.as_mut() {
            breaker.abandon_probe();
        }
    }

    /// Weighs a finished call that ended at `now`. A transient failure that carries a
    /// Retry-After pauses every call until then (at most `max_pause` from `now`).
    pub fn record(&self, outcome: &Outcome, now: DateTime<Utc>, max_pause: Duration) {
        let mut inner = self.inner.lock().expect("guard lock");
        let failed = matches!(outcome, Outcome::Transient { .. });
        if let Some(breaker) = &mut inner.breaker {
            breaker.record(failed, now);
        }
        if !failed {
            inner.failed_probe = None;
        }
        if let Outcome::Transient {
            retry_after: Some(asked),
            ..
        } = outcome
        {
            let until = asked.until(now, max_pause);
            if until > now && inner.paused_until.is_none_or(|p| p < until) {
                tracing::warn!(
                    "the downstream asked for a pause (Retry-After): no calls until {until}"
                );
                inner.paused_until = Some(until);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::clock::tests::{any_duration, any_time};
    use crate::outcome::RetryAfter;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_share: 0.5,
            window: 10,
            min_calls: 4,
            cool_down: Duration::from_secs(30),
        })
    }

    #[test]
    fn stays_closed_below_the_minimum_calls_and_below_the_rate() {
        let mut b = breaker();
        for _ in 0..3 {
            b.record(true, at(0));
        }
        assert_eq!(
            b.state(at(0)),
            BreakerState::Closed,
            "3 calls < min_calls 4"
        );
        let mut b = breaker();
        for i in 0..20 {
            b.record(i % 3 == 2, at(0));
        }
        assert_eq!(
            b.state(at(0)),
            BreakerState::Closed,
            "a third failing < 50%"
        );
    }

    #[test]
    fn opens_at_the_failure_share_and_refuses_calls_for_the_cool_down() {
        let mut b = breaker();
        for failed in [false, true, false, true] {
            b.record(failed, at(0));
        }
        assert_eq!(b.state(at(1)), BreakerState::Open { until: at(30) });
        assert!(!b.admit(at(29)));
    }

    #[test]
    fn the_window_forgets_old_calls() {
        let mut b = breaker();
        for _ in 0..10 {
            b.record(false, at(0));
        }
        // 4 failures among the last 10: closed; the 5th makes half the window.
        for _ in 0..4 {
            b.record(true, at(0));
        }
        assert_eq!(b.state(at(0)), BreakerState::Closed);
        b.record(true, at(0));
        assert!(matches!(b.state(at(0)), BreakerState::Open { .. }));
    }

    #[test]
    fn one_probe_after_the_cool_down_decides() {
        let mut b = breaker();
        for _ in 0..4 {
            b.record(true, at(0));
        }
        assert!(b.admit(at(30)), "the probe");
        assert!(!b.admit(at(30)), "only one probe at a time");
        b.record(true, at(31));
        assert_eq!(b.state(at(31)), BreakerState::Open { until: at(61) });
        assert!(b.admit(at(61)));
        b.record(false, at(62));
        assert_eq!(b.state(at(62)), BreakerState::Closed);
        assert!(b.admit(at(62)) && b.admit(at(62)));
        // Closed again with an empty window: one failure does not reopen it.
        b.record(true, at(63));
        assert_eq!(b.state(at(63)), BreakerState::Closed);
    }

    #[test]
    fn permanent_failures_show_the_downstream_answers() {
        let guard = Guard::new(GuardConfig {
            breaker: Some(BreakerConfig {
                min_calls: 2,
                ..BreakerConfig::default()
            }),
            rate: None,
        });
        for _ in 0..10 {
            guard.record(&Outcome::permanent("400"), at(0), Duration::from_secs(60));
        }
        assert_eq!(guard.breaker(at(0)), Some(BreakerState::Closed));
        assert_eq!(guard.blocked_until(at(0)), None);
    }

    #[test]
    fn a_retry_after_pauses_every_call_until_it_ends() {
        let guard = Guard::new(GuardConfig {
            breaker: None,
            rate: None,
        });
        let busy = Outcome::Transient {
            error: "HTTP 503".into(),
            retry_after: Some(RetryAfter::Delay(Duration::from_secs(20))),
            class: None,
        };
        guard.record(&busy, at(0), Duration::from_secs(3600));
        assert_eq!(guard.blocked_until(at(5)), Some(at(20)));
        assert_eq!(guard.blocked_until(at(20)), None);
        // A later, shorter pause does not shorten it; the ceiling holds.
        let long = Outcome::Transient {
            error: "HTTP 429".into(),
            retry_after: Some(RetryAfter::At(at(100_000))),
            class: None,
        };
        guard.record(&long, at(1), Duration::from_secs(60));
        assert_eq!(guard.blocked_until(at(2)), Some(at(61)));
    }

    #[tokio::test]
    async fn admission_defers_while_paused_or_open() {
        let guard = Guard::new(GuardConfig {
            breaker: Some(BreakerConfig {
                min_calls: 1,
                ..BreakerConfig::default()
            }),
            rate: None,
        });
        assert_eq!(guard.admit(|| at(0)).await, Admission::Call);
        guard.record(&Outcome::transient("timeout"), at(0), Duration::ZERO);
        assert_eq!(
            guard.admit(|| at(1)).await,
            Admission::Defer { until: None }
        );
        assert_eq!(guard.admit(|| at(30)).await, Admission::Probe);
        assert_eq!(
            guard.admit(|| at(30)).await,
            Admission::Defer { until: None }
        );
    }

    #[test]
    fn a_huge_retry_after_or_cool_down_saturates_at_the_end_of_time() {
        let max = DateTime::<Utc>::MAX_UTC;
        let guard = Guard::new(GuardConfig {
            breaker: Some(BreakerConfig {
                min_calls: 1,
                window: 1,
                cool_down: Duration::MAX,
                ..BreakerConfig::default()
            }),
            rate: None,
        });
        let hostile = Outcome::Transient {
            error: "HTTP 503".into(),
            retry_after: Some(RetryAfter::Delay(Duration::from_secs(u64::MAX))),
            class: None,
        };
        // The README's default ceiling: a day after the call.
        guard.record(&hostile, at(0), Duration::from_secs(86_400));
        assert_eq!(guard.paused_until(at(1)), Some(at(86_400)));
        assert_eq!(
            guard.breaker(at(1)),
            Some(BreakerState::Open { until: max })
        );
        assert_eq!(guard.blocked_until(at(1)), Some(max));
        // No ceiling, at the very end of time: the end of time.
        let late = max - chrono::TimeDelta::microseconds(1);
        guard.record(&hostile, late, Duration::MAX);
        assert_eq!(guard.paused_until(late), Some(max));
        assert_eq!(guard.paused_until(max), None);
        let min = DateTime::<Utc>::MIN_UTC;
        let down = Guard::new(GuardConfig::default());
        down.record(&hostile, min, Duration::MAX);
        assert_eq!(down.paused_until(min), Some(max));
    }

    #[test]
    fn absurd_settings_build_a_guard() {
        for rate in [
            Rate {
                calls: 1,
                per: Duration::MAX,
            },
            Rate {
                calls: 0,
                per: Duration::ZERO,
            },
            Rate {
                calls: u32::MAX,
                per: Duration::from_nanos(1),
            },
        ] {
            let guard = Guard::new(GuardConfig {
                breaker: Some(BreakerConfig {
                    window: usize::MAX,
                    min_calls: usize::MAX,
                    failure_share: f64::NAN,
                    cool_down: Duration::MAX,
                }),
                rate: Some(rate),
            });
            let admitted = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(guard.admit(|| at(0)));
            assert_eq!(admitted, Admission::Call, "{rate:?}");
            guard.record(&Outcome::transient("timeout"), at(0), Duration::MAX);
            assert_eq!(guard.breaker(at(0)), Some(BreakerState::Closed));
        }
    }

    /// A guard whose breaker opens on one failure, for 30 s.
    pub(crate) fn probing_guard() -> Guard {
        Guard::new(GuardConfig {
            breaker: Some(BreakerConfig {
                min_calls: 1,
                window: 1,
                ..BreakerConfig::default()
            }),
            rate: None,
        })
    }

    #[test]
    fn a_failed_probe_is_charged_when_its_record_failed_the_probe_before() {
        let guard = probing_guard();
        assert!(
            !guard.charge_failed_probe("a"),
            "a first failed probe is free"
        );
        assert!(
            guard.charge_failed_probe("a"),
            "the same record again is charged"
        );
        assert!(
            guard.charge_failed_probe("a"),
            "and again, while it keeps failing"
        );
        assert!(
            !guard.charge_failed_probe("b"),
            "another record starts afresh"
        );
        assert!(
            !guard.charge_failed_probe("a"),
            "not the record of the probe before"
        );
        assert!(guard.charge_failed_probe("a"));
        // A call that shows the downstream answers forgets the failed probe.
        for answer in [Outcome::success("ok"), Outcome::permanent("HTTP 400")] {
            assert!(guard.charge_failed_probe("a"), "remembered");
            guard.record(&answer, at(0), Duration::ZERO);
            assert!(!guard.charge_failed_probe("a"), "{answer:?}");
        }
        // A transient failure does not.
        guard.record(&Outcome::transient("timeout"), at(0), Duration::ZERO);
        assert!(guard.charge_failed_probe("a"));
    }

    #[test]
    fn clones_share_the_failed_probe() {
        let guard = probing_guard();
        let clone = guard.clone();
        assert!(!guard.charge_failed_probe("poison"));
        assert!(clone.charge_failed_probe("poison"));
        clone.record(&Outcome::success("ok"), at(0), Duration::ZERO);
        assert!(!guard.charge_failed_probe("poison"));
    }

    #[tokio::test]
    async fn a_poison_record_does_not_hold_the_breaker_open() {
        let guard = probing_guard();
        assert_eq!(guard.admit(|| at(0)).await, Admission::Call);
        guard.record(&Outcome::transient("HTTP 503"), at(0), Duration::ZERO);
        // Each cool-down, one probe: it falls on the poison record (the oldest) twice.
        let mut charged = vec![];
        let mut t = 0;
        for _ in 0..2 {
            t += 30;
            assert_eq!(guard.admit(|| at(t)).await, Admission::Probe);
            guard.record(&Outcome::transient("HTTP 503"), at(t), Duration::ZERO);
            charged.push(guard.charge_failed_probe("poison"));
        }
        assert_eq!(
            charged,
            [false, true],
            "the second is charged: it moves aside"
        );
        // The next probe takes another record, which succeeds: the breaker closes and the
        // poison record starts afresh.
        t += 30;
        assert_eq!(guard.admit(|| at(t)).await, Admission::Probe);
        guard.record(&Outcome::success("ok"), at(t), Duration::ZERO);
        assert_eq!(guard.breaker(at(t)), Some(BreakerState::Closed));
        assert!(!guard.charge_failed_probe("poison"));
    }

    fn any_outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::success("ok")),
            Just(Outcome::permanent("HTTP 400")),
            Just(Outcome::transient("timeout")),
            prop_oneof![
                any_duration().prop_map(RetryAfter::Delay),
                any_time().prop_map(RetryAfter::At),
            ]
            .prop_map(|asked| Outcome::Transient {
                error: "HTTP 503".into(),
                retry_after: Some(asked),
                class: None,
            }),
        ]
    }

    fn any_breaker() -> impl Strategy<Value = Option<BreakerConfig>> {
        let size = || prop_oneof![Just(0usize), Just(1), Just(usize::MAX), 0usize..8];
        prop::option::of(
            (
                prop_oneof![Just(0.0), Just(1.0), Just(f64::NAN), 0.0f64..=1.0],
                size(),
                size(),
                any_duration(),
            )
                .prop_map(|(failure_share, window, min_calls, cool_down)| {
                    BreakerConfig {
                        failure_share,
                        window,
                        min_calls,
                        cool_down,
                    }
                }),
        )
    }

    /// Steps of a guard's life: each a call's outcome, the time it ended and the ceiling
    /// on its pause. Times jump anywhere (a clock may go back), or creep towards the end
    /// of time.
    fn any_steps() -> impl Strategy<Value = Vec<(Outcome, DateTime<Utc>, Duration)>> {
        let creeping =
            (any_time(), prop::collection::vec(any_duration(), 1..40)).prop_map(|(start, gaps)| {
                gaps.into_iter()
                    .scan(start, |t, gap| {
                        *t = add_saturating(*t, gap.min(Duration::from_secs(3600)));
                        Some(*t)
                    })
                    .collect::<Vec<_>>()
            });
        let jumping = prop::collection::vec(any_time(), 1..40);
        (
            prop_oneof![creeping, jumping],
            prop::collection::vec((any_outcome(), any_duration()), 40),
        )
            .prop_map(|(times, calls)| {
                times
                    .into_iter()
                    .zip(calls)
                    .map(|(t, (outcome, ceiling))| (outcome, t, ceiling))
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn the_guard_never_panics_and_keeps_its_bounds(
            breaker in any_breaker(),
            steps in any_steps(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let guard = Guard::new(GuardConfig { breaker, rate: None });
            // The latest a recorded pause may end, and the times calls ended.
            let mut ceiling: Option<DateTime<Utc>> = None;
            let mut ended = vec![];
            for (i, (outcome, now, max_pause)) in steps.into_iter().enumerate() {
                match rt.block_on(guard.admit(|| now)) {
                    Admission::Defer { until: Some(until) } => prop_assert!(until > now),
                    Admission::Probe => {
                        prop_assert!(breaker.is_some());
                        prop_assert_eq!(
                            guard.breaker(now),
                            Some(BreakerState::HalfOpen { probing: true })
                        );
                    }
                    Admission::Call | Admission::Defer { until: None } => {}
                }
                guard.record(&outcome, now, max_pause);
                ended.push(now);
                if let Outcome::Transient { retry_after: Some(_), .. } = outcome {
                    ceiling = ceiling.max(Some(add_saturating(now, max_pause)));
                }
                if let Some(until) = guard.paused_until(now) {
                    prop_assert!(until > now);
                    prop_assert!(Some(until) <= ceiling, "{until} past {ceiling:?}");
                }
                match guard.breaker(now) {
                    None => prop_assert!(breaker.is_none()),
                    Some(BreakerState::Open { until }) => {
                        let cool_down = breaker.unwrap().cool_down;
                        prop_assert!(until > now);
                        prop_assert!(ended.iter().any(|t| add_saturating(*t, cool_down) == until));
                    }
                    Some(_) => {}
                }
                if let Some(until) = guard.blocked_until(now) {
                    prop_assert!(until > now);
                }
                let id = format!("record-{}", i % 3);
                let _ = guard.charge_failed_probe(&id);
                let _ = format!("{guard:?}");
            }
        }

        #[test]
        fn any_rate_builds_a_limiter(calls in any::<u32>(), per in any_duration()) {
            let rate = Rate { calls, per };
            let guard = Guard::new(GuardConfig { breaker: None, rate: Some(rate) });
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            // A bucket of one: the first call never waits.
            prop_assert_eq!(rt.block_on(guard.admit(|| at(0))), Admission::Call);
        }
    }

    #[test]
    fn parses_rates() {
        assert_eq!(
            "50/s".parse::<Rate>(),
            Ok(Rate {
                calls: 50,
                per: Duration::from_secs(1)
            })
        );
        assert_eq!(
            "600/m".parse::<Rate>().unwrap().per,
            Duration::from_secs(60)
        );
        assert_eq!("10 / h".parse::<Rate>().unwrap().calls, 10);
        for bad in ["50", "0/s", "x/s", "5/day", "-1/s"] {
            let err = bad.parse::<Rate>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
