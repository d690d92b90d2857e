//! The queue: the tables, a clock and a worker identity, and the jobs run on them.

use std::path::Path;
use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::enqueue::{EnqueueOptions, EnqueueReport, enqueue};
use crate::error::Result;
use crate::processor::Processor;
use crate::redrive::{REDRIVE_WORKER, RedriveFilter, RedriveReport, redrive};
use crate::round::{RoundConfig, RoundReport, run_round};
use crate::status::{Status, status};
use crate::store::Store;

/// The worker name used when none is given.
pub const DEFAULT_WORKER: &str = "main";

/// A retry queue on Delta tables.
pub struct Queue {
    store: Store,
    clock: Arc<dyn Clock>,
    worker: String,
    recovered_all: bool,
}

impl Queue {
    /// Opens (creating when missing) the tables under `root`, on the system clock.
    pub async fn open(root: &str) -> Result<Queue> {
        Ok(Queue {
            store: Store::open(root).await?,
            clock: Arc::new(SystemClock),
            worker: DEFAULT_WORKER.to_owned(),
            recovered_all: false,
        })
    }

    /// Uses `clock` for every "now". Default value is the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Runs rounds as `worker`: its name in the journal and in the tables' application
    /// transactions. Concurrent runners need distinct names. Default value is `main`.
    pub fn with_worker(mut self, worker: &str) -> Self {
        self.worker = worker.to_owned();
        self
    }

    /// The worker name.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// The tables.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The queue's clock.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// Brings every table up to this worker's last journaled round (after a crash);
    /// returns the rounds it re-applied.
    pub async fn recover(&mut self) -> Result<Vec<i64>> {
        self.store.recover(&self.worker).await
    }

    /// Reads `path` and adds its new records to `retry_queue`, due now.
    pub async fn enqueue(
        &mut self,
        path: &Path,
        options: &EnqueueOptions,
    ) -> Result<EnqueueReport> {
        self.store.refresh().await?;
        self.recover().await?;
        let now = self.clock.now();
        enqueue(&mut self.store, now, path, options).await
    }

    /// Runs one round: every due record (up to the limit) through `processor`.
    pub async fn run_round(
        &mut self,
        processor: &dyn Processor,
        config: &RoundConfig,
    ) -> Result<RoundReport> {
        config.check()?;
        self.store.refresh().await?;
        if self.recovered_all {
            self.store.recover(&self.worker).await?;
            // A redrive has no lease that would bring a half-applied one to a claim.
            self.store.recover(REDRIVE_WORKER).await?;
        } else {
            // Once per process: complete the half-applied rounds of any worker, so one that
            // crashed and never came back cannot leave a record in two tables.
            self.store.recover_all().await?;
            self.recovered_all = true;
        }
        let conflicts = self.store.conflicts();
        let mut report = run_round(
            &mut self.store,
            self.clock.as_ref(),
            &self.worker,
            processor,
            config,
        )
        .await?;
        report.conflicts = self.store.conflicts() - conflicts;
        Ok(report)
    }

    /// Moves the dead letters matching `filter` back into `retry_queue`, due now.
    pub async fn redrive(&mut self, filter: &RedriveFilter) -> Result<RedriveReport> {
        let now = self.clock.now();
        redrive(&mut self.store, now, filter).await
    }

    /// The queue's state now.
    pub async fn status(&mut self) -> Result<Status> {
        self.store.refresh().await?;
        status(&self.store, self.clock.now()).await
    }

    /// Opens the tables under `root` to read them, creating nothing: an error when they are
    /// not all there (see [`Store::open_existing`]). For status and the like; a queue that
    /// runs rounds or enqueues opens with [`Queue::open`].
    pub async fn open_existing(root: &str) -> Result<Queue> {
        Ok(Queue {
            store: Store::open_existing(root, Default::default()).await?,
            clock: Arc::new(SystemClock),
            worker: DEFAULT_WORKER.to_owned(),
            recovered_all: false,
        })
    }
}
