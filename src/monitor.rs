//! SQL over the tables, time travel, and the commit history: the original Spark job's monitoring, with
//! DataFusion for Spark SQL and delta-rs for `VERSION AS OF` and `DESCRIBE HISTORY`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use deltalake::datafusion::prelude::{SQLOptions, SessionContext};
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::store::{Store, Table, table_error};

/// A session over the four tables with the functions the original job's SQL needs (`DATE`).
pub async fn session(store: &Store) -> Result<SessionContext> {
    let ctx = store.session().await?;
    ctx.register_udf(create_udf(
        "date",
        vec![DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("UTC".into()),
        )],
        DataType::Date32,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let values = args[0].clone().into_array(1)?;
            Ok(ColumnarValue::Array(cast(&values, &DataType::Date32)?))
        }),
    ));
    Ok(ctx)
}

/// What [`query`] lets SQL do: read. No DDL (`CREATE EXTERNAL TABLE` would read any file
/// the user can, `CREATE VIEW`, `DROP`), no DML (`INSERT`, `COPY ... TO` would write any
/// file), no statements (`SET`, `PREPARE`, transactions). A caller running its own SQL on
/// a [`session`] should pass these to `SessionContext::sql_with_options`.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Runs one SQL statement over the tables: a query (`SELECT`, `WITH`, `EXPLAIN`,
/// `DESCRIBE`); anything that would write or read beyond the four tables is
/// [`Error::ReadOnly`], refused before it runs (see [`read_only`]).
pub async fn query(store: &Store, sql: &str) -> Result<Vec<RecordBatch>> {
    Ok(query_with_schema(store, sql).await?.1)
}

/// Like [`query`], with the result's schema, which an empty result has too.
pub async fn query_with_schema(store: &Store, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let ctx = session(store).await?;
    let plan = ctx.state().create_logical_plan(sql).await?;
    read_only().verify_plan(&plan).map_err(|e| match e {
        DataFusionError::Plan(message) => Error::ReadOnly(message),
        other => Error::ReadOnly(other.strip_backtrace()),
    })?;
    let frame = ctx.execute_logical_plan(plan).await?;
    let schema = frame.schema().inner().clone();
    Ok((schema, frame.collect().await?))
}

/// One commit of one table, as `history` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Commit {
    /// The table.
    pub table: &'static str,
    /// The table version the commit created.
    pub version: u64,
    /// When it was committed.
    pub timestamp: Option<DateTime<Utc>>,
    /// Delta's operation (`WRITE`, `MERGE`, `CREATE TABLE`, ...).
    pub operation: Option<String>,
    /// retrylake's operation (`round`, `claim`, `enqueue`, `recover`, `redrive`, ...).
    pub job: Option<String>,
    /// The round, for round commits.
    pub round: Option<i64>,
    /// The worker, for round and claim commits.
    pub worker: Option<String>,
    /// The counts retrylake recorded with the commit.
    pub details: serde_json::Map<String, Value>,
}

/// The commits of `tables`, newest first.
pub async fn history(store: &Store, tables: &[Table]) -> Result<Vec<Commit>> {
    let mut commits = Vec::new();
    for &table in tables {
        let t = store.table(table);
        let latest = t.version().unwrap_or(0);
        let infos: Vec<_> = t
            .history(None)
            .try_collect()
            .await
            .map_err(table_error(table))?;
        for (i, info) in infos.into_iter().enumerate() {
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
            commits.push(Commit {
                table: table.name(),
                version: latest.saturating_sub(i as u64),
                timestamp: info.timestamp.and_then(DateTime::from_timestamp_millis),
                operation: info.operation,
                job,
                round,
                worker,
                details,
            });
        }
    }
    commits.sort_by(|a, b| {
        b.timestamp
            .cmp(&a.timestamp)
            .then(b.version.cmp(&a.version))
    });
    Ok(commits)
}
