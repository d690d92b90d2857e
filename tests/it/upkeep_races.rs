//! Upkeep against everything else: a hostile review of the local log listing, the
//! application-transaction cache and row retention. Each test failed on the defect it
//! names before its fix.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use retrylake::store::{AttemptKind, AttemptRow, FinalRow, Table};
use retrylake::{FixedClock, Maintenance, RoundConfig, RowRetention, SimulateProcessor};

use super::util::{Env, assert_exactly_once, write_samples};

const PAST: &str = "2020-01-01T00:00:00Z";

fn past() -> DateTime<Utc> {
    PAST.parse().unwrap()
}

fn limit(n: usize) -> RoundConfig {
    RoundConfig {
        limit: n,
        ..RoundConfig::default()
    }
}

/// A worker that crashed after its journal commit leaves its round half-applied until
/// someone recovers it: a worker restarting under its name, or another worker once the
/// records under its ended lease come up for a claim (oldest lock first, so behind any
/// backlog). Meanwhile a running worker with `--keep-attempts` prunes the journal by age,
/// including that round's rows, the only record of its outcomes. Recovery then finds no
/// journal rows, takes the round for a fenced one and puts its records back as they were:
/// successes already delivered downstream are called again, dead letters retried.
#[test]
fn pruning_the_journal_keeps_the_rows_of_a_round_not_yet_applied() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let env = Env::new();
    let (input, ids) = write_samples(&env, "H", 40);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", PAST]);

    // w2, a long-running worker, has started (its first round completed every
    // half-applied round there was: none).
    let clock = Arc::new(FixedClock::new(past()));
    let mut w2 = rt
        .block_on(env.data().queue())
        .with_worker("w2")
        .unwrap()
        .with_clock(clock.clone());
    let sim = SimulateProcessor::new(0.0, 1);
    rt.block_on(w2.run_round(&sim, &limit(5))).unwrap();

    // w1 journals a round of 5 and dies before applying it.
    let out = env
        .cmd()
        .env("RETRYLAKE_FAILPOINT", "after-journal")
        .args([
            "run",
            "--now",
            PAST,
            "--worker",
            "w1",
            "--limit",
            "5",
            "--transient-rate",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the failpoint did not fire");
    let journaled: Vec<AttemptRow> = env
        .rows::<AttemptRow>()
        .into_iter()
        .filter(|a| a.worker == "w1")
        .collect();
    assert_eq!(journaled.len(), 5, "{journaled:?}");
    let succeeded: Vec<&AttemptRow> = journaled
        .iter()
        .filter(|a| a.outcome == AttemptKind::Success)
        .collect();
    assert!(!succeeded.is_empty());

    // Two hours on, w2 works through the backlog ahead of w1's records, and its upkeep
    // prunes the journal's rows older than an hour.
    clock.set(past() + chrono::Duration::hours(2));
    rt.block_on(w2.run_round(&sim, &limit(5))).unwrap();
    let policy = Maintenance {
        keep_rows: RowRetention {
            attempts: Some(Duration::from_secs(3600)),
            ..RowRetention::default()
        },
        ..Maintenance::off()
    };
    let pruned = rt.block_on(w2.maintain(&policy)).unwrap();
    assert!(!pruned.is_empty(), "nothing pruned");
    drop(w2);

    // w1 comes back and the queue drains.
    let later = (past() + chrono::Duration::hours(2)).to_rfc3339();
    env.ok(&[
        "run",
        "--now",
        &later,
        "--worker",
        "w1",
        "--drain",
        "--transient-rate",
        "0",
    ]);

    // Every outcome w1 journaled stands: its successes are final as of their call, and
    // were not called a second time.
    let finals = env.rows::<FinalRow>();
    let again: Vec<String> = env
        .rows::<AttemptRow>()
        .into_iter()
        .filter(|a| succeeded.iter().any(|s| s.sample_id == a.sample_id))
        .filter(|a| (a.worker.as_str(), a.round) != ("w1", 1))
        .map(|a| format!("{} by {} round {}", a.sample_id, a.worker, a.round))
        .collect();
    assert!(
        again.is_empty(),
        "records whose success w1 journaled were called again: {again:?}"
    );
    for s in &succeeded {
        let f = finals
            .iter()
            .find(|f| f.sample_id == s.sample_id)
            .unwrap_or_else(|| panic!("{} not final", s.sample_id));
        assert_eq!(
            f.processed_at, s.finished_at,
            "{}: final from a second call, not the journaled one",
            s.sample_id
        );
    }
    assert_exactly_once(&env.data(), &ids);
}

/// A prune sets the journal's horizon (`retrylake-pruned`) to its cutoff, never lower than
/// before. One run on a clock that jumped years ahead (or a mistyped `--now`) sets it
/// decades into the future, and from then on `audit` skips every final and queued record
/// dated before it: every record processed afterwards on the right clock, whose journal
/// rows are all there. A final record that lost its journaled success goes unreported.
#[test]
fn one_prune_on_a_clock_far_ahead_does_not_blind_the_audit_for_good() {
    let env = Env::new();
    let (input, _) = write_samples(&env, "OLD", 10);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", PAST]);
    env.ok(&["run", "--now", PAST, "--drain", "--transient-rate", "0"]);

    // One run on a clock gone far ahead, with a retention: it prunes every journal row.
    env.ok(&[
        "run",
        "--now",
        "2100-01-01T00:00:00Z",
        "--keep-attempts",
        "1h",
    ]);

    // The clock is right again; new records are processed and journaled as usual.
    let now = "2020-02-01T00:00:00Z";
    let (input, new) = write_samples(&env, "NEW", 10);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", now]);
    env.ok(&["run", "--now", now, "--drain", "--transient-rate", "0"]);
    assert!(
        env.rows::<AttemptRow>()
            .iter()
            .any(|a| a.sample_id == "NEW-0001" && a.outcome == AttemptKind::Success)
    );

    // A real defect: a final record whose journaled success is gone.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = env.data().open().await;
        store
            .table(Table::Attempts)
            .clone()
            .delete()
            .with_predicate("sample_id = 'NEW-0001'")
            .await
            .unwrap();
    });
    let audit = rt.block_on(async { env.data().queue().await.audit().await.unwrap() });
    assert!(new.contains(&"NEW-0001".to_owned()));
    assert_eq!(
        audit.unjournaled_finals,
        vec!["NEW-0001".to_owned()],
        "the audit misses a final processed after the prune, with its journal intact"
    );
}

/// The log's commits as a cleanup in progress leaves them. `cleanup_expired_logs_for`
/// deletes the expired entries below a checkpoint in the order a directory listing gives
/// them (no order on a local disk), so while it runs any of them may be gone and any
/// still there. The probe stops at the first missing commit, while the folder's listing
/// shows the checkpoint and every commit after it: a reader updating then either fails
/// or (here) takes a version long past for the table's latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_updating_during_a_log_cleanup_reaches_the_latest_version() {
    let env = Env::new();
    let (input, _) = write_samples(&env, "C", 60);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", PAST]);
    let run = || {
        env.ok(&[
            "run",
            "--now",
            PAST,
            "--limit",
            "2",
            "--transient-rate",
            "0",
        ])
    };
    run();

    // A reader (a paused worker, a status) at version E of final_results.
    let mut reader = env.data().open().await;
    let table = Table::FinalResults;
    let e = reader.table(table).version().unwrap();

    // Other processes go on: rounds, a checkpoint, more rounds.
    for _ in 0..5 {
        run();
    }
    env.ok(&["optimize", "final_results"]);
    for _ in 0..2 {
        run();
    }
    let log = env.data_dir().join("final_results/_delta_log");
    let checkpoint = std::fs::read_dir(&log)
        .unwrap()
        .filter_map(|f| {
            let name = f.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".checkpoint.parquet")
                .map(|v| v.parse::<u64>().unwrap())
        })
        .max()
        .expect("optimize wrote a checkpoint");
    let latest = env.data().open().await.table(table).version().unwrap();
    assert!(
        e + 3 < checkpoint && checkpoint < latest,
        "e={e} checkpoint={checkpoint} latest={latest}"
    );

    // The cleanup of the entries below the checkpoint is part way: those above E + 1
    // are gone already, the rest not yet.
    for v in e + 2..checkpoint {
        std::fs::remove_file(log.join(format!("{v:020}.json"))).unwrap();
    }
    let fresh = env.data().open().await;
    assert_eq!(fresh.table(table).version(), Some(latest), "a fresh open");

    let refreshed = reader.refresh().await;
    assert!(refreshed.is_ok(), "{refreshed:?}");
    assert_eq!(
        reader.table(table).version(),
        Some(latest),
        "the reader took an old version for the latest"
    );
}

/// The application-transaction cache answers as delta-rs's replay does: after another
/// worker's commits (caught up commit by commit, and from far behind), and after time
/// travel back.
#[test]
fn cached_round_versions_match_a_fresh_reading() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let env = Env::new();
    let (input, _) = write_samples(&env, "T", 70);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", PAST]);
    let clock = Arc::new(FixedClock::new(past()));
    let mut watcher = rt.block_on(env.data().queue());
    rt.block_on(watcher.store().applied_round(Table::RetryQueue, "w2"))
        .unwrap();
    let mut w2 = rt
        .block_on(env.data().queue())
        .with_worker("w2")
        .unwrap()
        .with_clock(clock);
    let sim = SimulateProcessor::new(0.0, 1);
    // What a process that opens the tables now reads: delta-rs's replay, nothing cached.
    let fresh = |table: Table| {
        rt.block_on(async {
            let store = env.data().open().await;
            store.applied_round(table, "w2").await.unwrap()
        })
    };
    let cached = |watcher: &retrylake::Queue, table: Table| {
        rt.block_on(watcher.store().applied_round(table, "w2"))
            .unwrap()
    };
    for (rounds, what) in [(3, "a few commits"), (60, "far behind")] {
        assert_eq!(
            cached(&watcher, Table::RetryQueue),
            fresh(Table::RetryQueue)
        );
        for _ in 0..rounds {
            rt.block_on(w2.run_round(&sim, &limit(1))).unwrap();
        }
        rt.block_on(watcher.refresh()).unwrap();
        for table in Table::ALL {
            assert_eq!(
                cached(&watcher, table),
                fresh(table),
                "{table:?} after {what}"
            );
        }
    }
    assert!(cached(&watcher, Table::Attempts).unwrap() >= 63);
    // Asked at the latest version, then travelled back: what a store that travelled
    // there first answers (version 1 of attempts is w2's first round, 0 before it).
    rt.block_on(async {
        for version in [1, 0] {
            let mut store = env.data().open().await;
            assert!(store.applied_round(Table::Attempts, "w2").await.unwrap() >= Some(63));
            store
                .travel(retrylake::AsOf::Version(version))
                .await
                .unwrap();
            let mut first = env.data().open().await;
            first
                .travel(retrylake::AsOf::Version(version))
                .await
                .unwrap();
            assert_eq!(
                store.applied_round(Table::Attempts, "w2").await.unwrap(),
                first.applied_round(Table::Attempts, "w2").await.unwrap(),
                "at version {version}"
            );
        }
    });
}
