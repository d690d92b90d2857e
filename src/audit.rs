//! The queue's invariants, checked from the tables: every record in exactly one of
//! `retry_queue`, `final_results`, `dead_letter_queue`, and the journal agreeing with them.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::store::{
    AttemptKind, AttemptRow, DeadRow, Disposition, FinalRow, QueueRow, Store, Table,
};

/// What an audit found. A healthy queue has every list empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// Every id in the three tables.
    pub ids: BTreeSet<String>,
    /// Ids found in more than one table, or twice in one table, with where.
    pub doubled: Vec<(String, Vec<&'static str>)>,
    /// Final records without a journaled success (among those processed since the
    /// journal's retention last pruned it).
    pub unjournaled_finals: Vec<String>,
    /// Queued records whose retry count is not their number of journaled transient
    /// failures since their last redrive (among those enqueued since the journal's
    /// retention last pruned it).
    pub count_mismatches: Vec<String>,
}

impl Audit {
    /// Whether every invariant holds.
    pub fn is_clean(&self) -> bool {
        self.doubled.is_empty()
            && self.unjournaled_finals.is_empty()
            && self.count_mismatches.is_empty()
    }
}

/// Reads all four tables and checks the invariants.
pub async fn audit(store: &Store) -> Result<Audit> {
    let queue: Vec<QueueRow> = store.read().await?;
    let finals: Vec<FinalRow> = store.read().await?;
    let dead: Vec<DeadRow> = store.read().await?;
    let attempts: Vec<AttemptRow> = store.read().await?;
    // Journal rows finished before this may have been pruned by its retention: records
    // that old cannot be checked against the journal (a final's success finished at its
    // `processed_at`, a queued record's failures after its `enqueued_at`).
    let pruned = store.pruned_before(Table::Attempts).await?;
    let checkable = |t: DateTime<Utc>| pruned.is_none_or(|p| t >= p);

    let mut places: HashMap<&str, Vec<&'static str>> = HashMap::new();
    let all = queue
        .iter()
        .map(|r| (r.sample_id.as_str(), Table::RetryQueue))
        .chain(
            finals
                .iter()
                .map(|r| (r.sample_id.as_str(), Table::FinalResults)),
        )
        .chain(
            dead.iter()
                .map(|r| (r.sample_id.as_str(), Table::DeadLetterQueue)),
        );
    for (id, table) in all {
        places.entry(id).or_default().push(table.name());
    }
    let mut audit = Audit {
        ids: places.keys().map(|id| (*id).to_owned()).collect(),
        ..Audit::default()
    };
    audit.doubled = places
        .iter()
        .filter(|(_, tables)| tables.len() > 1)
        .map(|(id, tables)| ((*id).to_owned(), tables.clone()))
        .collect();
    audit.doubled.sort();

    // Per id: transient failures since its last redrive, and whether it ever succeeded.
    let mut ordered: Vec<&AttemptRow> = attempts.iter().collect();
    ordered.sort_by_key(|a| {
        (
            a.started_at,
            a.retries_before,
            a.outcome == AttemptKind::Redrive,
        )
    });
    let mut journaled: HashMap<&str, (usize, bool)> = HashMap::new();
    for a in ordered {
        let entry = journaled.entry(a.sample_id.as_str()).or_default();
        match (a.outcome, a.disposition) {
            (AttemptKind::Redrive, _) => entry.0 = 0,
            // A retry counted (a snooze counts none; a rule may retry a permanent failure).
            (_, Disposition::Retry) => entry.0 += 1,
            (AttemptKind::Success, _) => entry.1 = true,
            _ => {}
        }
    }
    audit.unjournaled_finals = finals
        .iter()
        .filter(|f| checkable(f.processed_at))
        .filter(|f| !journaled.get(f.sample_id.as_str()).is_some_and(|j| j.1))
        .map(|f| f.sample_id.clone())
        .collect();
    audit.count_mismatches = queue
        .iter()
        .filter(|q| checkable(q.enqueued_at))
        .filter(|q| {
            journaled.get(q.sample_id.as_str()).map_or(0, |j| j.0) != q.retry_count as usize
        })
        .map(|q| q.sample_id.clone())
        .collect();
    Ok(audit)
}
