//! A second hostile review of the operator controls (after tests/it/hostile_controls.rs and
//! its fixes in ecf3813): a drain on a paused queue, and the redirect policy that ecf3813
//! gave every POST (src/processor/http.rs, `redirects()`), which the `http` processor
//! shares with the dead-letter webhook.
//!
//! `BUG (expected to fail today)` marks a test that shows a broken promise (its cause by
//! file and function); `HOLDS:` one that guards an attack the code withstands. All run the
//! real binary on real tables against real loopback servers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::header::{HOST, LOCATION};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, post};
use retrylake::store::{AttemptRow, DeadReason, DeadRow, FinalRow, QueueRow};

use super::util::{Background, Env, assert_exactly_once, tail};

/// What a redirect target received: the idempotency key and the body.
type Reached = Arc<Mutex<Vec<(Option<String>, String)>>>;

/// Enqueued at this time, records are due now on the real clock.
const PAST: &str = "2020-01-01T00:00:00Z";
/// The longest one command of these tests may take.
const WAIT: Duration = Duration::from_secs(180);

/// `n` ids `<prefix>-0000`...
fn make_ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

/// Enqueues `ids` (each with a payload, or an empty one: dead at once) at `now`.
fn enqueue(env: &Env, name: &str, ids: &[String], with_payload: bool, now: &str) {
    let mut lines = String::new();
    for id in ids {
        let payload = if with_payload {
            format!("data of {id}")
        } else {
            String::new()
        };
        lines.push_str(&format!(
            "{{\"sample_id\":\"{id}\",\"payload\":\"{payload}\"}}\n"
        ));
    }
    let input = env.write(name, lines);
    let out = env.ok(&["enqueue", input.to_str().unwrap(), "--now", now]);
    let expected = format!("enqueued {n} of {n} records", n = ids.len());
    assert!(out.contains(&expected), "{out}");
}

/// Runs the binary with `args` (at most [`WAIT`]), asserting exit 0 and no panic; returns
/// stdout and stderr.
fn run_ok(env: &Env, args: &[&str]) -> (String, String) {
    let out = env
        .cmd()
        .args(args)
        .timeout(WAIT)
        .output()
        .expect("run retrylake");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && !stderr.contains("panicked"),
        "retrylake {args:?} exited with {}: {}",
        out.status,
        tail(&stderr)
    );
    (stdout, stderr)
}

/// The dead letters by id, asserting no id is there twice.
fn dead_by_id(env: &Env) -> HashMap<String, DeadRow> {
    let mut dead = HashMap::new();
    for d in env.rows::<DeadRow>() {
        let id = d.sample_id.clone();
        assert!(dead.insert(id.clone(), d).is_none(), "{id} dead twice");
    }
    dead
}

/// The record id of an http processor's request body (`{"id": ..., "data": ...}`).
fn id_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// 1. Stopping: a drain on a paused queue, a worker whose hook hangs.
// ---------------------------------------------------------------------------------------

/// BUG (expected to fail today). The queue is empty (its two records are final) and an
/// operator pauses it for an hour's maintenance. A `run --drain` (a cron job's, or
/// Python's `q.drain`) has nothing to do, yet it does not return: the paused round
/// (src/round.rs, `run_round`, the early return on `paused`) reports neither a next due
/// record nor that nothing is queued, and `Rounds::next` (src/worker.rs) takes the pause's
/// end as the next thing to wait for (`paused_until.max(queue_paused).max(next_due)`), so
/// the drain polls a paused queue for an hour. Fixed, a drain with nothing queued ends at
/// once, paused or not.
#[test]
fn a_drain_of_an_empty_queue_paused_for_an_hour_returns_at_once() {
    let env = Env::new();
    let ids = make_ids("E", 2);
    enqueue(&env, "e.jsonl", &ids, true, PAST);
    run_ok(
        &env,
        &[
            "run",
            "--processor=simulate",
            "--transient-rate=0",
            "--drain",
        ],
    );
    assert_eq!(env.rows::<FinalRow>().len(), 2, "setup: both final");
    assert!(env.rows::<QueueRow>().is_empty(), "setup: nothing queued");

    let until = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    env.ok(&["pause", "--until", &until, "--reason", "maintenance window"]);
    let started = Instant::now();
    let out = env
        .cmd()
        .args(["run", "--processor=simulate", "--drain", "--poll=1s"])
        .timeout(Duration::from_secs(30))
        .output()
        .expect("run");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{}", tail(&stderr));
    assert!(
        out.status.success() && took < Duration::from_secs(25),
        "a drain with nothing queued was still waiting out the pause after {took:?} \
         (killed at 30 s: {}): {}",
        out.status,
        tail(&stderr)
    );
    assert_exactly_once(&env.data(), &ids);
}

/// BUG (expected to fail today). A worker whose dead-letter hook hangs (a webhook proxy
/// that accepts and never answers, a command stuck on a lock) is asked to stop (SIGTERM,
/// as systemd or Kubernetes do, or Ctrl-C). Its rounds stop at once, but the process
/// lingers about a minute: `run_rounds` ends with `AlertTask::finish` (src/alert.rs),
/// which waits for the hanging try to reach its 30 s timeout and then, stopping, makes one
/// more try of up to 30 s (`STOP_BUDGET` is checked only after a try has failed); and a
/// second signal does nothing (`Shutdown::on_signals`, src/worker.rs, listens once). A
/// supervisor's grace period (Kubernetes' 30 s) runs out first and kills it. Nothing is
/// lost (the alert stays pending), but "never a hang" is broken for the stop: expected,
/// the worker exits within seconds of the signal, leaving the alert to the next process.
#[test]
fn a_worker_stops_within_seconds_of_sigterm_while_its_hook_hangs() {
    let env = Env::new();
    let ids = make_ids("T", 3);
    enqueue(&env, "t.jsonl", &ids, false, PAST);
    let worker = Background::spawn(
        &env,
        "worker",
        &[
            "worker",
            "--processor=simulate",
            "--transient-rate=0",
            "--poll=200ms",
            "--on-dead-letter",
            "sleep 120",
        ],
        &[],
    );
    let deadline = Instant::now() + WAIT;
    while env.rows::<DeadRow>().len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "setup: the worker placed nothing: {}",
            tail(&worker.stderr())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The round has committed; its alert is with the hook, which hangs.
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    let finished = worker.wait(Duration::from_secs(45));
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the worker took {took:?} to stop after SIGTERM: {}",
        tail(&finished.stderr)
    );
    assert!(
        finished.status.success() && !finished.stderr.contains("panicked"),
        "{}: {}",
        finished.status,
        tail(&finished.stderr)
    );
    assert_exactly_once(&env.data(), &ids);
}

// ---------------------------------------------------------------------------------------
// 2. The redirect policy of every POST (src/processor/http.rs, `redirects()`).
// ---------------------------------------------------------------------------------------

/// BUG (expected to fail today). `redirects()` follows a 307/308 when the new URL has the
/// same *host* as the first one, and its comment says "so no header goes elsewhere"; but
/// another port of the same host is another service (another origin). The endpoint
/// answers the POST with `307 Location: http://127.0.0.1:<other port>/collect`: the client
/// re-sends the record's body, its idempotency key and the operator's secret header
/// (`--header-env X-Api-Key: ...`; reqwest strips only `Authorization`, cookies and the
/// like on a port change, src redirect.rs `remove_sensitive_headers`) to that other
/// service, and its 200 counts as the record's delivery (the record is final). An
/// https-to-http hop on the same host and port passes the same check (the body and every
/// header, `Authorization` included, then go out in clear text). Fixed, a redirect is
/// followed only to the same origin (scheme, host and port): the other service gets
/// nothing and the record fails with the 307 it was answered.
#[test]
fn a_307_to_another_port_of_the_same_host_is_not_followed() {
    let env = Env::new();
    let ids = vec!["X-0001".to_owned()];
    enqueue(&env, "x.jsonl", &ids, true, PAST);

    // Another service on the same host: it keeps what reaches it and answers 200.
    let reached: Reached = Arc::default();
    let r = reached.clone();
    let other = Router::new().route(
        "/collect",
        any(move |headers: HeaderMap, body: Bytes| {
            let r = r.clone();
            async move {
                let key = headers
                    .get("x-api-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                r.lock()
                    .unwrap()
                    .push((key, String::from_utf8_lossy(&body).into_owned()));
                (StatusCode::OK, "stored elsewhere")
            }
        }),
    );
    let other_addr = super::server::serve(other);
    let target = format!("http://127.0.0.1:{}/collect", other_addr.port());
    let api = Router::new().route(
        "/api",
        post(move || {
            let target = target.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [(LOCATION, target)]) }
        }),
    );
    let api_addr = super::server::serve(api);
    let url = format!("http://127.0.0.1:{}/api", api_addr.port());

    let out = env
        .cmd()
        .env("RL_HOSTILE_API_KEY", "s3cr3t-api-key")
        .args([
            "run",
            "--processor=http",
            "--url",
            &url,
            "--header-env",
            "X-Api-Key: RL_HOSTILE_API_KEY",
        ])
        .timeout(WAIT)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("panicked"),
        "{}: {}",
        out.status,
        tail(&stderr)
    );
    let reached = reached.lock().unwrap().clone();
    assert!(
        reached.is_empty(),
        "a 307 to another port of the same host was followed: the other service received \
         {} request(s), with X-Api-Key {:?} and body {:?}",
        reached.len(),
        reached.first().map(|r| r.0.clone()),
        reached.first().map(|r| r.1.clone())
    );
    assert!(
        env.rows::<FinalRow>().is_empty(),
        "the other service's 200 was counted as the record's delivery"
    );
    assert_exactly_once(&env.data(), &ids);
}

/// What a redirecting endpoint saw.
#[derive(Default)]
struct Redirects {
    /// The record ids of the POSTs to `/api`, in order.
    api: Vec<String>,
    /// Requests that were not POSTs (a redirect turned into a GET).
    not_posts: usize,
    /// What reached `/final`: (method, record id, Idempotency-Key).
    stored: Vec<(String, String, Option<String>)>,
}

/// HOLDS: the redirects a legitimate downstream may answer, through the `http` processor
/// (which shares `redirects()` with the webhook since ecf3813). Each record's id picks the
/// answer of `POST /api`:
/// - `moved-*`: `301` to `https://` on the same host (an http-to-https hop). Not followed
///   (it would become a body-less GET): the record is dead-lettered, permanent, with an
///   error naming the status (`HTTP 301 ...`), after one POST; no GET is ever sent. A
///   sane answer: clear, and `redrive` undoes it once `--url` is fixed.
/// - `rel-*`: `307` to a relative `Location: /final`: followed, the body and the
///   idempotency key re-sent as a POST; its 200 is the record's delivery.
/// - `loop-*`: `307` to itself, forever: the client gives up after a few hops (no hang),
///   and the record is dead-lettered naming the 307.
/// - `away-*`: `308` to another host name (`localhost` for `127.0.0.1`): not followed.
#[test]
fn redirects_end_in_a_clear_answer_and_never_hang() {
    let env = Env::new();
    let ids: Vec<String> = ["away-1", "loop-1", "moved-1", "rel-1"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    enqueue(&env, "r.jsonl", &ids, true, PAST);
    let seen: Arc<Mutex<Redirects>> = Arc::default();
    let (s1, s2) = (seen.clone(), seen.clone());
    let app = Router::new()
        .route(
            "/api",
            any(move |method: Method, headers: HeaderMap, body: Bytes| {
                let s = s1.clone();
                async move {
                    let id = id_of(&body);
                    {
                        let mut seen = s.lock().unwrap();
                        if method != Method::POST {
                            seen.not_posts += 1;
                            return StatusCode::METHOD_NOT_ALLOWED.into_response();
                        }
                        seen.api.push(id.clone());
                    }
                    let host = headers
                        .get(HOST)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("127.0.0.1:80")
                        .to_owned();
                    let port = host.rsplit(':').next().unwrap_or("80").to_owned();
                    let (status, location) = if id.starts_with("moved-") {
                        (
                            StatusCode::MOVED_PERMANENTLY,
                            "https://127.0.0.1/api".to_owned(),
                        )
                    } else if id.starts_with("rel-") {
                        (StatusCode::TEMPORARY_REDIRECT, "/final".to_owned())
                    } else if id.starts_with("loop-") {
                        (StatusCode::TEMPORARY_REDIRECT, "/api".to_owned())
                    } else {
                        (
                            StatusCode::PERMANENT_REDIRECT,
                            format!("http://localhost:{port}/final"),
                        )
                    };
                    (status, [(LOCATION, location)]).into_response()
                }
            }),
        )
        .route(
            "/final",
            any(move |method: Method, headers: HeaderMap, body: Bytes| {
                let s = s2.clone();
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let mut seen = s.lock().unwrap();
                    if method != Method::POST {
                        seen.not_posts += 1;
                    }
                    seen.stored.push((method.to_string(), id_of(&body), key));
                    (StatusCode::OK, "stored")
                }
            }),
        );
    let addr = super::server::serve(app);
    let url = format!("http://{addr}/api");
    let started = Instant::now();
    run_ok(&env, &["run", "--processor=http", "--url", &url]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "redirects held the run {took:?}"
    );

    let finals = env.rows::<FinalRow>();
    let final_ids: Vec<&str> = finals.iter().map(|f| f.sample_id.as_str()).collect();
    assert_eq!(final_ids, vec!["rel-1"], "only the relative 307 delivers");
    assert_eq!(finals[0].response.as_deref(), Some("stored"));
    let dead = dead_by_id(&env);
    for (id, status) in [
        ("moved-1", "HTTP 301"),
        ("loop-1", "HTTP 307"),
        ("away-1", "HTTP 308"),
    ] {
        let d = dead
            .get(id)
            .unwrap_or_else(|| panic!("{id} is not dead: {dead:?}"));
        assert_eq!(d.reason, DeadReason::Permanent, "{d:?}");
        assert!(
            d.error_msg.as_deref().unwrap_or("").starts_with(status),
            "{id}: the error does not name the status {status}: {d:?}"
        );
    }
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.not_posts, 0,
        "a redirect turned the POST into another method"
    );
    let posts = |id: &str| seen.api.iter().filter(|a| *a == id).count();
    assert_eq!(posts("moved-1"), 1);
    assert_eq!(posts("away-1"), 1);
    assert_eq!(posts("rel-1"), 1);
    let loops = posts("loop-1");
    assert!(
        (2..=11).contains(&loops),
        "the redirect loop was followed {loops} times"
    );
    assert_eq!(
        seen.stored,
        vec![(
            "POST".to_owned(),
            "rel-1".to_owned(),
            Some("rel-1:0".to_owned())
        )],
        "the relative 307 re-sends the body and the idempotency key"
    );
    // One attempt each: a redirect is one call, not several.
    assert_eq!(env.rows::<AttemptRow>().len(), ids.len());
    assert_exactly_once(&env.data(), &ids);
}

/// HOLDS: a webhook URL with credentials in it (`http://user:password@host/...`), whose
/// host refuses connections. The run commits its round and ends with exit 0 after trying
/// the hook; neither the password nor its Basic encoding appears in the logs (at `trace`,
/// every crate's), in the tables' history or in the status: reqwest takes the userinfo
/// out of the URL into a sensitive `Authorization` header, and retrylake's own errors
/// never quote the hook.
#[test]
fn a_webhook_url_with_credentials_never_reaches_logs_or_tables() {
    let env = Env::new();
    let ids = make_ids("C", 2);
    enqueue(&env, "c.jsonl", &ids, false, PAST);
    // A port nothing listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://alice:s3cr3t-pw@127.0.0.1:{port}/hook");
    let out = env
        .cmd()
        .env("RETRYLAKE_LOG", "trace")
        .args([
            "run",
            "--processor=simulate",
            "--transient-rate=0",
            "--on-dead-letter",
            &url,
        ])
        .timeout(WAIT)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("panicked"),
        "{}: {}",
        out.status,
        tail(&stderr)
    );
    assert!(
        stderr.contains("dead-letter alert"),
        "setup: the hook was not tried: {}",
        tail(&stderr)
    );
    let basic = "YWxpY2U6czNjcjN0LXB3"; // base64("alice:s3cr3t-pw")
    for (what, text) in [
        ("the logs", stderr.into_owned()),
        ("the history", env.ok(&["history", "--json"])),
        ("the status", env.ok(&["status", "--json"])),
    ] {
        assert!(
            !text.contains("s3cr3t-pw") && !text.contains(basic),
            "the webhook's password is in {what}"
        );
    }
    assert_eq!(dead_by_id(&env).len(), ids.len(), "the round committed");
    assert_exactly_once(&env.data(), &ids);
}
