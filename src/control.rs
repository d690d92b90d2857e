//! Operator controls: pause and resume the queue (a table property of `retry_queue`, so
//! every worker on every host obeys it), and cancel queued records (a claim and a
//! journaled round, like a worker's, so a cancel is crash-safe and never takes a record a
//! round holds under its live lease).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::round::{self, RoundConfig};
use crate::store::due::Take;
use crate::store::journal::Settle;
use crate::store::{
    AttemptKind, AttemptRow, CommitTag, DeadReason, Disposition, QueueRow, Store, Table,
    table_error,
};

/// The worker name under which cancels are journaled.
pub const CANCEL_WORKER: &str = "cancel";

/// Most bytes of a pause's or a cancel's reason.
pub const MAX_REASON_LEN: usize = 4096;

/// The table properties of `retry_queue` that hold the pause.
const PAUSED: &str = "retrylake.paused";
const PAUSED_UNTIL: &str = "retrylake.paused.until";
const PAUSED_REASON: &str = "retrylake.paused.reason";
const PAUSED_BY: &str = "retrylake.paused.by";
const PAUSED_AT: &str = "retrylake.paused.at";

/// A pause of the queue: no round claims records while it lasts; enqueues, redrives and
/// cancels go on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pause {
    /// When it ends by itself; `None` until a resume.
    pub until: Option<DateTime<Utc>>,
    /// Why, as the operator said.
    pub reason: Option<String>,
    /// Who paused: the operating-system user and host (`user@host`).
    pub by: String,
    /// When it was paused.
    pub at: DateTime<Utc>,
}

impl Pause {
    /// Whether the pause holds at `now`.
    pub fn holds_at(&self, now: DateTime<Utc>) -> bool {
        self.until.is_none_or(|until| until > now)
    }
}

/// Checks an operator's reason: at most [`MAX_REASON_LEN`] bytes, no control character.
pub(crate) fn check_reason(reason: Option<&str>) -> Result<()> {
    let Some(reason) = reason else {
        return Ok(());
    };
    if reason.len() > MAX_REASON_LEN {
        return Err(Error::InvalidConfig(format!(
            "--reason is {} bytes; at most {MAX_REASON_LEN}",
            reason.len()
        )));
    }
    if reason.chars().any(char::is_control) {
        return Err(Error::InvalidConfig(
            "--reason holds a control character (newline, tab, NUL, ...)".into(),
        ));
    }
    Ok(())
}

/// Who runs this process, for the history: `$USER@host`.
pub(crate) fn operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into());
    let clean = |s: String| -> String {
        s.chars()
            .filter(|c| !c.is_control())
            .take(256)
            .collect::<String>()
    };
    format!("{}@{}", clean(user), clean(host))
}

impl Store {
    /// The queue's pause as `retry_queue`'s loaded version records it (ended or not), or
    /// `None` when it is not paused.
    pub fn pause(&self) -> Result<Option<Pause>> {
        let table = Table::RetryQueue;
        let snapshot = self.table(table).snapshot().map_err(table_error(table))?;
        let config = snapshot.metadata().configuration();
        if config.get(PAUSED).map(String::as_str) != Some("true") {
            return Ok(None);
        }
        let time = |key: &str| {
            config
                .get(key)
                .filter(|v| !v.is_empty())
                .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        // Another tool may have written anything: no control character reaches a terminal.
        let text = |key: &str| {
            config
                .get(key)
                .map(|v| {
                    v.chars()
                        .filter(|c| !c.is_control())
                        .take(MAX_REASON_LEN)
                        .collect::<String>()
                })
                .filter(|v| !v.is_empty())
        };
        Ok(Some(Pause {
            until: time(PAUSED_UNTIL),
            reason: text(PAUSED_REASON),
            by: text(PAUSED_BY).unwrap_or_default(),
            at: time(PAUSED_AT).unwrap_or(DateTime::UNIX_EPOCH),
        }))
    }

    /// Pauses the queue (`Some`) or resumes it (`None`): one commit that sets
    /// `retry_queue`'s table properties, `pause` or `resume` in its history with who and
    /// why. A round that claims meanwhile conflicts with it, reads again, and finds the
    /// queue paused.
    pub(crate) async fn set_pause(&mut self, pause: Option<&Pause>) -> Result<()> {
        let table = Table::RetryQueue;
        let (properties, tag) = match pause {
            Some(p) => {
                let until = p.until.map(|t| t.to_rfc3339()).unwrap_or_default();
                let reason = p.reason.clone().unwrap_or_default();
                let tag = CommitTag::operation("pause")
                    .with("by", p.by.as_str())
                    .with("until", until.as_str())
                    .with("reason", reason.as_str());
                let properties = HashMap::from([
                    (PAUSED.to_owned(), "true".to_owned()),
                    (PAUSED_UNTIL.to_owned(), until),
                    (PAUSED_REASON.to_owned(), reason),
                    (PAUSED_BY.to_owned(), p.by.clone()),
                    (PAUSED_AT.to_owned(), p.at.to_rfc3339()),
                ]);
                (properties, tag)
            }
            None => {
                let properties = HashMap::from([
                    (PAUSED.to_owned(), "false".to_owned()),
                    (PAUSED_UNTIL.to_owned(), String::new()),
                    (PAUSED_REASON.to_owned(), String::new()),
                ]);
                (
                    properties,
                    CommitTag::operation("resume").with("by", operator()),
                )
            }
        };
        for conflicts in 0.. {
            let result = self
                .table(table)
                .clone()
                .set_tbl_properties()
                .with_properties(properties.clone())
                .with_raise_if_not_exists(false)
                .with_commit_properties(tag.properties())
                .await;
            match result.map_err(table_error(table)) {
                Ok(updated) => {
                    self.replace_table(table, updated);
                    return Ok(());
                }
                Err(e) if e.is_conflict() && conflicts < 12 => {
                    self.retry_after_conflict(table, conflicts).await?;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }
}

/// Which queued records to cancel: every filter given must hold.
#[derive(Debug, Clone, Default)]
pub struct CancelFilter {
    /// Only these ids.
    pub ids: Vec<String>,
    /// Only records whose last error is exactly this.
    pub error_msg: Option<String>,
    /// Only records enqueued at least this long ago.
    pub older_than: Option<Duration>,
    /// Every record, when no other filter is given (a cancel without a filter is refused
    /// unless this is set).
    pub all: bool,
    /// Why, written as the dead letters' `error_msg` (default `cancelled by user@host`).
    pub reason: Option<String>,
}

impl CancelFilter {
    fn check(&self) -> Result<()> {
        let filtered =
            !self.ids.is_empty() || self.error_msg.is_some() || self.older_than.is_some();
        if !filtered && !self.all {
            return Err(Error::InvalidConfig(
                "cancel needs --id, --error-msg or --older-than (or --all for every queued record)"
                    .into(),
            ));
        }
        check_reason(self.reason.as_deref())
    }

    /// The filter as a predicate on queue rows at `now`, the time the cancel began: only
    /// records enqueued by then, so a cancel ends while others keep enqueueing.
    fn select(&self, now: DateTime<Utc>) -> Arc<dyn Fn(&QueueRow) -> bool + Send + Sync> {
        let ids: Option<HashSet<String>> =
            (!self.ids.is_empty()).then(|| self.ids.iter().cloned().collect());
        let error = self.error_msg.clone();
        let before = self.older_than.map(|age| {
            now.checked_sub_signed(
                chrono::Duration::from_std(age).unwrap_or(chrono::TimeDelta::MAX),
            )
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
        });
        Arc::new(move |row: &QueueRow| {
            row.enqueued_at <= now
                && ids.as_ref().is_none_or(|ids| ids.contains(&row.sample_id))
                && error
                    .as_ref()
                    .is_none_or(|e| row.error_msg.as_ref() == Some(e))
                && before.is_none_or(|before| row.enqueued_at <= before)
        })
    }
}

/// What a cancel did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CancelReport {
    /// The cancel's journal rounds (one per [`FILE_ROWS`](crate::store::FILE_ROWS)
    /// records).
    pub rounds: Vec<i64>,
    /// Records moved to `dead_letter_queue` with reason `cancelled`.
    pub cancelled: usize,
    /// Matching records a running round holds under its lease, left to it: cancel again
    /// once it has placed them (they may be final by then).
    pub held: usize,
}

/// How long a cancel's claim holds its records: it calls nothing, so only a cancel that
/// dies between its claim and its journal leaves them locked this long.
const CANCEL_LEASE: Duration = Duration::from_secs(120);

/// How often a cancel whose journal lost to another cancel's is tried again.
const CANCEL_RETRIES: u32 = 12;

/// Cancels the queued records `filter` matches: each batch is claimed like a round's
/// records (so a record a live round holds is left to it, counted as held), journaled as
/// `cancel`, and placed in `dead_letter_queue` with reason `cancelled`.
pub(crate) async fn cancel(
    store: &mut Store,
    clock: &dyn Clock,
    filter: &CancelFilter,
) -> Result<CancelReport> {
    filter.check()?;
    let reason = filter
        .reason
        .clone()
        .unwrap_or_else(|| format!("cancelled by {}", operator()));
    let config = RoundConfig {
        lease: CANCEL_LEASE,
        ..RoundConfig::default()
    };
    let mut report = CancelReport::default();
    let mut lost = 0;
    let started = clock.now();
    let now = crate::clock::floor_millis(started);
    loop {
        store.refresh().await?;
        store.recover_all().await?;
        let take = Take::Matching(filter.select(started));
        let claimed = round::claim(store, clock, CANCEL_WORKER, &config, take).await?;
        report.held = claimed.found.held;
        let Some(claim) = claimed.found.claim else {
            if !claimed.found.unresolved.is_empty() {
                return Err(Error::InvalidConfig(
                    "cancel could not resolve the rounds holding the records; try again".into(),
                ));
            }
            break;
        };
        let round = claimed.round;
        let rows: Vec<AttemptRow> = claim
            .rows
            .into_iter()
            .map(|row| AttemptRow {
                round,
                worker: CANCEL_WORKER.to_owned(),
                sample_id: row.sample_id,
                retries_before: row.retry_count,
                outcome: AttemptKind::Cancel,
                error_msg: Some(reason.clone()),
                started_at: now,
                finished_at: now,
                duration_ms: 0,
                process_after: None,
                disposition: Disposition::Dead,
                reason: Some(DeadReason::Cancelled),
                retry_count: row.retry_count,
                payload: row.payload,
                response: None,
                rule: None,
            })
            .collect();
        let settle = Settle {
            lease: claim.lease,
            retried: Vec::new(),
            lease_until: claimed.lease_until,
        };
        let tag = CommitTag::round("cancel", CANCEL_WORKER, round)
            .with("cancelled", rows.len())
            .with("by", operator());
        match store.commit_round(&rows, &tag, Some(&settle)).await {
            Ok(_) => {
                report.rounds.push(round);
                report.cancelled += rows.len();
            }
            // Another cancel journaled this round first: its claim and ours may differ,
            // and ours is taken up again once the other settles.
            Err(Error::LeaseLost { .. }) if lost < CANCEL_RETRIES => {
                store.pause_after_conflict(lost).await;
                lost += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}
