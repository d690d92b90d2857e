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
use serde::Serialize;
use serde_json::Value;

use crate::catalog;
use crate::error::{Error, Result};
use crate::sql::Source;
use crate::store::{AsOf, Store, Table, table_error};

/// A session over the four tables with the functions the original job's SQL needs
/// (`DATE`); its `delta` schema reads any Delta table by path (`` delta.`/data/t` ``).
pub async fn session(store: &Store) -> Result<SessionContext> {
    session_at(store, AsOf::Latest, Vec::new())
}

fn session_at(
    store: &Store,
    as_of: AsOf,
    sources: Vec<(String, Source)>,
) -> Result<SessionContext> {
    let ctx = catalog::session(store, as_of, sources)?;
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
/// `DESCRIBE`), with Delta's forms: `VERSION AS OF n` or `TIMESTAMP AS OF 'ts'` after any
/// table, `DESCRIBE HISTORY t [LIMIT n]`, `DESCRIBE DETAIL t`, and `` delta.`path` `` for
/// any Delta table (see [`crate::sql`]). Anything that would write is
/// [`Error::ReadOnly`], refused before it runs (see [`read_only`]).
pub async fn query(store: &Store, sql: &str) -> Result<Vec<RecordBatch>> {
    Ok(query_with_schema(store, sql).await?.1)
}

/// Like [`query`], with the result's schema, which an empty result has too.
pub async fn query_with_schema(store: &Store, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    query_at(store, sql, AsOf::Latest).await
}

/// Like [`query_with_schema`], reading every table the statement names without its own
/// `AS OF` at `as_of`. A table the statement names that has no such version is
/// [`Error::Unreadable`], naming the versions it has.
pub async fn query_at(
    store: &Store,
    sql: &str,
    as_of: AsOf,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let rewritten = crate::sql::rewrite(sql)?;
    let ctx = session_at(store, as_of, rewritten.sources.clone())?;
    let ours = |e: DataFusionError| catalog::ours(&e).unwrap_or(Error::Query(e));
    let plan = match ctx.state().create_logical_plan(&rewritten.sql).await {
        Ok(plan) => plan,
        Err(e) => {
            // A parse error's place, in the statement as written.
            let mut root = &e;
            while let DataFusionError::Diagnostic(_, inner) | DataFusionError::Context(_, inner) =
                root
            {
                root = inner;
            }
            if let (DataFusionError::SQL(parse, _), true) = (root, rewritten.sql != sql) {
                use deltalake::datafusion::sql::sqlparser::parser::ParserError;
                let message = match parse.as_ref() {
                    ParserError::ParserError(m) | ParserError::TokenizerError(m) => m.clone(),
                    other => other.to_string(),
                };
                return Err(Error::Sql(rewritten.locate(&message)));
            }
            return Err(ours(e));
        }
    };
    read_only().verify_plan(&plan).map_err(|e| match e {
        DataFusionError::Plan(message) => Error::ReadOnly(message),
        other => Error::ReadOnly(other.strip_backtrace()),
    })?;
    let frame = ctx.execute_logical_plan(plan).await.map_err(ours)?;
    let schema = frame.schema().inner().clone();
    Ok((schema, frame.collect().await.map_err(ours)?))
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
        for (version, info) in catalog::commits(store.table(table))
            .await
            .map_err(table_error(table))?
        {
            let (job, round, worker, details) = catalog::retrylake_info(&info);
            commits.push(Commit {
                table: table.name(),
                version,
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
