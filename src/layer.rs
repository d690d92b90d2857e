//! Layers: what a round puts around a [`Processor`], each a type that wraps one, in the
//! way tower composes services.
//!
//! [`Timeout`] and [`CatchPanic`] are processors themselves, so they stack on any
//! processor, yours included. [`Guarded`] puts a [`Guard`] (the circuit breaker, the rate
//! limit and the Retry-After pauses) in front of a processor; since the guard may hold a
//! call back without charging the record, it answers with a [`Call`] rather than an
//! [`Outcome`], so it goes on the outside. A round builds
//! `Guarded(CatchPanic(Timeout(processor)))` with its own settings.
//!
//! ```
//! use std::time::{Duration, Instant};
//!
//! use async_trait::async_trait;
//! use retrylake::layer::{Call, CatchPanic, Guarded, Timeout};
//! use retrylake::{Guard, Outcome, Processor, Record, SystemClock};
//!
//! struct Echo;
//!
//! #[async_trait]
//! impl Processor for Echo {
//!     async fn process(&self, record: &Record) -> Outcome {
//!         Outcome::success(record.payload.clone().unwrap_or_default())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let processor = CatchPanic::new(Timeout::new(Echo, Duration::from_secs(5)));
//! let record = Record {
//!     sample_id: "S-1".into(),
//!     payload: Some("hello".into()),
//!     retry_count: 0,
//! };
//! // Layers that are processors are used as one.
//! assert_eq!(processor.process(&record).await, Outcome::success("hello"));
//!
//! // The guard goes outside: it may hold the call back.
//! let clock = SystemClock;
//! let guarded = Guarded::new(processor, Guard::default(), &clock, Duration::from_secs(60));
//! let deadline = Instant::now() + Duration::from_secs(10);
//! match guarded.call(&record, deadline).await {
//!     Call::Made { outcome, .. } => assert_eq!(outcome, Outcome::success("hello")),
//!     Call::Held { until } => println!("held back until {until:?}"),
//!     Call::Late => println!("the deadline passed before the call could start"),
//! }
//! # }
//! ```

use std::panic::AssertUnwindSafe;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::FutureExt;

use crate::clock::Clock;
use crate::guard::{Admission, Guard};
use crate::outcome::{Outcome, RetryAfter};
use crate::processor::batch::{batch_key, one_per_record};
use crate::processor::{BatchProcessor, Processor, Record};

/// A borrowed processor is a processor, so a layer can wrap one it does not own.
#[async_trait]
impl<P: Processor + ?Sized> Processor for &P {
    async fn process(&self, record: &Record) -> Outcome {
        (**self).process(record).await
    }
}

/// Fails a call that runs longer than a limit transiently (`timeout after 30s`), its
/// future dropped. A call ready at its first poll sets no timer, so it runs outside a
/// tokio runtime too.
#[derive(Debug, Clone)]
pub struct Timeout<P> {
    inner: P,
    timeout: Duration,
}

impl<P> Timeout<P> {
    /// Wraps `inner`, whose calls may take at most `timeout`.
    pub fn new(inner: P, timeout: Duration) -> Self {
        Timeout { inner, timeout }
    }
}

#[async_trait]
impl<P: Processor> Processor for Timeout<P> {
    async fn process(&self, record: &Record) -> Outcome {
        let mut call = std::pin::pin!(self.inner.process(record));
        // A call that is done at once needs no timer (the simulator; a processor that
        // answers from a cache): registering one per call costs more than the call.
        if let Poll::Ready(outcome) = futures::poll!(call.as_mut()) {
            return outcome;
        }
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Outcome::transient(format!(
                    "timeout after {}",
                    humantime::format_duration(self.timeout)
                ))
            })
    }
}

/// A batch call that outlives the limit fails every record of its batch transiently.
#[async_trait]
impl<P: BatchProcessor> BatchProcessor for Timeout<P> {
    async fn process_batch(&self, records: &[Record]) -> Vec<Outcome> {
        let mut call = std::pin::pin!(self.inner.process_batch(records));
        if let Poll::Ready(outcomes) = futures::poll!(call.as_mut()) {
            return outcomes;
        }
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| {
                let timeout = Outcome::transient(format!(
                    "timeout after {} (the whole batch)",
                    humantime::format_duration(self.timeout)
                ));
                vec![timeout; records.len()]
            })
    }
}

/// Fails a call whose processor panics permanently (`processor panicked: <message>`),
/// logged with its record: coming back after its lease, the record would take every
/// worker down in turn.
#[derive(Debug, Clone)]
pub struct CatchPanic<P> {
    inner: P,
}

impl<P> CatchPanic<P> {
    /// Wraps `inner`.
    pub fn new(inner: P) -> Self {
        CatchPanic { inner }
    }
}

#[async_trait]
impl<P: Processor> Processor for CatchPanic<P> {
    async fn process(&self, record: &Record) -> Outcome {
        let called = AssertUnwindSafe(self.inner.process(record))
            .catch_unwind()
            .await;
        called.unwrap_or_else(|panic| {
            let message = panic_message(panic.as_ref());
            tracing::error!(sample_id = %record.sample_id, "the processor panicked: {message}");
            Outcome::permanent(format!("processor panicked: {message}"))
        })
    }
}

/// A batch processor's panic fails every record of its batch transiently (`batch
/// processor panicked: <message>`): the record that caused it cannot be told from its
/// batch-mates, who should not die with it.
#[async_trait]
impl<P: BatchProcessor> BatchProcessor for CatchPanic<P> {
    async fn process_batch(&self, records: &[Record]) -> Vec<Outcome> {
        let called = AssertUnwindSafe(self.inner.process_batch(records))
            .catch_unwind()
            .await;
        called.unwrap_or_else(|panic| {
            let message = panic_message(panic.as_ref());
            tracing::error!(
                records = records.len(),
                first = records.first().map(|r| r.sample_id.as_str()),
                "the batch processor panicked: {message}"
            );
            let failed = Outcome::transient(format!("batch processor panicked: {message}"));
            vec![failed; records.len()]
        })
    }
}

/// The text a panic was raised with.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// What became of a call made through [`Guarded`].
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// The processor was called and its outcome weighed by the guard.
    Made {
        /// How the call ended.
        outcome: Outcome,
        /// The clock's time when the call started, once admitted (a rate limit's wait is
        /// not part of the call).
        started_at: DateTime<Utc>,
        /// How long the call took.
        took: Duration,
    },
    /// Not charged to the record: the guard held the call back (an open breaker, a
    /// Retry-After pause), or the call was a failed probe the record is not charged for
    /// ([`Guard::charge_failed_probe`]). The record's time lock goes to at least `until`.
    Held {
        /// The end of the pause or cool-down that held it, if known.
        until: Option<DateTime<Utc>>,
    },
    /// The deadline passed before the call could start (waiting for the rate limit).
    Late,
}

/// Puts a [`Guard`] in front of a processor: waits for the rate limit, holds the call back
/// while the downstream is paused or the breaker open, weighs each outcome, and does not
/// charge a record for a failed probe unless its probe also failed the time before.
#[derive(Clone)]
pub struct Guarded<'c, P> {
    inner: P,
    guard: Guard,
    clock: &'c dyn Clock,
    max_retry_after: Duration,
}

impl<'c, P> Guarded<'c, P> {
    /// Wraps `inner` in `guard`, whose times `clock` gives; a Retry-After pauses calls at
    /// most `max_retry_after` after the call that asked for it.
    pub fn new(inner: P, guard: Guard, clock: &'c dyn Clock, max_retry_after: Duration) -> Self {
        Guarded {
            inner,
            guard,
            clock,
            max_retry_after,
        }
    }
}

impl<P> Guarded<'_, P> {
    /// Waits for the guard to admit a call no later than `deadline`: the admission, or
    /// what becomes of the call instead.
    async fn admit(&self, deadline: Instant) -> Result<Admission, Call> {
        let admit = self.guard.admit(|| self.clock.now());
        match tokio::time::timeout_at(deadline.into(), admit).await {
            Ok(Admission::Call) if Instant::now() >= deadline => Err(Call::Late),
            Ok(Admission::Defer { until }) => Err(Call::Held { until }),
            Ok(admission) => Ok(admission),
            Err(_) => Err(Call::Late),
        }
    }

    /// What becomes of a failed probe: held back uncharged (`Some`) the first time in a
    /// row for `key` (a record, or a batch), since the outage goes on and a long one must
    /// not wear the records' retries down one probe at a time; charged (`None`) the second
    /// time, so that a record whose own content makes the downstream fail cannot hold the
    /// breaker open. Held records go back with their time lock raised to the end of the new
    /// cool-down, so that the next probe falls on others.
    fn held_probe(
        &self,
        admission: Admission,
        failed: bool,
        key: &str,
        now: DateTime<Utc>,
    ) -> Option<Call> {
        if admission == Admission::Probe && failed && !self.guard.charge_failed_probe(key) {
            tracing::info!(key, "probe call failed; not charged");
            return Some(Call::Held {
                until: self.guard.blocked_until(now),
            });
        }
        None
    }
}

impl<P: Processor> Guarded<'_, P> {
    /// Calls the processor for `record` if the guard admits it no later than `deadline`.
    /// A probe admitted is made whatever the deadline: the breaker waits on it. Dropped
    /// before a probe's outcome is weighed, it gives the probe up
    /// ([`Guard::abandon_probe`]).
    pub async fn call(&self, record: &Record, deadline: Instant) -> Call {
        let admission = match self.admit(deadline).await {
            Ok(admission) => admission,
            Err(call) => return call,
        };
        // A probe whose call is dropped before it is weighed must not hold the breaker
        // half-open for good.
        let probe = (admission == Admission::Probe).then(|| AbandonProbe(&self.guard));
        let started_at = self.clock.now();
        let start = Instant::now();
        let outcome = self.inner.process(record).await;
        let now = self.clock.now();
        self.guard.record(&outcome, now, self.max_retry_after);
        // Weighed: nothing to give up.
        std::mem::forget(probe);
        let failed = matches!(outcome, Outcome::Transient { .. });
        if let Some(held) = self.held_probe(admission, failed, &record.sample_id, now) {
            return held;
        }
        Call::Made {
            outcome,
            started_at,
            took: start.elapsed(),
        }
    }
}

impl<P: BatchProcessor> Guarded<'_, P> {
    /// Calls the batch processor for `records` if the guard admits one call no later than
    /// `deadline`: one [`Call`] per record, in their order. The guard counts the batch as
    /// one call, failed when every record failed transiently (a downstream that is down),
    /// and pauses for the longest Retry-After such a batch asked for. A probe batch that
    /// failed so is held or charged as a whole, as [`Guarded::call`] does for one record;
    /// one the downstream answered keeps each record's outcome.
    pub async fn call_batch(&self, records: &[Record], deadline: Instant) -> Vec<Call> {
        let admission = match self.admit(deadline).await {
            Ok(admission) => admission,
            Err(call) => return vec![call; records.len()],
        };
        let probe = (admission == Admission::Probe).then(|| AbandonProbe(&self.guard));
        let started_at = self.clock.now();
        let start = Instant::now();
        let outcomes = one_per_record(self.inner.process_batch(records).await, records.len());
        let took = start.elapsed();
        let now = self.clock.now();
        let weighed = batch_outcome(&outcomes, now);
        self.guard.record(&weighed, now, self.max_retry_after);
        std::mem::forget(probe);
        let failed = matches!(weighed, Outcome::Transient { .. });
        let key = match records {
            [one] => one.sample_id.clone(),
            _ => batch_key(records),
        };
        if let Some(held) = self.held_probe(admission, failed, &key, now) {
            return vec![held; records.len()];
        }
        outcomes
            .into_iter()
            .map(|outcome| Call::Made {
                outcome,
                started_at,
                took,
            })
            .collect()
    }
}

/// What a batch call was as one call, for the guard: a transient failure (with the latest
/// Retry-After asked) when every record failed transiently, else a success. An empty batch
/// is a success.
fn batch_outcome(outcomes: &[Outcome], now: DateTime<Utc>) -> Outcome {
    let mut latest: Option<RetryAfter> = None;
    for outcome in outcomes {
        let Outcome::Transient { retry_after, .. } = outcome else {
            return Outcome::Success { response: None };
        };
        latest = match (latest, *retry_after) {
            (Some(a), Some(b)) => Some(later(a, b, now)),
            (a, b) => a.or(b),
        };
    }
    if outcomes.is_empty() {
        return Outcome::Success { response: None };
    }
    Outcome::Transient {
        error: "the whole batch failed".into(),
        retry_after: latest,
        class: None,
    }
}

/// The later of two Retry-Afters of a call that ended at `now`: a delay and a date compare
/// by what they come to.
fn later(a: RetryAfter, b: RetryAfter, now: DateTime<Utc>) -> RetryAfter {
    match (a, b) {
        (RetryAfter::Delay(x), RetryAfter::Delay(y)) => RetryAfter::Delay(x.max(y)),
        (RetryAfter::At(x), RetryAfter::At(y)) => RetryAfter::At(x.max(y)),
        (RetryAfter::Delay(d), RetryAfter::At(t)) | (RetryAfter::At(t), RetryAfter::Delay(d)) => {
            if crate::clock::add_saturating(now, d) >= t {
                RetryAfter::Delay(d)
            } else {
                RetryAfter::At(t)
            }
        }
    }
}

/// Gives up the probe it holds when dropped before the probe's call is weighed.
struct AbandonProbe<'a>(&'a Guard);

impl Drop for AbandonProbe<'_> {
    fn drop(&mut self) {
        self.0.abandon_probe();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::clock::FixedClock;
    use crate::guard::tests::probing_guard;
    use crate::guard::{BreakerState, GuardConfig, Rate};
    use crate::outcome::RetryAfter;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn record(id: &str) -> Record {
        Record {
            sample_id: id.into(),
            payload: Some("p".into()),
            retry_count: 0,
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    /// Answers `outcome`, after `delay` when one is given; counts its calls.
    struct Answer {
        outcome: Outcome,
        delay: Option<Duration>,
        calls: AtomicUsize,
    }

    impl Answer {
        fn at_once(outcome: Outcome) -> Self {
            Answer {
                outcome,
                delay: None,
                calls: AtomicUsize::new(0),
            }
        }

        fn after(delay: Duration, outcome: Outcome) -> Self {
            Answer {
                delay: Some(delay),
                ..Answer::at_once(outcome)
            }
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Processor for Answer {
        async fn process(&self, _record: &Record) -> Outcome {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(delay) = self.delay {
                tokio::time::sleep(delay).await;
            }
            self.outcome.clone()
        }
    }

    /// Panics with `message` (after a yield, when `later`).
    struct Panics {
        later: bool,
    }

    #[async_trait]
    impl Processor for Panics {
        async fn process(&self, record: &Record) -> Outcome {
            if self.later {
                tokio::task::yield_now().await;
            }
            panic!("cannot handle {}", record.sample_id)
        }
    }

    #[tokio::test]
    async fn a_call_that_outlives_the_timeout_fails_transiently() {
        let slow = Timeout::new(
            Answer::after(Duration::from_secs(3600), Outcome::success("ok")),
            Duration::from_millis(20),
        );
        assert_eq!(
            slow.process(&record("A")).await,
            Outcome::transient("timeout after 20ms")
        );
        let quick = Timeout::new(
            Answer::after(Duration::from_millis(1), Outcome::success("ok")),
            Duration::from_secs(60),
        );
        assert_eq!(quick.process(&record("A")).await, Outcome::success("ok"));
    }

    #[test]
    fn a_call_ready_at_once_sets_no_timer() {
        // No tokio runtime here: setting a timer would panic.
        let ready = Timeout::new(
            Answer::at_once(Outcome::permanent("bad")),
            Duration::from_secs(1),
        );
        assert_eq!(
            futures::executor::block_on(ready.process(&record("A"))),
            Outcome::permanent("bad")
        );
    }

    #[tokio::test]
    async fn a_panic_fails_its_record_permanently_with_its_message() {
        for later in [false, true] {
            let layered = CatchPanic::new(Timeout::new(Panics { later }, Duration::from_secs(5)));
            assert_eq!(
                layered.process(&record("P")).await,
                Outcome::permanent("processor panicked: cannot handle P"),
                "later: {later}"
            );
        }
        struct Opaque;
        #[async_trait]
        impl Processor for Opaque {
            async fn process(&self, _record: &Record) -> Outcome {
                std::panic::panic_any(42)
            }
        }
        assert_eq!(
            CatchPanic::new(Opaque).process(&record("P")).await,
            Outcome::permanent("processor panicked: (no message)")
        );
        let fine = CatchPanic::new(Answer::at_once(Outcome::success("ok")));
        assert_eq!(fine.process(&record("P")).await, Outcome::success("ok"));
    }

    #[tokio::test]
    async fn a_call_is_made_and_weighed() {
        let clock = FixedClock::new(at(0));
        let guard = Guard::new(GuardConfig {
            breaker: None,
            rate: None,
        });
        let busy = Outcome::Transient {
            error: "HTTP 503".into(),
            retry_after: Some(RetryAfter::Delay(Duration::from_secs(20))),
            class: None,
        };
        let guarded = Guarded::new(
            Answer::at_once(busy.clone()),
            guard.clone(),
            &clock,
            Duration::from_secs(3600),
        );
        let Call::Made {
            outcome,
            started_at,
            ..
        } = guarded.call(&record("A"), later()).await
        else {
            panic!("not made")
        };
        assert_eq!((outcome, started_at), (busy, at(0)));
        assert_eq!(
            guard.paused_until(at(0)),
            Some(at(20)),
            "the pause is weighed"
        );
    }

    #[tokio::test]
    async fn a_paused_guard_holds_the_call_back_until_the_pause_ends() {
        let clock = FixedClock::new(at(0));
        let guard = Guard::new(GuardConfig::default());
        let busy = Outcome::Transient {
            error: "HTTP 429".into(),
            retry_after: Some(RetryAfter::Delay(Duration::from_secs(20))),
            class: None,
        };
        guard.record(&busy, at(0), Duration::from_secs(3600));
        let guarded = Guarded::new(
            Answer::at_once(Outcome::success("ok")),
            guard,
            &clock,
            Duration::from_secs(3600),
        );
        clock.set(at(5));
        assert_eq!(
            guarded.call(&record("A"), later()).await,
            Call::Held {
                until: Some(at(20))
            }
        );
        assert_eq!(guarded.inner.calls(), 0, "not called");
        clock.set(at(20));
        assert!(matches!(
            guarded.call(&record("A"), later()).await,
            Call::Made { .. }
        ));
        assert_eq!(guarded.inner.calls(), 1);
    }

    #[tokio::test]
    async fn a_failed_probe_is_held_then_charged_the_second_time() {
        let clock = FixedClock::new(at(0));
        let guarded = Guarded::new(
            Answer::at_once(Outcome::transient("HTTP 503")),
            probing_guard(),
            &clock,
            Duration::from_secs(3600),
        );
        // A plain call is charged, and opens the breaker.
        assert!(matches!(
            guarded.call(&record("A"), later()).await,
            Call::Made { .. }
        ));
        assert_eq!(
            guarded.call(&record("A"), later()).await,
            Call::Held { until: None },
            "open"
        );
        assert_eq!(guarded.inner.calls(), 1);
        // The probe after the cool-down fails: held until the next cool-down ends.
        clock.set(at(30));
        assert_eq!(
            guarded.call(&record("A"), later()).await,
            Call::Held {
                until: Some(at(60))
            }
        );
        // The same record's next probe fails too: charged.
        clock.set(at(60));
        let Call::Made { outcome, .. } = guarded.call(&record("A"), later()).await else {
            panic!("the second failed probe in a row is charged")
        };
        assert_eq!(outcome, Outcome::transient("HTTP 503"));
        assert_eq!(guarded.inner.calls(), 3);
    }

    #[tokio::test]
    async fn a_dropped_probe_is_given_up() {
        let clock = FixedClock::new(at(0));
        let guard = probing_guard();
        guard.record(&Outcome::transient("down"), at(0), Duration::ZERO);
        clock.set(at(30));
        let guarded = Guarded::new(
            Answer::after(Duration::from_secs(3600), Outcome::success("ok")),
            guard.clone(),
            &clock,
            Duration::ZERO,
        );
        let hung = tokio::time::timeout(
            Duration::from_millis(20),
            guarded.call(&record("A"), later()),
        )
        .await;
        assert!(hung.is_err(), "the probe hangs");
        assert_eq!(
            guard.breaker(at(30)),
            Some(BreakerState::HalfOpen { probing: false })
        );
    }

    #[tokio::test]
    async fn a_call_not_admitted_by_its_deadline_is_late() {
        let clock = FixedClock::new(at(0));
        let guard = Guard::new(GuardConfig {
            breaker: None,
            rate: Some("1/h".parse::<Rate>().unwrap()),
        });
        let guarded = Guarded::new(
            Answer::at_once(Outcome::success("ok")),
            guard,
            &clock,
            Duration::ZERO,
        );
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            guarded.call(&record("A"), soon).await,
            Call::Made { .. }
        ));
        // The next call waits an hour for the rate limit; the deadline passes first.
        let waited = Instant::now();
        assert_eq!(guarded.call(&record("B"), soon).await, Call::Late);
        assert!(waited.elapsed() < Duration::from_secs(10));
        assert_eq!(guarded.inner.calls(), 1);
        // Admitted at once, but past the deadline: late too.
        let unlimited = Guarded::new(
            Answer::at_once(Outcome::success("ok")),
            Guard::new(GuardConfig::default()),
            &clock,
            Duration::ZERO,
        );
        assert_eq!(
            unlimited.call(&record("C"), Instant::now()).await,
            Call::Late
        );
        assert_eq!(unlimited.inner.calls(), 0);
    }

    /// Answers each record of a batch with `outcome`, after `delay` when one is given;
    /// counts its calls.
    #[async_trait]
    impl BatchProcessor for Answer {
        async fn process_batch(&self, records: &[Record]) -> Vec<Outcome> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(delay) = self.delay {
                tokio::time::sleep(delay).await;
            }
            vec![self.outcome.clone(); records.len()]
        }
    }

    fn records(ids: &[&str]) -> Vec<Record> {
        ids.iter().map(|id| record(id)).collect()
    }

    #[tokio::test]
    async fn a_batch_that_outlives_the_timeout_or_panics_fails_every_record_transiently() {
        let slow = Timeout::new(
            Answer::after(Duration::from_secs(3600), Outcome::success("ok")),
            Duration::from_millis(20),
        );
        assert_eq!(
            slow.process_batch(&records(&["A", "B"])).await,
            vec![Outcome::transient("timeout after 20ms (the whole batch)"); 2]
        );
        struct PanicsInBatch;
        #[async_trait]
        impl BatchProcessor for PanicsInBatch {
            async fn process_batch(&self, records: &[Record]) -> Vec<Outcome> {
                panic!("cannot handle {}", records[1].sample_id)
            }
        }
        assert_eq!(
            CatchPanic::new(PanicsInBatch)
                .process_batch(&records(&["A", "B"]))
                .await,
            vec![Outcome::transient("batch processor panicked: cannot handle B"); 2]
        );
    }

    #[tokio::test]
    async fn a_batch_is_one_call_to_the_guard_failed_only_when_every_record_failed() {
        // A breaker that opens after one failed call in one.
        let clock = FixedClock::new(at(0));
        let guarded = |outcomes: Vec<Outcome>, guard: Guard| {
            struct Fixed(Vec<Outcome>);
            #[async_trait]
            impl BatchProcessor for Fixed {
                async fn process_batch(&self, _records: &[Record]) -> Vec<Outcome> {
                    self.0.clone()
                }
            }
            Guarded::new(Fixed(outcomes), guard, &clock, Duration::from_secs(3600))
        };
        // One success among failures: the downstream answers, the breaker stays closed.
        let guard = probing_guard();
        let mixed = guarded(
            vec![Outcome::transient("busy"), Outcome::success("ok")],
            guard.clone(),
        );
        let calls = mixed.call_batch(&records(&["A", "B"]), later()).await;
        assert!(calls.iter().all(|c| matches!(c, Call::Made { .. })));
        assert_eq!(guard.breaker(at(0)), Some(BreakerState::Closed));
        // Every record failed: one failed call; the breaker opens, and the longest
        // Retry-After asked pauses the calls.
        let down = guarded(
            vec![
                Outcome::Transient {
                    error: "503".into(),
                    retry_after: Some(RetryAfter::Delay(Duration::from_secs(10))),
                    class: None,
                },
                Outcome::Transient {
                    error: "503".into(),
                    retry_after: Some(RetryAfter::At(at(40))),
                    class: None,
                },
            ],
            guard.clone(),
        );
        let calls = down.call_batch(&records(&["A", "B"]), later()).await;
        assert_eq!(calls.len(), 2);
        assert!(matches!(
            guard.breaker(at(0)),
            Some(BreakerState::Open { .. })
        ));
        assert_eq!(guard.paused_until(at(0)), Some(at(40)));
        // While open, the whole batch is held, none called.
        assert_eq!(
            down.call_batch(&records(&["A", "B", "C"]), later()).await,
            vec![
                Call::Held {
                    until: Some(at(40))
                };
                3
            ]
        );
        // Fewer outcomes than records: the rest fail transiently; more: cut.
        let short = guarded(
            vec![Outcome::success("ok")],
            Guard::new(GuardConfig::default()),
        );
        let calls = short.call_batch(&records(&["A", "B"]), later()).await;
        let Call::Made { outcome, .. } = &calls[1] else {
            panic!("{calls:?}")
        };
        assert_eq!(
            *outcome,
            Outcome::transient(crate::processor::batch::NO_OUTCOME)
        );
        let long = guarded(
            vec![Outcome::success("ok"); 5],
            Guard::new(GuardConfig::default()),
        );
        assert_eq!(long.call_batch(&records(&["A"]), later()).await.len(), 1);
    }

    #[tokio::test]
    async fn a_failed_probe_batch_holds_its_records_the_first_time() {
        let clock = FixedClock::new(at(0));
        let guard = probing_guard();
        guard.record(&Outcome::transient("down"), at(0), Duration::ZERO);
        clock.set(at(30));
        let guarded = Guarded::new(
            Answer::at_once(Outcome::transient("HTTP 503")),
            guard,
            &clock,
            Duration::from_secs(3600),
        );
        let calls = guarded.call_batch(&records(&["A"]), later()).await;
        assert_eq!(
            calls,
            vec![Call::Held {
                until: Some(at(60))
            }]
        );
        assert_eq!(guarded.inner.calls(), 1);
    }
}
