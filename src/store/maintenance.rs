//! Keeping the tables fast: compaction, checkpoints, and vacuum of files no version needs.

use std::time::Duration;

use deltalake::operations::optimize::OptimizeType;
use serde::Serialize;

use super::{CommitTag, Store, Table, table_error};
use crate::error::{Error, Result};

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
            let t = self.table_mut(table);
            if table == Table::RetryQueue {
                deltalake::checkpoints::create_checkpoint(t, None)
                    .await
                    .map_err(table_error(table))?;
                done.push(Optimized {
                    table: table.name(),
                    files_added: 0,
                    files_removed: 0,
                });
                continue;
            }
            let (optimized, metrics) = t
                .clone()
                .optimize()
                .with_type(OptimizeType::Compact)
                .with_commit_properties(CommitTag::operation("optimize").properties())
                .await
                .map_err(table_error(table))?;
            deltalake::checkpoints::create_checkpoint(&optimized, None)
                .await
                .map_err(table_error(table))?;
            *t = optimized;
            done.push(Optimized {
                table: table.name(),
                files_added: metrics.num_files_added,
                files_removed: metrics.num_files_removed,
            });
        }
        Ok(done)
    }

    /// Deletes the data files no version younger than `retain` refers to. Time travel to
    /// versions older than `retain` stops working.
    pub async fn vacuum(&mut self, retain: Duration) -> Result<Vec<Vacuumed>> {
        let retain = chrono::Duration::from_std(retain)
            .map_err(|_| Error::InvalidConfig("--retain is too long".into()))?;
        let mut done = Vec::new();
        for table in Table::ALL {
            let t = self.table_mut(table);
            let (vacuumed, metrics) = t
                .clone()
                .vacuum()
                .with_retention_period(retain)
                .with_enforce_retention_duration(false)
                .with_commit_properties(CommitTag::operation("vacuum").properties())
                .await
                .map_err(table_error(table))?;
            *t = vacuumed;
            done.push(Vacuumed {
                table: table.name(),
                files_deleted: metrics.files_deleted.len(),
            });
        }
        Ok(done)
    }
}
