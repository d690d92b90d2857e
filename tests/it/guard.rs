//! Protecting a struggling downstream, through the binary against the loopback server: the
//! circuit breaker, Retry-After pauses and the rate limit's command line.

use std::process::Stdio;
use std::time::Duration;

use retrylake::store::{AttemptRow, DeadRow, FinalRow, QueueRow};

use super::server::{Api, Server};
use super::util::Env;

const NOW: &str = "2025-11-24T14:00:00Z";

fn enqueue_api(env: &Env, n: usize, now: &str) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("api-{i:03}")).collect();
    let lines: String = ids
        .iter()
        .map(|id| format!("{{\"sample_id\":\"{id}\",\"payload\":\"p\"}}\n"))
        .collect();
    let input = env.write("api.jsonl", lines);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", now]);
    ids
}

/// One `run --json` of the http processor against `server` at `NOW`, with `extra` flags.
fn run_api(env: &Env, server: &Server, extra: &[&str]) -> serde_json::Value {
    let url = server.url();
    let mut args = vec!["run", "--processor=http", "--url", &url, "--now", NOW];
    args.extend(extra);
    env.json(&args)
}

#[test]
fn an_outage_opens_the_breaker_and_costs_the_uncalled_records_nothing() {
    let env = Env::new();
    let server = Server::start();
    server.set_api(Api::Down);
    enqueue_api(&env, 200, NOW);
    let r = run_api(
        &env,
        &server,
        &[
            "--concurrency=4",
            "--breaker-window=20",
            "--breaker-min-calls=10",
        ],
    );
    // The breaker opens after 10 failed calls; at most the 3 others in flight then finish.
    let calls = server.failed_api_calls();
    assert!((10..=13).contains(&calls), "{calls} calls");
    assert_eq!(r["processed"], calls);
    assert_eq!(r["deferred"], 200 - calls);
    assert_eq!(r["breaker"], "open");
    assert!(r["paused_until"].is_string(), "{r}");
    // Every record is still waiting; only the called ones were charged an attempt, the
    // others are exactly as they were.
    let queue = env.rows::<QueueRow>();
    assert_eq!(queue.len(), 200);
    let charged: Vec<&QueueRow> = queue.iter().filter(|q| q.retry_count > 0).collect();
    assert_eq!(charged.len(), calls);
    for q in queue.iter().filter(|q| q.retry_count == 0) {
        assert_eq!(q.process_after.to_rfc3339(), "2025-11-24T14:00:00+00:00");
        assert_eq!(q.error_msg, None);
    }
    assert_eq!(env.rows::<AttemptRow>().len(), calls);
}

#[test]
fn after_the_outage_a_probe_closes_the_breaker_and_the_backlog_drains() {
    let env = Env::new();
    let server = Server::start();
    server.set_api(Api::Down);
    let ids = enqueue_api(&env, 120, "2020-01-01T00:00:00Z");
    let run = env
        .process()
        .args([
            "run",
            "--processor=http",
            "--url",
            &server.url(),
            "--drain",
            "--json",
        ])
        .args([
            "--concurrency=4",
            "--breaker-min-calls=10",
            "--breaker-cool-down=300ms",
        ])
        .args(["--base-backoff=50ms", "--max-backoff=200ms", "--poll=100ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Down for a while: a few probes, each refused.
    let outage = Duration::from_millis(1500);
    std::thread::sleep(outage);
    server.set_api(Api::Up);
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success());
    let failed = server.failed_api_calls();
    // The first window's calls, the calls in flight, then one probe per cool-down (and
    // the outage's rounds start late, so this bound is loose).
    let probes = (outage.as_millis() / 300) as usize + 2;
    assert!(failed <= 13 + probes, "{failed} calls to a dead endpoint");
    let reports: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(reports.iter().any(|r| r["breaker"] == "open"));
    assert_eq!(reports.last().unwrap()["breaker"], "closed");
    // Every record made it, none dead-lettered. Only the calls that opened the breaker
    // (and those in flight then) were charged, one retry each; the failed probes were not.
    let finals = env.rows::<FinalRow>();
    assert_eq!(finals.len(), ids.len());
    assert!(env.rows::<DeadRow>().is_empty());
    let retries: i64 = finals.iter().map(|f| i64::from(f.attempts) - 1).sum();
    assert!((10..=13).contains(&retries), "{retries} retries charged");
    assert!(finals.iter().all(|f| f.attempts <= 2));
    let probes = failed as i64 - retries;
    assert!(
        probes >= 1,
        "the outage outlasted a cool-down: at least one probe failed"
    );
}

#[test]
fn a_retry_after_pauses_every_call_and_moves_the_time_locks_without_charging() {
    let env = Env::new();
    let server = Server::start();
    server.set_api(Api::Busy(120));
    enqueue_api(&env, 30, NOW);
    let url = server.url();
    let http = ["run", "--processor=http", "--url", &url, "--concurrency=1"];
    let mut args = http.to_vec();
    args.extend(["--now", NOW]);
    let r = env.json(&args);
    assert_eq!(server.failed_api_calls(), 1, "one call, then the pause");
    assert_eq!(
        (r["processed"].as_u64(), r["deferred"].as_u64()),
        (Some(1), Some(29))
    );
    assert_eq!(r["paused_until"], "2025-11-24T14:02:00Z");
    let queue = env.rows::<QueueRow>();
    assert_eq!(queue.iter().filter(|q| q.retry_count == 0).count(), 29);
    for q in &queue {
        assert!(
            q.process_after.to_rfc3339().as_str() >= "2025-11-24T14:02:00+00:00",
            "{q:?}"
        );
    }
    // Another process honours the pause too: nothing is due before it ends.
    let mut args = http.to_vec();
    args.extend(["--now", "2025-11-24T14:01:00Z"]);
    assert!(env.json(&args)["round"].is_null());
    // After it, the endpoint is back and everything goes through.
    server.set_api(Api::Up);
    let mut args = http.to_vec();
    args.extend(["--now", "2025-11-24T14:02:01Z"]);
    let r = env.json(&args);
    assert_eq!(r["succeeded"], 30);
    assert_eq!(server.failed_api_calls(), 1);
}

#[test]
fn with_the_breaker_off_every_due_record_is_called() {
    let env = Env::new();
    let server = Server::start();
    server.set_api(Api::Down);
    enqueue_api(&env, 60, NOW);
    let r = run_api(&env, &server, &["--concurrency=4", "--breaker=off"]);
    assert_eq!(r["processed"], 60);
    assert_eq!(r["deferred"], 0);
    assert!(r["breaker"].is_null());
    assert_eq!(server.failed_api_calls(), 60);
}

#[test]
fn a_rate_limit_lets_every_record_through() {
    let env = Env::new();
    let server = Server::start();
    enqueue_api(&env, 20, NOW);
    let r = run_api(&env, &server, &["--rate=200/s"]);
    assert_eq!(r["succeeded"], 20);
    // The rate itself is measured by bench/rate.py, not asserted here.
}

#[test]
fn bad_guard_settings_are_refused() {
    let env = Env::new();
    for (arg, says) in [
        ("--rate=0/s", "at least one call"),
        ("--rate=10/day", "expected N/s, N/m or N/h"),
        ("--breaker-failure-rate=0", "above 0"),
        ("--breaker-window=0", "--breaker-window"),
    ] {
        let stderr = env.fails(&["run", arg]);
        assert!(stderr.contains(says), "{arg}: {stderr}");
    }
}
