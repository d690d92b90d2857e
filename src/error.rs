//! The library's error type: the queue itself could not do its job. A failing record is
//! an [`Outcome`](crate::Outcome), never an error.

use std::path::PathBuf;

/// Everything that can stop a retrylake command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A retry policy setting makes no sense.
    #[error("invalid retry policy: {0}")]
    InvalidPolicy(String),

    /// A processor or command setting makes no sense (a bad URL, a bad header).
    #[error("{0}")]
    InvalidConfig(String),

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

    /// Another process is committing rounds under the same worker name.
    #[error(
        "another retrylake process is running as worker '{worker}' on these tables; give each concurrent runner its own --worker name"
    )]
    WorkerBusy {
        /// The worker name in use.
        worker: String,
    },

    /// The round took longer than its lease on the records, so another worker may have
    /// claimed them; nothing was committed and the records come back when the lease ends.
    #[error(
        "round took {elapsed:?}, past its {lease:?} lease; nothing committed (raise --lease or lower --limit)"
    )]
    LeaseExpired {
        /// How long the round ran.
        elapsed: std::time::Duration,
        /// The lease it held.
        lease: std::time::Duration,
    },

    /// A table holds data retrylake cannot interpret (a null key, an unknown outcome).
    #[error("table {table} holds unexpected data: {detail}")]
    Corrupt {
        /// The table's name.
        table: &'static str,
        /// What was found.
        detail: String,
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
