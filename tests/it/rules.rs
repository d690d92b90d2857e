//! Rules per error (`--rules FILE`) through the binary: each failure a rule matches is
//! treated as the rule says (permanent, its own schedule, a snooze that counts no retry),
//! the attempts name the rule, and status shows snoozed records apart.

use retrylake::store::{AttemptRow, DeadRow, QueueRow};

use super::server::Server;
use super::util::{Env, assert_each_attempt_once, assert_each_once, assert_exactly_once};

const NOW: &str = "2025-11-24T14:00:00Z";

fn now() -> chrono::DateTime<chrono::Utc> {
    NOW.parse().unwrap()
}

const RULES: &str = r#"
# 429: not yet. Wait, no retry counted (at most three in a row).
[[rule]]
name = "throttled"
status = [429]
action = "snooze"
wait = "5m"
max_snoozes = 3

# A maintenance window: wait an hour, twice at most.
[[rule]]
name = "maintenance"
message = "maintenance window"
action = "snooze"
wait = "1h"
max_snoozes = 2

# A 500 here is a bug of ours: no retry will fix it.
[[rule]]
name = "server-bug"
status = [500]
action = "permanent"

# A 422 here is a race with another writer: retry fast, once.
[[rule]]
name = "race"
status = [422]
action = "transient"
base_backoff = "10s"
max_retries = 1
"#;

fn enqueue(env: &Env, ids: &[&str]) {
    let lines: String = ids
        .iter()
        .map(|id| format!("{{\"sample_id\":\"{id}\",\"payload\":\"p\"}}\n"))
        .collect();
    let input = env.write("in.jsonl", lines);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", NOW]);
}

fn row<T>(rows: Vec<T>, id: &str, key: impl Fn(&T) -> &str) -> T {
    rows.into_iter()
        .find(|r| key(r) == id)
        .unwrap_or_else(|| panic!("{id} not found"))
}

#[test]
fn each_failure_a_rule_matches_is_treated_as_the_rule_says() {
    let server = Server::start();
    let env = Env::new();
    let ids = [
        "ratelimited-1",
        "unavailable-1",
        "internal-1",
        "invalid-1",
        "ok-1",
    ];
    enqueue(&env, &ids);
    let rules = env.write("rules.toml", RULES);
    let http = [
        "--processor",
        "http",
        "--url",
        &server.url(),
        "--rules",
        rules.to_str().unwrap(),
        "--breaker",
        "off",
    ];
    let r = env.json(&[&["run", "--now", NOW][..], &http].concat());
    assert_eq!(
        (
            &r["succeeded"],
            &r["snoozed"],
            &r["retried"],
            &r["dead_lettered"]
        ),
        (&1.into(), &2.into(), &1.into(), &1.into()),
        "{r}"
    );
    let queue = env.rows::<QueueRow>();
    // Snoozed: no retry counted, the longer of the wait and the Retry-After (600 s).
    let throttled = row(queue.clone(), "ratelimited-1", |r| &r.sample_id);
    assert_eq!((throttled.retry_count, throttled.snoozes), (0, 1));
    assert!(throttled.process_after >= now() + chrono::Duration::minutes(10));
    let maintenance = row(queue.clone(), "unavailable-1", |r| &r.sample_id);
    assert_eq!((maintenance.retry_count, maintenance.snoozes), (0, 1));
    assert!(maintenance.process_after >= now() + chrono::Duration::hours(1));
    // Its own schedule: 10 s, one retry counted.
    let race = row(queue, "invalid-1", |r| &r.sample_id);
    assert_eq!((race.retry_count, race.snoozes), (1, 0));
    assert!(
        race.process_after < now() + chrono::Duration::minutes(1),
        "{race:?}"
    );
    // Permanent although a 500 is transient by default.
    let bug = row(env.rows::<DeadRow>(), "internal-1", |r| &r.sample_id);
    assert_eq!(bug.reason.as_str(), "permanent");
    // The journal names each rule, and the snoozes.
    let attempts = env.rows::<AttemptRow>();
    let named = |id: &str| {
        let a = row(attempts.clone(), id, |r| &r.sample_id);
        (a.rule, a.disposition.as_str(), a.outcome.as_str())
    };
    assert_eq!(
        named("ratelimited-1"),
        (Some("throttled".into()), "snooze", "transient")
    );
    assert_eq!(
        named("unavailable-1"),
        (Some("maintenance".into()), "snooze", "transient")
    );
    assert_eq!(
        named("internal-1"),
        (Some("server-bug".into()), "dead", "transient")
    );
    assert_eq!(
        named("invalid-1"),
        (Some("race".into()), "retry", "permanent")
    );
    assert_eq!(named("ok-1"), (None, "final", "success"));
    // Status shows the snoozed records apart.
    let status: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", "--now", NOW, "--json"])).unwrap();
    assert_eq!(
        (&status["waiting"], &status["snoozed"]),
        (&3.into(), &2.into())
    );
    let text = env.ok(&["status", "--now", NOW]);
    assert!(text.contains("2 waiting out a snooze"), "{text}");
    let report = env.path("report.html");
    env.ok(&["report", "--out", report.to_str().unwrap(), "--now", NOW]);
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.contains("<b>2</b>snoozed (no retry counted)"),
        "the report shows them"
    );
    // The audit agrees: a snooze counts no retry, a rule's retry of a permanent failure
    // counts one.
    assert_each_once(&env.data(), &ids.map(String::from));

    // Drained: at each retry count the snoozes stop at their cap in a row, and the next
    // such failure counts a retry of the default schedule (five), then the record dies;
    // the race rule's one retry, then dead.
    env.ok(&[&["run", "--now", NOW, "--drain"][..], &http].concat());
    assert_exactly_once(&env.data(), &ids.map(String::from));
    assert_each_attempt_once(&env);
    let dead = env.rows::<DeadRow>();
    let died = |id: &str| {
        let d = row(dead.clone(), id, |r| &r.sample_id);
        (d.reason.as_str().to_owned(), d.retry_count)
    };
    assert_eq!(died("ratelimited-1"), ("retries_exhausted".into(), 5));
    assert_eq!(died("unavailable-1"), ("retries_exhausted".into(), 5));
    assert_eq!(died("invalid-1"), ("retries_exhausted".into(), 1));
    let attempts = env.rows::<AttemptRow>();
    let count = |id: &str, disposition: &str| {
        attempts
            .iter()
            .filter(|a| a.sample_id == id && a.disposition.as_str() == disposition)
            .count()
    };
    assert_eq!(count("ratelimited-1", "snooze"), 3 * 6);
    assert_eq!(count("ratelimited-1", "retry"), 5);
    assert_eq!(count("unavailable-1", "snooze"), 2 * 6);
    assert_eq!(count("unavailable-1", "retry"), 5);
}

#[test]
fn a_snooze_stops_at_the_records_age_limit() {
    let server = Server::start();
    let env = Env::new();
    enqueue(&env, &["ratelimited-1"]);
    let rules = env.write(
        "rules.toml",
        "[[rule]]\nname = \"throttled\"\nstatus = [429]\naction = \"snooze\"\nwait = \"1m\"\nmax_age = \"30m\"\n",
    );
    let r = env.json(&[
        "run",
        "--now",
        "2025-11-24T14:40:00Z",
        "--processor",
        "http",
        "--url",
        &server.url(),
        "--rules",
        rules.to_str().unwrap(),
        "--breaker",
        "off",
    ]);
    // Enqueued at 14:00, 40 minutes ago: past the age limit, a retry is counted.
    assert_eq!(
        (&r["snoozed"], &r["retried"]),
        (&0.into(), &1.into()),
        "{r}"
    );
    let a = row(env.rows::<AttemptRow>(), "ratelimited-1", |r| &r.sample_id);
    assert_eq!(
        (a.rule.as_deref(), a.disposition.as_str()),
        (Some("throttled"), "retry")
    );
}

#[test]
fn a_command_exit_status_and_a_batch_items_class_are_matched() {
    let env = Env::new();
    enqueue(&env, &["a", "b"]);
    let rules = env.write(
        "rules.toml",
        "[[rule]]\nname = \"usage\"\nexit_code = [64]\naction = \"transient\"\nmax_retries = 0\n\n\
         [[rule]]\nname = \"deadlock\"\nclass = [\"deadlock\"]\naction = \"snooze\"\nwait = \"1s\"\n",
    );
    // Per record: exit 64 is permanent by default; the rule makes it transient, with no
    // retry left: dead as retries_exhausted.
    env.ok(&[
        "run",
        "--now",
        NOW,
        "--processor",
        "command",
        "--command",
        "exit 64",
        "--rules",
        rules.to_str().unwrap(),
        "--limit",
        "1",
    ]);
    let d = row(env.rows::<DeadRow>(), "a", |r| &r.sample_id);
    assert_eq!(d.reason.as_str(), "retries_exhausted");
    // A batch item's class.
    let answer = r#"printf '{"id":"b","outcome":"transient","class":"deadlock","error":"d"}\n'"#;
    let r = env.json(&[
        "run",
        "--now",
        NOW,
        "--processor",
        "command",
        "--command",
        answer,
        "--call-batch",
        "5",
        "--rules",
        rules.to_str().unwrap(),
    ]);
    assert_eq!(r["snoozed"], 1, "{r}");
}

#[test]
fn a_bad_rules_file_is_refused_before_anything_runs() {
    let env = Env::new();
    enqueue(&env, &["a"]);
    let rules = env.write(
        "rules.toml",
        "[[rule]]\nname = \"x\"\nstatus = [429]\naction = \"nap\"\n",
    );
    let err = env.fails(&["run", "--now", NOW, "--rules", rules.to_str().unwrap()]);
    assert!(
        err.contains("rules.toml") && err.contains("rule 1 ('x'): unknown action 'nap'"),
        "{err}"
    );
    let err = env.fails(&["run", "--now", NOW, "--rules", "/no/such/file.toml"]);
    assert!(err.contains("/no/such/file.toml: cannot read it"), "{err}");
    assert_eq!(env.rows::<QueueRow>().len(), 1);
    assert!(env.rows::<AttemptRow>().is_empty(), "nothing ran");
}

#[test]
fn tables_made_before_snoozes_and_rules_are_upgraded_by_the_first_writer() {
    use retrylake::store::{Rows, Table};
    let env = Env::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The four tables as an older retrylake made them, one record queued.
    rt.block_on(async {
        for table in Table::ALL {
            let path = env.data_dir().join(table.name());
            std::fs::create_dir_all(&path).unwrap();
            let url = deltalake::ensure_table_uri(path.to_str().unwrap()).unwrap();
            let old: Vec<_> = table
                .delta_columns()
                .into_iter()
                .filter(|f| !["snoozes", "rule"].contains(&f.name().as_str()))
                .collect();
            let t = deltalake::DeltaTable::try_from_url(url)
                .await
                .unwrap()
                .create()
                .with_table_name(table.name())
                .with_columns(old)
                .await
                .unwrap();
            if table == Table::RetryQueue {
                let row = QueueRow {
                    sample_id: "old-1".into(),
                    payload: Some("p".into()),
                    error_msg: Some("503".into()),
                    retry_count: 2,
                    process_after: now(),
                    enqueued_at: now(),
                    snoozes: 0,
                };
                let batch = QueueRow::to_batch(&[row]).unwrap();
                let old = batch.project(&[0, 1, 2, 3, 4, 5]).unwrap();
                t.write(vec![old]).await.unwrap();
            }
        }
    });
    // A reader changes nothing, and sees no snoozed record.
    let status: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", "--now", NOW, "--json"])).unwrap();
    assert_eq!(
        (&status["waiting"], &status["snoozed"]),
        (&1.into(), &0.into())
    );
    let history = env.ok(&["history", "retry_queue"]);
    assert!(!history.contains("upgrade"), "{history}");
    // The first writer adds the columns, in the history. SQL reads the old file (no
    // `snoozes`) beside a new one.
    let input = env.write("new.jsonl", "{\"sample_id\":\"new-1\",\"payload\":\"p\"}\n");
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", NOW]);
    let status: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", "--now", NOW, "--json"])).unwrap();
    assert_eq!(
        (&status["waiting"], &status["snoozed"]),
        (&2.into(), &0.into())
    );
    let out = env.ok(&[
        "query",
        "SELECT sample_id, coalesce(snoozes, -1) AS s FROM retry_queue ORDER BY sample_id",
        "--format",
        "csv",
    ]);
    assert!(
        out.contains("new-1,-1") && out.contains("old-1,-1"),
        "{out}"
    );
    // The old record reads as never snoozed and goes on from its retry count.
    let r = env.json(&["run", "--now", NOW, "--transient-rate", "1"]);
    assert_eq!(r["retried"], 2, "{r}");
    let history = env.ok(&["history", "retry_queue", "--json"]);
    assert!(history.contains("upgrade"), "{history}");
    let queued = row(env.rows::<QueueRow>(), "old-1", |r| &r.sample_id);
    assert_eq!((queued.retry_count, queued.snoozes), (3, 0));
    let out = env.ok(&[
        "query",
        "SELECT count(*) AS n FROM attempts WHERE rule IS NULL AND sample_id = 'old-1'",
        "--format",
        "csv",
    ]);
    assert!(out.contains("\n1"), "{out}");
    // Opening again upgrades nothing more.
    env.ok(&["run", "--now", NOW, "--transient-rate", "1"]);
    let upgrades = env
        .ok(&["history", "retry_queue", "--json"])
        .matches("upgrade")
        .count();
    assert_eq!(upgrades, 1);
}
