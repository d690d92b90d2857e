//! Nothing a downstream or a flag sends panics the process: hostile Retry-After values and
//! absurd durations, through the binary against a real HTTP server on 127.0.0.1.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use retrylake::store::{AttemptRow, QueueRow};

use super::util::Env;

/// How the server answers one call, given the record's id.
type Answer = dyn Fn(&str) -> (u16, Option<String>) + Send + Sync;

struct Shared {
    answer: Box<Answer>,
    calls: AtomicUsize,
}

/// A loopback server whose every answer a closure decides.
pub(super) struct Loopback {
    pub(super) url: String,
    shared: Arc<Shared>,
}

impl Loopback {
    pub(super) fn start(
        decide: impl Fn(&str) -> (u16, Option<String>) + Send + Sync + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            answer: Box::new(decide),
            calls: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/", post(answer))
            .with_state(shared.clone());
        let addr = super::server::serve(app);
        Loopback {
            url: format!("http://{addr}/"),
            shared,
        }
    }

    /// Every call answered `status` with `Retry-After: retry_after`.
    fn always(status: u16, retry_after: &str) -> Self {
        let retry_after = retry_after.to_owned();
        Loopback::start(move |_| (status, Some(retry_after.clone())))
    }

    pub(super) fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }
}

async fn answer(State(shared): State<Arc<Shared>>, body: String) -> Response {
    shared.calls.fetch_add(1, Ordering::SeqCst);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let (status, retry_after) = (shared.answer)(json["id"].as_str().unwrap_or_default());
    let status = StatusCode::from_u16(status).unwrap();
    let body = if status.is_success() { "ok" } else { "down" };
    match retry_after {
        Some(value) => (status, [("retry-after", value)], body).into_response(),
        None => (status, body).into_response(),
    }
}

fn enqueue(env: &Env, prefix: &str, n: usize, now: &str) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:03}")).collect();
    let lines: String = ids
        .iter()
        .map(|id| format!("{{\"sample_id\":\"{id}\",\"payload\":\"p\"}}\n"))
        .collect();
    let input = env.write(&format!("{prefix}.jsonl"), lines);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", now]);
    ids
}

/// Runs the binary; returns (exit code, stdout, stderr), asserting it did not panic.
fn run(env: &Env, args: &[&str]) -> (Option<i32>, String, String) {
    let out = env.cmd().args(args).output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked") && out.status.code() != Some(101),
        "retrylake {args:?} panicked: {stderr}"
    );
    (out.status.code(), stdout, stderr)
}

/// `t` rounded up to whole milliseconds, as the queue stores time locks.
fn ceil_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    let us = t.timestamp_micros();
    let r = us.rem_euclid(1000);
    DateTime::from_timestamp_micros(if r == 0 { us } else { us - r + 1000 }).unwrap()
}

const DAY: chrono::TimeDelta = chrono::TimeDelta::days(1);

#[test]
fn a_huge_retry_after_pauses_at_most_max_retry_after_and_does_not_panic() {
    let env = Env::new();
    let server = Loopback::always(503, "99999999999999999999");
    let ids = enqueue(&env, "api", 3, "2020-01-01T00:00:00Z");
    let before = Utc::now();
    let (code, stdout, stderr) = run(
        &env,
        &[
            "run",
            "--processor=http",
            "--url",
            &server.url,
            "--concurrency=1",
            "--json",
        ],
    );
    let after = Utc::now();
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    // One call, then the pause holds the other two back, uncharged.
    assert_eq!(server.calls(), 1);
    assert_eq!(
        (report["processed"].as_u64(), report["deferred"].as_u64()),
        (Some(1), Some(2)),
        "{report}"
    );
    let paused: DateTime<Utc> = report["paused_until"].as_str().unwrap().parse().unwrap();
    assert!(paused >= before + DAY && paused <= after + DAY, "{paused}");
    // Every record waits in retry_queue, no later than the end of the call + 1 day (the
    // default --max-retry-after), and not before the pause ends.
    let queue = env.rows::<QueueRow>();
    let mut queued: Vec<&str> = queue.iter().map(|q| q.sample_id.as_str()).collect();
    queued.sort();
    assert_eq!(queued, ids.iter().map(String::as_str).collect::<Vec<_>>());
    for q in &queue {
        assert!(
            q.process_after >= before + DAY && q.process_after <= ceil_ms(after + DAY),
            "{q:?} (call between {before} and {after})"
        );
    }
    assert_eq!(queue.iter().filter(|q| q.retry_count == 1).count(), 1);
    assert_eq!(env.rows::<AttemptRow>().len(), 1);
}

#[test]
fn no_retry_after_value_panics_and_none_parks_a_record_past_the_ceiling() {
    // (value, whether it asks for a pause beyond the first retry's 2 minutes)
    let cases = [
        ("99999999999999999999", true),
        ("18446744073709551615", true),
        ("9223372036854775808", true),
        ("  86400  ", true),
        ("Fri, 31 Dec 9999 23:59:59 GMT", true),
        ("Sat, 01 Jan 10000 00:00:00 GMT", true),
        ("Sat, 01 Jan 99999999999999999999 00:00:00 GMT", false),
        ("Thu, 01 Jan 1970 00:00:00 GMT", false),
        ("Mon, 01 Jan 0001 00:00:00 GMT", false),
        ("-1", false),
        ("-99999999999999999999", false),
        ("1.5", false),
        ("1e400", false),
        ("soon", false),
        ("", false),
    ];
    for (value, long) in cases {
        let env = Env::new();
        let server = Loopback::always(429, value);
        enqueue(&env, "api", 1, "2020-01-01T00:00:00Z");
        let before = Utc::now();
        let (code, _, stderr) = run(
            &env,
            &["run", "--processor=http", "--url", &server.url, "--json"],
        );
        let after = Utc::now();
        assert_eq!(code, Some(0), "Retry-After: {value:?}: {stderr}");
        let queue = env.rows::<QueueRow>();
        assert_eq!(queue.len(), 1, "Retry-After: {value:?}");
        let q = &queue[0];
        assert_eq!(q.retry_count, 1, "Retry-After: {value:?}");
        // At least the first retry's backoff (2 minutes), at most the end of the call plus
        // the 1-day ceiling.
        let low = if long {
            before + DAY
        } else {
            before + chrono::TimeDelta::minutes(2)
        };
        let high = if long {
            ceil_ms(after + DAY)
        } else {
            ceil_ms(after + chrono::TimeDelta::minutes(2))
        };
        assert!(
            q.process_after >= low && q.process_after <= high,
            "Retry-After: {value:?}: {q:?}"
        );
    }
}

#[test]
fn absurd_durations_in_flags_do_not_panic() {
    // A downstream asking for a pause of about 3 * 10^12 years, and one simply down.
    let busy = Loopback::always(503, "99999999999999999999");
    let down = Loopback::start(|_| (503, None));
    let mut cases: Vec<(&Loopback, Vec<String>)> = Vec::new();
    // Far past what a timestamp holds (about 262,000 years), and past what chrono's
    // TimeDelta holds (about 292 million years).
    for huge in ["500000years", "5000000000years"] {
        for flag in [
            "max-retry-after",
            "lease",
            "timeout",
            "base-backoff",
            "max-backoff",
        ] {
            cases.push((&busy, vec![format!("--{flag}={huge}")]));
        }
        cases.push((
            &down,
            vec![
                format!("--breaker-cool-down={huge}"),
                "--breaker-min-calls=1".to_owned(),
                "--breaker-window=1".to_owned(),
            ],
        ));
    }
    for flags in [
        "--multiplier=1e308",
        "--breaker-window=18446744073709551615",
        "--breaker-min-calls=18446744073709551615",
        "--rate=4294967295/s",
    ] {
        cases.push((&down, vec![flags.to_owned()]));
    }
    for (server, flags) in cases {
        let env = Env::new();
        enqueue(&env, "api", 4, "2020-01-01T00:00:00Z");
        let mut args = vec!["run", "--processor=http", "--url", &server.url, "--json"];
        args.extend(flags.iter().map(String::as_str));
        let (code, _, stderr) = run(&env, &args);
        assert!(
            matches!(code, Some(0 | 2)),
            "{flags:?}: exit {code:?}: {stderr}"
        );
        // However the flags went, the records are all still there, each in one table.
        assert_eq!(env.rows::<QueueRow>().len(), 4, "{flags:?}: {stderr}");
    }
}
