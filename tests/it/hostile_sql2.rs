//! Hostile review of 348c9e6 / 5fcc6cd (parse-error positions mapped back, `/*! */`
//! refusal, `commits()` by log file, `open_path` with `file:` URLs, 256 MB stacks) and of
//! ab3ab8e (`TIMESTAMP AS OF` expressions). Each test asserts the correct behaviour; one
//! that finds a bug is `#[ignore = "BUG: ..."]`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use retrylake::sql::rewrite;

use super::util::{Env, write_samples};

const NOW: &str = "2025-11-24T14:00:00Z";
const LATER: &str = "2025-11-24T14:02:00Z";

/// 21 records, two rounds: `retry_queue` at version 5, version 1 holds all 21 records.
fn setup() -> Env {
    let env = Env::new();
    let (input, _) = write_samples(&env, "H", 21);
    env.ok(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--now",
        NOW,
        "--seed",
        "3",
    ]);
    env.ok(&["run", "--now", LATER, "--seed", "3"]);
    env
}

fn query(env: &Env, sql: &str) -> std::process::Output {
    env.cmd()
        .arg("query")
        .arg(sql)
        .args(["--format", "json"])
        .output()
        .expect("run query")
}

/// Runs `sql`, asserts exit 2, no panic, nothing on stdout; returns stderr.
fn refused(env: &Env, sql: &str) -> String {
    let out = query(env, sql);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{sql}: {stderr}");
    assert!(!stderr.contains("panicked"), "{sql}: {stderr}");
    assert!(out.stdout.is_empty(), "{sql}: half-written output");
    stderr
}

/// Every `Line: L, Column: C` in `message`.
fn positions(message: &str) -> Vec<(usize, usize)> {
    let re = regex::Regex::new(r"Line: (\d+), Column: (\d+)").unwrap();
    re.captures_iter(message)
        .map(|c| (c[1].parse().unwrap(), c[2].parse().unwrap()))
        .collect()
}

/// The 1-based (line, column in chars) of the first `needle` in `text`, lines split at '\n'.
fn place_of(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).expect("needle in text");
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap().chars().count() + 1;
    (line, column)
}

fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.insert(path);
        }
    }
    out
}

fn log_file(env: &Env, table: &str, v: u64) -> PathBuf {
    env.data_dir()
        .join(table)
        .join("_delta_log")
        .join(format!("{v:020}.json"))
}

fn set_mtime(path: &Path, at: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

// ---------------------------------------------------------------- parse-error positions

/// DataFusion's own "Expected: end of statement" (a Diagnostic, not a bare ParserError)
/// is not moved back: its column is in the rewritten SQL, past the end of what was typed.
#[test]
fn end_of_statement_error_points_into_the_sql_as_written() {
    let env = Env::new();
    env.ok(&["init"]);
    let sql = "SELECT * FROM retry_queue VERSION AS OF 0 'x'";
    let stderr = refused(&env, sql);
    let found = positions(&stderr);
    assert!(!found.is_empty(), "no position: {stderr}");
    for (line, column) in found {
        assert_eq!(
            (line, column),
            place_of(sql, "'x'"),
            "{stderr}\n(the text is {} chars)",
            sql.chars().count()
        );
    }
}

/// Multi-byte text, CRLF and tabs before and after a splice: no panic, and the place is
/// the `)` as written.
#[test]
fn parse_error_place_with_multibyte_crlf_and_tabs() {
    let env = Env::new();
    env.ok(&["init"]);
    for sql in [
        "SELECT 'é€😀',\r\n\t* FROM retry_queue VERSION AS OF 0\r\n\tWHERE )",
        "SELECT '😀😀😀😀' AS \"ü\" FROM retry_queue VERSION AS OF 0 JOIN attempts \
         TIMESTAMP AS OF '2999-01-01' ON )",
        "\t\t/* ö */ SELECT * FROM\n\n delta.`/nö/pe` VERSION AS OF 0 WHERE )",
        "DESCRIBE HISTORY retry_queue WHERE 'ß' = )",
    ] {
        let stderr = refused(&env, sql);
        let found = positions(&stderr);
        assert!(!found.is_empty(), "{sql}: no position: {stderr}");
        let lines: Vec<&str> = sql.split('\n').collect();
        for (line, column) in &found {
            assert!(*line >= 1 && *line <= lines.len(), "{sql}: {stderr}");
            assert!(
                *column >= 1 && *column <= lines[line - 1].chars().count() + 1,
                "{sql}: column beyond its line: {stderr}"
            );
        }
        assert!(
            found.contains(&place_of(sql, ")")),
            "{sql}: expected {:?}: {stderr}",
            place_of(sql, ")")
        );
    }
}

/// `locate` rewrites every `Line: L, Column: C` in the message, also inside the user's own
/// token that the message quotes: the error then misquotes the SQL.
#[test]
#[ignore = "BUG: locate rewrites 'Line: L, Column: C' inside a quoted token of the message \
            (the user's own string literal), misquoting the SQL"]
fn locate_leaves_the_quoted_sql_alone() {
    let env = Env::new();
    env.ok(&["init"]);
    let sql = "SELECT * FROM retry_queue VERSION AS OF 0 WHERE x IN 'Line: 1, Column: 60'";
    let stderr = refused(&env, sql);
    assert!(
        stderr.contains("'Line: 1, Column: 60'"),
        "the literal is misquoted: {stderr}"
    );
}

/// A `TIMESTAMP AS OF` expression that does not parse: the place given is in a statement
/// retrylake made up (`SELECT CAST((...) AS TIMESTAMP) AS t`), not in the SQL as written.
#[test]
#[ignore = "BUG: a TIMESTAMP AS OF expression's parse error gives Line/Column in the wrapper \
            SELECT CAST((expr) AS TIMESTAMP), not in the SQL as written"]
fn expression_parse_error_points_into_the_sql_as_written() {
    let env = Env::new();
    env.ok(&["init"]);
    let sql = "SELECT * FROM retry_queue TIMESTAMP AS OF now() + (1 +)";
    let stderr = refused(&env, sql);
    let found = positions(&stderr);
    assert!(!found.is_empty(), "{stderr}");
    for p in found {
        assert_eq!(p, place_of(sql, ")"), "{stderr}");
    }
}

// ---------------------------------------------------------------- /*! */ and contiguity

#[test]
fn legit_tokens_are_not_taken_for_hints() {
    for sql in [
        "SELECT 'a''b', \"c\"\"d\", 'x/*!y*/' AS z FROM retry_queue VERSION AS OF 1",
        "SELECT 1 -- /*! 2 */\r\n FROM retry_queue VERSION AS OF 1",
        "SELECT .5, 1e3, 1.e3, X'AB', N'n', E'\\n' FROM retry_queue VERSION AS OF 1",
        "SELECT $1, @a, #b FROM retry_queue VERSION AS OF 1",
        "SELECT /* /* nested */ */ 1 FROM retry_queue VERSION AS OF 1",
        "SELECT 'é\t😀'\r\r\n FROM retry_queue VERSION AS OF 1 /* end",
        "SELECT 1 FROM retry_queue VERSION AS OF 1 --",
    ] {
        match rewrite(sql) {
            Ok(r) => assert!(r.sql.contains("VERSION AS OF 1\""), "{sql}: {}", r.sql),
            Err(e) => assert!(!e.to_string().contains("hints"), "{sql}: {e}"),
        }
    }
    for sql in [
        "SELECT 1 /*! + 1 */ FROM retry_queue VERSION AS OF 1",
        "SELECT 1 FROM retry_queue VERSION AS OF 1 /*!, attempts */",
        "SELECT 1 FROM retry_queue /*! VERSION AS OF 1 */",
    ] {
        let e = rewrite(sql).expect_err(sql).to_string();
        assert!(e.contains("/*!"), "{sql}: {e}");
    }
}

// ---------------------------------------------------------------- TIMESTAMP AS OF expressions

/// `x AT TIME ZONE z` is one instant; retrylake casts it to a zone-less TIMESTAMP, which
/// takes the wall clock in `z` and then reads it as UTC: another instant, another version.
#[test]
fn a_zoned_time_expression_reads_the_same_instant() {
    let env = setup();
    let now = SystemTime::now();
    let hours = |h: u64| now - Duration::from_secs(h * 3600);
    // Version 0 long ago, version 1 (all 21 records) 50 minutes ago, the rest just now.
    set_mtime(&log_file(&env, "retry_queue", 0), hours(20));
    set_mtime(
        &log_file(&env, "retry_queue", 1),
        now - Duration::from_secs(50 * 60),
    );
    for v in 2..=5 {
        set_mtime(
            &log_file(&env, "retry_queue", v),
            now - Duration::from_secs(60 - v),
        );
    }
    let count = |at: &str| {
        let sql = format!("SELECT count(*) AS n FROM retry_queue TIMESTAMP AS OF {at}");
        let out = query(&env, &sql);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let plain = count("current_timestamp - INTERVAL '30' MINUTE");
    assert!(plain.0.contains("21"), "{plain:?}");
    // The same instant written with an offset, as an expression and as text: the same
    // version. (A time without an offset is UTC; `naive AT TIME ZONE z` is, as in
    // Postgres, that wall-clock time in z: another instant, read as such.)
    let instant = chrono::Utc::now() - chrono::Duration::minutes(30);
    for offset in [5 * 3600, -5 * 3600, 0] {
        let zone = chrono::FixedOffset::east_opt(offset).unwrap();
        let text = instant.with_timezone(&zone).to_rfc3339();
        for at in [
            format!("TIMESTAMP '{text}' + INTERVAL '0' SECOND"),
            format!("'{text}'"),
        ] {
            assert_eq!(count(&at), plain, "{at} read another version");
        }
    }
    let zoned = count("(TIMESTAMP '2000-01-01 00:00:00' AT TIME ZONE '+05:00')");
    assert!(zoned.1.contains("1999-12-31T19:00:00Z"), "{zoned:?}");
}

/// The expression runs in a session without the tables: it cannot read them, nor write.
#[test]
fn a_time_expression_reads_no_table_and_writes_nothing() {
    let env = setup();
    let before = tree(env.dir.path());
    for sql in [
        "SELECT * FROM retry_queue TIMESTAMP AS OF (SELECT max(enqueued_at) FROM retry_queue)",
        "SELECT * FROM retry_queue TIMESTAMP AS OF (SELECT max(enqueued_at) FROM \
         delta.`/tmp`)",
        "SELECT * FROM retry_queue TIMESTAMP AS OF (SELECT * FROM information_schema.tables)",
        "SELECT * FROM retry_queue TIMESTAMP AS OF \
         (COPY (SELECT 1) TO '/tmp/hostile_sql2_copy.csv')",
        "SELECT * FROM retry_queue TIMESTAMP AS OF now() - (SELECT 1 FROM 'x.csv')",
        "SELECT * FROM retry_queue TIMESTAMP AS OF (1)) UNION SELECT * FROM attempts --",
    ] {
        let stderr = refused(&env, sql);
        assert!(stderr.starts_with("error"), "{sql}: {stderr}");
    }
    assert_eq!(tree(env.dir.path()), before, "files created");
    assert!(!Path::new("/tmp/hostile_sql2_copy.csv").exists());
}

/// The scanner stops where the expression ends: what follows is the rest of the query,
/// kept (an alias, a join), not swallowed into the time.
#[test]
fn the_expression_scanner_keeps_the_rest_of_the_query() {
    for (sql, expression, rest) in [
        (
            "SELECT r.x FROM retry_queue TIMESTAMP AS OF now() - INTERVAL '1' HOUR r WHERE 1=1",
            "now() - INTERVAL '1' HOUR",
            " r WHERE 1=1",
        ),
        (
            "SELECT 1 FROM retry_queue TIMESTAMP AS OF current_timestamp JOIN attempts ON true",
            "current_timestamp",
            " AS retry_queue JOIN attempts ON true",
        ),
        (
            "SELECT 1 FROM retry_queue FOR SYSTEM_TIME AS OF DATE '2025-11-24' + INTERVAL 1 \
             DAY AS q, attempts",
            "DATE '2025-11-24' + INTERVAL 1 DAY",
            " AS q, attempts",
        ),
    ] {
        let r = rewrite(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let label = format!("\"retry_queue TIMESTAMP AS OF {expression}\"");
        assert!(r.sql.contains(&label), "{sql}: {}", r.sql);
        assert!(r.sql.ends_with(rest), "{sql}: {}", r.sql);
    }
}

// ---------------------------------------------------------------- open_path

#[test]
fn odd_file_urls_create_nothing_and_are_refused() {
    let env = setup();
    let dir = env.dir.path().to_str().unwrap().to_owned();
    let table = env.data_dir().join("retry_queue");
    let table = table.to_str().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let before = tree(env.dir.path());
    for path in [
        "file:nope".to_owned(),
        "file:nope/deeper".to_owned(),
        format!("file://otherhost{dir}/new"),
        format!("file://{dir}/new"),
        format!("file:///{dir}/new%2fsub"),
        format!("file://{dir}/a/%2e%2e/new2"),
        format!("{dir}/new?x=1"),
        format!("{dir}/new#frag"),
        format!("file://{dir}/new?x#y"),
        format!("{dir}/new3/../new4"),
        "nope://x/y".to_owned(),
        "c:relative".to_owned(),
    ] {
        let out = env
            .cmd()
            .current_dir(cwd.path())
            .arg("query")
            .arg(format!("SELECT count(*) FROM delta.`{path}`"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path}: {stderr}");
        assert!(!stderr.contains("panicked"), "{path}: {stderr}");
    }
    assert_eq!(tree(env.dir.path()), before, "files created");
    assert!(tree(cwd.path()).is_empty(), "files created in the cwd");
    // The table itself, as a file URL with a query string or localhost: read, not created.
    for path in [
        format!("file://{table}"),
        format!("file://localhost{table}"),
    ] {
        let out = env
            .cmd()
            .arg("query")
            .arg(format!("SELECT count(*) AS n FROM delta.`{path}`"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(tree(env.dir.path()), before, "files created");
}

// ---------------------------------------------------------------- DESCRIBE HISTORY

/// A Store loaded at version L while another process commits, checkpoints and removes
/// the log entries before its checkpoint (log retention): the log's earliest version is
/// past L, and `commits()` asks a BTreeSet for the range earliest..=L.
#[test]
fn history_after_log_cleanup_by_another_process_does_not_panic() {
    let env = setup();
    let root = env.data().url;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime
        .block_on(retrylake::store::Store::open_existing(
            &root,
            retrylake::StorageOptions::default(),
        ))
        .unwrap();
    // Another process: one more version, a checkpoint at it, then log cleanup.
    let (more, _) = write_samples(&env, "M", 3);
    env.ok(&["enqueue", more.to_str().unwrap(), "--now", LATER]);
    env.ok(&["optimize", "retry_queue"]);
    let log = env.data_dir().join("retry_queue").join("_delta_log");
    let checkpoint = std::fs::read_dir(&log)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.contains(".checkpoint.")
                .then(|| name[..20].parse::<u64>().unwrap())
        })
        .max()
        .expect("a checkpoint");
    assert!(checkpoint > 5, "checkpoint at {checkpoint}");
    for v in 0..checkpoint {
        std::fs::remove_file(log.join(format!("{v:020}.json"))).unwrap();
    }
    let result = runtime.block_on(async move {
        tokio::spawn(async move {
            retrylake::monitor::query(&store, "DESCRIBE HISTORY retry_queue")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
    });
    assert!(result.is_ok(), "panicked: {result:?}");
}

// ---------------------------------------------------------------- 256 MB stacks

/// Under an address-space limit (`ulimit -v`, 2 GB) the 256 MB stacks of the runtime's
/// blocking threads run out: delta-rs's kernel waits on a blocking task that never gets a
/// thread, and the command hangs for ever instead of running or failing.
#[test]
fn a_query_under_an_address_space_limit_finishes() {
    let env = setup();
    let bin = assert_cmd::cargo::cargo_bin("retrylake");
    for args in ["query 'DESCRIBE HISTORY retry_queue'", "status"] {
        let out = std::process::Command::new("timeout")
            .arg("60")
            .arg("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -v 2000000; exec {} --data {} {args}",
                bin.display(),
                env.data().url
            ))
            .env_remove("RETRYLAKE_DATA")
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(124), "{args}: hung for 60 s");
        assert!(
            matches!(out.status.code(), Some(0 | 2)),
            "{args}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
