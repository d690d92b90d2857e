//! Batch calls (`--call-batch`) through the binary: the http processor against a real
//! server on 127.0.0.1 that answers per item, and the command processor running a real
//! child per batch. Every record must get its own outcome.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use retrylake::store::{AttemptRow, DeadRow, FinalRow, QueueRow};
use serde_json::{Value, json};

use super::server::serve;
use super::util::{Env, assert_each_attempt_once};

const NOW: &str = "2025-11-24T14:00:00Z";

fn now() -> DateTime<Utc> {
    NOW.parse().unwrap()
}

/// How the batch server answers a whole batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A JSON array with an item per record, each by its id's prefix.
    Items,
    /// The same items inside `{"results": [...]}`.
    Results,
    /// 503 with `Retry-After: 120`.
    Down,
    /// 200 with a plain-text body.
    Plain,
    /// 200 with an empty body.
    Empty,
    /// 200 with the start of an array that never ends.
    Broken,
}

/// One batch request as the server saw it.
#[derive(Debug, Clone)]
struct Request {
    key: String,
    items: Vec<Value>,
}

#[derive(Clone)]
struct Shared {
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Request>>>,
}

struct BatchServer {
    url: String,
    shared: Shared,
}

impl BatchServer {
    fn start() -> BatchServer {
        let shared = Shared {
            mode: Arc::new(Mutex::new(Mode::Items)),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        let addr = serve(
            Router::new()
                .route("/", post(answer))
                .with_state(shared.clone()),
        );
        BatchServer {
            url: format!("http://{addr}/"),
            shared,
        }
    }

    fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    fn seen(&self) -> Vec<Request> {
        self.shared.seen.lock().unwrap().clone()
    }
}

/// The item answering one record, by its id's prefix; `None` for no item.
fn item(id: &str) -> Vec<Value> {
    match id.split('-').next().unwrap_or_default() {
        "ok" => vec![json!({"id": id, "outcome": "success", "response": {"stored": id}})],
        "busy" => {
            vec![json!({"id": id, "outcome": "transient", "error": "busy", "retry_after": 600})]
        }
        "bad" => vec![json!({"id": id, "status": 422, "error": "unknown lab"})],
        "limited" => vec![json!({"id": id, "status": 429})],
        "skip" => vec![],
        "twice" => vec![
            json!({"id": id, "outcome": "success"}),
            json!({"id": id, "outcome": "permanent", "error": "no"}),
        ],
        "garbled" => vec![json!({"id": id, "outcome": "done"})],
        _ => vec![json!({"id": id, "outcome": "permanent", "error": "unknown test id"})],
    }
}

async fn answer(State(shared): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let items: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
    shared.seen.lock().unwrap().push(Request {
        key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        items: items.clone(),
    });
    let mut answers: Vec<Value> = items
        .iter()
        .flat_map(|i| item(i["id"].as_str().unwrap_or_default()))
        .collect();
    // An item for a record the batch does not hold is ignored.
    answers.push(json!({"id": "ghost", "outcome": "success"}));
    let mode = *shared.mode.lock().unwrap();
    match mode {
        Mode::Items => (StatusCode::OK, Value::Array(answers).to_string()).into_response(),
        Mode::Results => (StatusCode::OK, json!({"results": answers}).to_string()).into_response(),
        Mode::Down => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "120")],
            "maintenance",
        )
            .into_response(),
        Mode::Plain => (StatusCode::OK, "stored").into_response(),
        Mode::Empty => StatusCode::OK.into_response(),
        Mode::Broken => (StatusCode::OK, "[{\"id\": \"ok-1\", \"outc").into_response(),
    }
}

fn enqueue(env: &Env, ids: &[&str]) {
    let lines: String = ids
        .iter()
        .map(|id| format!("{{\"sample_id\":\"{id}\",\"payload\":{{\"value\":42}}}}\n"))
        .collect();
    let input = env.write("in.jsonl", lines);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", NOW]);
}

fn run(env: &Env, processor: &[&str], extra: &[&str]) -> Value {
    let mut args = vec!["run", "--now", NOW, "--breaker", "off"];
    args.extend_from_slice(processor);
    args.extend_from_slice(extra);
    env.json(&args)
}

fn find<T>(rows: Vec<T>, id: &str, key: impl Fn(&T) -> &str) -> Option<T> {
    rows.into_iter().find(|r| key(r) == id)
}

fn queued(env: &Env, id: &str) -> QueueRow {
    find(env.rows::<QueueRow>(), id, |r| &r.sample_id).unwrap_or_else(|| panic!("{id} not queued"))
}

fn dead(env: &Env, id: &str) -> DeadRow {
    find(env.rows::<DeadRow>(), id, |r| &r.sample_id).unwrap_or_else(|| panic!("{id} not dead"))
}

fn done(env: &Env, id: &str) -> FinalRow {
    find(env.rows::<FinalRow>(), id, |r| &r.sample_id).unwrap_or_else(|| panic!("{id} not final"))
}

const IDS: [&str; 8] = [
    "ok-1",
    "ok-2",
    "busy-1",
    "bad-1",
    "limited-1",
    "skip-1",
    "twice-1",
    "garbled-1",
];

/// Every record of `IDS` went where its item sends it.
fn assert_items_applied(env: &Env) {
    assert_eq!(
        done(env, "ok-1").response.as_deref(),
        Some(r#"{"stored":"ok-1"}"#)
    );
    assert_eq!(
        done(env, "ok-2").response.as_deref(),
        Some(r#"{"stored":"ok-2"}"#)
    );
    let busy = queued(env, "busy-1");
    assert_eq!(
        (busy.retry_count, busy.error_msg.as_deref()),
        (1, Some("busy"))
    );
    assert!(
        busy.process_after >= now() + chrono::Duration::seconds(600),
        "{busy:?}"
    );
    let bad = dead(env, "bad-1");
    assert_eq!(
        (bad.error_msg.as_deref(), bad.reason.as_str()),
        (Some("unknown lab"), "permanent")
    );
    assert_eq!(queued(env, "limited-1").retry_count, 1);
    let skipped = queued(env, "skip-1");
    assert!(
        skipped
            .error_msg
            .as_deref()
            .unwrap()
            .starts_with("the batch's answer has no result for this record"),
        "{skipped:?}"
    );
    assert_eq!(
        queued(env, "twice-1").error_msg.as_deref(),
        Some("the batch's answer gives this record two different outcomes")
    );
    let garbled = queued(env, "garbled-1").error_msg.unwrap();
    assert!(garbled.contains("unknown \"outcome\" 'done'"), "{garbled}");
    assert_eq!(
        env.rows::<AttemptRow>().len(),
        IDS.len(),
        "one journal row per record"
    );
    assert_each_attempt_once(env);
}

#[test]
fn each_record_of_a_batch_gets_its_own_outcome() {
    for mode in [Mode::Items, Mode::Results] {
        let server = BatchServer::start();
        server.set(mode);
        let env = Env::new();
        enqueue(&env, &IDS);
        let r = run(
            &env,
            &["--processor", "http", "--url", &server.url],
            &["--call-batch", "3", "--concurrency", "1"],
        );
        assert_eq!(
            (r["processed"].as_u64(), r["succeeded"].as_u64()),
            (Some(8), Some(2)),
            "{mode:?}: {r}"
        );
        assert_eq!(
            (r["retried"].as_u64(), r["dead_lettered"].as_u64()),
            (Some(5), Some(1)),
            "{r}"
        );
        let seen = server.seen();
        // Eight records, at most three a call: three calls, each with its own batch key,
        // and each record inside with its own key.
        let sizes: Vec<usize> = seen.iter().map(|r| r.items.len()).collect();
        assert_eq!(sizes, [3, 3, 2], "{mode:?}");
        for request in &seen {
            assert!(
                request.key.starts_with("batch-") && request.key.len() == 22,
                "{}",
                request.key
            );
            for item in &request.items {
                let id = item["id"].as_str().unwrap();
                assert_eq!(item["idempotency_key"], format!("{id}:0"));
                assert_eq!(item["attempt"], 0);
                assert_eq!(item["data"], r#"{"value":42}"#);
            }
        }
        let mut keys: Vec<&str> = seen.iter().map(|r| r.key.as_str()).collect();
        keys.dedup();
        assert_eq!(keys.len(), 3);
        assert_items_applied(&env);
    }
}

#[test]
fn a_whole_batch_answer_applies_to_every_record() {
    let ids = ["ok-1", "bad-1", "skip-1"];
    for (mode, check) in [
        (Mode::Down, "HTTP 503 Service Unavailable: maintenance"),
        (Mode::Broken, "the batch's answer could not be read"),
        (Mode::Plain, "stored"),
        (Mode::Empty, ""),
    ] {
        let server = BatchServer::start();
        server.set(mode);
        let env = Env::new();
        enqueue(&env, &ids);
        run(
            &env,
            &["--processor", "http", "--url", &server.url],
            &["--call-batch", "10"],
        );
        assert_eq!(server.seen().len(), 1, "{mode:?}: one call");
        for id in ids {
            match mode {
                Mode::Plain | Mode::Empty => {
                    assert_eq!(done(&env, id).response.as_deref(), Some(check), "{mode:?}");
                }
                _ => {
                    let row = queued(&env, id);
                    assert!(
                        row.error_msg.as_deref().unwrap().starts_with(check),
                        "{mode:?}: {row:?}"
                    );
                    assert_eq!(row.retry_count, 1);
                    if mode == Mode::Down {
                        assert!(row.process_after >= now() + chrono::Duration::seconds(120));
                    }
                }
            }
        }
    }
}

#[test]
fn a_trickle_is_not_held_back_to_fill_a_batch() {
    // One record due and --call-batch 1000: it is sent at once, alone.
    let server = BatchServer::start();
    let env = Env::new();
    enqueue(&env, &["ok-1"]);
    let r = run(
        &env,
        &["--processor", "http", "--url", &server.url],
        &["--call-batch", "1000"],
    );
    assert_eq!(r["succeeded"], 1);
    assert_eq!(server.seen().len(), 1);
}

/// A batch command in Python: answers each record by its id's prefix, and records each
/// batch it was given (one line per batch, its size and key) in `calls`.
const COMMAND: &str = r#"
import json, os, sys
with open(sys.argv[1], "a") as calls:
    calls.write(f"{os.environ['RETRYLAKE_BATCH_SIZE']} {os.environ['RETRYLAKE_IDEMPOTENCY_KEY']}\n")
for line in sys.stdin:
    r = json.loads(line)
    kind = r["id"].split("-")[0]
    if kind == "ok":
        print(json.dumps({"id": r["id"], "outcome": "success", "response": r["data"]}))
    elif kind == "busy":
        print(json.dumps({"id": r["id"], "outcome": "transient", "error": "busy"}))
    elif kind == "bad":
        print(json.dumps({"id": r["id"], "outcome": "permanent", "error": "no such lab"}))
    elif kind == "garbled":
        print("this is not JSON")
    elif kind == "quit":
        sys.stdout.flush()
        print("giving up", file=sys.stderr)
        sys.exit(int(r["id"].split("-")[1]))
sys.stdout.flush()
"#;

fn command_args(env: &Env) -> Vec<String> {
    let script = env.write("batch.py", COMMAND);
    let calls = env.path("calls.txt");
    vec![
        "--processor".into(),
        "command".into(),
        "--command".into(),
        format!("python3 {} {}", script.display(), calls.display()),
    ]
}

#[test]
fn a_batch_command_answers_each_record_on_its_own_line() {
    let env = Env::new();
    let ids = ["ok-1", "ok-2", "busy-1", "bad-1", "silent-1", "garbled-1"];
    enqueue(&env, &ids);
    let processor = command_args(&env);
    let processor: Vec<&str> = processor.iter().map(String::as_str).collect();
    let r = run(
        &env,
        &processor,
        &["--call-batch", "4", "--concurrency", "1"],
    );
    assert_eq!(r["processed"], 6, "{r}");
    let calls = std::fs::read_to_string(env.path("calls.txt")).unwrap();
    let sizes: Vec<&str> = calls
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(sizes, ["4", "2"], "{calls}");
    assert!(
        calls
            .lines()
            .all(|l| l.split(' ').nth(1).unwrap().starts_with("batch-"))
    );
    assert_eq!(
        done(&env, "ok-1").response.as_deref(),
        Some(r#"{"value":42}"#)
    );
    assert_eq!(queued(&env, "busy-1").error_msg.as_deref(), Some("busy"));
    assert_eq!(
        dead(&env, "bad-1").error_msg.as_deref(),
        Some("no such lab")
    );
    // Not answered: transient; the unreadable line is named by its number.
    let silent = queued(&env, "silent-1").error_msg.unwrap();
    assert_eq!(silent, "the command gave no answer for this record");
    let garbled = queued(&env, "garbled-1").error_msg.unwrap();
    assert!(
        garbled.starts_with(
            "the command gave no answer for this record (answer line 3 of the command: not JSON"
        ),
        "{garbled}"
    );
    assert_each_attempt_once(&env);
}

#[test]
fn a_batch_command_that_exits_early_fails_only_the_records_it_did_not_answer() {
    // Whatever the exit status: the record that made the command give up cannot be told
    // from the ones it never read.
    for code in ["75", "3"] {
        let env = Env::new();
        // In a batch, records come sorted by id when due at once: both oks first.
        let exit = format!("quit-{code}");
        let ids = ["ok-1", exit.as_str(), "ok-2"];
        enqueue(&env, &ids);
        let processor = command_args(&env);
        let processor: Vec<&str> = processor.iter().map(String::as_str).collect();
        run(&env, &processor, &["--call-batch", "10"]);
        for id in ["ok-1", "ok-2"] {
            assert!(
                done(&env, id).response.is_some(),
                "answered before the exit"
            );
        }
        let row = queued(&env, &exit);
        assert_eq!(
            (row.error_msg.as_deref(), row.retry_count),
            (Some("giving up"), 1),
            "exit {code}"
        );
    }
}
