//! Alerts when records die (`--on-dead-letter`): every dead letter reaches the hook at
//! least once, with a key that is the same for every delivery of one alert, whatever the
//! hook or the process does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use retrylake::store::DeadRow;

use super::util::{Background, Env, write_samples};

/// The dead letters' ids, as the table holds them.
fn dead_ids(env: &Env) -> BTreeSet<String> {
    env.rows::<DeadRow>()
        .into_iter()
        .map(|d| d.sample_id)
        .collect()
}

/// A command hook that keeps each delivery in a file of its own under `dir`.
fn keeping_hook(dir: &std::path::Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    format!(
        "cat > '{}'/\"$RETRYLAKE_IDEMPOTENCY_KEY.$$\"",
        dir.display()
    )
}

/// The alerts the keeping hook received: key -> the ids of each delivery.
fn kept(dir: &std::path::Path) -> BTreeMap<String, Vec<Vec<String>>> {
    let mut alerts: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let alert: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ids = alert["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["sample_id"].as_str().unwrap().to_owned())
            .collect();
        alerts
            .entry(alert["idempotency_key"].as_str().unwrap().to_owned())
            .or_default()
            .push(ids);
    }
    alerts
}

fn all_ids(alerts: &BTreeMap<String, Vec<Vec<String>>>) -> BTreeSet<String> {
    alerts.values().flatten().flatten().cloned().collect()
}

/// The requests a webhook received: key, body and the status it answered.
type Requests = Arc<Mutex<Vec<(String, serde_json::Value, u16)>>>;

/// A webhook that answers 503 to its first `failures` requests, then 200, keeping every
/// request's key and body.
fn webhook(failures: usize) -> (String, Requests) {
    let seen: Requests = Arc::default();
    let kept = seen.clone();
    let app = Router::new().route(
        "/alerts",
        post(move |headers: HeaderMap, body: Bytes| {
            let seen = kept.clone();
            async move {
                let mut seen = seen.lock().unwrap();
                let status = if seen.len() < failures { 503 } else { 200 };
                let key = headers
                    .get("idempotency-key")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                seen.push((key, serde_json::from_slice(&body).unwrap(), status));
                StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let addr = super::server::serve(app);
    (format!("http://{addr}/alerts"), seen)
}

#[test]
fn dead_letters_reach_a_webhook_that_fails_at_first_each_alert_with_one_key() {
    let env = Env::new();
    let (input, _) = write_samples(&env, "W", 40);
    env.ok(&[
        "enqueue",
        input.to_str().unwrap(),
        "--now",
        "2025-11-24T14:00:00Z",
    ]);
    let (url, seen) = webhook(2);
    env.ok(&[
        "run",
        "--processor",
        "simulate",
        "--transient-rate",
        "0.5",
        "--max-retries",
        "1",
        "--now",
        "2025-11-24T14:00:00Z",
        "--drain",
        "--on-dead-letter",
        &url,
    ]);
    let dead = dead_ids(&env);
    assert!(dead.len() > 5, "{dead:?}");
    let seen = seen.lock().unwrap();
    let delivered: BTreeSet<String> = seen
        .iter()
        .filter(|(_, _, status)| *status == 200)
        .flat_map(|(_, body, _)| body["dead_letters"].as_array().unwrap().clone())
        .map(|d| d["sample_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered, dead, "every dead letter delivered");
    // The failed deliveries were tried again under the same key, as the body says too.
    let failed: Vec<&String> = seen.iter().filter(|s| s.2 == 503).map(|s| &s.0).collect();
    assert_eq!(failed.len(), 2);
    for key in failed {
        assert!(
            seen.iter().any(|s| &s.0 == key && s.2 == 200),
            "{key} never delivered"
        );
    }
    for (key, body, _) in seen.iter() {
        assert_eq!(
            key,
            &format!("{}:0", body["idempotency_key"].as_str().unwrap())
        );
        let first = &body["dead_letters"][0];
        assert!(
            first["reason"].is_string() && first["failed_at"].is_string(),
            "{body}"
        );
    }
}

#[test]
fn a_hook_that_fails_keeps_its_alerts_for_the_next_run_and_the_rounds_go_on() {
    let env = Env::new();
    let (input, _) = write_samples(&env, "F", 20);
    env.ok(&["enqueue", input.to_str().unwrap()]);
    let out = env
        .cmd()
        .args([
            "run",
            "--processor",
            "simulate",
            "--transient-rate",
            "0",
            "--on-dead-letter",
            "echo hook down >&2; exit 3",
        ])
        .output()
        .unwrap();
    // The round committed; the alert failed, was logged, and waits.
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dead-letter alert") && stderr.contains("hook down"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let dead = dead_ids(&env);
    assert_eq!(dead.len(), 3);
    // A later run (nothing left to process) delivers them.
    let dir = env.path("alerts");
    env.ok(&[
        "run",
        "--processor",
        "simulate",
        "--on-dead-letter",
        &keeping_hook(&dir),
    ]);
    assert_eq!(all_ids(&kept(&dir)), dead);
    // And only once: a third run has nothing to deliver.
    env.ok(&[
        "run",
        "--processor",
        "simulate",
        "--on-dead-letter",
        &keeping_hook(&dir),
    ]);
    let alerts = kept(&dir);
    assert_eq!(
        alerts.values().map(Vec::len).sum::<usize>(),
        1,
        "{alerts:?}"
    );
}

#[test]
fn a_run_killed_after_its_round_commits_alerts_on_the_next_run() {
    let env = Env::new();
    let (input, _) = write_samples(&env, "K", 30);
    env.ok(&["enqueue", input.to_str().unwrap()]);
    let dir = env.path("alerts");
    let hook = keeping_hook(&dir);
    for step in ["after-merge", "after-dead-letter"] {
        let out = env
            .cmd()
            .args([
                "run",
                "--processor",
                "simulate",
                "--transient-rate",
                "0",
                "--limit",
                "9",
                "--on-dead-letter",
                &hook,
            ])
            .env("RETRYLAKE_FAILPOINT", step)
            .output()
            .unwrap();
        assert!(!out.status.success(), "the failpoint {step} stops the run");
    }
    // Whatever the killed runs delivered, the next run delivers the rest.
    env.ok(&[
        "run",
        "--processor",
        "simulate",
        "--transient-rate",
        "0",
        "--on-dead-letter",
        &hook,
    ]);
    let dead = dead_ids(&env);
    assert_eq!(dead.len(), 4);
    assert_eq!(all_ids(&kept(&dir)), dead);
    super::util::assert_each_attempt_once(&env);
}

#[test]
fn two_workers_alerting_at_once_deliver_every_dead_letter_under_one_key_each() {
    let env = Env::new();
    let (input, _) = write_samples(&env, "T", 90);
    env.ok(&["enqueue", input.to_str().unwrap()]);
    let dir = env.path("alerts");
    let hook = keeping_hook(&dir);
    let workers: Vec<Background> = (0..2)
        .map(|i| {
            let shard = format!("{i}/2");
            let name = format!("w{i}");
            Background::spawn(
                &env,
                &name,
                &[
                    "run",
                    "--processor",
                    "simulate",
                    "--transient-rate",
                    "0.3",
                    "--max-retries",
                    "1",
                    "--base-backoff",
                    "1s",
                    "--drain",
                    "--poll",
                    "200ms",
                    "--worker",
                    &name,
                    "--shard",
                    &shard,
                    "--on-dead-letter",
                    &hook,
                ],
                &[],
            )
        })
        .collect();
    for w in workers {
        let done = w.wait(std::time::Duration::from_secs(120));
        assert!(done.status.success(), "{}", done.stderr);
    }
    let dead = dead_ids(&env);
    let alerts = kept(&dir);
    assert_eq!(all_ids(&alerts), dead);
    // A key delivered twice (both workers raced to one commit) carries the same letters.
    for (key, deliveries) in &alerts {
        assert!(
            deliveries.windows(2).all(|w| w[0] == w[1]),
            "{key}: {deliveries:?}"
        );
    }
}

#[test]
fn a_bad_hook_is_refused_before_anything_runs() {
    let env = Env::new();
    let (input, _) = write_samples(&env, "B", 3);
    env.ok(&["enqueue", input.to_str().unwrap()]);
    for hook in ["", "   ", "http://exa mple.com/x", "https://"] {
        let err = env.fails(&["run", "--processor", "simulate", "--on-dead-letter", hook]);
        assert!(err.contains("--on-dead-letter"), "{hook:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(env.rows::<retrylake::store::AttemptRow>().is_empty());
}
