//! The four tables' schemas, the rows they hold, and the Arrow conversions between them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use deltalake::arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringBuilder, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef};
use deltalake::kernel::{DataType, StructField, StructType};
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;

use super::columns::Columns;
use crate::clock::to_micros;
use crate::error::{Error, Result};

/// The type of one column, in both Delta and Arrow terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnType {
    Str,
    Int,
    Long,
    Timestamp,
}

impl ColumnType {
    fn delta_type(self) -> DataType {
        match self {
            ColumnType::Str => DataType::STRING,
            ColumnType::Int => DataType::INTEGER,
            ColumnType::Long => DataType::LONG,
            ColumnType::Timestamp => DataType::TIMESTAMP,
        }
    }

    fn arrow_type(self) -> ArrowType {
        match self {
            ColumnType::Str => ArrowType::Utf8,
            ColumnType::Int => ArrowType::Int32,
            ColumnType::Long => ArrowType::Int64,
            ColumnType::Timestamp => super::columns::timestamp_type(),
        }
    }
}

use ColumnType::{Int, Long, Str, Timestamp};

/// One of retrylake's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Records waiting for their next attempt.
    RetryQueue,
    /// Records processed successfully.
    FinalResults,
    /// Records that failed permanently or ran out of retries.
    DeadLetterQueue,
    /// One row per attempt: the audit trail and the journal of rounds.
    Attempts,
}

impl std::str::FromStr for Table {
    type Err = Error;

    /// The table of this [`Table::name`], e.g. `"dead_letter_queue"`.
    fn from_str(name: &str) -> Result<Table> {
        Table::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "unknown table '{name}' (expected retry_queue, final_results, \
                     dead_letter_queue or attempts)"
                ))
            })
    }
}

impl Table {
    /// Every table, in the order a round commits them (journal first).
    pub const ALL: [Table; 4] = [
        Table::Attempts,
        Table::FinalResults,
        Table::DeadLetterQueue,
        Table::RetryQueue,
    ];

    /// The table's name: its folder under the data root and its name in SQL.
    pub fn name(self) -> &'static str {
        match self {
            Table::RetryQueue => "retry_queue",
            Table::FinalResults => "final_results",
            Table::DeadLetterQueue => "dead_letter_queue",
            Table::Attempts => "attempts",
        }
    }

    pub(crate) fn columns(self) -> &'static [(&'static str, ColumnType, bool)] {
        match self {
            Table::RetryQueue => &[
                ("sample_id", Str, false),
                ("payload", Str, true),
                ("error_msg", Str, true),
                ("retry_count", Int, false),
                ("process_after", Timestamp, false),
                ("enqueued_at", Timestamp, false),
                ("snoozes", Int, true),
            ],
            Table::FinalResults => &[
                ("sample_id", Str, false),
                ("data", Str, true),
                ("processed_at", Timestamp, false),
                ("attempts", Int, false),
                ("response", Str, true),
            ],
            Table::DeadLetterQueue => &[
                ("sample_id", Str, false),
                ("payload", Str, true),
                ("error_msg", Str, true),
                ("retry_count", Int, false),
                ("failed_at", Timestamp, false),
                ("reason", Str, false),
            ],
            Table::Attempts => &[
                ("round", Long, false),
                ("worker", Str, false),
                ("sample_id", Str, false),
                ("attempt", Int, false),
                ("outcome", Str, false),
                ("error_msg", Str, true),
                ("started_at", Timestamp, false),
                ("finished_at", Timestamp, false),
                ("duration_ms", Long, false),
                ("process_after", Timestamp, true),
                ("disposition", Str, false),
                ("reason", Str, true),
                ("retry_count", Int, false),
                ("payload", Str, true),
                ("response", Str, true),
                ("rule", Str, true),
            ],
        }
    }

    /// The table's Delta columns.
    pub fn delta_columns(self) -> Vec<StructField> {
        self.columns()
            .iter()
            .map(|&(name, ty, nullable)| StructField::new(name, ty.delta_type(), nullable))
            .collect()
    }

    /// The table's Arrow schema.
    pub fn arrow_schema(self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns()
                .iter()
                .map(|&(name, ty, nullable)| Field::new(name, ty.arrow_type(), nullable))
                .collect::<Vec<_>>(),
        ))
    }

    /// The columns a later retrylake added to the table: a table made before lacks them
    /// until a writer opens it ([`Table::missing_columns`]), and a file written before
    /// reads them as null.
    pub(crate) fn added_columns(self) -> &'static [&'static str] {
        match self {
            Table::RetryQueue => &["snoozes"],
            Table::Attempts => &["rule"],
            Table::FinalResults | Table::DeadLetterQueue => &[],
        }
    }

    /// The added columns ([`Table::added_columns`]) a table's `schema` lacks, as Delta
    /// fields.
    pub(crate) fn missing_columns(self, schema: &StructType) -> Vec<StructField> {
        self.delta_columns()
            .into_iter()
            .filter(|f| self.added_columns().contains(&f.name().as_str()))
            .filter(|f| schema.field(f.name()).is_none())
            .collect()
    }

    /// Checks that an existing table has every column retrylake needs, with its type (an
    /// added column may be missing: see [`Table::added_columns`]).
    pub(crate) fn check_schema(self, schema: &StructType) -> Result<()> {
        for &(name, ty, _) in self.columns() {
            match schema.field(name) {
                None if self.added_columns().contains(&name) => {}
                None => {
                    return Err(Error::Schema {
                        table: self.name(),
                        detail: format!("column '{name}' is missing"),
                    });
                }
                Some(field) if field.data_type() != &ty.delta_type() => {
                    return Err(Error::Schema {
                        table: self.name(),
                        detail: format!(
                            "column '{name}' is {}, expected {}",
                            field.data_type(),
                            ty.delta_type()
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// A row of `retry_queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRow {
    /// The key.
    pub sample_id: String,
    /// The data to deliver.
    pub payload: Option<String>,
    /// The last error, if the record has failed before.
    pub error_msg: Option<String>,
    /// Failed attempts so far.
    pub retry_count: i32,
    /// The time lock: the record is not touched before this.
    pub process_after: DateTime<Utc>,
    /// When the record entered the queue.
    pub enqueued_at: DateTime<Utc>,
    /// Snoozes in a row since its last counted attempt (a rule's `snooze`): 0 for none
    /// (column `snoozes`, null for none).
    pub snoozes: i32,
}

/// A row of `final_results`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalRow {
    /// The key.
    pub sample_id: String,
    /// The delivered payload.
    pub data: Option<String>,
    /// When the successful attempt finished.
    pub processed_at: DateTime<Utc>,
    /// Attempts it took, the successful one included.
    pub attempts: i32,
    /// What the processor answered.
    pub response: Option<String>,
}

/// A row of `dead_letter_queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRow {
    /// The key.
    pub sample_id: String,
    /// The undeliverable payload (for `invalid_input`, the input line as read).
    pub payload: Option<String>,
    /// Why it failed.
    pub error_msg: Option<String>,
    /// The record's retry count when it was dead-lettered.
    pub retry_count: i32,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
    /// Why it was dead-lettered (column `reason`).
    pub reason: DeadReason,
}

/// Why a record was dead-lettered: the `reason` column of `dead_letter_queue` (and of a
/// dead attempt in `attempts`). Text retrylake did not write (a newer version's reason, a
/// triage edit by another tool) is read as it is, never refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// The processor failed it permanently (`permanent`).
    Permanent,
    /// It failed transiently once more than the retry budget allows (`retries_exhausted`).
    RetriesExhausted,
    /// Its input line could not be read as a record (`invalid_input`).
    InvalidInput,
    /// An operator cancelled it (`cancelled`, see `retrylake cancel`).
    Cancelled,
    /// It outlived its deadline (`expired`, see `--max-age`).
    Expired,
    /// Any other text in the column.
    Other(String),
}

impl DeadReason {
    /// The reasons retrylake writes.
    pub const KNOWN: [DeadReason; 5] = [
        DeadReason::Permanent,
        DeadReason::RetriesExhausted,
        DeadReason::InvalidInput,
        DeadReason::Cancelled,
        DeadReason::Expired,
    ];

    /// The column's text.
    pub fn as_str(&self) -> &str {
        match self {
            DeadReason::Permanent => "permanent",
            DeadReason::RetriesExhausted => "retries_exhausted",
            DeadReason::InvalidInput => "invalid_input",
            DeadReason::Cancelled => "cancelled",
            DeadReason::Expired => "expired",
            DeadReason::Other(text) => text,
        }
    }

    /// Reads the column's text: a known reason, or [`DeadReason::Other`].
    pub fn from_column(text: &str) -> DeadReason {
        DeadReason::KNOWN
            .into_iter()
            .find(|r| r.as_str() == text)
            .unwrap_or_else(|| DeadReason::Other(text.to_owned()))
    }
}

impl std::fmt::Display for DeadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeadReason {
    type Err = Error;

    /// Reads a reason a user names (`permanent`, `retries_exhausted`, `invalid_input`,
    /// `cancelled`, `expired`):
    /// any other text is refused, as a filter that can match nothing is a mistake.
    fn from_str(s: &str) -> Result<DeadReason> {
        DeadReason::KNOWN
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "unknown dead-letter reason '{s}' (expected permanent, retries_exhausted, \
                     invalid_input, cancelled or expired)"
                ))
            })
    }
}

/// What a journaled attempt was: the `outcome` column of `attempts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptKind {
    /// The call succeeded (`success`).
    Success,
    /// The call failed and may succeed later (`transient`).
    Transient,
    /// The call failed for good, or the record had no payload (`permanent`).
    Permanent,
    /// Not a call: a dead letter moved back into the queue (`redrive`).
    Redrive,
    /// Not a call: an operator cancelled the record (`cancel`).
    Cancel,
}

impl AttemptKind {
    const ALL: [AttemptKind; 5] = [
        AttemptKind::Success,
        AttemptKind::Transient,
        AttemptKind::Permanent,
        AttemptKind::Redrive,
        AttemptKind::Cancel,
    ];

    /// The column's text.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptKind::Success => "success",
            AttemptKind::Transient => "transient",
            AttemptKind::Permanent => "permanent",
            AttemptKind::Redrive => "redrive",
            AttemptKind::Cancel => "cancel",
        }
    }
}

/// Where a journaled attempt sent its record: the `disposition` column of `attempts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// To `final_results` (`final`).
    Final,
    /// Back into `retry_queue` with a new time lock, one retry counted (`retry`).
    Retry,
    /// To `dead_letter_queue` (`dead`).
    Dead,
    /// From `dead_letter_queue` back into `retry_queue` (`redrive`).
    Redrive,
    /// Back into `retry_queue`, no retry counted: a rule's snooze (`snooze`).
    Snooze,
}

impl Disposition {
    const ALL: [Disposition; 5] = [
        Disposition::Final,
        Disposition::Retry,
        Disposition::Dead,
        Disposition::Redrive,
        Disposition::Snooze,
    ];

    /// The column's text.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Final => "final",
            Disposition::Retry => "retry",
            Disposition::Dead => "dead",
            Disposition::Redrive => "redrive",
            Disposition::Snooze => "snooze",
        }
    }
}

/// Reads an enum column's text back, or names the unknown value.
fn parse_column<T: Copy>(
    all: &[T],
    text: &str,
    as_str: fn(T) -> &'static str,
    column: &str,
) -> Result<T> {
    all.iter()
        .copied()
        .find(|v| as_str(*v) == text)
        .ok_or_else(|| Error::Corrupt {
            table: Table::Attempts.name(),
            detail: format!("unknown {column} '{text}'"),
        })
}

/// A row of `attempts`: one call (or one `Missing Payload` decision) and where it sent the
/// record. Everything needed to re-apply the round to the other tables is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    /// The round number, per worker.
    pub round: i64,
    /// The worker that ran the round.
    pub worker: String,
    /// The record's key.
    pub sample_id: String,
    /// The record's retry count before the call: 0 on its first call (column `attempt`).
    pub retries_before: i32,
    /// What the attempt was: a call's outcome, or a redrive (column `outcome`).
    pub outcome: AttemptKind,
    /// The error, for failures.
    pub error_msg: Option<String>,
    /// When the call started.
    pub started_at: DateTime<Utc>,
    /// When the call ended.
    pub finished_at: DateTime<Utc>,
    /// Wall time of the call.
    pub duration_ms: i64,
    /// The new time lock, for retried records.
    pub process_after: Option<DateTime<Utc>>,
    /// Where the record went (column `disposition`).
    pub disposition: Disposition,
    /// For dead letters, why (column `reason`); for a redrive, why the record had died.
    pub reason: Option<DeadReason>,
    /// The record's retry count after the attempt.
    pub retry_count: i32,
    /// The record's payload.
    pub payload: Option<String>,
    /// The processor's response, for successes.
    pub response: Option<String>,
    /// The rule that decided the attempt, `None` for the default treatment (column
    /// `rule`).
    pub rule: Option<String>,
}

/// A string column, its buffers sized up front (growing them copies the whole column).
fn strings<'a>(values: impl Iterator<Item = Option<&'a str>> + Clone) -> ArrayRef {
    let (n, bytes) = values.clone().fold((0, 0), |(n, bytes), v| {
        (n + 1, bytes + v.map_or(0, str::len))
    });
    let mut b = StringBuilder::with_capacity(n, bytes);
    values.for_each(|v| b.append_option(v));
    Arc::new(b.finish())
}

fn ints(values: impl Iterator<Item = i32>) -> ArrayRef {
    Arc::new(Int32Array::from_iter_values(values))
}

fn opt_ints(values: impl Iterator<Item = Option<i32>>) -> ArrayRef {
    Arc::new(values.collect::<Int32Array>())
}

fn longs(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

fn times(values: impl Iterator<Item = Option<DateTime<Utc>>>) -> ArrayRef {
    Arc::new(
        values
            .map(|v| v.map(to_micros))
            .collect::<TimestampMicrosecondArray>()
            .with_timezone("UTC"),
    )
}

fn batch(table: Table, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(table.arrow_schema(), columns)?)
}

/// How retrylake writes a table's Parquet files: Snappy, statistics per file (the Delta
/// log's, which the time lock reads) rather than per page, none for the free-text columns
/// (payloads, responses) nothing filters on, and no dictionary for columns whose values are
/// all different (ids, payloads), where building one is wasted work.
pub(crate) fn writer_properties(table: Table) -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_statistics_enabled(EnabledStatistics::Chunk);
    let unique = ["sample_id", "payload", "data", "response"];
    for (name, _, _) in table.columns() {
        if unique.contains(name) {
            props = props.set_column_dictionary_enabled(ColumnPath::from(*name), false);
        }
        if ["payload", "data", "response"].contains(name) {
            props = props
                .set_column_statistics_enabled(ColumnPath::from(*name), EnabledStatistics::None);
        }
    }
    props.build()
}

/// A typed row of one of the tables, convertible to and from Arrow record batches.
pub trait Rows: Sized {
    /// The table holding these rows.
    const TABLE: Table;
    /// The rows as one batch of the table's Arrow schema.
    fn to_batch(rows: &[Self]) -> Result<RecordBatch>;
    /// The rows of a batch read from the table.
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>>;
}

impl QueueRow {
    /// The rows as one batch, with every `process_after` raised to `lock` when one is
    /// given (a claim's lease; a row locked later, which only a cancel claims, keeps its
    /// own lock), without copying the rows first.
    pub(crate) fn locked_batch(rows: &[Self], lock: Option<DateTime<Utc>>) -> Result<RecordBatch> {
        batch(
            Self::TABLE,
            vec![
                strings(rows.iter().map(|r| Some(r.sample_id.as_str()))),
                strings(rows.iter().map(|r| r.payload.as_deref())),
                strings(rows.iter().map(|r| r.error_msg.as_deref())),
                ints(rows.iter().map(|r| r.retry_count)),
                times(
                    rows.iter()
                        .map(|r| Some(lock.map_or(r.process_after, |l| l.max(r.process_after)))),
                ),
                times(rows.iter().map(|r| Some(r.enqueued_at))),
                opt_ints(rows.iter().map(|r| (r.snoozes != 0).then_some(r.snoozes))),
            ],
        )
    }

    /// A batch of new records (id, payload), due at `now`, built without rows in between.
    pub(crate) fn new_batch<'a>(
        records: impl Iterator<Item = (&'a str, Option<&'a str>)> + Clone,
        now: DateTime<Utc>,
    ) -> Result<RecordBatch> {
        let n = records.clone().count();
        batch(
            Self::TABLE,
            vec![
                strings(records.clone().map(|(id, _)| Some(id))),
                strings(records.map(|(_, payload)| payload)),
                strings(std::iter::repeat_n(None, n)),
                ints(std::iter::repeat_n(0, n)),
                times(std::iter::repeat_n(Some(now), n)),
                times(std::iter::repeat_n(Some(now), n)),
                opt_ints(std::iter::repeat_n(None, n)),
            ],
        )
    }
}

impl Rows for QueueRow {
    const TABLE: Table = Table::RetryQueue;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        QueueRow::locked_batch(rows, None)
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>> {
        let c = Columns {
            table: Self::TABLE,
            batch,
        };
        let (mut ids, mut payloads, mut errors) = (
            c.str("sample_id")?,
            c.opt_str("payload")?,
            c.opt_str("error_msg")?,
        );
        let (counts, after, enqueued) = (
            c.int("retry_count")?,
            c.time("process_after")?,
            c.time("enqueued_at")?,
        );
        let snoozes = c.added_int("snoozes")?;
        Ok((0..batch.num_rows())
            .map(|i| QueueRow {
                sample_id: std::mem::take(&mut ids[i]),
                payload: std::mem::take(&mut payloads[i]),
                error_msg: std::mem::take(&mut errors[i]),
                retry_count: counts[i],
                process_after: after[i],
                enqueued_at: enqueued[i],
                snoozes: snoozes[i].unwrap_or(0),
            })
            .collect())
    }
}

impl Rows for FinalRow {
    const TABLE: Table = Table::FinalResults;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        batch(
            Self::TABLE,
            vec![
                strings(rows.iter().map(|r| Some(r.sample_id.as_str()))),
                strings(rows.iter().map(|r| r.data.as_deref())),
                times(rows.iter().map(|r| Some(r.processed_at))),
                ints(rows.iter().map(|r| r.attempts)),
                strings(rows.iter().map(|r| r.response.as_deref())),
            ],
        )
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>> {
        let c = Columns {
            table: Self::TABLE,
            batch,
        };
        let (mut ids, mut data, at) = (
            c.str("sample_id")?,
            c.opt_str("data")?,
            c.time("processed_at")?,
        );
        let (attempts, mut responses) = (c.int("attempts")?, c.opt_str("response")?);
        Ok((0..batch.num_rows())
            .map(|i| FinalRow {
                sample_id: std::mem::take(&mut ids[i]),
                data: std::mem::take(&mut data[i]),
                processed_at: at[i],
                attempts: attempts[i],
                response: std::mem::take(&mut responses[i]),
            })
            .collect())
    }
}

impl Rows for DeadRow {
    const TABLE: Table = Table::DeadLetterQueue;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        batch(
            Self::TABLE,
            vec![
                strings(rows.iter().map(|r| Some(r.sample_id.as_str()))),
                strings(rows.iter().map(|r| r.payload.as_deref())),
                strings(rows.iter().map(|r| r.error_msg.as_deref())),
                ints(rows.iter().map(|r| r.retry_count)),
                times(rows.iter().map(|r| Some(r.failed_at))),
                strings(rows.iter().map(|r| Some(r.reason.as_str()))),
            ],
        )
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>> {
        let c = Columns {
            table: Self::TABLE,
            batch,
        };
        let (mut ids, mut payloads, mut errors) = (
            c.str("sample_id")?,
            c.opt_str("payload")?,
            c.opt_str("error_msg")?,
        );
        let (counts, at, reasons) = (
            c.int("retry_count")?,
            c.time("failed_at")?,
            c.str("reason")?,
        );
        let mut reasons: Vec<DeadReason> =
            reasons.iter().map(|r| DeadReason::from_column(r)).collect();
        Ok((0..batch.num_rows())
            .map(|i| DeadRow {
                sample_id: std::mem::take(&mut ids[i]),
                payload: std::mem::take(&mut payloads[i]),
                error_msg: std::mem::take(&mut errors[i]),
                retry_count: counts[i],
                failed_at: at[i],
                reason: std::mem::replace(&mut reasons[i], DeadReason::Permanent),
            })
            .collect())
    }
}

impl AttemptRow {
    /// The `final_results` rows of the attempts that placed their record there.
    pub(crate) fn final_batch(rows: &[AttemptRow]) -> Result<RecordBatch> {
        let rows: Vec<&AttemptRow> = rows
            .iter()
            .filter(|r| r.disposition == Disposition::Final)
            .collect();
        batch(
            Table::FinalResults,
            vec![
                strings(rows.iter().map(|r| Some(r.sample_id.as_str()))),
                strings(rows.iter().map(|r| r.payload.as_deref())),
                times(rows.iter().map(|r| Some(r.finished_at))),
                ints(rows.iter().map(|r| r.retries_before + 1)),
                strings(rows.iter().map(|r| r.response.as_deref())),
            ],
        )
    }

    /// The `dead_letter_queue` rows of the attempts that placed their record there.
    pub(crate) fn dead_batch(rows: &[AttemptRow]) -> Result<RecordBatch> {
        let rows: Vec<&AttemptRow> = rows
            .iter()
            .filter(|r| r.disposition == Disposition::Dead)
            .collect();
        batch(
            Table::DeadLetterQueue,
            vec![
                strings(rows.iter().map(|r| Some(r.sample_id.as_str()))),
                strings(rows.iter().map(|r| r.payload.as_deref())),
                strings(rows.iter().map(|r| r.error_msg.as_deref())),
                ints(rows.iter().map(|r| r.retry_count)),
                times(rows.iter().map(|r| Some(r.finished_at))),
                strings(
                    rows.iter()
                        .map(|r| Some(r.reason.as_ref().map_or("", DeadReason::as_str))),
                ),
            ],
        )
    }
}

impl Rows for AttemptRow {
    const TABLE: Table = Table::Attempts;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        batch(
            Self::TABLE,
            vec![
                longs(rows.iter().map(|r| r.round)),
                strings(rows.iter().map(|r| Some(r.worker.as_str()))),
                strings(rows.iter().map(|r| Some(r.sample_id.as_str()))),
                ints(rows.iter().map(|r| r.retries_before)),
                strings(rows.iter().map(|r| Some(r.outcome.as_str()))),
                strings(rows.iter().map(|r| r.error_msg.as_deref())),
                times(rows.iter().map(|r| Some(r.started_at))),
                times(rows.iter().map(|r| Some(r.finished_at))),
                longs(rows.iter().map(|r| r.duration_ms)),
                times(rows.iter().map(|r| r.process_after)),
                strings(rows.iter().map(|r| Some(r.disposition.as_str()))),
                strings(
                    rows.iter()
                        .map(|r| r.reason.as_ref().map(DeadReason::as_str)),
                ),
                ints(rows.iter().map(|r| r.retry_count)),
                strings(rows.iter().map(|r| r.payload.as_deref())),
                strings(rows.iter().map(|r| r.response.as_deref())),
                strings(rows.iter().map(|r| r.rule.as_deref())),
            ],
        )
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>> {
        let c = Columns {
            table: Self::TABLE,
            batch,
        };
        let (rounds, mut workers, mut ids) =
            (c.long("round")?, c.str("worker")?, c.str("sample_id")?);
        let (attempts, outcomes, mut errors) = (
            c.int("attempt")?,
            c.str("outcome")?,
            c.opt_str("error_msg")?,
        );
        let outcomes = outcomes
            .iter()
            .map(|o| parse_column(&AttemptKind::ALL, o, AttemptKind::as_str, "outcome"))
            .collect::<Result<Vec<_>>>()?;
        let (started, finished, durations) = (
            c.time("started_at")?,
            c.time("finished_at")?,
            c.long("duration_ms")?,
        );
        let (after, dispositions, reasons) = (
            c.opt_time("process_after")?,
            c.str("disposition")?,
            c.opt_str("reason")?,
        );
        let mut reasons: Vec<Option<DeadReason>> = reasons
            .iter()
            .map(|r| r.as_deref().map(DeadReason::from_column))
            .collect();
        let dispositions = dispositions
            .iter()
            .map(|d| parse_column(&Disposition::ALL, d, Disposition::as_str, "disposition"))
            .collect::<Result<Vec<_>>>()?;
        let (counts, mut payloads, mut responses) = (
            c.int("retry_count")?,
            c.opt_str("payload")?,
            c.opt_str("response")?,
        );
        let mut rules = c.added_str("rule")?;
        Ok((0..batch.num_rows())
            .map(|i| AttemptRow {
                round: rounds[i],
                worker: std::mem::take(&mut workers[i]),
                sample_id: std::mem::take(&mut ids[i]),
                retries_before: attempts[i],
                outcome: outcomes[i],
                error_msg: std::mem::take(&mut errors[i]),
                started_at: started[i],
                finished_at: finished[i],
                duration_ms: durations[i],
                process_after: after[i],
                disposition: dispositions[i],
                reason: reasons[i].take(),
                retry_count: counts[i],
                payload: std::mem::take(&mut payloads[i]),
                response: std::mem::take(&mut responses[i]),
                rule: std::mem::take(&mut rules[i]),
            })
            .collect())
    }
}
