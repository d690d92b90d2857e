//! The original Spark job's monitoring questions, answered: backlog, due now, retries, dead letters.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use deltalake::arrow::array::{Array, StringArray};
use deltalake::arrow::datatypes::DataType;
use deltalake::datafusion::functions_aggregate::expr_fn::{avg, count, max, min, sum};
use deltalake::datafusion::logical_expr::cast as cast_expr;
use deltalake::datafusion::prelude::{Expr, col, lit};
use serde::Serialize;

use crate::control::Pause;
use crate::error::Result;
use crate::store::columns::{float_at, int_at, strings, time_at, timestamp};
use crate::store::{Store, Table};

/// How many dead letters have one reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReasonCount {
    /// The `reason` column.
    pub reason: Option<String>,
    /// How many dead letters have it.
    pub count: i64,
}

/// Dead letters sharing one error message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorCount {
    /// The error message (`null` for none).
    pub error_msg: Option<String>,
    /// How many dead letters carry it.
    pub count: i64,
}

/// The state of the queue at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// Records in `retry_queue`.
    pub waiting: i64,
    /// Of those, records whose time lock has passed.
    pub due: i64,
    /// Of the waiting records, those waiting out a rule's snooze (their last failure
    /// counted no retry); the others wait for a retry, or their first call.
    pub snoozed: i64,
    /// Average `retry_count` in the queue (`null` when it is empty).
    pub avg_retries: Option<f64>,
    /// Largest `retry_count` in the queue (`null` when it is empty).
    pub max_retries: Option<i64>,
    /// The earliest `process_after` in the queue.
    pub next_due: Option<DateTime<Utc>>,
    /// Records in `final_results`.
    #[serde(rename = "final")]
    pub final_count: i64,
    /// Records in `dead_letter_queue`.
    pub dead: i64,
    /// Dead letters by error message, most common first.
    pub dead_by_error: Vec<ErrorCount>,
    /// Dead letters by reason (`permanent`, `retries_exhausted`, `invalid_input`,
    /// `cancelled`, `expired`), most common first.
    pub dead_by_reason: Vec<ReasonCount>,
    /// The queue's pause, when one holds (see `retrylake pause`).
    pub paused: Option<Pause>,
    /// Records that failed transiently at least once and have since left the queue, to
    /// `final_results` or `dead_letter_queue`.
    pub needed_retry: i64,
    /// Of those, the records that succeeded on a retry.
    pub recovered: i64,
    /// `recovered / needed_retry`: the share of failures the retries handled (the original job's
    /// "handles 80%+ of failures automatically"); `null` before any.
    pub recovered_share: Option<f64>,
}

/// Reads the status of the tables as of `now`.
pub(crate) async fn status(store: &Store, now: DateTime<Utc>) -> Result<Status> {
    let (_ctx, queue) = store.frame(Table::RetryQueue).await?;
    let due_flag = cast_expr(
        col("process_after").lt_eq(lit(timestamp(now))),
        DataType::Int64,
    );
    // A table made before snoozes existed, and not opened by a writer since, has none.
    let snoozed_flag = if queue.schema().has_column_with_unqualified_name("snoozes") {
        cast_expr(col("snoozes").gt(lit(0)), DataType::Int64)
    } else {
        lit(0i64)
    };
    let batches = queue
        .aggregate(
            vec![],
            vec![
                count(lit(1)),
                sum(due_flag),
                avg(col("retry_count")),
                max(col("retry_count")),
                min(col("process_after")),
                sum(snoozed_flag),
            ],
        )?
        .collect()
        .await?;
    let b = &batches[0];
    let waiting = int_at(b.column(0), 0).unwrap_or(0);

    // One read of the dead letters, grouped by error and reason, gives both breakdowns.
    let dead_groups = {
        let (_ctx, dead) = store.frame(Table::DeadLetterQueue).await?;
        let retried = cast_expr(col("retry_count").gt(lit(0)), DataType::Int64);
        dead.aggregate(
            vec![col("error_msg"), col("reason")],
            vec![count(lit(1)).alias("n"), sum(retried).alias("retried")],
        )?
        .collect()
        .await?
    };
    let mut by_error: BTreeMap<Option<String>, i64> = BTreeMap::new();
    let mut by_reason: BTreeMap<Option<String>, i64> = BTreeMap::new();
    let mut dead_after_retry = 0;
    for batch in &dead_groups {
        let (messages, reasons) = (strings(batch.column(0))?, strings(batch.column(1))?);
        for i in 0..batch.num_rows() {
            let n = int_at(batch.column(2), i).unwrap_or(0);
            dead_after_retry += int_at(batch.column(3), i).unwrap_or(0);
            let text = |a: &StringArray| a.is_valid(i).then(|| a.value(i).to_owned());
            *by_error.entry(text(&messages)).or_default() += n;
            *by_reason.entry(text(&reasons)).or_default() += n;
        }
    }
    // Most common first; ties by text, none first (a BTreeMap's order, kept by a stable sort).
    let most_first = |groups: BTreeMap<Option<String>, i64>| {
        let mut groups: Vec<(Option<String>, i64)> = groups.into_iter().collect();
        groups.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        groups
    };
    let dead_by_error: Vec<ErrorCount> = most_first(by_error)
        .into_iter()
        .map(|(error_msg, count)| ErrorCount { error_msg, count })
        .collect();
    let dead_by_reason: Vec<ReasonCount> = most_first(by_reason)
        .into_iter()
        .map(|(reason, count)| ReasonCount { reason, count })
        .collect();
    let (final_count, recovered) =
        count_where(store, Table::FinalResults, col("attempts").gt(lit(1))).await?;
    let needed_retry = recovered + dead_after_retry;
    Ok(Status {
        waiting,
        due: int_at(b.column(1), 0).unwrap_or(0),
        snoozed: int_at(b.column(5), 0).unwrap_or(0),
        avg_retries: float_at(b.column(2), 0),
        max_retries: int_at(b.column(3), 0),
        next_due: time_at(b.column(4), 0),
        final_count,
        dead: dead_by_error.iter().map(|e| e.count).sum(),
        dead_by_error,
        dead_by_reason,
        paused: store.pause()?.filter(|p| p.holds_at(now)),
        needed_retry,
        recovered,
        recovered_share: (needed_retry > 0).then(|| recovered as f64 / needed_retry as f64),
    })
}

/// A table's rows, and how many of them match `predicate`.
async fn count_where(store: &Store, table: Table, predicate: Expr) -> Result<(i64, i64)> {
    let (_ctx, frame) = store.frame(table).await?;
    let matching = cast_expr(predicate, DataType::Int64);
    let batches = frame
        .aggregate(vec![], vec![count(lit(1)), sum(matching)])?
        .collect()
        .await?;
    let b = &batches[0];
    Ok((
        int_at(b.column(0), 0).unwrap_or(0),
        int_at(b.column(1), 0).unwrap_or(0),
    ))
}
