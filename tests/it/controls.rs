//! The operator controls under attack: `pause`/`resume` (a table property of
//! `retry_queue` every round's claim reads), `cancel` (a claim of matching records outside
//! live leases, journaled as worker `cancel`, placed in `dead_letter_queue` with reason
//! `cancelled`) and `run --max-age` (a deadline from `enqueued_at`, reason `expired`).
//! Each test runs the binary on real tables, with real child processes where a race is
//! the point, and ends with a full audit: every id in exactly one table, none lost, none
//! doubled, retry counts agreeing with the journal.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use retrylake::store::{
    AttemptKind, AttemptRow, DeadReason, DeadRow, Disposition, FinalRow, QueueRow, Table,
};

use super::util::{
    Background, Env, Finished, Root, assert_each_attempt_once, assert_each_once, repeated, tail,
    write_samples,
};

/// Enqueued here, records are due now on the real clock.
const PAST: &str = "2020-01-01T00:00:00Z";
/// The virtual clock's start for the tests that set one.
const T0: &str = "2025-11-24T14:00:00Z";
/// The longest any one wait of these tests may take before the test fails.
const WAIT: Duration = Duration::from_secs(120);

fn sleep(secs: f64) {
    std::thread::sleep(Duration::from_secs_f64(secs));
}

/// `n` ids `<prefix>-0000`...
fn make_ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

/// A JSON Lines input of `ids`, each with a payload (so every one is called).
fn write_records(env: &Env, name: &str, ids: &[String]) -> PathBuf {
    let lines: String = ids
        .iter()
        .map(|id| format!("{{\"sample_id\":\"{id}\",\"payload\":\"data of {id}\"}}\n"))
        .collect();
    env.write(name, lines)
}

/// Enqueues `ids` (with payloads) at `now`, asserting all of them are new.
fn enqueue(env: &Env, name: &str, ids: &[String], now: &str) {
    let input = write_records(env, name, ids);
    let out = env.ok(&["enqueue", input.to_str().unwrap(), "--now", now]);
    let expected = format!("enqueued {n} of {n} records", n = ids.len());
    assert!(out.contains(&expected), "{out}");
}

/// The lines a command processor appended to `path` (one sample id per call).
fn calls(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A command for `--processor command` that appends the record's id to `log`, then runs
/// `then` (whose exit decides the outcome; `cat` answers the payload).
fn logging_command(log: &Path, then: &str) -> String {
    format!(
        "echo \"$RETRYLAKE_SAMPLE_ID\" >> '{}'; {then}",
        log.display()
    )
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process ended the way a healthy one does: exit 0, no panic.
fn assert_clean_exit(name: &str, f: &Finished) {
    assert!(
        f.status.success() && !f.stderr.contains("panicked"),
        "{name} exited with {}: {}",
        f.status,
        tail(&f.stderr)
    );
}

fn assert_output_ok(name: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("panicked"),
        "{name} exited with {}: {}",
        out.status,
        tail(&stderr)
    );
}

/// The JSON lines of `run --json` (one per round).
fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The dead letters by id, asserting no id is there twice.
fn dead_by_id(env: &Env) -> HashMap<String, DeadRow> {
    let dead = env.rows::<DeadRow>();
    let twice = repeated(dead.iter().map(|d| d.sample_id.clone()));
    assert!(twice.is_empty(), "dead-lettered twice: {twice:?}");
    dead.into_iter().map(|d| (d.sample_id.clone(), d)).collect()
}

/// The journal's cancel rows, asserting each id is cancelled at most once.
fn cancel_attempts(env: &Env) -> HashMap<String, AttemptRow> {
    let rows: Vec<AttemptRow> = env
        .rows::<AttemptRow>()
        .into_iter()
        .filter(|a| a.outcome == AttemptKind::Cancel)
        .collect();
    let twice = repeated(rows.iter().map(|a| a.sample_id.clone()));
    assert!(twice.is_empty(), "cancel journaled twice: {twice:?}");
    for a in &rows {
        assert_eq!(a.worker, retrylake::CANCEL_WORKER, "{a:?}");
        assert_eq!(a.disposition, Disposition::Dead, "{a:?}");
        assert_eq!(a.reason, Some(DeadReason::Cancelled), "{a:?}");
    }
    rows.into_iter().map(|a| (a.sample_id.clone(), a)).collect()
}

/// Every id of `ids` is a dead letter with reason `cancelled`, whose error is the
/// journaled cancel's, and whose retry count is the journaled one.
fn assert_cancelled(env: &Env, ids: &[String]) {
    let dead = dead_by_id(env);
    let journal = cancel_attempts(env);
    for id in ids {
        let d = dead
            .get(id)
            .unwrap_or_else(|| panic!("{id} is not a dead letter"));
        assert_eq!(d.reason, DeadReason::Cancelled, "{d:?}");
        let a = journal
            .get(id)
            .unwrap_or_else(|| panic!("{id}: no cancel in the journal"));
        assert_eq!(d.error_msg, a.error_msg, "{id}: dead letter vs journal");
        assert_eq!(d.retry_count, a.retry_count, "{id}: dead letter vs journal");
    }
}

/// The version of each table, read by a fresh store.
fn versions(data: &Root) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = data.open().await;
        Table::ALL
            .iter()
            .map(|t| format!("{}={:?}", t.name(), store.table(*t).version()))
            .collect()
    })
}

/// Every file under a local data root, with its size.
fn tree(dir: &Path) -> BTreeMap<String, u64> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let entry = entry.expect("dir entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                let name = entry
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .display()
                    .to_string();
                files.insert(name, meta.len());
            }
        }
    }
    files
}

/// Runs the binary with `args` (at most 30 s) and asserts it is refused: exit 2, one line
/// on stderr starting `error: ` (clap's pointer to --help aside), no panic, and nothing
/// written (the same files, the same table versions). Returns stderr.
fn refused(env: &Env, args: &[&str]) -> String {
    let before = (tree(&env.data_dir()), versions(&env.data()));
    let out = env
        .cmd()
        .args(args)
        .timeout(Duration::from_secs(30))
        .output()
        .expect("run");
    let stderr = String::from_utf8(out.stderr).expect("utf8 stderr");
    assert_eq!(out.status.code(), Some(2), "retrylake {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
        .collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{args:?} printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let after = (tree(&env.data_dir()), versions(&env.data()));
    assert_eq!(before, after, "{args:?} changed the tables");
    stderr
}

/// Starts every command at once and waits for all.
fn spawn_all(env: &Env, commands: &[Vec<String>]) -> Vec<Output> {
    let children: Vec<_> = commands
        .iter()
        .map(|args| {
            env.process()
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn retrylake")
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect()
}

/// `cancel --json` for `ids` with `reason`, as arguments.
fn cancel_ids(ids: &[String], reason: &str) -> Vec<String> {
    let mut args = vec!["cancel".to_owned(), "--json".to_owned()];
    for id in ids {
        args.push("--id".to_owned());
        args.push(id.clone());
    }
    args.push("--reason".to_owned());
    args.push(reason.to_owned());
    args
}

/// The `{"rounds","cancelled","held"}` report of a cancel.
fn cancel_report(stdout: &[u8]) -> (usize, usize, usize) {
    let text = String::from_utf8_lossy(stdout);
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    let count = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}: {v}")) as usize;
    let rounds = v["rounds"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .len();
    (rounds, count("cancelled"), count("held"))
}

// 1. A pause stops a running worker; a resume lets it drain.

#[test]
fn a_pause_stops_a_running_worker_and_a_resume_lets_it_drain() {
    pause_a_running_worker(Env::new(), 2.0);
}

#[test]
fn a_pause_stops_a_running_worker_and_a_resume_lets_it_drain_on_s3() {
    pause_a_running_worker(Env::s3(), 6.0);
}

/// A worker (a real child process, a command processor, a short poll) drains a queue four
/// records a round. Mid-way the queue is paused: once the round in flight has settled it
/// claims nothing more, though records are due and it keeps polling. An enqueue meanwhile
/// is accepted and not called. After a resume the worker drains everything, each record
/// called and placed once.
fn pause_a_running_worker(env: Env, settle_secs: f64) {
    let first = make_ids("P", 80);
    enqueue(&env, "first.jsonl", &first, PAST);
    let log = env.path("calls");
    let command = logging_command(&log, "sleep 0.1; cat");
    let worker = Background::spawn(
        &env,
        "worker",
        &[
            "worker",
            "--worker=w1",
            "--processor=command",
            "--command",
            &command,
            "--limit=4",
            "--concurrency=4",
            "--poll=200ms",
            "--timeout=10s",
        ],
        &[],
    );
    wait_until("the worker's first rounds", WAIT, || {
        env.rows::<AttemptRow>().len() >= 8
    });
    env.ok(&["pause", "--reason", "downstream maintenance"]);
    // The round in flight when the pause landed may still settle; then nothing.
    sleep(settle_secs);
    let attempted = env.rows::<AttemptRow>().len();
    let called = calls(&log).len();
    sleep(settle_secs);
    assert_eq!(
        env.rows::<AttemptRow>().len(),
        attempted,
        "a paused worker journaled attempts: {}",
        tail(&worker.stderr())
    );
    assert_eq!(
        calls(&log).len(),
        called,
        "a paused worker called the processor"
    );
    let waiting = env.rows::<QueueRow>().len();
    assert!(
        waiting > 0 && attempted < first.len(),
        "the worker drained the queue before the pause took hold ({attempted} attempts)"
    );
    assert_eq!(
        attempted + waiting,
        first.len(),
        "attempted or waiting, each once"
    );

    // Enqueues go on while paused, and wait.
    let second = make_ids("Q", 10);
    enqueue(&env, "second.jsonl", &second, PAST);
    sleep(settle_secs);
    assert_eq!(env.rows::<AttemptRow>().len(), attempted);
    assert_eq!(env.rows::<QueueRow>().len(), waiting + second.len());
    assert!(
        calls(&log).iter().all(|id| !id.starts_with("Q-")),
        "a record enqueued during the pause was called"
    );
    let status = env.json(&["status"]);
    assert_eq!(
        status["waiting"],
        (waiting + second.len()) as u64,
        "{status}"
    );

    env.ok(&["resume"]);
    wait_until("the drain after the resume", WAIT, || {
        env.rows::<QueueRow>().is_empty()
    });
    let finished = worker.stop(WAIT);
    assert_clean_exit("worker", &finished);

    let mut all = first.clone();
    all.extend(second.iter().cloned());
    assert_each_once(&env.data(), &all);
    assert_each_attempt_once(&env);
    // Every record was called once (the command always succeeds) and is final.
    assert_eq!(env.rows::<FinalRow>().len(), all.len());
    let mut called = calls(&log);
    called.sort();
    let mut expected = all.clone();
    expected.sort();
    assert_eq!(called, expected, "each record called exactly once");

    // The history says who paused, why, and the resume.
    let history = env.ok(&["history", "retry_queue"]);
    let pause = history
        .lines()
        .find(|l| l.contains(" pause "))
        .unwrap_or_else(|| panic!("no pause in the history: {history}"));
    assert!(
        pause.contains("reason=\"downstream maintenance\"") && pause.contains("by="),
        "{pause}"
    );
    let resume = history
        .lines()
        .find(|l| l.contains(" resume "))
        .unwrap_or_else(|| panic!("no resume in the history: {history}"));
    assert!(resume.contains("by="), "{resume}");
}

// 2. A pause with an end, on a virtual clock.

/// The queue is paused until 15:00. Rounds at 14:30 and at 14:59:59.999 (the virtual
/// clock) claim nothing and say the queue is paused, through a checkpoint of the tables;
/// an enqueue and a cancel meanwhile go on. A drain started at 14:30 waits the pause out:
/// its clock jumps to 15:00, and every record is called at 15:00 or later.
#[test]
fn a_pause_until_holds_on_a_virtual_clock_then_rounds_go_on() {
    let env = Env::new();
    let first = make_ids("V", 20);
    enqueue(&env, "first.jsonl", &first, T0);
    let out = env.ok(&[
        "pause",
        "--until",
        "2025-11-24T15:00:00Z",
        "--reason",
        "release window",
        "--now",
        T0,
    ]);
    assert!(out.contains("2025-11-24T15:00:00"), "{out}");
    // A checkpoint of every table must not lose the pause.
    env.ok(&["optimize"]);
    let is_the_pause = |pause: &serde_json::Value| {
        pause["reason"] == "release window"
            && pause["until"]
                .as_str()
                .is_some_and(|u| u.starts_with("2025-11-24T15:00:00"))
    };
    let status = env.json(&["status", "--now", "2025-11-24T14:10:00Z"]);
    assert!(is_the_pause(&status["paused"]), "{status}");
    let paused_run = |now: &str| {
        let out = env.ok(&["run", "--processor=simulate", "--now", now, "--json"]);
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 1, "{now}: {out}");
        let r = &lines[0];
        assert_eq!(r["processed"], 0, "{now}: {r}");
        assert!(r["round"].is_null(), "{now}: {r}");
        assert!(is_the_pause(&r["queue_paused"]), "{now}: {r}");
    };
    paused_run("2025-11-24T14:30:00Z");
    assert!(env.rows::<AttemptRow>().is_empty());
    assert_eq!(env.rows::<QueueRow>().len(), first.len());

    // Enqueues and cancels go on while paused.
    let second = make_ids("W", 5);
    enqueue(&env, "second.jsonl", &second, "2025-11-24T14:40:00Z");
    let out = env.ok(&[
        "cancel",
        "--id",
        "V-0000",
        "--now",
        "2025-11-24T14:45:00Z",
        "--json",
    ]);
    assert_eq!(cancel_report(out.as_bytes()), (1, 1, 0), "{out}");
    paused_run("2025-11-24T14:59:59.999Z");
    assert_eq!(env.rows::<AttemptRow>().len(), 1, "only the cancel");
    let status = env.json(&["status", "--now", "2025-11-24T15:00:00Z"]);
    assert!(
        status["paused"].is_null(),
        "the pause is over at 15:00: {status}"
    );

    // A drain from 14:30 waits the pause out, then takes everything.
    let out = env.ok(&[
        "run",
        "--processor=simulate",
        "--transient-rate=0.3",
        "--now",
        "2025-11-24T14:30:00Z",
        "--drain",
        "--json",
    ]);
    let lines = json_lines(&out);
    assert!(is_the_pause(&lines[0]["queue_paused"]), "{out}");
    assert_eq!(lines[0]["processed"], 0, "{out}");
    assert!(
        lines[1..].iter().all(|r| r["queue_paused"].is_null()),
        "{out}"
    );
    let processed: u64 = lines.iter().filter_map(|r| r["processed"].as_u64()).sum();
    assert!(processed >= 24, "{out}");
    assert!(env.rows::<QueueRow>().is_empty(), "drained: {out}");
    let at_end: chrono::DateTime<chrono::Utc> = "2025-11-24T15:00:00Z".parse().unwrap();
    for a in env.rows::<AttemptRow>() {
        if a.outcome != AttemptKind::Cancel {
            assert!(a.started_at >= at_end, "called during the pause: {a:?}");
        }
    }
    let mut all = first.clone();
    all.extend(second.iter().cloned());
    assert_each_once(&env.data(), &all);
    assert_each_attempt_once(&env);
    assert_cancelled(&env, &["V-0000".to_owned()]);
}

/// A pause without an end: `run` and `run --drain` claim nothing and say the queue is
/// paused (not empty: five records wait), and the drain stops at once instead of waiting
/// forever. After a resume the drain takes everything.
#[test]
fn a_drain_on_a_queue_paused_until_resume_stops_and_says_so() {
    let env = Env::new();
    let ids = make_ids("R", 5);
    enqueue(&env, "in.jsonl", &ids, T0);
    env.ok(&["pause", "--reason", "audit", "--now", T0]);
    for args in [
        vec!["run", "--processor=simulate", "--now", T0],
        vec![
            "run",
            "--processor=simulate",
            "--now",
            "2100-01-01T00:00:00Z",
            "--drain",
        ],
    ] {
        let out = env
            .cmd()
            .args(&args)
            .timeout(Duration::from_secs(60))
            .output()
            .expect("run");
        assert_output_ok(&format!("{args:?}"), &out);
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.contains("paused") && !out.contains("queue empty"),
            "{args:?}: 5 records wait in a paused queue, yet: {out}"
        );
    }
    assert!(env.rows::<AttemptRow>().is_empty(), "claimed while paused");
    let status = env.ok(&["status"]);
    assert!(
        status.contains("PAUSED") && status.contains("audit"),
        "{status}"
    );
    env.ok(&["resume"]);
    let status = env.json(&["status"]);
    assert!(status["paused"].is_null(), "{status}");
    env.ok(&["run", "--processor=simulate", "--now", T0, "--drain"]);
    assert!(env.rows::<QueueRow>().is_empty());
    assert_each_once(&env.data(), &ids);
    assert_each_attempt_once(&env);
}

// 3. The same cancel twice at once.

#[test]
fn concurrent_cancels_of_overlapping_ids_cancel_each_record_once() {
    for i in 0..3 {
        concurrent_cancels(Env::new(), &format!("round {i}"));
    }
}

#[test]
fn concurrent_cancels_of_overlapping_ids_cancel_each_record_once_on_s3() {
    concurrent_cancels(Env::s3(), "s3");
}

/// 300 queued records in three files (some retried once, so not due). Three cancels start
/// at once: A and A2 the same 200 ids, B 200 ids overlapping both. Each matching record is
/// cancelled by exactly one of them (journaled once, one dead letter whose error is that
/// cancel's reason), and the counts they report add up.
fn concurrent_cancels(env: Env, label: &str) {
    let all = make_ids("X", 300);
    for (i, chunk) in all.chunks(100).enumerate() {
        enqueue(&env, &format!("in{i}.jsonl"), chunk, PAST);
    }
    // Some records fail once and wait two minutes: a cancel takes them too.
    let log = env.path("calls");
    let command = logging_command(
        &log,
        "case \"$RETRYLAKE_SAMPLE_ID\" in *7) exit 75;; esac; cat",
    );
    let out = env.json(&[
        "run",
        "--processor=command",
        "--command",
        &command,
        "--limit=40",
        "--concurrency=8",
    ]);
    assert_eq!(out["processed"], 40, "{out}");
    let finals: BTreeSet<String> = env
        .rows::<FinalRow>()
        .into_iter()
        .map(|f| f.sample_id)
        .collect();
    let failed = calls(&log).iter().filter(|id| id.ends_with('7')).count();
    assert!(failed > 0, "{label}: no record was retried");
    assert_eq!(finals.len(), 40 - failed, "{label}");
    let queued: Vec<String> = all
        .iter()
        .filter(|id| !finals.contains(*id))
        .cloned()
        .collect();

    let a = all[..200].to_vec();
    let b = all[100..].to_vec();
    let outs = spawn_all(
        &env,
        &[
            cancel_ids(&a, "by A"),
            cancel_ids(&a, "by A2"),
            cancel_ids(&b, "by B"),
        ],
    );
    let mut cancelled = 0;
    for (name, out) in ["A", "A2", "B"].iter().zip(&outs) {
        assert_output_ok(&format!("{label}: cancel {name}"), out);
        cancelled += cancel_report(&out.stdout).1;
    }
    assert_eq!(cancelled, queued.len(), "{label}: the reports add up");
    assert!(env.rows::<QueueRow>().is_empty(), "{label}: nothing left");
    assert_cancelled(&env, &queued);
    // Whoever cancelled a record matched it; finals were not touched.
    let dead = dead_by_id(&env);
    assert_eq!(
        dead.len(),
        queued.len(),
        "{label}: a final record was cancelled"
    );
    for (i, id) in all.iter().enumerate() {
        let Some(d) = dead.get(id) else { continue };
        let by = d.error_msg.as_deref().unwrap_or_default();
        let allowed: &[&str] = match i {
            0..100 => &["by A", "by A2"],
            100..200 => &["by A", "by A2", "by B"],
            _ => &["by B"],
        };
        assert!(allowed.contains(&by), "{label}: {id} cancelled {by:?}");
        let retried = calls(&log).contains(id) && id.ends_with('7');
        assert_eq!(d.retry_count, i32::from(retried), "{label}: {d:?}");
    }
    assert_each_once(&env.data(), &all);
    assert_each_attempt_once(&env);
}

// 4. A cancel racing a worker mid-round.

/// A worker (`run --limit 10`) holds 10 of 30 records under its lease while its slow calls
/// run. `cancel --all` meanwhile cancels the other 20 and reports the 10 as held, taking
/// none of them. The worker's round then places its 10 (some retried), and a second cancel
/// takes the retried ones.
#[test]
fn a_cancel_leaves_a_running_rounds_records_to_it() {
    let env = Env::new();
    let all = make_ids("K", 30);
    enqueue(&env, "in.jsonl", &all, PAST);
    let log = env.path("calls");
    let started = env.path("started");
    // Even ids fail transiently; every call takes 4 s.
    let command = logging_command(
        &log,
        &format!(
            "echo x >> '{}'; sleep 4; case \"$RETRYLAKE_SAMPLE_ID\" in *[02468]) exit 75;; esac; cat",
            started.display()
        ),
    );
    let worker = Background::spawn(
        &env,
        "worker",
        &[
            "run",
            "--worker=w1",
            "--processor=command",
            "--command",
            &command,
            "--limit=10",
            "--concurrency=10",
            "--timeout=30s",
        ],
        &[],
    );
    wait_until("the worker's 10 calls", WAIT, || {
        calls(&started).len() >= 10
    });
    let held_ids: BTreeSet<String> = calls(&log).into_iter().collect();
    assert_eq!(held_ids.len(), 10);

    let out = env.json(&["cancel", "--all", "--reason", "first sweep"]);
    assert!(
        no_round_journaled(&env),
        "the worker's round settled before the cancel: the race was not run"
    );
    assert_eq!(out["cancelled"], 20, "{out}");
    assert_eq!(out["held"], 10, "{out}");
    let dead = dead_by_id(&env);
    for id in &held_ids {
        assert!(!dead.contains_key(id), "a held record was cancelled: {id}");
    }

    let finished = worker.wait(WAIT);
    assert_clean_exit("worker", &finished);
    let retried: Vec<String> = held_ids
        .iter()
        .filter(|id| id.ends_with(['0', '2', '4', '6', '8']))
        .cloned()
        .collect();
    let queued: Vec<String> = env
        .rows::<QueueRow>()
        .into_iter()
        .map(|q| q.sample_id)
        .collect();
    assert_eq!(
        queued.iter().cloned().collect::<BTreeSet<_>>(),
        retried.iter().cloned().collect::<BTreeSet<_>>(),
        "the round's retried records are back, the others final"
    );

    let out = env.json(&["cancel", "--all", "--reason", "second sweep"]);
    assert_eq!(out["cancelled"], retried.len() as u64, "{out}");
    assert_eq!(out["held"], 0, "{out}");
    assert!(env.rows::<QueueRow>().is_empty());
    let cancelled: Vec<String> = all
        .iter()
        .filter(|id| !held_ids.contains(*id) || retried.contains(*id))
        .cloned()
        .collect();
    assert_cancelled(&env, &cancelled);
    let dead = dead_by_id(&env);
    for id in &retried {
        assert_eq!(dead[id].error_msg.as_deref(), Some("second sweep"));
        assert_eq!(dead[id].retry_count, 1, "{:?}", dead[id]);
    }
    // Nothing the cancel took was ever called.
    for id in calls(&log) {
        assert!(held_ids.contains(&id), "{id} was called after its cancel");
    }
    assert_each_once(&env.data(), &all);
    assert_each_attempt_once(&env);
}

/// Whether no worker's round has journaled yet (only cancels are in the journal).
fn no_round_journaled(env: &Env) -> bool {
    env.rows::<AttemptRow>()
        .iter()
        .all(|a| a.outcome == AttemptKind::Cancel)
}

/// A worker frozen (SIGSTOP) in its calls past its lease: `cancel --all` finds the lease
/// ended, fences the round and cancels every record. Woken, the worker loses its round
/// cleanly: it places nothing, and nothing is in two tables.
#[test]
fn a_cancel_fences_a_frozen_round_past_its_lease() {
    let env = Env::new();
    let all = make_ids("Z", 12);
    enqueue(&env, "in.jsonl", &all, PAST);
    let started = env.path("started");
    let command = format!("echo x >> '{}'; sleep 0.5; cat", started.display());
    let worker = Background::spawn(
        &env,
        "worker",
        &[
            "run",
            "--worker=w1",
            "--processor=command",
            "--command",
            &command,
            "--concurrency=12",
            "--lease=3s",
            "--timeout=1s",
        ],
        &[],
    );
    wait_until("the worker's calls", WAIT, || calls(&started).len() >= 12);
    worker.signal(Signal::SIGSTOP);
    // Past the round's lease (3 s from its claim).
    sleep(4.0);
    let out = env.json(&["cancel", "--all", "--reason", "fenced"]);
    assert_eq!(out["cancelled"], 12, "{out}");
    assert_eq!(out["held"], 0, "{out}");
    worker.signal(Signal::SIGCONT);
    let finished = worker.wait(WAIT);
    assert_clean_exit("worker", &finished);
    assert!(
        finished.stderr.contains("lost its lease"),
        "{}",
        tail(&finished.stderr)
    );
    assert!(
        env.rows::<FinalRow>().is_empty(),
        "the fenced round placed records"
    );
    assert!(env.rows::<QueueRow>().is_empty());
    assert_cancelled(&env, &all);
    assert!(
        env.rows::<AttemptRow>()
            .iter()
            .all(|a| a.outcome == AttemptKind::Cancel),
        "the fenced round journaled attempts"
    );
    assert_each_once(&env.data(), &all);
    assert_each_attempt_once(&env);
}

/// A round whose calls outlast its lease keeps it by heartbeats (`--lease 2s`, calls of
/// 5 s). A cancel 3 s into the calls, past the lease the round claimed with, still finds
/// its records held: it leaves them to the round, which places them.
#[test]
fn a_cancel_leaves_records_under_a_heartbeat_extended_lease_to_their_round() {
    let env = Env::new();
    let all = make_ids("H", 24);
    enqueue(&env, "in.jsonl", &all, PAST);
    let log = env.path("calls");
    let command = logging_command(&log, "sleep 5; cat");
    let worker = Background::spawn(
        &env,
        "worker",
        &[
            "run",
            "--worker=w1",
            "--processor=command",
            "--command",
            &command,
            "--limit=8",
            "--concurrency=8",
            "--lease=2s",
            "--timeout=20s",
        ],
        &[],
    );
    wait_until("the worker's 8 calls", WAIT, || calls(&log).len() >= 8);
    sleep(3.0);
    let out = env.json(&["cancel", "--all", "--reason", "sweep"]);
    assert!(
        no_round_journaled(&env),
        "the round settled before the cancel"
    );
    assert_eq!(out["cancelled"], 16, "{out}");
    assert_eq!(out["held"], 8, "{out}");
    let finished = worker.wait(WAIT);
    assert_clean_exit("worker", &finished);
    let held: BTreeSet<String> = calls(&log).into_iter().collect();
    let finals: BTreeSet<String> = env
        .rows::<FinalRow>()
        .into_iter()
        .map(|f| f.sample_id)
        .collect();
    assert_eq!(
        finals,
        held,
        "the round placed what it held: {}",
        tail(&finished.stderr)
    );
    let cancelled: Vec<String> = all
        .iter()
        .filter(|id| !held.contains(*id))
        .cloned()
        .collect();
    assert_cancelled(&env, &cancelled);
    assert_each_once(&env.data(), &all);
    assert_each_attempt_once(&env);
}

/// Pause and resume, eight times each in quick succession, while a worker commits a round
/// every few tens of milliseconds: every pause and resume commits (their property commits
/// conflict with the worker's claims and settles, and are retried), the worker never
/// fails, and the queue drains with every record placed once.
#[test]
fn pause_and_resume_toggled_under_a_busy_worker() {
    let env = Env::new();
    let all = make_ids("T", 400);
    enqueue(&env, "in.jsonl", &all, PAST);
    let worker = Background::spawn(
        &env,
        "worker",
        &[
            "worker",
            "--worker=w1",
            "--processor=simulate",
            "--transient-rate=0.2",
            "--base-backoff=20ms",
            "--max-backoff=100ms",
            "--limit=5",
            "--poll=100ms",
        ],
        &[],
    );
    wait_until("the worker's first round", WAIT, || {
        !env.rows::<AttemptRow>().is_empty()
    });
    // Enqueues go on meanwhile, in another thread: their commits meet the pauses' too.
    let more: Vec<Vec<String>> = (0..8).map(|i| make_ids(&format!("E{i}"), 20)).collect();
    let inputs: Vec<PathBuf> = more
        .iter()
        .enumerate()
        .map(|(i, ids)| write_records(&env, &format!("more{i}.jsonl"), ids))
        .collect();
    std::thread::scope(|scope| {
        let enqueues = scope.spawn(|| {
            for input in &inputs {
                let out = env
                    .cmd()
                    .args(["enqueue", input.to_str().unwrap(), "--now", PAST])
                    .output()
                    .unwrap();
                assert_output_ok("enqueue", &out);
                sleep(0.15);
            }
        });
        for i in 0..8 {
            let out = env
                .cmd()
                .args(["pause", "--reason", &format!("toggle {i}")])
                .output()
                .unwrap();
            assert_output_ok(&format!("pause {i}"), &out);
            sleep(0.2);
            let out = env.cmd().arg("resume").output().unwrap();
            assert_output_ok(&format!("resume {i}"), &out);
            sleep(0.2);
        }
        enqueues.join().expect("the enqueues");
    });
    let all: Vec<String> = [vec![all], more].concat().concat();
    wait_until("the drain", WAIT, || env.rows::<QueueRow>().is_empty());
    let finished = worker.stop(WAIT);
    assert_clean_exit("worker", &finished);
    let history = env.ok(&["history", "retry_queue"]);
    let count = |what: &str| history.lines().filter(|l| l.contains(what)).count();
    assert_eq!(count(" pause "), 8, "{history}");
    assert_eq!(count(" resume "), 8, "{history}");
    let status = env.json(&["status"]);
    assert!(status["paused"].is_null(), "{status}");
    assert_each_once(&env.data(), &all);
    assert_each_attempt_once(&env);
}

// 5. A cancel killed mid-way.

#[test]
fn a_cancel_killed_after_its_journal_is_completed_by_the_next_cancel() {
    cancel_killed(Env::new(), "after-journal", Completion::Cancel);
}

#[test]
fn a_cancel_killed_after_its_journal_is_completed_by_the_next_run() {
    cancel_killed(Env::new(), "after-journal", Completion::Run);
}

#[test]
fn a_cancel_killed_after_final_is_completed() {
    cancel_killed(Env::new(), "after-final", Completion::Cancel);
    cancel_killed(Env::new(), "after-final", Completion::Run);
}

#[test]
fn a_cancel_killed_after_dead_letter_is_completed() {
    cancel_killed(Env::new(), "after-dead-letter", Completion::Cancel);
    cancel_killed(Env::new(), "after-dead-letter", Completion::Run);
}

#[test]
fn a_cancel_killed_after_merge_is_whole() {
    cancel_killed(Env::new(), "after-merge", Completion::Cancel);
}

#[test]
fn a_cancel_killed_after_its_journal_is_completed_on_s3() {
    cancel_killed(Env::s3(), "after-journal", Completion::Cancel);
}

#[test]
fn a_cancel_killed_after_dead_letter_is_completed_on_s3() {
    cancel_killed(Env::s3(), "after-dead-letter", Completion::Run);
}

/// What completes a cancel a crash left half-applied.
#[derive(Debug, Clone, Copy)]
enum Completion {
    /// The same cancel again: it must cancel nothing twice.
    Cancel,
    /// A run of a worker (nothing due on its clock).
    Run,
}

/// Records are enqueued at 14:00 and one round runs (some retried to 14:02, some final,
/// every 9th dead for its empty payload). At 14:01 `cancel --all` (the retried records,
/// not due yet) dies at `failpoint`, after its journal. The next cancel or run completes
/// it: each cancelled record is a dead letter once, with its retry count, and the journal
/// holds one cancel per record.
fn cancel_killed(env: Env, failpoint: &str, completion: Completion) {
    let (input, all) = write_samples(&env, "F", 45);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", T0]);
    env.ok(&[
        "run",
        "--processor=simulate",
        "--transient-rate=0.5",
        "--now",
        T0,
    ]);
    let queued: Vec<String> = env
        .rows::<QueueRow>()
        .into_iter()
        .map(|q| q.sample_id)
        .collect();
    assert!(queued.len() >= 5, "too few retried: {}", queued.len());
    let dead_before = env.rows::<DeadRow>().len();

    let out = env
        .process()
        .env("RETRYLAKE_FAILPOINT", failpoint)
        .args([
            "cancel",
            "--all",
            "--reason",
            "crash test",
            "--now",
            "2025-11-24T14:01:00Z",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(&format!("failpoint {failpoint}: aborting")),
        "{failpoint}: the failpoint did not fire: {stderr}"
    );
    // The journal decided the cancel.
    assert_eq!(cancel_attempts(&env).len(), queued.len(), "{failpoint}");

    match completion {
        Completion::Cancel => {
            let out = env.json(&[
                "cancel",
                "--all",
                "--reason",
                "again",
                "--now",
                "2025-11-24T14:01:30Z",
            ]);
            assert_eq!(out["cancelled"], 0, "{failpoint}: cancelled twice: {out}");
            assert_eq!(out["held"], 0, "{failpoint}: {out}");
        }
        Completion::Run => {
            let out = env.json(&[
                "run",
                "--processor=simulate",
                "--now",
                "2025-11-24T14:01:30Z",
            ]);
            assert_eq!(out["processed"], 0, "{failpoint}: {out}");
        }
    }
    assert!(env.rows::<QueueRow>().is_empty(), "{failpoint}");
    assert_eq!(env.rows::<DeadRow>().len(), dead_before + queued.len());
    assert_cancelled(&env, &queued);
    for (id, d) in dead_by_id(&env) {
        if queued.contains(&id) {
            assert_eq!(d.error_msg.as_deref(), Some("crash test"), "{d:?}");
            assert_eq!(d.retry_count, 1, "{d:?}");
        }
    }
    assert_each_once(&env.data(), &all);
    assert_each_attempt_once(&env);
    // A drain far later finds nothing left to do.
    let out = env.ok(&[
        "run",
        "--processor=simulate",
        "--drain",
        "--now",
        "2030-01-01T00:00:00Z",
    ]);
    assert!(out.contains("queue empty"), "{out}");
    assert_each_once(&env.data(), &all);
}

#[test]
fn a_cancel_frozen_after_its_journal_wakes_to_find_it_completed() {
    cancel_frozen(Env::new(), "after-journal");
}

#[test]
fn a_cancel_frozen_after_dead_letter_wakes_to_find_it_completed() {
    cancel_frozen(Env::new(), "after-dead-letter");
}

/// Cancel A of 20 ids freezes (`<failpoint>:stop`) after its journal. Meanwhile more
/// records are enqueued, cancel B of every record runs (completing A's cancel first) and
/// a worker drains what B left. Woken, A finishes on tables that moved on: nothing doubled
/// or lost, A's records cancelled once, by A.
fn cancel_frozen(env: Env, failpoint: &str) {
    let first = make_ids("A", 40);
    enqueue(&env, "first.jsonl", &first, PAST);
    let a_ids = first[..20].to_vec();
    let mut a_args: Vec<String> = cancel_ids(&a_ids, "frozen A");
    a_args.retain(|a| a != "--json");
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let stop = format!("{failpoint}:stop");
    let a = Background::spawn(&env, "cancel-a", &a_args, &[("RETRYLAKE_FAILPOINT", &stop)]);
    let stopping = format!("failpoint {failpoint}: stopping");
    wait_until("cancel A to freeze", WAIT, || {
        a.stderr().contains(&stopping)
    });

    let second = make_ids("B", 10);
    enqueue(&env, "second.jsonl", &second, PAST);
    let out = env.json(&[
        "cancel", "--id", "A-0030", "--id", "B-0003", "--reason", "B",
    ]);
    assert_eq!(out["cancelled"], 2, "{out}");
    assert_eq!(out["held"], 0, "{out}");
    env.ok(&[
        "run",
        "--processor=simulate",
        "--transient-rate=0",
        "--drain",
    ]);
    assert!(env.rows::<QueueRow>().is_empty());

    a.signal(Signal::SIGCONT);
    let finished = a.wait(WAIT);
    assert_clean_exit("cancel A", &finished);
    assert!(
        finished.stdout.contains("cancelled 20 records"),
        "{}",
        finished.stdout
    );
    assert_cancelled(&env, &a_ids);
    let dead = dead_by_id(&env);
    for id in &a_ids {
        assert_eq!(dead[id].error_msg.as_deref(), Some("frozen A"));
    }
    assert_eq!(dead.len(), 22, "A's 20 and B's 2");
    let mut all = first.clone();
    all.extend(second.iter().cloned());
    assert_each_once(&env.data(), &all);
    assert_each_attempt_once(&env);
}

/// Cancels killed (SIGKILL) at random moments: before their claim, between their claim
/// and their journal, between any two of their commits. Each is followed by the same
/// cancel on a clock past the killed one's lease, which completes, fences or redoes it:
/// every record of the batch is cancelled once, the others are untouched.
#[test]
fn cancels_killed_at_random_moments_lose_and_double_nothing() {
    use rand::{Rng, SeedableRng};
    let env = Env::new();
    let all = make_ids("J", 300);
    for (i, chunk) in all.chunks(100).enumerate() {
        enqueue(&env, &format!("in{i}.jsonl"), chunk, T0);
    }
    let t0: chrono::DateTime<chrono::Utc> = T0.parse().unwrap();
    let at = |minutes: i64| (t0 + chrono::Duration::minutes(minutes)).to_rfc3339();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut cancelled = Vec::new();
    let mut seen = BTreeMap::<&str, usize>::new();
    let started = Instant::now();
    env.ok(&["cancel", "--id", "none such", "--now", T0]);
    let mut took = started.elapsed();
    for (k, batch) in all.chunks(15).enumerate() {
        let k = k as i64;
        let mut args = cancel_ids(batch, &format!("batch {k}"));
        args.extend(["--now".to_owned(), at(10 * k)]);
        let before = versions(&env.data());
        let mut child = env
            .process()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Its claim and commits are the last part of its run: kills sweep the second half
        // of the time the last whole cancel took, a little at random.
        let share = 0.5 + 0.6 * (k as f64 / 20.0) + rng.random_range(0.0..0.05);
        std::thread::sleep(took.mul_f64(share));
        let _ = child.kill();
        child.wait().unwrap();
        *seen.entry(killed_at(&env, &before, batch)).or_default() += 1;
        // Past the killed cancel's lease (2 minutes).
        let mut args = cancel_ids(batch, &format!("batch {k} again"));
        args.extend(["--now".to_owned(), at(10 * k + 3)]);
        let started = Instant::now();
        let out = env.cmd().args(&args).output().unwrap();
        took = started.elapsed();
        assert_output_ok(&format!("cancel {k} again"), &out);
        let (_, _, held) = cancel_report(&out.stdout);
        assert_eq!(held, 0, "batch {k}");
        cancelled.extend(batch.iter().cloned());
        assert_cancelled(&env, &cancelled);
        assert_eq!(dead_by_id(&env).len(), cancelled.len(), "batch {k}");
        assert_each_once(&env.data(), &all);
    }
    eprintln!("where the cancels were killed: {seen:?}");
    env.ok(&["run", "--processor=simulate", "--drain", "--now", &at(200)]);
    assert!(env.rows::<QueueRow>().is_empty());
    assert_eq!(env.rows::<FinalRow>().len() + cancelled.len(), all.len());
    assert_each_once(&env.data(), &all);
    assert_each_attempt_once(&env);
}

/// Where a cancel of `batch` was killed, from the tables (`before`: their versions at its
/// start).
fn killed_at(env: &Env, before: &[String], batch: &[String]) -> &'static str {
    let after = versions(&env.data());
    let moved = |t: Table| {
        let i = Table::ALL.iter().position(|x| *x == t).unwrap();
        before[i] != after[i]
    };
    let ids: BTreeSet<&String> = batch.iter().collect();
    let journaled = cancel_attempts(env)
        .keys()
        .filter(|id| ids.contains(id))
        .count();
    let dead = dead_by_id(env).keys().filter(|id| ids.contains(id)).count();
    let queued = env
        .rows::<QueueRow>()
        .iter()
        .filter(|q| ids.contains(&q.sample_id))
        .count();
    match (moved(Table::RetryQueue), journaled, dead, queued) {
        (false, 0, _, _) => "before its claim",
        (true, 0, _, _) => "between its claim and its journal",
        (_, _, 0, _) => "after its journal",
        (_, _, _, 0) => "after it was done",
        _ => "between its dead letters and its queue commit",
    }
}

/// The filters select what they say: `--error-msg` the exact last error, `--older-than`
/// the age from `enqueued_at` on the cancel's clock, `--id` the ids given; given
/// together, all must hold. Records neither queued nor matching are untouched.
#[test]
fn cancel_filters_select_exactly_what_they_say() {
    let env = Env::new();
    let old = make_ids("OLD", 10);
    let new = make_ids("NEW", 10);
    enqueue(&env, "old.jsonl", &old, "2025-11-24T12:00:00Z");
    enqueue(&env, "new.jsonl", &new, "2025-11-24T13:45:00Z");
    // Odd ids fail with "busy", even ones succeed.
    let command = "case \"$RETRYLAKE_SAMPLE_ID\" in *[13579]) echo busy >&2; exit 75;; esac; cat";
    env.ok(&[
        "run",
        "--processor=command",
        "--command",
        command,
        "--now",
        T0,
    ]);
    let queued: Vec<QueueRow> = env.rows::<QueueRow>();
    assert_eq!(queued.len(), 10, "the odd ids wait for a retry");
    let busy = queued[0].error_msg.clone().expect("an error");
    assert!(busy.contains("busy"), "{busy}");

    // Older than 1 h at 14:00 and failed with that error: the odd OLD ids.
    let out = env.json(&[
        "cancel",
        "--error-msg",
        &busy,
        "--older-than",
        "1h",
        "--now",
        "2025-11-24T14:00:30Z",
    ]);
    assert_eq!(out["cancelled"], 5, "{out}");
    let dead = dead_by_id(&env);
    for id in old
        .iter()
        .filter(|id| id.ends_with(['1', '3', '5', '7', '9']))
    {
        assert_eq!(dead[id].reason, DeadReason::Cancelled, "{id}");
        assert_eq!(dead[id].retry_count, 1, "{id}");
    }
    // An error that differs by a byte matches nothing.
    let out = env.json(&["cancel", "--error-msg", &format!("{busy} "), "--now", T0]);
    assert_eq!(out["cancelled"], 0, "{out}");
    // Ids given, and a final one among them: only the queued one.
    let out = env.json(&[
        "cancel", "--id", "NEW-0001", "--id", "NEW-0002", "--id", "OLD-0001", "--now", T0,
    ]);
    assert_eq!(out["cancelled"], 1, "{out}");
    assert_eq!(dead_by_id(&env)["NEW-0001"].reason, DeadReason::Cancelled);
    // Older than 2 h at 14:00: nothing left that old.
    let out = env.json(&["cancel", "--older-than", "2h1s", "--now", T0]);
    assert_eq!(out["cancelled"], 0, "{out}");
    let finals = env.rows::<FinalRow>().len();
    assert_eq!(finals, 10, "the even ids are final, untouched");
    assert_eq!(env.rows::<QueueRow>().len(), 4);
    let all: Vec<String> = [old, new].concat();
    assert_each_once(&env.data(), &all);
    assert_each_attempt_once(&env);

    // A cancel is undone by a redrive of reason cancelled: the record is queued again,
    // its count restarted, and a drain delivers it.
    let out = env.json(&[
        "redrive",
        "--reason",
        "cancelled",
        "--id",
        "NEW-0001",
        "--now",
        T0,
    ]);
    assert_eq!(out["redriven"], 1, "{out}");
    assert!(!dead_by_id(&env).contains_key("NEW-0001"));
    assert_each_once(&env.data(), &all);
    env.ok(&[
        "run",
        "--processor=command",
        "--command",
        "cat",
        "--now",
        "2025-11-24T14:05:00Z",
        "--drain",
    ]);
    assert!(
        env.rows::<FinalRow>()
            .iter()
            .any(|f| f.sample_id == "NEW-0001")
    );
    assert!(env.rows::<QueueRow>().is_empty());
    assert_each_once(&env.data(), &all);
}

// 6. Deadlines.

/// Records of mixed ages meet `run --max-age 1h` at 14:00 (a virtual clock, drained):
/// enqueued at 12:00 they are expired uncalled (the command never sees them); at 13:01
/// the first transient failure's retry (14:02) would fall after the deadline (14:01), so
/// they are dead at once as expired; at 13:29 they are retried four times, until the next
/// retry (14:30) would be late; at 13:50 they are called and final.
#[test]
fn max_age_expires_old_records_uncalled_and_late_retries_at_once() {
    let env = Env::new();
    let old = make_ids("OLD", 5);
    let mid = make_ids("MID", 5);
    let slow = make_ids("SLOW", 5);
    let young = make_ids("YOUNG", 5);
    enqueue(&env, "old.jsonl", &old, "2025-11-24T12:00:00Z");
    enqueue(&env, "mid.jsonl", &mid, "2025-11-24T13:01:00Z");
    enqueue(&env, "slow.jsonl", &slow, "2025-11-24T13:29:00Z");
    enqueue(&env, "young.jsonl", &young, "2025-11-24T13:50:00Z");
    let log = env.path("calls");
    let command = logging_command(
        &log,
        "case \"$RETRYLAKE_SAMPLE_ID\" in MID*|SLOW*) echo 'busy' >&2; exit 75;; esac; cat",
    );
    env.ok(&[
        "run",
        "--processor=command",
        "--command",
        &command,
        "--max-age=1h",
        "--now",
        T0,
        "--drain",
    ]);
    assert!(env.rows::<QueueRow>().is_empty(), "drained");
    let called = calls(&log);
    let count = |id: &str| called.iter().filter(|c| *c == id).count();
    let dead = dead_by_id(&env);
    let attempts = env.rows::<AttemptRow>();
    let journal = |id: &str| -> Vec<&AttemptRow> {
        let mut rows: Vec<&AttemptRow> = attempts.iter().filter(|a| a.sample_id == id).collect();
        rows.sort_by_key(|a| a.started_at);
        rows
    };
    for id in &old {
        assert_eq!(count(id), 0, "{id} was called past its deadline");
        let d = &dead[id];
        assert_eq!(
            (d.reason.clone(), d.retry_count),
            (DeadReason::Expired, 0),
            "{d:?}"
        );
        let j = journal(id);
        assert_eq!(j.len(), 1, "{j:?}");
        assert_eq!(j[0].outcome, AttemptKind::Permanent, "{:?}", j[0]);
        assert_eq!(j[0].reason, Some(DeadReason::Expired), "{:?}", j[0]);
        assert_eq!(j[0].duration_ms, 0);
    }
    for id in &mid {
        assert_eq!(count(id), 1, "{id}");
        let d = &dead[id];
        assert_eq!(
            (d.reason.clone(), d.retry_count),
            (DeadReason::Expired, 0),
            "{d:?}"
        );
        let msg = d.error_msg.as_deref().unwrap_or_default();
        assert!(msg.contains("busy") && msg.contains("expired"), "{msg}");
        let j = journal(id);
        assert_eq!(j.len(), 1, "{j:?}");
        assert_eq!(j[0].outcome, AttemptKind::Transient, "{:?}", j[0]);
    }
    for id in &slow {
        assert_eq!(count(id), 4, "{id}: calls at 14:00, 14:02, 14:06, 14:14");
        let d = &dead[id];
        assert_eq!(
            (d.reason.clone(), d.retry_count),
            (DeadReason::Expired, 3),
            "{d:?}"
        );
        let j = journal(id);
        assert_eq!(j.len(), 4, "{j:?}");
        assert!(
            j[..3].iter().all(|a| a.disposition == Disposition::Retry),
            "{j:?}"
        );
        assert_eq!(j[3].reason, Some(DeadReason::Expired), "{:?}", j[3]);
        let deadline: chrono::DateTime<chrono::Utc> = "2025-11-24T14:29:00Z".parse().unwrap();
        assert!(
            j.iter().all(|a| a.finished_at <= deadline),
            "called after its deadline: {j:?}"
        );
    }
    for id in &young {
        assert_eq!(count(id), 1, "{id}");
        assert!(!dead.contains_key(id), "{id} dead: {:?}", dead[id]);
    }
    assert_eq!(env.rows::<FinalRow>().len(), young.len());
    let all: Vec<String> = [old, mid, slow, young].concat();
    assert_each_once(&env.data(), &all);
    assert_each_attempt_once(&env);
}

/// A record enqueued at 13:30 under `--max-age 1h` fails transiently at 14:14 (its fourth
/// failure): the next retry would be at 14:30, exactly its deadline. The failure is
/// retried, as the retry is not *after* the deadline; but at 14:30 the round finds the
/// record at its deadline and expires it without a call. The retry was promised and
/// never made: either it is called at 14:30, or the failure at 14:14 is dead at once.
#[test]
fn a_retry_due_exactly_at_the_deadline_is_called_or_dead_at_once() {
    let env = Env::new();
    let ids = make_ids("EDGE", 3);
    enqueue(&env, "edge.jsonl", &ids, "2025-11-24T13:30:00Z");
    let log = env.path("calls");
    let command = logging_command(&log, "exit 75");
    env.ok(&[
        "run",
        "--processor=command",
        "--command",
        &command,
        "--max-age=1h",
        "--now",
        T0,
        "--drain",
    ]);
    let dead = dead_by_id(&env);
    let called = calls(&log);
    for id in &ids {
        let d = &dead[id];
        assert_eq!(d.reason, DeadReason::Expired, "{d:?}");
        let calls = called.iter().filter(|c| *c == id).count();
        let last: Vec<AttemptRow> = env
            .rows::<AttemptRow>()
            .into_iter()
            .filter(|a| a.sample_id == *id && a.disposition == Disposition::Dead)
            .collect();
        let uncalled = last[0].outcome == AttemptKind::Permanent && calls == 4;
        assert!(
            !uncalled,
            "{id}: retried to its deadline at 14:14, then expired there without a call: {:?}",
            last[0]
        );
    }
    assert_each_once(&env.data(), &ids);
}

/// A transient rule carries its own `max_age` (6 h) beside `--max-age` (1 h). A record
/// enqueued at 13:30 fails at 14:00 under the rule, whose backoff puts the next try at
/// 14:40, past the 1 h deadline (14:30) and within the rule's (19:30). Whichever deadline
/// decides, the record must not be retried to 14:40 and then expired there uncalled: the
/// retry is made (the rule's deadline decides) or the failure is dead at once (the
/// earlier one does).
#[test]
fn a_retry_under_a_rules_longer_max_age_is_made_or_dead_at_once() {
    let env = Env::new();
    let ids = make_ids("RULE", 3);
    enqueue(&env, "in.jsonl", &ids, "2025-11-24T13:30:00Z");
    let rules = env.write(
        "rules.toml",
        "[[rule]]\nname = \"slow\"\nexit_code = 75\naction = \"transient\"\n\
         base_backoff = \"20m\"\nmax_age = \"6h\"\n",
    );
    let log = env.path("calls");
    // The first try fails (exit 75), a retry succeeds.
    let command = logging_command(
        &log,
        "if [ \"$RETRYLAKE_ATTEMPT\" = 0 ]; then exit 75; fi; cat",
    );
    env.ok(&[
        "run",
        "--processor=command",
        "--command",
        &command,
        "--rules",
        rules.to_str().unwrap(),
        "--max-age=1h",
        "--now",
        T0,
        "--drain",
    ]);
    let attempts = env.rows::<AttemptRow>();
    for id in &ids {
        let mut journal: Vec<&AttemptRow> =
            attempts.iter().filter(|a| a.sample_id == *id).collect();
        journal.sort_by_key(|a| a.started_at);
        let retried_then_expired_uncalled = journal.windows(2).any(|w| {
            w[0].disposition == Disposition::Retry
                && w[1].reason == Some(DeadReason::Expired)
                && w[1].outcome == AttemptKind::Permanent
        });
        assert!(
            !retried_then_expired_uncalled,
            "{id}: retried to 14:40 under the rule, then expired there without a call: {journal:?}"
        );
    }
    assert_each_once(&env.data(), &ids);
    assert_each_attempt_once(&env);
}

// 7. The strangest inputs.

/// Hostile arguments are refused with exit 2 and one line, before anything is written;
/// the extremes that are allowed work and panic nowhere.
#[test]
fn strange_control_inputs_are_refused_or_handled() {
    let env = Env::new();
    let all = make_ids("S", 10);
    enqueue(&env, "in.jsonl", &all, T0);

    let long = "x".repeat(5000);
    let err = refused(&env, &["cancel", "--all", "--reason", &long]);
    assert!(err.contains("4096"), "{err}");
    let err = refused(&env, &["cancel", "--all", "--reason", &"é".repeat(2049)]);
    assert!(err.contains("4096"), "{err}");
    for reason in ["line one\nline two", "tab\there", "nul\u{7f}", "cr\r"] {
        let err = refused(&env, &["cancel", "--all", "--reason", reason]);
        assert!(err.contains("control character"), "{reason:?}: {err}");
        refused(&env, &["pause", "--reason", reason]);
    }
    refused(&env, &["pause", "--reason", &long]);
    let err = refused(&env, &["cancel"]);
    assert!(err.contains("--all"), "{err}");
    refused(&env, &["cancel", "--reason", "no filter"]);
    refused(&env, &["cancel", "--json"]);
    // A pause that has already ended, or ends now (the same instant in another zone).
    let err = refused(&env, &["pause", "--until", "2020-01-01T00:00:00Z"]);
    assert!(err.contains("not in the future"), "{err}");
    refused(
        &env,
        &["pause", "--until", "2025-11-24T16:00:00+02:00", "--now", T0],
    );
    refused(&env, &["pause", "--until", "not a time"]);
    refused(&env, &["pause", "--until", "+275760-09-13T00:00:00Z"]);
    for args in [
        vec!["run", "--processor=simulate", "--max-age", "0"],
        vec!["run", "--processor=simulate", "--max-age=0s", "--drain"],
        vec!["worker", "--processor=simulate", "--max-age=0ms"],
        vec!["run", "--processor=simulate", "--max-age=-1h"],
        vec!["run", "--processor=simulate", "--max-age=forever"],
    ] {
        let err = refused(&env, &args);
        assert!(err.contains("max-age"), "{args:?}: {err}");
    }
    refused(&env, &["cancel", "--older-than", "soon", "--all"]);
    assert!(env.rows::<AttemptRow>().is_empty());
    assert_eq!(env.rows::<QueueRow>().len(), all.len());

    // The extremes that are allowed.
    let out = env.json(&["cancel", "--older-than", "500000000years"]);
    assert_eq!(out["cancelled"], 0, "{out}");
    let out = env.json(&[
        "cancel",
        "--id",
        "",
        "--id",
        "no such id",
        "--error-msg",
        "",
    ]);
    assert_eq!(out["cancelled"], 0, "{out}");
    let out = env.ok(&[
        "run",
        "--processor=simulate",
        "--transient-rate=1",
        "--max-age=500000000years",
        "--now",
        T0,
        "--json",
    ]);
    assert_eq!(json_lines(&out)[0]["processed"], 10, "{out}");
    assert!(
        env.rows::<DeadRow>()
            .iter()
            .all(|d| d.reason != DeadReason::Expired)
    );
    env.ok(&["resume"]);
    env.ok(&[
        "pause",
        "--until",
        "9999-12-31T23:59:59Z",
        "--reason",
        &"é".repeat(2048),
    ]);
    let out = env.ok(&[
        "run",
        "--processor=simulate",
        "--now",
        "2030-01-01T00:00:00Z",
        "--json",
    ]);
    assert!(!json_lines(&out)[0]["queue_paused"].is_null(), "{out}");
    env.ok(&["resume"]);
    env.ok(&["resume"]);

    // A reason of exactly 4096 bytes, with characters from far planes, is kept as given.
    let reason = format!("🛑 stop {}", "ü".repeat(2043));
    assert_eq!(reason.len(), 4096);
    let out = env.json(&["cancel", "--id", "S-0001", "--reason", &reason]);
    assert_eq!(out["cancelled"], 1, "{out}");
    let dead = dead_by_id(&env);
    assert_eq!(dead["S-0001"].error_msg.as_deref(), Some(reason.as_str()));
    // Without --reason: "cancelled by user@host".
    let out = env.json(&["cancel", "--id", "S-0002"]);
    assert_eq!(out["cancelled"], 1, "{out}");
    let msg = dead_by_id(&env)["S-0002"]
        .error_msg
        .clone()
        .unwrap_or_default();
    assert!(
        msg.starts_with("cancelled by ") && msg.contains('@'),
        "{msg}"
    );
    // A record no longer queued is not cancelled: final and dead records stay as they are.
    let finals = env.rows::<FinalRow>();
    let placed: Vec<String> = env
        .rows::<DeadRow>()
        .iter()
        .map(|d| d.sample_id.clone())
        .chain(finals.iter().map(|f| f.sample_id.clone()))
        .collect();
    let mut args: Vec<&str> = vec!["cancel", "--json"];
    for id in &placed {
        args.extend(["--id", id.as_str()]);
    }
    let before = (env.rows::<FinalRow>().len(), env.rows::<DeadRow>().len());
    let out = env.ok(&args);
    assert_eq!(cancel_report(out.as_bytes()).1, 0, "{out}");
    assert_eq!(
        before,
        (env.rows::<FinalRow>().len(), env.rows::<DeadRow>().len())
    );
    assert_each_once(&env.data(), &all);
    assert_each_attempt_once(&env);
}

/// `cancel` journals under the worker name `cancel`. A worker may not take that name, as
/// it may not take `redrive`: sharing it, a worker's rounds and the cancels would number
/// their rounds in one sequence and lose rounds to each other.
#[test]
fn a_worker_may_not_take_the_name_cancels_are_journaled_under() {
    let env = Env::new();
    enqueue(&env, "in.jsonl", &make_ids("N", 3), T0);
    refused(
        &env,
        &[
            "run",
            "--processor=simulate",
            "--worker=cancel",
            "--now",
            T0,
        ],
    );
}
