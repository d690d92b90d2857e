//! Interleavings a hostile review of the lease protocol found: a redrive completed late, a
//! worker restarted after its lease ended, an id entering two tables at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use retrylake::input::{InvalidRecord, fingerprint, synthetic_id};
use retrylake::store::{DeadRow, FinalRow, QueueRow, Store};
use retrylake::{Clock, FixedClock, Outcome, Queue, Record, RoundConfig};

use super::util::Env;

/// Fails every record permanently.
struct Permanent;

#[async_trait::async_trait]
impl retrylake::Processor for Permanent {
    async fn process(&self, _record: &Record) -> Outcome {
        Outcome::permanent("still broken")
    }
}

/// Succeeds on every record.
struct Succeed;

#[async_trait::async_trait]
impl retrylake::Processor for Succeed {
    async fn process(&self, _record: &Record) -> Outcome {
        Outcome::success("ok")
    }
}

/// Never answers: a round stuck in its calls (killed from outside by dropping it).
struct Hang;

#[async_trait::async_trait]
impl retrylake::Processor for Hang {
    async fn process(&self, _record: &Record) -> Outcome {
        std::future::pending::<()>().await;
        unreachable!()
    }
}

/// How many times `id` is in each of retry_queue, final_results and dead_letter_queue,
/// read by a fresh store.
/// The dead letter id of an invalid first line of `path` holding `line`.
fn dead_letter_id(path: &std::path::Path, line: &[u8]) -> String {
    let invalid = InvalidRecord {
        line: 1,
        sample_id: None,
        raw: None,
        error: String::new(),
        fingerprint: fingerprint(1, &[line]),
    };
    synthetic_id(path, &invalid)
}

async fn placements(root: &str, id: &str) -> (usize, usize, usize) {
    let store = Store::open(root).await.unwrap();
    let queue = store.read::<QueueRow>().await.unwrap();
    let finals = store.read::<FinalRow>().await.unwrap();
    let dead = store.read::<DeadRow>().await.unwrap();
    (
        queue.iter().filter(|r| r.sample_id == id).count(),
        finals.iter().filter(|r| r.sample_id == id).count(),
        dead.iter().filter(|r| r.sample_id == id).count(),
    )
}

/// A redrive that dies between its queue commit and its dead-letter delete (a crash, or
/// the delete failing after 12 conflicts) leaves the record in retry_queue and still in
/// dead_letter_queue. A worker that is already running (it recovered every worker once,
/// at its start, and since then only itself) takes the record from the queue, and it fails
/// permanently again: a second dead letter with the same id. When the redrive is then
/// completed (the next `redrive`, or any newly started run), its dead-letter step deletes
/// by id alone (`Store::delete_dead`), and takes the new dead letter with the old one:
/// the record is in no table.
#[tokio::test]
async fn a_half_applied_redrive_completed_late_deletes_a_newer_dead_letter() {
    let env = Env::new();
    let root = env.data().url;
    let input = env.write("in.jsonl", "{\"sample_id\":\"X\",\"payload\":\"x\"}\n");
    let mut worker = Queue::open(&root).await.unwrap().with_worker("w").unwrap();
    worker.enqueue(&input, &Default::default()).await.unwrap();
    let first = worker
        .run_round(&Permanent, &RoundConfig::default())
        .await
        .unwrap();
    assert_eq!(first.dead_lettered, 1);
    assert_eq!(placements(&root, "X").await, (0, 0, 1));

    // The redrive dies after its retry_queue commit, before its dead-letter delete.
    let out = env
        .process()
        .arg("redrive")
        .env("RETRYLAKE_FAILPOINT", "after-merge")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the failpoint aborts the redrive");
    assert_eq!(
        placements(&root, "X").await,
        (1, 0, 1),
        "between the two commits the record is in the queue and still a dead letter"
    );

    // The running worker completes the redrive before its round (a redrive has no lease
    // to bring it to a claim), then takes X from the queue; it fails permanently again.
    let second = worker
        .run_round(&Permanent, &RoundConfig::default())
        .await
        .unwrap();
    assert_eq!(second.dead_lettered, 1, "{second:?}");
    assert_eq!(placements(&root, "X").await, (0, 0, 1));

    // The operator runs the redrive again; it first completes the interrupted one.
    let out = env.process().arg("redrive").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (queued, finals, dead) = placements(&root, "X").await;
    assert_eq!(
        queued + finals + dead,
        1,
        "X must be in exactly one table; found queue {queued}, final {finals}, dead {dead}"
    );
}

/// A worker restarted under its name after a crash mid-round (claimed, not journaled) and
/// after that round's lease ended reuses the crashed round's number R (its journal never
/// got R). Its claim meets the crashed round's lease files, tagged (w, R): unresolved, so
/// it fences (w, R), its own round number, puts the records back, then claims them under
/// the same number R and calls them all. Its journal commit then finds R already ended (the
/// pre-check in `commit_round`) and the whole round is lost: every call thrown away, the
/// records locked for another whole lease, and the report's next_due None meanwhile.
#[tokio::test]
async fn a_worker_restarted_after_its_lease_ended_does_not_fence_its_own_next_round() {
    let env = Env::new();
    let root = env.data().url;
    let lines: String = (0..10)
        .map(|i| format!("{{\"sample_id\":\"S-{i}\",\"payload\":\"p\"}}\n"))
        .collect();
    let input = env.write("in.jsonl", lines);
    let t0: DateTime<Utc> = "2025-11-24T14:00:00Z".parse().unwrap();
    let clock = Arc::new(FixedClock::new(t0));
    let config = RoundConfig {
        lease: Duration::from_secs(60),
        timeout: Duration::from_secs(10),
        ..RoundConfig::default()
    };

    // Incarnation 1 claims the 10 records and dies in its calls.
    let mut first = Queue::open(&root)
        .await
        .unwrap()
        .with_worker("w")
        .unwrap()
        .with_clock(clock.clone());
    first.enqueue(&input, &Default::default()).await.unwrap();
    let crashed =
        tokio::time::timeout(Duration::from_millis(1500), first.run_round(&Hang, &config)).await;
    assert!(crashed.is_err(), "the round is still calling when it dies");
    drop(first);

    // Incarnation 2 starts after the lease ended.
    clock.set(t0 + chrono::Duration::seconds(61));
    let mut second = Queue::open(&root)
        .await
        .unwrap()
        .with_worker("w")
        .unwrap()
        .with_clock(clock.clone());
    let report = second.run_round(&Succeed, &config).await.unwrap();
    assert_eq!(
        (report.succeeded, report.lost),
        (10, 0),
        "the restarted worker's first round places the records it called: {report:?}"
    );
}

/// Each table has its own id sequence (`retrylake-ids`), so a new id entering
/// `dead_letter_queue` (an enqueue's invalid record, whose id is `invalid:<file>:<line>`)
/// and the same id entering `retry_queue` (another enqueue's valid record) would never
/// conflict: both read before either commits, both commit, and the id is in two tables.
/// So no input id may take the form of an invalid record's id: the valid-looking record
/// is itself invalid, and each id lands once, however the two enqueues interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_entering_two_tables_at_once_is_enqueued_once() {
    let options = retrylake::EnqueueOptions {
        skip_invalid: true,
        ..Default::default()
    };
    for _ in 0..5 {
        let env = Env::new();
        let root = env.data().url;
        // Line 1 of a.jsonl is invalid: dead-lettered as "invalid:a.jsonl:1:<hash>".
        let invalid = env.write("a.jsonl", "not json\n");
        let invalid_id = dead_letter_id(&invalid, b"not json");
        // b.jsonl holds a record claiming that very id.
        let claim = format!("{{\"sample_id\":\"{invalid_id}\",\"payload\":\"p\"}}");
        let claims = env.write("b.jsonl", format!("{claim}\n"));
        let mut qa = Queue::open(&root).await.unwrap();
        let mut qb = Queue::open(&root).await.unwrap();
        let (a, b) = tokio::join!(
            qa.enqueue(&invalid, &options),
            qb.enqueue(&claims, &options)
        );
        assert_eq!(a.unwrap().invalid, 1);
        assert_eq!(
            b.unwrap().invalid,
            1,
            "an id in the invalid records' form is refused"
        );
        assert_eq!(placements(&root, &invalid_id).await, (0, 0, 1));
        let claim_id = dead_letter_id(&claims, claim.as_bytes());
        assert_eq!(placements(&root, &claim_id).await, (0, 0, 1));
    }
}

/// A round journals X as dead, appends its dead letter, and crashes before its queue commit
/// (X still in retry_queue, in the round's lease file). `redrive` recovers only the
/// redrives' own journal (`redrive_once` -> `store.recover(REDRIVE_WORKER)`), not the
/// crashed worker's, so it reads X's dead letter and journals its move. Its queue MERGE
/// (`merge_queue`, insert only when not matched) finds X in the lease file and inserts
/// nothing; its dead-letter MERGE then deletes the letter. The next run completes the
/// crashed round: `settle_from_lease` drops X from the queue, as journaled ("dead").
/// X is in no table after a completed run, and the redrive reported it redriven. (The
/// redrive's queue MERGE changed nothing, so delta-rs made no commit and its application
/// transaction is missing: a later round's `recover(REDRIVE_WORKER)` inserts X again; see
/// the next test for what that does.)
#[test]
fn a_redrive_of_a_dead_letter_whose_round_has_not_settled_loses_nothing() {
    let env = Env::new();
    let root = env.data().url;
    // An empty payload fails permanently ("Missing Payload") without a call.
    let input = env.write("in.jsonl", "{\"sample_id\":\"X\",\"payload\":\"\"}\n");
    env.ok(&["enqueue", input.to_str().unwrap()]);
    let out = env
        .process()
        .args(["run", "--worker=w1", "--processor=simulate"])
        .env("RETRYLAKE_FAILPOINT", "after-dead-letter")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the failpoint aborts the round");
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(rt.block_on(placements(&root, "X")), (1, 0, 1));

    let report = env.json(&["redrive"]);
    eprintln!("redrive: {report}");
    eprintln!(
        "after the redrive: {:?}",
        rt.block_on(placements(&root, "X"))
    );

    // Any later run completes w1's round.
    env.ok(&["run", "--worker=w2", "--processor=simulate"]);
    let (queued, finals, dead) = rt.block_on(placements(&root, "X"));
    assert_eq!(
        queued + finals + dead,
        1,
        "X must be in exactly one table; found queue {queued}, final {finals}, dead {dead}"
    );
}

/// `RoundConfig::check` accepts `lease: 0, timeout: 0` (0 >= 2 * 0), and so does the CLI
/// (`--lease 0s --timeout 0s`). The call window (`call_window`: lease - timeout - lease/5)
/// is then zero, measured from before the claim, so every call is deferred
/// (`attempt`: `Instant::now() >= deadline`) and the round only claims and releases: no
/// record is ever called. A config under which no round can call anything must be
/// refused, not accepted and run forever.
#[tokio::test]
async fn a_lease_too_short_for_any_call_is_refused() {
    let env = Env::new();
    let root = env.data().url;
    let input = env.write("in.jsonl", "{\"sample_id\":\"X\",\"payload\":\"x\"}\n");
    let mut queue = Queue::open(&root).await.unwrap().with_worker("w").unwrap();
    queue.enqueue(&input, &Default::default()).await.unwrap();
    let config = RoundConfig {
        lease: Duration::ZERO,
        timeout: Duration::ZERO,
        ..RoundConfig::default()
    };
    match queue.run_round(&Succeed, &config).await {
        Err(retrylake::Error::InvalidConfig(_)) => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(report) => assert_eq!(
            report.succeeded, 1,
            "the config was accepted, so its round must call the due record: {report:?}"
        ),
    }
}

/// The command line refuses `--timeout 0s`, but takes `--lease 2ms --timeout 1ms`
/// (2ms >= 2 * 1ms): the call window (2ms - 1ms - 0.4ms) ends long before the claim
/// commit does, so every record is deferred. `run --drain` then spins: a claim and a
/// release commit per iteration and no sleep (the released record is due, `processed` is
/// 0, nothing is paused, so `run` in src/main.rs waits zero), and never ends. (`worker`
/// does the same every 200 ms, forever.)
#[test]
fn run_drain_with_a_lease_shorter_than_a_claim_ends() {
    let env = Env::new();
    let input = env.write("in.jsonl", "{\"sample_id\":\"X\",\"payload\":\"x\"}\n");
    env.ok(&["enqueue", input.to_str().unwrap()]);
    let run = super::util::Background::spawn(
        &env,
        "drain",
        &[
            "run",
            "--drain",
            "--lease=2ms",
            "--timeout=1ms",
            "--processor=simulate",
            "--transient-rate=0",
        ],
        &[],
    );
    // Refused (exit 2) or done in well under this.
    let finished = run.wait(Duration::from_secs(15));
    eprintln!("{finished:?}");
}

/// Fails every call transiently.
struct Transient;

#[async_trait::async_trait]
impl retrylake::Processor for Transient {
    async fn process(&self, _record: &Record) -> Outcome {
        Outcome::transient("down")
    }
}

/// A round dropped while its half-open probe call is in flight (a library user's
/// `select!` on shutdown, a `timeout` around `run_round`) leaves the shared guard's breaker
/// `HalfOpen { probing: true }` for good: nothing records the probe, and that state never
/// times out (`Breaker::state`). Every later round with this config claims one record,
/// defers it (`Guard::refusal`), and releases it: the queue never moves again, while
/// `paused_until` is `None` (so `run --drain` and the worker loop do not even wait).
#[tokio::test]
async fn a_dropped_probe_does_not_stall_the_breaker_for_good() {
    let env = Env::new();
    let root = env.data().url;
    let lines: String = (0..3)
        .map(|i| format!("{{\"sample_id\":\"P-{i}\",\"payload\":\"p\"}}\n"))
        .collect();
    let input = env.write("in.jsonl", lines);
    let t0: DateTime<Utc> = "2025-11-24T14:00:00Z".parse().unwrap();
    let clock = Arc::new(FixedClock::new(t0));
    let guard = retrylake::Guard::new(retrylake::GuardConfig {
        breaker: Some(retrylake::BreakerConfig {
            failure_share: 0.5,
            window: 1,
            min_calls: 1,
            cool_down: Duration::from_secs(10),
        }),
        rate: None,
    });
    let config = RoundConfig {
        lease: Duration::from_secs(60),
        timeout: Duration::from_secs(10),
        concurrency: 1,
        guard,
        ..RoundConfig::default()
    };
    let mut queue = Queue::open(&root)
        .await
        .unwrap()
        .with_worker("w")
        .unwrap()
        .with_clock(clock.clone());
    queue.enqueue(&input, &Default::default()).await.unwrap();
    // The first call fails: the breaker opens for 10 s.
    let first = queue.run_round(&Transient, &config).await.unwrap();
    assert!(first.paused_until.is_some(), "{first:?}");
    // After the cool-down, the probe hangs and its round is dropped.
    clock.set(t0 + chrono::Duration::seconds(11));
    let dropped =
        tokio::time::timeout(Duration::from_millis(1500), queue.run_round(&Hang, &config)).await;
    assert!(
        dropped.is_err(),
        "the probe is still in flight when its round is dropped"
    );
    // An hour later every lease has ended; the downstream is back.
    clock.set(t0 + chrono::Duration::hours(1));
    let mut placed = 0;
    for _ in 0..5 {
        let report = queue.run_round(&Succeed, &config).await.unwrap();
        placed += report.succeeded;
    }
    assert!(
        placed > 0,
        "five rounds an hour after a dropped probe called nothing: the breaker is stuck \
         half-open with a probe nobody will record ({:?})",
        config.guard.breaker(clock.now())
    );
}

/// delta-rs' MERGE makes no commit at all when it changes nothing
/// (`operations/merge/mod.rs`: "Do not make a commit when there are zero updates"), so
/// the application transaction it was to carry is never recorded. A redrive whose queue
/// MERGE inserts nothing (its one record still in retry_queue under the lease of a
/// journaled, unsettled round, as in the test above) leaves `retry_queue` without
/// `retrylake-round-redrive` = R, and every later `recover(REDRIVE_WORKER)` (each round of
/// every worker, `Queue::run_round`; each redrive) re-applies that MERGE, inserting X
/// whenever X is not in the queue. After the crashed round's settle has dropped X (the
/// state of the test above), an operator who finds X in no table enqueues it again (the
/// enqueue rightly takes it as new); a run processes it (its recovery's MERGE finds X in
/// the queue and again commits nothing); the next run's recovery inserts X once more:
/// X is called twice and ends in final_results twice.
#[test]
fn a_redrive_that_inserts_nothing_is_not_applied_again_later() {
    let env = Env::new();
    let root = env.data().url;
    let input = env.write("in.jsonl", "{\"sample_id\":\"X\",\"payload\":\"\"}\n");
    env.ok(&["enqueue", input.to_str().unwrap()]);
    let out = env
        .process()
        .args(["run", "--worker=w1", "--processor=simulate"])
        .env("RETRYLAKE_FAILPOINT", "after-dead-letter")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the failpoint aborts the round");
    env.ok(&["redrive"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let succeed = [
        "run",
        "--worker=w2",
        "--processor=simulate",
        "--transient-rate=0",
        "--allow-empty-payload",
    ];
    // Completes w1's round (after the redrive's recovery, workers in name order).
    env.ok(&succeed);
    let mut seen = vec![rt.block_on(placements(&root, "X"))];
    // X is in no table: enqueued again.
    env.ok(&["enqueue", input.to_str().unwrap()]);
    seen.push(rt.block_on(placements(&root, "X")));
    for _ in 0..2 {
        env.ok(&succeed);
        seen.push(rt.block_on(placements(&root, "X")));
    }
    eprintln!("placements: {seen:?}");
    let (queued, finals, dead) = *seen.last().unwrap();
    assert_eq!(
        queued + finals + dead,
        1,
        "X must be in exactly one table: queue {queued}, final {finals}, dead {dead} (after each step: {seen:?})"
    );
}

/// A rate limit slower than the call window (`--rate 1/s` with `--lease 1s --timeout
/// 500ms`: window 1s - 500ms - 200ms = 300ms; `--rate 4/h` with the default 15 min lease,
/// window 11.5 min, is the same) is accepted by `RoundConfig::check`. The first round
/// takes the limiter's one token and calls one record; the others wait for the next token
/// until the deadline and come back `Tried::Late`, still due. The next round starts at
/// once and every record waits for a token that comes after its deadline: every record
/// is `Late`, and `run_round` (src/round.rs, `decision_late == total`) returns
/// `Error::InvalidConfig("--lease ran out before any call could start (the claim alone
/// took ~1ms)")`: `run_rounds` stops and the worker exits, though its config works
/// (round 1 called) and the only wait was the rate limit it was told to keep. The same
/// error ends a healthy worker whose claim is slow once (S3 latency: `claimed_at` is
/// taken before `claim_due`).
#[tokio::test]
async fn a_rate_limit_wait_is_not_a_lease_too_short() {
    let env = Env::new();
    let root = env.data().url;
    let lines: String = (0..3)
        .map(|i| format!("{{\"sample_id\":\"R-{i}\",\"payload\":\"r\"}}\n"))
        .collect();
    let input = env.write("in.jsonl", lines);
    let mut queue = Queue::open(&root).await.unwrap().with_worker("w").unwrap();
    queue.enqueue(&input, &Default::default()).await.unwrap();
    let config = RoundConfig {
        lease: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        guard: retrylake::Guard::new(retrylake::GuardConfig {
            breaker: None,
            rate: Some("1/s".parse().unwrap()),
        }),
        ..RoundConfig::default()
    };
    let mut succeeded = 0;
    for round in 0..12 {
        match queue.run_round(&Succeed, &config).await {
            Ok(report) => succeeded += report.succeeded,
            Err(e) => panic!(
                "round {round} of a working config (rate 1/s, lease 1s) ended the worker \
                 after {succeeded} calls: {e}"
            ),
        }
        if succeeded == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(succeeded, 3);
}
