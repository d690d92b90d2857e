//! A hostile review of the performance change for issue 19: records lent to the processor
//! (moved out of the claimed rows and put back), the new `timings_ms` phases, and the
//! payloads of a large input spilled to an unnamed temporary file past `SPILL_AT` (4 MB).
//!
//! Each test says what it attacks. `HOLDS:` a test believed to pass, kept as a guard;
//! `FAILS:` one believed to fail on the code as reviewed (the line at fault named).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use retrylake::store::{DeadRow, FinalRow, QueueRow};
use retrylake::{
    BatchProcessor, FixedClock, Outcome, Processor, Queue, Record, RoundConfig, RoundReport,
};
use serde_json::Value;

use super::util::{Env, assert_each_once};

const PAST: &str = "2020-01-01T00:00:00Z";

fn past() -> DateTime<Utc> {
    PAST.parse().unwrap()
}

/// What the input gives record `i` as a payload: missing (null), empty, or text with
/// multi-byte characters, quotes and backslashes.
fn small_payload(i: usize) -> Option<String> {
    match i % 4 {
        1 => None,
        3 => Some(String::new()),
        _ => Some(format!("p{i:02} é€😀 \"q\" \\ {}", "ß".repeat(i))),
    }
}

/// A JSON Lines input of `ids` with `payload(i)` (`null` for `None`).
fn jsonl(ids: &[String], payload: impl Fn(usize) -> Option<String>) -> String {
    let mut out = String::new();
    for (i, id) in ids.iter().enumerate() {
        let line = serde_json::json!({"sample_id": id, "payload": payload(i)});
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

/// A queue on a virtual clock at [`PAST`] holding `ids` with [`small_payload`].
async fn small_queue(env: &Env, ids: &[String]) -> (Queue, Arc<FixedClock>) {
    let clock = Arc::new(FixedClock::new(past()));
    let mut queue = Queue::open(&env.data().url)
        .await
        .unwrap()
        .with_clock(clock.clone());
    let input = env.write("small.jsonl", jsonl(ids, small_payload));
    queue.enqueue(&input, &Default::default()).await.unwrap();
    (queue, clock)
}

fn index_of(id: &str) -> usize {
    id.rsplit('-').next().unwrap().parse().unwrap()
}

/// What a processor saw that it should not have: a record whose id or payload is not the
/// one enqueued under that id (an id lent away, a payload of another record).
#[derive(Default)]
struct Seen {
    wrong: Mutex<Vec<String>>,
    calls: AtomicUsize,
    batches: Mutex<Vec<Vec<String>>>,
}

impl Seen {
    fn check(&self, r: &Record) {
        let ok = !r.sample_id.is_empty()
            && r.sample_id.starts_with("R-")
            && r.payload == small_payload(index_of(&r.sample_id));
        if !ok {
            self.wrong
                .lock()
                .unwrap()
                .push(format!("{:?} with {:?}", r.sample_id, r.payload));
        }
    }

    fn assert_clean(&self) {
        let wrong = self.wrong.lock().unwrap();
        assert!(
            wrong.is_empty(),
            "the processor was called with records not as enqueued: {wrong:?}"
        );
    }
}

/// The outcome every processor below gives record `id` with `payload`: a permanent
/// failure for every third index, else a success whose response names the record it is
/// for, so an outcome paired with another record shows.
fn outcome_for(id: &str, payload: Option<&str>) -> Outcome {
    if index_of(id).is_multiple_of(3) {
        Outcome::permanent(format!("perm {id}"))
    } else {
        Outcome::success(format!("resp {id} {}", payload.unwrap_or("<none>")))
    }
}

/// Calls finish in the reverse of the order they started (later calls sleep less).
struct Reversing(Seen);

#[async_trait]
impl Processor for Reversing {
    async fn process(&self, record: &Record) -> Outcome {
        self.0.check(record);
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200u64.saturating_sub(10 * n as u64))).await;
        self.0.check(record);
        outcome_for(&record.sample_id, record.payload.as_deref())
    }
}

/// Batches finish in the reverse of the order they started. The batch holding `R-06`
/// answers one outcome short; the one holding `R-12` one outcome too many.
struct ReversingBatches(Seen);

#[async_trait]
impl BatchProcessor for ReversingBatches {
    async fn process_batch(&self, records: &[Record]) -> Vec<Outcome> {
        for r in records {
            self.0.check(r);
        }
        self.0
            .batches
            .lock()
            .unwrap()
            .push(records.iter().map(|r| r.sample_id.clone()).collect());
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200u64.saturating_sub(40 * n as u64))).await;
        let mut outcomes: Vec<Outcome> = records
            .iter()
            .map(|r| outcome_for(&r.sample_id, r.payload.as_deref()))
            .collect();
        if records.iter().any(|r| r.sample_id == "R-06") {
            outcomes.pop();
        }
        if records.iter().any(|r| r.sample_id == "R-12") {
            outcomes.push(Outcome::success("an extra outcome"));
        }
        outcomes
    }
}

/// Checks each table's rows against what the processors above answer for each record:
/// the `short` ids (no outcome) retried with the batch's error, the others final or dead
/// with their own payload and their own outcome, records without a payload dead uncalled.
fn assert_paired(env: &Env, ids: &[String], short: &BTreeSet<String>) {
    assert_each_once(&env.data(), ids);
    let finals: BTreeMap<String, FinalRow> = env
        .rows::<FinalRow>()
        .into_iter()
        .map(|r| (r.sample_id.clone(), r))
        .collect();
    let dead: BTreeMap<String, DeadRow> = env
        .rows::<DeadRow>()
        .into_iter()
        .map(|r| (r.sample_id.clone(), r))
        .collect();
    let queued: BTreeMap<String, QueueRow> = env
        .rows::<QueueRow>()
        .into_iter()
        .map(|r| (r.sample_id.clone(), r))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let payload = small_payload(i);
        let uncalled = payload.as_deref().is_none_or(str::is_empty);
        if uncalled {
            let d = dead
                .get(id)
                .unwrap_or_else(|| panic!("{id} (no payload) is not dead"));
            assert_eq!(d.payload, payload, "{id}: payload of the dead letter");
        } else if short.contains(id) {
            let q = queued
                .get(id)
                .unwrap_or_else(|| panic!("{id} (no outcome) is not retried"));
            assert_eq!(q.payload, payload, "{id}: payload of the retried row");
            assert_eq!(q.retry_count, 1, "{id}");
            assert!(
                q.error_msg.as_deref().unwrap_or("").contains("no outcome"),
                "{id}: {:?}",
                q.error_msg
            );
        } else if i % 3 == 0 {
            let d = dead
                .get(id)
                .unwrap_or_else(|| panic!("{id} (permanent) is not dead"));
            assert_eq!(d.payload, payload, "{id}: payload of the dead letter");
            assert_eq!(
                d.error_msg.as_deref(),
                Some(format!("perm {id}").as_str()),
                "{id}: the outcome of another record"
            );
        } else {
            let f = finals
                .get(id)
                .unwrap_or_else(|| panic!("{id} (success) is not final"));
            assert_eq!(f.data, payload, "{id}: payload of the final row");
            assert_eq!(
                f.response.as_deref(),
                Some(format!("resp {id} {}", payload.as_deref().unwrap()).as_str()),
                "{id}: the response of another record"
            );
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("R-{i:02}")).collect()
}

/// Attack: per-record calls that end in the reverse of their start order, with records
/// without a payload (null, empty) interleaved, so `to_call` differs from the row
/// indices: each outcome must land on its own record (`tried[to_call[k]]`), and each
/// record keep its id and payload after being lent. HOLDS.
#[test]
fn per_record_outcomes_ending_out_of_order_pair_with_their_own_records() {
    let env = Env::new();
    let ids = ids(23);
    let processor = Reversing(Seen::default());
    let config = RoundConfig {
        concurrency: 8,
        ..RoundConfig::default()
    };
    let report = rt().block_on(async {
        let (mut queue, _clock) = small_queue(&env, &ids).await;
        queue.run_round(&processor, &config).await.unwrap()
    });
    processor.0.assert_clean();
    assert_eq!(report.processed, ids.len(), "{report:?}");
    assert_paired(&env, &ids, &BTreeSet::new());
}

/// Attack: batches of 5 (not a divisor of the 12 called records), ending in reverse
/// order, one answering one outcome short and one one too many, with uncalled records
/// interleaved: the outcomes are placed by `first = n * size` in the lent records, so a
/// short or long batch must neither shift its neighbours' outcomes nor panic on
/// `expect("every record is decided or called")`. HOLDS.
#[test]
fn batch_outcomes_short_long_and_out_of_order_pair_with_their_own_records() {
    let env = Env::new();
    let ids = ids(23);
    let processor = ReversingBatches(Seen::default());
    let config = RoundConfig {
        concurrency: 4,
        call_batch: 5,
        ..RoundConfig::default()
    };
    let report = rt().block_on(async {
        let (mut queue, _clock) = small_queue(&env, &ids).await;
        queue
            .run_round(&processor as &dyn BatchProcessor, &config)
            .await
            .unwrap()
    });
    processor.0.assert_clean();
    assert_eq!(report.processed, ids.len(), "{report:?}");
    let batches = processor.0.batches.lock().unwrap().clone();
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    let mut sorted = sizes.clone();
    sorted.sort();
    assert_eq!(sorted, [2, 5, 5], "batches: {batches:?}");
    // The record the short batch gave no outcome for: its last.
    let short: BTreeSet<String> = batches
        .iter()
        .filter(|b| b.iter().any(|id| id == "R-06"))
        .map(|b| b.last().unwrap().clone())
        .collect();
    assert_eq!(short.len(), 1, "{batches:?}");
    assert_paired(&env, &ids, &short);
}

/// A processor that makes its round lose its lease: it moves the round's clock past the
/// lease, then outlasts the heartbeat.
struct OutlastsLease {
    clock: Arc<FixedClock>,
    seen: Seen,
}

#[async_trait]
impl Processor for OutlastsLease {
    async fn process(&self, record: &Record) -> Outcome {
        self.seen.check(record);
        self.clock.set(past() + chrono::Duration::seconds(60));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Outcome::success("too late")
    }
}

/// Attack: a round that loses its lease mid-call drops its `call` future while the ids and
/// payloads are lent out of its rows (never given back). Nothing of that round may be
/// written, and the next worker must find every record whole. HOLDS.
#[test]
fn a_round_that_loses_its_lease_mid_call_leaves_every_record_whole() {
    let env = Env::new();
    let ids = ids(12);
    let rt = rt();
    let (mut queue, clock) = rt.block_on(small_queue(&env, &ids));
    let processor = OutlastsLease {
        clock: clock.clone(),
        seen: Seen::default(),
    };
    // Calls start within 0.3 s of the claim; the heartbeat, at 0.5 s, finds the lease over.
    let config = RoundConfig {
        lease: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
        concurrency: 16,
        ..RoundConfig::default()
    };
    let report: RoundReport = rt.block_on(queue.run_round(&processor, &config)).unwrap();
    processor.seen.assert_clean();
    assert_eq!(report.lost, ids.len(), "{report:?}");
    assert!(
        env.rows::<FinalRow>().is_empty(),
        "the lost round placed records"
    );

    // Another worker, later: every record as enqueued.
    let later = Arc::new(FixedClock::new(past() + chrono::Duration::seconds(120)));
    let second = Reversing(Seen::default());
    let report = rt.block_on(async {
        let mut w2 = Queue::open(&env.data().url)
            .await
            .unwrap()
            .with_clock(later)
            .with_worker("w2")
            .unwrap();
        w2.run_round(&second, &RoundConfig::default())
            .await
            .unwrap()
    });
    second.0.assert_clean();
    assert_eq!(report.processed, ids.len(), "{report:?}");
    assert_paired(&env, &ids, &BTreeSet::new());
}

/// `timings_ms` names every phase the README lists, each a number of milliseconds, in a
/// round that processed records and in one that found nothing due. HOLDS.
#[test]
fn timings_ms_names_every_documented_phase() {
    let env = Env::new();
    let ids = ids(5);
    let input = env.write("t.jsonl", jsonl(&ids, |i| Some(format!("x{i}"))));
    env.ok(&["enqueue", input.to_str().unwrap(), "--now", PAST]);
    let documented = [
        "prepare",
        "read",
        "process",
        "decide",
        "journal",
        "final",
        "dead_letter",
        "queue",
        "upkeep",
    ];
    for _ in 0..2 {
        let out = env.ok(&[
            "run",
            "--now",
            PAST,
            "--json",
            "--processor",
            "simulate",
            "--transient-rate",
            "0",
        ]);
        for line in out.lines() {
            let report: Value = serde_json::from_str(line).unwrap();
            let timings = report["timings_ms"].as_object().expect("timings_ms");
            let names: BTreeSet<&str> = timings.keys().map(String::as_str).collect();
            assert_eq!(names, documented.into_iter().collect(), "{line}");
            for (name, v) in timings {
                assert!(v.as_f64().is_some_and(|ms| ms >= 0.0), "{name}: {v}");
            }
        }
    }
}

// The spill of payloads to a temporary file (src/input.rs `Records`).

/// A payload of about `size` bytes, unlike any other's, mixing one- to four-byte
/// characters, quotes, backslashes and a newline, so a read back from the wrong offset
/// or cut inside a character shows.
fn big_payload(i: usize, size: usize) -> String {
    let unit = "aé€😀\"\\\nß";
    let mut s = format!("<{i}>");
    s.push_str(&unit.repeat(size / unit.len()));
    s.push_str(&format!("</{i}>"));
    s
}

/// What input record `i` of a spilled input holds: missing, empty, an object kept as
/// written, or a big text.
fn spilled_payload(i: usize, size: usize) -> Option<String> {
    match i % 13 {
        5 => None,
        7 => Some(String::new()),
        11 => Some(format!("{{\"k\":\"é{i}\",\"n\":[1,2,{i}]}}")),
        _ => Some(big_payload(i, size)),
    }
}

/// A JSON Lines line for `id` and `payload`: objects written as JSON, not as strings.
fn spilled_line(id: &str, payload: Option<&str>) -> String {
    let payload = match payload {
        Some(p) if p.starts_with('{') => p.to_owned(),
        p => serde_json::to_string(&p).unwrap(),
    };
    format!(
        "{{\"sample_id\":{},\"payload\":{payload}}}\n",
        serde_json::to_string(id).unwrap()
    )
}

/// Asserts the queue holds exactly `expected` (id to payload), byte for byte.
fn assert_queue_holds(env: &Env, expected: &BTreeMap<String, Option<String>>) {
    let rows = env.rows::<QueueRow>();
    assert_eq!(rows.len(), expected.len(), "rows in retry_queue");
    let mut wrong = Vec::new();
    for row in &rows {
        match expected.get(&row.sample_id) {
            None => wrong.push(format!("{}: not in the input", row.sample_id)),
            Some(p) if *p != row.payload => wrong.push(format!(
                "{}: payload of {} bytes {:?}..., expected {:?}...",
                row.sample_id,
                row.payload.as_ref().map_or(0, String::len),
                row.payload
                    .as_deref()
                    .map(|s| s.chars().take(12).collect::<String>()),
                p.as_deref().map(|s| s.chars().take(12).collect::<String>()),
            )),
            Some(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "{} rows wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

/// Attack: an input of about 36 MB of payloads spills several times (`SPILL_AT` each) and
/// keeps the rest in memory; its single file's window straddles both. Missing vs empty payloads,
/// objects kept as written, and multi-byte characters must all come back byte for byte.
/// HOLDS.
#[test]
fn payloads_spilled_twice_are_enqueued_byte_for_byte() {
    let env = Env::new();
    let n = 1_000;
    let size = 50_000;
    let ids: Vec<String> = (0..n).map(|i| format!("S-{i:04}")).collect();
    let expected: BTreeMap<String, Option<String>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), spilled_payload(i, size)))
        .collect();
    let text: String = ids
        .iter()
        .map(|id| spilled_line(id, expected[id].as_deref()))
        .collect();
    let bytes: usize = expected.values().flatten().map(String::len).sum();
    assert!(
        bytes > 34 << 20,
        "{bytes} bytes of payloads: two spills and a rest"
    );
    let input = env.write("spilled.jsonl", text);
    let report = rt().block_on(async {
        let mut queue = Queue::open(&env.data().url).await.unwrap();
        queue.enqueue(&input, &Default::default()).await.unwrap()
    });
    assert_eq!(report.enqueued, n);
    assert_queue_holds(&env, &expected);
}

/// Attack: a re-enqueue where most ids are already known (the sparse path: one window
/// per record, `records.window(i..i + 1)`), the new records spread over both the spilled
/// and the in-memory part of the payloads, some of them missing or empty. HOLDS.
#[test]
fn a_re_enqueue_of_mostly_known_ids_past_the_spill_reads_each_new_payload_whole() {
    let env = Env::new();
    let n = 1_000;
    let size = 30_000;
    let all: Vec<String> = (0..n).map(|i| format!("K-{i:04}")).collect();
    // Every 10th record is new; the known ones were enqueued before, small.
    let known: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 != 3)
        .map(|(_, id)| id.clone())
        .collect();
    let first = env.write("known.jsonl", jsonl(&known, |i| Some(format!("k{i}"))));
    let rt = rt();
    let mut queue = rt.block_on(Queue::open(&env.data().url)).unwrap();
    rt.block_on(queue.enqueue(&first, &Default::default()))
        .unwrap();

    let text: String = all
        .iter()
        .enumerate()
        .map(|(i, id)| spilled_line(id, spilled_payload(i, size).as_deref()))
        .collect();
    let bytes: usize = (0..n)
        .filter_map(|i| spilled_payload(i, size))
        .map(|p| p.len())
        .sum();
    assert!(
        bytes > 20 << 20,
        "{bytes} bytes of payloads: past the spill"
    );
    let second = env.write("all.jsonl", text);
    let report = rt
        .block_on(queue.enqueue(&second, &Default::default()))
        .unwrap();
    assert_eq!(report.enqueued, n / 10, "{report:?}");
    assert_eq!(report.skipped_existing, known.len(), "{report:?}");

    let mut expected: BTreeMap<String, Option<String>> = known
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), Some(format!("k{i}"))))
        .collect();
    for (i, id) in all.iter().enumerate().filter(|(i, _)| i % 10 == 3) {
        expected.insert(id.clone(), spilled_payload(i, size));
    }
    assert_queue_holds(&env, &expected);
}

/// An input of `n` records past the spill, its expected payloads, for the CLI tests.
fn spill_input(
    env: &Env,
    name: &str,
    n: usize,
    size: usize,
) -> (String, BTreeMap<String, Option<String>>) {
    let ids: Vec<String> = (0..n).map(|i| format!("T-{i:04}")).collect();
    let expected: BTreeMap<String, Option<String>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), spilled_payload(i, size)))
        .collect();
    let text: String = ids
        .iter()
        .map(|id| spilled_line(id, expected[id].as_deref()))
        .collect();
    let bytes: usize = expected.values().flatten().map(String::len).sum();
    assert!(
        bytes > 34 << 20,
        "{bytes} bytes of payloads: two spills and a rest"
    );
    let input = env.write(name, text);
    (input.to_str().unwrap().to_owned(), expected)
}

/// Attack: TMPDIR names a directory that does not exist (or a file): the spill cannot
/// create its file, so the payloads stay in memory (`Spill::failed`) and the enqueue
/// must still succeed with every payload whole. HOLDS.
#[test]
fn enqueue_keeps_payloads_in_memory_when_tmpdir_is_unusable() {
    let env = Env::new();
    let (input, expected) = spill_input(&env, "in.jsonl", 1_000, 50_000);
    let not_a_dir = env.write("not-a-dir", "x");
    for tmpdir in [
        env.path("missing/dir").to_str().unwrap().to_owned(),
        not_a_dir.to_str().unwrap().to_owned(),
    ] {
        let _ = std::fs::remove_dir_all(env.data_dir());
        let out = env
            .cmd()
            .env("TMPDIR", &tmpdir)
            .args(["enqueue", &input, "--now", PAST])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "TMPDIR={tmpdir}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_queue_holds(&env, &expected);
    }
}

/// Attack: the temporary file stops growing (a full disk; here a file size limit, with
/// SIGXFSZ ignored so a write fails with EFBIG as it would with ENOSPC), once inside the
/// first spill's write (nothing spilled, part of it written) and once inside the second
/// (some spills whole, part of the next written): the payloads must be read from the file
/// only up to what was spilled whole, the rest from memory. HOLDS.
#[test]
fn enqueue_survives_a_spill_file_that_cannot_grow() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let (input, expected) = spill_input(&env, "in.jsonl", 1_000, 50_000);
    for limit_mb in [8u64, 24] {
        let _ = std::fs::remove_dir_all(env.data_dir());
        let mut cmd = env.process();
        cmd.args(["enqueue", &input, "--now", PAST]);
        let limit = limit_mb << 20;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let rlim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &rlim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "file size limit {limit_mb} MB: {:?}: {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_queue_holds(&env, &expected);
    }
}

/// Attack: two enqueue processes at once of spilling inputs that share half their ids
/// (the new duplicate check and the chunk-by-chunk selection of the records to add, under
/// the race that once doubled every record): each id lands once, with its payload whole.
#[test]
fn two_spilling_enqueues_of_overlapping_inputs_at_once_add_each_id_once() {
    let env = Env::new();
    let (first, mut expected) = spill_input(&env, "a.jsonl", 1_000, 50_000);
    // The second input: the first's last half, then as many new ids.
    let text: String = (500..1_500)
        .map(|i| {
            let id = format!("T-{i:04}");
            let payload = spilled_payload(i, 50_000);
            let line = spilled_line(&id, payload.as_deref());
            expected.insert(id, payload);
            line
        })
        .collect();
    let second = env.write("b.jsonl", text);
    let second = second.to_str().unwrap();
    env.ok(&["init"]);
    let spawn = |input: &str| {
        env.process()
            .args(["enqueue", input, "--now", PAST])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(&first), spawn(second));
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert_queue_holds(&env, &expected);
}

/// Attack: the same id on the first line and on the last, with megabytes of spilled
/// payloads between: the duplicate is named with both lines and nothing is enqueued.
#[test]
fn a_duplicate_id_on_both_sides_of_the_spill_is_refused_whole() {
    let env = Env::new();
    let (input, _) = spill_input(&env, "in.jsonl", 1_000, 50_000);
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str(&spilled_line("T-0000", Some("again")));
    let input = env.write("dup.jsonl", text);
    env.ok(&["init"]);
    let err = env.fails(&["enqueue", input.to_str().unwrap(), "--now", PAST]);
    assert!(err.contains("'T-0000' on lines 1 and 1001"), "{err}");
    assert!(env.rows::<QueueRow>().is_empty());
}
