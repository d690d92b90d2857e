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
    let (n, per_second) = (30, 50.0);
    enqueue_api(&env, n, NOW);
    let r = run_api(&env, &server, &["--rate=50/s"]);
    assert_eq!(r["succeeded"], n);
    // A bucket of one (a burst of 1): however many calls are in flight, they reach the
    // server at least 1/rate apart, so the first and the last at least (n - 1)/rate apart
    // (less 5% for the loopback's jitter). Unlimited, they would all arrive at once.
    // bench/rate.py measures how close to the rate it gets.
    let mut arrivals: Vec<std::time::Instant> = server.seen().iter().map(|s| s.at).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), n, "one call per record");
    let spread = arrivals[n - 1] - arrivals[0];
    let least = Duration::from_secs_f64((n - 1) as f64 / per_second);
    assert!(
        spread >= least.mul_f64(0.95),
        "{n} calls at --rate=50/s arrived within {spread:?}; the rate allows no less than {least:?}"
    );
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

/// A record whose own content makes the downstream fail must not hold the breaker open:
/// when the half-open probe keeps falling on it, its second failed probe in a row is
/// charged (it moves aside with its backoff), so the next probe takes another record.
#[test]
fn a_poison_record_does_not_stall_the_queue_behind_a_failing_probe() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::limits::Loopback;

    // The poison record always gets a 503; the others get a 503 for the first three
    // calls (an outage), then a 200.
    let (api_calls, poison_calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let server = {
        let (api_calls, poison_calls) = (api_calls.clone(), poison_calls.clone());
        Loopback::start(move |id| {
            if id.starts_with("poison") {
                poison_calls.fetch_add(1, Ordering::SeqCst);
                return (503, None);
            }
            match api_calls.fetch_add(1, Ordering::SeqCst) {
                0..3 => (503, None),
                _ => (200, None),
            }
        })
    };
    let env = Env::new();
    // The poison record is the oldest: of the four calls that open the breaker it ends
    // first, so its time lock is the earliest and every probe falls on it.
    let poison = env.write(
        "poison.jsonl",
        "{\"sample_id\":\"poison\",\"payload\":\"p\"}\n",
    );
    env.ok(&[
        "enqueue",
        poison.to_str().unwrap(),
        "--now",
        "2019-01-01T00:00:00Z",
    ]);
    let ids = enqueue_api(&env, 3, "2020-01-01T00:00:00Z");
    let mut run = env
        .process()
        .args([
            "run",
            "--processor=http",
            "--url",
            &server.url,
            "--now",
            NOW,
        ])
        .args(["--drain", "--json", "--concurrency=1", "--max-retries=2"])
        .args(["--breaker-min-calls=4", "--breaker-window=4"])
        .args(["--breaker-failure-rate=0.9", "--breaker-cool-down=10m"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.path("stderr")).unwrap())
        .spawn()
        .unwrap();
    // With the clock fixed, the drain jumps from one cool-down to the next at once: a
    // stalled queue spins, probing the poison record again and again.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(30) {
            run.kill().unwrap();
            run.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let probes = poison_calls.load(Ordering::SeqCst);
    let status = status.unwrap_or_else(|| {
        panic!("the drain stalled: {probes} calls to the poison record, the queue never empties")
    });
    let stderr = std::fs::read_to_string(env.path("stderr")).unwrap();
    assert!(status.success(), "{stderr}");
    // The others went through; the poison record was charged until its retries ran out:
    // its first call, one free probe, then a charged probe or call per retry.
    let finals = env.rows::<FinalRow>();
    let mut done: Vec<&str> = finals.iter().map(|f| f.sample_id.as_str()).collect();
    done.sort();
    assert_eq!(done, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let dead = env.rows::<DeadRow>();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (dead[0].sample_id.as_str(), dead[0].reason.as_str()),
        ("poison", "retries_exhausted")
    );
    assert!(env.rows::<QueueRow>().is_empty());
    assert!(
        (3..=5).contains(&probes),
        "{probes} calls to the poison record"
    );
}

/// However long an outage lasts, its failed probes cost the records nothing while other
/// records wait: each probe falls on a record no probe has failed on before.
#[test]
fn a_long_outage_charges_no_failed_probe_while_other_records_wait() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::limits::Loopback;

    // Down for the first eight calls: the two that open the breaker, then six probes.
    let calls = Arc::new(AtomicUsize::new(0));
    let server = {
        let calls = calls.clone();
        Loopback::start(move |_| match calls.fetch_add(1, Ordering::SeqCst) {
            0..8 => (503, None),
            _ => (200, None),
        })
    };
    let env = Env::new();
    let ids = enqueue_api(&env, 10, "2020-01-01T00:00:00Z");
    let url = server.url.clone();
    env.ok(&[
        "run",
        "--processor=http",
        "--url",
        &url,
        "--now",
        NOW,
        "--drain",
        "--concurrency=1",
        "--breaker-min-calls=2",
        "--breaker-window=2",
        "--breaker-cool-down=10m",
    ]);
    assert_eq!(calls.load(Ordering::SeqCst), 8 + ids.len());
    let finals = env.rows::<FinalRow>();
    assert_eq!(finals.len(), ids.len());
    // Only the two calls that opened the breaker were charged.
    let retries: i64 = finals.iter().map(|f| i64::from(f.attempts) - 1).sum();
    assert_eq!(retries, 2, "{finals:?}");
}
