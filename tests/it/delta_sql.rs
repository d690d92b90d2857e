//! Delta SQL through the binary: the original Spark job's statements as written (only the
//! path replaced), time travel per table reference, DESCRIBE HISTORY and DESCRIBE DETAIL as
//! tables, clear errors naming the table and its versions, read-only SQL, statements from
//! stdin, the interactive shell under a pty, and the same on S3 (moto on loopback).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use retrylake::store::Table;
use retrylake::{AsOf, Maintenance};
use serde_json::Value;

use super::util::{Env, data_files, write_samples};

const NOW: &str = "2025-11-24T14:00:00Z";
const LATER: &str = "2025-11-24T14:02:00Z";

/// Gap left between the commits that `TIMESTAMP AS OF` tells apart, so that a time
/// halfway between two of them is clear of the file system's timestamp granularity.
const SPACING: Duration = Duration::from_millis(1200);

/// Enqueues 45 samples, then runs two rounds on the virtual clock with the seeded
/// simulator: round 1 leaves 34 final, 6 to retry and 5 dead (empty payloads), round 2
/// succeeds 5 of the 6 and retries the last. `retry_queue` ends at version 5: 0 create,
/// 1 enqueue, 2 claim, 3 round 1, 4 claim, 5 round 2. With `spaced`, the enqueue, the
/// first round and the second are [`SPACING`] apart. Returns the ids enqueued.
fn setup(env: &Env, spaced: bool) -> Vec<String> {
    let (input, ids) = write_samples(env, "M", 45);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", NOW]);
    let round = |now: &str| {
        if spaced {
            std::thread::sleep(SPACING);
        }
        env.ok(&[
            "run",
            "--processor",
            "simulate",
            "--now",
            now,
            "--seed",
            "3",
        ]);
    };
    round(NOW);
    round(LATER);
    ids
}

/// The rows of `sql` (with `more` flags), as `--format json` prints them.
fn rows(env: &Env, sql: &str, more: &[&str]) -> Vec<Value> {
    let mut args = vec!["query", sql, "--format", "json"];
    args.extend(more);
    let out = env.ok(&args);
    match serde_json::from_str(&out) {
        Ok(Value::Array(rows)) => rows,
        _ => panic!("{sql}: not one JSON array: {out}"),
    }
}

/// The one integer of a one-row, one-column result.
fn scalar(env: &Env, sql: &str, more: &[&str]) -> i64 {
    let rows = rows(env, sql, more);
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    let values: Vec<&Value> = rows[0].as_object().unwrap().values().collect();
    assert_eq!(values.len(), 1, "{sql}: {rows:?}");
    values[0]
        .as_i64()
        .unwrap_or_else(|| panic!("{sql}: {rows:?}"))
}

/// Runs `query sql more...`, asserts exit code 2, one `error:` line, no panic or
/// backtrace, and returns the message.
fn refused(env: &Env, sql: &str, more: &[&str]) -> String {
    let mut args = vec!["query", sql];
    args.extend(more);
    let err = env.fails(&args);
    assert!(err.starts_with("error: "), "{sql}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{sql}: {err}");
    for noise in ["panicked", "RUST_BACKTRACE", "internal error"] {
        assert!(!err.contains(noise), "{sql}: {err}");
    }
    err
}

/// `DESCRIBE HISTORY` of `table` as JSON rows, newest first.
fn history(env: &Env, table: &str, more: &[&str]) -> Vec<Value> {
    rows(env, &format!("DESCRIBE HISTORY {table}"), more)
}

/// The time `DESCRIBE HISTORY` gives a version's commit.
fn commit_time(history: &[Value], version: i64) -> DateTime<Utc> {
    let row = history
        .iter()
        .find(|r| r["version"] == version)
        .unwrap_or_else(|| panic!("no version {version} in {history:?}"));
    row["timestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{row}: {e}"))
}

/// A time halfway between two commits, as `TIMESTAMP AS OF` takes it.
fn halfway(a: DateTime<Utc>, b: DateTime<Utc>) -> String {
    assert!(b - a > chrono::Duration::milliseconds(500), "{a} .. {b}");
    (a + (b - a) / 2).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Every file under `dir` with its size, recursively.
fn tree(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.insert(entry.path().display().to_string(), meta.len());
            }
        }
    }
    out
}

/// The parquet files in a local table's folder, with their sizes.
fn parquet_on_disk(env: &Env, table: &str) -> BTreeMap<String, u64> {
    std::fs::read_dir(env.data_dir().join(table))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().extension() == Some("parquet".as_ref()))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect()
}

/// The three monitoring queries of the original job, over `retry_queue`,
/// `dead_letter_queue` and `final_results` as `name` spells them.
fn monitoring(name: impl Fn(&str) -> String) -> [String; 3] {
    [
        format!(
            "SELECT COUNT(*) as total_waiting, AVG(retry_count) as avg_retries, \
             MAX(retry_count) as max_retries FROM {}",
            name("retry_queue")
        ),
        format!(
            "SELECT error_msg, COUNT(*) as occurrence_count FROM {} GROUP BY error_msg \
             ORDER BY occurrence_count DESC",
            name("dead_letter_queue")
        ),
        format!(
            "SELECT DATE(processed_at) as date, COUNT(*) as success_count FROM {} \
             GROUP BY DATE(processed_at)",
            name("final_results")
        ),
    ]
}

#[test]
fn the_original_jobs_statements_run_as_written_with_only_the_path_replaced() {
    let env = Env::new();
    let ids = setup(&env, false);
    let root = env.data().url;
    // Records in all three tables.
    assert_eq!(scalar(&env, "SELECT COUNT(*) FROM retry_queue", &[]), 1);
    assert_eq!(scalar(&env, "SELECT COUNT(*) FROM final_results", &[]), 39);
    assert_eq!(
        scalar(&env, "SELECT COUNT(*) FROM dead_letter_queue", &[]),
        5
    );

    // -- See retry queue state 1 hour ago
    let original = format!("SELECT * FROM delta.`{root}/retry_queue`\nVERSION AS OF 1");
    let table = env.ok(&["query", &original]);
    for id in &ids {
        assert!(table.contains(id.as_str()), "{id} missing: {table}");
    }
    // With its comment, as a script on stdin (an argument starting with `--` is a flag).
    let out = env
        .cmd()
        .arg("query")
        .write_stdin(format!("-- See retry queue state 1 hour ago\n{original}\n"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), table);
    let mut at_1 = rows(&env, &original, &[]);
    at_1.sort_by_key(|r| r["sample_id"].as_str().unwrap().to_owned());
    let got: Vec<&str> = at_1
        .iter()
        .map(|r| r["sample_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids, "version 1 is the enqueue: exactly its records");
    for (i, r) in at_1.iter().enumerate() {
        assert_eq!(r["retry_count"], 0, "{r}");
        assert_eq!(r["enqueued_at"], "2025-11-24T14:00:00Z", "{r}");
        assert_eq!(r["process_after"], "2025-11-24T14:00:00Z", "{r}");
        assert!(r.get("error_msg").is_none(), "{r}");
        let payload = r.get("payload").and_then(Value::as_str).unwrap_or("");
        let expected = if i % 9 == 0 {
            String::new()
        } else {
            format!("data {i}")
        };
        assert_eq!(payload, expected, "{r}");
    }
    // A relative path, as the README writes it, from the data root's parent.
    let relative = env
        .cmd()
        .current_dir(env.data_dir().parent().unwrap())
        .args([
            "query",
            "SELECT * FROM delta.`data/retry_queue`\nVERSION AS OF 1",
        ])
        .output()
        .unwrap();
    assert!(
        relative.status.success(),
        "{}",
        String::from_utf8_lossy(&relative.stderr)
    );
    assert_eq!(String::from_utf8(relative.stdout).unwrap(), table);
    let mut by_name = rows(&env, "SELECT * FROM retry_queue VERSION AS OF 1", &[]);
    by_name.sort_by_key(|r| r["sample_id"].as_str().unwrap().to_owned());
    assert_eq!(by_name, at_1);

    // The audit trail.
    let described = env.ok(&[
        "query",
        &format!("DESCRIBE HISTORY delta.`{root}/retry_queue`"),
    ]);
    for word in [
        "CREATE TABLE",
        "WRITE",
        "MERGE",
        "UPDATE",
        "enqueue",
        "claim",
    ] {
        assert!(described.contains(word), "{word}: {described}");
    }
    let by_path = history(&env, &format!("delta.`{root}/retry_queue`"), &[]);
    let versions: Vec<i64> = by_path
        .iter()
        .map(|r| r["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [5, 4, 3, 2, 1, 0]);
    assert_eq!(by_path, history(&env, "retry_queue", &[]));

    // The monitoring queries: by path as by name, and what the queue holds.
    let by_path = monitoring(|t| format!("delta.`{root}/{t}`"));
    let by_name = monitoring(str::to_owned);
    for (path_sql, name_sql) in by_path.iter().zip(&by_name) {
        assert_eq!(
            rows(&env, path_sql, &[]),
            rows(&env, name_sql, &[]),
            "{path_sql}"
        );
    }
    let backlog = rows(&env, &by_path[0], &[]);
    assert_eq!(backlog[0]["total_waiting"], 1, "{backlog:?}");
    assert_eq!(backlog[0]["max_retries"], 2, "{backlog:?}");
    let dlq = rows(&env, &by_path[1], &[]);
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0]["error_msg"], "Missing Payload");
    assert_eq!(dlq[0]["occurrence_count"], 5);
    let out = env.ok(&["query", &by_path[2], "--format", "csv"]);
    assert_eq!(out, "date,success_count\n2025-11-24,39\n");
}

#[test]
fn each_table_reference_reads_its_own_version_in_one_query() {
    let env = Env::new();
    setup(&env, true);
    // The queue as enqueued, joined with the results now; no alias: the table's own name
    // still qualifies its columns.
    let joined = rows(
        &env,
        "SELECT COUNT(*) AS waiting, COUNT(f.sample_id) AS done_since \
         FROM retry_queue VERSION AS OF 1 LEFT JOIN final_results f \
         ON retry_queue.sample_id = f.sample_id",
        &[],
    );
    assert_eq!(
        joined,
        [serde_json::json!({"waiting": 45, "done_since": 39})]
    );
    let qualified = rows(
        &env,
        "SELECT retry_queue.sample_id FROM retry_queue VERSION AS OF 3 ORDER BY 1",
        &[],
    );
    let retried = rows(
        &env,
        "SELECT sample_id FROM attempts WHERE round = 1 AND outcome = 'transient' ORDER BY 1",
        &[],
    );
    assert_eq!(qualified, retried, "version 3 holds round 1's retries");

    // An alias after the clause, bare, with AS, and after FOR VERSION.
    let recovered = rows(
        &env,
        "SELECT sample_id FROM attempts WHERE round = 2 AND outcome = 'success' ORDER BY 1",
        &[],
    );
    assert_eq!(recovered.len(), 5);
    for sql in [
        "SELECT q.sample_id FROM retry_queue VERSION AS OF 3 q \
         JOIN final_results AS f ON q.sample_id = f.sample_id ORDER BY 1",
        "SELECT q.sample_id FROM retry_queue VERSION AS OF 3 AS q \
         JOIN final_results f ON q.sample_id = f.sample_id ORDER BY 1",
        "SELECT q.sample_id FROM retry_queue FOR VERSION AS OF 3 AS q \
         JOIN final_results f USING (sample_id) ORDER BY 1",
    ] {
        assert_eq!(rows(&env, sql, &[]), recovered, "{sql}");
    }
    // One table at two versions and now, in one query.
    let three = rows(
        &env,
        "SELECT (SELECT COUNT(*) FROM retry_queue VERSION AS OF 1) AS a, \
         (SELECT COUNT(*) FROM retry_queue VERSION AS OF 3) AS b, \
         (SELECT COUNT(*) FROM retry_queue) AS c, \
         (SELECT COUNT(*) FROM final_results VERSION AS OF 1) AS d",
        &[],
    );
    assert_eq!(
        three,
        [serde_json::json!({"a": 45, "b": 6, "c": 1, "d": 34})]
    );

    // TIMESTAMP AS OF a time between two commits reads the earlier one.
    let commits = history(&env, "retry_queue", &[]);
    let after_enqueue = halfway(commit_time(&commits, 1), commit_time(&commits, 2));
    let after_round_1 = halfway(commit_time(&commits, 3), commit_time(&commits, 4));
    let state = |clause: &str| {
        rows(
            &env,
            &format!(
                "SELECT sample_id, retry_count, error_msg FROM retry_queue {clause} ORDER BY 1"
            ),
            &[],
        )
    };
    let v1 = state("VERSION AS OF 1");
    assert_eq!(v1.len(), 45);
    assert_eq!(state(&format!("TIMESTAMP AS OF '{after_enqueue}'")), v1);
    let v3 = state("VERSION AS OF 3");
    assert_eq!(v3.len(), 6);
    assert_eq!(state(&format!("TIMESTAMP AS OF '{after_round_1}'")), v3);
    // The very time DESCRIBE HISTORY gives a commit reads that commit's version.
    let at_3 = commit_time(&commits, 3).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(state(&format!("TIMESTAMP AS OF '{at_3}'")), v3, "{at_3}");
    // The same without an offset (UTC) and with one, an alias after the clause, and both
    // times in one query.
    let naive = after_round_1.trim_end_matches('Z').replace('T', " ");
    let both = rows(
        &env,
        &format!(
            "SELECT (SELECT COUNT(*) FROM retry_queue TIMESTAMP AS OF '{after_enqueue}' tq) AS a, \
             (SELECT COUNT(*) FROM retry_queue TIMESTAMP AS OF '{naive}' AS tb \
              WHERE tb.retry_count = 1) AS b, \
             (SELECT COUNT(*) FROM retry_queue SYSTEM_TIME AS OF '{after_round_1}') AS c"
        ),
        &[],
    );
    assert_eq!(both, [serde_json::json!({"a": 45, "b": 6, "c": 6})]);
}

#[test]
fn a_version_beyond_the_latest_names_the_table_and_its_range() {
    let env = Env::new();
    setup(&env, false);
    let root = env.data().url;
    let err = refused(&env, "SELECT * FROM retry_queue VERSION AS OF 6", &[]);
    assert!(
        err.contains("retry_queue: no version 6: it has versions 0 to 5"),
        "{err}"
    );
    let err = refused(
        &env,
        &format!("SELECT * FROM delta.`{root}/final_results`\nVERSION AS OF 12"),
        &[],
    );
    assert!(
        err.contains(&format!("delta.`{root}/final_results`"))
            && err.contains("no version 12: it has versions 0 to 2"),
        "{err}"
    );
    // In a join, the table that lacks the version is the one named.
    let err = refused(
        &env,
        "SELECT * FROM retry_queue VERSION AS OF 5 r JOIN final_results VERSION AS OF 5 f \
         ON r.sample_id = f.sample_id",
        &[],
    );
    assert!(
        err.contains("final_results: no version 5: it has versions 0 to 2"),
        "{err}"
    );
}

#[test]
fn the_version_flag_refuses_only_a_named_table_that_lacks_the_version() {
    let env = Env::new();
    setup(&env, false);
    // retry_queue has version 4 (round 2's claim: round 1's 6 retries); final_results
    // ends at 2.
    assert_eq!(
        scalar(
            &env,
            "SELECT COUNT(*) FROM retry_queue",
            &["--version", "4"]
        ),
        6
    );
    let err = refused(
        &env,
        "SELECT (SELECT COUNT(*) FROM retry_queue) AS q, (SELECT COUNT(*) FROM final_results) AS f",
        &["--version", "4"],
    );
    assert!(
        err.contains("final_results: no version 4: it has versions 0 to 2"),
        "{err}"
    );
    assert!(!err.contains("retry_queue"), "{err}");
    // A table with its own VERSION AS OF is not read at --version.
    let mixed = rows(
        &env,
        "SELECT (SELECT COUNT(*) FROM retry_queue) AS q, \
         (SELECT COUNT(*) FROM final_results VERSION AS OF 1) AS f",
        &["--version", "4"],
    );
    assert_eq!(mixed, [serde_json::json!({"q": 6, "f": 34})]);
}

#[test]
fn a_time_before_the_first_commit_or_in_the_future_is_refused_with_the_range() {
    let env = Env::new();
    setup(&env, false);
    let err = refused(
        &env,
        "SELECT * FROM retry_queue TIMESTAMP AS OF '2000-01-01 00:00:00'",
        &[],
    );
    assert!(
        err.contains("retry_queue: no version as of 2000-01-01T00:00:00Z")
            && err.contains("earliest version, 0, was committed at")
            && err.contains("0 to 5"),
        "{err}"
    );
    let err = refused(
        &env,
        "SELECT COUNT(*) FROM final_results",
        &["--as-of", "2000-01-01T00:00:00Z"],
    );
    assert!(
        err.contains("final_results: no version as of") && err.contains("0 to 2"),
        "{err}"
    );
    let future = (Utc::now() + chrono::Duration::days(365 * 50))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let err = refused(
        &env,
        &format!("SELECT * FROM dead_letter_queue TIMESTAMP AS OF '{future}'"),
        &[],
    );
    assert!(
        err.contains("dead_letter_queue: no version as of")
            && err.contains("in the future")
            && err.contains("0 to 2"),
        "{err}"
    );
}

/// `TIMESTAMP AS OF` takes an expression, as Databricks does ("the retry queue 1 hour
/// ago"): evaluated when the query is planned, then refused or read like a literal time.
#[test]
fn a_time_expression_reads_the_version_of_its_value() {
    let env = Env::new();
    setup(&env, true);
    // An hour ago the tables did not exist: refused, naming the time it evaluated to.
    let err = refused(
        &env,
        "SELECT * FROM retry_queue TIMESTAMP AS OF current_timestamp() - INTERVAL 1 HOUR",
        &[],
    );
    assert!(
        err.contains("retry_queue: no version as of ")
            && err.contains("earliest version, 0, was committed at"),
        "{err}"
    );
    // Now is the latest version: one record still waits after round 2.
    let now = scalar(
        &env,
        "SELECT COUNT(*) FROM retry_queue TIMESTAMP AS OF now()",
        &[],
    );
    assert_eq!(now, scalar(&env, "SELECT COUNT(*) FROM retry_queue", &[]));
    // Halfway between round 1 and round 2, by arithmetic on the history's times: round 1's
    // state, with an alias after the expression.
    let h = history(&env, "retry_queue", &[]);
    let mid = halfway(commit_time(&h, 3), commit_time(&h, 5));
    let sql = format!(
        "SELECT COUNT(*) FROM retry_queue TIMESTAMP AS OF TIMESTAMP '{mid}' + INTERVAL '1' \
         MILLISECOND q WHERE q.retry_count >= 0"
    );
    assert_eq!(
        scalar(&env, &sql, &[]),
        scalar(
            &env,
            "SELECT COUNT(*) FROM retry_queue VERSION AS OF 3",
            &[]
        )
    );
    // An expression that is no time is refused, naming it.
    let err = refused(
        &env,
        "SELECT * FROM retry_queue TIMESTAMP AS OF upper('x')",
        &[],
    );
    assert!(err.contains("TIMESTAMP AS OF upper('x')"), "{err}");
}

/// Sets the modification time of every `_delta_log` entry of the local tables to `age`
/// ago, as if they had been written then.
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

#[test]
fn a_version_whose_log_entries_were_removed_is_refused_with_the_range() {
    let env = Env::new();
    setup(&env, false);
    // A checkpoint of every table, then every log entry three days old: past the default
    // retention of a day.
    env.ok(&["optimize"]);
    age_logs(&env, Duration::from_secs(3 * 24 * 3600));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut queue = env.data().queue().await;
        let policy = Maintenance {
            clean_log_every: 1,
            compact_at: None,
            vacuum_after: None,
            ..Maintenance::default()
        };
        // A new version passes a multiple of `clean_log_every`.
        let more = env.write(
            "more.jsonl",
            "{\"sample_id\":\"M-more\",\"payload\":\"x\"}\n",
        );
        queue.enqueue(&more, &Default::default()).await.unwrap();
        let done = queue.maintain(&policy).await.unwrap();
        let cleaned = done.iter().find(|d| d.table == "retry_queue");
        assert!(
            cleaned.is_some_and(|d| d.log_entries_removed > 0),
            "{done:?}"
        );
        // The library refuses it too.
        let gone = queue
            .query("SELECT COUNT(*) FROM retry_queue", AsOf::Version(1))
            .await;
        assert!(gone.is_err(), "{gone:?}");
    });
    let detail = rows(
        &env,
        "SELECT \"earliestVersion\" AS earliest, \"latestVersion\" AS latest \
         FROM (DESCRIBE DETAIL retry_queue)",
        &[],
    );
    let (earliest, latest) = (
        detail[0]["earliest"].as_i64().unwrap(),
        detail[0]["latest"].as_i64().unwrap(),
    );
    assert!(earliest > 1 && latest > earliest, "{detail:?}");
    let err = refused(&env, "SELECT * FROM retry_queue VERSION AS OF 1", &[]);
    assert!(
        err.contains(&format!(
            "retry_queue: no version 1: it has versions {earliest} to {latest}"
        )) && err.contains("retention"),
        "{err}"
    );
    let err = refused(
        &env,
        "SELECT COUNT(*) FROM retry_queue",
        &["--version", "1"],
    );
    assert!(err.contains(&format!("{earliest} to {latest}")), "{err}");
    // The versions the log still has read, and the history lists just those.
    assert_eq!(
        scalar(
            &env,
            &format!("SELECT COUNT(*) FROM retry_queue VERSION AS OF {latest}"),
            &[]
        ),
        2
    );
    let versions: Vec<i64> = history(&env, "retry_queue", &[])
        .iter()
        .map(|r| r["version"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (earliest..=latest).rev().collect();
    assert_eq!(versions, expected);
}

#[test]
fn a_version_whose_files_were_vacuumed_is_refused_naming_vacuum() {
    let env = Env::new();
    setup(&env, false);
    let out = env.ok(&["optimize"]);
    assert!(
        out.contains("final_results: 2 files compacted into 1"),
        "{out}"
    );
    let out = env.ok(&["vacuum", "--retain", "0s"]);
    assert!(out.contains("final_results: 2 files deleted"), "{out}");
    for (sql, more, table, version) in [
        (
            "SELECT * FROM final_results VERSION AS OF 1",
            vec![],
            "final_results",
            1,
        ),
        (
            "SELECT COUNT(*) FROM final_results",
            vec!["--version", "2"],
            "final_results",
            2,
        ),
        (
            "SELECT * FROM retry_queue VERSION AS OF 1",
            vec![],
            "retry_queue",
            1,
        ),
    ] {
        let err = refused(&env, sql, &more);
        assert!(
            err.contains(&format!("{table}: version {version} cannot be read"))
                && err.contains("removed by vacuum"),
            "{sql}: {err}"
        );
        for raw in [
            "No such file",
            "not found",
            "NotFound",
            "Object at location",
        ] {
            assert!(!err.contains(raw), "{sql}: {err}");
        }
    }
    // The latest versions still read in full.
    assert_eq!(scalar(&env, "SELECT COUNT(*) FROM final_results", &[]), 39);
    assert_eq!(scalar(&env, "SELECT COUNT(*) FROM retry_queue", &[]), 1);
}

#[test]
fn a_path_that_is_no_delta_table_is_refused_and_not_created() {
    let env = Env::new();
    env.ok(&["init"]);
    let err = refused(&env, "SELECT * FROM delta.`/no/such/path`", &[]);
    assert!(
        err.contains("delta.`/no/such/path`") && err.contains("no Delta table at /no/such/path"),
        "{err}"
    );
    assert!(!Path::new("/no/such/path").exists());
    // A folder without _delta_log, and one that does not exist inside it.
    let plain = env.path("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("data.csv"), "a,b\n1,2\n").unwrap();
    let before = tree(&plain);
    let plain = plain.to_str().unwrap();
    let err = refused(
        &env,
        &format!("SELECT COUNT(*) FROM delta.`{plain}` VERSION AS OF 0"),
        &[],
    );
    assert!(
        err.contains(&format!("delta.`{plain}`")) && err.contains("no Delta table"),
        "{err}"
    );
    let err = refused(&env, &format!("DESCRIBE HISTORY delta.`{plain}`"), &[]);
    assert!(err.contains("no Delta table"), "{err}");
    let missing = format!("{plain}/not/here");
    let err = refused(&env, &format!("SELECT * FROM delta.`{missing}`"), &[]);
    assert!(err.contains(&format!("delta.`{missing}`")), "{err}");
    assert_eq!(tree(env.path("plain").as_path()), before, "the query wrote");
    assert!(!env.path("plain/_delta_log").exists());
}

#[test]
fn describe_history_of_an_unknown_table_is_refused() {
    let env = Env::new();
    env.ok(&["init"]);
    for sql in [
        "DESCRIBE HISTORY nope",
        "SELECT * FROM (DESCRIBE HISTORY nope) LIMIT 1",
    ] {
        let err = refused(&env, sql, &[]);
        assert!(
            err.contains("unknown table nope") && err.contains("retry_queue"),
            "{sql}: {err}"
        );
    }
}

/// The columns of `DESCRIBE HISTORY`, in order (Databricks' `userId` and `userName` may
/// sit among them).
const HISTORY_COLUMNS: [&str; 15] = [
    "version",
    "timestamp",
    "operation",
    "operationParameters",
    "readVersion",
    "isolationLevel",
    "isBlindAppend",
    "operationMetrics",
    "userMetadata",
    "engineInfo",
    "job",
    "round",
    "worker",
    "counts",
    "details",
];

#[test]
fn describe_history_lists_every_commit_newest_first_and_filters() {
    let env = Env::new();
    setup(&env, false);
    // The columns, by the CSV header (JSON leaves nulls out).
    let csv = env.ok(&["query", "DESCRIBE HISTORY retry_queue", "--format", "csv"]);
    let header: Vec<&str> = csv
        .lines()
        .next()
        .unwrap()
        .split(',')
        .filter(|c| !matches!(*c, "userId" | "userName"))
        .collect();
    assert_eq!(header, HISTORY_COLUMNS);

    // Newest first, every version, and LIMIT keeps the newest.
    let all = history(&env, "retry_queue", &[]);
    let versions: Vec<i64> = all.iter().map(|r| r["version"].as_i64().unwrap()).collect();
    assert_eq!(versions, [5, 4, 3, 2, 1, 0]);
    let times: Vec<DateTime<Utc>> = versions.iter().map(|&v| commit_time(&all, v)).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    let two = rows(&env, "DESCRIBE HISTORY retry_queue LIMIT 2", &[]);
    assert_eq!(two, all[..2]);
    assert_eq!(all[0]["job"], "round");
    assert_eq!(all[0]["round"], 2);
    assert_eq!(all[0]["worker"], "main");
    assert_eq!(all[0]["operation"], "MERGE");
    assert_eq!(all[4]["job"], "enqueue");
    assert_eq!(all[4]["counts"]["enqueued"], 45);
    assert_eq!(all[5]["operation"], "CREATE TABLE");

    // Filtered, a map entry picked out.
    let succeeded = rows(
        &env,
        "SELECT version, counts['succeeded'] FROM (DESCRIBE HISTORY final_results) WHERE job = 'round'",
        &[],
    );
    let pairs: Vec<(i64, i64)> = succeeded
        .iter()
        .map(|r| {
            let r = r.as_object().unwrap();
            let count = r
                .iter()
                .find(|(k, _)| *k != "version")
                .and_then(|(_, v)| v.as_i64())
                .unwrap_or_else(|| panic!("{r:?}"));
            (r["version"].as_i64().unwrap(), count)
        })
        .collect();
    assert_eq!(pairs, [(2, 5), (1, 34)]);

    // The versions agree with `retrylake history --json`, table by table.
    let commits: Value = serde_json::from_str(&env.ok(&["history", "--json"])).unwrap();
    for table in Table::ALL {
        let mut expected: Vec<Value> = commits
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["table"] == table.name())
            .map(|c| {
                serde_json::json!([
                    c["version"],
                    c["operation"],
                    c["job"],
                    c["round"],
                    c["worker"]
                ])
            })
            .collect();
        expected.sort_by_key(|c| -c[0].as_i64().unwrap());
        let got: Vec<Value> = history(&env, table.name(), &[])
            .iter()
            .map(|r| {
                let or_null = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
                serde_json::json!([
                    r["version"],
                    or_null("operation"),
                    or_null("job"),
                    or_null("round"),
                    or_null("worker")
                ])
            })
            .collect();
        assert_eq!(got, expected, "{table:?}");
    }
}

/// `DESCRIBE HISTORY` under `--version` labels each commit with its own version: the one
/// `retrylake history` gives it.
#[test]
fn describe_history_under_the_version_flag_numbers_each_commit_as_its_own() {
    let env = Env::new();
    setup(&env, false);
    let commits: Value =
        serde_json::from_str(&env.ok(&["history", "retry_queue", "--json"])).unwrap();
    let job_of: BTreeMap<i64, Value> = commits
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["version"].as_i64().unwrap(), c["job"].clone()))
        .collect();
    let got = rows(
        &env,
        "SELECT version, job FROM (DESCRIBE HISTORY retry_queue)",
        &["--version", "2"],
    );
    let mut seen = std::collections::BTreeSet::new();
    for r in &got {
        let v = r["version"].as_i64().unwrap();
        assert!(seen.insert(v), "version {v} twice: {got:?}");
        assert_eq!(r["job"], job_of[&v], "version {v}: {got:?}");
    }
    assert!(seen.contains(&2), "{got:?}");
}

#[test]
fn describe_detail_counts_the_files_of_the_latest_snapshot() {
    let env = Env::new();
    env.ok(&["init"]);
    let (input, _) = write_samples(&env, "D", 20);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", NOW]);
    let root = env.data().url;
    // Right after one enqueue: the one file on disk.
    let on_disk = parquet_on_disk(&env, "retry_queue");
    assert_eq!(on_disk.len(), 1, "{on_disk:?}");
    let detail = rows(&env, "DESCRIBE DETAIL retry_queue", &[]);
    assert_eq!(detail.len(), 1);
    let d = &detail[0];
    assert_eq!(d["format"], "delta");
    assert_eq!(d["name"], "retry_queue");
    assert_eq!(d["numFiles"], 1, "{d}");
    assert_eq!(d["sizeInBytes"], on_disk.values().sum::<u64>(), "{d}");
    let location = d["location"].as_str().unwrap();
    assert!(
        location.starts_with("file://")
            && location
                .trim_end_matches('/')
                .ends_with(&format!("{root}/retry_queue")),
        "{location}"
    );
    assert_eq!(
        (&d["version"], &d["earliestVersion"], &d["latestVersion"]),
        (&Value::from(1), &Value::from(0), &Value::from(1)),
        "{d}"
    );
    // By path, the same row.
    assert_eq!(
        rows(
            &env,
            &format!("DESCRIBE DETAIL delta.`{root}/retry_queue`"),
            &[]
        ),
        detail
    );

    // After rounds, the queue's removed files stay on disk: numFiles counts the latest
    // snapshot's.
    env.ok(&[
        "run",
        "--processor",
        "simulate",
        "--now",
        NOW,
        "--seed",
        "3",
    ]);
    env.ok(&[
        "run",
        "--processor",
        "simulate",
        "--now",
        LATER,
        "--seed",
        "3",
    ]);
    for table in [Table::RetryQueue, Table::FinalResults, Table::Attempts] {
        let live = data_files(&env.data(), table);
        let on_disk = parquet_on_disk(&env, table.name());
        let size: u64 = live
            .iter()
            .map(|f| {
                on_disk
                    .get(f)
                    .copied()
                    .unwrap_or_else(|| panic!("{f} not on disk"))
            })
            .sum();
        let d = &rows(&env, &format!("DESCRIBE DETAIL {}", table.name()), &[])[0];
        assert_eq!(d["numFiles"], live.len(), "{table:?}: {d}");
        assert_eq!(d["sizeInBytes"], size, "{table:?}: {d}");
        let latest = history(&env, table.name(), &[])[0]["version"].clone();
        assert_eq!(d["version"], latest, "{table:?}: {d}");
        assert_eq!(d["latestVersion"], latest, "{table:?}: {d}");
        assert_eq!(d["earliestVersion"], 0, "{table:?}: {d}");
    }
    let live = data_files(&env.data(), Table::RetryQueue).len();
    assert!(
        parquet_on_disk(&env, "retry_queue").len() > live,
        "the claims and merges left removed files behind"
    );
    // At a version: that version's files.
    let at_1 = rows(
        &env,
        "SELECT version, \"numFiles\" AS files FROM (DESCRIBE DETAIL retry_queue)",
        &["--version", "1"],
    );
    assert_eq!(at_1, [serde_json::json!({"version": 1, "files": 1})]);
}

#[test]
fn writes_through_delta_sql_are_refused_and_change_nothing() {
    let env = Env::new();
    setup(&env, false);
    let root = env.data().url;
    let copy_to = env.path("x.csv");
    let copy_s = copy_to.to_str().unwrap();
    let history_before = env.ok(&["history", "--json"]);
    let files_before = tree(&env.data_dir());
    for (sql, what) in [
        (
            format!(
                "INSERT INTO delta.`{root}/final_results` \
                 VALUES ('X', 'p', now(), 1, 'r')"
            ),
            "Insert",
        ),
        (
            format!(
                "INSERT INTO delta.`{root}/final_results` \
                 SELECT * FROM final_results VERSION AS OF 1"
            ),
            "Insert",
        ),
        (
            format!("COPY (DESCRIBE HISTORY retry_queue) TO '{copy_s}'"),
            "COPY",
        ),
        (
            format!(
                "COPY (SELECT * FROM delta.`{root}/retry_queue` VERSION AS OF 1) TO '{copy_s}' STORED AS CSV"
            ),
            "COPY",
        ),
        (
            "CREATE VIEW v AS SELECT * FROM retry_queue VERSION AS OF 1".to_owned(),
            "CreateView",
        ),
        (
            format!("CREATE EXTERNAL TABLE e STORED AS PARQUET LOCATION '{root}/final_results'"),
            "CreateExternalTable",
        ),
        ("DROP TABLE retry_queue".to_owned(), "DropTable"),
    ] {
        let err = refused(&env, &sql, &[]);
        assert!(
            err.contains("read-only") && err.contains(what),
            "{sql}: {err}"
        );
        assert!(!copy_to.exists(), "{sql} wrote {copy_s}");
    }
    assert_eq!(env.ok(&["history", "--json"]), history_before);
    assert_eq!(tree(&env.data_dir()), files_before, "a file changed");
    assert_eq!(scalar(&env, "SELECT COUNT(*) FROM final_results", &[]), 39);
}

/// Runs `query` (with `more` flags) with `script` on stdin.
fn piped(env: &Env, script: &str, more: &[&str]) -> std::process::Output {
    env.cmd()
        .arg("query")
        .args(more)
        .write_stdin(script)
        .output()
        .unwrap()
}

#[test]
fn statements_on_stdin_run_in_order_in_every_format() {
    let env = Env::new();
    setup(&env, false);
    let root = env.data().url;
    let script = format!(
        "-- the backlog; a comment with a ; in it\n\
         SELECT COUNT(*) AS n FROM retry_queue;\n\
         SELECT ';' AS semi, 'a;b' AS s /* ; */ ;\n\
         \n\
         SELECT version FROM (DESCRIBE HISTORY final_results) ORDER BY version DESC LIMIT 1;\n\
         SELECT COUNT(*) AS n FROM delta.`{root}/retry_queue`\n\
         VERSION AS OF 1\n"
    );
    let out = piped(&env, &script, &["--format", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let results: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(
        results,
        [
            serde_json::json!([{"n": 1}]),
            serde_json::json!([{"semi": ";", "s": "a;b"}]),
            serde_json::json!([{"version": 2}]),
            serde_json::json!([{"n": 45}]),
        ]
    );

    let out = piped(&env, &script, &["--format", "csv"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "n\n1\nsemi,s\n;,a;b\nversion\n2\nn\n45\n"
    );

    // The map columns of DESCRIBE HISTORY print as text in CSV; `sql` is `query`.
    let out = env
        .cmd()
        .args(["sql", "--format", "csv"])
        .write_stdin("SELECT 1 AS one;\nDESCRIBE HISTORY final_results LIMIT 1;\n")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], ["one", "1"], "{stdout}");
    let header: Vec<&str> = lines[2]
        .split(',')
        .filter(|c| !matches!(*c, "userId" | "userName"))
        .collect();
    assert_eq!(header, HISTORY_COLUMNS, "{stdout}");
    assert_eq!(lines.len(), 4, "{stdout}");
    let row = lines[3];
    assert!(row.starts_with("2,"), "{row}");
    for text in [
        "succeeded: 5",
        "processed: 6",
        "mode: Append",
        ",round,2,main,",
    ] {
        assert!(row.contains(text), "{text}: {row}");
    }

    // The default table format, one table per statement.
    let out = piped(&env, "SELECT 'first' AS a; SELECT 'second' AS b;", &[]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (first, second) = (
        stdout.find("first").unwrap(),
        stdout.find("second").unwrap(),
    );
    assert!(first < second, "{stdout}");
    assert_eq!(stdout.matches("+---").count(), 6, "{stdout}");
}

#[test]
fn a_failing_statement_stops_the_script_naming_its_number_and_line() {
    let env = Env::new();
    setup(&env, false);
    let script = "SELECT 'ran' AS first;\n\
                  \n\
                  -- the second; it fails\n\
                  SELECT *\n  FROM retry_queue VERSION AS OF 99;\n\
                  SELECT 'never' AS third;\n";
    for format in ["table", "json", "csv"] {
        let out = piped(&env, script, &["--format", format]);
        let stderr = String::from_utf8(out.stderr).unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(2), "{format}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            stderr.contains("statement 2 (line 4)")
                && stderr.contains("retry_queue: no version 99: it has versions 0 to 5"),
            "{format}: {stderr}"
        );
        assert!(stdout.contains("ran"), "{format}: {stdout}");
        assert!(!stdout.contains("never"), "{format}: {stdout}");
    }
}

#[test]
fn empty_stdin_is_an_error() {
    let env = Env::new();
    env.ok(&["init"]);
    for script in ["", "  \n", "-- only a comment\n/* and another */\n;;\n"] {
        let out = piped(&env, script, &[]);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{script:?}: {stderr}");
        assert!(stderr.contains("no SQL on stdin"), "{script:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{script:?}");
    }
}

#[test]
fn delta_sql_reads_tables_on_s3_with_the_credentials_of_the_environment() {
    let env = Env::s3();
    let ids = setup(&env, false);
    let root = env.data().url;
    assert!(root.starts_with("s3://"), "{root}");
    let rq = format!("delta.`{root}/retry_queue`");
    assert_eq!(
        scalar(
            &env,
            &format!("SELECT COUNT(*) FROM {rq} VERSION AS OF 1"),
            &[]
        ),
        ids.len() as i64
    );
    let original = format!("SELECT * FROM {rq}\nVERSION AS OF 1");
    let mut at_1: Vec<String> = rows(&env, &original, &[])
        .iter()
        .map(|r| r["sample_id"].as_str().unwrap().to_owned())
        .collect();
    at_1.sort();
    assert_eq!(at_1, ids);

    let by_path = history(&env, &rq, &[]);
    let versions: Vec<i64> = by_path
        .iter()
        .map(|r| r["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [5, 4, 3, 2, 1, 0]);
    assert_eq!(by_path[4]["job"], "enqueue");
    assert_eq!(by_path, history(&env, "retry_queue", &[]));

    let err = refused(&env, &format!("SELECT * FROM {rq} VERSION AS OF 9"), &[]);
    assert!(
        err.contains(&format!("{rq}: no version 9: it has versions 0 to 5")),
        "{err}"
    );
    let joined = rows(
        &env,
        &format!(
            "SELECT COUNT(*) AS waiting, COUNT(f.sample_id) AS done_since \
             FROM {rq} VERSION AS OF 1 q LEFT JOIN delta.`{root}/final_results` f \
             ON q.sample_id = f.sample_id"
        ),
        &[],
    );
    assert_eq!(
        joined,
        [serde_json::json!({"waiting": 45, "done_since": 39})]
    );
    let mixed = rows(
        &env,
        &format!(
            "SELECT COUNT(*) AS n FROM {rq} VERSION AS OF 3 q \
             JOIN final_results VERSION AS OF 2 f USING (sample_id)"
        ),
        &[],
    );
    assert_eq!(mixed, [serde_json::json!({"n": 5})]);
    // The monitoring queries by path agree with the tables by name.
    let by_path = monitoring(|t| format!("delta.`{root}/{t}`"));
    let by_name = monitoring(str::to_owned);
    for (path_sql, name_sql) in by_path.iter().zip(&by_name) {
        assert_eq!(
            rows(&env, path_sql, &[]),
            rows(&env, name_sql, &[]),
            "{path_sql}"
        );
    }
    // A prefix holding no table is refused, not created.
    let err = refused(
        &env,
        &format!("SELECT * FROM delta.`{root}/nothing_here`"),
        &[],
    );
    assert!(err.contains("no Delta table"), "{err}");
}

/// Reads `script`'s output off a pipe on a thread of its own, so the test can wait for a
/// prompt without blocking forever.
struct Pty {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Pty {
    /// Waits until the output since the last wait contains `text`; returns that output.
    fn wait_for(&mut self, text: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(at) = self
                .seen
                .windows(text.len())
                .position(|w| w == text.as_bytes())
            {
                let out: Vec<u8> = self.seen.drain(..at + text.len()).collect();
                return String::from_utf8_lossy(&out).into_owned();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.seen.extend(chunk),
                Err(e) => panic!(
                    "no {text:?} from the shell ({e}); it wrote: {}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    fn send(&mut self, line: &str) {
        self.stdin.write_all(line.as_bytes()).unwrap();
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|s| s.is_none()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn the_shell_on_a_terminal_runs_a_multi_line_statement_and_keeps_its_history() {
    let has_script = std::process::Command::new("script")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_script {
        eprintln!("skipped: `script` (util-linux) is not installed, no pty to run the shell on");
        return;
    }
    let env = Env::new();
    setup(&env, false);
    let history_file = env.path("sql_history");
    let binary = assert_cmd::cargo::cargo_bin("retrylake");
    let command = format!("'{}' --data '{}' sql", binary.display(), env.data().url);
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("RETRYLAKE_DATA")
        .env_remove("RETRYLAKE_LOG")
        .env_remove("RETRYLAKE_FAILPOINT")
        .env("RETRYLAKE_HISTORY", &history_file)
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, chunks) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut pty = Pty {
        child,
        stdin,
        chunks,
        seen: Vec::new(),
    };
    let banner = pty.wait_for("retrylake> ");
    assert!(banner.contains("end statements with `;`"), "{banner}");
    // A statement over two lines: the shell reads on until the `;`.
    pty.send("SELECT COUNT(*) AS total_enqueued");
    pty.wait_for("-> ");
    pty.send("  FROM retry_queue VERSION AS OF 1;");
    let result = pty.wait_for("retrylake> ");
    assert!(
        result.contains("total_enqueued") && result.contains("| 45"),
        "{result}"
    );
    // An error is reported and the shell goes on.
    pty.send("SELECT * FROM retry_queue VERSION AS OF 99;");
    let error = pty.wait_for("retrylake> ");
    assert!(
        error.contains("retry_queue: no version 99: it has versions 0 to 5"),
        "{error}"
    );
    pty.send("exit");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = pty.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the shell did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let saved = std::fs::read_to_string(&history_file)
        .unwrap_or_else(|e| panic!("no history at {}: {e}", history_file.display()));
    assert!(
        saved.contains("SELECT COUNT(*) AS total_enqueued")
            && saved.contains("FROM retry_queue VERSION AS OF 1;")
            && saved.contains("VERSION AS OF 99;"),
        "{saved}"
    );
}
