//! A hostile review of rules per error (commits 53e0b11 and 26aef93: src/rules.rs,
//! src/round.rs `journal_row`/`decide`, src/store/journal.rs `settle_from_lease` and
//! `merge_source`, the upgrade in src/store/mod.rs `add_columns`).
//!
//! Each test says what it attacks and what is expected. `FINDING:` (now `FAILED BEFORE THE FIX:`) marks a test the code
//! as reviewed is believed to fail (its cause by file:line); `HOLDS:` one it is believed
//! to pass, kept as a guard.

use std::time::Duration;

use retrylake::store::{AttemptRow, DeadRow, QueueRow};

use super::server::Server;
use super::util::{Background, Env, assert_each_once, tail};

const NOW: &str = "2025-11-24T14:00:00Z";
/// Eleven minutes on: past a 429's `Retry-After: 600`.
const LATER: &str = "2025-11-24T14:11:00Z";

fn now() -> chrono::DateTime<chrono::Utc> {
    NOW.parse().unwrap()
}

fn later() -> chrono::DateTime<chrono::Utc> {
    LATER.parse().unwrap()
}

/// A 429 snoozes (the test server's `ratelimited-*` ids answer 429, Retry-After 600).
const THROTTLED: &str = r#"
[[rule]]
name = "throttled"
status = [429]
action = "snooze"
wait = "1m"
max_snoozes = 5
"#;

fn enqueue(env: &Env, ids: &[&str]) {
    let lines: String = ids
        .iter()
        .map(|id| format!("{{\"sample_id\":\"{id}\",\"payload\":\"p\"}}\n"))
        .collect();
    let input = env.write("in.jsonl", lines);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", NOW]);
}

fn row<T>(rows: Vec<T>, id: &str, key: impl Fn(&T) -> &str) -> T {
    rows.into_iter()
        .find(|r| key(r) == id)
        .unwrap_or_else(|| panic!("{id} not found"))
}

/// A queued record as an older retrylake wrote it (no `snoozes` column in its file).
fn old_row(id: &str) -> QueueRow {
    QueueRow {
        sample_id: id.into(),
        payload: Some("p".into()),
        error_msg: None,
        retry_count: 0,
        process_after: now(),
        enqueued_at: now(),
        snoozes: 0,
    }
}

/// The four tables as a retrylake before rules made them (no `retry_queue.snoozes`, no
/// `attempts.rule`), with `rows` queued in a file without the column.
fn old_tables(env: &Env, rows: &[QueueRow]) {
    use retrylake::store::{Rows, Table};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for table in Table::ALL {
            let path = env.data_dir().join(table.name());
            std::fs::create_dir_all(&path).unwrap();
            let url = deltalake::ensure_table_uri(path.to_str().unwrap()).unwrap();
            let old: Vec<_> = table
                .delta_columns()
                .into_iter()
                .filter(|f| !["snoozes", "rule"].contains(&f.name().as_str()))
                .collect();
            let t = deltalake::DeltaTable::try_from_url(url)
                .await
                .unwrap()
                .create()
                .with_table_name(table.name())
                .with_columns(old)
                .await
                .unwrap();
            if table == Table::RetryQueue && !rows.is_empty() {
                let batch = QueueRow::to_batch(rows).unwrap();
                let old = batch.project(&[0, 1, 2, 3, 4, 5]).unwrap();
                t.write(vec![old]).await.unwrap();
            }
        }
    });
}

#[test]
fn a_snooze_round_killed_after_its_journal_is_completed_from_an_old_file() {
    // HOLDS: kill -9 between the journal commit and the queue commit of a round whose only
    // record was snoozed, the record in a file written before the upgrade (no `snoozes`
    // column) that the claim copied whole (src/store/due.rs `leased_copy`, which keeps
    // the file's columns as they are). Another worker recovers the round
    // (src/store/journal.rs:580-586 `settle_from_lease`, the Snooze arm): the record goes
    // back with its retry count unchanged, one snooze counted (null read as 0, plus one)
    // and the snooze's time lock (the 429's Retry-After, 10 minutes), and the audit
    // agrees (a snooze counts no retry).
    let server = Server::start();
    let env = Env::new();
    old_tables(&env, &[old_row("ratelimited-old")]);
    let rules = env.write("rules.toml", THROTTLED);
    let http = [
        "--processor",
        "http",
        "--url",
        &server.url(),
        "--rules",
        rules.to_str().unwrap(),
        "--breaker",
        "off",
    ];
    let out = env
        .cmd()
        .env("RETRYLAKE_FAILPOINT", "after-journal")
        .args([&["run", "--now", NOW, "--worker", "w1"][..], &http].concat())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the failpoint did not fire: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // w1 never comes back; w2 completes its round before its own.
    let r = env.json(&[&["run", "--now", NOW, "--worker", "w2"][..], &http].concat());
    assert_eq!(
        r["processed"], 0,
        "snoozed record called again too early: {r}"
    );
    let q = row(env.rows::<QueueRow>(), "ratelimited-old", |r| &r.sample_id);
    assert_eq!((q.retry_count, q.snoozes), (0, 1), "{q:?}");
    assert!(
        q.process_after >= now() + chrono::Duration::minutes(10),
        "time lock lost: {q:?}"
    );
    let attempts = env.rows::<AttemptRow>();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(
        (
            attempts[0].disposition.as_str(),
            attempts[0].rule.as_deref()
        ),
        ("snooze", Some("throttled"))
    );
    assert_each_once(&env.data(), &["ratelimited-old".to_owned()]);
}

#[test]
fn a_snooze_recovered_by_id_after_a_rollback_counts_its_snooze() {
    // FAILED BEFORE THE FIX: the recovery path by id (MERGE) ignores snoozes. When no lease file holds a
    // journaled round (the case src/store/journal.rs:556-558 names: "the table was rolled back
    // past its claim", or a journal of an older retrylake), `settle_from_lease` merges the
    // journal rows by id (`merge_queue`, src/store/mod.rs:328-332: only retry_count, error_msg
    // and process_after are updated; `merge_source`, journal.rs:677, maps Snooze to
    // "retry" and carries no snoozes column). A snoozed record so recovered keeps its old
    // `snoozes` (not +1), and a retried one would keep its snoozes (not reset to 0), so the
    // record's next snooze is decided on a wrong count and status shows it as snoozed
    // when it was retried. The lease path (journal.rs:577/584) gets both right.
    // Expected: the record recovered by id has the same snoozes as by its lease files: 2.
    let server = Server::start();
    let env = Env::new();
    enqueue(&env, &["ratelimited-1"]);
    let rules = env.write("rules.toml", THROTTLED);
    let http = [
        "--processor",
        "http",
        "--url",
        &server.url(),
        "--rules",
        rules.to_str().unwrap(),
        "--breaker",
        "off",
    ];
    // Round 1: snoozed once, due again 10 minutes on (Retry-After 600).
    let r = env.json(&[&["run", "--now", NOW][..], &http].concat());
    assert_eq!(r["snoozed"], 1, "{r}");
    let queue_url =
        deltalake::ensure_table_uri(env.data_dir().join("retry_queue").to_str().unwrap()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let before_claim = rt.block_on(async {
        deltalake::open_table(queue_url.clone())
            .await
            .unwrap()
            .version()
            .unwrap()
    });
    // Round 2: snoozed again and journaled, killed before its queue commit.
    let out = env
        .cmd()
        .env("RETRYLAKE_FAILPOINT", "after-journal")
        .args([&["run", "--now", LATER][..], &http].concat())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the failpoint did not fire: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An operator rolls retry_queue back to before round 2's claim (its lease files go).
    rt.block_on(async {
        let _restored = deltalake::open_table(queue_url.clone())
            .await
            .unwrap()
            .restore()
            .with_version_to_restore(before_claim)
            .await
            .unwrap();
    });
    // The next run recovers round 2 by id.
    let r = env.json(&[&["run", "--now", LATER][..], &http].concat());
    assert_eq!(r["processed"], 0, "{r}");
    let q = row(env.rows::<QueueRow>(), "ratelimited-1", |r| &r.sample_id);
    assert!(
        q.process_after >= later() + chrono::Duration::minutes(10),
        "{q:?}"
    );
    assert_eq!(
        (q.retry_count, q.snoozes),
        (0, 2),
        "round 2's snooze recovered by id was not counted: {q:?}"
    );
}

#[test]
fn a_record_without_payload_is_dead_at_once_whatever_the_rules() {
    // FAILED BEFORE THE FIX: rules apply to the synthetic failure of a record that was never called.
    // A record with an empty payload fails "at once, uncalled" (src/round.rs:774
    // `missing_payload`: Outcome::permanent("Missing Payload"), no class), and
    // `journal_row` (src/round.rs:836) runs `config.rules.find` on it like on a failure
    // the downstream reported. A rule meant for the downstream ("retry its permanent
    // failures a few times", `outcome = "permanent"`; or a message pattern that happens
    // to match "Missing Payload") keeps a record that can never be sent in the queue: it
    // is retried (and dies as retries_exhausted) or snoozed for a day, never called, and
    // the journal names the rule as if it had decided something the downstream said.
    // Expected: dead in the round, reason permanent, "Missing Payload", no rule named.
    for (name, rule) in [
        (
            "retry-permanent",
            "outcome = \"permanent\"\naction = \"transient\"\nmax_retries = 3\nbase_backoff = \"1s\"\n",
        ),
        (
            "missing-later",
            "message = \"(?i)missing\"\naction = \"snooze\"\nwait = \"1m\"\n",
        ),
    ] {
        let env = Env::new();
        let input = env.write("in.jsonl", "{\"sample_id\":\"empty-1\",\"payload\":\"\"}\n");
        env.ok(&["enqueue", input.to_str().unwrap(), "--now", NOW]);
        let rules = env.write("rules.toml", format!("[[rule]]\nname = \"{name}\"\n{rule}"));
        let r = env.json(&[
            "run",
            "--now",
            NOW,
            "--transient-rate",
            "0",
            "--rules",
            rules.to_str().unwrap(),
        ]);
        let attempts = env.rows::<AttemptRow>();
        assert_eq!(
            r["dead_lettered"], 1,
            "{name}: a record without payload was kept: {r}; journal {attempts:?}"
        );
        let dead = row(env.rows::<DeadRow>(), "empty-1", |d| &d.sample_id);
        assert_eq!(
            (dead.reason.as_str(), dead.error_msg.as_deref()),
            ("permanent", Some("Missing Payload")),
            "{name}"
        );
        let a = row(attempts, "empty-1", |a| &a.sample_id);
        assert_eq!(a.rule, None, "{name}: a rule decided an uncalled record");
    }
}

#[test]
fn a_rules_file_that_is_wrong_is_refused_naming_what_is_wrong() {
    // HOLDS: every bad rules file is refused before anything runs, exit 2, no panic, the
    // message naming the file and what is wrong (src/rules.rs `load`, `parse`,
    // `Rule::from_file`, `duration`; MAX_RULES; the pattern's size limit).
    let env = Env::new();
    enqueue(&env, &["a"]);
    let rule = |body: &str| format!("[[rule]]\nname = \"x\"\n{body}\n").into_bytes();
    let many: String = (0..1001)
        .map(|i| format!("[[rule]]\nname = \"r{i}\"\nstatus = [429]\naction = \"permanent\"\n"))
        .collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not UTF-8",
            b"[[rule]]\nname = \"\xff\xfe\"\nstatus = [429]\naction = \"permanent\"\n".to_vec(),
            "cannot read it",
        ),
        (
            "a duplicate key",
            rule("name = \"y\"\nstatus = [429]\naction = \"permanent\""),
            "duplicate key",
        ),
        (
            "a misspelt table",
            b"[[rules]]\nname = \"x\"\nstatus = [429]\naction = \"permanent\"\n".to_vec(),
            "unknown field",
        ),
        (
            "an unknown field in a rule",
            rule("status = [429]\naction = \"permanent\"\ncolour = 1"),
            "colour",
        ),
        (
            "a status as text",
            rule("status = \"429\"\naction = \"permanent\""),
            "status",
        ),
        (
            "a status past u16",
            rule("status = [70000]\naction = \"permanent\""),
            "70000",
        ),
        (
            "a status no HTTP answer has",
            rule("status = [99]\naction = \"permanent\""),
            "status 99 is not an HTTP status",
        ),
        (
            "a negative max_snoozes",
            rule("status = [429]\naction = \"snooze\"\nwait = \"1m\"\nmax_snoozes = -1"),
            "-1",
        ),
        (
            "a max_snoozes past u32",
            rule("status = [429]\naction = \"snooze\"\nwait = \"1m\"\nmax_snoozes = 4294967296"),
            "4294967296",
        ),
        (
            "a zero wait",
            rule("status = [429]\naction = \"snooze\"\nwait = \"0s\""),
            "wait must be more than 0",
        ),
        (
            "a wait past 100 years",
            rule("status = [429]\naction = \"snooze\"\nwait = \"101years\""),
            "longer than 100 years",
        ),
        (
            "a wait that overflows",
            rule("status = [429]\naction = \"snooze\"\nwait = \"99999999999999999999999s\""),
            "wait",
        ),
        (
            "a pattern that does not parse",
            rule("message = \"(\"\naction = \"permanent\""),
            "not a valid pattern",
        ),
        (
            "a pattern past the size limit",
            rule("message = '\\w{1000}{1000}'\naction = \"permanent\""),
            "not a valid pattern",
        ),
        (
            "a control character in a name",
            b"[[rule]]\nname = \"a\\u0007b\"\nstatus = [429]\naction = \"permanent\"\n".to_vec(),
            "control",
        ),
        ("too many rules", many.into_bytes(), "at most 1000"),
    ];
    for (n, (what, contents, expected)) in cases.into_iter().enumerate() {
        let path = env.write(&format!("rules-{n}.toml"), contents);
        let path = path.to_str().unwrap();
        let err = env.fails(&["run", "--now", NOW, "--rules", path]);
        assert!(
            err.contains(path) && err.contains(expected),
            "{what}: expected '{expected}' and the file named: {err}"
        );
    }
    // A directory given as the file.
    let dir = env.path("rules.d");
    std::fs::create_dir_all(&dir).unwrap();
    let err = env.fails(&["run", "--now", NOW, "--rules", dir.to_str().unwrap()]);
    assert!(err.contains("cannot read it"), "{err}");
    assert!(env.rows::<AttemptRow>().is_empty(), "nothing ran");
}

#[test]
fn a_rule_for_an_exit_code_no_process_ends_with_is_refused_or_matches_the_signal() {
    // FAILED BEFORE THE FIX: `exit_code` takes any i32 (src/rules.rs:108, no check in
    // `Rule::from_file` where `status` is checked against 100..=599, rules.rs:260). A
    // process's exit status is 0 to 255; one killed by a signal has none, and gets no
    // class (src/processor/command.rs:134: the `None` arm, no `with_class`). Python
    // reports SIGKILL as returncode -9, so `exit_code = [-9]` is what a user writes for
    // "the command was OOM-killed": the rule loads and silently never matches (here the
    // record is retried as transient instead of dead-lettered).
    // Expected: either the rule is refused (exit 2, naming exit_code), or a death by
    // signal N matches exit_code -N.
    let env = Env::new();
    enqueue(&env, &["a"]);
    let rules = env.write(
        "rules.toml",
        "[[rule]]\nname = \"killed\"\nexit_code = [-9]\naction = \"permanent\"\n",
    );
    let out = env
        .cmd()
        .args([
            "run",
            "--now",
            NOW,
            "--processor",
            "command",
            "--command",
            "kill -9 $$",
            "--rules",
            rules.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    if out.status.code() == Some(2) {
        assert!(
            stderr.contains("exit_code") && stderr.contains("-9"),
            "refused without naming what is wrong: {stderr}"
        );
        return;
    }
    assert!(out.status.success(), "{stderr}");
    let a = row(env.rows::<AttemptRow>(), "a", |a| &a.sample_id);
    assert_eq!(
        (a.rule.as_deref(), a.disposition.as_str()),
        (Some("killed"), "dead"),
        "a rule for exit code -9 was accepted and never matched: {a:?}"
    );
}

#[test]
fn writers_opening_an_old_queue_at_once_upgrade_it_once() {
    // HOLDS: several new processes open a queue an older retrylake made, at once: three
    // enqueues and two workers, each trying the ADD COLUMN commit
    // (src/store/mod.rs:637 `add_columns`). The losers conflict (delta-rs refuses any
    // commit after a metadata change it did not read), read the table anew, find nothing
    // missing and go on: every process succeeds, each table is upgraded by exactly one
    // commit, and no record is lost or doubled.
    let env = Env::new();
    old_tables(&env, &[old_row("old-1")]);
    let mut ids = vec!["old-1".to_owned()];
    let mut procs = Vec::new();
    for i in 0..3 {
        let lines: String = (0..20)
            .map(|n| format!("{{\"sample_id\":\"e{i}-{n}\",\"payload\":\"p\"}}\n"))
            .collect();
        ids.extend((0..20).map(|n| format!("e{i}-{n}")));
        let input = env.write(&format!("in{i}.jsonl"), lines);
        procs.push(Background::spawn(
            &env,
            &format!("enqueue-{i}"),
            &["enqueue", input.to_str().unwrap(), "--now", NOW],
            &[],
        ));
    }
    for worker in ["w1", "w2"] {
        procs.push(Background::spawn(
            &env,
            &format!("run-{worker}"),
            &[
                "run",
                "--now",
                NOW,
                "--worker",
                worker,
                "--transient-rate",
                "0",
            ],
            &[],
        ));
    }
    for p in procs {
        let name = p.name.clone();
        let done = p.wait(Duration::from_secs(180));
        assert!(
            done.status.success(),
            "{name} failed on a queue being upgraded: {}",
            tail(&done.stderr)
        );
    }
    for table in ["retry_queue", "attempts"] {
        let history = env.ok(&["history", table, "--json"]);
        assert_eq!(
            history.matches("upgrade").count(),
            1,
            "{table} upgraded other than once: {history}"
        );
    }
    env.ok(&["run", "--now", NOW, "--drain", "--transient-rate", "0"]);
    assert_each_once(&env.data(), &ids);
}
