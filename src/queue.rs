//! The queue: the tables, a clock and a worker identity, and the jobs run on them.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;

use crate::audit::{self, Audit};
use crate::clock::{Clock, SystemClock};
use crate::control::{CANCEL_WORKER, CancelFilter, CancelReport, Pause};
use crate::enqueue::{EnqueueOptions, EnqueueReport, enqueue, enqueue_parsed};
use crate::error::{Error, Result};
use crate::input::ParsedInput;
use crate::monitor::{self, Commit};
use crate::policy::RetryPolicy;
use crate::processor::Calls;
use crate::redrive::{REDRIVE_WORKER, RedriveFilter, RedriveReport, redrive};
use crate::report;
use crate::round::{RoundConfig, RoundReport, run_round};
use crate::status::{Status, status};
use crate::store::{
    AsOf, Maintained, Maintenance, Optimized, StorageOptions, Store, Table, Vacuumed,
};

/// The worker name used when none is given.
pub const DEFAULT_WORKER: &str = "main";

/// A retry queue on Delta tables: enqueue records, run rounds of a [`Processor`] over the
/// due ones, and ask the tables how it went.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> retrylake::Result<()> {
/// use std::sync::Arc;
/// use retrylake::{AsOf, FixedClock, Queue, RoundConfig, SimulateProcessor};
///
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("in.jsonl"), r#"{"sample_id":"S-1","payload":"hi"}"#).unwrap();
/// let clock = Arc::new(FixedClock::new("2025-11-24T14:00:00Z".parse().unwrap()));
/// let mut queue = Queue::open(dir.path().join("tables").to_str().unwrap())
///     .await?
///     .with_clock(clock);
/// queue.enqueue(&dir.path().join("in.jsonl"), &Default::default()).await?;
///
/// // A simulator that never fails: the record goes to `final_results`.
/// let report = queue.run_round(&SimulateProcessor::new(0.0, 1), &RoundConfig::default()).await?;
/// assert_eq!(report.succeeded, 1);
/// let rows = queue.query("SELECT sample_id FROM final_results", AsOf::Latest).await?;
/// assert_eq!(rows[0].num_rows(), 1);
/// # Ok(())
/// # }
/// ```
pub struct Queue {
    store: Store,
    clock: Arc<dyn Clock>,
    worker: WorkerName,
    recovered_all: bool,
}

impl Queue {
    /// Opens (creating when missing) the tables under `root`, on the system clock. `root` is
    /// a local path or an object store URL (`s3://bucket/prefix`, `gs://`, `az://`,
    /// `abfss://`) whose credentials come from the environment.
    pub async fn open(root: &str) -> Result<Queue> {
        Queue::open_with(root, StorageOptions::new()).await
    }

    /// [`Queue::open`] with object store settings given here rather than (or on top of)
    /// the environment's: the keys delta-rs takes (`aws_region`, `aws_endpoint_url`,
    /// `google_service_account`, `azure_storage_account_name`...).
    ///
    /// ```no_run
    /// # async fn demo() -> retrylake::Result<()> {
    /// use retrylake::{Queue, StorageOptions};
    ///
    /// let options = StorageOptions::from([
    ///     ("aws_region".to_owned(), "eu-west-1".to_owned()),
    ///     ("aws_endpoint_url".to_owned(), "http://localhost:9000".to_owned()),
    /// ]);
    /// let queue = Queue::open_with("s3://my-bucket/retrylake", options).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open_with(root: &str, options: StorageOptions) -> Result<Queue> {
        Ok(Queue::on(Store::open_with(root, options).await?))
    }

    /// A queue on `store`, on the system clock, as the default worker.
    fn on(store: Store) -> Queue {
        Queue {
            store,
            clock: Arc::new(SystemClock),
            worker: WorkerName(DEFAULT_WORKER.to_owned()),
            recovered_all: false,
        }
    }

    /// Uses `clock` for every "now". Default value is the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Uses `clock` for every "now" from here on (see [`Queue::with_clock`]).
    pub fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.clock = clock;
    }

    /// Runs rounds as `worker`: its name in the journal and in the tables' application
    /// transactions. Concurrent runners need distinct names. Default value is `main`.
    ///
    /// The name is checked as a [`WorkerName`]: an [`Error::InvalidConfig`] unless it is 1
    /// to 64 letters, digits, `-`, `_` or `.`, and not the name redrives are journaled
    /// under.
    ///
    /// ```no_run
    /// # async fn demo() -> retrylake::Result<()> {
    /// use retrylake::Queue;
    ///
    /// let queue = Queue::open("./retrylake-data").await?.with_worker("w1")?;
    /// assert_eq!(queue.worker(), "w1");
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_worker(mut self, worker: &str) -> Result<Self> {
        self.worker = worker.parse()?;
        Ok(self)
    }

    /// The worker name.
    pub fn worker(&self) -> &str {
        self.worker.as_str()
    }

    /// The tables.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Reloads every table's latest version: what other processes committed becomes
    /// visible. Rounds, enqueues and status refresh on their own.
    pub async fn refresh(&mut self) -> Result<()> {
        self.store.refresh().await
    }

    /// The queue's clock.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// Brings every table up to this worker's last journaled round (after a crash);
    /// returns the rounds it re-applied.
    pub async fn recover(&mut self) -> Result<Vec<i64>> {
        self.store.upgrade().await?;
        self.store.recover(self.worker.as_str()).await
    }

    /// Reads `path` and adds its new records to `retry_queue`, due now.
    pub async fn enqueue(
        &mut self,
        path: &Path,
        options: &EnqueueOptions,
    ) -> Result<EnqueueReport> {
        self.store.refresh().await?;
        self.store.upgrade().await?;
        self.recover().await?;
        let now = self.clock.now();
        enqueue(&mut self.store, now, path, options).await
    }

    /// Adds the new records of an input already read ([`crate::input::parse_batches`],
    /// [`crate::input::parse_jsonl_from`]) to `retry_queue`, due now. `source` names the
    /// input in errors, in the dead letters of invalid records and in the commit. Like
    /// [`Queue::enqueue`], writes nothing unless every record is valid or `skip_invalid`.
    pub async fn enqueue_input(
        &mut self,
        source: &Path,
        input: ParsedInput,
        skip_invalid: bool,
    ) -> Result<EnqueueReport> {
        self.store.refresh().await?;
        self.store.upgrade().await?;
        self.recover().await?;
        let now = self.clock.now();
        enqueue_parsed(&mut self.store, now, source, input, skip_invalid).await
    }

    /// Runs one round: every due record (up to the limit) through `processor`, a
    /// [`Processor`](crate::Processor) called per record or a
    /// [`BatchProcessor`](crate::BatchProcessor) (as `&dyn BatchProcessor`) called per
    /// batch of at most `config.call_batch`.
    pub async fn run_round<'p>(
        &mut self,
        processor: impl Into<Calls<'p>>,
        config: &RoundConfig,
    ) -> Result<RoundReport> {
        let processor = processor.into();
        config.check()?;
        let started = std::time::Instant::now();
        self.store.refresh().await?;
        self.store.upgrade().await?;
        if self.recovered_all {
            self.store.recover(self.worker.as_str()).await?;
            // A redrive has no lease that would bring a half-applied one to a claim; a
            // cancel's holds its records, a later one's too, until it ends.
            self.store.recover(REDRIVE_WORKER).await?;
            self.store.recover(CANCEL_WORKER).await?;
        } else {
            // Once per process: complete the half-applied rounds of any worker, so one that
            // crashed and never came back cannot leave a record in two tables.
            self.store.recover_all().await?;
            self.recovered_all = true;
        }
        let prepared = started.elapsed();
        let conflicts = self.store.conflicts();
        let mut report = run_round(
            &mut self.store,
            self.clock.as_ref(),
            self.worker.as_str(),
            processor,
            config,
        )
        .await?;
        report.phases.prepare = prepared;
        report.conflicts = self.store.conflicts() - conflicts;
        Ok(report)
    }

    /// Pauses the queue until `until` (or a [`Queue::resume`]): from their next round,
    /// every worker's rounds claim nothing; enqueues, redrives and cancels go on. Recorded
    /// in `retry_queue`'s history with `reason` and who paused.
    pub async fn pause(
        &mut self,
        until: Option<DateTime<Utc>>,
        reason: Option<&str>,
    ) -> Result<Pause> {
        crate::control::check_reason(reason)?;
        let now = self.clock.now();
        if let Some(until) = until
            && until <= now
        {
            return Err(Error::InvalidConfig(format!(
                "--until {} is not in the future (now is {})",
                until.to_rfc3339(),
                now.to_rfc3339()
            )));
        }
        let pause = Pause {
            until,
            reason: reason.map(str::to_owned),
            by: crate::control::operator(),
            at: now,
        };
        self.store.refresh_table(Table::RetryQueue).await?;
        self.store.upgrade().await?;
        self.store.set_pause(Some(&pause)).await?;
        Ok(pause)
    }

    /// Ends a pause of the queue (nothing happens when it is not paused but the history
    /// line): workers claim again from their next round.
    pub async fn resume(&mut self) -> Result<()> {
        self.store.refresh_table(Table::RetryQueue).await?;
        self.store.upgrade().await?;
        self.store.set_pause(None).await
    }

    /// The queue's pause if one holds now, as last read (see [`Queue::refresh`]).
    pub fn paused(&self) -> Result<Option<Pause>> {
        let now = self.clock.now();
        Ok(self.store.pause()?.filter(|p| p.holds_at(now)))
    }

    /// Cancels the queued records `filter` matches: they go to `dead_letter_queue` with
    /// reason `cancelled`, journaled like a round's. A record a running round holds under
    /// its live lease is left to it and counted as held.
    pub async fn cancel(&mut self, filter: &CancelFilter) -> Result<CancelReport> {
        self.store.upgrade().await?;
        crate::control::cancel(&mut self.store, self.clock.as_ref(), filter).await
    }

    /// Moves the dead letters matching `filter` back into `retry_queue`, due now.
    pub async fn redrive(&mut self, filter: &RedriveFilter) -> Result<RedriveReport> {
        self.store.upgrade().await?;
        let now = self.clock.now();
        redrive(&mut self.store, now, filter).await
    }

    /// The queue's state now.
    pub async fn status(&mut self) -> Result<Status> {
        self.store.refresh().await?;
        status(&self.store, self.clock.now()).await
    }

    /// Runs one read-only SQL statement over the four tables (named `retry_queue`,
    /// `final_results`, `dead_letter_queue` and `attempts`) as they are at `as_of`.
    pub async fn query(&mut self, sql: &str, as_of: AsOf) -> Result<Vec<RecordBatch>> {
        Ok(self.query_with_schema(sql, as_of).await?.1)
    }

    /// Like [`Queue::query`], with the result's schema, which an empty result has too.
    pub async fn query_with_schema(
        &mut self,
        sql: &str,
        as_of: AsOf,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        self.store.refresh().await?;
        monitor::query_at(&self.store, sql, as_of).await
    }

    /// The commits of `tables`, newest first: the audit trail of every change.
    pub async fn history(&mut self, tables: &[Table]) -> Result<Vec<Commit>> {
        self.store.refresh().await?;
        monitor::history(&self.store, tables).await
    }

    /// Compacts `tables` and checkpoints them (see [`Store::optimize`]).
    pub async fn optimize(&mut self, tables: &[Table]) -> Result<Vec<Optimized>> {
        self.store.refresh().await?;
        self.store.upgrade().await?;
        self.store.optimize(tables).await
    }

    /// One maintenance pass under `policy` (see [`Maintenance`]): what
    /// [`run_rounds`](crate::run_rounds) does after every round. Rows' ages
    /// ([`RowRetention`](crate::RowRetention)) are measured on the queue's clock.
    pub async fn maintain(&mut self, policy: &Maintenance) -> Result<Vec<Maintained>> {
        self.store.upgrade().await?;
        let now = self.clock.now();
        self.store.maintain(policy, now).await
    }

    /// Deletes the data files no version younger than `retain` refers to (see
    /// [`Store::vacuum`]).
    pub async fn vacuum(&mut self, retain: Duration) -> Result<Vec<Vacuumed>> {
        self.store.refresh().await?;
        self.store.upgrade().await?;
        self.store.vacuum(retain).await
    }

    /// An HTML page of the queue's state and history at the queue's time, with `policy`'s
    /// schedule.
    pub async fn report(&mut self, policy: &RetryPolicy) -> Result<String> {
        self.store.refresh().await?;
        report::report(&self.store, policy, self.clock.now()).await
    }

    /// Checks the tables against the journal: every record in exactly one place.
    pub async fn audit(&mut self) -> Result<Audit> {
        self.store.refresh().await?;
        audit::audit(&self.store).await
    }

    /// Opens the tables under `root` to read them, creating nothing: an error when they are
    /// not all there (see [`Store::open_existing`]). For status and the like; a queue that
    /// runs rounds or enqueues opens with [`Queue::open`].
    pub async fn open_existing(root: &str) -> Result<Queue> {
        Queue::open_existing_with(root, StorageOptions::new()).await
    }

    /// [`Queue::open_existing`] with object store settings, as in [`Queue::open_with`].
    pub async fn open_existing_with(root: &str, options: StorageOptions) -> Result<Queue> {
        Ok(Queue::on(Store::open_existing(root, options).await?))
    }
}

/// A checked worker name: 1 to 64 ASCII letters, digits, `-`, `_` or `.`, and not
/// [`REDRIVE_WORKER`] (redrives are journaled under it, and a worker sharing it would fence
/// them). It names a runner in the journal, in the tables' application transactions and in
/// a file name, so nothing else is allowed.
///
/// ```
/// use retrylake::WorkerName;
///
/// let name: WorkerName = "w-1.eu_west".parse()?;
/// assert_eq!(name.as_str(), "w-1.eu_west");
/// assert!("two words".parse::<WorkerName>().is_err());
/// assert!("redrive".parse::<WorkerName>().is_err());
/// assert!("cancel".parse::<WorkerName>().is_err());
/// # Ok::<(), retrylake::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkerName(String);

impl WorkerName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for WorkerName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            let shown: String = s.chars().take(80).collect();
            return Err(Error::InvalidConfig(format!(
                "worker name {shown:?}: expected 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        for (reserved, what) in [(REDRIVE_WORKER, "redrives"), (CANCEL_WORKER, "cancels")] {
            if s == reserved {
                return Err(Error::InvalidConfig(format!(
                    "'{s}' is the name {what} are journaled under; choose another"
                )));
            }
        }
        Ok(WorkerName(s.to_owned()))
    }
}

impl AsRef<str> for WorkerName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for WorkerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
