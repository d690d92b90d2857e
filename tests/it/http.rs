//! The http processor through the binary against a real server on 127.0.0.1.

use retrylake::store::{DeadRow, FinalRow, QueueRow};

use super::server::{Server, refused_addr, start_truncating_server};
use super::util::Env;

const NOW: &str = "2025-11-24T14:00:00Z";

fn enqueue(env: &Env, ids: &[&str]) {
    let lines: String = ids
        .iter()
        .map(|id| format!("{{\"sample_id\":\"{id}\",\"payload\":{{\"value\":42}}}}\n"))
        .collect();
    let input = env.write("in.jsonl", lines);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", NOW]);
}

fn run_http(env: &Env, url: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["run", "--processor", "http", "--url", url, "--now", NOW];
    args.extend_from_slice(extra);
    env.json(&args)
}

fn queued(env: &Env, id: &str) -> QueueRow {
    env.rows::<QueueRow>()
        .into_iter()
        .find(|r| r.sample_id == id)
        .unwrap_or_else(|| panic!("{id} not queued"))
}

fn dead(env: &Env, id: &str) -> DeadRow {
    env.rows::<DeadRow>()
        .into_iter()
        .find(|r| r.sample_id == id)
        .unwrap_or_else(|| panic!("{id} not dead"))
}

#[test]
fn every_answer_is_classified() {
    let server = Server::start();
    let env = Env::new();
    let ids = [
        "ok-1",
        "created-1",
        "unavailable-1",
        "missing-1",
        "invalid-1",
        "conflict-1",
        "internal-1",
        "ratelimited-1",
        "dated-1",
        "hostile-1",
    ];
    enqueue(&env, &ids);
    // All ten in flight at once (the server answers none before all ten arrived): a
    // Retry-After answer pauses the calls not yet started.
    server.gather(ids.len());
    let r = run_http(&env, &server.url(), &["--concurrency", "10"]);
    assert_eq!(r["processed"], 10);

    let finals = env.rows::<FinalRow>();
    let ok = finals.iter().find(|f| f.sample_id == "ok-1").unwrap();
    assert_eq!(ok.response.as_deref(), Some("accepted ok-1"));
    assert!(finals.iter().any(|f| f.sample_id == "created-1"));

    let u = queued(&env, "unavailable-1");
    assert_eq!(
        u.error_msg.as_deref(),
        Some("HTTP 503 Service Unavailable: maintenance window")
    );
    assert_eq!(u.process_after.to_rfc3339(), "2025-11-24T14:02:00+00:00");
    assert_eq!(
        queued(&env, "internal-1").error_msg.as_deref(),
        Some("HTTP 500 Internal Server Error")
    );

    let m = dead(&env, "missing-1");
    assert_eq!(m.reason.as_str(), "permanent");
    let msg = m.error_msg.unwrap();
    assert!(msg.starts_with("HTTP 404 Not Found: xxx"), "{msg}");
    assert_eq!(
        msg.len(),
        "HTTP 404 Not Found: ".len() + 200,
        "error body bounded to 200 bytes"
    );
    assert_eq!(
        dead(&env, "invalid-1").error_msg.as_deref(),
        Some("HTTP 422 Unprocessable Entity: field 'value' is required")
    );
    assert_eq!(
        dead(&env, "conflict-1").error_msg.as_deref(),
        Some("HTTP 409 Conflict")
    );

    // Retry-After in seconds raises the 2-minute backoff to 10 minutes; as a date, to that
    // date; a hostile value is held to the ceiling (1 day by default). Each is a retry.
    let rl = queued(&env, "ratelimited-1");
    assert_eq!(rl.process_after.to_rfc3339(), "2025-11-24T14:10:00+00:00");
    assert_eq!(rl.retry_count, 1);
    assert_eq!(
        queued(&env, "dated-1").process_after.to_rfc3339(),
        "2025-11-24T15:00:00+00:00"
    );
    assert_eq!(
        queued(&env, "hostile-1").process_after.to_rfc3339(),
        "2025-11-25T14:00:00+00:00"
    );

    // What the server received: the original job's JSON body, a JSON content type, idempotency keys.
    let seen = server.seen();
    assert_eq!(seen.len(), 10);
    for s in &seen {
        assert_eq!(s.content_type, "application/json");
        assert_eq!(s.idempotency_key, format!("{}:0", s.id));
        assert_eq!(s.data, serde_json::json!("{\"value\":42}"));
    }
}

#[test]
fn a_configured_transient_list_replaces_the_default() {
    let server = Server::start();
    let env = Env::new();
    enqueue(&env, &["conflict-1", "unavailable-1"]);
    run_http(&env, &server.url(), &["--transient-status", "409"]);
    assert_eq!(
        queued(&env, "conflict-1").error_msg.as_deref(),
        Some("HTTP 409 Conflict")
    );
    assert_eq!(dead(&env, "unavailable-1").reason.as_str(), "permanent");
}

#[test]
fn the_retry_carries_the_next_idempotency_key() {
    let server = Server::start();
    let env = Env::new();
    enqueue(&env, &["flaky-1"]);
    run_http(&env, &server.url(), &[]);
    assert_eq!(
        queued(&env, "flaky-1").error_msg.as_deref(),
        Some("HTTP 502 Bad Gateway")
    );
    let mut args = vec!["run", "--processor", "http", "--url"];
    let url = server.url();
    args.push(&url);
    args.extend(["--now", "2025-11-24T14:02:00Z"]);
    env.json(&args);
    let keys: Vec<String> = server
        .seen()
        .into_iter()
        .map(|s| s.idempotency_key)
        .collect();
    assert_eq!(keys, ["flaky-1:0", "flaky-1:1"]);
    let finals = env.rows::<FinalRow>();
    assert_eq!(finals[0].response.as_deref(), Some("second time lucky"));
    assert_eq!(finals[0].attempts, 2);
}

#[test]
fn timeouts_refusals_and_broken_connections_are_transient() {
    let server = Server::start();
    let env = Env::new();
    enqueue(&env, &["slow-1"]);
    let start = std::time::Instant::now();
    run_http(&env, &server.url(), &["--timeout", "300ms"]);
    assert!(
        start.elapsed().as_secs() < 9,
        "the call was not cut at the timeout"
    );
    assert_eq!(
        queued(&env, "slow-1").error_msg.as_deref(),
        Some("timeout after 300ms")
    );

    let env = Env::new();
    enqueue(&env, &["ok-1"]);
    run_http(&env, &format!("http://{}/", refused_addr()), &[]);
    assert_eq!(
        queued(&env, "ok-1").error_msg.as_deref(),
        Some("connection refused")
    );

    let env = Env::new();
    enqueue(&env, &["ok-1"]);
    run_http(&env, &format!("http://{}/", start_truncating_server()), &[]);
    assert_eq!(
        queued(&env, "ok-1").error_msg.as_deref(),
        Some("connection closed mid-response")
    );
}

#[test]
fn a_50_mb_body_is_read_only_as_far_as_kept() {
    let server = Server::start();
    let env = Env::new();
    enqueue(&env, &["huge-1"]);
    run_http(&env, &server.url(), &[]);
    let finals = env.rows::<FinalRow>();
    assert_eq!(finals[0].response.as_ref().map(String::len), Some(64 << 10));
}

#[test]
fn secret_headers_reach_the_server_and_nothing_else() {
    let server = Server::start();
    let env = Env::new();
    enqueue(&env, &["ok-1", "unavailable-1"]);
    let out = env
        .cmd()
        .env("API_TOKEN", "Bearer s3cr3t-value")
        .env("RETRYLAKE_LOG", "trace")
        .args([
            "run",
            "--processor",
            "http",
            "--url",
            &server.url(),
            "--now",
            NOW,
        ])
        .args([
            "--header-env",
            "Authorization: API_TOKEN",
            "--header",
            "X-Team: data",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("s3cr3t"),
        "the secret leaked into the logs"
    );
    assert!(
        server
            .seen()
            .iter()
            .all(|s| s.authorization.as_deref() == Some("Bearer s3cr3t-value"))
    );
    let err = env.fails(&[
        "run",
        "--processor",
        "http",
        "--url",
        &server.url(),
        "--header-env",
        "Authorization: NOT_SET_ANYWHERE",
    ]);
    assert!(err.contains("NOT_SET_ANYWHERE is not set"), "{err}");
    let err = env.fails(&["run", "--processor", "http", "--url", "not a url"]);
    assert!(err.contains("invalid --url"), "{err}");
}
