//! Enqueue: validate an input file whole, then add its new records to `retry_queue`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use deltalake::arrow::array::StringArray;
use serde::Serialize;

use crate::clock::floor_millis;
use crate::error::{Error, Result};
use crate::input::{Fields, InputFormat, ParsedInput, Records, read_input, synthetic_id};
use crate::store::{CommitTag, DeadReason, DeadRow, FILE_ROWS, QueueRow, Rows, Store, Table};

/// How to read and admit an input file.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// The format; by the file's extension when `None`.
    pub format: Option<InputFormat>,
    /// The id and payload fields.
    pub fields: Fields,
    /// Dead-letter invalid records (reason `invalid_input`) instead of refusing the file.
    pub skip_invalid: bool,
}

/// What an enqueue did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EnqueueReport {
    /// Records read from the input, valid or not.
    pub read: usize,
    /// Records added to `retry_queue`.
    pub enqueued: usize,
    /// Records skipped because their id is already in a table.
    pub skipped_existing: usize,
    /// Invalid records sent to the dead-letter queue.
    pub invalid: usize,
}

/// Reads `path` and enqueues its new records as due at `now`. Writes nothing unless the
/// whole input is valid (or `skip_invalid` is set).
pub(crate) async fn enqueue(
    store: &mut Store,
    now: DateTime<Utc>,
    path: &Path,
    options: &EnqueueOptions,
) -> Result<EnqueueReport> {
    let format = options
        .format
        .unwrap_or_else(|| InputFormat::from_path(path));
    let input = read_input(path, format, &options.fields)?;
    enqueue_parsed(store, now, path, input, options.skip_invalid).await
}

/// Enqueues the records of an input already read (from `path`, which names it in errors,
/// dead letters and the commit) as due at `now`. Writes nothing unless the whole input is
/// valid (or `skip_invalid` is set).
pub(crate) async fn enqueue_parsed(
    store: &mut Store,
    now: DateTime<Utc>,
    path: &Path,
    input: ParsedInput,
    skip_invalid: bool,
) -> Result<EnqueueReport> {
    // Whole milliseconds, so the files' statistics hold the time lock exactly.
    let now = floor_millis(now);
    let fail = |message: String| Error::InvalidInput {
        path: path.to_path_buf(),
        message,
    };
    if !input.invalid.is_empty() && !skip_invalid {
        let shown: Vec<String> = input
            .invalid
            .iter()
            .take(5)
            .map(|i| format!("line {}: {}", i.line, i.error))
            .collect();
        let more = input.invalid.len().saturating_sub(shown.len());
        let more = if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        };
        return Err(fail(format!(
            "{} invalid record(s), nothing enqueued (use --skip-invalid to dead-letter them): {}{more}",
            input.invalid.len(),
            shown.join("; ")
        )));
    }

    if !all_distinct(&input.records).map_err(fail)? {
        return Err(fail(duplicate_ids(&input.records)));
    }

    let dead: Vec<DeadRow> = input
        .invalid
        .iter()
        .map(|i| DeadRow {
            sample_id: i.sample_id.clone().unwrap_or_else(|| synthetic_id(path, i)),
            payload: i.raw.clone(),
            error_msg: Some(format!("line {}: {}", i.line, i.error)),
            retry_count: 0,
            failed_at: now,
            reason: DeadReason::InvalidInput,
        })
        .collect();
    // Built once, for every check of which ids the tables already hold.
    let ids = StringArray::from_iter_values(
        input
            .records
            .ids()
            .map(|(_, id)| id)
            .chain(dead.iter().map(|d| d.sample_id.as_str())),
    );
    let tag = CommitTag::operation("enqueue").with("source", path.display().to_string());
    let mut report = EnqueueReport {
        read: input.records.len() + input.invalid.len(),
        ..EnqueueReport::default()
    };
    for conflicts in 0.. {
        // The queue first: a round adds a record to `final_results` or the dead letters
        // before it leaves the queue, so a record moving meanwhile is seen in one of them.
        for table in [
            Table::RetryQueue,
            Table::FinalResults,
            Table::DeadLetterQueue,
        ] {
            store.refresh_table(table).await?;
        }
        let existing = existing_ids(store, &ids).await?;
        let dead: Vec<&DeadRow> = dead
            .iter()
            .filter(|d| !existing.contains(&d.sample_id))
            .collect();
        // The records to add, in input order: found chunk by chunk rather than listed whole.
        let new = |i: &usize| existing.is_empty() || !existing.contains(input.records.id(*i).1);
        let queued = (0..input.records.len()).filter(new).count();
        let tag = tag
            .clone()
            .with("enqueued", queued)
            .with("invalid", dead.len());
        // What an earlier pass committed is among the ids found now.
        let committed_before = report.enqueued + report.invalid;
        // Each commit of new ids conflicts with any other since the version it read (an
        // enqueue racing this one, a redrive): then the ids are checked again. The queue's
        // commit comes first and is made even with no record for it, so that its id
        // sequence orders this enqueue against a redrive's insert. If the process dies
        // between the two commits, enqueueing the file again skips what landed and adds
        // the rest.
        let committed = async {
            if queued == 0 && dead.is_empty() {
                return Ok(());
            }
            let records = &input.records;
            let unread = |e: std::io::Error| {
                fail(format!(
                    "cannot read back the payloads set aside in a temporary file: {e}"
                ))
            };
            let mut indices = (0..records.len()).filter(new).peekable();
            let chunks = std::iter::from_fn(|| {
                indices.peek()?;
                Some(indices.by_ref().take(FILE_ROWS).collect::<Vec<usize>>())
            });
            let batches = chunks.map(|chunk| {
                // The chunk's records ascend: their payloads lie in one stretch of the
                // input's, read at once unless most of it was skipped (ids already known).
                let (first, last) = (chunk[0], chunk[chunk.len() - 1]);
                if last - first < 2 * chunk.len() {
                    let window = records.window(first..last + 1).map_err(unread)?;
                    let rows = chunk.iter().map(|&i| {
                        let r = window.get(i);
                        (r.sample_id, r.payload)
                    });
                    QueueRow::new_batch(rows, now)
                } else {
                    let windows = chunk
                        .iter()
                        .map(|&i| records.window(i..i + 1))
                        .collect::<std::io::Result<Vec<_>>>()
                        .map_err(unread)?;
                    let rows = chunk.iter().zip(&windows).map(|(&i, w)| {
                        let r = w.get(i);
                        (r.sample_id, r.payload)
                    });
                    QueueRow::new_batch(rows, now)
                }
            });
            store.append_queue(batches, &tag).await?;
            report.enqueued += queued;
            if !dead.is_empty() {
                let rows: Vec<DeadRow> = dead.iter().map(|d| (*d).clone()).collect();
                store
                    .append_new_ids(Table::DeadLetterQueue, [DeadRow::to_batch(&rows)], &tag)
                    .await?;
                report.invalid += dead.len();
            }
            Ok::<_, Error>(())
        }
        .await;
        match committed {
            Err(e) if e.is_conflict() && conflicts < ENQUEUE_RETRIES => {
                tracing::debug!(
                    conflicts,
                    "enqueue raced another commit of new ids; checking again"
                );
                store.pause_after_conflict(conflicts).await;
            }
            Err(e) => return Err(e),
            Ok(()) => {
                report.skipped_existing = existing.len().saturating_sub(committed_before);
                break;
            }
        }
    }
    Ok(report)
}

/// How often an enqueue that raced another commit of new ids checks them again.
const ENQUEUE_RETRIES: u32 = 20;

/// Whether every record's id differs from the others'. The set is of record numbers keyed
/// by the ids' hashes (4 bytes a record where a set of ids takes 16), so a large input
/// costs little more than its ids.
fn all_distinct(records: &Records) -> std::result::Result<bool, String> {
    use std::hash::BuildHasher;
    let Ok(n) = u32::try_from(records.len()) else {
        return Err(format!(
            "{} records, more than {} in one input: split it",
            records.len(),
            u32::MAX
        ));
    };
    let hasher = foldhash::fast::RandomState::default();
    let id = |i: u32| records.id(i as usize).1;
    let mut seen = hashbrown::HashTable::<u32>::with_capacity(records.len());
    for i in 0..n {
        let hash = hasher.hash_one(id(i));
        match seen.entry(hash, |&j| id(j) == id(i), |&j| hasher.hash_one(id(j))) {
            hashbrown::hash_table::Entry::Occupied(_) => return Ok(false),
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
    }
    Ok(true)
}

/// The error for an input that holds the same id more than once, naming the lines.
fn duplicate_ids(records: &Records) -> String {
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    let mut duplicates = Vec::new();
    for (line, id) in records.ids() {
        if let Some(first) = first_line.insert(id, line) {
            duplicates.push(format!("'{id}' on lines {first} and {line}"));
        }
    }
    let count = duplicates.len();
    duplicates.truncate(5);
    format!(
        "{count} duplicate id(s), nothing enqueued: {}",
        duplicates.join("; ")
    )
}

/// The ids among `ids` already in `retry_queue`, `final_results` or `dead_letter_queue`.
async fn existing_ids(store: &Store, ids: &StringArray) -> Result<HashSet<String>> {
    let mut found = HashSet::new();
    for table in [
        Table::RetryQueue,
        Table::FinalResults,
        Table::DeadLetterQueue,
    ] {
        found.extend(store.ids_in(table, ids).await?);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(ids: &[String]) -> Records {
        let mut records = Records::default();
        for (line, id) in ids.iter().enumerate() {
            records.push(line + 1, id, Some("p"));
        }
        records
    }

    #[test]
    fn the_duplicate_check_finds_one_repeated_id_among_many_and_none_where_all_differ() {
        let mut ids: Vec<String> = (0..50_000).map(|i| format!("S-{i}")).collect();
        assert_eq!(all_distinct(&records(&ids)), Ok(true));
        // Prefixes and lengths that differ by one character are different ids.
        ids.extend(["S-1x".to_owned(), "S-".to_owned(), "S-10000 ".to_owned()]);
        assert_eq!(all_distinct(&records(&ids)), Ok(true));
        ids.push("S-49999".to_owned());
        assert_eq!(all_distinct(&records(&ids)), Ok(false));
        assert_eq!(all_distinct(&records(&[])), Ok(true));
    }
}
