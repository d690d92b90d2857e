//! A round killed at any point is completed by the next run: every record ends in exactly
//! one table, and the journal agrees.

use std::process::Stdio;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use retrylake::store::{FinalRow, QueueRow};

use super::util::{Env, assert_exactly_once, ids as ids_of, write_samples};

const STEPS: [&str; 4] = [
    "after-journal",
    "after-final",
    "after-dead-letter",
    "after-merge",
];
const NOW: &str = "2025-01-01T00:00:00Z";

#[test]
fn a_round_killed_between_commits_is_completed_on_restart() {
    killed_between_commits(Env::new, &[]);
}

#[test]
fn a_round_killed_between_commits_is_completed_on_restart_on_s3() {
    killed_between_commits(Env::s3, &[]);
}

#[test]
fn a_round_of_batches_killed_between_commits_is_completed_on_restart() {
    killed_between_commits(Env::new, &["--call-batch", "4"]);
}

fn killed_between_commits(new_env: fn() -> Env, extra: &[&str]) {
    for step in STEPS {
        let env = new_env();
        let (input, ids) = write_samples(&env, "R", 30);
        env.ok(&["enqueue", input.to_str().unwrap(), "--now", NOW]);
        let out = env
            .cmd()
            .env("RETRYLAKE_FAILPOINT", step)
            .args(["run", "--now", NOW, "--transient-rate", "0.4"])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{step}: the failpoint did not fire");

        // The next run re-applies the journaled round before anything else.
        let r = env.json(&[&["run", "--now", NOW, "--transient-rate", "0.4"], extra].concat());
        assert_eq!(
            r["processed"], 0,
            "{step}: records of the killed round were retried too early"
        );
        assert_exactly_once(&env.data(), &ids);

        // And the queue goes on to drain normally.
        env.ok(&[
            &["run", "--now", NOW, "--drain", "--transient-rate", "0.4"],
            extra,
        ]
        .concat());
        assert_exactly_once(&env.data(), &ids);
        assert!(env.rows::<QueueRow>().is_empty(), "{step}");
    }
}

#[test]
fn sigkill_at_random_moments_loses_and_doubles_nothing() {
    sigkill_at_random_moments(Env::new(), &[]);
}

#[test]
fn sigkill_at_random_moments_loses_and_doubles_nothing_on_s3() {
    sigkill_at_random_moments(Env::s3(), &[]);
}

#[test]
fn sigkill_at_random_moments_of_batches_loses_and_doubles_nothing() {
    sigkill_at_random_moments(Env::new(), &["--call-batch", "6", "--concurrency", "2"]);
}

fn sigkill_at_random_moments(env: Env, extra: &[&str]) {
    let (input, ids) = write_samples(&env, "K", 200);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", NOW]);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(2025);
    for kill in 0..6 {
        let mut child = env
            .process()
            .args([
                "run",
                "--now",
                NOW,
                "--drain",
                "--limit",
                "15",
                "--transient-rate",
                "0.4",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(150..1200)));
        child.kill().unwrap();
        child.wait().unwrap();
        // Until the next run recovers, a record of the killed round may show in two
        // tables; after it, never.
        env.ok(&[
            "run",
            "--now",
            NOW,
            "--limit",
            "1",
            "--transient-rate",
            "0.4",
        ]);
        assert_exactly_once(&env.data(), &ids);
        let _ = kill;
    }
    // Claimed-but-unjournaled records wait out their lease; the drain jumps past it.
    env.ok(&["run", "--now", NOW, "--drain", "--transient-rate", "0.4"]);
    assert_exactly_once(&env.data(), &ids);
    assert!(env.rows::<QueueRow>().is_empty());
}

#[test]
fn another_worker_completes_a_crashed_workers_round() {
    // With the journal as written (one worker per file) and after `optimize` has compacted
    // each worker's journal files apart.
    for optimize in [false, true] {
        let env = Env::new();
        let (first, mut ids) = write_samples(&env, "A", 20);
        let (second, more) = write_samples(&env, "B", 20);
        ids.extend(more);
        env.ok(&["enqueue", first.to_str().unwrap(), "--now", NOW]);
        env.ok(&[
            "run",
            "--now",
            NOW,
            "--worker",
            "w0",
            "--transient-rate",
            "0",
        ]);
        env.ok(&["enqueue", second.to_str().unwrap(), "--now", NOW]);
        let out = env
            .cmd()
            .env("RETRYLAKE_FAILPOINT", "after-journal")
            .args([
                "run",
                "--now",
                NOW,
                "--worker",
                "w1",
                "--transient-rate",
                "0",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "the failpoint did not fire");
        if optimize {
            let out = env.ok(&["optimize", "attempts"]);
            assert!(out.contains("4 files compacted into 2"), "{out}");
        }
        // w1 never comes back; w2 finds its half-applied round and completes it.
        let r = env.json(&[
            "run",
            "--now",
            NOW,
            "--worker",
            "w2",
            "--transient-rate",
            "0",
        ]);
        assert_eq!(r["processed"], 0, "optimize={optimize}: {r}");
        assert_exactly_once(&env.data(), &ids);
        // Every call succeeded (every 9th record has no payload and is dead): w1's round
        // is applied, nothing is left waiting under its lease.
        let finals = ids_of(&env.rows::<FinalRow>(), |f| &f.sample_id);
        assert_eq!(finals.len(), 34, "optimize={optimize}: {finals:?}");
        assert!(finals.contains(&"B-0001".to_owned()));
        assert!(env.rows::<QueueRow>().is_empty(), "optimize={optimize}");
    }
}
