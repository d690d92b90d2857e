//! A round killed between any two of its commits is completed by the next run: every record
//! ends in exactly one table.

use std::collections::HashMap;

use retrylake::store::{AttemptRow, DeadRow, FinalRow, QueueRow};

use super::util::Env;

const STEPS: [&str; 4] = [
    "after-journal",
    "after-final",
    "after-dead-letter",
    "after-merge",
];

fn check_exactly_once(env: &Env, expected: usize) {
    let mut seen: HashMap<String, &str> = HashMap::new();
    let finals = env.rows::<FinalRow>();
    let dead = env.rows::<DeadRow>();
    let queue = env.rows::<QueueRow>();
    let attempts = env.rows::<AttemptRow>();
    let all = finals
        .iter()
        .map(|r| (&r.sample_id, "final_results"))
        .chain(dead.iter().map(|r| (&r.sample_id, "dead_letter_queue")))
        .chain(queue.iter().map(|r| (&r.sample_id, "retry_queue")));
    for (id, table) in all {
        if let Some(other) = seen.insert(id.clone(), table) {
            panic!("{id} is in both {other} and {table}");
        }
    }
    assert_eq!(seen.len(), expected, "records lost");
    for f in &finals {
        assert!(
            attempts
                .iter()
                .any(|a| a.sample_id == f.sample_id && a.outcome == "success"),
            "{} final without a journaled success",
            f.sample_id
        );
    }
    for q in &queue {
        let tries = attempts
            .iter()
            .filter(|a| a.sample_id == q.sample_id)
            .count();
        assert_eq!(
            tries as i32, q.retry_count,
            "{} retry count vs journal",
            q.sample_id
        );
    }
}

#[test]
fn a_round_killed_between_commits_is_completed_on_restart() {
    for step in STEPS {
        let env = Env::new();
        let mut lines = String::new();
        for i in 0..30 {
            let payload = if i % 7 == 0 { "" } else { "data" };
            lines.push_str(&format!(
                "{{\"sample_id\":\"R-{i}\",\"payload\":\"{payload}\"}}\n"
            ));
        }
        let input = env.write("in.jsonl", lines);
        env.ok(&[
            "enqueue",
            input.to_str().unwrap(),
            "--now",
            "2025-01-01T00:00:00Z",
        ]);
        let out = env
            .cmd()
            .env("RETRYLAKE_FAILPOINT", step)
            .args([
                "run",
                "--now",
                "2025-01-01T00:00:00Z",
                "--transient-rate",
                "0.4",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{step}: the failpoint did not fire");

        // The next run re-applies the journaled round before anything else.
        let r = env.json(&[
            "run",
            "--now",
            "2025-01-01T00:00:00Z",
            "--transient-rate",
            "0.4",
        ]);
        assert_eq!(
            r["processed"], 0,
            "{step}: records of the killed round were retried too early"
        );
        check_exactly_once(&env, 30);

        // And the queue goes on to drain normally.
        env.ok(&[
            "run",
            "--now",
            "2025-01-01T00:00:00Z",
            "--drain",
            "--transient-rate",
            "0.4",
        ]);
        check_exactly_once(&env, 30);
        assert!(env.rows::<QueueRow>().is_empty(), "{step}");
    }
}
