//! The time lock at the level of files: `retry_queue`'s files are found by the range of
//! their `process_after` statistics, so a round reads only files that hold due rows, and
//! rows processed together leave together, whole files removed without being rewritten.
//!
//! A round *claims* its due rows in one commit: it removes the files it takes rows from and
//! adds the claimed rows under a lease (their `process_after` set to the lease's end) in
//! files of their own, beside the other rows of those files (one file per shard, so each
//! worker finds its own together). It *settles* them in one more commit: it removes the
//! lease files and adds the retried rows, one file per retry count, so the rows that come
//! due together sit together. Two workers that take rows from the same file both try to
//! remove it, and Delta's conflict check lets only one of them commit.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use deltalake::DeltaTableError;
use deltalake::arrow::array::RecordBatch;
use deltalake::datafusion::prelude::{col, lit};
use deltalake::kernel::{Action, Add, Remove};
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::protocol::{DeltaOperation, MergePredicate, SaveMode};

use super::{CommitTag, QueueRow, Rows, Store, Table, delta};
use crate::error::{Error, Result};
use crate::round::timestamp;
use crate::shard::Shard;

/// Rows per file when the queue writes rows (enqueue, claims, settles): a round of at most
/// this many records reads whole files and leaves the rest untouched.
pub const FILE_ROWS: usize = 100_000;

/// A file of `retry_queue` and the earliest `process_after` its statistics record.
struct QueueFile {
    remove: Remove,
    /// `None` when the file carries no statistics (written by another tool): read it.
    earliest: Option<DateTime<Utc>>,
}

/// The records a round claimed, and the files that hold them under its lease.
#[derive(Debug, Default)]
pub(crate) struct Claim {
    /// The claimed rows as they were before the claim, oldest lock first.
    pub rows: Vec<QueueRow>,
    /// The lease files, removed whole when the round settles.
    pub lease: Vec<Remove>,
}

/// What a look for due rows found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// The claim, `None` when nothing was due.
    pub claim: Option<Claim>,
    /// The earliest time lock of the rows (of the shard) left unclaimed, as far as the
    /// statistics tell (exact for the files read, a lower bound for the others).
    pub next_due: Option<DateTime<Utc>>,
}

/// What the claim of a round asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimRequest {
    /// The round's time: rows locked until then or earlier are due.
    pub now: DateTime<Utc>,
    /// Most rows to claim.
    pub limit: usize,
    /// Only rows of this shard.
    pub shard: Option<Shard>,
    /// The lease's end, written as the claimed rows' `process_after`.
    pub lease_until: DateTime<Utc>,
}

impl Store {
    /// The queue's files, earliest time lock first (files without statistics first).
    fn queue_files(&self) -> Result<Vec<QueueFile>> {
        let table = Table::RetryQueue;
        let snapshot = self.table(table).snapshot().map_err(delta(table))?;
        let mut files = Vec::new();
        for view in snapshot.log_data().iter() {
            if view.deletion_vector_descriptor().is_some() {
                return Err(Error::Corrupt {
                    table: table.name(),
                    detail: format!(
                        "file {} has a deletion vector, which retrylake does not read",
                        view.path()
                    ),
                });
            }
            files.push(QueueFile {
                remove: view.remove_action(true),
                earliest: view.stats().as_deref().and_then(earliest_lock),
            });
        }
        files.sort_by_key(|f| f.earliest);
        Ok(files)
    }

    /// Reads the files that may hold due rows, earliest first, and claims up to
    /// `request.limit` of the due rows (oldest lock first) in one commit. A commit that
    /// loses a race with another claim of the same files fails with a conflict.
    pub(crate) async fn claim_due(&mut self, request: ClaimRequest, worker: &str) -> Result<Found> {
        let table = Table::RetryQueue;
        let files = self.queue_files()?;
        let store = self.table(table).log_store().object_store(None);
        // Rows read, with the index of the file they came from.
        let mut due: Vec<(usize, QueueRow)> = Vec::new();
        let mut kept: Vec<(usize, QueueRow)> = Vec::new();
        let mut unread_earliest = None;
        for (i, file) in files.iter().enumerate() {
            let candidate = file.earliest.is_none_or(|t| t <= request.now);
            // Past the limit, read on only while a file may hold rows locked before the
            // newest lock the claim would take (rows locked at the same time are taken
            // in the order of their files).
            let needed = due.len() < request.limit
                || request.limit > 0 && {
                    due.sort_by(|a, b| oldest_first(&a.1, &b.1));
                    file.earliest
                        .is_none_or(|t| t < due[request.limit - 1].1.process_after)
                };
            if !candidate || !needed {
                unread_earliest = files[i..].iter().filter_map(|f| f.earliest).min();
                break;
            }
            for row in read_file(store.clone(), file).await? {
                let mine = request.shard.is_none_or(|s| s.contains(&row.sample_id));
                if mine && row.process_after <= request.now {
                    due.push((i, row));
                } else {
                    kept.push((i, row));
                }
            }
        }
        due.sort_by(|a, b| oldest_first(&a.1, &b.1));
        if due.len() > request.limit {
            kept.extend(due.drain(request.limit..));
        }
        let kept_earliest = kept
            .iter()
            .filter(|(_, r)| request.shard.is_none_or(|s| s.contains(&r.sample_id)))
            .map(|(_, r)| r.process_after)
            .min();
        let next_due = [kept_earliest, unread_earliest].into_iter().flatten().min();
        if due.is_empty() {
            // Nothing to claim: leave the files as they are.
            return Ok(Found {
                claim: None,
                next_due,
            });
        }
        // Only the files the claim takes rows from are replaced; their other rows are
        // written again, one file per shard so that each worker finds its own together.
        let touched: HashSet<usize> = due.iter().map(|(i, _)| *i).collect();
        let mut rewritten: HashMap<u32, Vec<QueueRow>> = HashMap::new();
        for (i, row) in kept {
            if touched.contains(&i) {
                let sibling = request.shard.map_or(0, |s| s.sibling_of(&row.sample_id));
                rewritten.entry(sibling).or_default().push(row);
            }
        }
        let rewritten: Vec<&[QueueRow]> = rewritten.values().map(Vec::as_slice).collect();
        let due: Vec<QueueRow> = due.into_iter().map(|(_, row)| row).collect();
        let leased = due
            .chunks(FILE_ROWS)
            .map(|chunk| QueueRow::locked_batch(chunk, Some(request.lease_until)));
        let lease = self.write_batches(table, leased).await?;
        let rewritten = rewritten
            .iter()
            .flat_map(|group| group.chunks(FILE_ROWS))
            .map(QueueRow::to_batch);
        let kept_files = self.write_batches(table, rewritten).await?;
        let mut actions: Vec<Action> = touched
            .iter()
            .map(|&i| Action::Remove(files[i].remove.clone()))
            .collect();
        actions.extend(lease.iter().cloned().map(Action::Add));
        actions.extend(kept_files.into_iter().map(Action::Add));
        let tag = CommitTag::operation("claim")
            .with("worker", worker)
            .with("records", due.len());
        let predicate = col("process_after").lt_eq(lit(timestamp(request.now)));
        let operation = DeltaOperation::Update {
            predicate: sql(predicate),
        };
        self.commit(table, actions, operation, &tag).await?;
        Ok(Found {
            claim: Some(Claim {
                rows: due,
                lease: lease.iter().map(remove_of).collect(),
            }),
            next_due,
        })
    }

    /// Appends new records to the queue in one commit, each batch (of at most
    /// [`FILE_ROWS`] rows) in a file of its own.
    pub(crate) async fn append_queue(
        &mut self,
        batches: impl IntoIterator<Item = Result<RecordBatch>>,
        tag: &CommitTag,
    ) -> Result<()> {
        let table = Table::RetryQueue;
        let adds = self.write_batches(table, batches).await?;
        let actions = adds.into_iter().map(Action::Add).collect();
        self.commit(table, actions, append(), tag).await
    }
}

/// The retried records of a round as batches of the queue, one per retry count (so records
/// that come due together sit in a file together), oldest lock first.
pub(crate) fn retried_batches(retried: &[QueueRow]) -> Result<Vec<RecordBatch>> {
    let mut by_count: HashMap<i32, Vec<&QueueRow>> = HashMap::new();
    for row in retried {
        by_count.entry(row.retry_count).or_default().push(row);
    }
    let mut groups: Vec<Vec<&QueueRow>> = by_count.into_values().collect();
    for group in &mut groups {
        group.sort_by(|a, b| oldest_first(a, b));
    }
    groups.sort_by_key(|g| g.first().map(|r| r.process_after));
    let mut batches = Vec::new();
    for group in groups {
        for chunk in group.chunks(FILE_ROWS) {
            let rows: Vec<QueueRow> = chunk.iter().map(|r| (*r).clone()).collect();
            batches.push(QueueRow::to_batch(&rows)?);
        }
    }
    Ok(batches)
}

/// How a round's queue commit is recorded: as the MERGE by id it amounts to (deleting the
/// placed records, updating the retried ones), reading only the round's own lease files.
pub(crate) fn settle_operation(lease_until: DateTime<Utc>) -> DeltaOperation {
    let predicate = col("process_after").eq(lit(timestamp(lease_until)));
    let clause = |action: &str, predicate: &str| MergePredicate {
        action_type: action.to_owned(),
        predicate: Some(predicate.to_owned()),
    };
    DeltaOperation::Merge {
        predicate: sql(predicate),
        merge_predicate: Some("target.sample_id = source.sample_id".to_owned()),
        matched_predicates: vec![
            clause("delete", "source.action = 'delete'"),
            clause("update", "source.action = 'retry'"),
        ],
        not_matched_predicates: Vec::new(),
        not_matched_by_source_predicates: Vec::new(),
    }
}

/// A blind append.
pub(crate) fn append() -> DeltaOperation {
    DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    }
}

/// Oldest lock first; then oldest in the queue; then by id, so the order is total.
fn oldest_first(a: &QueueRow, b: &QueueRow) -> std::cmp::Ordering {
    (a.process_after, a.enqueued_at, &a.sample_id).cmp(&(
        b.process_after,
        b.enqueued_at,
        &b.sample_id,
    ))
}

/// The remove action for a file this process just added.
fn remove_of(add: &Add) -> Remove {
    Remove {
        path: add.path.clone(),
        data_change: true,
        deletion_timestamp: Some(Utc::now().timestamp_millis()),
        extended_file_metadata: Some(true),
        size: Some(add.size),
        partition_values: Some(add.partition_values.clone()),
        deletion_vector: None,
        tags: None,
        base_row_id: None,
        default_row_commit_version: None,
    }
}

/// The SQL text of a commit's read predicate, as Delta's conflict check reads it back.
fn sql(predicate: deltalake::datafusion::prelude::Expr) -> Option<String> {
    deltalake::delta_datafusion::expr::fmt_expr_to_sql(&predicate).ok()
}

/// The `minValues.process_after` of a file's statistics (JSON, milliseconds).
fn earliest_lock(stats: &str) -> Option<DateTime<Utc>> {
    let stats: serde_json::Value = serde_json::from_str(stats).ok()?;
    let text = stats.get("minValues")?.get("process_after")?.as_str()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Every row of one queue file (at most [`FILE_ROWS`] rows when retrylake wrote it).
async fn read_file(
    store: deltalake::logstore::ObjectStoreRef,
    file: &QueueFile,
) -> Result<Vec<QueueRow>> {
    let fail = |e: DeltaTableError| delta(Table::RetryQueue)(e);
    let path = deltalake::Path::parse(&file.remove.path)
        .map_err(|e| fail(deltalake::ObjectStoreError::from(e).into()))?;
    let bytes = store
        .get(&path)
        .await
        .map_err(|e| fail(e.into()))?
        .bytes()
        .await
        .map_err(|e| fail(e.into()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| fail(e.into()))?
        .build()
        .map_err(|e| fail(e.into()))?;
    let mut rows = Vec::new();
    for batch in reader {
        rows.extend(QueueRow::from_batch(&batch?)?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::kernel::transaction::{CommitConflictError, TransactionError};

    #[tokio::test]
    async fn racing_claims_of_one_file_conflict_and_only_one_commits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let now = DateTime::parse_from_rfc3339("2025-11-24T14:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let rows: Vec<QueueRow> = (0..10)
            .map(|i| QueueRow {
                sample_id: format!("S-{i}"),
                payload: Some("x".into()),
                error_msg: None,
                retry_count: 0,
                process_after: now,
                enqueued_at: now,
            })
            .collect();
        let mut a = Store::open(root).await.unwrap();
        a.append_queue(
            [QueueRow::to_batch(&rows)],
            &CommitTag::operation("enqueue"),
        )
        .await
        .unwrap();
        // Both read the same version; `a` commits its claim first.
        let mut b = Store::open(root).await.unwrap();
        let request = ClaimRequest {
            now,
            limit: 100,
            shard: None,
            lease_until: now + chrono::Duration::minutes(15),
        };
        let first = a.claim_due(request, "a").await.unwrap();
        assert_eq!(first.claim.unwrap().rows.len(), 10);
        let err = b.claim_due(request, "b").await.unwrap_err();
        // A real conflict, found by Delta's checker (which parsed the claim's predicate).
        assert!(
            matches!(
                &err,
                Error::Delta {
                    source: DeltaTableError::Transaction {
                        source: TransactionError::CommitConflict(
                            CommitConflictError::ConcurrentDeleteDelete
                                | CommitConflictError::ConcurrentDeleteRead
                        )
                    },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_conflict());
        // Re-read, the rows are under `a`'s lease: nothing is due for `b`.
        b.refresh().await.unwrap();
        let again = b.claim_due(request, "b").await.unwrap();
        assert!(again.claim.is_none());
        assert_eq!(again.next_due, Some(request.lease_until));
    }

    #[test]
    fn reads_the_earliest_lock_from_statistics() {
        let stats = r#"{"numRecords":2,"minValues":{"process_after":"2025-11-24T14:02:00.123Z"},"maxValues":{}}"#;
        assert_eq!(
            earliest_lock(stats).map(|t| t.to_rfc3339()),
            Some("2025-11-24T14:02:00.123+00:00".to_owned())
        );
        assert_eq!(earliest_lock(r#"{"numRecords":0}"#), None);
        assert_eq!(earliest_lock("not json"), None);
    }
}
