//! Exactly-once placement against the faults a reviewer names (issue 13): a worker that
//! keeps running while another crashes, a round that stalls past its lease and wakes up,
//! enqueues racing each other and running workers, a poison record under a half-open
//! breaker. Each test runs the binary on real tables and audits them once every process
//! has finished or been recovered: every enqueued id in exactly one of `retry_queue`,
//! `final_results` and `dead_letter_queue`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use retrylake::store::{AttemptRow, DeadRow, FinalRow, QueueRow};

use super::server::Server;
use super::util::{
    Background, Env, Finished, assert_each_once, from_now, repeated, tail, write_samples,
};

/// A short lease, so that tests can wait it out.
const LEASE: &str = "--lease=3s";
const LEASE_SECS: f64 = 3.0;
/// Calls short enough to fit in that lease.
const TIMEOUT: &str = "--timeout=1s";
/// A virtual clock past every lease and backoff of a test: a drain there takes everything.
const FAR: &str = "2100-01-01T00:00:00Z";
/// The longest any one process of these tests may take before the test fails.
const WAIT: Duration = Duration::from_secs(60);

fn sleep(secs: f64) {
    std::thread::sleep(Duration::from_secs_f64(secs));
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

/// No record was journaled twice for the same attempt: a record whose attempt a round
/// journaled is never called and journaled again by another round.
fn assert_each_attempt_journaled_once(env: &Env) {
    let attempts = env.rows::<AttemptRow>();
    let twice = repeated(
        attempts
            .iter()
            .filter(|a| a.outcome != retrylake::store::AttemptKind::Redrive)
            .map(|a| format!("{} attempt {}", a.sample_id, a.retries_before)),
    );
    assert!(
        twice.is_empty(),
        "{} attempts journaled twice (by rounds of different workers), e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
}

// 1. A surviving worker and a crashed one.

#[test]
fn a_surviving_worker_does_not_double_a_crashed_round_after_journal() {
    surviving_worker(Env::new(), "after-journal", false);
}

#[test]
fn a_surviving_worker_does_not_double_a_crashed_round_after_final() {
    surviving_worker(Env::new(), "after-final", false);
}

#[test]
fn a_surviving_worker_does_not_double_a_crashed_round_after_dead_letter() {
    surviving_worker(Env::new(), "after-dead-letter", false);
}

#[test]
fn a_surviving_worker_does_not_double_a_crashed_round_after_journal_on_s3() {
    surviving_worker(Env::s3(), "after-journal", true);
}

#[test]
fn a_surviving_worker_does_not_double_a_crashed_round_after_final_on_s3() {
    surviving_worker(Env::s3(), "after-final", true);
}

#[test]
fn a_surviving_worker_does_not_double_a_crashed_round_after_dead_letter_on_s3() {
    surviving_worker(Env::s3(), "after-dead-letter", true);
}

/// Worker w2 runs throughout. Run w1 crashes at `failpoint`, after its journal commit,
/// holding its records under a 3 s lease; w2 is still running when that lease ends; then
/// w1 comes back. Whoever places the crashed round's records, each is placed once.
fn surviving_worker(env: Env, failpoint: &str, slow_store: bool) {
    env.ok(&["init"]);
    let w2 = Background::spawn(
        &env,
        "w2",
        &[
            "worker",
            "--worker=w2",
            LEASE,
            TIMEOUT,
            "--processor=simulate",
            "--transient-rate=0.3",
            "--poll=200ms",
            "--base-backoff=200ms",
            "--max-backoff=1s",
        ],
        &[],
    );
    // w2 has started (and done whatever a worker does first) long before w1 crashes.
    sleep(if slow_store { 3.0 } else { 1.5 });
    // The records come due a moment from now, when w1 (whose clock is set there) has
    // claimed them all: w2 never sees them due before w1's lease ends.
    let ahead = if slow_store { 5.0 } else { 3.0 };
    let due = from_now(ahead);
    let enqueued = Instant::now();
    let (input, ids) = write_samples(&env, "L", 60);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", &due]);
    let w1 = env
        .process()
        .env("RETRYLAKE_FAILPOINT", failpoint)
        .args([
            "run",
            "--worker=w1",
            LEASE,
            TIMEOUT,
            "--processor=simulate",
            "--now",
            &due,
        ])
        .output()
        .unwrap();
    assert!(
        !w1.status.success(),
        "{failpoint}: the failpoint did not fire (did w1 start {ahead} s late, after w2 took \
         the records?): {}",
        String::from_utf8_lossy(&w1.stderr)
    );
    // w1's lease ends LEASE after `due`; give w2 time to act on what it finds then.
    let lease_over = Duration::from_secs_f64(ahead + LEASE_SECS + 2.5);
    std::thread::sleep(lease_over.saturating_sub(enqueued.elapsed()));
    assert!(!w2.stderr().contains("panicked"), "{}", w2.stderr());

    // w1 comes back: it recovers its round (or finds it lost) and runs on.
    env.ok(&["run", "--worker=w1", LEASE, TIMEOUT, "--processor=simulate"]);
    sleep(1.0);
    let w2 = w2.stop(WAIT);
    assert_clean_exit("worker w2", &w2);

    assert_each_once(&env.data(), &ids);
    assert_each_attempt_journaled_once(&env);
}

// 2. A round that stalls past its lease, then wakes up.

/// w1's calls hang at the server; w1 is stopped (SIGSTOP) there, past its lease. w2 takes
/// the records and places them. Then w1 wakes up: it must lose cleanly, place nothing and
/// journal nothing.
#[test]
fn a_round_that_stalls_past_its_lease_loses_cleanly() {
    let env = Env::new();
    let server = Server::start();
    let ids: Vec<String> = (0..20).map(|i| format!("held-{i:02}")).collect();
    let lines: String = ids
        .iter()
        .map(|id| format!("{{\"sample_id\":\"{id}\",\"payload\":\"p\"}}\n"))
        .collect();
    let input = env.write("held.jsonl", lines);
    env.ok(&["enqueue", input.to_str().unwrap()]);
    let url = server.url();
    let http = [
        "--processor=http",
        "--url",
        url.as_str(),
        LEASE,
        TIMEOUT,
        "--concurrency=20",
    ];

    let mut w1_args = vec!["run", "--worker=w1"];
    w1_args.extend(http);
    let w1 = Background::spawn(&env, "w1", &w1_args, &[]);
    let deadline = Instant::now() + WAIT;
    while server.held_calls() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "w1 made {} of {} calls: {}",
            server.held_calls(),
            ids.len(),
            w1.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Every call of w1's round is in flight: stop it there, until past its lease.
    w1.signal(Signal::SIGSTOP);
    server.release_held();
    sleep(LEASE_SECS + 1.0);

    let mut w2_args = vec!["run", "--worker=w2"];
    w2_args.extend(http);
    env.ok(&w2_args);
    let finals: Vec<String> = env
        .rows::<FinalRow>()
        .into_iter()
        .map(|f| f.sample_id)
        .collect();
    assert_eq!(
        finals.len(),
        ids.len(),
        "w2 took and placed w1's expired records: {finals:?}"
    );

    w1.signal(Signal::SIGCONT);
    let w1 = w1.wait(WAIT);
    assert!(
        w1.status.success() && w1.stderr.contains("lost its lease"),
        "w1 woke up past its lease: it must lose cleanly (exit 0, a warning that it \"lost its lease\"), got {}: {}",
        w1.status,
        tail(&w1.stderr)
    );
    assert!(!w1.stderr.contains("panicked"), "{}", w1.stderr);

    assert_each_once(&env.data(), &ids);
    let finals = env.rows::<FinalRow>();
    assert_eq!(finals.len(), ids.len(), "each record final exactly once");
    // Only the winner's round is in the journal: the lost round journaled nothing.
    let attempts = env.rows::<AttemptRow>();
    let by: Vec<String> = attempts
        .iter()
        .map(|a| format!("{} by {}", a.sample_id, a.worker))
        .collect();
    assert_eq!(attempts.len(), ids.len(), "one attempt per record: {by:?}");
    assert!(attempts.iter().all(|a| a.worker == "w2"), "{by:?}");
}

/// w1's clock is a minute behind: the lease it writes has ended on every other clock
/// before its calls return, and w2 takes its records while they hang at the server. Skew
/// may cost w1 its round, never a record placed twice: w1 loses cleanly, w2 places each
/// record once.
#[test]
fn a_worker_whose_clock_runs_behind_cannot_place_records_another_has_taken() {
    let env = Env::new();
    let server = Server::start();
    let ids: Vec<String> = (0..20).map(|i| format!("held-{i:02}")).collect();
    let lines: String = ids
        .iter()
        .map(|id| format!("{{\"sample_id\":\"{id}\",\"payload\":\"p\"}}\n"))
        .collect();
    let input = env.write("held.jsonl", lines);
    env.ok(&[
        "enqueue",
        input.to_str().unwrap(),
        "--now",
        &from_now(-120.0),
    ]);
    let url = server.url();
    let behind = from_now(-60.0);
    let w1 = Background::spawn(
        &env,
        "w1",
        &[
            "run",
            "--worker=w1",
            "--processor=http",
            "--url",
            &url,
            // Calls that outlast w2's whole run, even on a busy machine.
            "--lease=10s",
            "--timeout=5s",
            "--concurrency=20",
            "--now",
            &behind,
        ],
        &[],
    );
    let deadline = Instant::now() + WAIT;
    while server.held_calls() < ids.len() {
        assert!(Instant::now() < deadline, "w1: {}", w1.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    // While w1's calls hang, w2 (on the true clock) finds them under an ended lease.
    env.ok(&[
        "run",
        "--worker=w2",
        "--processor=simulate",
        "--transient-rate=0",
        LEASE,
        TIMEOUT,
    ]);
    server.release_held();
    let w1 = w1.wait(WAIT);
    assert_clean_exit("w1 (clock behind)", &w1);

    assert_each_once(&env.data(), &ids);
    let finals = env.rows::<FinalRow>();
    assert_eq!(finals.len(), ids.len(), "each record final exactly once");
    assert_each_attempt_journaled_once(&env);
    assert!(
        w1.stderr.contains("lost its lease"),
        "w2 took w1's records: w1 must say it lost its lease: {}",
        tail(&w1.stderr)
    );
}

// 3. Enqueues of one file racing each other.

/// Starts every process at once and waits for all.
fn all_at_once(env: &Env, runs: &[(&str, Vec<&str>)]) -> Vec<(String, Finished)> {
    let started: Vec<Background> = runs
        .iter()
        .map(|(name, args)| Background::spawn(env, name, args, &[]))
        .collect();
    started
        .into_iter()
        .map(|b| (b.name.clone(), b.wait(WAIT)))
        .collect()
}

/// The records an `enqueue` reports it inserted ("enqueued N of M records ...").
fn enqueued_count(stdout: &str) -> usize {
    stdout
        .split_whitespace()
        .skip_while(|w| *w != "enqueued")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no enqueue report in {stdout:?}"))
}

#[test]
fn two_enqueues_of_one_file_at_once_insert_each_record_once() {
    for attempt in 0..5 {
        let env = Env::new();
        env.ok(&["init"]);
        let (input, ids) = write_samples(&env, "E", 3000);
        let input = input.to_str().unwrap();
        let outs = all_at_once(
            &env,
            &[
                ("enqueue-a", vec!["enqueue", input]),
                ("enqueue-b", vec!["enqueue", input]),
            ],
        );
        for (name, out) in &outs {
            assert_clean_exit(&format!("attempt {attempt}: {name}"), out);
        }
        let queued = env.rows::<QueueRow>();
        let twice = repeated(queued.iter().map(|q| q.sample_id.clone()));
        assert!(
            twice.is_empty(),
            "attempt {attempt}: {} of {} records enqueued twice, e.g. {:?}",
            twice.len(),
            ids.len(),
            &twice[..twice.len().min(5)]
        );
        assert_each_once(&env.data(), &ids);
        assert_eq!(queued.len(), ids.len());
        let reported: usize = outs.iter().map(|(_, o)| enqueued_count(&o.stdout)).sum();
        assert_eq!(
            reported,
            ids.len(),
            "attempt {attempt}: the two reports together count each record once"
        );
    }
}

/// `enqueue`, `run --input` and `worker --input` of one file, all at once.
#[test]
fn enqueue_run_input_and_worker_input_of_one_file_at_once_insert_each_record_once() {
    for attempt in 0..3 {
        let env = Env::new();
        env.ok(&["init"]);
        let (input, ids) = write_samples(&env, "I", 3000);
        let input = input.to_str().unwrap();
        let worker = Background::spawn(
            &env,
            "worker",
            &[
                "worker",
                "--worker=wi",
                "--input",
                input,
                "--processor=simulate",
                "--poll=100ms",
                "--base-backoff=50ms",
                "--max-backoff=200ms",
            ],
            &[],
        );
        let outs = all_at_once(
            &env,
            &[
                ("enqueue", vec!["enqueue", input]),
                (
                    "run --input",
                    vec![
                        "run",
                        "--worker=ri",
                        "--input",
                        input,
                        "--processor=simulate",
                    ],
                ),
            ],
        );
        sleep(1.0);
        let worker = worker.stop(WAIT);
        for (name, out) in &outs {
            assert_clean_exit(&format!("attempt {attempt}: {name}"), out);
        }
        assert_clean_exit(&format!("attempt {attempt}: worker --input"), &worker);
        assert_each_once(&env.data(), &ids);
        assert_each_attempt_journaled_once(&env);
    }
}

// 4. Enqueues while workers run.

#[test]
fn enqueues_succeed_while_a_worker_runs() {
    enqueues_while_workers_run(&[None], 2000, true);
}

/// Two workers share the test machine's cores with the enqueues: smaller files, and no
/// final drain (what is still queued counts as placed), keep the test short.
#[test]
fn enqueues_succeed_while_sharded_workers_run() {
    enqueues_while_workers_run(&[Some("0/2"), Some("1/2")], 1000, false);
}

/// 20 enqueues of `records` new records each, two at a time, while workers drain the
/// queue as fast as they can: every enqueue succeeds, and every record is placed once
/// (after a final drain when `drain`).
fn enqueues_while_workers_run(shards: &[Option<&str>], records: usize, drain: bool) {
    let env = Env::new();
    env.ok(&["init"]);
    let workers: Vec<Background> = shards
        .iter()
        .enumerate()
        .map(|(i, shard)| {
            let name = format!("--worker=w{i}");
            let shard = shard.map(|s| format!("--shard={s}"));
            let mut args = vec![
                "worker",
                name.as_str(),
                "--processor=simulate",
                "--transient-rate=0.3",
                "--poll=100ms",
                "--base-backoff=50ms",
                "--max-backoff=200ms",
            ];
            args.extend(shard.as_deref());
            Background::spawn(&env, &format!("w{i}"), &args, &[])
        })
        .collect();
    sleep(0.5);

    let mut ids = Vec::new();
    let mut failed = Vec::new();
    let mut runs = 0;
    for pair in 0..10 {
        let files: Vec<String> = (0..2)
            .map(|k| {
                let (input, more) = write_samples(&env, &format!("P{pair}{k}"), records);
                ids.extend(more);
                input.to_str().unwrap().to_owned()
            })
            .collect();
        let names = [format!("enqueue-{pair}a"), format!("enqueue-{pair}b")];
        let outs = all_at_once(
            &env,
            &[
                (names[0].as_str(), vec!["enqueue", files[0].as_str()]),
                (names[1].as_str(), vec!["enqueue", files[1].as_str()]),
            ],
        );
        for ((_, out), file) in outs.iter().zip(&files) {
            runs += 1;
            if !out.status.success() {
                failed.push(format!("{file}: {} {}", out.status, out.stderr.trim()));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {runs} enqueues failed while workers ran: {}",
        failed.len(),
        failed.join("\n")
    );
    for w in workers {
        let name = w.name.clone();
        assert_clean_exit(&name, &w.stop(WAIT));
    }
    if drain {
        env.ok(&[
            "run",
            "--worker=drain",
            "--processor=simulate",
            "--drain",
            "--now",
            FAR,
        ]);
        assert!(env.rows::<QueueRow>().is_empty());
    }
    assert_each_once(&env.data(), &ids);
    assert_each_attempt_journaled_once(&env);
}

// 5. A poison record under a half-open breaker.

/// The record `internal-poison` gets a 500 (transient by default) on every call; the
/// others succeed. Its failures open the breaker, and after each cool-down the probe
/// falls on it. It must still be charged for its failures and end dead-lettered, and the
/// drain must end.
#[test]
fn a_poison_record_under_a_half_open_breaker_is_charged_and_the_drain_ends() {
    let env = Env::new();
    let server = Server::start();
    let mut ids = vec!["internal-poison".to_owned()];
    ids.extend((0..10).map(|i| format!("ok-{i:02}")));
    let lines: String = ids
        .iter()
        .map(|id| format!("{{\"sample_id\":\"{id}\",\"payload\":\"p\"}}\n"))
        .collect();
    let input = env.write("poison.jsonl", lines);
    let now = "2025-11-24T14:00:00Z";
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", now]);
    let url = server.url();
    let drain = Background::spawn(
        &env,
        "drain",
        &[
            "run",
            "--processor=http",
            "--url",
            &url,
            "--now",
            now,
            "--drain",
            "--concurrency=1",
            "--max-retries=3",
            "--breaker-window=4",
            "--breaker-min-calls=2",
            "--breaker-cool-down=10s",
        ],
        &[],
    );
    // A drain on a virtual clock takes seconds; one that probes the same record forever
    // never ends.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut drain = Some(drain);
    let finished = loop {
        let d = drain.as_mut().unwrap();
        if !d.is_running() {
            break drain.take().unwrap().wait(WAIT);
        }
        if Instant::now() > deadline {
            let d = drain.take().unwrap();
            let out = d.stdout();
            let poison_calls = server
                .seen()
                .iter()
                .filter(|s| s.id == "internal-poison")
                .count();
            let charged = env
                .rows::<QueueRow>()
                .into_iter()
                .find(|q| q.sample_id == "internal-poison")
                .map(|q| q.retry_count);
            drop(d);
            panic!(
                "the drain did not end in 60 s: the poison record was called {poison_calls} times and is still waiting with retry_count {charged:?}; last rounds: {}",
                tail(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_clean_exit("run --drain", &finished);
    let dead = env.rows::<DeadRow>();
    assert_eq!(
        dead.iter()
            .map(|d| d.sample_id.as_str())
            .collect::<Vec<_>>(),
        ["internal-poison"]
    );
    assert_eq!(
        dead[0].reason.as_str(),
        "retries_exhausted",
        "{:?}",
        dead[0]
    );
    assert_eq!(dead[0].retry_count, 3, "{:?}", dead[0]);
    let finals: HashSet<String> = env
        .rows::<FinalRow>()
        .into_iter()
        .map(|f| f.sample_id)
        .collect();
    assert_eq!(finals.len(), 10);
    assert!(env.rows::<QueueRow>().is_empty());
    assert_each_once(&env.data(), &ids);
}

// A round frozen between two of its commits, past its lease.

#[test]
fn a_round_frozen_after_its_journal_is_completed_once() {
    frozen_between_commits("after-journal");
}

#[test]
fn a_round_frozen_after_its_final_commit_is_completed_once() {
    frozen_between_commits("after-final");
}

#[test]
fn a_round_frozen_after_its_dead_letter_commit_is_completed_once() {
    frozen_between_commits("after-dead-letter");
}

/// w1 stops itself (SIGSTOP, `RETRYLAKE_FAILPOINT=<point>:stop`) between two commits of a
/// journaled round and stays frozen past its lease. w2 finds the round's lease files due,
/// sees the round journaled and completes it from the journal. Then w1 wakes up mid-round:
/// its remaining commits find the round applied and add nothing. Every record is placed
/// once, each attempt journaled once, all by w1.
fn frozen_between_commits(point: &str) {
    let env = Env::new();
    let (input, ids) = write_samples(&env, "F", 40);
    env.ok(&["enqueue", input.to_str().unwrap()]);
    let simulate = [
        "--processor=simulate",
        "--transient-rate=0.3",
        LEASE,
        TIMEOUT,
    ];
    let mut w1_args = vec!["run", "--worker=w1"];
    w1_args.extend(simulate);
    let stop = format!("{point}:stop");
    let w1 = Background::spawn(&env, "w1", &w1_args, &[("RETRYLAKE_FAILPOINT", &stop)]);
    let deadline = Instant::now() + WAIT;
    while !is_stopped(w1.pid()) {
        assert!(
            Instant::now() < deadline,
            "w1 never reached {point}: {}",
            w1.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sleep(LEASE_SECS + 1.0);

    let mut w2_args = vec!["run", "--worker=w2"];
    w2_args.extend(simulate);
    env.ok(&w2_args);
    assert_each_once(&env.data(), &ids);

    w1.signal(Signal::SIGCONT);
    let w1 = w1.wait(WAIT);
    assert_clean_exit("w1", &w1);
    assert!(!w1.stderr.contains("lost its lease"), "{}", w1.stderr);
    assert_each_once(&env.data(), &ids);
    assert_each_attempt_journaled_once(&env);
    let attempts = env.rows::<AttemptRow>();
    assert_eq!(attempts.len(), ids.len());
    assert!(attempts.iter().all(|a| a.worker == "w1"));
}

/// Whether the process is stopped (state `T` in `/proc/<pid>/stat`).
fn is_stopped(pid: nix::unistd::Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state == 'T')
        })
        .unwrap_or(false)
}
