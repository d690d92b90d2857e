//! What a commit says about itself: its operation, its round (as a Delta application
//! transaction) and counts, and the id sequence that orders the commits adding new ids.

use std::collections::BTreeMap;

use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use serde_json::{Value, json};

/// What a commit records about itself: the operation, and for a round its number, worker
/// and counts. Stored under `retrylake` in the commit's metadata; a round's number is also
/// the commit's application-transaction version.
#[derive(Debug, Clone, Default)]
pub struct CommitTag {
    operation: String,
    round: Option<(String, i64)>,
    /// The table's id sequence this commit advances to (see [`IDS_APP`]).
    ids: Option<i64>,
    /// The table's rewrite sequence this commit advances to (see [`REWRITES_APP`]).
    rewrites: Option<i64>,
    /// The time before which the table's rows may have been pruned (see [`PRUNED_APP`]).
    pruned: Option<i64>,
    /// The last version of `dead_letter_queue` alerted (see [`ALERTS_APP`]).
    alerts: Option<i64>,
    details: BTreeMap<String, Value>,
}

impl CommitTag {
    /// A tag for a commit that is not part of a round (`create`, `enqueue`).
    pub fn operation(operation: &str) -> Self {
        CommitTag {
            operation: operation.to_owned(),
            ..CommitTag::default()
        }
    }

    /// A tag for a commit of round `round` of `worker`.
    pub fn round(operation: &str, worker: &str, round: i64) -> Self {
        CommitTag {
            operation: operation.to_owned(),
            round: Some((worker.to_owned(), round)),
            ..CommitTag::default()
        }
    }

    /// Adds a count or other detail to the commit metadata.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    pub(crate) fn properties(&self) -> CommitProperties {
        let mut info = serde_json::Map::new();
        info.insert("operation".into(), json!(self.operation));
        if let Some((worker, round)) = &self.round {
            info.insert("round".into(), json!(round));
            info.insert("worker".into(), json!(worker));
        }
        info.extend(self.details.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut txns = Vec::new();
        if let Some((worker, round)) = &self.round {
            txns.push(Transaction::new(app_id(worker), *round));
        }
        if let Some(ids) = self.ids {
            txns.push(Transaction::new(IDS_APP, ids));
        }
        if let Some(rewrites) = self.rewrites {
            txns.push(Transaction::new(REWRITES_APP, rewrites));
        }
        if let Some(pruned) = self.pruned {
            txns.push(Transaction::new(PRUNED_APP, pruned));
        }
        if let Some(alerts) = self.alerts {
            txns.push(Transaction::new(ALERTS_APP, alerts));
        }
        // delta-rs would list the whole `_delta_log` after every commit to remove expired
        // entries, a cost that grows with the log: the queue's maintenance does it now and
        // then instead (`Store::maintain`).
        CommitProperties::default()
            .with_metadata([("retrylake".to_owned(), Value::Object(info))])
            .with_application_transactions(txns)
            .with_cleanup_expired_logs(Some(false))
    }

    /// The same tag, for a commit that advances its table's rewrite sequence to `version`.
    pub(crate) fn with_rewrites(&self, version: i64) -> Self {
        CommitTag {
            rewrites: Some(version),
            ..self.clone()
        }
    }

    /// The same tag, for a commit that deletes the table's rows older than `micros`
    /// (microseconds since the Unix epoch).
    pub(crate) fn with_pruned(&self, micros: i64) -> Self {
        CommitTag {
            pruned: Some(micros),
            ..self.clone()
        }
    }

    /// The same tag, for a commit that records `dead_letter_queue`'s alerts as delivered
    /// up to `version`.
    pub(crate) fn with_alerts(&self, version: i64) -> Self {
        CommitTag {
            alerts: Some(version),
            ..self.clone()
        }
    }

    /// The same tag, for a commit that advances its table's id sequence to `version`.
    pub(crate) fn with_ids(&self, version: i64) -> Self {
        CommitTag {
            ids: Some(version),
            ..self.clone()
        }
    }
}

/// The application id of a table's *id sequence*: every commit that may bring an id new
/// to the tables (an enqueue's, a redrive's insert into `retry_queue`) advances it by one
/// from the version it read, so two such commits built on the same version conflict in
/// Delta's check and the second re-reads the ids before committing again. Commits that
/// only move known ids (rounds) leave it alone and never conflict with an enqueue.
pub(crate) const IDS_APP: &str = "retrylake-ids";

/// The application id of a table's *rewrite sequence*: every commit that removes files of
/// `attempts`, `final_results` or `dead_letter_queue` (a compaction, a redrive's delete of
/// dead letters) advances it by one from the version it read, so two such commits built
/// on the same version conflict. Without it they would not: delta-rs does not count a
/// compaction's removes (`dataChange: false`) against another commit's, so two
/// compactions of the same files, or a compaction and a delete, would both commit and
/// leave every row of those files twice. Rounds only append to these tables and leave the
/// sequence alone.
pub(crate) const REWRITES_APP: &str = "retrylake-rewrites";

/// The application id whose version is the time (microseconds since the Unix epoch)
/// before which a table's rows may have been pruned by its retention: an audit cannot
/// expect journal rows older than that. Kept in every checkpoint, unlike the prune's
/// commit, whose log entry expires.
pub(crate) const PRUNED_APP: &str = "retrylake-pruned";

/// The application id whose version is the last version of `dead_letter_queue` whose dead
/// letters were delivered to the `--on-dead-letter` hook (see `crate::alert`). Kept in
/// every checkpoint.
pub(crate) const ALERTS_APP: &str = "retrylake-alerts";

/// The application id under which `worker`'s rounds are recorded in every table.
pub(crate) fn app_id(worker: &str) -> String {
    format!("retrylake-round-{worker}")
}
