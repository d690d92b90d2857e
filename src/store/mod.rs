//! The Delta tables: where they live, creating and checking them, and the few operations a
//! queue needs (append, the queue MERGE, scans, application-transaction versions).

pub(crate) mod columns;
pub(crate) mod commit;
pub(crate) mod due;
pub(crate) mod journal;
mod local_log;
pub(crate) mod maintenance;
mod schema;
mod txns;

pub use commit::CommitTag;
pub use due::FILE_ROWS;
pub use maintenance::{Maintained, Maintenance, Optimized, RowRetention, Vacuumed};
pub use schema::Rows;
pub use schema::{
    AttemptKind, AttemptRow, DeadReason, DeadRow, Disposition, FinalRow, QueueRow, Table,
};

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deltalake::arrow::array::{Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::datafusion::common::JoinType;
use deltalake::datafusion::dataframe::DataFrame;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, Add};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Settings for the object store behind a data root (`aws_endpoint_url`, `aws_region`,
/// `google_service_account`, `azure_storage_account_name`, ...), on top of the ones
/// delta-rs reads from the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
pub type StorageOptions = HashMap<String, String>;

/// delta-rs settings that make S3 commits rename files instead of writing the log entry
/// with a conditional put (`If-None-Match: *`): two writers could then both win a version.
const UNSAFE_S3_SETTINGS: [&str; 2] = ["AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_S3_LOCKING_PROVIDER"];

/// How long a new table keeps its removed files' tombstones (its
/// `delta.deletedFileRetentionDuration`).
pub const TOMBSTONE_RETENTION: &str = "interval 1 days";

/// The four tables under one data root.
#[derive(Debug)]
pub struct Store {
    root: String,
    options: StorageOptions,
    tables: [DeltaTable; 4],
    conflicts: u64,
    /// Each table's version when this process last maintained it (or opened it).
    maintained: [Option<u64>; 4],
    /// Application-transaction versions, kept up to date from the commits read.
    txns: txns::TxnCache,
    /// Whether every table has the columns a later retrylake added ([`Store::upgrade`]).
    upgraded: bool,
}

/// The bytes of the file at `path` (relative to `table`'s root) in `store`.
pub(crate) async fn read_object(
    store: &deltalake::logstore::ObjectStoreRef,
    table: Table,
    path: &str,
) -> Result<bytes::Bytes> {
    use deltalake::logstore::object_store::ObjectStoreExt;
    let fail = |e: DeltaTableError| table_error(table)(e);
    let path = deltalake::Path::parse(path)
        .map_err(|e| fail(deltalake::ObjectStoreError::from(e).into()))?;
    store
        .get(&path)
        .await
        .map_err(|e| fail(e.into()))?
        .bytes()
        .await
        .map_err(|e| fail(e.into()))
}

/// Wraps a delta-rs error with the table it happened on.
pub(crate) fn table_error(table: Table) -> impl FnOnce(DeltaTableError) -> Error {
    move |source| Error::Delta {
        table: table.name(),
        source,
    }
}

impl Store {
    /// Opens the tables under `root`, creating any that are missing as an empty version 0
    /// and checking the schema of those that exist. `root` is a local path or an object
    /// store URL (`s3://bucket/prefix`, `gs://`, `az://`, `abfss://`) whose credentials come
    /// from the environment.
    pub async fn open(root: &str) -> Result<Store> {
        Store::open_with(root, StorageOptions::new()).await
    }

    /// [`Store::open`] with object store settings given here rather than (or on top of)
    /// the environment's.
    pub async fn open_with(root: &str, options: StorageOptions) -> Result<Store> {
        refuse_empty(root)?;
        local_log::install();
        let local = !root.contains("://");
        if local {
            std::fs::create_dir_all(root).map_err(|source| Error::DataDir {
                path: root.into(),
                source,
            })?;
        } else {
            refuse_unsafe_commits(root, &options)?;
        }
        Store::open_tables(root, options, local).await
    }

    /// Opens (or creates) the four tables. A table made by an older retrylake is used as
    /// it is until the first write upgrades it ([`Store::upgrade`]).
    async fn open_tables(root: &str, options: StorageOptions, local: bool) -> Result<Store> {
        let tables = futures::future::try_join_all(
            Store::order().map(|table| open_or_create(root, &options, table, local)),
        )
        .await?;
        let tables: [DeltaTable; 4] = tables.try_into().expect("four tables");
        let maintained = tables.each_ref().map(DeltaTable::version);
        Ok(Store {
            root: root.to_owned(),
            options,
            tables,
            conflicts: 0,
            maintained,
            txns: Default::default(),
            upgraded: false,
        })
    }

    /// Opens the tables under `root` for reading only, creating nothing, not even the
    /// folder: a root holding none of the four tables is [`Error::NoTables`] (so a
    /// mistyped `--data` does not look like an empty queue), one holding some of them
    /// [`Error::MissingTables`]. With all four there, their schemas are checked as in
    /// [`Store::open_with`].
    pub async fn open_existing(root: &str, options: StorageOptions) -> Result<Store> {
        refuse_empty(root)?;
        local_log::install();
        let local = !root.contains("://");
        if !local {
            refuse_unsafe_commits(root, &options)?;
        }
        // Whether each table has a Delta log: one listing of its `_delta_log`, nothing read
        // or written.
        let present = futures::future::try_join_all(Store::order().map(|table| {
            let options = options.clone();
            async move {
                let location = format!("{}/{}", root.trim_end_matches('/'), table.name());
                if local {
                    check_local_folder(Path::new(&location))?;
                    // ensure_table_uri creates a missing local folder: look first.
                    if !Path::new(&location).join("_delta_log").is_dir() {
                        return Ok(false);
                    }
                }
                let url = deltalake::ensure_table_uri(&location).map_err(table_error(table))?;
                let t = deltalake::DeltaTableBuilder::from_url(url)
                    .and_then(|b| b.with_storage_options(options).build())
                    .map_err(table_error(table))?;
                t.log_store()
                    .is_delta_table_location()
                    .await
                    .map_err(table_error(table))
            }
        }))
        .await?;
        let missing: Vec<&'static str> = Store::order()
            .into_iter()
            .zip(present)
            .filter(|(_, present)| !present)
            .map(|(table, _)| table.name())
            .collect();
        if missing.len() == Store::order().len() {
            return Err(Error::NoTables {
                root: root.to_owned(),
            });
        }
        if !missing.is_empty() {
            return Err(Error::MissingTables {
                root: root.to_owned(),
                missing,
            });
        }
        // All four exist, so this opens them and creates nothing.
        Store::open_tables(root, options, local).await
    }

    /// Opens the same tables again, independently of this one (to read old versions).
    pub async fn reopen(&self) -> Result<Store> {
        Store::open_existing(&self.root, self.options.clone()).await
    }

    /// The object store settings the store was opened with.
    pub(crate) fn options(&self) -> &StorageOptions {
        &self.options
    }

    /// The data root the store was opened with.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Adds the columns a later retrylake added to tables an older one made (one `ADD
    /// COLUMN` commit each, `upgrade` in their history), once per store: every write calls
    /// it first, so reading an old queue never changes it. Rows written before read the
    /// new columns as null.
    pub async fn upgrade(&mut self) -> Result<()> {
        if self.upgraded {
            return Ok(());
        }
        for table in Store::order() {
            let slot = &mut self.tables[Store::index(table)];
            let schema = slot.snapshot().map_err(table_error(table))?.schema();
            if !table.missing_columns(&schema).is_empty() {
                *slot = add_columns(slot.clone(), table).await?;
            }
        }
        self.upgraded = true;
        Ok(())
    }

    fn order() -> [Table; 4] {
        [
            Table::RetryQueue,
            Table::FinalResults,
            Table::DeadLetterQueue,
            Table::Attempts,
        ]
    }

    fn index(table: Table) -> usize {
        Store::order()
            .iter()
            .position(|t| *t == table)
            .expect("every table has a slot")
    }

    /// Puts `updated`, the result of an operation on `table`, in its slot.
    pub(crate) fn replace_table(&mut self, table: Table, updated: DeltaTable) {
        self.tables[Store::index(table)] = updated;
    }

    /// The open Delta table behind `table`.
    pub fn table(&self, table: Table) -> &DeltaTable {
        &self.tables[Store::index(table)]
    }

    pub(crate) fn table_mut(&mut self, table: Table) -> &mut DeltaTable {
        &mut self.tables[Store::index(table)]
    }

    /// Reloads every table's latest version (other processes may have committed).
    pub async fn refresh(&mut self) -> Result<()> {
        let updates = self
            .tables
            .iter_mut()
            .zip(Store::order())
            .map(|(t, table)| async move { t.update_state().await.map_err(table_error(table)) });
        futures::future::try_join_all(updates).await?;
        Ok(())
    }

    /// Reloads one table's latest version.
    pub(crate) async fn refresh_table(&mut self, table: Table) -> Result<()> {
        self.tables[Store::index(table)]
            .update_state()
            .await
            .map_err(table_error(table))
    }

    /// Commits that lost a race with another writer and were tried again, since the
    /// tables were opened: at the next version when they do not conflict (appends), after
    /// re-reading when they do (two claims of one file).
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }

    /// Counts a commit on `table` that lost a race with another writer, waits a jittered
    /// moment (longer the more `conflicts` came before) and reloads the table, ready to try
    /// again.
    pub(crate) async fn retry_after_conflict(
        &mut self,
        table: Table,
        conflicts: u32,
    ) -> Result<()> {
        self.pause_after_conflict(conflicts).await;
        self.refresh_table(table).await
    }

    /// Counts a commit that lost a race with another writer and waits a jittered moment
    /// (longer the more `conflicts` came before), ready to re-read and try again.
    pub(crate) async fn pause_after_conflict(&mut self, conflicts: u32) {
        self.conflicts += 1;
        conflict_pause(conflicts).await;
    }

    /// The version of `table`'s rewrite sequence a commit that removes its files takes
    /// ([`commit::REWRITES_APP`]).
    pub(crate) async fn next_rewrite(&self, table: Table) -> Result<i64> {
        Ok(self
            .txn_version(table, commit::REWRITES_APP)
            .await?
            .unwrap_or(0)
            + 1)
    }

    /// Appends `rows` to their table in one commit. An empty slice still commits, so the
    /// commit's application transaction marks the round as applied.
    pub(crate) async fn append<R: Rows>(&mut self, rows: &[R], tag: &CommitTag) -> Result<()> {
        self.append_batch(R::TABLE, R::to_batch(rows)?, tag).await
    }

    /// Appends one batch of `table`'s rows in one commit (which it makes even when empty).
    pub(crate) async fn append_batch(
        &mut self,
        table: Table,
        batch: RecordBatch,
        tag: &CommitTag,
    ) -> Result<()> {
        let slot = &mut self.tables[Store::index(table)];
        let updated = slot
            .clone()
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
            .with_commit_properties(tag.properties())
            .await
            .map_err(table_error(table))?;
        *slot = updated;
        Ok(())
    }

    /// Runs one MERGE on `retry_queue` from `source` (columns `sample_id`, `action`
    /// (`delete`, `retry` or `snooze`), `retry_count`, `error_msg`, `process_after`): a
    /// retry ends a record's snoozes in a row, a snooze adds one.
    pub(crate) async fn merge_queue(&mut self, source: DataFrame, tag: &CommitTag) -> Result<()> {
        let table = Table::RetryQueue;
        let slot = &mut self.tables[Store::index(table)];
        let (updated, _metrics) = slot
            .clone()
            .merge(source, "target.sample_id = source.sample_id")
            .with_source_alias("source")
            .with_target_alias("target")
            .when_matched_delete(|d| d.predicate("source.action = 'delete'"))
            .map_err(table_error(table))?
            .when_matched_update(|u| {
                u.predicate("source.action = 'retry'")
                    .update("retry_count", "source.retry_count")
                    .update("error_msg", "source.error_msg")
                    .update("process_after", "source.process_after")
                    .update("snoozes", "CAST(NULL AS INT)")
            })
            .map_err(table_error(table))?
            .when_matched_update(|u| {
                u.predicate("source.action = 'snooze'")
                    .update("retry_count", "source.retry_count")
                    .update("error_msg", "source.error_msg")
                    .update("process_after", "source.process_after")
                    .update("snoozes", "COALESCE(target.snoozes, 0) + 1")
            })
            .map_err(table_error(table))?
            .with_commit_properties(tag.properties())
            .await
            .map_err(table_error(table))?;
        *slot = updated;
        Ok(())
    }

    /// Deletes these dead letters (they were redriven) in one commit, each matched by its
    /// id and the time it failed, so a newer dead letter of the same record stays.
    /// `letters` has the columns `sample_id` and `failed_at`.
    pub(crate) async fn delete_dead(
        &mut self,
        letters: RecordBatch,
        tag: &CommitTag,
    ) -> Result<()> {
        let table = Table::DeadLetterQueue;
        let tag = &tag.with_rewrites(self.next_rewrite(table).await?);
        let source = SessionContext::new().read_batch(letters)?;
        let slot = &mut self.tables[Store::index(table)];
        let (updated, _metrics) = slot
            .clone()
            .merge(
                source,
                "target.sample_id = source.sample_id AND target.failed_at = source.failed_at",
            )
            .with_source_alias("source")
            .with_target_alias("target")
            .when_matched_delete(|d| d)
            .map_err(table_error(table))?
            .with_commit_properties(tag.properties())
            .await
            .map_err(table_error(table))?;
        *slot = updated;
        Ok(())
    }

    /// Every row of the table that holds `R`, read from disk at the loaded version.
    pub async fn read<R: Rows>(&self) -> Result<Vec<R>> {
        let (_ctx, frame) = self.frame(R::TABLE).await?;
        collect_rows(frame).await
    }

    /// The ids among `ids` that `table` holds at the loaded version.
    pub(crate) async fn ids_in(&self, table: Table, ids: &StringArray) -> Result<HashSet<String>> {
        let mut found = HashSet::new();
        if ids.is_empty() {
            return Ok(found);
        }
        let incoming = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "incoming_id",
                DataType::Utf8,
                false,
            )])),
            vec![Arc::new(ids.clone())],
        )?;
        let (ctx, frame) = self.frame(table).await?;
        let incoming = ctx.read_batch(incoming)?;
        let matched = frame.select_columns(&["sample_id"])?.join(
            incoming,
            JoinType::LeftSemi,
            &["sample_id"],
            &["incoming_id"],
            None,
        )?;
        for batch in matched.collect().await? {
            let column = columns::strings(batch.column(0))?;
            found.extend(column.iter().flatten().map(str::to_owned));
        }
        Ok(found)
    }

    /// A DataFrame over one table, for filters and projections that skip files.
    pub(crate) async fn frame(&self, table: Table) -> Result<(SessionContext, DataFrame)> {
        let ctx = SessionContext::new();
        let t = self.table(table);
        t.update_datafusion_session(&ctx.state())
            .map_err(table_error(table))?;
        let provider = t.table_provider().await?;
        let frame = ctx.read_table(provider)?;
        Ok((ctx, frame))
    }
}

/// Files written for one table and not yet committed, each on a task of its own: the
/// costly part of a commit, done for several files at once.
pub(crate) type Staged = Vec<tokio::task::JoinHandle<Result<Vec<Add>>>>;

/// Which version of the tables a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// The latest version of every table.
    Latest,
    /// Version N of every table. A query refuses a table it names that has no version N;
    /// [`Store::travel`] reads such a table at its latest.
    Version(u64),
    /// Every table as it was at this time.
    Time(DateTime<Utc>),
}

impl Store {
    /// Moves every table to `as_of` (time travel). Reads only; nothing is written.
    pub async fn travel(&mut self, as_of: AsOf) -> Result<()> {
        for table in Table::ALL {
            let t = self.table_mut(table);
            let result = match as_of {
                AsOf::Latest => Ok(()),
                AsOf::Version(v) => match t.get_latest_version().await {
                    Ok(latest) => t.load_version(v.min(latest)).await,
                    Err(e) => Err(e),
                },
                AsOf::Time(at) => t.load_with_datetime(at).await,
            };
            result.map_err(table_error(table))?;
        }
        Ok(())
    }
}

impl Store {
    /// Starts writing each of `batches` to a new file of `table`, each on a task of its
    /// own; the files join the table when their add actions are committed.
    pub(crate) fn stage(&self, table: Table, batches: Vec<RecordBatch>) -> Result<Staged> {
        let mut staged = Vec::with_capacity(batches.len());
        for batch in batches {
            let mut writer = self.writer(table)?;
            staged.push(tokio::spawn(async move {
                writer.write(batch).await.map_err(table_error(table))?;
                writer.flush().await.map_err(table_error(table))
            }));
        }
        Ok(staged)
    }

    fn writer(&self, table: Table) -> Result<RecordBatchWriter> {
        Ok(RecordBatchWriter::for_table(self.table(table))
            .map_err(table_error(table))?
            .with_writer_properties(schema::writer_properties(table)))
    }

    /// Waits for staged files.
    pub(crate) async fn staged(table: Table, staged: Staged) -> Result<Vec<Add>> {
        let mut adds = Vec::new();
        for file in staged {
            adds.extend(file.await.map_err(|e| {
                table_error(table)(DeltaTableError::Generic(format!("writing a file: {e}")))
            })??);
        }
        Ok(adds)
    }

    /// Writes each batch to a file of its own without committing it; returns their add
    /// actions.
    pub(crate) async fn write_batches(
        &self,
        table: Table,
        batches: impl IntoIterator<Item = Result<RecordBatch>>,
    ) -> Result<Vec<Add>> {
        let mut writer = self.writer(table)?;
        let mut adds = Vec::new();
        for batch in batches {
            writer.write(batch?).await.map_err(table_error(table))?;
            adds.extend(writer.flush().await.map_err(table_error(table))?);
        }
        Ok(adds)
    }

    /// Commits `actions` to `table` with `tag`'s metadata and application transaction,
    /// and loads the new version.
    pub(crate) async fn commit(
        &mut self,
        table: Table,
        actions: Vec<Action>,
        operation: DeltaOperation,
        tag: &CommitTag,
    ) -> Result<()> {
        let slot = self.table_mut(table);
        let committed = CommitBuilder::from(tag.properties())
            .with_actions(actions)
            .build(
                Some(slot.snapshot().map_err(table_error(table))?),
                slot.log_store(),
                operation,
            )
            .await
            .map_err(table_error(table))?;
        slot.state = Some(committed.snapshot());
        // Versions another writer took first, which delta-rs checked and committed past.
        self.conflicts += committed.metrics.num_retries;
        Ok(())
    }
}

/// A jittered pause before retrying after a commit's `conflicts`-th conflict: up to
/// 10 ms * 2^conflicts, capped at 2 s, so contending writers spread out.
async fn conflict_pause(conflicts: u32) {
    let cap = (10u64 << conflicts.min(8)).min(2_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let mut rng = SmallRng::seed_from_u64(u64::from(nanos) ^ u64::from(std::process::id()) << 32);
    tokio::time::sleep(std::time::Duration::from_millis(
        rng.random_range(cap / 2..=cap),
    ))
    .await;
}

/// An empty root (or `file://` alone) would put the tables at the top of the filesystem
/// (`/retry_queue`).
fn refuse_empty(root: &str) -> Result<()> {
    if root
        .strip_prefix("file://")
        .unwrap_or(root)
        .trim()
        .is_empty()
    {
        return Err(Error::InvalidConfig(
            "the data root is empty: give a folder or an object store URL".into(),
        ));
    }
    Ok(())
}

/// Collects a DataFrame of a table's rows into typed rows.
pub(crate) async fn collect_rows<R: Rows>(frame: DataFrame) -> Result<Vec<R>> {
    let mut rows = Vec::new();
    for batch in frame.collect().await? {
        rows.extend(R::from_batch(&batch)?);
    }
    Ok(rows)
}

async fn open_or_create(
    root: &str,
    options: &StorageOptions,
    table: Table,
    local: bool,
) -> Result<DeltaTable> {
    let location = format!("{}/{}", root.trim_end_matches('/'), table.name());
    if local {
        check_local_folder(Path::new(&location))?;
    }
    let url = deltalake::ensure_table_uri(&location).map_err(table_error(table))?;
    let t = DeltaTable::try_from_url_with_storage_options(url.clone(), options.clone())
        .await
        .map_err(table_error(table))?;
    let t = if t.version().is_some() {
        t
    } else {
        let created = t
            .create()
            .with_table_name(table.name())
            .with_columns(table.delta_columns())
            // Removed files' tombstones stay in every checkpoint this long, not Delta's
            // week: a week of a busy queue's removes made each checkpoint megabytes that
            // every process opening the table reads. A day covers the log's retention,
            // so time travel as far as the log reaches finds its files (vacuum keeps the
            // files of unexpired tombstones).
            .with_configuration_property(
                deltalake::TableProperty::DeletedFileRetentionDuration,
                Some(TOMBSTONE_RETENTION),
            )
            .with_save_mode(SaveMode::Ignore)
            .with_commit_properties(CommitTag::operation("create").properties())
            .await;
        match created {
            Ok(t) => t,
            // Another process created it first: use theirs.
            Err(DeltaTableError::VersionAlreadyExists(_)) => {
                deltalake::open_table_with_storage_options(url, options.clone())
                    .await
                    .map_err(table_error(table))?
            }
            Err(e) => return Err(table_error(table)(e)),
        }
    };
    let schema = t.snapshot().map_err(table_error(table))?.schema();
    table.check_schema(&schema)?;
    Ok(t)
}

/// Adds the columns a later retrylake added ([`Table::added_columns`]) to a table made
/// before, in one metadata commit (`ADD COLUMNS`, recorded in its history). A commit lost
/// to another writer (another process upgrading it, a round) is tried again on the table
/// read anew.
async fn add_columns(mut t: DeltaTable, table: Table) -> Result<DeltaTable> {
    for attempt in 0.. {
        let schema = t.snapshot().map_err(table_error(table))?.schema();
        let missing = table.missing_columns(&schema);
        if missing.is_empty() {
            return Ok(t);
        }
        let names: Vec<String> = missing.iter().map(|f| f.name().clone()).collect();
        let before = t.clone();
        let added = t
            .add_columns()
            .with_fields(missing)
            .with_commit_properties(
                CommitTag::operation("upgrade")
                    .with("columns", names.join(","))
                    .properties(),
            )
            .await;
        match added {
            Ok(upgraded) => {
                tracing::info!(table = table.name(), columns = ?names, "added columns");
                return Ok(upgraded);
            }
            Err(e) if attempt >= 5 => return Err(table_error(table)(e)),
            Err(e) => {
                tracing::debug!(
                    table = table.name(),
                    "upgrade lost a race, reading again: {e}"
                );
                t = before;
                t.update_incremental(None)
                    .await
                    .map_err(table_error(table))?;
            }
        }
    }
    unreachable!("the loop returns")
}

/// Refuses settings under which delta-rs would commit to S3 by renaming files: retrylake's
/// concurrent workers rely on each log entry being written once, by a conditional put.
fn refuse_unsafe_commits(root: &str, options: &StorageOptions) -> Result<()> {
    for name in UNSAFE_S3_SETTINGS {
        let set = options
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok());
        if let Some(value) = set.filter(|v| {
            !matches!(
                v.to_ascii_lowercase().as_str(),
                "" | "false" | "0" | "no" | "off"
            )
        }) {
            return Err(Error::InvalidConfig(format!(
                "{root}: {name}={value} would make delta-rs commit by renaming files, which lets two \
                 workers win the same version; retrylake commits with S3 conditional puts \
                 (If-None-Match), which S3 and most S3-compatible stores support: unset {name}"
            )));
        }
    }
    Ok(())
}

/// Refuses a folder that holds files but no Delta log, rather than writing a table over it.
fn check_local_folder(path: &Path) -> Result<()> {
    let not_a_table = || Error::NotATable {
        path: path.display().to_string(),
    };
    if path.is_file() {
        return Err(not_a_table());
    }
    let Ok(mut entries) = std::fs::read_dir(path) else {
        return Ok(());
    };
    if entries.next().is_some() && !path.join("_delta_log").is_dir() {
        return Err(not_a_table());
    }
    Ok(())
}
