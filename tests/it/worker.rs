//! The worker loop through the binary: it drains, picks up new enqueues, serves metrics,
//! and on SIGTERM finishes the round in flight and exits 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use retrylake::store::{AttemptRow, QueueRow};

use super::s3;
use super::util::{Background, Env, assert_exactly_once, write_samples};

const PAST: &str = "2020-01-01T00:00:00Z";

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sigterm(child: &Child) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn a_worker_drains_picks_up_new_records_and_serves_metrics() {
    let env = Env::new();
    let (input, mut all) = write_samples(&env, "W", 30);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", PAST]);
    let mut child = env
        .process()
        .args([
            "worker",
            "--processor",
            "simulate",
            "--poll",
            "300ms",
            "--base-backoff",
            "20ms",
            "--max-backoff",
            "100ms",
        ])
        .args(["--transient-rate", "0.3", "--metrics-addr", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "worker exited early"
        );
        if let Some(rest) = line.split("metrics on http://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    let log = std::thread::spawn(move || {
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).unwrap();
        rest
    });
    wait_until("the first drain", || env.rows::<QueueRow>().is_empty());

    let (more, extra) = write_samples(&env, "V", 10);
    env.ok(&["enqueue", more.to_str().unwrap(), "--now", PAST]);
    all.extend(extra);
    wait_until("the new records", || {
        let status = env.json(&["status"]);
        status["waiting"] == 0
            && status["final"].as_i64().unwrap() + status["dead"].as_i64().unwrap() == 40
    });
    // The metrics follow the round after the last one; give it a poll interval.
    std::thread::sleep(Duration::from_millis(700));

    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    assert!(
        body.contains("# TYPE retrylake_attempts_total counter"),
        "{body}"
    );
    assert!(body.contains("retrylake_queue_depth 0"), "{body}");
    assert!(
        body.contains("retrylake_attempts_total{outcome=\"permanent\"} 6"),
        "{body}"
    );

    sigterm(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let log = log.join().unwrap();
    assert!(
        log.contains("round 1:") && log.contains("worker stopped"),
        "{log}"
    );
    assert_exactly_once(&env.data(), &all);
}

#[test]
fn sigterm_finishes_the_round_in_flight() {
    let env = Env::new();
    let (input, all) = write_samples(&env, "T", 4);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", PAST]);
    let marker = env.path("started");
    let command = format!("touch '{}'; sleep 1; cat", marker.display());
    let mut child = env
        .process()
        .args([
            "worker",
            "--processor",
            "command",
            "--command",
            &command,
            "--concurrency",
            "1",
        ])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the first call", || marker.exists());
    sigterm(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a stop request is a clean exit");
    // The round in flight was committed whole: all three calls journaled and placed.
    let attempts = env.rows::<AttemptRow>();
    assert_eq!(attempts.len(), 4, "the whole round, not a part of it");
    assert_exactly_once(&env.data(), &all);
    assert!(env.rows::<QueueRow>().is_empty());
}

/// An idle worker on S3 costs a bounded number of requests per poll (the README's "What
/// an idle worker costs"): for each table, one listing of its log from the version it
/// has and one read of `_last_checkpoint`; nothing written, no data file read.
#[test]
fn an_idle_worker_makes_two_requests_a_table_a_poll_on_s3() {
    let env = Env::s3();
    let (input, _) = write_samples(&env, "IDLE", 5);
    // Due tomorrow: nothing for a worker on the system clock to do.
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", &tomorrow]);
    let worker = Background::spawn(
        &env,
        "idle",
        &["worker", "--processor", "simulate", "--poll", "200ms"],
        &[],
    );
    // Past its start: opening the tables and the first rounds.
    std::thread::sleep(Duration::from_secs(4));
    let prefix = env.data().url.rsplit('/').next().unwrap().to_owned();
    let ((), requests) = s3::recorded(&prefix, || std::thread::sleep(Duration::from_secs(4)));
    let finished = worker.stop(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for r in &requests {
        let table = [
            "attempts",
            "final_results",
            "dead_letter_queue",
            "retry_queue",
        ]
        .into_iter()
        .find(|t| r.url.contains(t))
        .unwrap_or("?");
        let what = if r.url.contains("list-type=2") {
            "LIST"
        } else if r.method == "GET" && r.url.ends_with("/_last_checkpoint") {
            "GET _last_checkpoint"
        } else {
            r.method.as_str()
        };
        *kinds.entry(format!("{what} {table}")).or_default() += 1;
    }
    // Each poll lists retry_queue's log once.
    let polls = kinds.get("LIST retry_queue").copied().unwrap_or(0);
    assert!(polls >= 4, "too few polls to judge: {kinds:?}");
    let expected = ["LIST", "GET _last_checkpoint"];
    for (kind, n) in &kinds {
        assert!(
            expected.iter().any(|e| kind.starts_with(e)),
            "an idle worker sent {n} {kind}: {kinds:?}"
        );
        // A poll cut by the window's edges may count once more.
        assert!(
            *n <= polls + 1,
            "{kind} {n} times in {polls} polls: {kinds:?}"
        );
    }
}
