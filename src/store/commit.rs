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
        CommitProperties::default()
            .with_metadata([("retrylake".to_owned(), Value::Object(info))])
            .with_application_transactions(txns)
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

/// The application id under which `worker`'s rounds are recorded in every table.
pub(crate) fn app_id(worker: &str) -> String {
    format!("retrylake-round-{worker}")
}
