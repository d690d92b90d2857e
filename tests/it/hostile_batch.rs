//! A hostile review of the batch processors (commit 54dbf72, `--call-batch`): answers from
//! a downstream or a command that would make a failed record look successful, guard
//! interactions of a batch as one call, and what one batch's answer costs in memory and
//! log lines.
//!
//! Each test says what it attacks and what is expected. `FAILED BEFORE THE FIX:` marks a test that the
//! code as reviewed is believed to fail (the code path named by file:line); `HOLDS:` one
//! it is believed to pass, kept as a guard.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use retrylake::store::{DeadRow, FinalRow, QueueRow};
use retrylake::{
    BatchProcessor, BreakerConfig, BreakerState, Call, FixedClock, Guard, GuardConfig, Guarded,
    Outcome, Processor, Record, RetryAfter,
};
use serde_json::Value;

use super::server::serve;
use super::util::{Background, Env};

const NOW: &str = "2025-11-24T14:00:00Z";

/// A server on 127.0.0.1 that reads each request's body, then answers every POST with
/// `status`, `headers` and `body`, whatever was sent. Returns its URL.
fn answering(status: u16, headers: &[(&'static str, &'static str)], body: Bytes) -> String {
    let headers = headers.to_vec();
    let app = Router::new().route(
        "/",
        post(move |_request: Bytes| {
            let (headers, body) = (headers.clone(), body.clone());
            async move {
                let mut response = Response::new(Body::from(body));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                for (name, value) in headers {
                    response
                        .headers_mut()
                        .insert(name, HeaderValue::from_static(value));
                }
                response
            }
        }),
    );
    format!("http://{}/", serve(app))
}

/// Enqueues `ids` (any text: written as JSON), each with a payload, all due at `NOW`.
fn enqueue(env: &Env, ids: &[&str]) {
    let lines: String = ids
        .iter()
        .map(|id| format!("{}\n", serde_json::json!({"sample_id": id, "payload": "p"})))
        .collect();
    let input = env.write("in.jsonl", lines);
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", NOW]);
}

/// One `run --json` at `NOW`, breaker off, with the processor flags and `extra`.
fn run(env: &Env, processor: &[&str], extra: &[&str]) -> Value {
    let mut args = vec!["run", "--now", NOW, "--breaker", "off"];
    args.extend_from_slice(processor);
    args.extend_from_slice(extra);
    env.json(&args)
}

fn queued(env: &Env, id: &str) -> Option<QueueRow> {
    env.rows::<QueueRow>()
        .into_iter()
        .find(|r| r.sample_id == id)
}

fn dead(env: &Env, id: &str) -> Option<DeadRow> {
    env.rows::<DeadRow>()
        .into_iter()
        .find(|r| r.sample_id == id)
}

fn done(env: &Env, id: &str) -> Option<FinalRow> {
    env.rows::<FinalRow>()
        .into_iter()
        .find(|r| r.sample_id == id)
}

/// CRC-32 (IEEE), for a gzip member's trailer.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `data` as a valid gzip member, in one stored (uncompressed) deflate block.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let len = u16::try_from(data.len()).expect("under 64 KiB");
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.push(1); // the final block, stored
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&u32::from(len).to_le_bytes());
    out
}

/// FAILED BEFORE THE FIX: a per-item answer the downstream sends in a common wrapping is taken for a
/// success of every record, its failures included.
///
/// `read_answer` (src/processor/http.rs:135) decides by the first byte after
/// `trim_start()` (http.rs:137): only `[` or `{` are read as per-item results, anything else
/// goes to `all_succeeded` (http.rs:158), "a success for every record, the body its
/// response". `trim_start` does not strip U+FEFF (not Unicode White_Space), so the very
/// array of results a .NET or PowerShell service writes with a UTF-8 byte-order mark, the
/// same array in UTF-16 (lossy-decoded: it starts with U+FFFD), the array double-encoded
/// as a JSON string (a classic `json.dumps` inside a JSON framework), or gzip-encoded by a
/// proxy (reqwest is built without decompression, and nothing looks at
/// Content-Encoding) all make `bad-1` (a permanent failure) and `busy-1` (a transient
/// one) `final_results` successes. The commit message says "a failure must never be taken
/// for a success".
///
/// Expected: none of these answers puts a record in `final_results`: a body in an
/// encoding or wrapping the processor cannot read (a BOM, a charset other than UTF-8, a
/// Content-Encoding, a JSON string holding results) fails the batch transiently (or is
/// unwrapped and read).
#[test]
fn a_per_item_answer_in_a_common_wrapping_is_not_taken_for_success() {
    let items = r#"[{"id":"bad-1","outcome":"permanent","error":"unknown lab"},{"id":"busy-1","outcome":"transient","error":"busy"}]"#;
    let json = "application/json";
    let with_bom = format!("\u{feff}{items}");
    let utf16: Vec<u8> = with_bom
        .encode_utf16()
        .flat_map(|unit| unit.to_le_bytes())
        .collect();
    type Headers = Vec<(&'static str, &'static str)>;
    let cases: Vec<(&str, Headers, Vec<u8>)> = vec![
        (
            "UTF-8 with a byte-order mark",
            vec![("content-type", json)],
            with_bom.clone().into_bytes(),
        ),
        (
            "UTF-16LE",
            vec![("content-type", "application/json; charset=utf-16")],
            utf16,
        ),
        (
            "the array as a JSON string",
            vec![("content-type", json)],
            serde_json::to_string(items).unwrap().into_bytes(),
        ),
        (
            "gzip",
            vec![("content-type", json), ("content-encoding", "gzip")],
            gzip_stored(items.as_bytes()),
        ),
    ];
    for (case, headers, body) in cases {
        let url = answering(200, &headers, Bytes::from(body));
        let env = Env::new();
        enqueue(&env, &["bad-1", "busy-1"]);
        run(
            &env,
            &["--processor", "http", "--url", &url],
            &["--call-batch", "10"],
        );
        let finals = env.rows::<FinalRow>();
        assert!(
            finals.is_empty(),
            "{case}: records the downstream failed were stored as successes: {finals:?}"
        );
        assert_eq!(
            env.rows::<QueueRow>().len() + env.rows::<DeadRow>().len(),
            2,
            "{case}"
        );
    }
}

/// FAILED BEFORE THE FIX: a downstream that answers one batch with millions of tiny items makes the
/// worker hold over a gigabyte for an answer the bound says is at most 64 MiB.
///
/// `MAX_BATCH_ANSWER` (src/processor/batch.rs:72) bounds the bytes read, but
/// `read_answer` parses them all at once into `Vec<serde_json::Value>`
/// (src/processor/http.rs:145): `[0,0,0,...]` costs 2 bytes an item on the wire and 32
/// bytes an item parsed, so 64 MiB of answer is 33.5 million values, about 1 GiB (and
/// more while the vector grows), per batch in flight: with the default --concurrency 16,
/// enough to have the worker killed for memory (a crash the promise rules out). None of
/// the items is an object, so not one of them could ever place a record.
///
/// Expected: the worker's peak resident memory stays well under a gigabyte (here: under
/// 640 MiB, room for the 64 MiB body and the process's own baseline); every record fails
/// transiently; none succeeds.
#[test]
fn an_answer_of_millions_of_tiny_items_does_not_take_gigabytes() {
    // 1024 records: 64 KiB each, the bound is the 64 MiB ceiling.
    let ids: Vec<String> = (0..1024).map(|i| format!("r-{i:04}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let items = (64 << 20) / 2 - 1;
    let mut body = Vec::with_capacity(2 * items + 1);
    body.push(b'[');
    for _ in 1..items {
        body.extend_from_slice(b"0,");
    }
    body.extend_from_slice(b"0]");
    assert!(body.len() <= 64 << 20);
    let url = answering(
        200,
        &[("content-type", "application/json")],
        Bytes::from(body),
    );
    let env = Env::new();
    enqueue(&env, &ids);
    let args = [
        "run",
        "--now",
        NOW,
        "--breaker",
        "off",
        "--processor",
        "http",
        "--url",
        url.as_str(),
        "--call-batch",
        "1024",
        "--concurrency",
        "1",
        // An unoptimised test build reads 33 million items slowly: no timeout meanwhile.
        "--timeout",
        "300s",
    ];
    // Errors only: the log lines per item are another test's subject.
    let mut worker = Background::spawn(&env, "huge", &args, &[("RETRYLAKE_LOG", "error")]);
    let pid = worker.pid().as_raw();
    let peak_kib = |pid: i32| -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
        line.trim().trim_end_matches("kB").trim().parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut peak: u64 = 0;
    while worker.is_running() {
        if let Some(kib) = peak_kib(pid) {
            peak = peak.max(kib);
        }
        assert!(
            Instant::now() < deadline,
            "the round did not end in 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let finished = worker.wait(Duration::from_secs(10));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(env.rows::<FinalRow>().is_empty(), "no item placed a record");
    assert_eq!(env.rows::<QueueRow>().len(), 1024);
    assert!(
        peak < 640 * 1024,
        "peak resident memory {} MiB for one 64 MiB answer",
        peak / 1024
    );
}

/// FAILED BEFORE THE FIX: a downstream (or a command) decides how many log lines one batch writes: one
/// warning per unreadable item or line, so a 200 KB answer writes 100,000 lines, and a
/// 64 MiB one (the bound) about 33 million (gigabytes of log per batch).
///
/// src/processor/http.rs:165 logs `item N of the batch's answer: ...` for every item
/// `read_item` refuses, and src/processor/command.rs:198 logs every unreadable line of a
/// command's stdout, both at warn (on by default: `retrylake=info`). Only the first
/// reason is kept for the records' error (`Answers::note`), so the rest is pure log.
///
/// Expected: a bounded number of log lines per batch (a few, then a count), well under
/// 1,000 here; every record fails transiently.
#[test]
fn junk_items_in_an_answer_do_not_write_a_log_line_each() {
    let ids = ["r-1", "r-2", "r-3", "r-4"];
    // Four records: a 256 KiB bound. 100,001 numbers in 200,003 bytes.
    let body = format!("[{}0]", "0,".repeat(100_000));
    let url = answering(
        200,
        &[("content-type", "application/json")],
        Bytes::from(body),
    );
    let http = ["--processor", "http", "--url", url.as_str()];
    // 100,000 lines of "x" (200,000 bytes), none of them JSON.
    let command = [
        "--processor",
        "command",
        "--command",
        "yes x | head -n 100000",
    ];
    for processor in [&http[..], &command[..]] {
        let env = Env::new();
        enqueue(&env, &ids);
        let mut args = vec!["run", "--now", NOW, "--breaker", "off", "--json"];
        args.extend_from_slice(processor);
        args.extend_from_slice(&["--call-batch", "4"]);
        let out = env.cmd().args(&args).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let head: String = stderr.chars().take(2000).collect();
        assert!(out.status.success(), "{processor:?}: {head}");
        assert!(env.rows::<FinalRow>().is_empty(), "{processor:?}");
        let lines = stderr.lines().count();
        assert!(
            lines < 1000,
            "{processor:?}: one batch wrote {lines} log lines"
        );
    }
}

/// A batch command in Python that answers `ok` records and dies of an uncaught exception
/// on a `crash` record (exit status 1, the traceback on stderr), as any script does on a
/// record it cannot handle.
const CRASHING: &str = r#"
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    if "crash" in r["id"]:
        raise RuntimeError("cannot handle " + r["id"])
    print(json.dumps({"id": r["id"], "outcome": "success"}), flush=True)
"#;

/// FAILED BEFORE THE FIX (contract): a batch command that crashes on one record dead-letters every
/// batch-mate it never got to.
///
/// A record no line answers "takes the exit status's outcome" (src/processor/command.rs:204
/// through `Finished::outcome`, command.rs:131): exit 1, the status of any Python, Node or
/// shell script that dies of an error, is permanent, so `c-ok`, which the command never
/// read, is dead-lettered with `RuntimeError: cannot handle b-crash` as its error, no
/// retry. The change's own reasoning for a batch processor's panic (src/layer.rs, the
/// batch `CatchPanic`: "the record that caused it cannot be told from its batch-mates, who
/// should not die with it") applies word for word to a command's crash; per record, exit 1
/// spoke for that one record only.
///
/// Expected: the records a batch command left unanswered are not failed permanently by an
/// exit status (they fail transiently, and the one whose content kills the command runs out
/// of retries on its own); the answered `a-ok` is stored.
#[test]
fn a_batch_command_that_crashes_does_not_dead_letter_the_records_it_never_read() {
    let env = Env::new();
    let script = env.write("crashing.py", CRASHING);
    let command = format!("python3 {}", script.display());
    // Due at once, a batch's records come sorted by id: a-ok, b-crash, c-ok.
    enqueue(&env, &["a-ok", "b-crash", "c-ok"]);
    run(
        &env,
        &["--processor", "command", "--command", &command],
        &["--call-batch", "10"],
    );
    assert!(done(&env, "a-ok").is_some(), "answered before the crash");
    assert_eq!(
        dead(&env, "c-ok"),
        None,
        "a record the command never read was dead-lettered"
    );
    let c = queued(&env, "c-ok").expect("c-ok waits for a retry");
    assert_eq!(c.retry_count, 1);
}

/// A batch command in Python whose answers only resemble the records' ids, or are
/// malformed: nothing in its output answers `a` or `é`.
const LOOKALIKES: &str = r#"
import json, sys
for line in sys.stdin:
    pass
out = sys.stdout.buffer
def emit(item):
    out.write((json.dumps(item) + "\n").encode())
emit({"id": "a ", "outcome": "success"})
emit({"id": "A", "outcome": "success"})
emit({"id": "\ufeffa", "outcome": "success"})
emit({"id": "e\u0301", "outcome": "success"})
emit({"id": "ghost", "outcome": "success"})
out.write(b'{"id": "\xe9", "outcome": "success"}\n')
out.write(b'{"id": "a", "outcome": "success"\n')
out.write(b'{"id": "a", "outcome": "success"}\x00\n')
out.write(b'[{"id": "a", "outcome": "success"}]\n')
out.write(b'{"id": "a", "outcome": "success"}{"id": "a", "outcome": "permanent"}\n')
out.flush()
"#;

/// HOLDS: answers that only look like a record's are not its answer. Ids are matched
/// exactly (src/processor/batch.rs, `Answers::answer`): a trailing space, another case, a
/// BOM, the NFD spelling of `é`, an id not in the batch, `é` in Latin-1 (lossy-decoded to
/// U+FFFD) are ignored; a line cut short, an object followed by a NUL or by a second
/// object, an array of items are unreadable lines. With exit 0, both records fail
/// transiently ("no answer"); neither is a success.
#[test]
fn answers_that_only_look_like_a_records_are_not_its_answer() {
    let env = Env::new();
    let script = env.write("lookalikes.py", LOOKALIKES);
    let command = format!("python3 {}", script.display());
    enqueue(&env, &["a", "\u{e9}"]);
    run(
        &env,
        &["--processor", "command", "--command", &command],
        &["--call-batch", "10"],
    );
    assert!(
        env.rows::<FinalRow>().is_empty(),
        "{:?}",
        env.rows::<FinalRow>()
    );
    for id in ["a", "\u{e9}"] {
        let row = queued(&env, id).unwrap_or_else(|| panic!("{id} not queued"));
        assert_eq!(row.retry_count, 1, "{row:?}");
        assert!(
            row.error_msg
                .as_deref()
                .unwrap_or_default()
                .starts_with("the command gave no answer for this record"),
            "{row:?}"
        );
    }
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
}

fn record(id: &str) -> Record {
    Record {
        sample_id: id.into(),
        payload: Some("p".into()),
        retry_count: 0,
    }
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// A guard whose breaker one failed call opens for 30 s, opened at `at(0)`: half-open,
/// ready for a probe, at `at(30)`.
fn opened_guard() -> Guard {
    let guard = Guard::new(GuardConfig {
        breaker: Some(BreakerConfig {
            failure_share: 0.5,
            window: 1,
            min_calls: 1,
            cool_down: Duration::from_secs(30),
        }),
        rate: None,
    });
    guard.record(&Outcome::transient("down"), at(0), Duration::ZERO);
    guard
}

/// Answers with fixed outcomes: per record the first, per batch all of them.
struct Fixed(Vec<Outcome>);

#[async_trait]
impl Processor for Fixed {
    async fn process(&self, _record: &Record) -> Outcome {
        self.0[0].clone()
    }
}

#[async_trait]
impl BatchProcessor for Fixed {
    async fn process_batch(&self, _records: &[Record]) -> Vec<Outcome> {
        self.0.clone()
    }
}

/// FAILED BEFORE THE FIX: the very same batch failing probe after probe is never charged, though one
/// record is charged on its second failed probe in a row.
///
/// `Guarded::call_batch` (src/layer.rs:330) asks `held_probe` for each record in turn, and
/// `Guard::charge_failed_probe` (src/guard.rs:419) remembers one record only: for the
/// probe batch [A, B] it sets A, then B; on the next probe A is not "again" (the last one
/// was B), nor is B (the last one is now A). So A and B go back uncharged probe after
/// probe, forever, while `Guarded::call_batch`'s doc promises "a failed probe's records
/// are held or charged each as `Guarded::call` does for one", and the guard's own purpose
/// ("a record whose own content makes the downstream fail cannot hold the breaker open")
/// fails for a batch whose records all make the downstream fail: the queue probes it every
/// cool-down without its retries ever running out. (Which record is charged even depends
/// on the order of the batch: [B, A] would charge B.)
///
/// Expected: like the single record of the control, the records of a batch whose probe
/// already failed the time before are charged (`Call::Made`) on the second failed probe.
#[tokio::test]
async fn the_same_batch_failing_probe_after_probe_is_charged_like_one_record() {
    let down = || Outcome::transient("HTTP 503");
    // The control: one record, two failed probes in a row; the second is charged.
    let clock = FixedClock::new(at(30));
    let one = Guarded::new(
        Fixed(vec![down()]),
        opened_guard(),
        &clock,
        Duration::from_secs(3600),
    );
    let first = one.call(&record("A"), later()).await;
    assert!(matches!(first, Call::Held { .. }), "{first:?}");
    clock.set(at(60));
    let second = one.call(&record("A"), later()).await;
    assert!(matches!(second, Call::Made { .. }), "{second:?}");

    // The same two records probed together, probe after probe.
    let clock = FixedClock::new(at(30));
    let batch = Guarded::new(
        Fixed(vec![down(), down()]),
        opened_guard(),
        &clock,
        Duration::from_secs(3600),
    );
    let records = [record("A"), record("B")];
    let first = batch.call_batch(&records, later()).await;
    assert!(
        first.iter().all(|c| matches!(c, Call::Held { .. })),
        "the first failed probe is free: {first:?}"
    );
    let mut charged = Vec::new();
    for probe in 1..=5 {
        clock.set(at(30 + 30 * probe));
        let calls = batch.call_batch(&records, later()).await;
        assert_eq!(calls.len(), 2);
        charged.push(
            calls
                .iter()
                .filter(|c| matches!(c, Call::Made { .. }))
                .count(),
        );
    }
    assert_eq!(
        charged[0], 2,
        "records charged at each of five more failed probes of the same batch: {charged:?}"
    );
}

/// FAILED BEFORE THE FIX: in a probe batch the downstream answered (one record stored), a record that
/// failed transiently is treated as a failed probe: held uncharged, its own Retry-After
/// dropped.
///
/// `batch_outcome` (src/layer.rs:344) counts the batch a success, so the breaker closes; but
/// `held_probe` is then asked per record (src/layer.rs:330) and turns B's transient
/// failure into `Call::Held { until: None }` (`blocked_until` is `None` once the breaker
/// closed): B's call is made but not journaled, it keeps no backoff, and its `retry_after`
/// (the downstream's "not before 10 minutes" for B) is lost, so B is called again in the
/// very next round. The guard also remembers B as a failed probe after a call that showed
/// the downstream answers (src/guard.rs:445 cleared it first), so B's first probe in the
/// next outage is charged.
///
/// Expected: a probe batch that was not a failed call for the guard is not a failed probe:
/// every record's outcome is kept (`Call::Made`), B's with its Retry-After.
#[tokio::test]
async fn a_probe_batch_the_downstream_answered_keeps_each_records_outcome() {
    let clock = FixedClock::new(at(30));
    let guard = opened_guard();
    let asked = Outcome::Transient {
        error: "HTTP 429".into(),
        retry_after: Some(RetryAfter::Delay(Duration::from_secs(600))),
        class: None,
    };
    let stored = Outcome::success("stored");
    let batch = Guarded::new(
        Fixed(vec![stored.clone(), asked.clone()]),
        guard.clone(),
        &clock,
        Duration::from_secs(3600),
    );
    let calls = batch.call_batch(&[record("A"), record("B")], later()).await;
    assert_eq!(guard.breaker(at(30)), Some(BreakerState::Closed));
    assert!(
        matches!(&calls[0], Call::Made { outcome, .. } if *outcome == stored),
        "{calls:?}"
    );
    assert!(
        matches!(&calls[1], Call::Made { outcome, .. } if *outcome == asked),
        "B's failure in a batch the downstream answered: {calls:?}"
    );
}
