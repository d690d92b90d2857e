//! redrive through the binary: filters, the journal, and crash safety.

use retrylake::store::{DeadRow, QueueRow};

use super::util::{Env, assert_exactly_once, ids, write_samples};

fn setup() -> (Env, Vec<String>) {
    let env = Env::new();
    let (input, all) = write_samples(&env, "X", 40);
    env.ok(&[
        "enqueue",
        input.to_str().unwrap(),
        "--now",
        "2025-01-01T00:00:00Z",
    ]);
    // Every call fails: 5 empty payloads dead-letter at once, the rest after their retries.
    env.ok(&[
        "run",
        "--now",
        "2025-01-01T00:00:00Z",
        "--drain",
        "--transient-rate",
        "1",
        "--max-retries",
        "1",
    ]);
    (env, all)
}

#[test]
fn redrive_moves_matching_dead_letters_back_and_they_run_again() {
    let (env, all) = setup();
    assert_eq!(env.rows::<DeadRow>().len(), 40);
    let r: serde_json::Value = serde_json::from_str(&env.ok(&[
        "redrive",
        "--reason",
        "permanent",
        "--now",
        "2025-01-02T00:00:00Z",
        "--json",
    ]))
    .unwrap();
    assert_eq!(r["redriven"], 5);
    let queue = env.rows::<QueueRow>();
    assert_eq!(queue.len(), 5);
    assert!(
        queue
            .iter()
            .all(|q| q.retry_count == 0 && q.error_msg.as_deref() == Some("Missing Payload"))
    );
    assert_eq!(
        queue[0].process_after.to_rfc3339(),
        "2025-01-02T00:00:00+00:00"
    );
    assert_exactly_once(&env.data(), &all);

    let out = env.ok(&[
        "redrive",
        "--id",
        "X-0001",
        "--id",
        "X-0002",
        "--now",
        "2025-01-02T00:00:00Z",
    ]);
    assert!(out.contains("redrove 2"), "{out}");
    let out = env.ok(&[
        "redrive",
        "--error-msg",
        "API Timeout / 503 Service Unavailable",
        "--limit",
        "3",
        "--now",
        "2025-01-02T00:00:00Z",
    ]);
    assert!(out.contains("redrove 3"), "{out}");
    assert_eq!(env.rows::<QueueRow>().len(), 10);
    assert_exactly_once(&env.data(), &all);

    // The redriven records run again: succeed now the downstream is back.
    env.ok(&[
        "run",
        "--now",
        "2025-01-02T00:00:00Z",
        "--transient-rate",
        "0",
        "--allow-empty-payload",
    ]);
    assert!(env.rows::<QueueRow>().is_empty());
    assert_exactly_once(&env.data(), &all);
    assert_eq!(env.rows::<DeadRow>().len(), 30);
}

#[test]
fn an_interrupted_redrive_loses_and_doubles_nothing() {
    for step in [
        "after-journal",
        "after-final",
        "after-merge",
        "after-dead-letter",
    ] {
        let (env, all) = setup();
        let out = env
            .cmd()
            .env("RETRYLAKE_FAILPOINT", step)
            .args(["redrive", "--now", "2025-01-02T00:00:00Z"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{step}: the failpoint did not fire");
        // Any command that writes recovers first.
        env.ok(&["redrive", "--id", "none", "--now", "2025-01-02T00:00:00Z"]);
        assert_exactly_once(&env.data(), &all);
        assert_eq!(
            ids(&env.rows::<QueueRow>(), |r| &r.sample_id),
            all,
            "{step}"
        );
    }
}

/// A dead letter whose `reason` another tool changed (a triage UPDATE in Spark or SQL: the
/// table is a plain Delta table) is still a dead letter: redrive moves it back as before
/// the change to a typed `DeadReason` (17b5bcc..HEAD), instead of failing every redrive and
/// every audit with "attempts is corrupt: unknown reason".
#[test]
fn a_dead_letter_with_a_reason_retrylake_did_not_write_is_still_redriven() {
    let env = Env::new();
    let input = env.write(
        "in.jsonl",
        "{\"sample_id\":\"E-1\",\"payload\":\"\"}\n{\"sample_id\":\"E-2\",\"payload\":\"\"}\n",
    );
    env.ok(&[
        "enqueue",
        input.to_str().unwrap(),
        "--now",
        "2025-01-01T00:00:00Z",
    ]);
    env.ok(&["run", "--now", "2025-01-01T00:00:00Z", "--drain"]);
    assert_eq!(
        env.rows::<DeadRow>().len(),
        2,
        "both dead as Missing Payload"
    );
    // Someone triages one dead letter in place.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let path = env.data_dir().join("dead_letter_queue");
        let url = deltalake::ensure_table_uri(path.to_str().unwrap()).unwrap();
        let table = deltalake::open_table(url).await.unwrap();
        table
            .update()
            .with_predicate("sample_id = 'E-1'")
            .with_update("reason", "'reviewed'")
            .await
            .unwrap();
    });
    // Before the change: redrive moved both back. After: the whole redrive fails.
    let out = env.ok(&["redrive", "--now", "2025-01-02T00:00:00Z", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["redriven"], 2, "{out}");
    assert!(env.rows::<DeadRow>().is_empty());
    assert_eq!(env.rows::<QueueRow>().len(), 2);
}
