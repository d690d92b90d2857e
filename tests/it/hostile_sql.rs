//! Hostile review of Delta SQL (2bfe6e7): the token-level rewrite of `VERSION AS OF`,
//! `TIMESTAMP AS OF` and `DESCRIBE HISTORY|DETAIL` (spliced back by byte offsets), the lazy
//! catalog (`delta.`path``, range and vacuum checks), and statements from stdin. Each test
//! asserts the correct behaviour; one that finds a bug is `#[ignore = "BUG: ..."]`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::arrow::array::{Int64Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use proptest::prelude::*;
use retrylake::sql::{is_complete, rewrite, statements};
use serde_json::Value;

use super::util::{Env, write_samples};

const NOW: &str = "2025-11-24T14:00:00Z";
const LATER: &str = "2025-11-24T14:02:00Z";

/// 21 records, two rounds: `retry_queue` ends at version 5 (0 create, 1 enqueue, 2 claim,
/// 3 round 1, 4 claim, 5 round 2); version 1 holds all 21 records.
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

fn query(env: &Env, sql: &str, more: &[&str]) -> std::process::Output {
    env.cmd()
        .arg("query")
        .arg(sql)
        .args(more)
        .output()
        .expect("run query")
}

/// The rows of `sql`, as `--format json` prints them.
fn rows(env: &Env, sql: &str, more: &[&str]) -> Vec<Value> {
    let mut args = vec!["query", sql, "--format", "json"];
    args.extend(more);
    let out = env.ok(&args);
    match serde_json::from_str(&out) {
        Ok(Value::Array(rows)) => rows,
        _ => panic!("{sql}: not one JSON array: {out}"),
    }
}

fn count(env: &Env, sql: &str) -> i64 {
    rows(env, sql, &[])[0]["n"]
        .as_i64()
        .unwrap_or_else(|| panic!("{sql}: no n"))
}

/// Runs `query` with `sql`, asserts exit code 2, no panic, and returns stderr.
fn refused(env: &Env, sql: &str, more: &[&str]) -> String {
    let out = query(env, sql, more);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{sql}: {stderr}");
    assert!(!stderr.contains("panicked"), "{sql}: {stderr}");
    assert!(out.stdout.is_empty(), "{sql}: half-written output");
    stderr
}

fn piped(env: &Env, script: impl Into<Vec<u8>>, more: &[&str]) -> std::process::Output {
    env.cmd()
        .arg("query")
        .args(more)
        .write_stdin(script.into())
        .timeout(Duration::from_secs(600))
        .output()
        .expect("run query")
}

/// Every file and folder under `dir`.
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

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The `commitInfo` of version `v` of the table at `dir`, read straight from its log file.
fn commit_info(dir: &Path, v: i64) -> Option<Value> {
    let file = dir.join("_delta_log").join(format!("{v:020}.json"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|a| a.get("commitInfo").cloned())
}

/// Asserts each row of a `DESCRIBE HISTORY` of the table at `dir` describes the commit in
/// the log file of the version it names.
fn assert_history_matches_log(history: &[Value], dir: &Path, what: &str) {
    let mut seen = BTreeSet::new();
    for row in history {
        let v = row["version"].as_i64().expect("version");
        assert!(seen.insert(v), "{what}: version {v} twice: {history:#?}");
        let info = commit_info(dir, v);
        let operation = info.as_ref().and_then(|i| i["operation"].as_str());
        assert_eq!(
            row["operation"].as_str(),
            operation,
            "{what}: the row numbered {v} is not version {v}'s commit: {row}"
        );
        let source = info
            .as_ref()
            .and_then(|i| i["retrylake"]["source"].as_str());
        if let Some(source) = source {
            assert_eq!(
                row["details"]["source"].as_str(),
                Some(source),
                "{what}: the row numbered {v} is not version {v}'s commit: {row}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The rewrite, unit-level.

/// Pieces of SQL, some well formed, most not, to build hostile statements from.
const PIECES: &[&str] = &[
    "SELECT",
    " ",
    "\t",
    "\r",
    "\n",
    "\r\n",
    "*",
    "FROM",
    "retry_queue",
    "attempts",
    "delta.`/t`",
    "delta.``",
    "delta",
    ".",
    "VERSION",
    "version",
    "AS",
    "OF",
    "FOR",
    "SYSTEM_TIME",
    "SYSTEM_VERSION",
    "TIMESTAMP",
    "'2025-01-01'",
    "'",
    "\"",
    "`",
    "[",
    "]",
    "1",
    "-1",
    "99999999999999999999999",
    "1e3",
    "é",
    "😀",
    "\u{0301}",
    "\u{feff}",
    "/*",
    "*/",
    "/*!",
    "/*!50110",
    "--",
    "$$",
    "$1",
    "$",
    ";",
    "DESCRIBE",
    "DESC",
    "HISTORY",
    "DETAIL",
    "LIMIT",
    "(",
    ")",
    ",",
    "x",
    "old",
    "\\",
    "::",
    "E'",
    "N'",
    "X'",
    "#",
    "\0",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Guard: no text makes the rewrite, the splitter or the shell's end check panic.
    #[test]
    fn rewrite_statements_and_is_complete_never_panic_on_pieces(
        picks in proptest::collection::vec(0..PIECES.len(), 0..40)
    ) {
        let sql: String = picks.iter().map(|&i| PIECES[i]).collect();
        if let Ok(r) = rewrite(&sql) {
            // What comes back is text the rewrite itself accepts again (no clause left
            // behind), and each name it reads is in it.
            for (name, _) in &r.sources {
                let quoted = format!("\"{}\"", name.replace('"', "\"\""));
                prop_assert!(r.sql.contains(&quoted), "{sql:?} -> {:?}", r.sql);
            }
        }
        let _ = statements(&sql);
        let _ = is_complete(&sql);
    }

    /// Guard: arbitrary text, too.
    #[test]
    fn rewrite_never_panics_on_any_text(sql in any::<String>()) {
        let _ = rewrite(&sql);
        let _ = statements(&sql);
        let _ = is_complete(&sql);
    }
}

/// Guard: strings, comments (nested too), `$$` strings and quoted names pass through byte
/// for byte, across CRLF, a lone `\r`, tabs and multi-byte text; only the clause changes.
#[test]
fn text_around_a_clause_is_kept_byte_for_byte() {
    let head = "SELECT 'é\r\n VERSION AS OF 9 😀' AS \"a\"\"b\", `c``d`, [e f]\r\n\t\
                /* one /* two VERSION AS OF 8 */ still retry_queue VERSION AS OF 7 */\r\
                FROM\t";
    let tail = "\r\n-- retry_queue VERSION AS OF 6 ✓\r\
                WHERE $$ retry_queue VERSION AS OF 5 $$ <> 'it''s VERSION AS OF 4'";
    let sql = format!("{head}public.RETRY_QUEUE\r\n\tFOR  SYSTEM_VERSION\rAS\tOF\r\n 2 q{tail}");
    let r = rewrite(&sql).unwrap();
    assert_eq!(
        r.sql,
        format!("{head}\"retry_queue VERSION AS OF 2\" q{tail}"),
        "{sql:?}"
    );
    assert_eq!(r.sources.len(), 1, "{:?}", r.sources);
    // Nothing to rewrite: the text comes back as it is, whatever it holds.
    for sql in [
        "SELECT '😀😀😀' AS \"VERSION AS OF 1\" FROM retry_queue",
        "SELECT $tag$ retry_queue VERSION AS OF 1 $tag$",
        "SELECT 1 -- retry_queue VERSION AS OF 1",
        "SELECT 1 /* /* */ retry_queue VERSION AS OF 1 */",
        "SELECT * FROM retry_queue\r\rWHERE 1 = 1\r",
        "SELECT \"retry_queue VERSION AS OF 1\" FROM t",
    ] {
        assert_eq!(rewrite(sql).unwrap().sql, sql, "{sql:?}");
    }
    // The path keeps every byte of its name, quotes and backticks included.
    let r = rewrite("SELECT * FROM delta.`/tmp/a``b\"c é` VERSION AS OF 0").unwrap();
    assert_eq!(
        r.sql,
        "SELECT * FROM \"delta.`/tmp/a`b\"\"c é` VERSION AS OF 0\""
    );
}

/// Guard: clauses inside subqueries and CTEs travel; in places that are no table reference
/// they are errors naming the place, never a silent rewrite of something else.
#[test]
fn clauses_in_odd_places_travel_or_are_refused() {
    let r = rewrite(
        "WITH w AS (SELECT * FROM attempts VERSION AS OF 3) \
         SELECT * FROM (SELECT * FROM retry_queue FOR SYSTEM_TIME AS OF '2025-01-01') s, w",
    )
    .unwrap();
    assert_eq!(
        r.sql,
        "WITH w AS (SELECT * FROM \"attempts VERSION AS OF 3\" AS attempts) \
         SELECT * FROM (SELECT * FROM \"retry_queue TIMESTAMP AS OF 2025-01-01T00:00:00Z\" \
         AS retry_queue) s, w"
    );
    for (sql, expected) in [
        (
            "SELECT * FROM retry_queue AS r VERSION AS OF 1",
            "unknown table r",
        ),
        (
            "SELECT * FROM retry_queue VERSION AS OF 18446744073709551616",
            "is not a version number",
        ),
        (
            "SELECT * FROM retry_queue VERSION AS OF -0",
            "expected a version number",
        ),
        (
            "SELECT * FROM retry_queue VERSION AS OF 1e3",
            "'1e3' is not a version number",
        ),
        (
            "SELECT * FROM retry_queue VERSION AS OF 1.5",
            "not a version",
        ),
        (
            "SELECT * FROM retry_queue TIMESTAMP AS OF '+275760-09-13'",
            "is not a time",
        ),
        (
            "SELECT * FROM \"delta\".`/t` VERSION AS OF 1",
            "unknown table",
        ),
        ("SELECT * FROM é VERSION AS OF 1", "unknown table é"),
        ("DESCRIBE HISTORY (SELECT 1)", "takes a table"),
        (
            "DESCRIBE DETAIL retry_queue FOR VERSION AS OF 1",
            "not a version of it",
        ),
        ("SELECT 'unterminated \r\n", "Unterminated string"),
        ("SELECT /* never closed", "Unexpected EOF"),
        ("SELECT `unterminated", "Expected close delimiter"),
        ("SELECT $$ unterminated", "Unterminated dollar-quoted"),
    ] {
        let e = rewrite(sql).expect_err(sql).to_string();
        assert!(e.contains(expected), "{sql:?}: {e}");
    }
    // After a table function (no name before it) the clause is not Delta's: the text goes
    // to DataFusion as written, which refuses it.
    let sql = "SELECT * FROM generate_series(1, 3) VERSION AS OF 1";
    assert_eq!(rewrite(sql).unwrap().sql, sql);
    let sql = "SELECT now() TIMESTAMP AS OF '2025-01-01'";
    assert_eq!(rewrite(sql).unwrap().sql, sql);
    // A second clause follows a version, not a name: left to DataFusion, which refuses it.
    let r = rewrite("SELECT * FROM retry_queue VERSION AS OF 1 VERSION AS OF 2").unwrap();
    assert!(r.sql.ends_with("\" VERSION AS OF 2"), "{}", r.sql);
    // The largest version a u64 holds is a version number, refused later by range.
    let r = rewrite("SELECT * FROM attempts VERSION AS OF 18446744073709551615").unwrap();
    assert!(
        r.sql.contains("VERSION AS OF 18446744073709551615"),
        "{}",
        r.sql
    );
}

/// Guard: statements split where a `;` ends them and start on the right line whatever the
/// line endings; comments-only input holds no statement.
#[test]
fn statements_split_and_count_lines_across_line_endings() {
    let got = statements("SELECT 1;\r\n\r\n-- c ;\r\nSELECT ';'\r;\n/* ; */\n\tSELECT 3").unwrap();
    let got: Vec<(String, usize)> = got.into_iter().map(|s| (s.sql, s.line)).collect();
    assert_eq!(
        got,
        [
            ("SELECT 1".to_owned(), 1),
            ("-- c ;\r\nSELECT ';'".to_owned(), 4),
            ("/* ; */\n\tSELECT 3".to_owned(), 6),
        ]
    );
    assert!(
        statements("-- a\n/* b /* c */ */\r\n;;")
            .unwrap()
            .is_empty()
    );
    assert!(!is_complete("SELECT 1 /* ; */"));
    assert!(!is_complete("SELECT '; '"));
    assert!(is_complete("SELECT 1; -- trailing\r\n"));
}

/// A table alias that is one of the parser's (non-reserved) keywords, `old`, `new`,
/// `data`, `source`, is an alias: `FROM retry_queue old` runs. After a clause the rewrite
/// takes it for no alias and adds its own, so `... AS retry_queue old` fails to parse, with
/// a column in text the user never wrote.
#[test]
fn a_keyword_alias_after_the_clause_is_kept() {
    for alias in ["old", "new", "data", "source", "result", "log"] {
        let r = rewrite(&format!(
            "SELECT {alias}.sample_id FROM retry_queue VERSION AS OF 1 {alias}"
        ))
        .unwrap();
        assert_eq!(
            r.sql,
            format!("SELECT {alias}.sample_id FROM \"retry_queue VERSION AS OF 1\" {alias}")
        );
    }
    let env = setup();
    assert_eq!(
        count(
            &env,
            "SELECT COUNT(*) AS n FROM retry_queue VERSION AS OF 1 old \
             JOIN retry_queue new ON old.sample_id = new.sample_id"
        ),
        1
    );
}

/// `/*! ... */` is a MySQL optimizer hint, which the Generic dialect's tokenizer expands
/// into tokens, giving them the location of the comment's `/*` (not of the text after
/// `/*!` and its digits): the splice then cuts at the wrong bytes and leaves part of the
/// clause behind, and the statement splitter cuts a statement mid-comment.
#[test]
fn an_optimizer_hint_comment_does_not_shift_the_splice() {
    let sql = "SELECT COUNT(*) AS n FROM retry_queue /*!VERSION AS OF 1 */";
    match rewrite(sql) {
        Err(e) => assert!(e.to_string().contains("/*!"), "{e}"),
        Ok(r) => assert!(
            !r.sql.contains("F 1") && !r.sql.ends_with("*/"),
            "{sql:?} became {:?}",
            r.sql
        ),
    }
    match statements("SELECT 1 /*!; SELECT 2*/") {
        Err(e) => assert!(e.to_string().contains("/*!"), "{e}"),
        Ok(got) => {
            for s in got {
                assert!(!s.sql.starts_with("*!"), "cut mid-comment: {:?}", s.sql);
            }
        }
    }
    // Through the binary: the error, if any, is about the user's text.
    let env = setup();
    let out = query(&env, sql, &["--format", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("/*!"),
        "unhelpful: {stderr}"
    );
}

/// `x::timestamp AS of` names a column `of`: it ran before the change (the CAST form still
/// does); now the rewrite takes `timestamp AS of` for time travel and refuses the query.
#[test]
fn a_cast_aliased_of_is_no_time_travel() {
    let sql = "SELECT processed_at::timestamp AS of FROM final_results";
    assert_eq!(rewrite(sql).unwrap().sql, sql);
    let env = setup();
    let got = rows(&env, &format!("{sql} LIMIT 1"), &[]);
    assert_eq!(got.len(), 1, "{got:?}");
}

/// `byte_starts` walks each token's line from its start (`char_indices().nth(column)`):
/// quadratic in the length of a line. A generated statement on one line, a 10,000-id IN
/// list (~130 KB), takes the rewrite and the splitter most of a minute in a debug build (a
/// 20,000-id one, three minutes); the same text one id per line, under a tenth of a second.
#[test]
fn a_long_line_rewrites_in_linear_time() {
    let ids: Vec<String> = (0..10_000).map(|i| format!("'S-{i:06}'")).collect();
    let one_line = format!(
        "SELECT COUNT(*) FROM retry_queue VERSION AS OF 1 WHERE sample_id IN ({})",
        ids.join(",")
    );
    let many_lines = one_line.replace(',', ",\n");
    let started = Instant::now();
    let r = rewrite(&many_lines).unwrap();
    let _ = statements(&many_lines).unwrap();
    let baseline = started.elapsed();
    assert_eq!(r.sources.len(), 1);
    let started = Instant::now();
    let r = rewrite(&one_line).unwrap();
    let _ = statements(&one_line).unwrap();
    let long = started.elapsed();
    assert_eq!(r.sources.len(), 1);
    assert!(
        long < baseline * 20 + Duration::from_secs(2),
        "one line: {long:?}; the same text on many lines: {baseline:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Through the binary.

/// A `file://` URL is not checked for `_delta_log` before delta-rs's `ensure_table_uri`,
/// which creates the folder (and its parents) of a local path that does not exist: the
/// read-only query creates folders, even under a statement it then refuses.
#[test]
fn a_file_url_that_is_no_table_creates_nothing() {
    let env = setup();
    let before = tree(env.dir.path());
    for (sql, gone) in [
        ("SELECT * FROM delta.`file://{}`", "made/by/select"),
        ("DESCRIBE HISTORY delta.`file://{}`", "made/by/history"),
        (
            "SELECT 1 FROM delta.`file://{}` VERSION AS OF 1",
            "made/by/travel",
        ),
        ("INSERT INTO delta.`file://{}` VALUES (1)", "made/by/insert"),
    ] {
        let path = env.path(gone);
        let sql = sql.replace("{}", path.to_str().unwrap());
        let err = refused(&env, &sql, &[]);
        assert!(
            err.contains("no Delta table") || err.contains("read-only"),
            "{sql}: {err}"
        );
        assert!(!path.exists(), "{sql}: created {}", path.display());
    }
    let after = tree(env.dir.path());
    let made: Vec<_> = after.difference(&before).collect();
    assert!(made.is_empty(), "the query created {made:?}");
}

/// `DESCRIBE HISTORY` numbers its rows by counting down from the loaded version over every
/// commit file that has a `commitInfo`: a commit without one (legal Delta; some writers
/// leave it out) shifts the number of every older row, silently.
#[test]
fn describe_history_numbers_each_commit_by_its_own_file() {
    let env = setup();
    let copy = env.path("copy");
    copy_dir(&env.data_dir().join("retry_queue"), &copy);
    // Version 6: an application transaction and nothing else.
    std::fs::write(
        copy.join("_delta_log").join(format!("{:020}.json", 6)),
        "{\"txn\":{\"appId\":\"hostile\",\"version\":1,\"lastUpdated\":1764000000000}}\n",
    )
    .unwrap();
    let table = copy.to_str().unwrap();
    let history = rows(&env, &format!("DESCRIBE HISTORY delta.`{table}`"), &[]);
    assert_history_matches_log(&history, &copy, "a commit without commitInfo");
}

/// Guard: under `--version` and `--as-of` each row still describes its own commit, and
/// only commits up to the version read are listed.
#[test]
fn describe_history_under_the_version_flag_matches_the_log() {
    let env = setup();
    let dir = env.data_dir().join("retry_queue");
    for more in [["--version", "2"], ["--version", "0"]] {
        let history = rows(&env, "DESCRIBE HISTORY retry_queue", &more);
        assert_history_matches_log(&history, &dir, &more.join(" "));
        let max = history.iter().filter_map(|r| r["version"].as_i64()).max();
        assert_eq!(max, more[1].parse().ok(), "{history:?}");
    }
    let history = rows(&env, "DESCRIBE HISTORY retry_queue", &[]);
    assert_history_matches_log(&history, &dir, "latest");
    assert_eq!(history.len(), 6);
}

/// The same cause with a writer at work: the queue's table is loaded (refresh) before the
/// history lists the log, so each commit landing in between shifts every row's number.
#[test]
fn describe_history_while_enqueues_commit_numbers_each_commit_as_its_own() {
    let env = setup();
    let dir = env.data_dir().join("retry_queue");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let env_cmd = {
            let data = env.data().url.clone();
            move |file: &Path| {
                let out = super::util::bare_cmd()
                    .args(["--data", &data, "enqueue", file.to_str().unwrap()])
                    .args(["--now", NOW])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        let files: Vec<PathBuf> = (0..200)
            .map(|i| {
                env.write(
                    &format!("e{i}.jsonl"),
                    format!("{{\"sample_id\":\"E-{i}\"}}\n"),
                )
            })
            .collect();
        std::thread::spawn(move || {
            for file in files {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                env_cmd(&file);
            }
        })
    };
    let mut failure = None;
    for _ in 0..40 {
        let history = rows(&env, "DESCRIBE HISTORY retry_queue", &[]);
        let result = std::panic::catch_unwind(|| {
            assert_history_matches_log(&history, &dir, "while enqueues commit")
        });
        if let Err(e) = result {
            failure = Some(e);
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    if let Some(e) = failure {
        std::panic::resume_unwind(e);
    }
}

/// After a rewrite DataFusion reports parse errors at columns of the rewritten text: past
/// the end of what the user wrote, or on a token they never typed.
#[test]
fn a_parse_error_after_a_rewrite_points_into_the_users_text() {
    let env = setup();
    let sql = "SELECT COUNT(*) FROM retry_queue VERSION AS OF 1 WHERE sample_id = = 'x'";
    let err = refused(&env, sql, &[]);
    let columns: Vec<usize> = err
        .match_indices("Column: ")
        .filter_map(|(i, m)| {
            err[i + m.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse().ok())
        })
        .collect();
    assert!(!columns.is_empty(), "{err}");
    for c in columns {
        assert_eq!(c, 68, "the second `=` is at column 68 of {sql:?}: {err}");
    }
}

/// A long IN list is a normal generated query; on stdin it has no argv limit. Planning it
/// overflows the main thread's stack (delta-rs's filter pushdown recurses per OR'd term):
/// the process aborts with SIGABRT, not an error.
#[test]
fn an_enormous_in_list_on_stdin_is_an_error_or_a_result_not_a_crash() {
    let env = setup();
    let ids: Vec<String> = (0..20_000).map(|i| format!("'H-{i:04}'")).collect();
    let script = format!(
        "SELECT COUNT(*) AS n FROM retry_queue WHERE sample_id IN (\n{}\n);\n",
        ids.join(",\n")
    );
    let out = piped(&env, script, &["--format", "csv"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0 | 2)),
        "killed by a signal ({:?}): {stderr}",
        out.status
    );
    assert!(!stderr.contains("overflowed its stack"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Creates at `url` a partitioned, non-retrylake table: version 1 holds ids 1 to 5 with
/// partition values holding a space, `:`, `%`, `/`, `?`, `#` and a null; version 2 adds id
/// 6 in `é ü`.
fn partitioned_table(url: &str, options: &[(String, String)]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = deltalake::ensure_table_uri(url).unwrap();
        let t = deltalake::DeltaTableBuilder::from_url(url)
            .unwrap()
            .with_storage_options(options.iter().cloned().collect())
            .build()
            .unwrap()
            .create()
            .with_columns([
                deltalake::kernel::StructField::new("id", deltalake::kernel::DataType::LONG, false),
                deltalake::kernel::StructField::new(
                    "part",
                    deltalake::kernel::DataType::STRING,
                    true,
                ),
            ])
            .with_partition_columns(["part"])
            .await
            .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("part", DataType::Utf8, true),
        ]));
        let batch = |ids: Vec<i64>, parts: Vec<Option<&str>>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(StringArray::from(parts)),
                ],
            )
            .unwrap()
        };
        let t = t
            .write(vec![batch(
                vec![1, 2, 3, 4, 5],
                vec![
                    Some("a b"),
                    Some("2025-11-24 14:00:00"),
                    Some("50%"),
                    Some("x/y?#z"),
                    None,
                ],
            )])
            .await
            .unwrap();
        t.write(vec![batch(vec![6], vec![Some("é ü")])])
            .await
            .unwrap();
    });
}

/// The partitioned table at `path` reads in full at its latest version and at version 1
/// (whose files the vacuum check must find under their escaped names).
fn assert_partitioned_table_travels(env: &Env, path: &str) {
    assert_eq!(
        count(env, &format!("SELECT COUNT(*) AS n FROM delta.`{path}`")),
        6
    );
    let got = rows(
        env,
        &format!("SELECT id, part FROM delta.`{path}` VERSION AS OF 1 ORDER BY id"),
        &[],
    );
    let parts: Vec<Value> = got.iter().map(|r| r["part"].clone()).collect();
    assert_eq!(
        parts,
        [
            Value::from("a b"),
            Value::from("2025-11-24 14:00:00"),
            Value::from("50%"),
            Value::from("x/y?#z"),
            Value::Null,
        ],
        "{got:?}"
    );
    let detail = rows(
        env,
        &format!(
            "SELECT \"partitionColumns\" AS p, \"numFiles\" AS f \
             FROM (DESCRIBE DETAIL delta.`{path}`)"
        ),
        &[],
    );
    assert_eq!(detail[0]["p"], serde_json::json!(["part"]), "{detail:?}");
    assert_eq!(detail[0]["f"], 6, "{detail:?}");
}

/// Guard: a partitioned, non-retrylake table read by path, at its latest version and at a
/// past one; partition values with a space, `:`, `%`, `/`, `?` and `#` are the files the
/// vacuum check looks for, not files it calls removed.
#[test]
fn a_partitioned_foreign_table_with_awkward_values_travels() {
    let env = Env::new();
    env.ok(&["init"]);
    let dir = env.path("foreign");
    partitioned_table(dir.to_str().unwrap(), &[]);
    let before = tree(env.dir.path());
    assert_partitioned_table_travels(&env, dir.to_str().unwrap());
    assert_eq!(tree(env.dir.path()), before, "the queries wrote");
}

/// Guard: the same on S3 (moto on loopback), where the listing the vacuum check compares
/// against comes from the object store's keys.
#[test]
fn a_partitioned_foreign_table_on_s3_travels() {
    let env = Env::s3();
    env.ok(&["init"]);
    let url = format!("{}/foreign", env.data().url);
    partitioned_table(&url, &env.data().env);
    assert_partitioned_table_travels(&env, &url);
}

/// The log listing behind the range check is recursive: a commit file in a folder under
/// `_delta_log` (a backup, a writer's staging folder, which Delta ignores) counts as a
/// version. `DESCRIBE DETAIL` then names a latest version the table lacks, and `VERSION AS
/// OF` it passes the range check and fails with the kernel's words.
#[test]
fn a_file_in_a_folder_under_the_log_is_no_version() {
    let env = setup();
    let copy = env.path("copy");
    copy_dir(&env.data_dir().join("retry_queue"), &copy);
    let log = copy.join("_delta_log");
    std::fs::create_dir(log.join("backup")).unwrap();
    std::fs::copy(
        log.join(format!("{:020}.json", 5)),
        log.join("backup").join(format!("{:020}.json", 9)),
    )
    .unwrap();
    let path = copy.to_str().unwrap();
    let detail = rows(
        &env,
        &format!(
            "SELECT \"latestVersion\" AS latest, version FROM (DESCRIBE DETAIL delta.`{path}`)"
        ),
        &[],
    );
    assert_eq!(detail[0]["latest"], 5, "{detail:?}");
    let err = refused(
        &env,
        &format!("SELECT COUNT(*) FROM delta.`{path}` VERSION AS OF 8"),
        &[],
    );
    assert!(
        err.contains("no version 8: it has versions 0 to 5"),
        "{err}"
    );
}

/// Guard: paths that are no Delta table (a file, a retrylake root, a table's `_delta_log`,
/// an empty name, a missing folder) are refused by name, exit 2, and create nothing;
/// relative paths and `..` read the table they name, from the working directory.
#[test]
fn paths_are_tables_or_clear_refusals() {
    let env = setup();
    let root = env.data_dir();
    let table = root.join("retry_queue");
    let file = env.write("plain.txt", "not a table");
    let before = tree(env.dir.path());
    for path in [
        file.to_str().unwrap().to_owned(),
        root.to_str().unwrap().to_owned(),
        table.join("_delta_log").to_str().unwrap().to_owned(),
        String::new(),
        env.path("missing/deeper").to_str().unwrap().to_owned(),
        "/proc/self".to_owned(),
    ] {
        for sql in [
            format!("SELECT * FROM delta.`{path}`"),
            format!("SELECT * FROM delta.`{path}` VERSION AS OF 0"),
            format!("DESCRIBE DETAIL delta.`{path}`"),
        ] {
            let err = refused(&env, &sql, &[]);
            assert!(
                err.contains(&format!("delta.`{path}`")) && err.contains("no Delta table"),
                "{sql}: {err}"
            );
        }
    }
    assert_eq!(
        tree(env.dir.path()),
        before,
        "a refused path created something"
    );
    // Relative to the working directory, and through `..`.
    let out = env
        .cmd()
        .current_dir(&root)
        .args([
            "query",
            "SELECT COUNT(*) AS n FROM delta.`retry_queue` VERSION AS OF 1",
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n21\n");
    let dotted = format!(
        "{}/../{}/retry_queue",
        root.display(),
        root.file_name().unwrap().to_str().unwrap()
    );
    assert_eq!(
        count(
            &env,
            &format!("SELECT COUNT(*) AS n FROM delta.`{dotted}` VERSION AS OF 1")
        ),
        21
    );
}

/// Guard: versions and times a table does not have are refused naming the table and its
/// range: past the latest, `u64::MAX`, far past and far future; and the version the
/// query asks for is the one it reads, even after a version of another table in the
/// same statement.
#[test]
fn versions_a_table_lacks_are_refused_with_its_range() {
    let env = setup();
    for (sql, expected) in [
        (
            "SELECT * FROM retry_queue VERSION AS OF 6",
            "retry_queue: no version 6: it has versions 0 to 5",
        ),
        (
            "SELECT * FROM retry_queue VERSION AS OF 18446744073709551615",
            "no version 18446744073709551615: it has versions 0 to 5",
        ),
        (
            "SELECT * FROM attempts TIMESTAMP AS OF '1970-01-01'",
            "attempts: no version as of 1970-01-01T00:00:00Z",
        ),
        (
            "SELECT * FROM attempts TIMESTAMP AS OF '9999-12-31T23:59:59Z'",
            "in the future",
        ),
    ] {
        let err = refused(&env, sql, &[]);
        assert!(err.contains(expected), "{sql}: {err}");
    }
    let got = rows(
        &env,
        "SELECT (SELECT COUNT(*) FROM retry_queue VERSION AS OF 1) AS one, \
                (SELECT COUNT(*) FROM retry_queue VERSION AS OF 0) AS zero, \
                (SELECT COUNT(*) FROM retry_queue) AS latest",
        &[],
    );
    assert_eq!(got[0]["one"], 21, "{got:?}");
    assert_eq!(got[0]["zero"], 0, "{got:?}");
    assert_eq!(got[0]["latest"], 1, "{got:?}");
    let err = refused(
        &env,
        "SELECT COUNT(*) FROM retry_queue",
        &["--version", "18446744073709551615"],
    );
    assert!(err.contains("0 to 5"), "{err}");
}

/// Guard: writes dressed in Delta SQL are refused before they run and nothing is created:
/// COPY of a past version to a new folder, INSERT into a path table, CREATE over one,
/// SET, EXPLAIN ANALYZE of a COPY.
#[test]
fn writes_through_time_travel_and_paths_are_refused_and_create_nothing() {
    let env = setup();
    let table = env.data_dir().join("retry_queue");
    let t = table.to_str().unwrap();
    let out = env.path("out");
    let o = out.to_str().unwrap();
    let before = tree(env.dir.path());
    for sql in [
        format!("COPY (SELECT * FROM retry_queue VERSION AS OF 1) TO '{o}/a.csv'"),
        format!("COPY (DESCRIBE HISTORY retry_queue) TO '{o}/b.parquet'"),
        format!("EXPLAIN ANALYZE COPY (SELECT 1) TO '{o}/c.csv'"),
        format!("INSERT INTO delta.`{t}` SELECT * FROM retry_queue VERSION AS OF 1"),
        format!("CREATE TABLE x AS SELECT * FROM delta.`{t}` VERSION AS OF 1"),
        format!("CREATE EXTERNAL TABLE y STORED AS CSV LOCATION '{o}/d/'"),
        "SET datafusion.execution.batch_size = 1".to_owned(),
        "DROP TABLE retry_queue".to_owned(),
        format!("DELETE FROM delta.`{t}`"),
    ] {
        let out = query(&env, &sql, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sql}: ran: {stderr}");
        assert!(!stderr.contains("panicked"), "{sql}: {stderr}");
    }
    assert!(!out.exists(), "created {o}");
    assert_eq!(
        tree(env.dir.path()),
        before,
        "a refused write changed files"
    );
    assert_eq!(count(&env, "SELECT COUNT(*) AS n FROM retry_queue"), 1);
}

/// Guard: hostile stdin is an error naming what is wrong (exit 2, no trace): bytes that
/// are not UTF-8, only comments, a string left open, a NUL; CRLF scripts run.
#[test]
fn hostile_stdin_is_a_clear_error_and_crlf_scripts_run() {
    let env = setup();
    for (script, expected) in [
        (
            b"SELECT 1;\n\xff\xfeSELECT 2;".to_vec(),
            "not UTF-8 text (invalid byte at offset 10)",
        ),
        (
            b"-- nothing\r\n/* at /* all */ */\r\n;\r\n".to_vec(),
            "no SQL on stdin",
        ),
        (b"SELECT 1;\nSELECT 'open\n".to_vec(), "Unterminated string"),
        (b"SELECT 1\0;".to_vec(), ""),
    ] {
        let out = piped(&env, script.clone(), &["--format", "csv"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{script:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{script:?}: {stderr}");
        assert!(stderr.contains(expected), "{script:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{script:?}: half-written output");
    }
    let out = piped(
        &env,
        "SELECT COUNT(*) AS n\r\nFROM retry_queue\r\nVERSION AS OF 1;\r\n\
         SELECT COUNT(*) AS n FROM\tretry_queue\rFOR SYSTEM_VERSION AS OF\t0\r\n",
        &["--format", "csv"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n21\nn\n0\n");
}

/// Guard: `DESCRIBE HISTORY` and `DESCRIBE DETAIL` print in CSV (nested columns as text)
/// and JSON, empty results keep their header, and a history of a table whose early commits
/// left the log is not asked for here (see delta_sql.rs).
#[test]
fn describe_prints_in_every_format() {
    let env = setup();
    for format in ["csv", "json", "table"] {
        for sql in [
            "DESCRIBE HISTORY retry_queue",
            "DESCRIBE DETAIL attempts",
            "SELECT * FROM (DESCRIBE HISTORY final_results) WHERE false",
        ] {
            let out = query(&env, sql, &["--format", format]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{sql} ({format}): {stderr}");
        }
    }
    let csv = env.ok(&[
        "query",
        "SELECT version, \"operationParameters\" FROM (DESCRIBE HISTORY retry_queue) WHERE version = 1",
        "--format",
        "csv",
    ]);
    assert!(csv.starts_with("version,operationParameters\n1,"), "{csv}");
    let empty = env.ok(&[
        "query",
        "SELECT version, counts FROM (DESCRIBE HISTORY retry_queue) WHERE false",
        "--format",
        "csv",
    ]);
    assert_eq!(empty, "version,counts\n");
}
