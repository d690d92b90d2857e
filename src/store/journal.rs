//! The commit protocol of a round: the `attempts` journal first, then the tables it
//! implies, each commit tagged with the round as a Delta application transaction; and the
//! recovery that re-applies a journaled round to any table a crash left behind.

use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::arrow::array::{Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::datafusion::prelude::{SessionContext, col, lit};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use serde_json::{Value, json};

use super::{AttemptRow, DeadRow, FinalRow, Store, Table, collect_rows};
use crate::clock::to_micros;
use crate::error::Result;

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

/// Where a journaled attempt sent its record.
pub(crate) mod disposition {
    pub const FINAL: &str = "final";
    pub const RETRY: &str = "retry";
    pub const DEAD: &str = "dead";
}

impl Store {
    /// The last round `worker` journaled (0 before its first).
    pub async fn last_round(&self, worker: &str) -> Result<i64> {
        Ok(self
            .txn_version(Table::Attempts, &app_id(worker))
            .await?
            .unwrap_or(0))
    }

    /// Commits a round: the journal, then `final_results`, `dead_letter_queue` and the
    /// `retry_queue` MERGE. `rows` are the round's attempts, all of one round and worker.
    pub(crate) async fn commit_round(
        &mut self,
        rows: &[AttemptRow],
        tag: &CommitTag,
    ) -> Result<()> {
        self.append(rows, tag).await?;
        failpoint("after-journal");
        self.apply_round(rows, tag).await
    }

    /// Brings every table up to `worker`'s last journaled round. Returns the round it
    /// re-applied, if any table was behind.
    pub async fn recover(&mut self, worker: &str) -> Result<Option<i64>> {
        let round = self.last_round(worker).await?;
        if round == 0 || self.behind(worker, round).await?.is_empty() {
            return Ok(None);
        }
        let (_ctx, frame) = self.frame(Table::Attempts).await?;
        let frame = frame.filter(
            col("worker")
                .eq(lit(worker))
                .and(col("round").eq(lit(round))),
        )?;
        let rows: Vec<AttemptRow> = collect_rows(frame).await?;
        tracing::warn!(
            round,
            worker,
            attempts = rows.len(),
            "re-applying a round a crash left half-committed"
        );
        let tag = CommitTag::round("recover", worker, round).with("attempts", rows.len());
        self.apply_round(&rows, &tag).await?;
        Ok(Some(round))
    }

    /// The tables whose last applied round of `worker` is before `round`.
    async fn behind(&self, worker: &str, round: i64) -> Result<Vec<Table>> {
        let mut behind = Vec::new();
        for table in [
            Table::FinalResults,
            Table::DeadLetterQueue,
            Table::RetryQueue,
        ] {
            if self.txn_version(table, &app_id(worker)).await?.unwrap_or(0) < round {
                behind.push(table);
            }
        }
        Ok(behind)
    }

    /// Applies journaled attempts to the tables not yet carrying their round. Appends are
    /// skipped where the round is already applied; the MERGE sets values rather than
    /// incrementing them, so it is safe either way.
    async fn apply_round(&mut self, rows: &[AttemptRow], tag: &CommitTag) -> Result<()> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let (worker, round) = (first.worker.clone(), first.round);
        let behind = self.behind(&worker, round).await?;

        if behind.contains(&Table::FinalResults) {
            let finals: Vec<FinalRow> = rows
                .iter()
                .filter(|r| r.disposition == disposition::FINAL)
                .map(|r| FinalRow {
                    sample_id: r.sample_id.clone(),
                    data: r.payload.clone(),
                    processed_at: r.finished_at,
                    attempts: r.attempt + 1,
                    response: r.response.clone(),
                })
                .collect();
            self.append(&finals, tag).await?;
        }
        failpoint("after-final");

        if behind.contains(&Table::DeadLetterQueue) {
            let dead: Vec<DeadRow> = rows
                .iter()
                .filter(|r| r.disposition == disposition::DEAD)
                .map(|r| DeadRow {
                    sample_id: r.sample_id.clone(),
                    payload: r.payload.clone(),
                    error_msg: r.error_msg.clone(),
                    retry_count: r.retry_count,
                    failed_at: r.finished_at,
                    reason: r.reason.clone().unwrap_or_default(),
                })
                .collect();
            self.append(&dead, tag).await?;
        }
        failpoint("after-dead-letter");

        if behind.contains(&Table::RetryQueue) {
            let ctx = SessionContext::new();
            let source = ctx.read_batch(merge_source(rows)?)?;
            self.merge_queue(source, tag).await?;
        }
        failpoint("after-merge");
        Ok(())
    }
}

/// The MERGE source for a round: one row per attempted record, `delete` for those that
/// left the queue and `retry` (with the new count, error and time lock) for the others.
fn merge_source(rows: &[AttemptRow]) -> Result<RecordBatch> {
    let action: StringArray = rows
        .iter()
        .map(|r| {
            Some(if r.disposition == disposition::RETRY {
                "retry"
            } else {
                "delete"
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
        Field::new(
            "process_after",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
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
        ],
    )?)
}
