//! query, history and time travel through the binary.

use super::util::{Env, write_samples};

const NOW: &str = "2025-11-24T14:00:00Z";

fn setup() -> Env {
    let env = Env::new();
    let (input, _) = write_samples(&env, "M", 45);
    env.ok(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--now",
        NOW,
        "--seed",
        "3",
    ]);
    env.ok(&["run", "--now", "2025-11-24T14:02:00Z", "--seed", "3"]);
    env
}

fn json(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.extend(["--format", "json"]);
    serde_json::from_str(&env.ok(&args)).unwrap()
}

#[test]
fn the_original_jobs_monitoring_queries_run_as_written() {
    let env = setup();
    let backlog = json(
        &env,
        &[
            "query",
            "SELECT COUNT(*) as total_waiting, AVG(retry_count) as avg_retries, MAX(retry_count) as max_retries FROM retry_queue",
        ],
    );
    let status = env.json(&["status", "--now", "2025-11-24T14:03:00Z"]);
    assert_eq!(backlog[0]["total_waiting"], status["waiting"]);
    assert_eq!(backlog[0]["max_retries"], status["max_retries"]);

    let dlq = json(
        &env,
        &[
            "query",
            "SELECT error_msg, COUNT(*) as occurrence_count FROM dead_letter_queue GROUP BY error_msg ORDER BY occurrence_count DESC",
        ],
    );
    assert_eq!(dlq[0]["error_msg"], "Missing Payload");
    assert_eq!(dlq[0]["occurrence_count"], 5);

    let out = env.ok(&[
        "query",
        "SELECT DATE(processed_at) as date, COUNT(*) as success_count FROM final_results GROUP BY DATE(processed_at)",
        "--format",
        "csv",
    ]);
    let expected = format!("date,success_count\n2025-11-24,{}\n", status["final"]);
    assert_eq!(out, expected);
}

#[test]
fn time_travel_reads_every_table_as_it_was() {
    let env = setup();
    // Version 1 of final_results is round 1's append.
    let v1 = json(
        &env,
        &[
            "query",
            "SELECT COUNT(*) AS n FROM final_results",
            "--version",
            "1",
        ],
    );
    let round1 = json(
        &env,
        &[
            "query",
            "SELECT COUNT(*) AS n FROM attempts WHERE round = 1 AND outcome = 'success'",
        ],
    );
    assert_eq!(v1[0]["n"], round1[0]["n"]);
    let v0 = json(
        &env,
        &[
            "query",
            "SELECT COUNT(*) AS n FROM attempts",
            "--version",
            "0",
        ],
    );
    assert_eq!(v0[0]["n"], 0);
    // Before the first commit there is no version to read: an error, not an empty table.
    let before = env.fails(&[
        "query",
        "SELECT COUNT(*) AS n FROM final_results",
        "--as-of",
        "2000-01-01T00:00:00Z",
    ]);
    assert!(
        before.contains("final_results: no version as of 2000-01-01T00:00:00Z")
            && before.contains("its earliest version, 0, was committed at"),
        "{before}"
    );
}

#[test]
fn history_lists_rounds_newest_first() {
    let env = setup();
    let commits: serde_json::Value =
        serde_json::from_str(&env.ok(&["history", "final_results", "--json"])).unwrap();
    let commits = commits.as_array().unwrap();
    assert_eq!(commits.len(), 3);
    assert_eq!(commits[0]["version"], 2);
    assert_eq!(commits[0]["round"], 2);
    assert_eq!(commits[0]["worker"], "main");
    assert_eq!(commits[1]["details"]["processed"], 45);
    assert_eq!(commits[2]["operation"], "CREATE TABLE");
    let text = env.ok(&["history"]);
    assert!(
        text.contains("retry_queue") && text.contains("claim") && text.contains("MERGE"),
        "{text}"
    );
    let err = env.fails(&["history", "nope"]);
    assert!(err.contains("unknown table 'nope'"), "{err}");
    let err = env.fails(&["query", "SELECT * FROM nowhere"]);
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn optimize_and_vacuum_keep_every_row() {
    let env = setup();
    let before = json(
        &env,
        &[
            "query",
            "SELECT (SELECT COUNT(*) FROM retry_queue) AS q, (SELECT COUNT(*) FROM final_results) AS f, (SELECT COUNT(*) FROM attempts) AS a",
        ],
    );
    let out = env.ok(&["optimize"]);
    assert!(
        out.contains("final_results: 2 files compacted into 1"),
        "{out}"
    );
    let out = env.ok(&["vacuum", "--retain", "0s"]);
    assert!(out.contains("final_results: 2 files deleted"), "{out}");
    let after = json(
        &env,
        &[
            "query",
            "SELECT (SELECT COUNT(*) FROM retry_queue) AS q, (SELECT COUNT(*) FROM final_results) AS f, (SELECT COUNT(*) FROM attempts) AS a",
        ],
    );
    assert_eq!(before, after);
    let checkpoints = std::fs::read_dir(env.data_dir().join("final_results/_delta_log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("checkpoint")
        })
        .count();
    assert!(checkpoints > 0, "optimize writes a checkpoint");
    // The queue still runs on the compacted tables.
    env.ok(&[
        "run",
        "--now",
        "2025-11-24T15:00:00Z",
        "--drain",
        "--seed",
        "3",
    ]);
    let err = env.fails(&["optimize", "nope"]);
    assert!(err.contains("unknown table"), "{err}");
}

#[test]
fn the_report_is_one_self_contained_page() {
    let env = setup();
    env.ok(&["run", "--now", "2025-11-24T14:06:00Z", "--seed", "3"]);
    let out = env.path("report.html");
    env.ok(&[
        "report",
        "--out",
        out.to_str().unwrap(),
        "--now",
        "2025-11-24T14:10:00Z",
    ]);
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(
        html.matches("<svg").count(),
        2,
        "backlog and attempts charts"
    );
    for fetch in ["src=", "href=", "url(", "@import", "http://", "https://"] {
        assert!(!html.contains(fetch), "the page fetches something: {fetch}");
    }
    assert!(html.contains("Missing Payload") && html.contains("permanent"));
    assert!(
        html.contains("<td>1</td><td class=\"n\">1</td><td>2m</td>"),
        "the default schedule"
    );
    assert!(html.contains("main #3"), "round 3 is charted");
    // The backlog line has a point per queue version, and it is not flat at zero.
    let backlog = html
        .split("aria-label=\"backlog over time\"")
        .nth(1)
        .unwrap();
    let backlog = backlog.split("</svg>").next().unwrap();
    assert!(
        backlog.contains(": 45</title>"),
        "45 records waited after the enqueue: {backlog}"
    );
}

#[test]
fn status_counts_the_records_that_recovered_after_a_retry() {
    let env = Env::new();
    let (input, _) = write_samples(&env, "R", 100);
    env.ok(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--now",
        NOW,
        "--drain",
        "--transient-rate=0.6",
        "--max-retries=1",
    ]);
    let status = env.json(&["status", "--now", NOW]);
    let counts = json(
        &env,
        &[
            "query",
            "SELECT (SELECT COUNT(*) FROM final_results WHERE attempts > 1) AS recovered, \
             (SELECT COUNT(*) FROM dead_letter_queue WHERE retry_count > 0) AS gave_up",
        ],
    );
    let recovered = counts[0]["recovered"].as_i64().unwrap();
    let gave_up = counts[0]["gave_up"].as_i64().unwrap();
    assert!(recovered > 0 && gave_up > 0, "{counts}");
    assert_eq!(status["recovered"], recovered);
    assert_eq!(status["needed_retry"], recovered + gave_up);
    let share = status["recovered_share"].as_f64().unwrap();
    assert!((share - recovered as f64 / (recovered + gave_up) as f64).abs() < 1e-9);
}

#[test]
fn query_only_reads() {
    let env = Env::new();
    env.ok(&["init"]);
    let copied = env.path("copied.csv");
    let secret = env.write("secret.csv", "user,password\nroot,hunter2\n");
    let (copied_s, secret_s) = (copied.to_str().unwrap(), secret.to_str().unwrap());
    let versions = |env: &Env| env.ok(&["history", "--json"]);
    let before = versions(&env);
    for (sql, what) in [
        (
            format!("COPY (SELECT 1 AS one) TO '{copied_s}' STORED AS CSV"),
            "COPY",
        ),
        (
            format!("COPY retry_queue TO '{copied_s}' STORED AS CSV"),
            "COPY",
        ),
        (
            format!("EXPLAIN ANALYZE COPY (SELECT 1) TO '{copied_s}' STORED AS CSV"),
            "COPY",
        ),
        (
            format!("CREATE EXTERNAL TABLE secret STORED AS CSV LOCATION '{secret_s}'"),
            "CreateExternalTable",
        ),
        (
            "CREATE VIEW v AS SELECT * FROM retry_queue".to_owned(),
            "CreateView",
        ),
        (
            "CREATE TABLE t AS SELECT * FROM retry_queue".to_owned(),
            "CreateMemoryTable",
        ),
        ("DROP TABLE retry_queue".to_owned(), "DropTable"),
        (
            "INSERT INTO final_results VALUES ('X', 'p', now(), 1, 'r')".to_owned(),
            "Insert",
        ),
        (
            "INSERT INTO final_results SELECT * FROM final_results".to_owned(),
            "Insert",
        ),
        (
            "SET datafusion.execution.target_partitions = 1".to_owned(),
            "SetVariable",
        ),
        ("PREPARE p AS SELECT 1".to_owned(), "Prepare"),
    ] {
        let err = env.fails(&["query", &sql]);
        assert!(
            err.contains("read-only") && err.contains(what),
            "{sql}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{sql}: {err}");
        assert!(!copied.exists(), "{sql} wrote a file");
    }
    // Reading a file by its path is not a table either.
    let err = env.fails(&["query", &format!("SELECT * FROM '{secret_s}'")]);
    assert!(!err.contains("hunter2"), "{err}");
    assert_eq!(versions(&env), before, "no table changed");
    // Queries still run, EXPLAIN and DESCRIBE included.
    let rows = json(&env, &["query", "SELECT COUNT(*) AS n FROM final_results"]);
    assert_eq!(rows[0]["n"], 0);
    env.ok(&[
        "query",
        "EXPLAIN SELECT * FROM retry_queue WHERE retry_count > 1",
    ]);
    env.ok(&["query", "DESCRIBE attempts"]);
    env.ok(&[
        "query",
        "WITH d AS (SELECT * FROM dead_letter_queue) SELECT COUNT(*) FROM d",
    ]);
}
