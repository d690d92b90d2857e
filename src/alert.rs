//! Alerts when records die (`--on-dead-letter`): the dead letters of each commit of
//! `dead_letter_queue` (a round's, a cancel's, an enqueue's invalid records) go to a hook,
//! a command or a webhook, after the commit and apart from the rounds, at least once.
//!
//! How far delivery got is an application transaction of `dead_letter_queue`
//! ([`ALERTS_APP`], the last table version delivered), advanced after each delivery: a
//! process that dies, or a hook that fails, leaves it behind, and the next delivery
//! starts again from there, with the same idempotency key for the same alert. The log
//! entries of the versions not yet delivered are kept by the queue's upkeep.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deltalake::logstore::commit_uri_from_version;
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::processor::{CommandProcessor, HttpProcessor, Processor, Record};
use crate::store::commit::ALERTS_APP;
use crate::store::due::blind_append;
use crate::store::{
    AttemptRow, CommitTag, DeadReason, DeadRow, Rows, Store, Table, collect_rows, read_object,
    table_error,
};

/// Most dead letters in one alert; a commit with more is delivered in several.
pub const ALERT_BATCH: usize = 1000;

/// Where dead-letter alerts go.
#[derive(Debug, Clone)]
pub enum DeadLetterHook {
    /// `sh -c COMMAND`, the alert as JSON on stdin and its key in
    /// `RETRYLAKE_IDEMPOTENCY_KEY`; exit 0 is delivered.
    Command(String),
    /// A POST of the alert as JSON with an `Idempotency-Key` header; a 2xx is delivered.
    Webhook(String),
}

impl FromStr for DeadLetterHook {
    type Err = Error;

    /// An `http://` or `https://` URL is a webhook; anything else a shell command.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Error::InvalidConfig(
                "--on-dead-letter is empty: give a command or an http(s):// URL".into(),
            ));
        }
        if s.contains('\0') {
            return Err(Error::InvalidConfig(
                "--on-dead-letter holds a NUL byte, which no command or URL can".into(),
            ));
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            reqwest::Url::parse(s).map_err(|e| {
                Error::InvalidConfig(format!("--on-dead-letter is not a valid URL: {e}"))
            })?;
            return Ok(DeadLetterHook::Webhook(s.to_owned()));
        }
        Ok(DeadLetterHook::Command(s.to_owned()))
    }
}

/// One alert: dead letters of one commit of `dead_letter_queue`.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterAlert {
    /// The same for every delivery of this alert (also the `Idempotency-Key` header).
    pub idempotency_key: String,
    /// The version of `dead_letter_queue` that added them.
    pub table_version: i64,
    /// What committed them: `round`, `cancel`, `enqueue`, `recover`.
    pub job: Option<String>,
    /// The worker whose round it was.
    pub worker: Option<String>,
    /// The round.
    pub round: Option<i64>,
    /// The dead letters (at most [`ALERT_BATCH`]).
    pub dead_letters: Vec<AlertedLetter>,
}

/// A dead letter as an alert carries it.
#[derive(Debug, Clone, Serialize)]
pub struct AlertedLetter {
    /// The record's id.
    pub sample_id: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// Its last error.
    pub error_msg: Option<String>,
    /// Its retry count.
    pub retry_count: i32,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
    /// Its payload.
    pub payload: Option<String>,
}

/// Delivers dead-letter alerts to a hook.
pub struct Alerts {
    hook: Hook,
}

enum Hook {
    Command(CommandProcessor),
    Webhook(Box<HttpProcessor>),
}

/// Most versions without dead letters the cursor stays behind.
pub(crate) const CURSOR_LAG: i64 = 100;

/// The longest one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

impl Alerts {
    /// Alerts to `hook`.
    pub fn new(hook: &DeadLetterHook) -> Result<Alerts> {
        let hook = match hook {
            DeadLetterHook::Command(c) => Hook::Command(CommandProcessor::new(c.clone())),
            DeadLetterHook::Webhook(url) => Hook::Webhook(Box::new(
                HttpProcessor::builder(url)
                    .pool_size(1)
                    .build()
                    .map_err(|e| Error::InvalidConfig(format!("--on-dead-letter: {e}")))?,
            )),
        };
        Ok(Alerts { hook })
    }

    /// Sends one alert: `Ok` once the hook took it.
    async fn send(&self, alert: &DeadLetterAlert) -> std::result::Result<(), String> {
        let body = serde_json::to_string(alert).map_err(|e| e.to_string())?;
        let record = Record {
            sample_id: alert.idempotency_key.clone(),
            payload: Some(body.clone()),
            retry_count: 0,
        };
        let call = async {
            match &self.hook {
                Hook::Command(c) => c.process(&record).await,
                Hook::Webhook(h) => h.post_json(body, record.idempotency_key()).await,
            }
        };
        match tokio::time::timeout(DELIVERY_TIMEOUT, call).await {
            Ok(Outcome::Success { .. }) => Ok(()),
            Ok(failed) => Err(failed.error().unwrap_or("failed").to_owned()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(DELIVERY_TIMEOUT)
            )),
        }
    }

    /// Delivers every alert not yet delivered, oldest first, advancing the cursor after
    /// each commit's: returns how many alerts went out, or the first failure (the cursor
    /// stays before it).
    pub(crate) async fn deliver(&self, store: &mut Store) -> Result<usize> {
        let table = Table::DeadLetterQueue;
        store.refresh_table(table).await?;
        let Some(latest) = store.table(table).version() else {
            return Ok(0);
        };
        let latest = i64::try_from(latest).unwrap_or(i64::MAX);
        let cursor = match store.txn_version(table, ALERTS_APP).await? {
            Some(cursor) => cursor,
            None => {
                // The first alerting process: alert from here on, not the past.
                advance(store, latest).await?;
                return Ok(0);
            }
        };
        let table_id = store
            .table(table)
            .snapshot()
            .map_err(table_error(table))?
            .metadata()
            .id()
            .to_owned();
        let hold = crate::store::maintenance::ALERT_HOLD;
        let cursor = if latest.saturating_sub(cursor) > hold {
            tracing::error!(
                "dead-letter alerts are {} versions of dead_letter_queue behind, more than the \
                 {hold} the upkeep keeps: the older ones are skipped",
                latest - cursor
            );
            latest - hold
        } else {
            cursor
        };
        let (mut sent, mut done) = (0, cursor);
        for version in cursor + 1..=latest {
            for alert in alerts_of(store, &table_id, version).await? {
                if let Err(e) = self.send(&alert).await {
                    if sent > 0 {
                        advance(store, done).await?;
                    }
                    return Err(Error::Alert(format!(
                        "the dead-letter alert {} (version {version} of dead_letter_queue, {} \
                         dead letters) failed: {e}",
                        alert.idempotency_key,
                        alert.dead_letters.len()
                    )));
                }
                sent += 1;
            }
            done = version;
        }
        // Versions without dead letters (every round commits to the table) need no commit
        // of their own, until enough of them would make the next pass read many.
        if sent > 0 || done - cursor >= CURSOR_LAG {
            advance(store, done).await?;
        }
        Ok(sent)
    }
}

/// Moves the cursor to `version` (the last version delivered): one empty commit of
/// `dead_letter_queue`. Two alerting processes that race conflict on it, and the later
/// one reads on (both may have delivered: at least once).
async fn advance(store: &mut Store, version: i64) -> Result<()> {
    let table = Table::DeadLetterQueue;
    for conflicts in 0.. {
        if store.txn_version(table, ALERTS_APP).await?.unwrap_or(-1) >= version {
            return Ok(());
        }
        let tag = CommitTag::operation("alerts")
            .with("through", version)
            .with_alerts(version);
        match store.commit(table, Vec::new(), blind_append()?, &tag).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_conflict() && conflicts < 12 => {
                store.retry_after_conflict(table, conflicts).await?;
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

/// One line of a commit file: the actions alerts need.
#[derive(Deserialize)]
struct Line {
    add: Option<AddLine>,
    #[serde(rename = "commitInfo")]
    commit_info: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct AddLine {
    path: String,
    #[serde(rename = "dataChange", default)]
    data_change: bool,
}

/// The alerts of one version of `dead_letter_queue`: its new dead letters, in batches of at
/// most [`ALERT_BATCH`]. Dead letters are only ever appended (`WRITE`: a round, a cancel,
/// an enqueue's invalid records, a recovery); the files other commits add hold letters
/// that were there before (a compaction, a redrive's or a prune's rewrite).
async fn alerts_of(store: &Store, table_id: &str, version: i64) -> Result<Vec<DeadLetterAlert>> {
    let table = Table::DeadLetterQueue;
    let object_store = store.table(table).log_store().object_store(None);
    let version_u = u64::try_from(version).unwrap_or(0);
    let entry = commit_uri_from_version(Some(version_u));
    if let Err(deltalake::ObjectStoreError::NotFound { .. }) = object_store.head(&entry).await {
        // Cleaned from the log: a cursor left behind by more than the upkeep holds.
        tracing::error!(
            version,
            "the log entry of version {version} of dead_letter_queue was cleaned before its \
             dead letters were alerted; skipped"
        );
        return Ok(Vec::new());
    }
    let commit = read_object(&object_store, table, entry.as_ref()).await?;
    let mut paths = Vec::new();
    let mut info = serde_json::Value::Null;
    for line in commit.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line: Line = serde_json::from_slice(line).map_err(|e| Error::Corrupt {
            table: table.name(),
            detail: format!("commit {version} is not readable: {e}"),
        })?;
        if let Some(add) = line.add
            && add.data_change
        {
            paths.push(add.path);
        }
        if let Some(i) = line.commit_info {
            info = i;
        }
    }
    if info["operation"].as_str() != Some("WRITE") {
        return Ok(Vec::new());
    }
    let tag = &info["retrylake"];
    let mut letters = Vec::new();
    for path in paths {
        let path = percent_decode(&path);
        // A file deleted before it was alerted (compacted, then vacuumed, while the hook
        // was down): a round's dead letters are in its journal too.
        if let Ok(location) = deltalake::Path::parse(&path)
            && let Err(deltalake::ObjectStoreError::NotFound { .. }) =
                object_store.head(&location).await
        {
            match journaled_dead(store, tag).await? {
                Some(journaled) => {
                    letters = journaled;
                    break;
                }
                None => {
                    tracing::error!(
                        version,
                        file = path,
                        "dead letters of version {version} of dead_letter_queue were vacuumed \
                         before they were alerted, and no journal holds them; this alert \
                         cannot be sent"
                    );
                    continue;
                }
            }
        }
        let bytes = read_object(&object_store, table, &path).await?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| table_error(table)(e.into()))?
            .build()
            .map_err(|e| table_error(table)(e.into()))?;
        for batch in reader {
            let batch = batch.map_err(|e| table_error(table)(e.into()))?;
            letters.extend(DeadRow::from_batch(&batch)?);
        }
    }
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    Ok(letters
        .chunks(ALERT_BATCH)
        .enumerate()
        .map(|(i, chunk)| DeadLetterAlert {
            idempotency_key: format!("dead-letters-{table_id}-{version}-{i}"),
            table_version: version,
            job: text(&tag["operation"]),
            worker: text(&tag["worker"]),
            round: tag["round"].as_i64(),
            dead_letters: chunk
                .iter()
                .map(|d| AlertedLetter {
                    sample_id: d.sample_id.clone(),
                    reason: d.reason.as_str().to_owned(),
                    error_msg: d.error_msg.clone(),
                    retry_count: d.retry_count,
                    failed_at: d.failed_at,
                    payload: d.payload.clone(),
                })
                .collect(),
        })
        .collect())
}

/// The dead letters of the round a commit's `retrylake` metadata names, from its journal
/// rows; `None` for a commit of no round (an enqueue) or a round no longer journaled.
async fn journaled_dead(store: &Store, tag: &serde_json::Value) -> Result<Option<Vec<DeadRow>>> {
    let (Some(worker), Some(round)) = (tag["worker"].as_str(), tag["round"].as_i64()) else {
        return Ok(None);
    };
    use deltalake::datafusion::prelude::{col, lit};
    let (_ctx, frame) = store.frame(Table::Attempts).await?;
    let frame = frame.filter(
        col("worker")
            .eq(lit(worker))
            .and(col("round").eq(lit(round)))
            .and(col("disposition").eq(lit("dead"))),
    )?;
    let rows: Vec<AttemptRow> = collect_rows(frame).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        rows.into_iter()
            .map(|r| DeadRow {
                sample_id: r.sample_id,
                payload: r.payload,
                error_msg: r.error_msg,
                retry_count: r.retry_count,
                failed_at: r.finished_at,
                reason: r.reason.unwrap_or(DeadReason::Permanent),
            })
            .collect(),
    ))
}

/// A path of the Delta log (percent-encoded) as the object store names it.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| path.to_owned())
}

/// Delivers alerts in the background while rounds run: woken after each round, tried again
/// with a growing pause after a failure, never holding a round back.
pub(crate) struct AlertTask {
    wake: Arc<Notify>,
    stop: Arc<Notify>,
    handle: tokio::task::JoinHandle<()>,
    /// The last failed delivery's error, until a delivery succeeds.
    failing: Arc<Mutex<Option<String>>>,
}

/// How long a stopping process goes on trying to deliver (it may then be in one more try,
/// of at most [`DELIVERY_TIMEOUT`]).
const STOP_BUDGET: Duration = Duration::from_secs(10);

/// The longest pause between two tries of a failing hook.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(60);

impl AlertTask {
    /// Starts delivering to `alerts` on a store of its own, after making sure the cursor
    /// exists (so every dead letter from now on is alerted).
    pub(crate) async fn start(
        store: &Store,
        alerts: Arc<Alerts>,
        poll: Duration,
        metrics: Option<Arc<Mutex<Metrics>>>,
    ) -> Result<AlertTask> {
        let mut store = store.reopen().await?;
        // Only the cursor before the first round (so its dead letters are alerted); the
        // backlog goes out in the background.
        store.refresh_table(Table::DeadLetterQueue).await?;
        if store
            .txn_version(Table::DeadLetterQueue, ALERTS_APP)
            .await?
            .is_none()
        {
            alerts.deliver(&mut store).await?;
        }
        let wake = Arc::new(Notify::new());
        let stop = Arc::new(Notify::new());
        let failing: Arc<Mutex<Option<String>>> = Arc::default();
        let (w, s, f) = (wake.clone(), stop.clone(), failing.clone());
        let set = move |error: Option<String>| {
            *f.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = error;
        };
        let handle = tokio::spawn(async move {
            let mut failures: u32 = 0;
            let mut stopping: Option<std::time::Instant> = None;
            let mut first = true;
            loop {
                let pause = if failures == 0 {
                    poll
                } else {
                    Duration::from_secs(1u64 << failures.min(6)).min(MAX_RETRY_PAUSE)
                };
                if stopping.is_none() && !std::mem::take(&mut first) {
                    tokio::select! {
                        _ = w.notified() => {}
                        _ = s.notified() => stopping = Some(std::time::Instant::now()),
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                match alerts.deliver(&mut store).await {
                    Ok(sent) => {
                        failures = 0;
                        set(None);
                        if let Some(m) = &metrics {
                            m.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .alerts_delivered(sent as u64);
                        }
                        if stopping.is_some() {
                            return;
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        set(Some(e.to_string()));
                        if let Some(m) = &metrics {
                            m.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .alert_failed();
                        }
                        // Stopping, a failing hook gets a few more tries, within a bound.
                        if let Some(since) = stopping
                            && (failures >= 3 || since.elapsed() >= STOP_BUDGET)
                        {
                            tracing::error!(
                                "{e}; giving up for now: the next run or worker with \
                                 --on-dead-letter delivers it"
                            );
                            return;
                        }
                        tracing::warn!("{e}; trying again (attempt {})", failures + 1);
                        if stopping.is_some() {
                            tokio::time::sleep(Duration::from_secs(1u64 << failures)).await;
                        }
                    }
                }
            }
        });
        Ok(AlertTask {
            wake,
            stop,
            handle,
            failing,
        })
    }

    /// Tells the task that a round committed.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Delivers what is left (trying a failing hook a few times) and stops, within
    /// [`STOP_BUDGET`] and a little: a delivery still running then (a hook that hangs) is
    /// dropped, and the next run or worker with alerts sends it again.
    /// Returns the error of the last failed delivery when alerts are left undelivered.
    pub(crate) async fn finish(mut self) -> Option<String> {
        self.stop.notify_one();
        let grace = STOP_BUDGET + Duration::from_secs(2);
        if tokio::time::timeout(grace, &mut self.handle).await.is_err() {
            self.handle.abort();
            let pending = format!(
                "dead-letter alerts still undelivered after {}; the next run or worker with \
                 --on-dead-letter sends them",
                humantime::format_duration(grace)
            );
            tracing::error!("{pending}");
            let failing = self.failing.lock().ok().and_then(|f| f.clone());
            return Some(failing.map_or(pending.clone(), |e| format!("{pending} ({e})")));
        }
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
