//! Application-transaction versions (Delta `txn` actions), kept up to date from the
//! commits a table moves through rather than looked up from scratch at every question.
//!
//! delta-rs answers "which version did `app` last commit" by replaying the table's log
//! since its last checkpoint and that checkpoint (every commit file, up to a hundred, and
//! a checkpoint that grows with the files removed in the last week). A worker asks several
//! times a round (recovery, fencing, rewrite sequences), so its rounds grew with the
//! table's history, and on an object store each question cost dozens of requests. Here
//! the first question about an app is delta-rs's; after that, each new version's commit
//! file is read once and its `txn` actions applied.

use std::collections::HashMap;
use std::sync::Mutex;

use deltalake::logstore::commit_uri_from_version;
use serde::Deserialize;

use super::{Store, Table, read_object};
use crate::error::Result;

/// The most commits read one by one to catch up; further behind (a process paused for
/// long), one replay by delta-rs costs less than a request per commit.
const MAX_CATCH_UP: u64 = 100;

/// What one table's commits said about applications, as of one version.
#[derive(Debug, Default)]
struct Known {
    /// The version the answers hold for; `None` before the first question.
    version: Option<u64>,
    /// Each app asked about or seen since, and its last committed version.
    apps: HashMap<String, Option<i64>>,
}

/// The answers for the four tables.
#[derive(Debug, Default)]
pub(crate) struct TxnCache {
    tables: Mutex<[Known; 4]>,
}

/// One line of a commit file; only `txn` actions matter here.
#[derive(Deserialize)]
struct Line {
    txn: Option<Txn>,
}

#[derive(Deserialize)]
struct Txn {
    #[serde(rename = "appId")]
    app_id: String,
    version: i64,
}

/// The `txn` actions of one commit file, in order.
fn txns_of(commit: &[u8]) -> Option<Vec<(String, i64)>> {
    let mut found = Vec::new();
    for line in commit.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line: Line = serde_json::from_slice(line).ok()?;
        if let Some(txn) = line.txn {
            found.push((txn.app_id, txn.version));
        }
    }
    Some(found)
}

impl Store {
    /// The application-transaction version `app_id` last committed to `table`, as of the
    /// table's loaded version.
    pub(crate) async fn txn_version(&self, table: Table, app_id: &str) -> Result<Option<i64>> {
        let Some(version) = self.table(table).version() else {
            return Ok(None);
        };
        let i = Store::index(table);
        let from = {
            let mut known = self.txns.tables.lock().expect("not poisoned");
            let known = &mut known[i];
            match known.version {
                Some(v) if v == version => {
                    if let Some(answer) = known.apps.get(app_id) {
                        return Ok(*answer);
                    }
                    None
                }
                Some(v) if v < version && version - v <= MAX_CATCH_UP => Some(v),
                // First question, far behind, or the table travelled back: start again.
                _ => {
                    *known = Known::default();
                    None
                }
            }
        };
        if let Some(from) = from {
            let news = self.txns_between(table, from, version).await;
            let mut known = self.txns.tables.lock().expect("not poisoned");
            let known = &mut known[i];
            match news {
                Some(news) if known.version == Some(from) => {
                    known
                        .apps
                        .extend(news.into_iter().map(|(app, v)| (app, Some(v))));
                    known.version = Some(version);
                    if let Some(answer) = known.apps.get(app_id) {
                        return Ok(*answer);
                    }
                }
                // A commit gone (log cleaned) or unreadable: ask delta-rs from scratch.
                _ => *known = Known::default(),
            }
        }
        let answer = self.scan_txn_version(table, app_id).await?;
        let mut known = self.txns.tables.lock().expect("not poisoned");
        let known = &mut known[i];
        if known.version.is_none_or(|v| v == version) {
            known.version = Some(version);
            known.apps.insert(app_id.to_owned(), answer);
        }
        Ok(answer)
    }

    /// The `txn` actions of `table`'s commits after `from` up to `to`, oldest first;
    /// `None` if one of them cannot be read.
    async fn txns_between(&self, table: Table, from: u64, to: u64) -> Option<Vec<(String, i64)>> {
        let store = self.table(table).log_store().object_store(None);
        let mut found = Vec::new();
        for v in from + 1..=to {
            let path = commit_uri_from_version(Some(v));
            let bytes = read_object(&store, table, path.as_ref()).await.ok()?;
            found.extend(txns_of(&bytes)?);
        }
        Some(found)
    }

    /// delta-rs's answer: a replay of the log since the last checkpoint and the checkpoint.
    async fn scan_txn_version(&self, table: Table, app_id: &str) -> Result<Option<i64>> {
        let t = self.table(table);
        let snapshot = t.snapshot().map_err(super::table_error(table))?;
        snapshot
            .transaction_version(t.log_store().as_ref(), app_id)
            .await
            .map_err(super::table_error(table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_txn_actions_of_a_commit() {
        let commit = br#"{"commitInfo":{"timestamp":1,"operation":"WRITE"}}
{"txn":{"appId":"retrylake-w1","version":7,"lastUpdated":1}}
{"add":{"path":"a.parquet","size":1,"modificationTime":1,"dataChange":true}}
{"txn":{"appId":"retrylake-ids","version":3}}
"#;
        assert_eq!(
            txns_of(commit),
            Some(vec![
                ("retrylake-w1".to_owned(), 7),
                ("retrylake-ids".to_owned(), 3)
            ])
        );
        assert_eq!(txns_of(b""), Some(vec![]));
        assert_eq!(txns_of(b"{not json"), None, "unreadable: ask delta-rs");
    }
}
