//! Rounds through the binary: the simulate and command processors, timeouts, limits, and
//! the tables as any Delta reader sees them.

use std::collections::HashMap;

use retrylake::store::{AttemptRow, DeadRow, FinalRow, QueueRow};

use retrylake::store::Table;

use super::util::{Env, data_files, ids, write_samples};

fn samples(env: &Env, n: usize) -> String {
    let mut lines = String::new();
    for i in 0..n {
        let payload = if i % 10 == 0 {
            String::new()
        } else {
            format!("data {i}")
        };
        lines.push_str(&format!(
            "{{\"sample_id\":\"S-{i:04}\",\"payload\":\"{payload}\"}}\n"
        ));
    }
    env.write("samples.jsonl", lines)
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn simulate_drains_every_record_to_exactly_one_table() {
    let env = Env::new();
    let input = samples(&env, 200);
    let out = env.ok(&[
        "run",
        "--input",
        &input,
        "--now",
        "2025-11-24T14:00:00Z",
        "--drain",
        "--transient-rate",
        "0.5",
        "--seed",
        "7",
        "--json",
    ]);
    let rounds: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rounds.len() >= 6, "{out}");
    assert_eq!(rounds.last().unwrap()["next_due"], serde_json::Value::Null);

    let finals = env.rows::<FinalRow>();
    let dead = env.rows::<DeadRow>();
    assert!(env.rows::<QueueRow>().is_empty());
    let mut all = ids(&finals, |r| &r.sample_id);
    all.extend(ids(&dead, |r| &r.sample_id));
    all.sort();
    let expected: Vec<String> = (0..200).map(|i| format!("S-{i:04}")).collect();
    assert_eq!(all, expected, "every record in exactly one table");
    assert_eq!(
        dead.iter()
            .filter(|d| d.reason.as_str() == "permanent")
            .count(),
        20
    );
    assert!(
        dead.iter()
            .any(|d| d.reason.as_str() == "retries_exhausted"),
        "at 50% some run out"
    );

    // Each final record's attempt count agrees with the journal.
    let attempts = env.rows::<AttemptRow>();
    let mut per_id: HashMap<&str, i32> = HashMap::new();
    for a in &attempts {
        *per_id.entry(&a.sample_id).or_default() += 1;
    }
    for f in &finals {
        assert_eq!(per_id[f.sample_id.as_str()], f.attempts, "{}", f.sample_id);
    }

    // The same seed gives the same outcome.
    let again = Env::new();
    let input = samples(&again, 200);
    again.ok(&[
        "run",
        "--input",
        &input,
        "--now",
        "2025-11-24T14:00:00Z",
        "--drain",
        "--transient-rate",
        "0.5",
        "--seed",
        "7",
        "--concurrency",
        "3",
    ]);
    assert_eq!(
        ids(&again.rows::<FinalRow>(), |r| &r.sample_id),
        ids(&finals, |r| &r.sample_id)
    );
}

#[test]
fn command_contract_environment_exit_codes_and_stderr() {
    let env = Env::new();
    let input = env.write(
        "in.jsonl",
        "{\"sample_id\":\"ok\",\"payload\":\"p1\"}\n{\"sample_id\":\"bad\",\"payload\":\"p2\"}\n{\"sample_id\":\"later\",\"payload\":\"p3\"}\n",
    );
    let command = r#"case "$RETRYLAKE_SAMPLE_ID" in
  ok) printf '%s|%s|%s|' "$RETRYLAKE_SAMPLE_ID" "$RETRYLAKE_ATTEMPT" "$RETRYLAKE_IDEMPOTENCY_KEY"; cat;;
  bad) echo "noise" >&2; echo "invalid record" >&2; exit 3;;
  later) exit 75;;
esac"#;
    env.ok(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--processor",
        "command",
        "--command",
        command,
    ]);
    let finals = env.rows::<FinalRow>();
    assert_eq!(finals.len(), 1);
    assert_eq!(finals[0].response.as_deref(), Some("ok|0|ok:0|p1"));
    let dead = env.rows::<DeadRow>();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_msg.as_deref(), Some("invalid record"));
    assert_eq!(dead[0].reason.as_str(), "permanent");
    let queue = env.rows::<QueueRow>();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].error_msg.as_deref(), Some("exit status 75"));
}

#[test]
fn a_command_that_outlives_the_timeout_is_killed_with_its_children() {
    let env = Env::new();
    let input = env.write("in.jsonl", "{\"sample_id\":\"slow\",\"payload\":\"p\"}\n");
    let pid_file = env.path("child.pid");
    let command = format!("sleep 30 & echo $! > '{}'; wait", pid_file.display());
    let start = std::time::Instant::now();
    env.ok(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--processor",
        "command",
        "--command",
        &command,
        "--timeout",
        "300ms",
    ]);
    assert!(
        start.elapsed().as_secs() < 20,
        "the run waited for the child"
    );
    let queue = env.rows::<QueueRow>();
    assert_eq!(queue[0].retry_count, 1);
    assert_eq!(queue[0].error_msg.as_deref(), Some("timeout after 300ms"));
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let running = state
        .split_whitespace()
        .nth(2)
        .is_some_and(|s| s != "Z" && s != "X");
    assert!(!running, "grandchild {pid} still running: {state}");
}

#[test]
fn limit_takes_the_oldest_locks_first() {
    let env = Env::new();
    let first = env.write("a.jsonl", "{\"sample_id\":\"old\",\"payload\":\"p\"}\n");
    let second = env.write(
        "b.jsonl",
        "{\"sample_id\":\"new1\",\"payload\":\"p\"}\n{\"sample_id\":\"new2\",\"payload\":\"p\"}\n",
    );
    env.ok(&[
        "enqueue",
        first.to_str().unwrap(),
        "--now",
        "2025-01-01T00:00:00Z",
    ]);
    env.ok(&[
        "enqueue",
        second.to_str().unwrap(),
        "--now",
        "2025-01-01T00:05:00Z",
    ]);
    let r = env.json(&[
        "run",
        "--limit",
        "1",
        "--transient-rate",
        "0",
        "--now",
        "2025-01-01T00:10:00Z",
    ]);
    assert_eq!(r["processed"], 1);
    assert_eq!(ids(&env.rows::<FinalRow>(), |r| &r.sample_id), ["old"]);
}

#[test]
fn tables_are_delta_tables_with_the_designed_schema() {
    let env = Env::new();
    env.ok(&["init"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for (name, columns) in [
            ("retry_queue", "sample_id:string payload:string error_msg:string retry_count:integer process_after:timestamp enqueued_at:timestamp snoozes:integer"),
            ("final_results", "sample_id:string data:string processed_at:timestamp attempts:integer response:string"),
            ("dead_letter_queue", "sample_id:string payload:string error_msg:string retry_count:integer failed_at:timestamp reason:string"),
        ] {
            let url = deltalake::ensure_table_uri(env.data_dir().join(name).to_str().unwrap()).unwrap();
            let table = deltalake::open_table(url).await.unwrap();
            assert_eq!(table.version(), Some(0), "{name} is created empty as version 0");
            let schema = table.snapshot().unwrap().schema();
            let found: Vec<String> = schema.fields().map(|f| format!("{}:{}", f.name(), f.data_type())).collect();
            assert_eq!(found.join(" "), columns, "{name}");
        }
    });
}

#[test]
fn rows_not_due_stay_in_their_files_untouched() {
    let env = Env::new();
    let (later, later_ids) = write_samples(&env, "L", 50);
    let (now, _) = write_samples(&env, "N", 30);
    env.ok(&[
        "enqueue",
        later.to_str().unwrap(),
        "--now",
        "2025-01-02T00:00:00Z",
    ]);
    let waiting = data_files(&env.data(), Table::RetryQueue);
    assert_eq!(waiting.len(), 1);
    env.ok(&[
        "enqueue",
        now.to_str().unwrap(),
        "--now",
        "2025-01-01T00:00:00Z",
    ]);
    let r = env.json(&[
        "run",
        "--now",
        "2025-01-01T00:00:00Z",
        "--transient-rate",
        "0.5",
    ]);
    assert_eq!(r["processed"], 30);
    let files = data_files(&env.data(), Table::RetryQueue);
    assert!(
        files.contains(&waiting[0]),
        "the file of records not due is never rewritten: {files:?}"
    );
    // The retried records sit in files of their own, apart from the waiting ones.
    let queue = env.rows::<QueueRow>();
    let retried = queue.iter().filter(|q| q.retry_count == 1).count();
    assert_eq!(retried, r["retried"].as_u64().unwrap() as usize);
    assert_eq!(queue.len(), 50 + retried);
    let mut waiting_ids = ids(&queue, |q| &q.sample_id);
    waiting_ids.retain(|id| id.starts_with('L'));
    assert_eq!(waiting_ids, later_ids);
}

#[test]
fn run_goes_on_in_rounds_of_batch_size_while_records_are_due() {
    let env = Env::new();
    let (input, ids_in) = write_samples(&env, "B", 25);
    let out = env.ok(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--now",
        "2025-01-01T00:00:00Z",
        "--batch-size",
        "10",
        "--transient-rate",
        "0",
        "--json",
    ]);
    let processed: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["processed"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(processed, [10, 10, 5], "{out}");
    let mut placed = ids(&env.rows::<FinalRow>(), |r| &r.sample_id);
    placed.extend(ids(&env.rows::<DeadRow>(), |r| &r.sample_id));
    placed.sort();
    assert_eq!(placed, ids_in);
    // Oldest first across rounds: ids were enqueued together, so by id.
    let attempts = env.rows::<AttemptRow>();
    let first_round: Vec<&str> = {
        let mut v: Vec<&str> = attempts
            .iter()
            .filter(|a| a.round == 1)
            .map(|a| a.sample_id.as_str())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        first_round,
        ids_in[..10].iter().map(String::as_str).collect::<Vec<_>>()
    );
}

/// A Rust processor that panics on one record: the round goes on, that record is dead-lettered
/// with the panic named (a record that comes back after its lease would take every worker
/// down in turn), the others are placed.
#[tokio::test]
async fn a_processor_that_panics_fails_its_record_not_the_round() {
    struct PanicsOnP;
    #[async_trait::async_trait]
    impl retrylake::Processor for PanicsOnP {
        async fn process(&self, record: &retrylake::Record) -> retrylake::Outcome {
            if record.sample_id == "P" {
                panic!("cannot handle {}", record.sample_id);
            }
            retrylake::Outcome::success("ok")
        }
    }
    let env = Env::new();
    let input = env.write(
        "in.jsonl",
        "{\"sample_id\":\"A\",\"payload\":\"a\"}\n{\"sample_id\":\"P\",\"payload\":\"p\"}\n",
    );
    let mut queue = retrylake::Queue::open(&env.data().url).await.unwrap();
    queue.enqueue(&input, &Default::default()).await.unwrap();
    let report = queue
        .run_round(&PanicsOnP, &retrylake::RoundConfig::default())
        .await
        .unwrap();
    assert_eq!((report.succeeded, report.dead_lettered), (1, 1));
    let dead = queue.store().read::<DeadRow>().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].sample_id, "P");
    assert_eq!(
        dead[0].error_msg.as_deref(),
        Some("processor panicked: cannot handle P")
    );
    assert_eq!(queue.store().read::<FinalRow>().await.unwrap().len(), 1);
}

/// A round starts no call once less than its timeout plus a fifth of its lease is left: the
/// records it did not reach go back as they were, uncharged, and the next round takes them.
#[test]
fn a_round_stops_calling_before_its_lease_ends_and_gives_back_the_rest() {
    let env = Env::new();
    let (input, ids) = super::util::write_samples(&env, "L", 30);
    env.ok(&["enqueue", input.to_str().unwrap()]);
    // 2 s lease, 500 ms timeout: calls may start for 1.1 s; at 200 ms a call, one at a
    // time, that is a few of the 30.
    let out = env.ok(&[
        "run",
        "--processor",
        "command",
        "--command",
        "sleep 0.2; echo ok",
        "--concurrency",
        "1",
        "--lease",
        "2s",
        "--timeout",
        "500ms",
        "--allow-empty-payload",
        "--json",
    ]);
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let (processed, deferred) = (
        first["processed"].as_u64().unwrap(),
        first["deferred"].as_u64().unwrap(),
    );
    assert!((1..30).contains(&processed), "{first}");
    assert_eq!(processed + deferred, 30, "{first}");
    // `run` goes on while records are due: the later rounds took the rest, and the
    // records not called were not charged: one attempt each, every record final.
    let attempts = env.rows::<AttemptRow>();
    assert_eq!(attempts.len(), 30);
    assert!(
        attempts
            .iter()
            .all(|a| a.retries_before == 0 && a.outcome == retrylake::store::AttemptKind::Success)
    );
    assert_eq!(env.rows::<FinalRow>().len(), 30);
    super::util::assert_exactly_once(&env.data(), &ids);
}

/// A call longer than the lease: the round extends its lease by heartbeats while the
/// call runs, so a second worker polling meanwhile takes nothing, and the record is placed
/// once, by the round that called it.
#[test]
fn a_call_longer_than_the_lease_is_kept_by_heartbeats_and_no_other_worker_takes_it() {
    let env = Env::new();
    let (input, ids) = write_samples(&env, "L", 2);
    env.ok(&["enqueue", input.to_str().unwrap()]);
    let calls = env.path("calls.log");
    let command = format!(
        "echo \"$RETRYLAKE_SAMPLE_ID\" >> {}; sleep 5; echo done",
        calls.display()
    );
    // A 2s lease, a 30s timeout: without heartbeats the lease ends 3s into the call.
    let slow = super::util::Background::spawn(
        &env,
        "slow",
        &[
            "run",
            "--processor",
            "command",
            "--command",
            &command,
            "--lease",
            "2s",
            "--timeout",
            "30s",
            "--worker",
            "slow",
            "--json",
        ],
        &[],
    );
    let claimed = std::time::Instant::now();
    while !env.ok(&["history", "retry_queue"]).contains("claim") {
        assert!(
            claimed.elapsed() < std::time::Duration::from_secs(20),
            "no claim"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Meanwhile another worker tries, again and again, to take the records.
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(6) {
        let out = env.json(&["run", "--processor", "simulate", "--worker", "other"]);
        assert_eq!(
            out["processed"], 0,
            "the other worker took a held record: {out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let done = slow.wait(std::time::Duration::from_secs(30));
    assert!(done.status.success(), "{}", done.stderr);
    let report: serde_json::Value =
        serde_json::from_str(done.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(
        (report["processed"].as_u64(), report["lost"].as_u64()),
        (Some(2), Some(0)),
        "{report}"
    );
    // Each record called once, placed once; the heartbeats are in the history.
    let called = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(called.lines().collect::<Vec<_>>(), ["L-0001"], "{called}");
    super::util::assert_exactly_once(&env.data(), &ids);
    let history = env.ok(&["history", "retry_queue"]);
    assert!(history.contains("heartbeat"), "{history}");
}

/// A round whose heartbeat finds its lease files taken (another worker fenced it and took
/// its records while it was frozen) stops its calls and commits nothing; the records are
/// placed once, by the other worker.
#[test]
fn a_round_frozen_past_its_lease_stops_at_its_next_heartbeat_and_commits_nothing() {
    use nix::sys::signal::Signal;
    let env = Env::new();
    let (input, ids) = write_samples(&env, "F", 3);
    env.ok(&["enqueue", input.to_str().unwrap()]);
    let command = "sleep 3; echo done";
    let frozen = super::util::Background::spawn(
        &env,
        "frozen",
        &[
            "run",
            "--processor",
            "command",
            "--command",
            command,
            "--lease",
            "2s",
            "--timeout",
            "30s",
            "--worker",
            "frozen",
            "--json",
        ],
        &[],
    );
    // Let it claim, then freeze it past its lease.
    let claimed = std::time::Instant::now();
    while !env.ok(&["history", "retry_queue"]).contains("claim") {
        assert!(
            claimed.elapsed() < std::time::Duration::from_secs(20),
            "no claim"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    frozen.signal(Signal::SIGSTOP);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let other = env.json(&[
        "run",
        "--processor",
        "simulate",
        "--transient-rate",
        "0",
        "--worker",
        "other",
    ]);
    assert_eq!(other["processed"], 3, "{other}");
    frozen.signal(Signal::SIGCONT);
    let done = frozen.wait(std::time::Duration::from_secs(30));
    assert!(done.status.success(), "{}", done.stderr);
    let report: serde_json::Value =
        serde_json::from_str(done.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(report["lost"], 3, "{report}");
    super::util::assert_exactly_once(&env.data(), &ids);
    let attempts = env.rows::<AttemptRow>();
    assert!(attempts.iter().all(|a| a.worker == "other"), "{attempts:?}");
}

/// Durations at their limits are refused or saturate; none panics.
#[test]
fn huge_durations_are_refused_or_saturate_never_panic() {
    let env = Env::new();
    let (input, ids) = super::util::write_samples(&env, "H", 5);
    env.ok(&["enqueue", input.to_str().unwrap()]);
    let out = env
        .cmd()
        .args(["run", "--processor", "simulate", "--lease", "500000years"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--lease (500000years) is longer than 30days"),
        "{stderr}"
    );
    // The longest lease and backoffs far beyond any date still work.
    env.ok(&[
        "run",
        "--processor",
        "simulate",
        "--transient-rate",
        "1",
        "--lease",
        "30days",
        "--base-backoff",
        "99years",
        "--max-backoff",
        "99years",
    ]);
    super::util::assert_exactly_once(&env.data(), &ids);
}
