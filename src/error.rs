//! The library's error type: the queue itself could not do its job. A failing record is
//! an [`Outcome`](crate::Outcome), never an error.

use std::path::PathBuf;

/// Everything that can stop a retrylake command.
///
/// ```
/// use retrylake::{Error, RetryPolicy};
///
/// match RetryPolicy::builder().multiplier(0.5).build() {
///     Err(Error::InvalidPolicy(why)) => assert!(why.contains("multiplier")),
///     other => panic!("expected an invalid policy, got {other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A retry policy setting makes no sense.
    #[error("invalid retry policy: {0}")]
    InvalidPolicy(String),

    /// A processor or command setting makes no sense (a bad URL, a bad header).
    #[error("{0}")]
    InvalidConfig(String),

    /// A dead-letter alert could not be delivered (it is tried again).
    #[error("{0}")]
    Alert(String),

    /// The input to enqueue could not be read or holds invalid records.
    #[error("{path}: {message}")]
    InvalidInput {
        /// The input file.
        path: PathBuf,
        /// What is wrong and where (line numbers, field names).
        message: String,
    },

    /// A folder where a table belongs holds something that is not a Delta table.
    #[error(
        "{path} is not a Delta table (it has files but no _delta_log); move it away or choose another --data"
    )]
    NotATable {
        /// The table's folder.
        path: String,
    },

    /// A table exists but its schema is not retrylake's.
    #[error("table {table} has the wrong schema: {detail}")]
    Schema {
        /// The table's name.
        table: &'static str,
        /// Which column is missing or of the wrong type.
        detail: String,
    },

    /// The data directory cannot be created or written.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The data root.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// A Delta Lake operation failed.
    #[error("table {table}: {source}")]
    Delta {
        /// The table's name.
        table: &'static str,
        /// The delta-rs error.
        source: deltalake::DeltaTableError,
    },

    /// A query over the tables failed.
    #[error("query failed: {0}")]
    Query(#[from] deltalake::datafusion::error::DataFusionError),

    /// Building Arrow data failed.
    #[error("arrow: {0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),

    /// Another process ended the round before its journal committed: a worker that
    /// fenced it after its lease ended (and takes its records), or a second process under
    /// the same worker name. Nothing of the round was committed.
    #[error(
        "round {round} of worker '{worker}' lost its lease: another worker took its records after the lease ended, or another process runs as '{worker}'; nothing committed, the records are placed once by the other"
    )]
    LeaseLost {
        /// The worker name.
        worker: String,
        /// The round that lost.
        round: i64,
    },

    /// A table holds data retrylake cannot interpret (a null key, an unknown outcome).
    #[error("table {table} holds unexpected data: {detail}")]
    Corrupt {
        /// The table's name.
        table: &'static str,
        /// What was found.
        detail: String,
    },

    /// A command that only reads found none of the four tables under the data root (a
    /// mistyped `--data` must not look like an empty queue).
    #[error(
        "no retrylake tables under {root}: check --data (or RETRYLAKE_DATA); `retrylake init` creates them"
    )]
    NoTables {
        /// The data root.
        root: String,
    },

    /// A command that only reads found some of the four tables under the data root, not all.
    #[error(
        "{root} holds only some of retrylake's tables: {} missing; check --data, or run `retrylake init` to create the missing ones",
        missing.join(", ")
    )]
    MissingTables {
        /// The data root.
        root: String,
        /// The tables that are not there.
        missing: Vec<&'static str>,
    },

    /// A query that would do more than read the tables (DDL, DML, COPY, SET...).
    #[error(
        "query is read-only: it runs SELECT, WITH, EXPLAIN and DESCRIBE over the queue's tables; refused: {0}"
    )]
    ReadOnly(String),

    /// SQL that cannot run as written: a Delta form (time travel, `DESCRIBE HISTORY`)
    /// misused, an unknown table in one, or text that does not tokenize.
    #[error("SQL: {0}")]
    Sql(String),

    /// A table a query names cannot be read as asked: a version or time it does not
    /// have, files removed by vacuum, or a path that is not a Delta table.
    #[error("{table}: {message}")]
    Unreadable {
        /// The table, as the query names it (`retry_queue`, `` delta.`/path` ``).
        table: String,
        /// Why, with the versions it has where that helps.
        message: String,
    },
}

impl Error {
    /// Whether this is a Delta commit conflict with a concurrent writer: worth re-reading
    /// the table and trying again.
    pub fn is_conflict(&self) -> bool {
        use deltalake::DeltaTableError as D;
        use deltalake::kernel::transaction::TransactionError as T;
        matches!(
            self,
            Error::Delta {
                source: D::VersionAlreadyExists(_)
                    | D::Transaction {
                        source: T::CommitConflict(_) | T::MaxCommitAttempts(_)
                    },
                ..
            }
        )
    }

    /// Whether a concurrent commit carried the same application transaction id: another
    /// process committing the same worker's rounds.
    pub(crate) fn is_same_app_conflict(&self) -> bool {
        use deltalake::DeltaTableError as D;
        use deltalake::kernel::transaction::{CommitConflictError as C, TransactionError as T};
        matches!(
            self,
            Error::Delta {
                source: D::Transaction {
                    source: T::CommitConflict(C::ConcurrentTransaction)
                },
                ..
            }
        )
    }
}

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
