//! Keeping the tables fast and bounded: compaction, checkpoints, removal of expired log
//! entries, vacuum of files no version needs, and retention of rows.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deltalake::datafusion::functions_aggregate::expr_fn::max;
use deltalake::datafusion::prelude::{Expr, col, lit};
use deltalake::datafusion::scalar::ScalarValue;

use deltalake::DeltaTableError;
use deltalake::kernel::{Action, Add, Remove};
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::DeltaWriter;
use serde::Serialize;

use super::{CommitTag, Store, Table, read_object, table_error};
use crate::error::{Error, Result};

/// How a queue keeps its tables small as it runs, checked after every round of
/// `run`, `run --drain` and `worker` (each check reads only the tables' in-memory state):
///
/// - `attempts`, `final_results` and `dead_letter_queue`, which every round appends a
///   small file to, are compacted once `compact_at` of their files are small. A compaction
///   never conflicts with a round (rounds only append to them) and never touches
///   `retry_queue`, whose files are rounds' leases and time locks.
/// - Every table is checkpointed every 100 commits as it is written (delta-rs), so opening
///   one replays at most 100 commits.
/// - `_delta_log` entries older than `log_retention` (and than a checkpoint) are removed,
///   once every `clean_log_every` versions of a table, instead of after every commit
///   (removing them lists the whole log).
/// - At the same pace, each table is vacuumed: files it stopped using `vacuum_after` ago,
///   and unreferenced files that old, are deleted.
/// - Rows of `attempts`, `final_results` and `dead_letter_queue` are kept forever unless
///   `keep_rows` says otherwise (see [`RowRetention`]).
///
/// ```
/// use std::time::Duration;
/// use retrylake::Maintenance;
///
/// let weekly_history = Maintenance {
///     log_retention: Some(Duration::from_secs(7 * 24 * 3600)),
///     ..Maintenance::default()
/// };
/// assert_eq!(Maintenance::off().compact_at, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maintenance {
    /// Compact a table once this many of its files are small (see `target_file_size`);
    /// `None` never compacts. Default value is `Some(32)`.
    pub compact_at: Option<usize>,
    /// The size compaction writes files up to; files under a quarter of it count as small.
    /// Default value is 64 MiB.
    pub target_file_size: NonZeroU64,
    /// How long `_delta_log` entries are kept: time travel reaches back at least this far
    /// (and until a vacuum, for the data files). `None` keeps every entry. Default value is
    /// 1 day. On a local disk every read of a table's new versions lists its whole log, so
    /// a round's cost grows with the entries kept (see the README's figures); on an object
    /// store it does not. Keep it longer than any process may work on an older version (a
    /// round under its lease, a paused worker): the command line refuses less than 1 hour.
    pub log_retention: Option<Duration>,
    /// Versions of a table between two removals of its expired log entries (and two
    /// vacuums). Default value is `100`.
    pub clean_log_every: u64,
    /// How long data files a table no longer uses (removed by a claim, a compaction, a
    /// prune) stay on storage before a vacuum deletes them, with any file no version
    /// references (a crashed round's) this old: time travel reads a version's data until
    /// then. `None` never vacuums. Default value is 7 days (Delta's own). Keep it longer
    /// than any round may run between writing its files and committing them (its lease):
    /// the command line refuses less than 1 day.
    pub vacuum_after: Option<Duration>,
    /// How long each table's rows are kept. Default value keeps every row.
    pub keep_rows: RowRetention,
}

/// The youngest a file no version refers to may be when a vacuum deletes it.
const UNREFERENCED_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How long rows are kept, per table, by age: `attempts` by `finished_at`, `final_results`
/// by `processed_at`, `dead_letter_queue` by `failed_at`, measured on the queue's clock.
/// `None` (the default) keeps every row: nothing is dropped unless configured.
///
/// Expired rows are deleted by one Delta `DELETE` per table whose history names the
/// predicate, the retention and the rows removed; time travel to a version before it still
/// reads them until a vacuum. A row lives at least its retention and at most a tenth longer
/// (a table is pruned once its oldest row is that far past, so a busy table is not rewritten
/// at every round). Journal rows of a round a crash left half-applied are kept until a
/// recovery applies it: they are its only record. `retry_queue` rows are the queue itself
/// and never expire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowRetention {
    /// How long `attempts` rows are kept.
    pub attempts: Option<Duration>,
    /// How long `final_results` rows are kept.
    pub final_results: Option<Duration>,
    /// How long `dead_letter_queue` rows are kept.
    pub dead_letter_queue: Option<Duration>,
}

/// The most versions of `dead_letter_queue` the upkeep keeps (log entries, and files from
/// a vacuum) for dead-letter alerts not yet delivered.
pub(crate) const ALERT_HOLD: i64 = 10_000;

impl RowRetention {
    /// The retention of `table`'s rows, and the column that dates them.
    pub fn of(&self, table: Table) -> Option<(Duration, &'static str)> {
        match table {
            Table::Attempts => self.attempts.map(|d| (d, "finished_at")),
            Table::FinalResults => self.final_results.map(|d| (d, "processed_at")),
            Table::DeadLetterQueue => self.dead_letter_queue.map(|d| (d, "failed_at")),
            Table::RetryQueue => None,
        }
    }
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance {
            compact_at: Some(32),
            target_file_size: NonZeroU64::new(64 << 20).expect("not zero"),
            log_retention: Some(Duration::from_secs(24 * 3600)),
            clean_log_every: 100,
            vacuum_after: Some(Duration::from_secs(7 * 24 * 3600)),
            keep_rows: RowRetention::default(),
        }
    }
}

impl Maintenance {
    /// No compaction, no removal of log entries, files or rows (checkpoints are still
    /// written).
    pub fn off() -> Self {
        Maintenance {
            compact_at: None,
            log_retention: None,
            vacuum_after: None,
            keep_rows: RowRetention::default(),
            ..Maintenance::default()
        }
    }
}

/// What one maintenance pass did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Maintained {
    /// The table.
    pub table: &'static str,
    /// Small files compacted.
    pub files_compacted: u64,
    /// Files the compaction wrote.
    pub files_written: u64,
    /// Expired `_delta_log` entries removed.
    pub log_entries_removed: usize,
    /// Expired rows deleted ([`RowRetention`]).
    pub rows_pruned: u64,
    /// Data files a vacuum deleted.
    pub files_vacuumed: usize,
}

/// What `optimize` did to one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Optimized {
    /// The table.
    pub table: &'static str,
    /// Files written.
    pub files_added: u64,
    /// Small files replaced.
    pub files_removed: u64,
}

/// What `vacuum` did to one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vacuumed {
    /// The table.
    pub table: &'static str,
    /// Files deleted.
    pub files_deleted: usize,
}

impl Store {
    /// Compacts `tables` and writes a checkpoint of each, so opening them stays fast however
    /// many rounds they hold. `retry_queue` is only checkpointed: its files are its time
    /// lock (rounds take and remove them whole), and a compaction would mix records that
    /// come due at different times, and could rewrite a file a running round holds.
    pub async fn optimize(&mut self, tables: &[Table]) -> Result<Vec<Optimized>> {
        let mut done = Vec::new();
        for &table in tables {
            let mut did = Maintained::default();
            if table != Table::RetryQueue {
                // Pass after pass (one per worker's group of journal files), each leaving
                // fewer files, until none is left to compact.
                let target = Maintenance::default().target_file_size;
                loop {
                    let mut pass = Maintained::default();
                    self.compact(table, target, &mut pass).await?;
                    if pass.files_compacted == 0 {
                        break;
                    }
                    did.files_compacted += pass.files_compacted;
                    did.files_written += pass.files_written;
                }
            }
            deltalake::checkpoints::create_checkpoint(self.table(table), None)
                .await
                .map_err(table_error(table))?;
            done.push(Optimized {
                table: table.name(),
                files_added: did.files_written,
                files_removed: did.files_compacted,
            });
        }
        Ok(done)
    }

    /// One maintenance pass under `policy`: compacts the append-only tables that have
    /// gathered enough small files, and removes expired log entries of the tables that
    /// have passed a multiple of `clean_log_every` versions since the last pass (or since
    /// they were opened). Returns what it did to the tables it changed. A compaction that
    /// loses a race with another writer is left for a later pass, as is a prune. `now` is
    /// the queue's clock, which rows' ages are measured on.
    pub async fn maintain(
        &mut self,
        policy: &Maintenance,
        now: DateTime<Utc>,
    ) -> Result<Vec<Maintained>> {
        let mut done = Vec::new();
        // A table whose upkeep fails does not hold back the others'; the first error is
        // returned once every table had its turn.
        let mut failed = None;
        for table in Table::ALL {
            let mut did = Maintained {
                table: table.name(),
                ..Maintained::default()
            };
            if let Err(e) = self.maintain_table(table, policy, now, &mut did).await {
                tracing::warn!(table = table.name(), "table maintenance failed: {e}");
                failed.get_or_insert(e);
            }
            if did.files_compacted > 0
                || did.log_entries_removed > 0
                || did.rows_pruned > 0
                || did.files_vacuumed > 0
            {
                tracing::debug!(?did, "maintained");
                done.push(did);
            }
        }
        failed.map_or(Ok(done), Err)
    }

    /// One table's share of [`Store::maintain`].
    async fn maintain_table(
        &mut self,
        table: Table,
        policy: &Maintenance,
        now: DateTime<Utc>,
        did: &mut Maintained,
    ) -> Result<()> {
        if let Some((keep, column)) = policy.keep_rows.of(table) {
            self.prune(table, keep, column, now, did).await?;
        }
        if let Some(at) = policy.compact_at
            && table != Table::RetryQueue
            && self.small_files(table, policy.target_file_size)?.len() >= at.max(2)
        {
            self.compact(table, policy.target_file_size, did).await?;
        }
        let version = self.table(table).version();
        let every = policy.clean_log_every.max(1);
        let last = self.maintained[Store::index(table)];
        let due = matches!((last, version), (Some(last), Some(version)) if version / every > last / every);
        // Dead letters not yet alerted (`--on-dead-letter`) keep their log entries and
        // files until they are.
        let alerted = match table {
            Table::DeadLetterQueue => self.txn_version(table, super::commit::ALERTS_APP).await?,
            _ => None,
        };
        // The cursor may lag a few versions without dead letters behind; one left more than
        // ALERT_HOLD versions behind (no process alerts any more, or its hook is down for
        // that long) holds nothing back, so the table's log and files stay bounded.
        let lag = alerted
            .and_then(|a| version.map(|v| i64::try_from(v).unwrap_or(i64::MAX).saturating_sub(a)));
        let alerts_pending =
            lag.is_some_and(|lag| lag > crate::alert::CURSOR_LAG && lag <= ALERT_HOLD);
        if let (true, false, Some(after)) = (due, alerts_pending, policy.vacuum_after) {
            did.files_vacuumed = self.vacuum_table(table, after).await?;
        }
        // The vacuum commits too: clean up to (and remember) the version it left.
        let version = self.table(table).version();
        let keep = match alerted {
            Some(a) => version.map(|v| {
                let held = u64::try_from(a.saturating_add(1)).unwrap_or(0);
                v.min(held.max(v.saturating_sub(ALERT_HOLD as u64)))
            }),
            None => version,
        };
        if let (true, Some(retention), Some(version)) = (due, policy.log_retention, version) {
            // Nothing is older than the beginning of time.
            let cutoff = chrono::Duration::from_std(retention)
                .ok()
                .and_then(|r| chrono::Utc::now().checked_sub_signed(r));
            if let Some(cutoff) = cutoff {
                let t = self.table(table);
                did.log_entries_removed = deltalake::checkpoints::cleanup_expired_logs_for(
                    keep.unwrap_or(version),
                    t.log_store().as_ref(),
                    cutoff.timestamp_millis(),
                    None,
                )
                .await
                .map_err(table_error(table))?;
            }
        }
        // Only once done: a failed cleanup is tried again after the next round.
        self.maintained[Store::index(table)] = version;
        Ok(())
    }

    /// `table`'s small files, smallest first, as removes: those under a quarter of
    /// `target`, so that a compaction's own output is not rewritten again and again as it
    /// grows. Of `attempts`, only the largest group of one worker's files (by their
    /// statistics): each journal file then keeps holding one worker's rounds, which is how
    /// recovery finds the workers without reading the whole journal
    /// (`workers_from_statistics`).
    fn small_files(&self, table: Table, target: NonZeroU64) -> Result<Vec<(i64, Remove)>> {
        let snapshot = self.table(table).snapshot().map_err(table_error(table))?;
        let small = i64::try_from(target.get() / 4).unwrap_or(i64::MAX);
        let mut groups: HashMap<Option<String>, Vec<(i64, Remove)>> = HashMap::new();
        for f in snapshot.log_data().iter().filter(|f| f.size() < small) {
            let group = if table == Table::Attempts {
                f.stats().and_then(|s| super::journal::only_worker(&s))
            } else {
                None
            };
            groups
                .entry(group)
                .or_default()
                .push((f.size(), f.remove_action(false)));
        }
        let mut files = groups
            .into_values()
            .max_by_key(Vec::len)
            .unwrap_or_default();
        files.sort_by_key(|(size, _)| *size);
        Ok(files)
    }

    /// Compacts `table`'s small files into one file (up to `target` bytes of them, the
    /// smallest first), unless another writer removes one of them or compacts first: then
    /// nothing is committed and the compaction is left for a later pass.
    ///
    /// Not delta-rs' `optimize`: its commit cannot carry the rewrite sequence
    /// ([`super::commit::REWRITES_APP`]), and without it two compactions of the same files
    /// both commit, doubling their rows.
    async fn compact(
        &mut self,
        table: Table,
        target: NonZeroU64,
        did: &mut Maintained,
    ) -> Result<()> {
        let fail = |e: DeltaTableError| table_error(table)(e);
        let limit = i64::try_from(target.get()).unwrap_or(i64::MAX);
        let mut small = self.small_files(table, target)?;
        let mut total = 0i64;
        small.retain(|(size, _)| {
            total = total.saturating_add(*size);
            total <= limit
        });
        if small.len() < 2 {
            return Ok(());
        }
        let tag = CommitTag::operation("compact").with_rewrites(self.next_rewrite(table).await?);
        let store = self.table(table).log_store().object_store(None);
        let mut writer = self.writer(table)?;
        for (_, remove) in &small {
            let bytes = read_object(&store, table, &remove.path).await?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .map_err(|e| fail(e.into()))?
                .build()
                .map_err(|e| fail(e.into()))?;
            for batch in reader {
                writer.write(batch?).await.map_err(table_error(table))?;
            }
        }
        let adds = writer.flush().await.map_err(table_error(table))?;
        let written: Vec<String> = adds.iter().map(|a| a.path.clone()).collect();
        did.files_compacted = small.len() as u64;
        did.files_written = adds.len() as u64;
        let mut actions: Vec<Action> = small.into_iter().map(|(_, r)| Action::Remove(r)).collect();
        actions.extend(adds.into_iter().map(|add| {
            Action::Add(Add {
                data_change: false,
                ..add
            })
        }));
        let operation = DeltaOperation::Optimize {
            predicate: None,
            target_size: limit,
        };
        match self.commit(table, actions, operation, &tag).await {
            Err(e) if e.is_conflict() => {
                tracing::debug!(
                    table = table.name(),
                    "compaction lost a race; left for later"
                );
                // Its file is referenced by no version: remove it (vacuum would not).
                for path in written {
                    if let Ok(path) = deltalake::Path::parse(&path) {
                        let _ = store.delete(&path).await;
                    }
                }
                *did = Maintained {
                    table: did.table,
                    log_entries_removed: did.log_entries_removed,
                    ..Maintained::default()
                };
                Ok(())
            }
            other => other,
        }
    }

    /// Deletes `table`'s rows whose `column` is older than `keep` before `now`, once its
    /// oldest row (by the files' statistics) is a tenth of `keep` past that. One `DELETE`
    /// commit, tagged `prune` with the retention, taking the rewrite sequence; one that
    /// loses a race is left for a later pass.
    async fn prune(
        &mut self,
        table: Table,
        keep: Duration,
        column: &str,
        now: DateTime<Utc>,
        did: &mut Maintained,
    ) -> Result<()> {
        let keep_for = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        let slack = chrono::Duration::from_std(keep / 10).unwrap_or(chrono::Duration::MAX);
        let Some(cutoff) = now.checked_sub_signed(keep_for) else {
            return Ok(());
        };
        let due = match self.oldest(table, column)? {
            Some(oldest) => cutoff
                .checked_sub_signed(slack)
                .is_some_and(|late| oldest < late),
            // Files without statistics: let the delete find out.
            None => true,
        };
        if !due {
            return Ok(());
        }
        let mut predicate = col(column).lt(lit(ScalarValue::TimestampMicrosecond(
            Some(cutoff.timestamp_micros()),
            Some("UTC".into()),
        )));
        if table == Table::Attempts {
            // Never the rows of a round a crash left half-applied: its only record.
            predicate = predicate.and(self.settled_journal().await?);
        }
        // The horizon is what is deleted, not the clock's cutoff: one run on a clock far
        // ahead must not leave every later record unauditable.
        let Some(newest) = self.newest(table, column, predicate.clone()).await? else {
            return Ok(());
        };
        let horizon = newest.timestamp_micros().saturating_add(1);
        let horizon = match self.pruned_before(table).await? {
            Some(before) => horizon.max(before.timestamp_micros()),
            None => horizon,
        };
        let tag = CommitTag::operation("prune")
            .with("keep", humantime::format_duration(keep).to_string())
            .with("older_than", cutoff.to_rfc3339())
            .with_rewrites(self.next_rewrite(table).await?)
            .with_pruned(horizon);
        let slot = &mut self.tables[Store::index(table)];
        match slot
            .clone()
            .delete()
            .with_predicate(predicate)
            .with_commit_properties(tag.properties())
            .await
        {
            Ok((pruned, metrics)) => {
                *slot = pruned;
                did.rows_pruned = metrics.num_deleted_rows.unwrap_or(0) as u64;
                Ok(())
            }
            Err(e) => match table_error(table)(e) {
                e if e.is_conflict() => {
                    tracing::debug!(table = table.name(), "prune lost a race; left for later");
                    Ok(())
                }
                e => Err(e),
            },
        }
    }

    /// The greatest `column` value among `table`'s rows that match `predicate`; `None`
    /// when none do.
    async fn newest(
        &self,
        table: Table,
        column: &str,
        predicate: Expr,
    ) -> Result<Option<DateTime<Utc>>> {
        let (_ctx, frame) = self.frame(table).await?;
        let batches = frame
            .filter(predicate)?
            .aggregate(vec![], vec![max(col(column))])?
            .collect()
            .await?;
        let newest = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| ScalarValue::try_from_array(b.column(0), 0))
            .next()
            .transpose()?;
        Ok(match newest {
            Some(ScalarValue::TimestampMicrosecond(Some(micros), _)) => {
                DateTime::from_timestamp_micros(micros)
            }
            _ => None,
        })
    }

    /// The time before which `table`'s rows may have been pruned by a retention
    /// ([`RowRetention`]); `None` if they never were.
    pub async fn pruned_before(&self, table: Table) -> Result<Option<DateTime<Utc>>> {
        Ok(self
            .txn_version(table, super::commit::PRUNED_APP)
            .await?
            .and_then(DateTime::from_timestamp_micros))
    }

    /// The least `column` value of `table`'s live files by their statistics; `None` when a
    /// file has none.
    fn oldest(&self, table: Table, column: &str) -> Result<Option<DateTime<Utc>>> {
        let snapshot = self.table(table).snapshot().map_err(table_error(table))?;
        let mut oldest: Option<DateTime<Utc>> = None;
        for file in snapshot.log_data().iter() {
            let least = file
                .stats()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|s| {
                    s.get("minValues")?
                        .get(column)?
                        .as_str()
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                });
            match least {
                Some(t) => {
                    let t = t.with_timezone(&Utc);
                    oldest = Some(oldest.map_or(t, |o| o.min(t)));
                }
                None => return Ok(None),
            }
        }
        Ok(oldest)
    }

    /// Deletes the data files no version younger than `retain` refers to, and, when
    /// `retain` is a day or more, files no version refers to that are that old (a running
    /// round's files are younger). Time travel to versions older than `retain` stops
    /// working.
    pub async fn vacuum(&mut self, retain: Duration) -> Result<Vec<Vacuumed>> {
        let mut done = Vec::new();
        for table in Table::ALL {
            done.push(Vacuumed {
                table: table.name(),
                files_deleted: self.vacuum_table(table, retain).await?,
            });
        }
        Ok(done)
    }

    /// Vacuums one table: deletes the files it stopped using more than `retain` ago, and,
    /// when `retain` is a day or more, any file no version refers to that is that old
    /// (Delta's full mode: a removed file's tombstone is kept only a day,
    /// [`super::TOMBSTONE_RETENTION`], so older removes are found by listing). Returns how
    /// many it deleted.
    async fn vacuum_table(&mut self, table: Table, retain: Duration) -> Result<usize> {
        // Under a day, only files the table removed (their tombstones): an unreferenced
        // file that young may be a running round's, written and not yet committed.
        let mode = if retain < UNREFERENCED_AFTER {
            VacuumMode::Lite
        } else {
            VacuumMode::Full
        };
        let retain = chrono::Duration::from_std(retain)
            .map_err(|_| Error::InvalidConfig("the vacuum retention is too long".into()))?;
        let t = self.table_mut(table);
        let (vacuumed, metrics) = t
            .clone()
            .vacuum()
            .with_retention_period(retain)
            .with_enforce_retention_duration(false)
            .with_mode(mode)
            .with_commit_properties(CommitTag::operation("vacuum").properties())
            .await
            .map_err(table_error(table))?;
        *t = vacuumed;
        Ok(metrics.files_deleted.len())
    }
}
