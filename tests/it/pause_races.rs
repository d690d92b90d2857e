//! A pause and a resume are metadata commits of `retry_queue`: every round's commit that
//! races one conflicts, reads again, and goes on. Toggled again and again under two live
//! workers, nothing fails, nothing is lost or doubled.

use std::time::{Duration, Instant};

use super::util::{Background, Env, assert_exactly_once, write_samples};

#[test]
fn pause_and_resume_again_and_again_under_two_workers_lose_and_double_nothing() {
    let env = Env::new();
    let (input, ids) = write_samples(&env, "P", 300);
    env.ok(&["enqueue", input.to_str().unwrap()]);
    let workers: Vec<Background> = (0..2)
        .map(|i| {
            let name = format!("w{i}");
            Background::spawn(
                &env,
                &name,
                &[
                    "worker",
                    "--processor",
                    "simulate",
                    "--transient-rate",
                    "0.3",
                    "--base-backoff",
                    "200ms",
                    "--max-backoff",
                    "1s",
                    "--limit",
                    "20",
                    "--poll",
                    "100ms",
                    "--worker",
                    &name,
                ],
                &[],
            )
        })
        .collect();
    for i in 0..10 {
        let reason = format!("toggle {i}");
        env.ok(&["pause", "--reason", &reason]);
        std::thread::sleep(Duration::from_millis(150));
        // While paused, the journal does not grow past the rounds in flight.
        env.ok(&["resume"]);
        std::thread::sleep(Duration::from_millis(150));
    }
    let started = Instant::now();
    loop {
        let status = env.json(&["status"]);
        if status["waiting"] == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not drained: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for w in workers {
        let done = w.stop(Duration::from_secs(30));
        assert!(done.status.success(), "{}", done.stderr);
        assert!(
            !done.stderr.contains("ERROR") && !done.stderr.contains("error:"),
            "{}",
            done.stderr
        );
    }
    let history = env.ok(&["history", "retry_queue"]);
    assert_eq!(history.matches(" pause ").count(), 10, "{history}");
    assert_exactly_once(&env.data(), &ids);
}

#[test]
fn a_paused_queue_stops_a_running_worker_within_a_poll_and_takes_enqueues() {
    let env = Env::new();
    let (input, ids) = write_samples(&env, "Q", 40);
    env.ok(&["enqueue", input.to_str().unwrap()]);
    env.ok(&["pause", "--reason", "before the worker"]);
    let worker = Background::spawn(
        &env,
        "w",
        &[
            "worker",
            "--processor",
            "simulate",
            "--transient-rate",
            "0",
            "--poll",
            "100ms",
        ],
        &[],
    );
    std::thread::sleep(Duration::from_millis(800));
    let (more, more_ids) = write_samples(&env, "R", 10);
    env.ok(&["enqueue", more.to_str().unwrap()]);
    let status = env.json(&["status"]);
    assert_eq!(
        status["waiting"], 50,
        "nothing claimed while paused: {status}"
    );
    assert_eq!(status["paused"]["reason"], "before the worker", "{status}");
    env.ok(&["resume"]);
    let started = Instant::now();
    while env.json(&["status"])["waiting"] != 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "not drained");
        std::thread::sleep(Duration::from_millis(100));
    }
    let done = worker.stop(Duration::from_secs(30));
    assert!(
        done.stderr.contains("queue paused") && done.stderr.contains("queue resumed"),
        "{}",
        done.stderr
    );
    let all: Vec<String> = ids.into_iter().chain(more_ids).collect();
    assert_exactly_once(&env.data(), &all);
}
