//! Traps a user falls into, closed: reading commands on a path without tables, limits of
//! zero, a breaker that can never open, worker flags that would be ignored, and a
//! processor chosen silently. Each is exit 2 with one line naming what is wrong, and
//! nothing written.

use std::time::Duration;

use super::util::{Env, write_samples};

const NOW: &str = "2025-11-24T14:00:00Z";

/// Runs the binary with `args`, at most `secs` seconds (a command that should have been
/// refused may instead run forever), and asserts exit code 2; returns stderr.
fn refused(env: &Env, args: &[&str]) -> String {
    let out = env
        .cmd()
        .args(args)
        .timeout(Duration::from_secs(20))
        .output()
        .expect("run");
    let stderr = String::from_utf8(out.stderr).expect("utf8 stderr");
    assert_eq!(out.status.code(), Some(2), "retrylake {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    // One line naming what is wrong (clap adds its pointer to --help below a flag error).
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    stderr
}

/// The four reading commands, the report writing to `report`.
fn readers(report: &str) -> Vec<Vec<&str>> {
    vec![
        vec!["status"],
        vec!["status", "--json"],
        vec!["query", "SELECT COUNT(*) FROM retry_queue"],
        vec!["history"],
        vec!["history", "final_results"],
        vec!["report", "--out", report],
    ]
}

#[test]
fn reading_commands_on_a_path_without_tables_say_so() {
    let env = Env::new();
    let report = env.path("report.html");
    let data = env.data().url;
    for args in readers(report.to_str().unwrap()) {
        let err = refused(&env, &args);
        assert!(
            err.contains("no retrylake tables") && err.contains(&data),
            "{args:?}: {err}"
        );
        assert!(!env.data_dir().exists(), "{args:?} created {data}");
    }
    assert!(!report.exists(), "no report of an empty queue");
    // The same path through RETRYLAKE_DATA, and the default ./retrylake-data.
    let out = super::util::bare_cmd()
        .env("RETRYLAKE_DATA", &data)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = super::util::bare_cmd()
        .current_dir(env.dir.path())
        .arg("history")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("./retrylake-data"), "{err}");
    assert!(!env.path("retrylake-data").exists());

    // Commands that write create the tables, as before; then the readers read them.
    env.ok(&["init"]);
    let status = env.json(&["status"]);
    assert_eq!(status["waiting"], 0);
}

#[test]
fn a_partial_set_of_tables_names_the_missing_ones() {
    let env = Env::new();
    env.ok(&["init"]);
    std::fs::remove_dir_all(env.data_dir().join("attempts")).unwrap();
    std::fs::remove_dir_all(env.data_dir().join("final_results")).unwrap();
    let report = env.path("report.html");
    for args in readers(report.to_str().unwrap()) {
        let err = refused(&env, &args);
        assert!(
            err.contains("final_results") && err.contains("attempts") && err.contains("missing"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("retry_queue,"), "{args:?}: {err}");
        assert!(
            !env.data_dir().join("attempts").exists(),
            "{args:?} created attempts"
        );
    }
    assert!(!report.exists());
    // A writing command completes the set.
    env.ok(&["init"]);
    env.ok(&["status"]);
}

#[test]
fn reading_commands_on_an_empty_s3_prefix_say_so() {
    let env = Env::s3();
    let report = env.path("report.html");
    let data = env.data().url;
    for args in readers(report.to_str().unwrap()) {
        let err = refused(&env, &args);
        assert!(
            err.contains("no retrylake tables") && err.contains(&data),
            "{args:?}: {err}"
        );
    }
    assert!(!report.exists());
    // Had any reader created a table, the set would now be partial or complete.
    let err = refused(&env, &["status"]);
    assert!(err.contains("no retrylake tables"), "{err}");
    env.ok(&["init"]);
    assert_eq!(env.json(&["status"])["waiting"], 0);
}

#[test]
fn an_unknown_dead_letter_reason_is_refused() {
    let env = Env::new();
    let err = refused(&env, &["redrive", "--reason", "vanished"]);
    assert!(
        err.contains("--reason") && err.contains("unknown dead-letter reason 'vanished'"),
        "{err}"
    );
    assert!(err.contains("retries_exhausted"), "{err}");
    assert!(!env.data_dir().exists(), "created the tables");
}

#[test]
fn limits_of_zero_are_refused() {
    let env = Env::new();
    for (args, flag) in [
        (vec!["run", "--limit", "0"], "--limit"),
        (vec!["run", "--batch-size", "0"], "--batch-size"),
        (vec!["run", "--concurrency", "0"], "--concurrency"),
        (vec!["run", "--poll", "0s", "--drain"], "--poll"),
        (vec!["run", "--timeout", "0s"], "--timeout"),
        (
            vec!["worker", "--processor", "simulate", "--limit", "0"],
            "--limit",
        ),
        (vec!["redrive", "--limit", "0"], "--limit"),
    ] {
        let err = refused(&env, &args);
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!env.data_dir().exists(), "{args:?} created the tables");
    }
}

#[test]
fn a_breaker_that_can_never_open_is_refused() {
    let env = Env::new();
    for args in [
        vec!["run", "--breaker-window", "10", "--breaker-min-calls", "20"],
        // min-calls defaults to 50.
        vec!["run", "--processor", "simulate", "--breaker-window", "20"],
        vec![
            "worker",
            "--processor",
            "simulate",
            "--breaker",
            "on",
            "--breaker-window",
            "5",
            "--breaker-min-calls",
            "6",
        ],
    ] {
        let err = refused(&env, &args);
        assert!(
            err.contains("--breaker-window") && err.contains("--breaker-min-calls"),
            "{args:?}: {err}"
        );
        assert!(!env.data_dir().exists(), "{args:?} created the tables");
    }
    // Equal is fine: the breaker weighs a full window.
    env.ok(&[
        "run",
        "--breaker-window",
        "20",
        "--breaker-min-calls",
        "20",
        "--now",
        NOW,
    ]);
}

#[test]
fn a_worker_refuses_the_flags_it_would_ignore() {
    let env = Env::new();
    for flag in [
        &["--now", NOW][..],
        &["--drain"][..],
        &["--json"][..],
        &["--drain", "--now", NOW][..],
    ] {
        let mut args = vec!["worker", "--processor", "simulate"];
        args.extend(flag);
        let err = refused(&env, &args);
        assert!(err.contains(flag[0]), "{args:?}: {err}");
        assert!(err.contains("worker"), "{args:?}: {err}");
        assert!(!env.data_dir().exists(), "{args:?} created the tables");
    }
}

#[test]
fn a_worker_needs_an_explicit_processor() {
    let env = Env::new();
    let (input, _) = write_samples(&env, "P", 5);
    let err = refused(&env, &["worker", "--input", input.to_str().unwrap()]);
    assert!(
        err.contains("--processor") && err.contains("http|command|simulate"),
        "{err}"
    );
    assert!(!env.data_dir().exists(), "nothing enqueued or created");
}

#[test]
fn run_without_a_processor_says_it_only_simulates() {
    let env = Env::new();
    let (input, _) = write_samples(&env, "Q", 5);
    let out = env
        .cmd()
        .args(["run", "--input", input.to_str().unwrap(), "--now", NOW])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("simulat")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("warning") && warnings[0].contains("--processor"),
        "{stderr}"
    );
    // Chosen explicitly: no warning.
    let out = env
        .cmd()
        .args(["run", "--processor", "simulate", "--now", NOW])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("simulat"), "{stderr}");
}
