//! The original Spark job's worked example, through the binary with the command processor.

use retrylake::store::{AttemptRow, DeadRow, FinalRow, QueueRow};

use super::util::{Env, ids};

/// Fails S-101's first attempt and every attempt of S-999 with exit 75; echoes the payload
/// otherwise. Logs every call's idempotency key.
fn script(env: &Env) -> String {
    let log = env.path("calls.log");
    format!(
        r#"echo "$RETRYLAKE_IDEMPOTENCY_KEY" >> '{}'
case "$RETRYLAKE_SAMPLE_ID:$RETRYLAKE_ATTEMPT" in
  S-101:0|S-999:*) echo "starting" >&2; echo "API Timeout" >&2; exit 75;;
esac
cat"#,
        log.display()
    )
}

fn round(env: &Env, at: &str) -> serde_json::Value {
    let command = script(env);
    env.json(&[
        "run",
        "--processor",
        "command",
        "--command",
        &command,
        "--now",
        at,
    ])
}

#[test]
fn the_original_jobs_example_end_to_end() {
    let env = Env::new();
    let input = env.write(
        "new.jsonl",
        concat!(
            "{\"sample_id\": \"S-101\", \"payload\": \"Valid data A\"}\n",
            "{\"sample_id\": \"S-102\", \"payload\": \"\"}\n",
            "{\"sample_id\": \"S-103\", \"payload\": \"Valid data B\"}\n",
            "{\"sample_id\": \"S-999\", \"payload\": \"always fails\"}\n",
        ),
    );
    env.ok(&[
        "enqueue",
        input.to_str().unwrap(),
        "--now",
        "2025-11-24T14:00:00Z",
    ]);

    // 14:00: S-101 fails transiently, S-102 is dead-lettered without a call, S-103 succeeds.
    let r = round(&env, "2025-11-24T14:00:00Z");
    assert_eq!(r["round"], 1);
    assert_eq!(r["processed"], 4);
    assert_eq!(r["succeeded"], 1);
    assert_eq!(r["retried"], 2);
    assert_eq!(r["dead_lettered"], 1);
    assert_eq!(r["next_due"], "2025-11-24T14:02:00Z");

    let queue = env.rows::<QueueRow>();
    let s101 = queue.iter().find(|r| r.sample_id == "S-101").unwrap();
    assert_eq!(s101.retry_count, 1);
    assert_eq!(s101.process_after.to_rfc3339(), "2025-11-24T14:02:00+00:00");
    assert_eq!(s101.error_msg.as_deref(), Some("API Timeout"));
    let finals = env.rows::<FinalRow>();
    assert_eq!(ids(&finals, |r| &r.sample_id), ["S-103"]);
    assert_eq!(finals[0].data.as_deref(), Some("Valid data B"));
    assert_eq!(finals[0].response.as_deref(), Some("Valid data B"));
    assert_eq!(finals[0].attempts, 1);
    let dead = env.rows::<DeadRow>();
    assert_eq!(ids(&dead, |r| &r.sample_id), ["S-102"]);
    assert_eq!(dead[0].error_msg.as_deref(), Some("Missing Payload"));
    assert_eq!(dead[0].reason.as_str(), "permanent");

    // 14:01: the time lock holds; nothing is touched.
    let r = round(&env, "2025-11-24T14:01:00Z");
    assert_eq!(r["processed"], 0);
    assert_eq!(r["round"], serde_json::Value::Null);
    assert_eq!(env.rows::<QueueRow>(), queue);

    // 14:02: S-101 succeeds on its retry.
    let r = round(&env, "2025-11-24T14:02:00Z");
    assert_eq!(
        (r["succeeded"].as_i64(), r["retried"].as_i64()),
        (Some(1), Some(1))
    );
    let finals = env.rows::<FinalRow>();
    assert_eq!(ids(&finals, |r| &r.sample_id), ["S-101", "S-103"]);
    let s101 = finals.iter().find(|r| r.sample_id == "S-101").unwrap();
    assert_eq!(s101.attempts, 2);

    // S-999 is retried at 14:06, 14:14, 14:30 and 15:02, and dead-lettered at the 6th failure.
    for at in ["14:06", "14:14", "14:30"] {
        let r = round(&env, &format!("2025-11-24T{at}:00Z"));
        assert_eq!(
            (r["processed"].as_i64(), r["retried"].as_i64()),
            (Some(1), Some(1)),
            "{at}"
        );
    }
    let queue = env.rows::<QueueRow>();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].retry_count, 5);
    assert_eq!(
        queue[0].process_after.to_rfc3339(),
        "2025-11-24T15:02:00+00:00"
    );
    let r = round(&env, "2025-11-24T15:02:00Z");
    assert_eq!(r["dead_lettered"], 1);
    assert_eq!(r["next_due"], serde_json::Value::Null);

    // Later rounds never dead-letter it again.
    let r = round(&env, "2025-11-24T16:00:00Z");
    assert_eq!(r["processed"], 0);
    let dead = env.rows::<DeadRow>();
    assert_eq!(ids(&dead, |r| &r.sample_id), ["S-102", "S-999"]);
    let s999 = dead.iter().find(|r| r.sample_id == "S-999").unwrap();
    assert_eq!(s999.reason.as_str(), "retries_exhausted");
    assert_eq!(s999.retry_count, 5);
    assert_eq!(s999.error_msg.as_deref(), Some("API Timeout"));
    assert!(env.rows::<QueueRow>().is_empty());

    // The journal: S-999 tried at the original job's times; every call's idempotency key logged;
    // S-102 never called.
    let attempts = env.rows::<AttemptRow>();
    let mut tried: Vec<String> = attempts
        .iter()
        .filter(|a| a.sample_id == "S-999")
        .map(|a| a.started_at.format("%H:%M").to_string())
        .collect();
    tried.sort();
    assert_eq!(
        tried,
        ["14:00", "14:02", "14:06", "14:14", "14:30", "15:02"]
    );
    // S-101 twice, S-102 once (journaled, not called), S-103 once, S-999 six times.
    assert_eq!(attempts.len(), 10);
    let calls = std::fs::read_to_string(env.path("calls.log")).unwrap();
    let mut calls: Vec<&str> = calls.lines().collect();
    calls.sort();
    assert_eq!(
        calls,
        [
            "S-101:0", "S-101:1", "S-103:0", "S-999:0", "S-999:1", "S-999:2", "S-999:3", "S-999:4",
            "S-999:5"
        ]
    );

    let status = env.json(&["status", "--now", "2025-11-24T16:00:00Z"]);
    assert_eq!(status["waiting"], 0);
    assert_eq!(status["final"], 2);
    assert_eq!(status["dead"], 2);
    assert_eq!(status["next_due"], serde_json::Value::Null);
    let by_error = status["dead_by_error"].as_array().unwrap();
    assert_eq!(by_error.len(), 2);
}
