//! Several `run` processes on one data directory at once.

use std::process::Output;

use retrylake::Shard;
use retrylake::store::{AttemptRow, QueueRow};

use super::util::{Env, assert_each_attempt_once, assert_exactly_once, write_samples};

/// Records enqueued in the past are due now on the real clock. Concurrent runners share the
/// real clock (a virtual `--now` per process would let one jump into another's lease), with
/// backoffs short enough to drain in seconds.
const PAST: &str = "2020-01-01T00:00:00Z";
const FAST: [&str; 7] = [
    "--base-backoff=20ms",
    "--max-backoff=200ms",
    "--drain",
    "--poll=200ms",
    "--transient-rate=0.3",
    // Well inside the lease: a round must be able to call and commit before it ends.
    "--timeout=5s",
    "--lease=1m",
];

/// Starts every runner at once and waits for all.
fn spawn_all(env: &Env, runners: Vec<Vec<String>>) -> Vec<Output> {
    let children: Vec<_> = runners
        .into_iter()
        .map(|args| {
            env.process()
                .args(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn assert_all_succeed(outputs: Vec<Output>) {
    for out in outputs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn workers_with_their_own_names_never_take_the_same_record() {
    workers_with_their_own_names(Env::new(), &[]);
}

#[test]
fn workers_with_their_own_names_never_take_the_same_record_on_s3() {
    workers_with_their_own_names(Env::s3(), &[]);
}

#[test]
fn workers_calling_in_batches_never_take_the_same_record() {
    workers_with_their_own_names(Env::new(), &["--call-batch", "7"]);
}

fn workers_with_their_own_names(env: Env, extra: &[&str]) {
    let (input, ids) = write_samples(&env, "C", 240);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", PAST]);
    let runners = (0..3)
        .map(|i| {
            let worker = format!("w{i}");
            let mut a = args(&["run", "--limit", "40", "--worker", &worker]);
            a.extend(args(&FAST));
            a.extend(args(extra));
            a
        })
        .collect();
    assert_all_succeed(spawn_all(&env, runners));
    assert_exactly_once(&env.data(), &ids);
    assert!(env.rows::<QueueRow>().is_empty());
    assert_each_attempt_once(&env);
}

#[test]
fn shards_split_the_work() {
    shards_split(Env::new());
}

#[test]
fn shards_split_the_work_on_s3() {
    shards_split(Env::s3());
}

fn shards_split(env: Env) {
    let (input, ids) = write_samples(&env, "S", 150);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", PAST]);
    let runners = (0..3)
        .map(|i| {
            let (worker, shard) = (format!("shard{i}"), format!("{i}/3"));
            let mut a = args(&["run", "--worker", &worker, "--shard", &shard]);
            a.extend(args(&FAST));
            a
        })
        .collect();
    assert_all_succeed(spawn_all(&env, runners));
    assert_exactly_once(&env.data(), &ids);
    assert!(env.rows::<QueueRow>().is_empty());
    for a in env.rows::<AttemptRow>() {
        let i: u32 = a.worker.trim_start_matches("shard").parse().unwrap();
        assert!(
            Shard::new(i, 3).unwrap().contains(&a.sample_id),
            "{} outside {}",
            a.sample_id,
            a.worker
        );
    }
}

#[test]
fn the_same_worker_name_twice_refuses_or_serializes() {
    same_worker_name_twice(Env::new());
}

/// On S3 only the conditional put of each log entry keeps two writers from both taking one
/// version: the duplicate worker's commits must be refused there too.
#[test]
fn the_same_worker_name_twice_refuses_or_serializes_on_s3() {
    same_worker_name_twice(Env::s3());
}

fn same_worker_name_twice(env: Env) {
    let (input, ids) = write_samples(&env, "D", 120);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", PAST]);
    // A refused runner's claimed records wait out its lease before anyone retries them.
    let runner = args(&[
        "run",
        "--limit=30",
        "--transient-rate=0.3",
        "--lease=5s",
        "--timeout=1s",
        "--base-backoff=20ms",
        "--max-backoff=200ms",
    ]);
    let outs = spawn_all(&env, vec![runner.clone(), runner.clone(), runner]);
    for out in &outs {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success()
                || stderr.contains("another retrylake process is running as worker 'main'"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert_exactly_once(&env.data(), &ids);
    let mut drain = vec!["run"];
    drain.extend(FAST);
    env.ok(&drain);
    assert_exactly_once(&env.data(), &ids);
}
