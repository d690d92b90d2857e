//! Interleavings a hostile review of the lease protocol found: a redrive completed late, a
//! worker restarted after its lease ended, an id entering two tables at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use retrylake::store::{DeadRow, FinalRow, QueueRow, Store};
use retrylake::{FixedClock, Outcome, Queue, Record, RoundConfig};

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
    let mut worker = Queue::open(&root).await.unwrap().with_worker("w");
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
        // Line 1 of a.jsonl is invalid: dead-lettered as "invalid:a.jsonl:1".
        let invalid = env.write("a.jsonl", "not json\n");
        // b.jsonl holds a record claiming that very id.
        let claims = env.write(
            "b.jsonl",
            "{\"sample_id\":\"invalid:a.jsonl:1\",\"payload\":\"p\"}\n",
        );
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
        assert_eq!(placements(&root, "invalid:a.jsonl:1").await, (0, 0, 1));
        assert_eq!(placements(&root, "invalid:b.jsonl:1").await, (0, 0, 1));
    }
}
