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

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use std::sync::Arc;

use bytes::Bytes;
use deltalake::DeltaTableError;
use deltalake::arrow::array::RecordBatch;
use deltalake::datafusion::prelude::{col, lit};
use deltalake::kernel::{Action, Add, Remove};
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::basic::{LogicalType, TimeUnit, Type as PhysicalType};
use deltalake::parquet::column::writer::ColumnCloseResult;
use deltalake::parquet::data_type::Int64Type;
use deltalake::parquet::errors::ParquetError;
use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
use deltalake::parquet::file::serialized_reader::ReadOptionsBuilder;
use deltalake::parquet::file::writer::SerializedFileWriter;
use deltalake::protocol::{DeltaOperation, MergePredicate, SaveMode};

use super::columns::timestamp;
use super::commit::{IDS_APP, app_id};
use super::{CommitTag, QueueRow, Rows, Store, Table, read_object, table_error};
use crate::clock::to_micros;
use crate::error::{Error, Result};

/// Rows per file when the queue writes rows (enqueue, claims, settles): a round of at most
/// this many records reads whole files and leaves the rest untouched.
pub const FILE_ROWS: usize = 100_000;

/// A file of `retry_queue` and the earliest `process_after` its statistics record.
struct QueueFile {
    remove: Remove,
    /// The file's statistics (JSON), as its add action carries them.
    stats: Option<String>,
    /// `None` when the file carries no statistics (written by another tool): read it.
    earliest: Option<DateTime<Utc>>,
    /// The round whose lease the file holds (its records under that round's lease), from
    /// the file's tags; `None` for other files.
    lease: Option<LeaseOwner>,
    /// The end of that lease, from the file's tags (files of an older retrylake have
    /// none: their rows' time lock is the lease's end).
    lease_until: Option<DateTime<Utc>>,
}

/// A round that holds records under its lease: the worker and the round's number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct LeaseOwner {
    /// The worker that claimed the records.
    pub worker: String,
    /// The worker's round that claimed them.
    pub round: i64,
}

/// The tags of a lease file's add action, which name the round that holds it.
const LEASE_WORKER_TAG: &str = "retrylake.lease.worker";
const LEASE_ROUND_TAG: &str = "retrylake.lease.round";
const LEASE_UNTIL_TAG: &str = "retrylake.lease.until";

impl LeaseOwner {
    /// The tags of a file holding the round's records under its lease until `until`.
    fn tags(&self, until: DateTime<Utc>) -> HashMap<String, Option<String>> {
        HashMap::from([
            (LEASE_WORKER_TAG.to_owned(), Some(self.worker.clone())),
            (LEASE_ROUND_TAG.to_owned(), Some(self.round.to_string())),
            (
                LEASE_UNTIL_TAG.to_owned(),
                Some(to_micros(until).to_string()),
            ),
        ])
    }

    fn from_tags(tags: &HashMap<String, Option<String>>) -> Option<LeaseOwner> {
        let tag = |name: &str| tags.get(name).cloned().flatten();
        Some(LeaseOwner {
            worker: tag(LEASE_WORKER_TAG)?,
            round: tag(LEASE_ROUND_TAG)?.parse().ok()?,
        })
    }
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
    /// Rounds whose lease has ended on files the claim would take rows from, but which
    /// are not yet known to be over: nothing was claimed, and each must be resolved
    /// ([`Store::resolve_lease`]) before their records can be taken.
    pub unresolved: Vec<LeaseOwner>,
    /// For [`Take::Matching`]: the rows it would take that a round which may still
    /// journal holds under its live lease, left to that round.
    pub held: usize,
}

/// Which rows a claim takes.
#[derive(Clone, Default)]
pub(crate) enum Take {
    /// The due rows (`process_after <= now`): a round's claim.
    #[default]
    Due,
    /// The rows this picks, due or not, except those a round that may still journal holds
    /// under its live lease: a cancel's claim. A row keeps its own time lock when it is
    /// later than the lease's end, so a cancel that dies early calls nothing early.
    Matching(Arc<dyn Fn(&QueueRow) -> bool + Send + Sync>),
}

impl std::fmt::Debug for Take {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Take::Due => "Due",
            Take::Matching(_) => "Matching",
        })
    }
}

/// Which keys a claim takes: `group_of` puts each key in one group of a split of the
/// keys (a shard of `--shard I/N`), and the claim takes the keys of group `own`. The rows
/// it leaves in the files it claims from are written back one file per group, so that
/// each claimer finds its own together.
#[derive(Clone)]
pub(crate) struct KeyFilter {
    /// The group of a key.
    pub group_of: Arc<dyn Fn(&str) -> u32 + Send + Sync>,
    /// The group the claim takes.
    pub own: u32,
}

impl KeyFilter {
    fn takes(&self, key: &str) -> bool {
        (self.group_of)(key) == self.own
    }
}

impl ClaimRequest {
    /// Whether the claim may take the row of `key`.
    fn takes(&self, key: &str) -> bool {
        self.keys.as_ref().is_none_or(|k| k.takes(key))
    }
}

/// The rows a claim read, with the index of the file each came from.
#[derive(Default)]
struct Scan {
    /// The rows it claims, oldest lock first.
    due: Vec<(usize, QueueRow)>,
    /// The other rows of the files read.
    kept: Vec<(usize, QueueRow)>,
    /// The bytes of the files read, to copy a file that is claimed whole.
    read: HashMap<usize, Bytes>,
    /// The earliest time lock of the files not read, as far as their statistics tell.
    unread_earliest: Option<DateTime<Utc>>,
    /// Matching rows left under the live lease of a round that may still journal.
    held: usize,
}

impl Scan {
    /// Sorts the rows of file `i` into the ones the claim `takes` and the others.
    fn sort_in(&mut self, i: usize, rows: Vec<QueueRow>, takes: impl Fn(&QueueRow) -> bool) {
        for row in rows {
            match takes(&row) {
                true => self.due.push((i, row)),
                false => self.kept.push((i, row)),
            }
        }
    }

    /// The scan with at most `limit` rows taken, the oldest locks first; the others kept.
    fn up_to(mut self, limit: usize) -> Scan {
        self.due.sort_by(|a, b| oldest_first(&a.1, &b.1));
        if self.due.len() > limit {
            let over = self.due.drain(limit..).collect::<Vec<_>>();
            self.kept.extend(over);
        }
        self
    }

    /// The earliest time lock of the request's rows left unclaimed.
    fn next_due(&self, request: &ClaimRequest) -> Option<DateTime<Utc>> {
        let kept = self
            .kept
            .iter()
            .filter(|(_, r)| request.takes(&r.sample_id))
            .map(|(_, r)| r.process_after)
            .min();
        [kept, self.unread_earliest].into_iter().flatten().min()
    }
}

/// Sorts the rows `kept` in the `touched` files (the files a claim takes rows from) into
/// the groups of `keys` (one file each, so each worker of a shard finds its own together),
/// and returns the touched files none of whose rows is kept, which can be leased whole.
fn split_touched(
    kept: Vec<(usize, QueueRow)>,
    touched: &HashSet<usize>,
    keys: Option<&KeyFilter>,
) -> (HashSet<usize>, Vec<Vec<QueueRow>>) {
    let mut whole = touched.clone();
    let mut groups: HashMap<u32, Vec<QueueRow>> = HashMap::new();
    for (i, row) in kept {
        if touched.contains(&i) {
            whole.remove(&i);
            let group = keys.map_or(0, |k| (k.group_of)(&row.sample_id));
            groups.entry(group).or_default().push(row);
        }
    }
    (whole, groups.into_values().collect())
}

impl std::fmt::Debug for KeyFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFilter").field("own", &self.own).finish()
    }
}

/// What the claim of a round asks for.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRequest {
    /// The round's time: rows locked until then or earlier are due.
    pub now: DateTime<Utc>,
    /// Most rows to claim.
    pub limit: usize,
    /// Only the rows whose keys this takes (a shard); `None` for every row.
    pub keys: Option<KeyFilter>,
    /// The lease's end, written as the claimed rows' `process_after`.
    pub lease_until: DateTime<Utc>,
    /// The round that claims, named in the lease files' tags.
    pub owner: LeaseOwner,
    /// Which rows it takes.
    pub take: Take,
}

impl Store {
    /// The queue's files, earliest time lock first (files without statistics first).
    fn queue_files(&self) -> Result<Vec<QueueFile>> {
        let table = Table::RetryQueue;
        let snapshot = self.table(table).snapshot().map_err(table_error(table))?;
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
            let stats = view.stats();
            #[allow(deprecated)] // the one public way to a file's tags
            let tags = view.add_action().tags;
            let lease = tags.as_ref().and_then(LeaseOwner::from_tags);
            let lease_until = tags
                .as_ref()
                .and_then(|t| t.get(LEASE_UNTIL_TAG).cloned().flatten())
                .and_then(|micros| micros.parse::<i64>().ok())
                .and_then(DateTime::from_timestamp_micros);
            files.push(QueueFile {
                remove: view.remove_action(true),
                earliest: stats.as_deref().and_then(earliest_lock),
                stats,
                lease,
                lease_until,
            });
        }
        files.sort_by_key(|f| f.earliest);
        Ok(files)
    }

    /// The earliest time lock in the queue as its files' statistics tell (the Unix epoch
    /// for a file without them), `None` when the queue is empty.
    pub(crate) fn earliest_lock(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(self
            .queue_files()?
            .iter()
            .map(|f| f.earliest.unwrap_or(DateTime::UNIX_EPOCH))
            .min())
    }

    /// Reads the files that may hold due rows, earliest first, and claims up to
    /// `request.limit` of the due rows (oldest lock first) in one commit. A commit that
    /// loses a race with another claim of the same files fails with a conflict.
    ///
    /// The lease invariant: a lease file is removed by exactly one commit, and that commit
    /// decides where its records go. Either its round settles it (after journaling, which
    /// decides the outcomes), or, once the lease has ended and the round is known to be
    /// over without settling it (fenced before it could journal, see
    /// [`Store::resolve_lease`]), a claim takes its records. A claim never takes rows from
    /// the file of a round that may still journal: it reports the round as `unresolved`.
    pub(crate) async fn claim_due(&mut self, request: ClaimRequest) -> Result<Found> {
        let files = self.queue_files()?;
        let resolved = match request.take {
            Take::Due => HashSet::new(),
            Take::Matching(_) => self.resolved_leases(&files).await?,
        };
        let scan = self.scan(&files, &request, &resolved).await?;
        let held = scan.held;
        let next_due = scan.next_due(&request);
        let Scan {
            due, kept, read, ..
        } = scan;
        if due.is_empty() {
            // Nothing to claim: leave the files as they are.
            return Ok(Found {
                next_due,
                held,
                ..Found::default()
            });
        }
        // Only the files the claim takes rows from are replaced.
        let touched: HashSet<usize> = due.iter().map(|(i, _)| *i).collect();
        let unresolved = self
            .unresolved_leases(touched.iter().map(|&i| &files[i]))
            .await?;
        if !unresolved.is_empty() {
            return Ok(Found {
                next_due,
                unresolved,
                held,
                ..Found::default()
            });
        }
        let (mut whole, rewritten) = split_touched(kept, &touched, request.keys.as_ref());
        if matches!(request.take, Take::Matching(_)) {
            // A copy would lock every row until the lease's end, even one locked later.
            whole.clear();
        }
        let (lease, rows) = self
            .write_lease(&files, &read, whole, due, &request)
            .await?;
        let kept_files = self
            .write_batches(
                Table::RetryQueue,
                rewritten
                    .iter()
                    .flat_map(|group| group.chunks(FILE_ROWS))
                    .map(QueueRow::to_batch),
            )
            .await?;
        let mut actions: Vec<Action> = touched
            .iter()
            .map(|&i| Action::Remove(files[i].remove.clone()))
            .collect();
        actions.extend(lease.iter().cloned().map(Action::Add));
        actions.extend(kept_files.into_iter().map(Action::Add));
        self.commit_claim(actions, &request, rows.len()).await?;
        Ok(Found {
            claim: Some(Claim {
                rows,
                lease: lease.iter().map(remove_of).collect(),
            }),
            next_due,
            unresolved: Vec::new(),
            held,
        })
    }

    /// The rounds holding lease files of `files` that are over (their application
    /// transaction on `retry_queue` reached their round): nothing of theirs can journal
    /// any more, so a cancel may take their rows before their lease ends.
    async fn resolved_leases(&self, files: &[QueueFile]) -> Result<HashSet<LeaseOwner>> {
        let owners: BTreeSet<&LeaseOwner> = files.iter().filter_map(|f| f.lease.as_ref()).collect();
        let unresolved: HashSet<LeaseOwner> = self
            .unresolved_leases(files.iter())
            .await?
            .into_iter()
            .collect();
        Ok(owners
            .into_iter()
            .filter(|o| !unresolved.contains(*o))
            .cloned()
            .collect())
    }

    /// Reads the files that may hold due rows of the request's keys, earliest first, and
    /// sorts their rows into the due ones it claims (up to the limit, oldest lock first) and
    /// the others.
    async fn scan(
        &self,
        files: &[QueueFile],
        request: &ClaimRequest,
        resolved: &HashSet<LeaseOwner>,
    ) -> Result<Scan> {
        if let Take::Matching(select) = &request.take {
            return self.scan_matching(files, request, select, resolved).await;
        }
        let store = self.table(Table::RetryQueue).log_store().object_store(None);
        let mut scan = Scan::default();
        for (i, file) in files.iter().enumerate() {
            let candidate = file.earliest.is_none_or(|t| t <= request.now);
            // Past the limit, read on only while a file may hold rows locked before the
            // newest lock the claim would take (rows locked at the same time are taken
            // in the order of their files).
            let needed = scan.due.len() < request.limit
                || request.limit > 0 && {
                    scan.due.sort_by(|a, b| oldest_first(&a.1, &b.1));
                    file.earliest
                        .is_none_or(|t| t < scan.due[request.limit - 1].1.process_after)
                };
            if !candidate || !needed {
                scan.unread_earliest = files[i..].iter().filter_map(|f| f.earliest).min();
                break;
            }
            let (bytes, rows) = read_file(store.clone(), file).await?;
            scan.read.insert(i, bytes);
            scan.sort_in(i, rows, |row| {
                request.takes(&row.sample_id) && row.process_after <= request.now
            });
        }
        Ok(scan.up_to(request.limit))
    }

    /// The scan of [`Take::Matching`]: every file but those under the live lease of a
    /// round that may still journal (whose matching rows it counts as held), until
    /// `request.limit` rows are taken.
    async fn scan_matching(
        &self,
        files: &[QueueFile],
        request: &ClaimRequest,
        select: &Arc<dyn Fn(&QueueRow) -> bool + Send + Sync>,
        resolved: &HashSet<LeaseOwner>,
    ) -> Result<Scan> {
        let store = self.table(Table::RetryQueue).log_store().object_store(None);
        let mut scan = Scan::default();
        for (i, file) in files.iter().enumerate() {
            if scan.due.len() >= request.limit {
                break;
            }
            // A cancel's lease file keeps rows locked past its lease: the tag tells when
            // the lease ends.
            let live = file
                .lease_until
                .or(file.earliest)
                .is_none_or(|t| t > request.now);
            let held = file
                .lease
                .as_ref()
                .is_some_and(|owner| live && !resolved.contains(owner));
            let (bytes, rows) = read_file(store.clone(), file).await?;
            if held {
                scan.held += rows
                    .iter()
                    .filter(|r| request.takes(&r.sample_id) && select(r))
                    .count();
                continue;
            }
            scan.read.insert(i, bytes);
            scan.sort_in(i, rows, |row| request.takes(&row.sample_id) && select(row));
        }
        Ok(scan.up_to(request.limit))
    }

    /// Writes the lease files of the `due` rows, tagged with the round that claims them: a
    /// file claimed `whole` is copied with only its time locks rewritten (when it can be),
    /// the other rows are written anew. Returns the lease files
    /// and the claimed rows, oldest lock first.
    async fn write_lease(
        &mut self,
        files: &[QueueFile],
        read: &HashMap<usize, Bytes>,
        mut whole: HashSet<usize>,
        due: Vec<(usize, QueueRow)>,
        request: &ClaimRequest,
    ) -> Result<(Vec<Add>, Vec<QueueRow>)> {
        let table = Table::RetryQueue;
        let tags = request.owner.tags(request.lease_until);
        let mut lease = Vec::new();
        let mut copied = HashSet::new();
        for &i in whole.iter() {
            if let Some((data, stats)) =
                leased_copy(&read[&i], files[i].stats.as_deref(), request.lease_until)?
            {
                let mut add = self.put_file(table, data, stats).await?;
                add.tags = Some(tags.clone());
                lease.push(add);
                copied.insert(i);
            }
        }
        whole.retain(|i| copied.contains(i));
        let (copied, encoded): (Vec<_>, Vec<_>) =
            due.into_iter().partition(|(i, _)| whole.contains(i));
        let encoded: Vec<QueueRow> = encoded.into_iter().map(|(_, row)| row).collect();
        let leased = encoded
            .chunks(FILE_ROWS)
            .map(|chunk| QueueRow::locked_batch(chunk, Some(request.lease_until)));
        lease.extend(
            self.write_batches(table, leased)
                .await?
                .into_iter()
                .map(|add| Add {
                    tags: Some(tags.clone()),
                    ..add
                }),
        );
        let mut rows: Vec<QueueRow> = copied.into_iter().map(|(_, row)| row).collect();
        rows.extend(encoded);
        rows.sort_by(oldest_first);
        Ok((lease, rows))
    }

    /// Commits a claim of `records` rows: `actions` remove the files it takes rows from and
    /// add its lease files and the rows it leaves.
    async fn commit_claim(
        &mut self,
        actions: Vec<Action>,
        request: &ClaimRequest,
        records: usize,
    ) -> Result<()> {
        let tag = CommitTag::operation("claim")
            .with("worker", request.owner.worker.as_str())
            .with("records", records)
            .with("due_at", request.now.to_rfc3339());
        // What the claim depends on is exactly the files it removes, and a concurrent
        // remove of any of them is a conflict whatever the predicate. A predicate that
        // matches no file says so to delta-rs' conflict checker: `process_after <= now`
        // would make every claim conflict with any other worker's claim of due rows (its
        // own shard's included), so sharded workers would never commit side by side. The
        // time lock is kept in the commit's `due_at` instead.
        let operation = DeltaOperation::Update {
            predicate: Some(sql(lit(false))?),
        };
        self.commit(Table::RetryQueue, actions, operation, &tag)
            .await?;
        Ok(())
    }

    /// The rounds among the leases of `files` that may still journal: a lease file may be
    /// taken only once its round is over without having settled it, which the round's
    /// application transaction on `retry_queue` tells (every round that ends, settled,
    /// fenced or recovered, commits it; a settle removes the lease files in that commit).
    async fn unresolved_leases(
        &self,
        files: impl Iterator<Item = &QueueFile>,
    ) -> Result<Vec<LeaseOwner>> {
        let owners: BTreeSet<&LeaseOwner> = files.filter_map(|f| f.lease.as_ref()).collect();
        let mut unresolved = Vec::new();
        for owner in owners {
            let done = self
                .txn_version(Table::RetryQueue, &app_id(&owner.worker))
                .await?
                .unwrap_or(0);
            if done < owner.round {
                unresolved.push(owner.clone());
            }
        }
        Ok(unresolved)
    }

    /// Extends `owner`'s lease to `until` (a heartbeat of a round whose calls run long): one
    /// commit replaces its lease files by copies with that time lock. Fails with
    /// [`Error::LeaseLost`] when the round is no longer sure to hold its records: it was
    /// fenced, or another commit removed a lease file. Returns the new lease files.
    pub(crate) async fn extend_lease(
        &mut self,
        owner: &LeaseOwner,
        held: &[Remove],
        until: DateTime<Utc>,
    ) -> Result<Vec<Remove>> {
        let lost = || Error::LeaseLost {
            worker: owner.worker.clone(),
            round: owner.round,
        };
        for conflicts in 0.. {
            self.refresh_table(Table::Attempts).await?;
            self.refresh_table(Table::RetryQueue).await?;
            if self.last_round(&owner.worker).await? >= owner.round {
                return Err(lost());
            }
            // Only the files this round claimed: a crashed process of the same worker may
            // have left lease files under the same round number, which are not ours.
            let ours: HashSet<&str> = held.iter().map(|r| r.path.as_str()).collect();
            let files: Vec<QueueFile> = self
                .queue_files()?
                .into_iter()
                .filter(|f| ours.contains(f.remove.path.as_str()))
                .collect();
            if files.len() != ours.len() || files.iter().any(|f| f.lease.as_ref() != Some(owner)) {
                return Err(lost());
            }
            let store = self.table(Table::RetryQueue).log_store().object_store(None);
            let tags = owner.tags(until);
            let mut actions = Vec::new();
            let mut extended = Vec::new();
            for file in &files {
                let (bytes, rows) = read_file(store.clone(), file).await?;
                let mut add = match leased_copy(&bytes, file.stats.as_deref(), until)? {
                    Some((data, stats)) => self.put_file(Table::RetryQueue, data, stats).await?,
                    None => {
                        let batch = QueueRow::locked_batch(&rows, Some(until));
                        let mut adds = self.write_batches(Table::RetryQueue, [batch]).await?;
                        adds.pop().ok_or_else(lost)?
                    }
                };
                add.tags = Some(tags.clone());
                actions.push(Action::Remove(file.remove.clone()));
                extended.push(remove_of(&add));
                actions.push(Action::Add(add));
            }
            let tag = CommitTag::operation("heartbeat")
                .with("worker", owner.worker.as_str())
                .with("round", owner.round)
                .with("lease_until", until.to_rfc3339());
            let operation = DeltaOperation::Update {
                predicate: Some(sql(lit(false))?),
            };
            match self
                .commit(Table::RetryQueue, actions, operation, &tag)
                .await
            {
                Ok(()) => return Ok(extended),
                Err(e) if e.is_conflict() && conflicts < 12 => {
                    self.pause_after_conflict(conflicts).await;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    /// The files that hold `owner`'s records under its lease, with their rows.
    pub(crate) async fn lease_files(
        &self,
        owner: &LeaseOwner,
    ) -> Result<Vec<(Remove, Vec<QueueRow>)>> {
        let store = self.table(Table::RetryQueue).log_store().object_store(None);
        let mut found = Vec::new();
        for file in self.queue_files()? {
            if file.lease.as_ref() == Some(owner) {
                let (_, rows) = read_file(store.clone(), &file).await?;
                found.push((file.remove, rows));
            }
        }
        Ok(found)
    }

    /// Appends new records to the queue in one commit, each batch (of at most
    /// [`FILE_ROWS`] rows) in a file of its own.
    pub(crate) async fn append_queue(
        &mut self,
        batches: impl IntoIterator<Item = Result<RecordBatch>>,
        tag: &CommitTag,
    ) -> Result<()> {
        self.append_new_ids(Table::RetryQueue, batches, tag).await
    }

    /// Appends rows whose ids are new to the tables (checked against the loaded versions)
    /// in one commit that advances `table`'s id sequence ([`IDS_APP`]): it conflicts with
    /// any other commit of new ids since the loaded version, never with a round's.
    pub(crate) async fn append_new_ids(
        &mut self,
        table: Table,
        batches: impl IntoIterator<Item = Result<RecordBatch>>,
        tag: &CommitTag,
    ) -> Result<()> {
        let ids = self.txn_version(table, IDS_APP).await?.unwrap_or(0) + 1;
        let adds = self.write_batches(table, batches).await?;
        let actions = adds.into_iter().map(Action::Add).collect();
        self.commit(table, actions, blind_append()?, &tag.with_ids(ids))
            .await
    }
}

/// The retried records of a round as batches of the queue, one (or more, past
/// [`FILE_ROWS`]) per run of equal retry counts, so records that come due together sit in
/// a file together. `retried` comes sorted by retry count.
pub(crate) fn retried_batches(retried: &[QueueRow]) -> Result<Vec<RecordBatch>> {
    retried
        .chunk_by(|a, b| a.retry_count == b.retry_count)
        .flat_map(|group| group.chunks(FILE_ROWS))
        .map(QueueRow::to_batch)
        .collect()
}

/// How a round's queue commit is recorded: as the MERGE by id it amounts to (deleting the
/// placed records, updating the retried ones), reading only the round's own lease files.
pub(crate) fn settle_operation(lease_until: DateTime<Utc>) -> Result<DeltaOperation> {
    let predicate = col("process_after").eq(lit(timestamp(lease_until)));
    let clause = |action: &str, predicate: &str| MergePredicate {
        action_type: action.to_owned(),
        predicate: Some(predicate.to_owned()),
    };
    Ok(DeltaOperation::Merge {
        predicate: Some(sql(predicate)?),
        merge_predicate: Some("target.sample_id = source.sample_id".to_owned()),
        matched_predicates: vec![
            clause("delete", "source.action = 'delete'"),
            clause("update", "source.action = 'retry'"),
        ],
        not_matched_predicates: Vec::new(),
        not_matched_by_source_predicates: Vec::new(),
    })
}

/// A blind append.
pub(crate) fn append() -> DeltaOperation {
    DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    }
}

/// An append that read nothing of the table: a predicate that matches no file tells Delta's
/// conflict check so, and a round removing files under it is no conflict (what it depends
/// on is its application transactions).
pub(crate) fn blind_append() -> Result<DeltaOperation> {
    Ok(DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: Some(sql(lit(false))?),
    })
}

impl Store {
    /// Uploads a finished data file of `table` under a new name; returns its add action.
    async fn put_file(&self, table: Table, data: Vec<u8>, stats: Option<String>) -> Result<Add> {
        let path = format!("part-00000-{:032x}-c000.snappy.parquet", unique_name());
        let size = i64::try_from(data.len()).unwrap_or(i64::MAX);
        self.table(table)
            .log_store()
            .object_store(None)
            .put(&deltalake::Path::from(path.as_str()), data.into())
            .await
            .map_err(|e| table_error(table)(e.into()))?;
        Ok(Add {
            path,
            partition_values: HashMap::new(),
            size,
            modification_time: Utc::now().timestamp_millis(),
            data_change: true,
            stats,
            tags: None,
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
            clustering_provider: None,
        })
    }
}

/// 128 random bits for a file name, unique across processes and hosts.
fn unique_name() -> u128 {
    use rand::{Rng, SeedableRng};
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = (nanos as u64) ^ (u64::from(std::process::id()) << 32) ^ count.rotate_left(17);
    rand::rngs::SmallRng::seed_from_u64(seed).random()
}

/// Oldest lock first; then oldest in the queue; then by id, so the order is total.
pub(crate) fn oldest_first(a: &QueueRow, b: &QueueRow) -> std::cmp::Ordering {
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

/// The SQL text of a commit's read predicate, as Delta's conflict check reads it back. A
/// predicate that does not render is an error: a commit without one would depend on
/// every file of the table.
fn sql(predicate: deltalake::datafusion::prelude::Expr) -> Result<String> {
    deltalake::delta_datafusion::expr::fmt_expr_to_sql(&predicate).map_err(|e| {
        table_error(Table::RetryQueue)(DeltaTableError::Generic(format!(
            "the read predicate {predicate} does not render as SQL: {e}"
        )))
    })
}

/// The `minValues.process_after` of a file's statistics (JSON, milliseconds).
fn earliest_lock(stats: &str) -> Option<DateTime<Utc>> {
    let stats: serde_json::Value = serde_json::from_str(stats).ok()?;
    let text = stats.get("minValues")?.get("process_after")?.as_str()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// One queue file's bytes and every row in it (at most [`FILE_ROWS`] rows when retrylake
/// wrote it).
async fn read_file(
    store: deltalake::logstore::ObjectStoreRef,
    file: &QueueFile,
) -> Result<(Bytes, Vec<QueueRow>)> {
    let fail = |e: DeltaTableError| table_error(Table::RetryQueue)(e);
    let bytes = read_object(&store, Table::RetryQueue, &file.remove.path).await?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
        .map_err(|e| fail(e.into()))?
        .build()
        .map_err(|e| fail(e.into()))?;
    let mut rows = Vec::new();
    for batch in reader {
        rows.extend(QueueRow::from_batch(&batch?)?);
    }
    Ok((bytes, rows))
}

/// A copy of a queue file with every `process_after` set to `lock`: the other columns'
/// encoded chunks are copied as they are, only the time lock is written anew. Returns the
/// file and its statistics, or `None` when the file is not one this can copy (its time
/// lock is not microseconds in an INT64 column).
fn leased_copy(
    bytes: &Bytes,
    stats: Option<&str>,
    lock: DateTime<Utc>,
) -> Result<Option<(Vec<u8>, Option<String>)>> {
    let fail = |e: ParquetError| table_error(Table::RetryQueue)(e.into());
    let options = ReadOptionsBuilder::new().with_page_index().build();
    let reader = SerializedFileReader::new_with_options(bytes.clone(), options).map_err(fail)?;
    let meta = reader.metadata();
    let schema = meta.file_metadata().schema_descr();
    let Some(at) = (0..schema.num_columns()).find(|&c| {
        let column = schema.column(c);
        column.path().string() == "process_after"
            && column.physical_type() == PhysicalType::INT64
            && matches!(
                column.logical_type_ref(),
                Some(LogicalType::Timestamp(t)) if matches!(t.unit, TimeUnit::MICROS)
            )
    }) else {
        return Ok(None);
    };
    // Copied chunks keep their page offsets (moved to where they land); a file without
    // them gets none for the new column either, as Parquet needs all or none.
    let offsets = |group: usize, column: usize| {
        meta.offset_index()
            .and_then(|o| o.get(group)?.get(column).cloned())
    };
    let indexed = (0..meta.num_row_groups())
        .all(|g| (0..schema.num_columns()).all(|c| c == at || offsets(g, c).is_some()));
    let props = super::schema::writer_properties(Table::RetryQueue)
        .into_builder()
        .set_offset_index_disabled(!indexed)
        .build();
    let props = Arc::new(props);
    let mut out = Vec::with_capacity(bytes.len());
    let mut writer =
        SerializedFileWriter::new(&mut out, schema.root_schema_ptr(), props).map_err(fail)?;
    for (g, group) in meta.row_groups().iter().enumerate() {
        let rows = usize::try_from(group.num_rows()).unwrap_or(0);
        let mut columns = writer.next_row_group().map_err(fail)?;
        for (c, chunk) in group.columns().iter().enumerate() {
            if c == at {
                let mut column = columns
                    .next_column()
                    .map_err(fail)?
                    .expect("the schema has this column");
                let levels = vec![1i16; rows];
                let defined = (schema.column(c).max_def_level() > 0).then_some(&levels[..]);
                column
                    .typed::<Int64Type>()
                    .write_batch(&vec![to_micros(lock); rows], defined, None)
                    .map_err(fail)?;
                column.close().map_err(fail)?;
            } else {
                let close = ColumnCloseResult {
                    bytes_written: u64::try_from(chunk.compressed_size()).unwrap_or(0),
                    rows_written: u64::try_from(group.num_rows()).unwrap_or(0),
                    metadata: chunk.clone(),
                    bloom_filter: None,
                    column_index: None,
                    offset_index: offsets(g, c).filter(|_| indexed),
                };
                columns.append_column(bytes, close).map_err(fail)?;
            }
        }
        columns.close().map_err(fail)?;
    }
    for kv in meta
        .file_metadata()
        .key_value_metadata()
        .into_iter()
        .flatten()
    {
        writer.append_key_value_metadata(kv.clone());
    }
    writer.close().map_err(fail)?;
    let stats = stats.and_then(|s| {
        let mut stats: serde_json::Value = serde_json::from_str(s).ok()?;
        let lock = serde_json::Value::from(lock.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
        for bound in ["minValues", "maxValues"] {
            if let Some(values) = stats.get_mut(bound).and_then(|v| v.as_object_mut()) {
                values.insert("process_after".into(), lock.clone());
            }
        }
        Some(stats.to_string())
    });
    Ok(Some((out, stats)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::kernel::transaction::{CommitConflictError, TransactionError};

    /// `n` fresh records, all due at the returned time.
    fn due_rows(n: usize) -> (DateTime<Utc>, Vec<QueueRow>) {
        let now = DateTime::parse_from_rfc3339("2025-11-24T14:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let rows = (0..n)
            .map(|i| QueueRow {
                sample_id: format!("S-{i}"),
                payload: Some("x".into()),
                error_msg: None,
                retry_count: 0,
                process_after: now,
                enqueued_at: now,
                snoozes: 0,
            })
            .collect();
        (now, rows)
    }

    /// Tables in a temp dir holding ten records due now, in one file.
    async fn queue_of_ten() -> (tempfile::TempDir, DateTime<Utc>, Vec<QueueRow>, Store) {
        let dir = tempfile::tempdir().unwrap();
        let (now, rows) = due_rows(10);
        let mut store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
        store
            .append_queue(
                [QueueRow::to_batch(&rows)],
                &CommitTag::operation("enqueue"),
            )
            .await
            .unwrap();
        (dir, now, rows, store)
    }

    #[tokio::test]
    async fn racing_claims_of_one_file_conflict_and_only_one_commits() {
        let (dir, now, rows, mut a) = queue_of_ten().await;
        let root = dir.path().to_str().unwrap();
        // Both read the same version; `a` commits its claim first.
        let mut b = Store::open(root).await.unwrap();
        let request = |worker: &str| claim_at(now, worker, 1);
        let first = a.claim_due(request("a")).await.unwrap();
        assert_eq!(first.claim.unwrap().rows.len(), 10);
        // The file was claimed whole, so it was copied with only the time locks rewritten:
        // every other column reads back as it was.
        let mut leased = a.read::<QueueRow>().await.unwrap();
        leased.sort_by(|x, y| x.sample_id.cmp(&y.sample_id));
        let mut expected: Vec<QueueRow> = rows
            .iter()
            .map(|r| QueueRow {
                process_after: request("a").lease_until,
                ..r.clone()
            })
            .collect();
        expected.sort_by(|x, y| x.sample_id.cmp(&y.sample_id));
        assert_eq!(leased, expected);
        let err = b.claim_due(request("b")).await.unwrap_err();
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
        let again = b.claim_due(request("b")).await.unwrap();
        assert!(again.claim.is_none());
        assert_eq!(again.next_due, Some(request("b").lease_until));
    }

    #[tokio::test]
    async fn claims_of_different_shards_commit_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let (now, rows) = due_rows(40);
        // Two shards: the keys whose last byte is even, and those whose last byte is odd.
        let group_of = |key: &str| u32::from(key.as_bytes().last().copied().unwrap_or(0) % 2);
        let shards = [0, 1].map(|own| KeyFilter {
            group_of: Arc::new(group_of),
            own,
        });
        // One file per shard, as a split claim or a settle leaves them.
        let files = shards.each_ref().map(|shard| {
            let of_shard: Vec<QueueRow> = rows
                .iter()
                .filter(|r| shard.takes(&r.sample_id))
                .cloned()
                .collect();
            QueueRow::to_batch(&of_shard)
        });
        let mut a = Store::open(root).await.unwrap();
        a.append_queue(files, &CommitTag::operation("enqueue"))
            .await
            .unwrap();
        // Both read the same version, both see due rows; each claims its shard, `b`
        // commits after `a` without re-reading: no conflict.
        let mut b = Store::open(root).await.unwrap();
        let request = |shard: &KeyFilter, worker: &str| ClaimRequest {
            now,
            limit: 100,
            keys: Some(shard.clone()),
            lease_until: now + chrono::Duration::minutes(15),
            owner: LeaseOwner {
                worker: worker.to_owned(),
                round: 1,
            },
            take: Take::Due,
        };
        let first = a.claim_due(request(&shards[0], "a")).await.unwrap();
        let second = b.claim_due(request(&shards[1], "b")).await.unwrap();
        let (first, second) = (first.claim.unwrap().rows, second.claim.unwrap().rows);
        assert!(first.iter().all(|r| shards[0].takes(&r.sample_id)));
        assert!(second.iter().all(|r| shards[1].takes(&r.sample_id)));
        assert_eq!(first.len() + second.len(), 40);
    }

    /// The claim of `worker`'s round `round`, at `now`, with a 15-minute lease.
    fn claim_at(now: DateTime<Utc>, worker: &str, round: i64) -> ClaimRequest {
        ClaimRequest {
            now,
            limit: 100,
            keys: None,
            lease_until: now + chrono::Duration::minutes(15),
            owner: LeaseOwner {
                worker: worker.to_owned(),
                round,
            },
            take: Take::Due,
        }
    }

    /// One successful attempt of each row, journaled as `worker`'s round `round`.
    fn successes(rows: &[QueueRow], worker: &str, round: i64) -> Vec<super::super::AttemptRow> {
        rows.iter()
            .map(|r| super::super::AttemptRow {
                round,
                worker: worker.to_owned(),
                sample_id: r.sample_id.clone(),
                retries_before: 0,
                outcome: super::super::AttemptKind::Success,
                error_msg: None,
                started_at: r.process_after,
                finished_at: r.process_after,
                duration_ms: 0,
                process_after: None,
                disposition: super::super::Disposition::Final,
                reason: None,
                retry_count: 0,
                payload: r.payload.clone(),
                response: None,
                rule: None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_lease_names_its_round_and_an_ended_one_is_fenced_before_it_is_taken() {
        let (dir, now, _, mut a) = queue_of_ten().await;
        let root = dir.path().to_str().unwrap();
        let claimed = a.claim_due(claim_at(now, "a", 1)).await.unwrap();
        let claimed = claimed.claim.unwrap();
        // Another process sees whose lease the file is under, also from a checkpoint.
        deltalake::checkpoints::create_checkpoint(a.table(Table::RetryQueue), None)
            .await
            .unwrap();
        let mut b = Store::open(root).await.unwrap();
        let owner = LeaseOwner {
            worker: "a".into(),
            round: 1,
        };
        let files = b.lease_files(&owner).await.unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].1.len(), 10);
        // Past the lease, `b` may not take the records while `a` could still journal.
        let later = now + chrono::Duration::minutes(16);
        let found = b.claim_due(claim_at(later, "b", 1)).await.unwrap();
        assert!(found.claim.is_none());
        assert_eq!(found.unresolved, vec![owner.clone()]);
        // Fenced, the round is over: its records go back as they were, and `b` takes them.
        b.resolve_lease(&owner, "b").await.unwrap();
        let taken = b.claim_due(claim_at(later, "b", 1)).await.unwrap();
        assert_eq!(taken.claim.unwrap().rows.len(), 10);
        // `a` wakes up: its journal commit loses, and nothing of its round lands.
        let settle = super::super::journal::Settle {
            lease: claimed.lease,
            retried: Vec::new(),
            lease_until: now + chrono::Duration::minutes(15),
        };
        let journal = successes(&claimed.rows, "a", 1);
        let tag = CommitTag::round("round", "a", 1);
        let err = a
            .commit_round(&journal, &tag, Some(&settle))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::LeaseLost { round: 1, .. }), "{err:?}");
        a.refresh().await.unwrap();
        assert!(a.read::<super::super::FinalRow>().await.unwrap().is_empty());
        assert!(
            a.read::<super::super::AttemptRow>()
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(a.read::<QueueRow>().await.unwrap().len(), 10);
    }

    #[tokio::test]
    async fn a_journaled_round_whose_lease_ended_is_completed_not_taken() {
        let (dir, now, _, mut a) = queue_of_ten().await;
        let root = dir.path().to_str().unwrap();
        let claimed = a
            .claim_due(claim_at(now, "a", 1))
            .await
            .unwrap()
            .claim
            .unwrap();
        // `a` journals, then stalls before applying its round.
        let journal = successes(&claimed.rows, "a", 1);
        a.append(&journal, &CommitTag::round("round", "a", 1))
            .await
            .unwrap();
        let mut b = Store::open(root).await.unwrap();
        let later = now + chrono::Duration::minutes(16);
        let found = b.claim_due(claim_at(later, "b", 1)).await.unwrap();
        assert_eq!(found.unresolved.len(), 1);
        // Resolving completes `a`'s round from its journal: no fence, every record final.
        b.resolve_lease(&found.unresolved[0], "b").await.unwrap();
        let again = b.claim_due(claim_at(later, "b", 1)).await.unwrap();
        assert!(again.claim.is_none() && again.unresolved.is_empty());
        b.refresh().await.unwrap();
        assert_eq!(b.read::<super::super::FinalRow>().await.unwrap().len(), 10);
        assert!(b.read::<QueueRow>().await.unwrap().is_empty());
    }

    #[test]
    fn read_predicates_render_at_the_limits_of_time() {
        for t in [
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            Utc::now(),
        ] {
            assert!(settle_operation(t).is_ok(), "{t}");
        }
        assert!(blind_append().is_ok());
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

    /// A round journaled by another retrylake (a newer one, in a rolling upgrade) whose
    /// dead letters carry a reason this version has no name for, and which died before
    /// applying it: any other worker completes it at its start (`recover_all`), as it did
    /// while `reason` was passed through as text.
    #[tokio::test]
    async fn a_journaled_round_with_an_unknown_dead_reason_is_still_completed() {
        use deltalake::arrow::array::{ArrayRef, StringArray};
        let (dir, now, _, mut a) = queue_of_ten().await;
        let root = dir.path().to_str().unwrap();
        let claimed = a
            .claim_due(claim_at(now, "a", 1))
            .await
            .unwrap()
            .claim
            .unwrap();
        let journal = successes(&claimed.rows, "a", 1);
        let batch = <super::super::AttemptRow as Rows>::to_batch(&journal).unwrap();
        let schema = batch.schema();
        let n = batch.num_rows();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for (name, value) in [
            ("outcome", "permanent"),
            ("disposition", "dead"),
            ("reason", "expired"),
        ] {
            let i = schema.index_of(name).unwrap();
            columns[i] = Arc::new(StringArray::from(vec![value; n]));
        }
        let batch = RecordBatch::try_new(schema, columns).unwrap();
        a.append_batch(Table::Attempts, batch, &CommitTag::round("round", "a", 1))
            .await
            .unwrap();
        // Another worker starts.
        let mut b = Store::open(root).await.unwrap();
        b.recover_all()
            .await
            .expect("a journaled round is completed whatever its reasons say");
        b.refresh().await.unwrap();
        assert!(b.read::<QueueRow>().await.unwrap().is_empty());
    }
}
