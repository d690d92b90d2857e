//! Where a query's table names lead: the queue's four tables, any Delta table by path
//! (the `delta` schema: `` delta.`/mnt/delta/retry_queue` ``), either at the version a
//! query asks for, and their `DESCRIBE HISTORY` and `DESCRIBE DETAIL` as tables. Tables
//! are opened when a query names them, so a query pays only for what it reads.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use deltalake::arrow::array::{
    ArrayRef, BooleanBuilder, Int64Builder, ListBuilder, MapBuilder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::{Field, Schema, SchemaRef};
use deltalake::datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::execution::SessionStateBuilder;
use deltalake::datafusion::execution::runtime_env::RuntimeEnv;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::CommitInfo;
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::sql::{Source, TableName, Travel};
use crate::store::{AsOf, StorageOptions, Store, Table};

/// A session whose default schema holds the queue's four tables, read at `as_of`, and the
/// `sources` a rewritten statement names; its `delta` schema opens tables by path.
pub(crate) fn session(
    store: &Store,
    as_of: AsOf,
    sources: Vec<(String, Source)>,
) -> Result<SessionContext> {
    let ctx = SessionContext::new();
    let catalog = Arc::new(Catalog {
        queue: Table::ALL.map(|t| (t, store.table(t).clone())).into(),
        options: store.options().clone(),
        default: match as_of {
            AsOf::Latest => None,
            AsOf::Version(v) => Some(Travel::Version(v)),
            AsOf::Time(t) => Some(Travel::Time(t)),
        },
        sources: sources.into_iter().collect(),
        runtime: ctx.runtime_env(),
    });
    let default = ctx
        .catalog("datafusion")
        .ok_or_else(|| Error::Sql("DataFusion's default catalog is missing".into()))?;
    default.register_schema("public", Arc::new(QueueSchema(catalog.clone())))?;
    default.register_schema("delta", Arc::new(PathSchema(catalog)))?;
    Ok(ctx)
}

/// The error a table lookup failed with, when it is one of ours (a version the table
/// does not have, a path that is not a table), so that it reaches the user as it is.
pub(crate) fn ours(e: &DataFusionError) -> Option<Error> {
    let mut e = e;
    loop {
        match e {
            DataFusionError::External(inner) => {
                return match inner.downcast_ref::<Error>() {
                    Some(Error::Unreadable { table, message }) => Some(Error::Unreadable {
                        table: table.clone(),
                        message: message.clone(),
                    }),
                    Some(Error::Sql(message)) => Some(Error::Sql(message.clone())),
                    _ => None,
                };
            }
            DataFusionError::Context(_, inner) => e = inner,
            DataFusionError::Shared(inner) => e = inner,
            _ => return None,
        }
    }
}

/// A table lookup's error as DataFusion carries it: its own errors as they are, ours
/// inside, for [`ours`] to take out.
fn lookup_error(e: Error) -> DataFusionError {
    match e {
        Error::Query(e) => e,
        other => DataFusionError::External(Box::new(other)),
    }
}

#[derive(Debug)]
struct Catalog {
    /// The store's tables, at the versions it has loaded.
    queue: HashMap<Table, DeltaTable>,
    options: StorageOptions,
    /// The version every reference without its own `AS OF` reads.
    default: Option<Travel>,
    sources: HashMap<String, Source>,
    runtime: Arc<RuntimeEnv>,
}

/// The default schema: the four tables, and the names a rewrite gave.
#[derive(Debug)]
struct QueueSchema(Arc<Catalog>);

/// The `delta` schema: any Delta table, named by its path or URL.
#[derive(Debug)]
struct PathSchema(Arc<Catalog>);

#[async_trait]
impl SchemaProvider for QueueSchema {
    fn table_names(&self) -> Vec<String> {
        Table::ALL.map(|t| t.name().to_owned()).to_vec()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let provider = match Table::ALL.into_iter().find(|t| t.name() == name) {
            Some(table) => {
                self.0
                    .table(&TableName::Queue(table), self.0.default.clone())
                    .await
            }
            None => match self.0.sources.get(name) {
                None => return Ok(None),
                Some(Source::Table(name, travel)) => self.0.table(name, Some(travel.clone())).await,
                Some(Source::History(name)) => self.0.history(name).await,
                Some(Source::Detail(name)) => self.0.detail(name).await,
            },
        };
        provider.map(Some).map_err(lookup_error)
    }

    fn table_exist(&self, name: &str) -> bool {
        Table::ALL.iter().any(|t| t.name() == name) || self.0.sources.contains_key(name)
    }
}

#[async_trait]
impl SchemaProvider for PathSchema {
    fn table_names(&self) -> Vec<String> {
        Vec::new()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let name = TableName::Path(name.to_owned());
        self.0
            .table(&name, self.0.default.clone())
            .await
            .map(Some)
            .map_err(lookup_error)
    }

    fn table_exist(&self, _name: &str) -> bool {
        true
    }
}

impl Catalog {
    /// The table `name` at `travel` (its latest version when `None`), as DataFusion scans it.
    async fn table(
        &self,
        name: &TableName,
        travel: Option<Travel>,
    ) -> Result<Arc<dyn TableProvider>> {
        let past = travel.is_some();
        let t = self.open(name, travel).await?;
        if past {
            check_files(&t, name).await?;
        }
        // Lets the session reach the table's files (its object store).
        let state = SessionStateBuilder::new()
            .with_runtime_env(self.runtime.clone())
            .build();
        t.update_datafusion_session(&state)
            .map_err(unreadable(name))?;
        Ok(t.table_provider().await?)
    }

    /// `DESCRIBE HISTORY`: one row per commit of the table, newest first.
    async fn history(&self, name: &TableName) -> Result<Arc<dyn TableProvider>> {
        // Numbered from the latest version; under `--version`/`--as-of`, only the
        // commits up to the version read.
        let t = self.open(name, None).await?;
        let upto = match self.default {
            None => None,
            Some(_) => self.open(name, self.default.clone()).await?.version(),
        };
        let mut commits = commits(&t).await.map_err(unreadable(name))?;
        commits.retain(|(v, _)| upto.is_none_or(|upto| *v <= upto));
        let log = log_versions(&t).await.map_err(unreadable(name))?;
        let batch = history_batch(&commits, &log)?;
        Ok(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch]],
        )?))
    }

    /// `DESCRIBE DETAIL`: one row about the table.
    async fn detail(&self, name: &TableName) -> Result<Arc<dyn TableProvider>> {
        let t = self.open(name, self.default.clone()).await?;
        let log = log_versions(&t).await.map_err(unreadable(name))?;
        let batch = detail_batch(&t, &log).map_err(unreadable(name))?;
        Ok(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch]],
        )?))
    }

    /// The table `name`, loaded at `travel`; a version or time it does not have is an
    /// error naming the versions it has.
    async fn open(&self, name: &TableName, travel: Option<Travel>) -> Result<DeltaTable> {
        let mut t = match name {
            TableName::Queue(table) => self.queue[table].clone(),
            TableName::Path(path) => open_path(path, &self.options)
                .await
                .map_err(unreadable(name))?,
        };
        let Some(travel) = travel else {
            return Ok(t);
        };
        let log = log_versions(&t).await.map_err(unreadable(name))?;
        let refuse = |message: String| Error::Unreadable {
            table: name.to_string(),
            message,
        };
        match travel {
            Travel::Version(v) => {
                if v < log.earliest || v > log.latest {
                    return Err(refuse(format!(
                        "no version {v}: it has versions {}{}",
                        log.range(),
                        if v < log.earliest {
                            " (older ones left the log after its retention)"
                        } else {
                            ""
                        }
                    )));
                }
                t.load_version(v).await.map_err(unreadable(name))?;
            }
            Travel::Expression(expression) => {
                let at = evaluate_time(&expression).await?;
                return Box::pin(self.open(name, Some(Travel::Time(at)))).await;
            }
            Travel::Time(at) => {
                let shown = at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
                let time = |v: u64| {
                    log.time(v).map_or("an unknown time".into(), |t| {
                        t.to_rfc3339_opts(SecondsFormat::Millis, true)
                    })
                };
                if at > Utc::now() {
                    return Err(refuse(format!(
                        "no version as of {shown}: that is in the future (it has versions {}, \
                         the latest committed at {})",
                        log.range(),
                        time(log.latest)
                    )));
                }
                let Some(v) = log.version_at(at) else {
                    return Err(refuse(format!(
                        "no version as of {shown}: its earliest version, {}, was committed at {} \
                         (it has versions {})",
                        log.earliest,
                        time(log.earliest),
                        log.range()
                    )));
                };
                t.load_version(v).await.map_err(unreadable(name))?;
            }
        }
        Ok(t)
    }
}

/// The value of a `TIMESTAMP AS OF` expression, in a session that reads no table.
async fn evaluate_time(expression: &str) -> Result<DateTime<Utc>> {
    use deltalake::arrow::array::{Array, TimestampMicrosecondArray};
    use deltalake::arrow::datatypes::{DataType, TimeUnit};
    let fail = |why: String| Error::Sql(format!("TIMESTAMP AS OF {expression}: {why}"));
    let ctx = SessionContext::new();
    let sql = format!("SELECT ({expression}) AS t");
    let value = async {
        let plan = ctx.state().create_logical_plan(&sql).await?;
        crate::monitor::read_only().verify_plan(&plan)?;
        let batches = ctx.execute_logical_plan(plan).await?.collect().await?;
        let column = match batches.first() {
            Some(b) if b.num_rows() == 1 => b.column(0).clone(),
            _ => return Ok(None),
        };
        // A zoned time keeps its zone through the cast, so its value stays the instant
        // (UTC); a time without one is UTC; text and dates are cast as SQL casts them.
        let zone = match column.data_type() {
            DataType::Timestamp(_, zone) => zone.clone(),
            _ => None,
        };
        let micros = deltalake::arrow::compute::cast(
            &column,
            &DataType::Timestamp(TimeUnit::Microsecond, zone),
        )?;
        let micros = micros
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .filter(|a| a.is_valid(0))
            .map(|a| a.value(0));
        Ok::<_, DataFusionError>(micros)
    }
    .await
    .map_err(|e| fail(e.strip_backtrace()))?;
    value
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(|| fail("its value is not a time".into()))
}

fn unreadable(name: &TableName) -> impl FnOnce(DeltaTableError) -> Error + '_ {
    move |e| Error::Unreadable {
        table: name.to_string(),
        message: e.to_string().replace('\n', " "),
    }
}

/// Opens the Delta table at `path` (local, or a URL on an object store with `options`),
/// creating nothing.
async fn open_path(path: &str, options: &StorageOptions) -> Result<DeltaTable, DeltaTableError> {
    let not_a_table = || DeltaTableError::NotATable(format!("no Delta table at {path}"));
    // A local table must have its log already: delta-rs would create a missing folder.
    let local = match url::Url::parse(path) {
        Ok(url) if url.scheme() == "file" => Some(url.to_file_path().map_err(|_| not_a_table())?),
        Ok(url) if url.scheme().len() > 1 => None,
        // A relative path, or a Windows drive letter.
        _ => Some(std::path::PathBuf::from(path)),
    };
    if local.is_some_and(|dir| !dir.join("_delta_log").is_dir()) {
        return Err(not_a_table());
    }
    let url = deltalake::ensure_table_uri(path)?;
    let mut t = deltalake::DeltaTableBuilder::from_url(url)?
        .with_storage_options(options.clone())
        .build()?;
    if !t.log_store().is_delta_table_location().await? {
        return Err(not_a_table());
    }
    t.load().await?;
    Ok(t)
}

/// The versions a table's log can load, and when each was committed: its log file's
/// modification time, to the millisecond, as Delta's time travel and history use it.
#[derive(Debug, Clone)]
struct LogVersions {
    earliest: u64,
    latest: u64,
    times: BTreeMap<u64, DateTime<Utc>>,
    /// The versions whose commit file is in the log.
    json: BTreeSet<u64>,
}

impl LogVersions {
    fn range(&self) -> String {
        match self.earliest == self.latest {
            true => format!("{} only", self.earliest),
            false => format!("{} to {}", self.earliest, self.latest),
        }
    }

    fn time(&self, version: u64) -> Option<DateTime<Utc>> {
        self.times.get(&version).copied()
    }

    /// The latest version committed at or before `at`.
    fn version_at(&self, at: DateTime<Utc>) -> Option<u64> {
        self.times
            .range(self.earliest..=self.latest)
            .rev()
            .find(|(_, t)| **t <= at)
            .map(|(v, _)| *v)
    }
}

/// Lists the table's `_delta_log`: a version can be loaded from commit 0 on, or from its
/// oldest checkpoint on once log retention has removed the commits before it.
async fn log_versions(t: &DeltaTable) -> Result<LogVersions, DeltaTableError> {
    use deltalake::logstore::object_store::ObjectStore;
    let store = t.log_store().object_store(None);
    let log = deltalake::Path::from("_delta_log");
    let files: Vec<_> = store.list(Some(&log)).try_collect().await?;
    // Only the log's own entries: a file in a folder under it (a backup copy) is none.
    let files = files.into_iter().filter(|f| {
        f.location
            .prefix_match(&log)
            .is_some_and(|rest| rest.count() == 1)
    });
    let mut commits: BTreeMap<u64, DateTime<Utc>> = BTreeMap::new();
    let mut checkpoints: BTreeMap<u64, DateTime<Utc>> = BTreeMap::new();
    for file in files {
        let Some(name) = file.location.filename() else {
            continue;
        };
        let Some((digits, rest)) = name.split_once('.') else {
            continue;
        };
        let (20, Ok(version)) = (digits.len(), digits.parse::<u64>()) else {
            continue;
        };
        let millis = file.last_modified.timestamp_millis();
        let at = DateTime::from_timestamp_millis(millis).unwrap_or(file.last_modified);
        if rest == "json" {
            commits.insert(version, at);
        } else if rest.starts_with("checkpoint") && rest.ends_with(".parquet") {
            checkpoints.insert(version, at);
        }
    }
    let loaded = t
        .version()
        .ok_or_else(|| DeltaTableError::NotATable("the table has no version".into()))?;
    let latest = commits
        .keys()
        .next_back()
        .copied()
        .unwrap_or(loaded)
        .max(loaded);
    let earliest = if commits.contains_key(&0) {
        0
    } else {
        checkpoints
            .keys()
            .copied()
            .find(|v| *v <= latest)
            .or_else(|| commits.keys().next().copied())
            .unwrap_or(latest)
    };
    let json = commits.keys().copied().collect();
    // A version whose commit left the log is known by its checkpoint's time.
    for (v, at) in checkpoints {
        commits.entry(v).or_insert(at);
    }
    Ok(LogVersions {
        earliest,
        latest,
        times: commits,
        json,
    })
}

/// Refuses a past version whose data files are gone (removed by vacuum): reading it would
/// fail midway, naming a file rather than the version.
async fn check_files(t: &DeltaTable, name: &TableName) -> Result<()> {
    use deltalake::logstore::object_store::ObjectStore;
    let store = t.log_store().object_store(None);
    let snapshot = t.snapshot().map_err(unreadable(name))?;
    let wanted: Vec<deltalake::Path> = snapshot
        .log_data()
        .iter()
        .map(|f| f.object_store_path())
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let present: HashSet<deltalake::Path> = store
        .list(None)
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(|e| unreadable(name)(e.into()))?;
    let missing: Vec<&deltalake::Path> = wanted.iter().filter(|p| !present.contains(p)).collect();
    if let Some(first) = missing.first() {
        let log = log_versions(t).await.map_err(unreadable(name))?;
        return Err(Error::Unreadable {
            table: name.to_string(),
            message: format!(
                "version {} cannot be read: {} of its {} data files were removed by vacuum \
                 (first: {first}); its log has versions {}, of which those newer than the \
                 vacuum's retention can be read",
                snapshot.version(),
                missing.len(),
                wanted.len(),
                log.range()
            ),
        });
    }
    Ok(())
}

/// Each commit of the table up to its loaded version, newest first, with its version
/// (from its log file's name) and its `commitInfo` (empty for a commit without one).
pub(crate) async fn commits(t: &DeltaTable) -> Result<Vec<(u64, CommitInfo)>, DeltaTableError> {
    use deltalake::logstore::object_store::ObjectStoreExt;
    use futures::StreamExt;
    let log = log_versions(t).await?;
    let upto = t.version().unwrap_or(0);
    let store = t.log_store().object_store(None);
    // A table loaded before its log was cleaned past it has no commit left to show.
    let versions: Vec<u64> = match upto >= log.earliest {
        true => log.json.range(log.earliest..=upto).rev().copied().collect(),
        false => Vec::new(),
    };
    let read = versions.into_iter().map(|v| {
        let store = store.clone();
        async move {
            let path = deltalake::Path::from(format!("_delta_log/{v:020}.json"));
            let bytes = match store.get(&path).await {
                Ok(got) => got.bytes().await?,
                // Removed by log retention since the listing: no longer in the history.
                Err(deltalake::ObjectStoreError::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(DeltaTableError::from(e)),
            };
            let info = String::from_utf8_lossy(&bytes)
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find_map(|mut action| action.get_mut("commitInfo").map(Value::take))
                .and_then(|info| serde_json::from_value::<CommitInfo>(info).ok())
                .unwrap_or_default();
            Ok(Some((v, info)))
        }
    });
    let commits: Vec<Option<(u64, CommitInfo)>> = futures::stream::iter(read)
        .buffered(16)
        .try_collect()
        .await?;
    Ok(commits.into_iter().flatten().collect())
}

/// retrylake's record of a commit: its job, round, worker, and the rest of what it noted.
pub(crate) fn retrylake_info(
    info: &CommitInfo,
) -> (
    Option<String>,
    Option<i64>,
    Option<String>,
    serde_json::Map<String, Value>,
) {
    let mut details = match info.info.get("retrylake") {
        Some(Value::Object(map)) => map.clone(),
        _ => serde_json::Map::new(),
    };
    let job = details
        .remove("operation")
        .and_then(|v| v.as_str().map(str::to_owned));
    let round = details.remove("round").and_then(|v| v.as_i64());
    let worker = details
        .remove("worker")
        .and_then(|v| v.as_str().map(str::to_owned));
    (job, round, worker, details)
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn string_map() -> MapBuilder<StringBuilder, StringBuilder> {
    MapBuilder::new(None, StringBuilder::new(), StringBuilder::new())
}

/// The rows of `DESCRIBE HISTORY`: Delta's columns (as Databricks names them), then
/// retrylake's `job`, `round`, `worker`, `counts` (its integer details) and `details`
/// (the others). `timestamp` is when the commit's log file was written, the time
/// `TIMESTAMP AS OF` resolves against, as in Delta.
fn history_batch(commits: &[(u64, CommitInfo)], log: &LogVersions) -> Result<RecordBatch> {
    let mut version = Int64Builder::new();
    let mut timestamp = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut user_id = StringBuilder::new();
    let mut user_name = StringBuilder::new();
    let mut operation = StringBuilder::new();
    let mut parameters = string_map();
    let mut read_version = Int64Builder::new();
    let mut isolation = StringBuilder::new();
    let mut blind = BooleanBuilder::new();
    let mut metrics = string_map();
    let mut user_metadata = StringBuilder::new();
    let mut engine = StringBuilder::new();
    let mut job = StringBuilder::new();
    let mut round = Int64Builder::new();
    let mut worker = StringBuilder::new();
    let mut counts = MapBuilder::new(None, StringBuilder::new(), Int64Builder::new());
    let mut details = string_map();
    for (v, info) in commits {
        version.append_value(i64::try_from(*v).unwrap_or(i64::MAX));
        // The time travel's time: the log file's, else the one the writer recorded.
        let at = log
            .time(*v)
            .map(|t| t.timestamp_millis())
            .or(info.timestamp);
        timestamp.append_option(at.map(|ms| ms.saturating_mul(1000)));
        user_id.append_option(info.user_id.as_deref());
        user_name.append_option(info.user_name.as_deref());
        operation.append_option(info.operation.as_deref());
        let sorted: std::collections::BTreeMap<_, _> =
            info.operation_parameters.iter().flatten().collect();
        for (k, v) in sorted {
            parameters.keys().append_value(k);
            parameters.values().append_value(text(v));
        }
        parameters.append(true)?;
        read_version.append_option(
            info.read_version
                .map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
        );
        isolation.append_option(
            info.isolation_level
                .as_ref()
                .and_then(|l| serde_json::to_value(l).ok())
                .map(|l| text(&l)),
        );
        blind.append_option(info.is_blind_append);
        match info.info.get("operationMetrics") {
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    metrics.keys().append_value(k);
                    metrics.values().append_value(text(v));
                }
                metrics.append(true)?;
            }
            _ => metrics.append(false)?,
        }
        user_metadata.append_option(info.user_metadata.as_deref());
        engine.append_option(info.engine_info.as_deref());
        let (j, r, w, rest) = retrylake_info(info);
        job.append_option(j);
        round.append_option(r);
        worker.append_option(w);
        for (k, v) in &rest {
            match v.as_i64() {
                Some(n) => {
                    counts.keys().append_value(k);
                    counts.values().append_value(n);
                }
                None => {
                    details.keys().append_value(k);
                    details.values().append_value(text(v));
                }
            }
        }
        counts.append(true)?;
        details.append(true)?;
    }
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("version", Arc::new(version.finish())),
        ("timestamp", Arc::new(timestamp.finish())),
        ("userId", Arc::new(user_id.finish())),
        ("userName", Arc::new(user_name.finish())),
        ("operation", Arc::new(operation.finish())),
        ("operationParameters", Arc::new(parameters.finish())),
        ("readVersion", Arc::new(read_version.finish())),
        ("isolationLevel", Arc::new(isolation.finish())),
        ("isBlindAppend", Arc::new(blind.finish())),
        ("operationMetrics", Arc::new(metrics.finish())),
        ("userMetadata", Arc::new(user_metadata.finish())),
        ("engineInfo", Arc::new(engine.finish())),
        ("job", Arc::new(job.finish())),
        ("round", Arc::new(round.finish())),
        ("worker", Arc::new(worker.finish())),
        ("counts", Arc::new(counts.finish())),
        ("details", Arc::new(details.finish())),
    ];
    batch(columns)
}

/// The row of `DESCRIBE DETAIL`: Delta's columns (as Databricks names them), then the
/// versions its log can load.
fn detail_batch(t: &DeltaTable, log: &LogVersions) -> Result<RecordBatch, DeltaTableError> {
    let snapshot = t.snapshot()?;
    let metadata = serde_json::to_value(snapshot.metadata()).unwrap_or_default();
    let protocol = serde_json::to_value(snapshot.protocol()).unwrap_or_default();
    let files = snapshot.log_data();
    let size: i64 = files.iter().map(|f| f.size()).sum();
    let str_of = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let int_of = |v: &Value, key: &str| v.get(key).and_then(Value::as_i64);
    let list_of = |v: &Value, key: &str| -> Vec<String> {
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default()
    };
    let mut partitions = ListBuilder::new(StringBuilder::new());
    for p in list_of(&metadata, "partitionColumns") {
        partitions.values().append_value(p);
    }
    partitions.append(true);
    let mut properties = string_map();
    if let Some(Value::Object(config)) = metadata.get("configuration") {
        for (k, v) in config {
            properties.keys().append_value(k);
            properties.values().append_value(text(v));
        }
    }
    properties.append(true)?;
    let mut features = ListBuilder::new(StringBuilder::new());
    let mut all: Vec<String> = list_of(&protocol, "readerFeatures");
    all.extend(list_of(&protocol, "writerFeatures"));
    all.sort();
    all.dedup();
    for f in all {
        features.values().append_value(f);
    }
    features.append(true);
    let micros = |ms: Option<i64>| ms.map(|ms| ms.saturating_mul(1000));
    let mut created = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    created.append_option(micros(int_of(&metadata, "createdTime")));
    let mut modified = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    modified.append_option(log.time(log.latest).map(|t| t.timestamp_micros()));
    let one = |s: Option<String>| -> ArrayRef {
        let mut b = StringBuilder::new();
        b.append_option(s);
        Arc::new(b.finish())
    };
    let int = |n: Option<i64>| -> ArrayRef {
        let mut b = Int64Builder::new();
        b.append_option(n);
        Arc::new(b.finish())
    };
    let version = |v: u64| int(Some(i64::try_from(v).unwrap_or(i64::MAX)));
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("format", one(Some("delta".into()))),
        ("id", one(str_of(&metadata, "id"))),
        ("name", one(str_of(&metadata, "name"))),
        ("description", one(str_of(&metadata, "description"))),
        ("location", one(Some(t.table_url().to_string()))),
        ("createdAt", Arc::new(created.finish())),
        ("lastModified", Arc::new(modified.finish())),
        ("partitionColumns", Arc::new(partitions.finish())),
        ("numFiles", int(Some(files.num_files() as i64))),
        ("sizeInBytes", int(Some(size))),
        ("properties", Arc::new(properties.finish())),
        (
            "minReaderVersion",
            int(int_of(&protocol, "minReaderVersion")),
        ),
        (
            "minWriterVersion",
            int(int_of(&protocol, "minWriterVersion")),
        ),
        ("tableFeatures", Arc::new(features.finish())),
        ("version", version(snapshot.version())),
        ("earliestVersion", version(log.earliest)),
        ("latestVersion", version(log.latest)),
    ];
    batch(columns).map_err(|e| DeltaTableError::Generic(e.to_string()))
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> Result<RecordBatch> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
        .collect();
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    Ok(RecordBatch::try_new(
        schema,
        columns.into_iter().map(|(_, a)| a).collect(),
    )?)
}
