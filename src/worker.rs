//! Runs of rounds: [`run_rounds`] goes on until nothing is due, the queue is drained, or it
//! is told to stop, jumping a virtual clock to the next due record or sleeping until it is
//! due (or a poll interval passes, so new enqueues are picked up). A worker finishes the
//! round in flight on SIGINT or SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::alert::{AlertTask, Alerts};
use crate::clock::FixedClock;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::processor::Calls;
use crate::queue::Queue;
use crate::round::{RoundConfig, RoundReport};
use crate::store::Maintenance;

/// A stop request shared between a signal listener and the worker loop.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    requested: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Shutdown {
    /// A handle that nothing has triggered yet.
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// A handle triggered by SIGINT or SIGTERM.
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let shutdown = Shutdown::new();
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let handle = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("stop requested; finishing the round in flight");
            handle.trigger();
        });
        Ok(shutdown)
    }

    /// Asks the worker to stop after its current round.
    pub fn trigger(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether a stop was requested.
    pub fn is_triggered(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    async fn sleep(&self, duration: Duration) {
        let notified = self.notify.notified();
        if self.is_triggered() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = notified => {}
        }
    }
}

/// The shortest pause after a round that found nothing to do, so a worker never spins.
const IDLE_PAUSE: Duration = Duration::from_millis(200);

/// When [`run_rounds`] stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// After one round: `retrylake run --limit N`.
    OneRound,
    /// Once a round leaves nothing due now: when it processed nothing, calls are paused
    /// (breaker open, Retry-After), or the next due record is in the future. Bounded
    /// rounds ([`RoundConfig::limit`]) go on while more are due: `retrylake run`.
    NoneDue,
    /// Once the queue holds no record: between rounds the clock jumps to (on a virtual
    /// clock) or waits for the next due record, or the end of a pause: `retrylake run
    /// --drain`.
    Drained,
    /// Only when the [`Shutdown`] is triggered: an empty queue is polled, and a round that
    /// processed nothing is followed by a short pause so the loop never spins: `retrylake
    /// worker`.
    Stopped,
}

/// How [`run_rounds`] goes on between rounds, and when it stops.
///
/// ```
/// use std::time::Duration;
/// use retrylake::{Rounds, Shutdown, Until};
///
/// let shutdown = Shutdown::new();
/// let rounds = Rounds::new(Until::Stopped)
///     .poll(Duration::from_secs(5))
///     .shutdown(shutdown.clone());
/// ```
#[derive(Clone)]
pub struct Rounds {
    until: Until,
    poll: Duration,
    virtual_clock: Option<Arc<FixedClock>>,
    shutdown: Shutdown,
    metrics: Option<Arc<Mutex<Metrics>>>,
    maintenance: Maintenance,
    alerts: Option<Arc<Alerts>>,
    /// Why dead-letter alerts were left undelivered when the rounds last ended.
    undelivered: Arc<Mutex<Option<String>>>,
}

impl Rounds {
    /// Rounds until `until`, polling every 5 seconds, on the queue's clock, with a
    /// shutdown handle nothing triggers and no metrics.
    pub fn new(until: Until) -> Self {
        Rounds {
            until,
            poll: Duration::from_secs(5),
            virtual_clock: None,
            shutdown: Shutdown::new(),
            metrics: None,
            maintenance: Maintenance::default(),
            alerts: None,
            undelivered: Arc::default(),
        }
    }

    /// When the last [`run_rounds`] with these rounds (or a clone) ended with dead-letter
    /// alerts it could not deliver (they wait for the next run with alerts): the last
    /// failure's error.
    pub fn undelivered_alerts(&self) -> Option<String> {
        self.undelivered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Delivers the dead letters of every commit of `dead_letter_queue` made from the
    /// first round on (by any worker) to `alerts`, at least once, in the background: a
    /// failing hook is tried again and never holds a round back; what is not delivered
    /// when the rounds end waits for the next rounds with alerts. Default value is none.
    pub fn on_dead_letter(mut self, alerts: Alerts) -> Self {
        self.alerts = Some(Arc::new(alerts));
        self
    }

    /// Sets the longest wait between rounds, so records enqueued or released by other
    /// runners are picked up. Default value is 5 seconds.
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Moves `clock` (the queue's clock, see [`Queue::with_clock`]) to the next due record
    /// instead of waiting for it: a whole backoff schedule runs in an instant.
    pub fn virtual_clock(mut self, clock: Arc<FixedClock>) -> Self {
        self.virtual_clock = Some(clock);
        self
    }

    /// Stops the rounds once `shutdown` is triggered: after the round in flight, and
    /// during a wait at once.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Records every round and the queue's state after it in `metrics` (see
    /// [`crate::metrics::serve`]).
    pub fn metrics(mut self, metrics: Arc<Mutex<Metrics>>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Keeps the tables small under `maintenance` after every round (see [`Maintenance`]).
    /// Default value is [`Maintenance::default`].
    pub fn maintenance(mut self, maintenance: Maintenance) -> Self {
        self.maintenance = maintenance;
        self
    }

    /// Refreshes the metrics after `report`, when there are any.
    async fn record(&self, queue: &mut Queue, report: &RoundReport) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        // The metrics are a view: a failed read (the store briefly unreachable) must not
        // stop the rounds.
        match queue.status().await {
            Ok(status) => {
                let now = queue.clock().now();
                metrics
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .record(report, &status, now);
            }
            Err(e) => tracing::warn!("could not refresh the metrics: {e}"),
        }
    }

    /// What follows `report` at `now`: `None` to stop, or how long to wait (after moving
    /// the virtual clock, if any) before the next round.
    fn next(&self, report: &RoundReport, now: DateTime<Utc>) -> Option<Duration> {
        match self.until {
            Until::OneRound => return None,
            Until::NoneDue => {
                let more_due = report.processed > 0
                    && report.paused_until.is_none()
                    && report.next_due.is_some_and(|next| next <= now);
                return more_due.then_some(Duration::ZERO);
            }
            Until::Drained | Until::Stopped => {}
        }
        // While calls are paused (breaker open, Retry-After) or the queue is, the next round
        // waits for the pause to end even if records are due. A drain stops on a queue paused
        // until a resume, or on an empty one; a worker polls.
        let queue_paused = match report.queue_paused.as_ref().map(|p| p.until) {
            None => None,
            Some(_) if self.until == Until::Drained && report.next_due.is_none() => return None,
            Some(None) if self.until == Until::Drained => return None,
            Some(None) => return Some(self.poll),
            Some(Some(until)) => Some(until),
        };
        let next = report.paused_until.max(queue_paused).max(report.next_due);
        if next.is_none() && self.until == Until::Drained {
            return None;
        }
        let mut wait = match (&self.virtual_clock, next) {
            (Some(clock), Some(next)) => {
                if next > now {
                    clock.set(next);
                }
                Duration::ZERO
            }
            _ => next
                .map_or(self.poll, |next| (next - now).to_std().unwrap_or_default())
                .min(self.poll),
        };
        if self.until == Until::Stopped && report.processed == 0 {
            wait = wait.max(IDLE_PAUSE.min(self.poll));
        }
        if let Some(next) = next
            && !wait.is_zero()
        {
            tracing::debug!(
                "next record due at {next}; waiting {}",
                humantime::format_duration(wait)
            );
        }
        Some(wait)
    }
}

/// Logs that the queue's pause began (or changed) or ended.
fn log_pause(pause: Option<&crate::control::Pause>) {
    match pause {
        Some(p) => tracing::warn!(
            by = p.by,
            reason = p.reason.as_deref().unwrap_or(""),
            "queue paused {} by {}{}: claiming nothing",
            p.until
                .map_or_else(|| "until a resume".to_owned(), |t| format!("until {t}")),
            p.by,
            p.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        None => tracing::info!("queue resumed"),
    }
}

/// Runs rounds of `processor` (per record or per batch, as in [`Queue::run_round`]) over
/// `queue` until [`Rounds`] says to stop (see [`Until`]):
/// the loop of `retrylake run` and `retrylake worker`. `on_round` sees every round's
/// report once the round and the upkeep after it (the report's `phases.upkeep`) are
/// done; an error from it, or from a round, stops the rounds and is returned.
/// A triggered shutdown is checked before each round and ends a wait at once.
///
/// ```no_run
/// # async fn demo() -> retrylake::Result<()> {
/// use std::sync::Arc;
/// use retrylake::{FixedClock, Queue, RoundConfig, Rounds, SimulateProcessor, Until};
///
/// // Drain the queue on a virtual clock: every retry happens at once.
/// let clock = Arc::new(FixedClock::new(chrono::Utc::now()));
/// let mut queue = Queue::open("./retrylake-data").await?.with_clock(clock.clone());
/// let rounds = Rounds::new(Until::Drained).virtual_clock(clock);
/// let processor = SimulateProcessor::new(0.3, 42);
/// retrylake::run_rounds(&mut queue, &processor, &RoundConfig::default(), &rounds, |report| {
///     println!("{} succeeded, {} to retry", report.succeeded, report.retried);
///     Ok::<(), retrylake::Error>(())
/// })
/// .await?;
/// # Ok(())
/// # }
/// ```
pub async fn run_rounds<'p, E: From<Error>>(
    queue: &mut Queue,
    processor: impl Into<Calls<'p>>,
    config: &RoundConfig,
    rounds: &Rounds,
    mut on_round: impl FnMut(&RoundReport) -> Result<(), E>,
) -> Result<(), E> {
    let processor = processor.into();
    let alerts = match &rounds.alerts {
        Some(alerts) => Some(
            AlertTask::start(
                queue.store(),
                alerts.clone(),
                rounds.poll,
                rounds.metrics.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let result = rounds_until(
        queue,
        processor,
        config,
        rounds,
        &mut on_round,
        alerts.as_ref(),
    )
    .await;
    if let Some(alerts) = alerts {
        let undelivered = alerts.finish().await;
        *rounds
            .undelivered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = undelivered;
    }
    result
}

async fn rounds_until<E: From<Error>>(
    queue: &mut Queue,
    processor: Calls<'_>,
    config: &RoundConfig,
    rounds: &Rounds,
    on_round: &mut impl FnMut(&RoundReport) -> Result<(), E>,
    alerts: Option<&AlertTask>,
) -> Result<(), E> {
    let mut paused = None;
    while !rounds.shutdown.is_triggered() {
        let mut report = queue.run_round(processor, config).await?;
        if report.queue_paused != paused {
            log_pause(report.queue_paused.as_ref());
            paused = report.queue_paused.clone();
        }
        if report.dead_lettered > 0
            && let Some(alerts) = alerts
        {
            alerts.wake();
        }
        // Upkeep, not the queue's work: a failed pass is tried again after the next round.
        let upkeep = std::time::Instant::now();
        if let Err(e) = queue.maintain(&rounds.maintenance).await {
            tracing::warn!("table maintenance failed; trying again after the next round: {e}");
        }
        report.phases.upkeep = upkeep.elapsed();
        on_round(&report)?;
        rounds.record(queue, &report).await;
        let Some(wait) = rounds.next(&report, queue.clock().now()) else {
            break;
        };
        if !wait.is_zero() {
            rounds.shutdown.sleep(wait).await;
        }
    }
    Ok(())
}
