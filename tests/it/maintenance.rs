//! The queue keeps its tables small as it runs: compaction beside live rounds loses and
//! doubles nothing, and removing expired log entries leaves every table readable.

use std::time::{Duration, SystemTime};

use retrylake::store::{AttemptRow, QueueRow, Table};
use retrylake::{AsOf, Maintenance};

use super::util::{Env, assert_each_attempt_once, assert_exactly_once, write_samples};

const PAST: &str = "2020-01-01T00:00:00Z";

/// Compaction at every chance: two small files are enough.
fn eager() -> Maintenance {
    Maintenance {
        compact_at: Some(2),
        ..Maintenance::default()
    }
}

/// Enqueues `n` samples due at [`PAST`] and drains them in rounds of `limit` records on
/// the virtual clock, with `maintenance` (the run's flags for it); returns their ids.
fn drained(env: &Env, prefix: &str, n: usize, limit: &str, maintenance: &[&str]) -> Vec<String> {
    let (input, ids) = write_samples(env, prefix, n);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", PAST]);
    let mut args = vec!["run", "--limit", limit, "--drain", "--now", PAST];
    args.extend(maintenance);
    env.ok(&args);
    ids
}

/// `table`'s live data files.
async fn live_files(env: &Env, table: Table) -> usize {
    let queue = env.data().queue().await;
    let snapshot = queue.store().table(table).snapshot().unwrap();
    snapshot.log_data().num_files()
}

/// How many times `table` was compacted.
async fn compactions(env: &Env, table: Table) -> usize {
    let mut queue = env.data().queue().await;
    queue
        .history(&[table])
        .await
        .unwrap()
        .iter()
        .filter(|c| c.job.as_deref() == Some("compact"))
        .count()
}

#[test]
fn compaction_racing_two_workers_loses_and_doubles_nothing() {
    compaction_racing_workers(Env::new());
}

#[test]
fn compaction_racing_two_workers_loses_and_doubles_nothing_on_s3() {
    compaction_racing_workers(Env::s3());
}

fn compaction_racing_workers(env: Env) {
    let (input, ids) = write_samples(&env, "M", 240);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", PAST]);
    // Two runners that compact after each of their rounds, and a third process compacting
    // as fast as it can, all at once.
    let runners: Vec<_> = ["w1", "w2"]
        .iter()
        .map(|worker| {
            env.process()
                .args(["run", "--limit", "15", "--worker", worker, "--drain"])
                .args(["--base-backoff=20ms", "--max-backoff=200ms", "--poll=100ms"])
                .args(["--transient-rate=0.3", "--timeout=5s", "--lease=1m"])
                .args(["--compact-at=2"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = env.data();
    let passes = std::sync::atomic::AtomicUsize::new(0);
    let outputs = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            runners
                .into_iter()
                .map(|c| c.wait_with_output().unwrap())
                .collect::<Vec<_>>()
        });
        rt.block_on(async {
            let mut queue = data.queue().await;
            while !waiting.is_finished() {
                queue.refresh().await.unwrap();
                queue.maintain(&eager()).await.unwrap();
                passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        waiting.join().unwrap()
    });
    for out in outputs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(passes.into_inner() > 0);
    assert_exactly_once(&env.data(), &ids);
    assert!(env.rows::<QueueRow>().is_empty());
    assert_each_attempt_once(&env);
    // The race happened: the tables were compacted while the rounds ran.
    let compacted = rt.block_on(async {
        compactions(&env, Table::Attempts).await + compactions(&env, Table::FinalResults).await
    });
    assert!(compacted > 0, "no compaction ran");
    // Each journal file still holds one worker's rounds, so recovery finds the workers
    // from the files' statistics instead of reading the whole journal every round.
    rt.block_on(async {
        let queue = env.data().queue().await;
        let snapshot = queue.store().table(Table::Attempts).snapshot().unwrap();
        for file in snapshot.log_data().iter() {
            let stats: serde_json::Value = serde_json::from_str(&file.stats().unwrap()).unwrap();
            let worker = |bound: &str| stats[bound]["worker"].clone();
            assert_eq!(worker("minValues"), worker("maxValues"), "{}", file.path());
        }
    });
}

#[test]
fn compaction_keeps_every_row_and_leaves_few_files() {
    let env = Env::new();
    // Small rounds, each appending a file to the tables, compacted along the way.
    let ids = drained(&env, "K", 120, "4", &["--compact-at", "8"]);
    assert_exactly_once(&env.data(), &ids);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for table in [Table::Attempts, Table::FinalResults] {
        let files = rt.block_on(live_files(&env, table));
        assert!(files < 8 + 2, "{}: {files} live files", table.name());
    }
    assert!(rt.block_on(compactions(&env, Table::Attempts)) > 0);
    // Off, the same run leaves a file per round.
    let off = Env::new();
    drained(&off, "K", 120, "4", &["--maintenance", "off"]);
    assert_eq!(rt.block_on(compactions(&off, Table::Attempts)), 0);
    let files = rt.block_on(live_files(&off, Table::Attempts));
    assert!(files >= 30, "{files} live files without maintenance");
}

/// Sets the modification time of every `_delta_log` entry of the local tables to `age` ago,
/// as if they had been written then.
fn age_logs(env: &Env, age: Duration) {
    let then = SystemTime::now() - age;
    for table in Table::ALL {
        let log = env.data_dir().join(table.name()).join("_delta_log");
        for entry in std::fs::read_dir(log).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let file = std::fs::File::options().append(true).open(&path).unwrap();
                file.set_modified(then).unwrap();
            }
        }
    }
}

fn log_entries(env: &Env, table: Table) -> usize {
    std::fs::read_dir(env.data_dir().join(table.name()).join("_delta_log"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.ends_with(".json") || name.contains(".checkpoint")
        })
        .count()
}

#[test]
fn expired_log_entries_go_and_the_tables_stay_readable() {
    let env = Env::new();
    // Past 100 versions of every table, so each has a checkpoint.
    let ids = drained(&env, "L", 150, "1", &["--maintenance", "off"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let before = log_entries(&env, Table::RetryQueue);
    let counts = |sql: &str, as_of| {
        rt.block_on(async {
            let mut queue = env.data().queue().await;
            let batches = queue.query(sql, as_of).await?;
            Ok::<_, retrylake::Error>(format!("{batches:?}"))
        })
    };
    let latest_rows = counts("SELECT COUNT(*) FROM final_results", AsOf::Latest).unwrap();

    // Every entry written three days ago: past the default retention of one day.
    age_logs(&env, Duration::from_secs(3 * 24 * 3600));
    rt.block_on(async {
        let mut queue = env.data().queue().await;
        let policy = Maintenance {
            clean_log_every: 1,
            compact_at: None,
            ..Maintenance::default()
        };
        // Nothing new since the tables were opened: nothing to clean yet.
        assert!(queue.maintain(&policy).await.unwrap().is_empty());
        // A new version passes a multiple of `clean_log_every`.
        let more = env.write(
            "more.jsonl",
            "{\"sample_id\":\"L-more\",\"payload\":\"x\"}\n",
        );
        queue.enqueue(&more, &Default::default()).await.unwrap();
        let done = queue.maintain(&policy).await.unwrap();
        let queue_table = done.iter().find(|d| d.table == "retry_queue").unwrap();
        assert!(queue_table.log_entries_removed > 50, "{done:?}");
    });
    let after = log_entries(&env, Table::RetryQueue);
    assert!(
        after < before / 2,
        "{before} entries, {after} after the cleanup"
    );
    // Every table opens and reads as before, here and from Python's `deltalake`.
    assert_eq!(
        counts("SELECT COUNT(*) FROM final_results", AsOf::Latest).unwrap(),
        latest_rows
    );
    let mut all = ids.clone();
    all.push("L-more".into());
    assert_exactly_once(&env.data(), &all);
    let status = env.json(&["status"]);
    assert_eq!(status["waiting"], 1, "{status}");
    // Time travel reaches the versions since the last checkpoint kept, and refuses one
    // whose log entries are gone rather than answer from another version.
    // (Each table has its versions: a version final_results lacks is refused, not
    // clamped.)
    let newest = rt.block_on(async {
        let queue = env.data().queue().await;
        queue.store().table(Table::FinalResults).version().unwrap()
    });
    assert_eq!(
        counts("SELECT COUNT(*) FROM final_results", AsOf::Version(newest)).unwrap(),
        latest_rows
    );
    // retry_queue's first entries are gone (more than 50 removed above).
    let gone = counts("SELECT COUNT(*) FROM retry_queue", AsOf::Version(5));
    assert!(
        gone.as_ref().is_err_and(|e| e
            .to_string()
            .contains("retry_queue: no version 5: it has versions")),
        "{gone:?}"
    );
    let read = python_counts(&env);
    assert_eq!(read["retry_queue"], status["waiting"], "{read}");
    assert_eq!(read["final_results"], status["final"], "{read}");
    assert_eq!(read["dead_letter_queue"], status["dead"], "{read}");
}

/// Each table's row count as Python's `deltalake` reads it.
fn python_counts(env: &Env) -> serde_json::Value {
    const READ: &str = r#"
import json, sys
from deltalake import DeltaTable
root = sys.argv[1]
names = ["retry_queue", "final_results", "dead_letter_queue", "attempts"]
print(json.dumps({n: DeltaTable(f"{root}/{n}").to_pyarrow_table().num_rows for n in names}))
"#;
    let out = std::process::Command::new(super::s3::py_tools().join("bin/python"))
        .args(["-c", READ, &env.data().url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn two_compactions_of_the_same_files_never_both_commit() {
    let env = Env::new();
    let ids = drained(&env, "D", 60, "3", &["--maintenance", "off"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Both read the same version, both see the same small files.
        let mut a = env.data().queue().await;
        let mut b = env.data().queue().await;
        let before = a.store().read::<AttemptRow>().await.unwrap().len();
        let first = a.maintain(&eager()).await.unwrap();
        assert!(first.iter().any(|d| d.table == "attempts"), "{first:?}");
        // `b` compacts from the version before `a`'s compaction: it must lose.
        let second = b.maintain(&eager()).await.unwrap();
        assert!(second.iter().all(|d| d.files_compacted == 0), "{second:?}");
        let fresh = env.data().queue().await;
        let after = fresh.store().read::<AttemptRow>().await.unwrap().len();
        assert_eq!(
            after, before,
            "rows of attempts before and after two compactions"
        );
    });
    assert_exactly_once(&env.data(), &ids);
}

/// Parquet files under a local table's folder.
fn files_on_disk(env: &Env, table: Table) -> usize {
    std::fs::read_dir(env.data_dir().join(table.name()))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("parquet".as_ref()))
        .count()
}

#[test]
fn vacuum_keeps_the_files_on_disk_to_those_in_use() {
    let env = Env::new();
    // Small rounds compacted as they go: files claimed, compacted and removed pile up.
    let ids = drained(&env, "V", 60, "3", &["--compact-at", "4"]);
    let before: Vec<usize> = Table::ALL.iter().map(|&t| files_on_disk(&env, t)).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let done = rt.block_on(async {
        let mut queue = env.data().queue().await;
        let policy = Maintenance {
            // The command line refuses under a day; the library lets a test see it act.
            vacuum_after: Some(Duration::ZERO),
            clean_log_every: 1,
            ..Maintenance::off()
        };
        // A new version of every table passes a multiple of `clean_log_every`.
        let more = env.write(
            "more.jsonl",
            "{\"sample_id\":\"V-more\",\"payload\":\"x\"}\n",
        );
        queue.enqueue(&more, &Default::default()).await.unwrap();
        queue
            .run_round(
                &retrylake::SimulateProcessor::new(0.0, 1),
                &Default::default(),
            )
            .await
            .unwrap();
        queue.maintain(&policy).await.unwrap()
    });
    for (table, before) in Table::ALL.into_iter().zip(before) {
        let (on_disk, live) = (
            files_on_disk(&env, table),
            rt.block_on(live_files(&env, table)),
        );
        assert_eq!(on_disk, live, "{table:?}: {before} files before, {done:?}");
    }
    assert!(done.iter().any(|d| d.files_vacuumed > 0), "{done:?}");
    let mut all = ids;
    all.push("V-more".into());
    assert_exactly_once(&env.data(), &all);
    // Time travel to a version whose files are gone is an error, not a panic or rows
    // from another version.
    let err = env.fails(&[
        "query",
        "SELECT sample_id, payload FROM attempts",
        "--version",
        "2",
    ]);
    assert!(
        err.contains("attempts") || err.contains("not found"),
        "{err}"
    );
}

/// A manual vacuum with a short retention deletes only files the tables removed: a file
/// no version refers to yet may be a running round's, written and not yet committed.
#[test]
fn a_short_vacuum_keeps_files_a_round_has_not_committed_yet() {
    let env = Env::new();
    drained(&env, "S", 20, "5", &[]);
    let dir = env.data_dir().join("attempts");
    let live = dir.read_dir().unwrap().find_map(|e| {
        let path = e.unwrap().path();
        (path.extension() == Some("parquet".as_ref())).then_some(path)
    });
    // A round's staged journal file: written, its commit not yet made.
    let staged = dir.join("part-00000-staged-by-a-running-round-c000.snappy.parquet");
    std::fs::copy(live.unwrap(), &staged).unwrap();
    env.ok(&["vacuum", "--retain", "0s"]);
    assert!(
        staged.exists(),
        "vacuum deleted a file a round was about to commit"
    );
}

#[test]
fn a_retention_under_an_hour_is_refused() {
    let env = Env::new();
    for flag in [
        "--log-retention",
        "--keep-attempts",
        "--keep-final",
        "--keep-dead",
    ] {
        for short in ["1s", "59m"] {
            let err = env.fails(&["run", flag, short]);
            assert!(err.contains(flag) && err.contains("at least 1h"), "{err}");
        }
    }
    for short in ["1h", "23h"] {
        let err = env.fails(&["run", "--vacuum-after", short]);
        assert!(
            err.contains("--vacuum-after") && err.contains("at least 1d"),
            "{err}"
        );
    }
    assert!(!env.data_dir().exists(), "created the tables");
}

/// Enqueues `n` samples `<prefix>-...` and drains them at `now` on the virtual clock, some
/// failing for good; returns their ids.
fn drained_at(env: &Env, prefix: &str, n: usize, now: &str) -> Vec<String> {
    let (input, ids) = write_samples(env, prefix, n);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", now]);
    env.ok(&[
        "run",
        "--drain",
        "--now",
        now,
        "--transient-rate=0.4",
        "--max-retries=1",
    ]);
    ids
}

/// `(rows of the old batch, rows of the new one)` in `table`, at `version` if given.
fn old_and_new(env: &Env, table: &str, version: Option<u64>) -> (u64, u64) {
    let sql = format!(
        "SELECT SUM(CASE WHEN sample_id LIKE 'OLD%' THEN 1 ELSE 0 END) AS old, \
         SUM(CASE WHEN sample_id LIKE 'NEW%' THEN 1 ELSE 0 END) AS new FROM {table}"
    );
    let version = version.map(|v| v.to_string());
    let mut args = vec!["query", sql.as_str(), "--format", "json"];
    if let Some(v) = &version {
        args.extend(["--version", v.as_str()]);
    }
    let rows: serde_json::Value = serde_json::from_str(&env.ok(&args)).unwrap();
    let n = |k: &str| rows[0][k].as_u64().unwrap_or(0);
    (n("old"), n("new"))
}

/// The prune commits of `table`, newest first.
fn prunes(env: &Env, table: Table) -> Vec<retrylake::monitor::Commit> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut queue = env.data().queue().await;
        let history = queue.history(&[table]).await.unwrap();
        history
            .into_iter()
            .filter(|c| c.job.as_deref() == Some("prune"))
            .collect()
    })
}

#[test]
fn rows_past_their_retention_are_pruned_with_an_audit_line() {
    let env = Env::new();
    let old = drained_at(&env, "OLD", 40, "2020-01-01T00:00:00Z");
    let new = drained_at(&env, "NEW", 40, "2020-01-11T00:00:00Z");
    let tables = ["attempts", "final_results", "dead_letter_queue"];
    let before: Vec<(u64, u64)> = tables.iter().map(|t| old_and_new(&env, t, None)).collect();
    for (table, (old, new)) in tables.iter().zip(&before) {
        assert!(*old > 0 && *new > 0, "{table}: {old} old, {new} new rows");
    }

    // Nothing is dropped unless configured, however old.
    env.ok(&["run", "--now", "2021-01-01T00:00:00Z"]);
    for (table, counts) in tables.iter().zip(&before) {
        assert_eq!(old_and_new(&env, table, None), *counts, "{table}");
    }

    // Three days of attempts and dead letters, final results forever, at 2020-01-12.
    let keep = [
        "run",
        "--now",
        "2020-01-12T00:00:00Z",
        "--keep-attempts=3d",
        "--keep-dead=3d",
    ];
    env.ok(&keep);
    assert_eq!(old_and_new(&env, "attempts", None), (0, before[0].1));
    assert_eq!(old_and_new(&env, "final_results", None), before[1], "kept");
    assert_eq!(
        old_and_new(&env, "dead_letter_queue", None),
        (0, before[2].1)
    );

    for (table, (_, (old, _))) in [Table::Attempts, Table::DeadLetterQueue]
        .into_iter()
        .zip([&before[0], &before[2]].iter().enumerate())
    {
        // One audited DELETE per table: operation, retention, cutoff.
        let pruned = prunes(&env, table);
        assert_eq!(pruned.len(), 1, "{table:?}: {pruned:?}");
        let commit = &pruned[0];
        assert_eq!(commit.operation.as_deref(), Some("DELETE"), "{commit:?}");
        assert_eq!(commit.details["keep"], "3days", "{commit:?}");
        assert_eq!(commit.details["older_than"], "2020-01-09T00:00:00+00:00");
        // Time travel to the version before it still reads the pruned rows.
        let (was, _) = old_and_new(&env, table.name(), Some(commit.version - 1));
        assert_eq!(was, *old, "{table:?} before the prune");
    }
    assert!(prunes(&env, Table::FinalResults).is_empty());

    // Pruned once, not again at every round inside the slack.
    env.ok(&keep);
    env.ok(&[
        "run",
        "--now",
        "2020-01-12T06:00:00Z",
        "--keep-attempts=3d",
        "--keep-dead=3d",
    ]);
    assert_eq!(prunes(&env, Table::Attempts).len(), 1);

    // The audit still holds: the old finals outlive their journal rows, which the
    // journal's pruning horizon accounts for; every id is still in exactly one table.
    let mut left: Vec<String> = new.clone();
    let finals: Vec<retrylake::store::FinalRow> = env.rows();
    left.extend(
        finals
            .iter()
            .map(|f| f.sample_id.clone())
            .filter(|id| id.starts_with("OLD")),
    );
    assert!(old.iter().any(|id| left.contains(id)));
    assert_exactly_once(&env.data(), &left);
}

/// New tables keep removed files' tombstones a day, not Delta's week: checkpoints stay
/// small however busy the queue (a week of removes made a checkpoint of `retry_queue`
/// over a megabyte, which every process opening the table read).
#[test]
fn new_tables_keep_tombstones_a_day() {
    let env = Env::new();
    env.ok(&["init"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let queue = env.data().queue().await;
        for table in Table::ALL {
            let snapshot = queue.store().table(table).snapshot().unwrap();
            let config = snapshot.metadata().configuration();
            assert_eq!(
                config
                    .get("delta.deletedFileRetentionDuration")
                    .map(String::as_str),
                Some("interval 1 days"),
                "{table:?}"
            );
        }
    });
}
