//! The commit protocol of a round: the `attempts` journal first, then the tables it
//! implies, each commit tagged with the round as a Delta application transaction; and the
//! recovery that re-applies a journaled round to any table a crash left behind.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use deltalake::kernel::{Action, Remove};
use deltalake::protocol::DeltaOperation;

use deltalake::arrow::array::{Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::datafusion::prelude::{Expr, SessionContext, col, lit};
use serde_json::Value;

use super::columns::{strings, timestamp_type};
use super::commit::{CommitTag, app_id};
use super::due::{
    LeaseOwner, append, blind_append, oldest_first, retried_batches, settle_operation,
};
use super::{
    AttemptRow, Disposition, QueueRow, Rows, Staged, Store, Table, collect_rows, table_error,
};
use crate::clock::to_micros;
use crate::error::{Error, Result};

/// Aborts the process at a named step when `RETRYLAKE_FAILPOINT` names it: how the crash
/// tests kill a round between two commits. `<name>:stop` stops it there instead (SIGSTOP,
/// until a SIGCONT), as a process frozen between two commits. Costs one environment
/// lookup otherwise.
pub(crate) fn failpoint(name: &str) {
    let Some(point) = std::env::var_os("RETRYLAKE_FAILPOINT") else {
        return;
    };
    if point == name {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
    if point.to_str().and_then(|p| p.strip_suffix(":stop")) == Some(name) {
        eprintln!("failpoint {name}: stopping");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
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

/// The wall time of a round's commits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CommitTimes {
    /// Writing the files of all four commits (side by side) and the journal's commit.
    pub journal: std::time::Duration,
    /// The `final_results` commit.
    pub final_results: std::time::Duration,
    /// The `dead_letter_queue` commit.
    pub dead_letter: std::time::Duration,
    /// The `retry_queue` commit.
    pub queue: std::time::Duration,
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

/// The order a round's tables are written in after the journal. A redrive adds to the
/// queue before it removes from the dead letters, so a crash between the two leaves the
/// record in two tables (resolved by recovery) rather than in none.
fn table_order(rows: &[AttemptRow]) -> [Table; 3] {
    if rows.iter().any(|r| r.disposition == Disposition::Redrive) {
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
            .applied_round(Table::Attempts, worker)
            .await?
            .unwrap_or(0))
    }

    /// The last round of `worker` that `table` carries at its loaded version (its
    /// application-transaction version), `None` before its first.
    pub async fn applied_round(&self, table: Table, worker: &str) -> Result<Option<i64>> {
        self.txn_version(table, &app_id(worker)).await
    }

    /// Commits a round: the journal, then `final_results`, `dead_letter_queue` and
    /// `retry_queue`. `rows` are the round's attempts, all of one round and worker. With a
    /// `settle`, the queue's commit swaps the round's lease files for its retried rows;
    /// without (a redrive), it appends the redriven records. Returns each commit's wall
    /// time.
    ///
    /// The journal's commit decides the round: it lands only if no other process ended
    /// the round first (a worker that fenced it after its lease ended, see
    /// [`Store::resolve_lease`], or a second process under the same worker name). Then
    /// the round is lost: [`Error::LeaseLost`], nothing committed, the records placed by
    /// the other.
    pub(crate) async fn commit_round(
        &mut self,
        rows: &[AttemptRow],
        tag: &CommitTag,
        settle: Option<&Settle>,
    ) -> Result<CommitTimes> {
        let mut times = CommitTimes::default();
        let Some(first) = rows.first() else {
            return Ok(times);
        };
        let owner = LeaseOwner {
            worker: first.worker.clone(),
            round: first.round,
        };
        let started = Instant::now();
        // With a settle, every table's files are written at once, each on a task of its
        // own; the commits that make them part of the tables still land one at a time.
        let mut staged = match settle {
            Some(settle) => self.stage_round(rows, settle)?,
            None => BTreeMap::new(),
        };
        let lost = || Error::LeaseLost {
            worker: owner.worker.clone(),
            round: owner.round,
        };
        // A round ended by another process in the version this commit builds on; one that
        // ends it after that version conflicts (the same application transaction).
        if self.last_round(&owner.worker).await? >= owner.round {
            return Err(lost());
        }
        let journal = match staged.remove(&Table::Attempts) {
            Some(files) => {
                let (actions, operation) = files.ready().await?;
                self.commit(Table::Attempts, actions, operation, tag).await
            }
            None => self.append(rows, tag).await,
        };
        match journal {
            Err(e) if e.is_same_app_conflict() => return Err(lost()),
            other => other?,
        }
        times.journal = started.elapsed();
        failpoint("after-journal");
        for table in table_order(rows) {
            let started = Instant::now();
            self.apply(table, &owner, rows, tag, staged.remove(&table))
                .await?;
            let (phase, point) = match table {
                Table::FinalResults => (&mut times.final_results, "after-final"),
                Table::DeadLetterQueue => (&mut times.dead_letter, "after-dead-letter"),
                _ => (&mut times.queue, "after-merge"),
            };
            *phase = started.elapsed();
            failpoint(point);
        }
        Ok(times)
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
                operation: settle_operation(settle.lease_until)?,
            },
        );
        Ok(staged)
    }

    /// Ends a round that attempted no record (every call held back, a failed probe): puts
    /// its records back in one commit on `retry_queue`. Nothing was attempted, so nothing
    /// is journaled; a crash before this commit leaves them under the lease, which ends.
    /// Returns `false` when the lease files are gone: the lease ended and another worker
    /// took the records.
    pub(crate) async fn release(&mut self, settle: &Settle, tag: &CommitTag) -> Result<bool> {
        let queue = Table::RetryQueue;
        let adds = self
            .write_batches(queue, retried_batches(&settle.retried)?.into_iter().map(Ok))
            .await?;
        let mut actions: Vec<Action> = settle.lease.iter().cloned().map(Action::Remove).collect();
        actions.extend(adds.into_iter().map(Action::Add));
        for conflicts in 0.. {
            if !self.holds(queue, &settle.lease)? {
                return Ok(false);
            }
            let operation = settle_operation(settle.lease_until)?;
            match self.commit(queue, actions.clone(), operation, tag).await {
                Err(e) if e.is_conflict() && conflicts < CONFLICT_RETRIES => {
                    self.retry_after_conflict(queue, conflicts).await?;
                }
                other => return other.map(|()| true),
            }
        }
        unreachable!("the loop returns")
    }

    /// Whether every file of `files` is in `table`'s loaded version.
    fn holds(&self, table: Table, files: &[Remove]) -> Result<bool> {
        let snapshot = self.table(table).snapshot().map_err(table_error(table))?;
        let present: HashSet<String> = snapshot
            .log_data()
            .iter()
            .map(|f| f.path().into_owned())
            .collect();
        Ok(files.iter().all(|f| present.contains(&f.path)))
    }

    /// Ends `owner`'s round for good, so that the records it holds under an ended lease
    /// can be taken: if the round has not journaled, *fences* it with an empty commit of
    /// its application transaction on `attempts` (its own journal commit then conflicts,
    /// and it loses); then completes it on every table (a journaled round is settled from
    /// its journal, a fenced one puts its records back as they were). Which of the two
    /// happens is decided by Delta's conflict check on `attempts`, not by any clock.
    pub(crate) async fn resolve_lease(&mut self, owner: &LeaseOwner, by: &str) -> Result<()> {
        let journal = Table::Attempts;
        for conflicts in 0.. {
            self.refresh_table(journal).await?;
            if self.last_round(&owner.worker).await? >= owner.round {
                break;
            }
            let tag = CommitTag::round("fence", &owner.worker, owner.round).with("fenced_by", by);
            match self
                .commit(journal, Vec::new(), blind_append()?, &tag)
                .await
            {
                Ok(()) => {
                    tracing::warn!(
                        worker = owner.worker,
                        round = owner.round,
                        "the lease of round {} of worker {} ended before it journaled; \
                         fenced it, its records go back to the queue",
                        owner.round,
                        owner.worker
                    );
                    break;
                }
                Err(e) if e.is_conflict() && conflicts < CONFLICT_RETRIES => {
                    self.retry_after_conflict(journal, conflicts).await?;
                }
                Err(e) => return Err(e),
            }
        }
        for table in [
            Table::FinalResults,
            Table::DeadLetterQueue,
            Table::RetryQueue,
        ] {
            self.refresh_table(table).await?;
        }
        self.recover(&owner.worker).await?;
        Ok(())
    }

    /// Brings every table up to `worker`'s last journaled round, re-applying from the
    /// journal each round a crash (or a hand-edited table) left unapplied. Returns the
    /// rounds it re-applied.
    pub async fn recover(&mut self, worker: &str) -> Result<Vec<i64>> {
        let last = self.last_round(worker).await?;
        let applied = self.applied_rounds(worker).await?;
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
        // The last round without journal rows was fenced: it ends with no attempt.
        by_round.entry(last).or_default();
        for (round, rows) in &by_round {
            tracing::warn!(
                round,
                worker,
                attempts = rows.len(),
                "completing a round a crash or a fence left half-committed"
            );
            let owner = LeaseOwner {
                worker: worker.to_owned(),
                round: *round,
            };
            let tag = CommitTag::round("recover", worker, *round).with("attempts", rows.len());
            for table in table_order(rows) {
                if applied[&table] < *round {
                    self.apply(table, &owner, rows, &tag, None).await?;
                }
            }
        }
        Ok(by_round.into_keys().collect())
    }

    /// The last round of `worker` each of the tables its rounds settle into carries.
    async fn applied_rounds(&self, worker: &str) -> Result<BTreeMap<Table, i64>> {
        let mut applied = BTreeMap::new();
        for table in [
            Table::FinalResults,
            Table::DeadLetterQueue,
            Table::RetryQueue,
        ] {
            let round = self.applied_round(table, worker).await?.unwrap_or(0);
            applied.insert(table, round);
        }
        Ok(applied)
    }

    /// Which journal rows are settled: those of rounds every table carries, per worker.
    /// Only those may be pruned: the rows of a round a crash left half-applied are the
    /// only record of its outcomes until a recovery applies them.
    pub(crate) async fn settled_journal(&self) -> Result<Expr> {
        let mut settled = lit(false);
        for worker in self.journal_workers().await? {
            let applied = self.applied_rounds(&worker).await?;
            let round = applied.values().copied().min().unwrap_or(0);
            settled = settled.or(col("worker")
                .eq(lit(worker))
                .and(col("round").lt_eq(lit(round))));
        }
        Ok(settled)
    }

    /// Brings the tables up to date with every worker's journal: a worker that crashed and
    /// never came back must not leave its last round half-applied.
    pub async fn recover_all(&mut self) -> Result<()> {
        for worker in self.journal_workers().await? {
            self.recover(&worker).await?;
        }
        Ok(())
    }

    /// The workers in the journal: from its files' statistics where they tell, else read.
    async fn journal_workers(&self) -> Result<BTreeSet<String>> {
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
        Ok(workers)
    }

    /// The workers in the journal, from its files' statistics alone: every round writes
    /// files of its own worker, so a file's least and greatest `worker` are the same name.
    /// `None` when a file mixes workers (after `optimize`) or lacks statistics: then the
    /// journal must be read.
    fn workers_from_statistics(&self) -> Result<Option<BTreeSet<String>>> {
        let table = Table::Attempts;
        let snapshot = self.table(table).snapshot().map_err(table_error(table))?;
        let mut workers = BTreeSet::new();
        for view in snapshot.log_data().iter() {
            match view.stats().and_then(|s| only_worker(&s)) {
                Some(worker) => workers.insert(worker),
                None => return Ok(None),
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
        owner: &LeaseOwner,
        rows: &[AttemptRow],
        tag: &CommitTag,
        staged: Option<StagedCommit>,
    ) -> Result<()> {
        let app = app_id(&owner.worker);
        let staged = match staged {
            Some(s) => Some(s.ready().await?),
            None => None,
        };
        for conflicts in 0.. {
            if self.txn_version(table, &app).await?.unwrap_or(0) >= owner.round {
                return Ok(());
            }
            let result = match (&staged, table) {
                (Some((actions, operation)), _) => {
                    let removes: Vec<Remove> = actions
                        .iter()
                        .filter_map(|a| match a {
                            Action::Remove(r) => Some(r.clone()),
                            _ => None,
                        })
                        .collect();
                    if !self.holds(table, &removes)? {
                        return Err(lease_files_gone(owner));
                    }
                    self.commit(table, actions.clone(), operation.clone(), tag)
                        .await
                }
                (None, Table::FinalResults) => {
                    let batch = AttemptRow::final_batch(rows)?;
                    self.append_batch(table, batch, tag).await
                }
                (None, Table::DeadLetterQueue) => {
                    let redriven: Vec<&AttemptRow> = rows
                        .iter()
                        .filter(|r| r.disposition == Disposition::Redrive)
                        .collect();
                    if redriven.is_empty() {
                        let batch = AttemptRow::dead_batch(rows)?;
                        self.append_batch(table, batch, tag).await
                    } else {
                        self.delete_dead(redriven_letters(&redriven)?, tag).await
                    }
                }
                (None, _) if rows.iter().any(|r| r.disposition == Disposition::Redrive) => {
                    // The redrive checked that none of these is in the queue, and its id
                    // sequence orders it against any enqueue: a plain append.
                    let batch = QueueRow::to_batch(&redriven_rows(rows))?;
                    self.append_new_ids(table, [Ok(batch)], tag).await
                }
                (None, _) => self.settle_from_lease(owner, rows, tag).await,
            };
            match result {
                Err(e) if e.is_conflict() && conflicts < CONFLICT_RETRIES => {
                    tracing::debug!(
                        table = table.name(),
                        conflicts,
                        "commit conflict; re-reading"
                    );
                    self.retry_after_conflict(table, conflicts).await?;
                }
                Err(e) => return Err(e),
                Ok(()) => {
                    // delta-rs makes no commit for a MERGE or a delete that changes
                    // nothing, and with it the round's application transaction would be
                    // lost: the round would be applied again at every recovery.
                    if self.txn_version(table, &app).await?.unwrap_or(0) < owner.round {
                        let marked = self.commit(table, Vec::new(), blind_append()?, tag).await;
                        match marked {
                            // Another process recorded the round first.
                            Err(e) if e.is_conflict() => {
                                self.refresh_table(table).await?;
                                if self.txn_version(table, &app).await?.unwrap_or(0) < owner.round {
                                    return Err(e);
                                }
                            }
                            other => other?,
                        }
                    }
                    return Ok(());
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Settles `owner`'s round on `retry_queue` from its journal `rows` and the lease files
    /// it holds (as found now): removes the lease files and adds back the retried records
    /// with their new count, error and time lock, and the records it never called as they
    /// were. With no journal rows (a fenced round), every record goes back as it was.
    async fn settle_from_lease(
        &mut self,
        owner: &LeaseOwner,
        rows: &[AttemptRow],
        tag: &CommitTag,
    ) -> Result<()> {
        let queue = Table::RetryQueue;
        let files = self.lease_files(owner).await?;
        if files.is_empty() && !rows.is_empty() {
            // No lease files hold the round: it was journaled by a retrylake older than
            // lease tags, or the table was rolled back past its claim. By id.
            let source = SessionContext::new().read_batch(merge_source(rows)?)?;
            return self.merge_queue(source, tag).await;
        }
        let by_id: HashMap<&str, &AttemptRow> =
            rows.iter().map(|r| (r.sample_id.as_str(), r)).collect();
        let mut retried = Vec::new();
        let mut actions = Vec::new();
        let mut lease_until = None;
        for (remove, leased) in files {
            actions.push(Action::Remove(remove));
            for row in leased {
                lease_until = lease_until.max(Some(row.process_after));
                match by_id.get(row.sample_id.as_str()) {
                    None => retried.push(row),
                    Some(a) if a.disposition == Disposition::Retry => retried.push(QueueRow {
                        retry_count: a.retry_count,
                        error_msg: a.error_msg.clone(),
                        process_after: a.process_after.unwrap_or(a.finished_at),
                        snoozes: 0,
                        ..row
                    }),
                    Some(a) if a.disposition == Disposition::Snooze => retried.push(QueueRow {
                        retry_count: a.retry_count,
                        error_msg: a.error_msg.clone(),
                        process_after: a.process_after.unwrap_or(a.finished_at),
                        snoozes: row.snoozes.saturating_add(1),
                        ..row
                    }),
                    Some(_) => {}
                }
            }
        }
        retried.sort_by(|a, b| {
            a.retry_count
                .cmp(&b.retry_count)
                .then_with(|| oldest_first(a, b))
        });
        let adds = self
            .write_batches(queue, retried_batches(&retried)?.into_iter().map(Ok))
            .await?;
        actions.extend(adds.into_iter().map(Action::Add));
        let operation = match lease_until {
            Some(t) => settle_operation(t)?,
            None => append(),
        };
        self.commit(queue, actions, operation, tag).await
    }
}

/// The error for a journaled round whose lease files another writer removed: only a
/// tool other than retrylake (a compaction of `retry_queue`) can do that.
fn lease_files_gone(owner: &LeaseOwner) -> Error {
    Error::Corrupt {
        table: Table::RetryQueue.name(),
        detail: format!(
            "the files holding round {} of worker {} under its lease were removed by another \
             writer (a compaction of retry_queue by another tool?); its journaled outcomes \
             cannot be applied",
            owner.round, owner.worker
        ),
    }
}

/// The queue rows of a redrive's journal rows: due at the redrive, retry count 0.
fn redriven_rows(rows: &[AttemptRow]) -> Vec<QueueRow> {
    rows.iter()
        .filter(|r| r.disposition == Disposition::Redrive)
        .map(|r| QueueRow {
            sample_id: r.sample_id.clone(),
            payload: r.payload.clone(),
            error_msg: r.error_msg.clone(),
            retry_count: r.retry_count,
            process_after: r.process_after.unwrap_or(r.finished_at),
            enqueued_at: r.finished_at,
            snoozes: 0,
        })
        .collect()
}

/// The dead letters a redrive moved, as `sample_id` and `failed_at` (journaled as the
/// redrive's `started_at`).
fn redriven_letters(rows: &[&AttemptRow]) -> Result<RecordBatch> {
    let ids: StringArray = rows.iter().map(|r| Some(r.sample_id.as_str())).collect();
    let failed = TimestampMicrosecondArray::from(
        rows.iter()
            .map(|r| to_micros(r.started_at))
            .collect::<Vec<_>>(),
    )
    .with_timezone("UTC");
    let schema = Schema::new(vec![
        Field::new("sample_id", DataType::Utf8, false),
        Field::new("failed_at", timestamp_type(), false),
    ]);
    Ok(RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(ids), Arc::new(failed)],
    )?)
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
/// left the queue, `retry` or `snooze` (with the new count, error and time lock) for the
/// others.
fn merge_source(rows: &[AttemptRow]) -> Result<RecordBatch> {
    let action: StringArray = rows
        .iter()
        .map(|r| {
            Some(match r.disposition {
                Disposition::Retry => "retry",
                Disposition::Snooze => "snooze",
                _ => "delete",
            })
        })
        .collect();
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
        Field::new("process_after", timestamp_type(), true),
    ]);
    Ok(RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(ids),
            Arc::new(action),
            Arc::new(counts),
            Arc::new(errors),
            Arc::new(after),
        ],
    )?)
}

/// The one worker whose rounds a journal file holds, from its statistics (`None` when its
/// least and greatest `worker` differ, or may be cut short: Parquet may truncate long
/// statistics, so only short names are whole).
pub(super) fn only_worker(stats: &str) -> Option<String> {
    let stats: Value = serde_json::from_str(stats).ok()?;
    let name = |bound: &str| stats.get(bound)?.get("worker")?.as_str();
    match (name("minValues"), name("maxValues")) {
        (Some(min), Some(max)) if min == max && min.len() < 64 => Some(min.to_owned()),
        _ => None,
    }
}
