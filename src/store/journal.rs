//! The commit protocol of a round: the `attempts` journal first, then the tables it
//! implies, each commit tagged with the round as a Delta application transaction; and the
//! recovery that re-applies a journaled round to any table a crash left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use deltalake::kernel::{Action, Remove};
use deltalake::protocol::DeltaOperation;

use deltalake::arrow::array::{Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::datafusion::prelude::{SessionContext, col, lit};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use serde_json::{Value, json};

use super::due::{append, retried_batches, settle_operation};
use super::{AttemptRow, QueueRow, Rows, Staged, Store, Table, collect_rows, delta};
use crate::clock::to_micros;
use crate::error::{Error, Result};
use crate::round::Phases;
use crate::status::strings;

/// What a commit records about itself: the operation, and for a round its number, worker
/// and counts. Stored under `retrylake` in the commit's metadata; a round's number is also
/// the commit's application-transaction version.
#[derive(Debug, Clone, Default)]
pub struct CommitTag {
    operation: String,
    round: Option<(String, i64)>,
    details: BTreeMap<String, Value>,
}

impl CommitTag {
    /// A tag for a commit that is not part of a round (`create`, `enqueue`).
    pub fn operation(operation: &str) -> Self {
        CommitTag {
            operation: operation.to_owned(),
            ..CommitTag::default()
        }
    }

    /// A tag for a commit of round `round` of `worker`.
    pub fn round(operation: &str, worker: &str, round: i64) -> Self {
        CommitTag {
            operation: operation.to_owned(),
            round: Some((worker.to_owned(), round)),
            details: BTreeMap::new(),
        }
    }

    /// Adds a count or other detail to the commit metadata.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    pub(crate) fn properties(&self) -> CommitProperties {
        let mut info = serde_json::Map::new();
        info.insert("operation".into(), json!(self.operation));
        if let Some((worker, round)) = &self.round {
            info.insert("round".into(), json!(round));
            info.insert("worker".into(), json!(worker));
        }
        info.extend(self.details.iter().map(|(k, v)| (k.clone(), v.clone())));
        let props = CommitProperties::default()
            .with_metadata([("retrylake".to_owned(), Value::Object(info))]);
        match &self.round {
            Some((worker, round)) => {
                props.with_application_transaction(Transaction::new(app_id(worker), *round))
            }
            None => props,
        }
    }
}

/// The application id under which `worker`'s rounds are recorded in every table.
pub(crate) fn app_id(worker: &str) -> String {
    format!("retrylake-round-{worker}")
}

/// Aborts the process at a named step when `RETRYLAKE_FAILPOINT` names it: how the crash
/// tests kill a round between two commits. Costs one environment lookup otherwise.
pub(crate) fn failpoint(name: &str) {
    if std::env::var_os("RETRYLAKE_FAILPOINT").is_some_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// How a round's queue commit swaps its lease files for its retried rows.
#[derive(Debug)]
pub(crate) struct Settle {
    /// The files that hold the round's records under its lease.
    pub lease: Vec<Remove>,
    /// The records that stay in the queue, with their new count, error and time lock,
    /// sorted by retry count.
    pub retried: Vec<QueueRow>,
    /// The lease's end.
    pub lease_until: DateTime<Utc>,
}

/// A commit whose files are being written on a task of their own.
struct StagedCommit {
    table: Table,
    files: Staged,
    /// Files the commit removes besides adding the staged ones.
    removes: Vec<Remove>,
    operation: DeltaOperation,
}

impl StagedCommit {
    /// A blind append of the staged files.
    fn append(table: Table, files: Staged) -> Self {
        StagedCommit {
            table,
            files,
            removes: Vec::new(),
            operation: append(),
        }
    }

    /// The commit's actions and operation, once its files are written.
    async fn ready(self) -> Result<(Vec<Action>, DeltaOperation)> {
        let adds = Store::staged(self.table, self.files).await?;
        let mut actions: Vec<Action> = self.removes.into_iter().map(Action::Remove).collect();
        actions.extend(adds.into_iter().map(Action::Add));
        Ok((actions, self.operation))
    }
}

/// Where a journaled attempt sent its record.
pub(crate) mod disposition {
    pub const FINAL: &str = "final";
    pub const RETRY: &str = "retry";
    pub const DEAD: &str = "dead";
    pub const REDRIVE: &str = "redrive";
}

/// The order a round's tables are written in after the journal. A redrive adds to the
/// queue before it removes from the dead letters, so a crash between the two leaves the
/// record in two tables (resolved by recovery) rather than in none.
fn table_order(rows: &[AttemptRow]) -> [Table; 3] {
    if rows.iter().any(|r| r.disposition == disposition::REDRIVE) {
        [
            Table::FinalResults,
            Table::RetryQueue,
            Table::DeadLetterQueue,
        ]
    } else {
        [
            Table::FinalResults,
            Table::DeadLetterQueue,
            Table::RetryQueue,
        ]
    }
}

/// How often a commit that lost a race with a concurrent writer is re-read and retried.
const CONFLICT_RETRIES: u32 = 12;

impl Store {
    /// The last round `worker` journaled (0 before its first).
    pub async fn last_round(&self, worker: &str) -> Result<i64> {
        Ok(self
            .txn_version(Table::Attempts, &app_id(worker))
            .await?
            .unwrap_or(0))
    }

    /// Commits a round: the journal, then `final_results`, `dead_letter_queue` and
    /// `retry_queue`. `rows` are the round's attempts, all of one round and worker. With a
    /// `settle`, the queue's commit swaps the round's lease files for its retried rows;
    /// without (or when that conflicts), it is a MERGE by id. Each commit's wall time goes
    /// into `phases`.
    pub(crate) async fn commit_round(
        &mut self,
        rows: &[AttemptRow],
        tag: &CommitTag,
        settle: Option<&Settle>,
        phases: &mut Phases,
    ) -> Result<()> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let started = Instant::now();
        // With a settle, every table's files are written at once, each on a task of its
        // own; the commits that make them part of the tables still land one at a time.
        let mut staged = match settle {
            Some(settle) => self.stage_round(rows, settle)?,
            None => BTreeMap::new(),
        };
        let journal = match staged.remove(&Table::Attempts) {
            Some(files) => {
                let (actions, operation) = files.ready().await?;
                self.commit(Table::Attempts, actions, operation, tag).await
            }
            None => self.append(rows, tag).await,
        };
        match journal {
            Err(e) if e.is_same_app_conflict() => {
                return Err(Error::WorkerBusy {
                    worker: first.worker.clone(),
                });
            }
            other => other?,
        }
        phases.journal = started.elapsed();
        failpoint("after-journal");
        for table in table_order(rows) {
            let started = Instant::now();
            self.apply(table, rows, tag, staged.remove(&table)).await?;
            let (phase, point) = match table {
                Table::FinalResults => (&mut phases.final_results, "after-final"),
                Table::DeadLetterQueue => (&mut phases.dead_letter, "after-dead-letter"),
                _ => (&mut phases.queue, "after-merge"),
            };
            *phase = started.elapsed();
            failpoint(point);
        }
        Ok(())
    }

    /// Starts writing the files of a round's four commits: the journal, the final and dead
    /// rows, and the retried rows that replace the lease files.
    fn stage_round(
        &self,
        rows: &[AttemptRow],
        settle: &Settle,
    ) -> Result<BTreeMap<Table, StagedCommit>> {
        let non_empty = |b: RecordBatch| if b.num_rows() == 0 { vec![] } else { vec![b] };
        let mut staged = BTreeMap::new();
        for (table, batches) in [
            (Table::Attempts, halves(AttemptRow::to_batch(rows)?)),
            (
                Table::FinalResults,
                non_empty(AttemptRow::final_batch(rows)?),
            ),
            (
                Table::DeadLetterQueue,
                non_empty(AttemptRow::dead_batch(rows)?),
            ),
        ] {
            let files = self.stage(table, batches)?;
            staged.insert(table, StagedCommit::append(table, files));
        }
        let queue = Table::RetryQueue;
        staged.insert(
            queue,
            StagedCommit {
                table: queue,
                files: self.stage(queue, retried_batches(&settle.retried)?)?,
                removes: settle.lease.clone(),
                operation: settle_operation(settle.lease_until),
            },
        );
        Ok(staged)
    }

    /// Ends a round that attempted no record (every call held back, a failed probe): puts
    /// its records back in one commit on `retry_queue`. Nothing was attempted, so nothing
    /// is journaled; a crash before this commit leaves them under the lease, which ends.
    pub(crate) async fn release(&mut self, settle: &Settle, tag: &CommitTag) -> Result<()> {
        let queue = Table::RetryQueue;
        let adds = self
            .write_batches(queue, retried_batches(&settle.retried)?.into_iter().map(Ok))
            .await?;
        let mut actions: Vec<Action> = settle.lease.iter().cloned().map(Action::Remove).collect();
        actions.extend(adds.into_iter().map(Action::Add));
        match self
            .commit(queue, actions, settle_operation(settle.lease_until), tag)
            .await
        {
            // Only if the lease ran out and another worker took the records.
            Err(e) if e.is_conflict() => {
                tracing::warn!("could not put back the held-back records: {e}");
                Ok(())
            }
            other => other,
        }
    }

    /// Brings every table up to `worker`'s last journaled round, re-applying from the
    /// journal each round a crash (or a hand-edited table) left unapplied. Returns the
    /// rounds it re-applied.
    pub async fn recover(&mut self, worker: &str) -> Result<Vec<i64>> {
        let last = self.last_round(worker).await?;
        let app = app_id(worker);
        let mut applied = BTreeMap::new();
        for table in [
            Table::FinalResults,
            Table::DeadLetterQueue,
            Table::RetryQueue,
        ] {
            applied.insert(table, self.txn_version(table, &app).await?.unwrap_or(0));
        }
        let oldest = applied.values().copied().min().unwrap_or(last);
        if oldest >= last {
            return Ok(Vec::new());
        }
        let (_ctx, frame) = self.frame(Table::Attempts).await?;
        let frame = frame.filter(
            col("worker")
                .eq(lit(worker))
                .and(col("round").gt(lit(oldest)))
                .and(col("round").lt_eq(lit(last))),
        )?;
        let mut by_round: BTreeMap<i64, Vec<AttemptRow>> = BTreeMap::new();
        for row in collect_rows::<AttemptRow>(frame).await? {
            by_round.entry(row.round).or_default().push(row);
        }
        for (round, rows) in &by_round {
            tracing::warn!(
                round,
                worker,
                attempts = rows.len(),
                "re-applying a journaled round a crash left half-committed"
            );
            let tag = CommitTag::round("recover", worker, *round).with("attempts", rows.len());
            for table in table_order(rows) {
                if applied[&table] < *round {
                    self.apply(table, rows, &tag, None).await?;
                }
            }
        }
        Ok(by_round.into_keys().collect())
    }

    /// Brings the tables up to date with every worker's journal: a worker that crashed and
    /// never came back must not leave its last round half-applied.
    pub async fn recover_all(&mut self) -> Result<()> {
        let workers = match self.workers_from_statistics()? {
            Some(workers) => workers,
            None => {
                let (_ctx, frame) = self.frame(Table::Attempts).await?;
                let mut workers = BTreeSet::new();
                for batch in frame
                    .aggregate(vec![col("worker")], vec![])?
                    .collect()
                    .await?
                {
                    workers.extend(
                        strings(batch.column(0))?
                            .iter()
                            .flatten()
                            .map(str::to_owned),
                    );
                }
                workers
            }
        };
        for worker in workers {
            self.recover(&worker).await?;
        }
        Ok(())
    }

    /// The workers in the journal, from its files' statistics alone: every round writes
    /// files of its own worker, so a file's least and greatest `worker` are the same name.
    /// `None` when a file mixes workers (after `optimize`) or lacks statistics: then the
    /// journal must be read.
    fn workers_from_statistics(&self) -> Result<Option<BTreeSet<String>>> {
        let table = Table::Attempts;
        let snapshot = self.table(table).snapshot().map_err(delta(table))?;
        let mut workers = BTreeSet::new();
        for view in snapshot.log_data().iter() {
            let Some(stats) = view.stats() else {
                return Ok(None);
            };
            let stats: Value = serde_json::from_str(&stats).unwrap_or_default();
            let name = |bound: &str| stats.get(bound)?.get("worker")?.as_str().map(str::to_owned);
            match (name("minValues"), name("maxValues")) {
                // Parquet may cut long statistics short; only short names are whole.
                (Some(min), Some(max)) if min == max && min.len() < 64 => workers.insert(min),
                _ => return Ok(None),
            };
        }
        Ok(Some(workers))
    }

    /// Applies one journaled round to one table, unless that table already carries it.
    /// A commit conflict (a concurrent writer, or another process completing the same
    /// round) is met by re-reading the table and checking again.
    async fn apply(
        &mut self,
        table: Table,
        rows: &[AttemptRow],
        tag: &CommitTag,
        staged: Option<StagedCommit>,
    ) -> Result<()> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let (app, round) = (app_id(&first.worker), first.round);
        let mut staged = match staged {
            Some(s) => Some(s.ready().await?),
            None => None,
        };
        for attempt in 0.. {
            if self.txn_version(table, &app).await?.unwrap_or(0) >= round {
                return Ok(());
            }
            let result = match (&staged, table) {
                (Some((actions, operation)), _) => {
                    self.commit(table, actions.clone(), operation.clone(), tag)
                        .await
                }
                (None, Table::FinalResults) => {
                    let batch = AttemptRow::final_batch(rows)?;
                    self.append_batch(table, batch, tag).await
                }
                (None, Table::DeadLetterQueue) => {
                    let redriven: Vec<&str> = rows
                        .iter()
                        .filter(|r| r.disposition == disposition::REDRIVE)
                        .map(|r| r.sample_id.as_str())
                        .collect();
                    if redriven.is_empty() {
                        let batch = AttemptRow::dead_batch(rows)?;
                        self.append_batch(table, batch, tag).await
                    } else {
                        self.delete_dead(&redriven, tag).await
                    }
                }
                (None, _) => {
                    let source = SessionContext::new().read_batch(merge_source(rows)?)?;
                    self.merge_queue(source, tag).await
                }
            };
            if table == Table::RetryQueue && result.as_ref().is_err_and(Error::is_conflict) {
                // The lease files are gone only if another worker took them after the
                // lease ended: fall back to the MERGE by id.
                staged = None;
            }
            match result {
                Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => {
                    tracing::debug!(table = table.name(), attempt, "commit conflict; re-reading");
                    self.retry_after_conflict(table, attempt).await?;
                }
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }
}

/// A batch in two files written side by side: the journal is a round's largest write.
fn halves(batch: RecordBatch) -> Vec<RecordBatch> {
    let half = batch.num_rows() / 2;
    if half == 0 {
        return vec![batch];
    }
    vec![
        batch.slice(0, half),
        batch.slice(half, batch.num_rows() - half),
    ]
}

/// The MERGE source for a round: one row per attempted record, `delete` for those that
/// left the queue, `retry` (with the new count, error and time lock) for the others, and
/// `insert` for redriven dead letters.
fn merge_source(rows: &[AttemptRow]) -> Result<RecordBatch> {
    let action: StringArray = rows
        .iter()
        .map(|r| {
            Some(match r.disposition.as_str() {
                disposition::RETRY => "retry",
                disposition::REDRIVE => "insert",
                _ => "delete",
            })
        })
        .collect();
    let payloads: StringArray = rows.iter().map(|r| r.payload.as_deref()).collect();
    let enqueued = TimestampMicrosecondArray::from(
        rows.iter()
            .map(|r| to_micros(r.finished_at))
            .collect::<Vec<_>>(),
    )
    .with_timezone("UTC");
    let ids: StringArray = rows.iter().map(|r| Some(r.sample_id.as_str())).collect();
    let counts: Int32Array = rows.iter().map(|r| Some(r.retry_count)).collect();
    let errors: StringArray = rows.iter().map(|r| r.error_msg.as_deref()).collect();
    let after = TimestampMicrosecondArray::from(
        rows.iter()
            .map(|r| r.process_after.map(to_micros))
            .collect::<Vec<_>>(),
    )
    .with_timezone("UTC");
    let schema = Schema::new(vec![
        Field::new("sample_id", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("retry_count", DataType::Int32, false),
        Field::new("error_msg", DataType::Utf8, true),
        Field::new(
            "process_after",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("payload", DataType::Utf8, true),
        Field::new(
            "enqueued_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]);
    Ok(RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(ids),
            Arc::new(action),
            Arc::new(counts),
            Arc::new(errors),
            Arc::new(after),
            Arc::new(payloads),
            Arc::new(enqueued),
        ],
    )?)
}
