//! Redrive: move dead letters back into the queue (SQS's redrive, Sidekiq's "retry all"),
//! through the same journal as a round, so an interrupted redrive loses and doubles nothing.

use chrono::{DateTime, Utc};
use deltalake::arrow::array::StringArray;
use deltalake::datafusion::prelude::{col, lit};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::{
    AttemptKind, AttemptRow, CommitTag, DeadReason, DeadRow, Disposition, Store, Table,
    collect_rows,
};

/// The worker name under which redrives are journaled.
pub const REDRIVE_WORKER: &str = "redrive";

/// Which dead letters to redrive. Empty filters match every dead letter.
#[derive(Debug, Clone, Default)]
pub struct RedriveFilter {
    /// Only this reason.
    pub reason: Option<DeadReason>,
    /// Only this exact error message.
    pub error_msg: Option<String>,
    /// Only these ids.
    pub ids: Vec<String>,
    /// At most this many, oldest first.
    pub limit: Option<usize>,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RedriveReport {
    /// The redrive's journal round, `None` when nothing matched.
    pub round: Option<i64>,
    /// Dead letters moved back into `retry_queue`, due now with `retry_count` 0.
    pub redriven: usize,
}

pub(crate) async fn redrive(
    store: &mut Store,
    now: DateTime<Utc>,
    filter: &RedriveFilter,
) -> Result<RedriveReport> {
    for conflicts in 0.. {
        match redrive_once(store, now, filter).await {
            // Another redrive journaled the same round first: read the dead letters again.
            Err(Error::LeaseLost { .. }) if conflicts < REDRIVE_RETRIES => {
                store.pause_after_conflict(conflicts).await;
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}

/// How often a redrive that raced another is tried again.
const REDRIVE_RETRIES: u32 = 12;

async fn redrive_once(
    store: &mut Store,
    now: DateTime<Utc>,
    filter: &RedriveFilter,
) -> Result<RedriveReport> {
    // Whole milliseconds, so the queue files' statistics hold the time lock exactly.
    let now = crate::clock::floor_millis(now);
    store.refresh().await?;
    // Complete every half-applied round first: a record a round has dead-lettered but
    // not yet taken out of the queue is in both, and must not be redriven meanwhile.
    store.recover_all().await?;
    let (_ctx, mut frame) = store.frame(Table::DeadLetterQueue).await?;
    if let Some(reason) = &filter.reason {
        frame = frame.filter(col("reason").eq(lit(reason.as_str())))?;
    }
    if let Some(error) = &filter.error_msg {
        frame = frame.filter(col("error_msg").eq(lit(error.as_str())))?;
    }
    if !filter.ids.is_empty() {
        let ids = filter.ids.iter().map(|id| lit(id.as_str())).collect();
        frame = frame.filter(col("sample_id").in_list(ids, false))?;
    }
    let frame = frame
        .sort(vec![
            col("failed_at").sort(true, false),
            col("sample_id").sort(true, false),
        ])?
        .limit(0, filter.limit)?;
    let mut dead: Vec<DeadRow> = collect_rows(frame).await?;
    // A dead letter still in the queue belongs to a round that has not settled yet (a live
    // one, between its commits): it is redriven once that round is done.
    store.refresh_table(Table::RetryQueue).await?;
    let ids = StringArray::from_iter_values(dead.iter().map(|d| d.sample_id.as_str()));
    let settling = store.ids_in(Table::RetryQueue, &ids).await?;
    if !settling.is_empty() {
        tracing::warn!(
            records = settling.len(),
            "{} dead letters are still in retry_queue under a round's lease; not redriven now",
            settling.len()
        );
        dead.retain(|d| !settling.contains(&d.sample_id));
    }
    if dead.is_empty() {
        return Ok(RedriveReport::default());
    }
    let round = store.last_round(REDRIVE_WORKER).await? + 1;
    let rows: Vec<AttemptRow> = dead
        .into_iter()
        .map(|d| AttemptRow {
            round,
            worker: REDRIVE_WORKER.to_owned(),
            sample_id: d.sample_id,
            retries_before: d.retry_count,
            outcome: AttemptKind::Redrive,
            error_msg: d.error_msg,
            // The dead letter it moves: recovery deletes exactly that one, never a newer
            // dead letter of the same record.
            started_at: d.failed_at,
            finished_at: now,
            duration_ms: 0,
            process_after: Some(now),
            disposition: Disposition::Redrive,
            reason: Some(d.reason),
            retry_count: 0,
            payload: d.payload,
            response: None,
            rule: None,
        })
        .collect();
    let tag = CommitTag::round("redrive", REDRIVE_WORKER, round).with("redriven", rows.len());
    store.commit_round(&rows, &tag, None).await?;
    Ok(RedriveReport {
        round: Some(round),
        redriven: rows.len(),
    })
}
