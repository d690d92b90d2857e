//! The worker: rounds until told to stop, sleeping until the next record is due (or a poll
//! interval passes, so new enqueues are picked up), and finishing the round in flight on
//! SIGINT or SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::Result;
use crate::metrics::Metrics;
use crate::processor::Processor;
use crate::queue::Queue;
use crate::round::{RoundConfig, RoundReport};

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

/// Runs rounds until `shutdown` is triggered; `on_round` sees every round's report.
pub async fn run_worker(
    queue: &mut Queue,
    processor: &dyn Processor,
    config: &RoundConfig,
    poll: Duration,
    shutdown: &Shutdown,
    metrics: Option<Arc<Mutex<Metrics>>>,
    mut on_round: impl FnMut(&RoundReport),
) -> Result<()> {
    while !shutdown.is_triggered() {
        let report = queue.run_round(processor, config).await?;
        on_round(&report);
        if let Some(metrics) = &metrics {
            // The metrics are a view: a failed read (the store briefly unreachable) must
            // not stop the rounds.
            match queue.status().await {
                Ok(status) => {
                    let now = queue.clock().now();
                    metrics
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .record(&report, &status, now);
                }
                Err(e) => tracing::warn!("could not refresh the metrics: {e}"),
            }
        }
        let now = queue.clock().now();
        // While calls are paused (breaker open, Retry-After), wait for the pause to end
        // even if records are due.
        let until_due = report
            .paused_until
            .max(report.next_due)
            .map_or(poll, |next| (next - now).to_std().unwrap_or_default());
        let mut wait = until_due.min(poll);
        if report.processed == 0 {
            wait = wait.max(IDLE_PAUSE.min(poll));
        }
        if !wait.is_zero() {
            shutdown.sleep(wait).await;
        }
    }
    Ok(())
}
