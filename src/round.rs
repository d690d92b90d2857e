//! One round: read the due records, call the processor on each (concurrently, under a
//! timeout), decide where each goes, and commit it all through the journal.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;

use crate::clock::{Clock, add_saturating, ceil_millis};
use crate::control::Pause;
use crate::error::{Error, Result};
use crate::guard::{BreakerState, Guard};
use crate::layer::{Call, CatchPanic, Guarded, Timeout};
use crate::outcome::Outcome;
use crate::policy::{RetryDecision, RetryPolicy};
use crate::processor::{Calls, Record};
use crate::rules::{Action, Rule, Rules};
use crate::shard::Shard;
use crate::store::due::{ClaimRequest, Found, KeyFilter, LeaseOwner, Take, oldest_first};
use crate::store::journal::Settle;
use crate::store::{
    AttemptKind, AttemptRow, CommitTag, DeadReason, Disposition, QueueRow, Store, Table,
};
use deltalake::kernel::Remove;

/// The error message of a record with a missing or empty payload (the original Spark job's rule).
pub const MISSING_PAYLOAD: &str = "Missing Payload";

/// How a round runs. Start from the default and change what you need; a round refuses
/// settings that cannot work ([`RoundConfig::check`]).
///
/// ```
/// use std::time::Duration;
/// use retrylake::{RetryPolicy, RoundConfig, Shard};
///
/// let config = RoundConfig {
///     policy: RetryPolicy::builder().max_retries(3).build()?,
///     concurrency: 64,
///     timeout: Duration::from_secs(10),
///     shard: Some("1/4".parse::<Shard>()?),
///     ..RoundConfig::default()
/// };
/// config.check()?;
/// let too_short = RoundConfig { lease: Duration::from_millis(500), ..config };
/// assert!(too_short.check().is_err()); // under a second
/// # Ok::<(), retrylake::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RoundConfig {
    /// Backoff and retry budget.
    pub policy: RetryPolicy,
    /// Most records per round, which bounds a round's memory. Default value is
    /// [`ROUND_BATCH`].
    pub limit: usize,
    /// Most calls in flight at once (batches, for a batch processor). Default value is
    /// `16`.
    pub concurrency: usize,
    /// Most records per call of a [`BatchProcessor`](crate::BatchProcessor); a processor
    /// called per record ignores it. A batch is cut from the records due in the round and
    /// never waits to fill. Default value is [`DEFAULT_CALL_BATCH`].
    pub call_batch: usize,
    /// Longest a call may take; a call that runs longer is a transient failure.
    /// Default value is 30 seconds.
    pub timeout: Duration,
    /// Call the processor even for a missing or empty payload. Default value is `false`.
    pub allow_empty_payload: bool,
    /// Seeds the jitter of each round (mixed with the round number). Default value is `0`.
    pub seed: u64,
    /// The furthest a processor's Retry-After may push a record's time lock beyond the end
    /// of its call, so a hostile value cannot park it for years. Default value is 1 day.
    pub max_retry_after: Duration,
    /// Only the records of this shard. Default value is `None` (every record).
    pub shard: Option<Shard>,
    /// Told how many of the round's calls have finished. Default value is `None`.
    pub progress: Option<Progress>,
    /// How long a round holds the records it claimed. While calls run, the round extends
    /// it in time (a heartbeat commit once half of it is left), for at most the longest
    /// call; a round whose lease ends or whose heartbeat fails commits nothing (the records
    /// come back when the lease ends), so no two workers ever place the same record.
    /// Default value is 15 minutes.
    pub lease: Duration,
    /// The circuit breaker, rate limit and Retry-After pauses between the rounds and the
    /// downstream; shared by every round run with this config (clones share it). Default
    /// value is [`Guard::default`]: the breaker on, no rate limit.
    pub guard: Guard,
    /// Rules that give some failures another treatment than `policy` (see [`Rules`]).
    /// Default value is none.
    pub rules: std::sync::Arc<Rules>,
    /// A record's deadline, from its enqueue: a record past it is not called again and
    /// goes to `dead_letter_queue` with reason `expired`, and so does a failure whose
    /// next try would fall at or after it (a transient rule's `max_age` is a second deadline for
    /// the failures it matches; the earlier one decides). Default value is `None`: no
    /// deadline.
    pub max_age: Option<Duration>,
}

impl Default for RoundConfig {
    fn default() -> Self {
        RoundConfig {
            policy: RetryPolicy::default(),
            limit: ROUND_BATCH,
            concurrency: 16,
            call_batch: DEFAULT_CALL_BATCH,
            timeout: Duration::from_secs(30),
            allow_empty_payload: false,
            seed: 0,
            max_retry_after: Duration::from_secs(24 * 3600),
            shard: None,
            progress: None,
            lease: Duration::from_secs(15 * 60),
            guard: Guard::default(),
            rules: Default::default(),
            max_age: None,
        }
    }
}

impl RoundConfig {
    /// Refuses settings under which a round cannot work: no record per round, no call in
    /// flight, a lease under [`MIN_LEASE`] or over [`MAX_LEASE`].
    pub fn check(&self) -> Result<()> {
        let invalid = |message: String| Err(Error::InvalidConfig(message));
        if self.limit == 0 {
            return invalid("--limit must be at least 1".into());
        }
        if self.concurrency == 0 {
            return invalid("--concurrency must be at least 1".into());
        }
        if self.call_batch == 0 {
            return invalid("--call-batch must be at least 1".into());
        }
        self.guard.config().check()?;
        if self.max_age.is_some_and(|age| age.is_zero()) {
            return invalid("--max-age must be more than 0".into());
        }
        if self.lease < MIN_LEASE {
            return invalid(format!(
                "--lease ({}) is shorter than {}: a round must claim, call and commit within it",
                humantime::format_duration(self.lease),
                humantime::format_duration(MIN_LEASE)
            ));
        }
        if self.lease > MAX_LEASE {
            return invalid(format!(
                "--lease ({}) is longer than {}: a crashed worker's records would wait that long",
                humantime::format_duration(self.lease),
                humantime::format_duration(MAX_LEASE)
            ));
        }
        Ok(())
    }
}

/// Most records per call of a batch processor unless configured.
pub const DEFAULT_CALL_BATCH: usize = 100;

/// The shortest lease a round may hold.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// The longest lease a round may hold.
pub const MAX_LEASE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A callback told `(finished, total)` calls as a round runs (a progress bar).
#[derive(Clone)]
pub struct Progress(std::sync::Arc<dyn Fn(usize, usize) + Send + Sync>);

impl Progress {
    /// Wraps a callback.
    pub fn new(report: impl Fn(usize, usize) + Send + Sync + 'static) -> Self {
        Progress(std::sync::Arc::new(report))
    }

    fn report(&self, finished: usize, total: usize) {
        (self.0)(finished, total)
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// What a round did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoundReport {
    /// The round's number, or `None` when nothing was due.
    pub round: Option<i64>,
    /// Records attempted.
    pub processed: usize,
    /// Records that went to `final_results`.
    pub succeeded: usize,
    /// Records left in `retry_queue` with a new time lock, one retry counted.
    pub retried: usize,
    /// Records a rule snoozed: left in `retry_queue` with a new time lock, no retry
    /// counted.
    pub snoozed: usize,
    /// Records that went to `dead_letter_queue`.
    pub dead_lettered: usize,
    /// The earliest `process_after` left in the queue, `None` when it is empty.
    pub next_due: Option<DateTime<Utc>>,
    /// Records claimed but not called because the guard held them back (breaker open,
    /// Retry-After pause): back in `retry_queue` with no attempt counted.
    pub deferred: usize,
    /// No call may start before this: an open breaker's cool-down or a Retry-After pause.
    /// `None` when calls may go on.
    pub paused_until: Option<DateTime<Utc>>,
    /// The circuit breaker's state after the round (`closed`, `open`, `half-open`), `None`
    /// when it is off.
    pub breaker: Option<String>,
    /// The queue is paused (`retrylake pause`): the round claimed nothing.
    pub queue_paused: Option<Pause>,
    /// Records this round claimed but did not place: its lease ended and another worker
    /// took them (or another process runs under the same worker name). Nothing of the
    /// round was committed; the other places them.
    pub lost: usize,
    /// Commits that lost a race with another worker and were tried again: at the next
    /// version (appends to the shared tables) or after re-reading (a claim of a file
    /// another worker claimed first).
    pub conflicts: u64,
    /// Where the round's time went.
    #[serde(rename = "timings_ms")]
    pub phases: Phases,
    /// Attempts by outcome (not part of the JSON report).
    #[serde(skip)]
    pub outcomes: OutcomeCounts,
}

/// A round's attempts by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Attempts that succeeded.
    pub success: usize,
    /// Attempts that failed transiently (retried or, at the end of their budget, dead).
    pub transient: usize,
    /// Attempts that failed permanently (`Missing Payload` included).
    pub permanent: usize,
}

/// Wall time of a round's phases, in the JSON report as `timings_ms` (milliseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Phases {
    /// Before the round: reading the tables' new commits and checking for half-applied
    /// rounds to complete.
    pub prepare: Duration,
    /// Finding and reading the due rows, and claiming them.
    pub read: Duration,
    /// Calling the processor on every due record.
    pub process: Duration,
    /// Deciding where each record goes.
    pub decide: Duration,
    /// Writing the files of the round's four commits (side by side), and the `attempts`
    /// journal's commit.
    pub journal: Duration,
    /// The `final_results` commit.
    pub final_results: Duration,
    /// The `dead_letter_queue` commit.
    pub dead_letter: Duration,
    /// The `retry_queue` commit that settles the round.
    pub queue: Duration,
    /// After the round, with `run` and `worker`: keeping the tables small (compaction,
    /// checkpoints, log cleanup).
    pub upkeep: Duration,
}

impl Phases {
    /// The commits' wall time: journal, final, dead letters and queue.
    pub fn commit(&self) -> Duration {
        self.journal + self.final_results + self.dead_letter + self.queue
    }
    /// The round's wall time: every phase but the upkeep after it.
    pub fn total(&self) -> Duration {
        self.prepare + self.read + self.process + self.decide + self.commit()
    }
}

impl Serialize for Phases {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(9))?;
        for (name, d) in [
            ("prepare", self.prepare),
            ("read", self.read),
            ("process", self.process),
            ("decide", self.decide),
            ("journal", self.journal),
            ("final", self.final_results),
            ("dead_letter", self.dead_letter),
            ("queue", self.queue),
            ("upkeep", self.upkeep),
        ] {
            map.serialize_entry(name, &(d.as_secs_f64() * 1000.0))?;
        }
        map.end()
    }
}

/// Most records a round takes by default, so that memory stays bounded however many
/// records are due: the command line's `run` goes on with another round while more are due.
pub const ROUND_BATCH: usize = crate::store::FILE_ROWS;

/// Runs one round for `worker` at `clock`'s time, on tables the caller has just refreshed
/// and recovered: the steps of "How a round works" in the README, each a function below.
pub(crate) async fn run_round(
    store: &mut Store,
    clock: &dyn Clock,
    worker: &str,
    processor: Calls<'_>,
    config: &RoundConfig,
) -> Result<RoundReport> {
    let started = Instant::now();
    let config = match admit(config, clock) {
        Admit::Paused(report) => return Ok(report),
        Admit::Run(config) => config,
    };
    let config = config.as_ref();
    let Claimed {
        found,
        round,
        lease_until,
        at: claimed_at,
        paused,
    } = claim(store, clock, worker, config, Take::Due).await?;
    if let Some(pause) = paused {
        return Ok(RoundReport {
            queue_paused: Some(pause),
            next_due: found.next_due,
            ..RoundReport::default()
        });
    }
    let claim_took = claimed_at.elapsed();
    let mut phases = Phases {
        read: started.elapsed(),
        ..Phases::default()
    };
    let Some(claim) = found.claim else {
        return Ok(RoundReport {
            next_due: found.next_due,
            phases,
            ..RoundReport::default()
        });
    };
    let total = claim.rows.len();
    tracing::debug!(round, due = total, "round starts");
    let processing = Instant::now();
    let owner = LeaseOwner {
        worker: worker.to_owned(),
        round,
    };
    let mut rows = claim.rows;
    let calls = call(processor, clock, &mut rows, config, claimed_at);
    let held = Held {
        files: claim.lease,
        until: lease_until,
    };
    let Some((tried, held)) =
        keep_lease(store, clock, config, &owner, held, claimed_at, calls).await
    else {
        let report = RoundReport {
            phases,
            ..RoundReport::default()
        };
        return Ok(report.lost(worker, round, total));
    };
    let lease_until = held.until;
    phases.process = processing.elapsed();
    let deciding = Instant::now();
    let decision = decide(rows, tried, round, worker, config);
    phases.decide = deciding.elapsed();
    let mut report = decision.report(round, phases);
    report.paused_until = config.guard.blocked_until(clock.now());
    report.breaker = breaker_state(config, clock);
    if decision.deferred > 0 {
        tracing::warn!(
            deferred = decision.deferred,
            "{} records not called (the downstream is paused, or the lease is running out); \
             they wait in retry_queue, no attempt counted",
            decision.deferred
        );
    }
    let earliest_retry = decision.retried.iter().map(|r| r.process_after).min();
    let all_late = decision.late == total;
    let Decision { rows, retried, .. } = decision;
    let settle = Settle {
        lease: held.files,
        retried,
        lease_until,
    };
    let placed = if rows.is_empty() {
        report.round = None;
        let placed = release(store, worker, &settle, report.deferred).await?;
        if all_late && claim_took >= call_window(config.lease, config.timeout) {
            // The claim alone used up the time to start calls: every round would do the
            // same, forever. (Records late after a rate limit's wait are only deferred.)
            return Err(lease_ran_out(config.lease, claim_took));
        }
        placed
    } else {
        journal_and_settle(store, worker, round, &rows, &settle, &mut report).await?
    };
    report.next_due = if placed {
        [found.next_due, earliest_retry].into_iter().flatten().min()
    } else {
        report = report.lost(worker, round, total);
        // Its retries are not in the queue: another worker placed its records, or holds
        // them until at most the end of this round's lease.
        [found.next_due, Some(lease_until)]
            .into_iter()
            .flatten()
            .min()
    };
    // Freeing a round's rows (a few strings each) takes a while; let another core do it
    // while the next round reads.
    tokio::task::spawn_blocking(move || drop((rows, settle)));
    Ok(report)
}

/// The error of a round whose claim alone outlasted the time to start calls.
fn lease_ran_out(lease: Duration, claim_took: Duration) -> Error {
    Error::InvalidConfig(format!(
        "--lease ({}) ran out before any call could start (the claim alone took {}): \
         raise --lease",
        humantime::format_duration(lease),
        humantime::format_duration(Duration::from_millis(
            u64::try_from(claim_took.as_millis()).unwrap_or(u64::MAX)
        ))
    ))
}

impl RoundReport {
    /// The report of `worker`'s round `round`, which lost its lease with its `total`
    /// records: nothing it decided was committed.
    fn lost(self, worker: &str, round: i64, total: usize) -> RoundReport {
        tracing::warn!(
            worker,
            round,
            records = total,
            "round {round} of worker {worker} lost its lease: another worker took its {total} records \
             after the lease ended (or another process runs as {worker}); nothing committed"
        );
        RoundReport {
            lost: total,
            phases: self.phases,
            paused_until: self.paused_until,
            breaker: self.breaker,
            ..RoundReport::default()
        }
    }
}

/// Whether a round may claim: not while the downstream is known to be down.
enum Admit<'a> {
    /// Calls are paused (an open breaker, a Retry-After): claim nothing, report this.
    Paused(RoundReport),
    /// Claim with this config: one record for the probe after a cool-down, else as given.
    Run(std::borrow::Cow<'a, RoundConfig>),
}

/// Step 0, *admit*: while the downstream is known to be down, claim nothing (the records
/// wait, untouched); after a cool-down, one probe call decides: claim one record, not the
/// backlog.
fn admit<'a>(config: &'a RoundConfig, clock: &dyn Clock) -> Admit<'a> {
    if let Some(until) = config.guard.blocked_until(clock.now()) {
        return Admit::Paused(RoundReport {
            paused_until: Some(until),
            breaker: breaker_state(config, clock),
            ..RoundReport::default()
        });
    }
    match config.guard.breaker(clock.now()) {
        Some(BreakerState::HalfOpen { .. }) => Admit::Run(std::borrow::Cow::Owned(RoundConfig {
            limit: 1,
            ..config.clone()
        })),
        _ => Admit::Run(std::borrow::Cow::Borrowed(config)),
    }
}

/// Step 4, *call*: the processor on every claimed record (per record, or per batch of
/// at most `call_batch`), at most `concurrency` calls at once, none started once too
/// little of the lease is left for it to end and the round to commit. Returns what became
/// of each record, in the order of `due`. The records' ids and payloads are lent to the
/// calls, not copied: they are back in `due` when the calls end.
async fn call(
    processor: Calls<'_>,
    clock: &dyn Clock,
    due: &mut [QueueRow],
    config: &RoundConfig,
    claimed_at: Instant,
) -> Vec<Tried> {
    let deadline = claimed_at + call_window(config.lease, config.timeout).min(MAX_LEASE);
    let total = due.len();
    let finished = std::sync::atomic::AtomicUsize::new(0);
    let finish = |calls: usize| {
        let done = finished.fetch_add(calls, std::sync::atomic::Ordering::Relaxed) + calls;
        if let Some(progress) = &config.progress {
            progress.report(done, total);
        }
    };
    // A record without a payload, or past its deadline, fails at once, uncalled.
    let mut tried: Vec<Option<Tried>> = due
        .iter()
        .map(|row| missing_payload(row, clock, config).or_else(|| expired(row, clock, config)))
        .collect();
    let to_call: Vec<usize> = (0..total).filter(|&i| tried[i].is_none()).collect();
    finish(total - to_call.len());
    let records: Vec<Record> = to_call.iter().map(|&i| lend(&mut due[i])).collect();
    let lent = &records[..];
    // `records[k]` is the record of `due[to_call[k]]`.
    match processor {
        Calls::Each(processor) => {
            let layers = &layers(processor, clock, config);
            let done: Vec<(usize, Tried)> = futures::stream::iter(0..lent.len())
                .map(|k| async move { (k, tried_of(layers.call(&lent[k], deadline).await, clock)) })
                .buffer_unordered(config.concurrency.max(1))
                .inspect(|_| finish(1))
                .collect()
                .await;
            for (k, t) in done {
                tried[to_call[k]] = Some(t);
            }
        }
        Calls::Batches(processor) => {
            let layers = &layers(processor, clock, config);
            let size = config.call_batch.max(1);
            let done: Vec<(usize, Vec<Tried>)> =
                futures::stream::iter(lent.chunks(size).enumerate())
                    .map(|(n, batch)| async move {
                        let calls = layers.call_batch(batch, deadline).await;
                        let tried: Vec<Tried> =
                            calls.into_iter().map(|c| tried_of(c, clock)).collect();
                        (n * size, tried)
                    })
                    .buffer_unordered(config.concurrency.max(1))
                    .inspect(|(_, tried)| finish(tried.len()))
                    .collect()
                    .await;
            for (first, outcomes) in done {
                for (k, t) in (first..).zip(outcomes) {
                    tried[to_call[k]] = Some(t);
                }
            }
        }
    }
    for (&i, record) in to_call.iter().zip(records) {
        give_back(&mut due[i], record);
    }
    tried
        .into_iter()
        .map(|t| t.expect("every record is decided or called"))
        .collect()
}

/// Where a round's records go, decided from their calls.
#[derive(Debug, Default, PartialEq)]
struct Decision {
    /// One journal row per attempted record: its outcome and where it goes.
    rows: Vec<AttemptRow>,
    /// The records that stay in `retry_queue`: retried (with their new count, error and
    /// time lock) and held back uncharged, sorted by retry count, then oldest first, so
    /// each count's records go to a file of their own.
    retried: Vec<QueueRow>,
    /// How many of `retried` were held back, not called.
    deferred: usize,
    /// Of those, how many because too little of the lease was left.
    late: usize,
}

impl Decision {
    /// The round's report of what it decided.
    fn report(&self, round: i64, phases: Phases) -> RoundReport {
        let placed = |d: Disposition| self.rows.iter().filter(|r| r.disposition == d).count();
        let outcomes = |o: AttemptKind| self.rows.iter().filter(|r| r.outcome == o).count();
        RoundReport {
            round: Some(round),
            processed: self.rows.len(),
            succeeded: placed(Disposition::Final),
            retried: placed(Disposition::Retry),
            snoozed: placed(Disposition::Snooze),
            dead_lettered: placed(Disposition::Dead),
            deferred: self.deferred,
            phases,
            outcomes: OutcomeCounts {
                success: outcomes(AttemptKind::Success),
                transient: outcomes(AttemptKind::Transient),
                permanent: outcomes(AttemptKind::Permanent),
            },
            ..RoundReport::default()
        }
    }
}

/// Step 5, *decide*, a pure function: for each record of `due` and what became of it
/// (`tried`, in the same order), the table it goes to, with which count and time lock. A
/// success is final; a permanent failure, or a transient one past the retry budget, is
/// dead; any other transient failure is retried after its backoff (or its Retry-After,
/// at most `max_retry_after` on), one more retry counted; a failure a rule matches is
/// treated as the rule says (see `journal_row`), a snooze adding one to the record's
/// snoozes in a row and a counted retry ending them. A record held back keeps its count,
/// its snoozes and its time lock, raised to the end of the pause that held it. The
/// jitter's draws are seeded by `config.seed` and the round, taken in queue order.
fn decide(
    due: Vec<QueueRow>,
    tried: Vec<Tried>,
    round: i64,
    worker: &str,
    config: &RoundConfig,
) -> Decision {
    let mut rng =
        SmallRng::seed_from_u64(config.seed ^ (round as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut decision = Decision {
        rows: Vec::with_capacity(due.len()),
        retried: Vec::with_capacity(due.len() / 2),
        ..Decision::default()
    };
    for (mut row, tried) in due.into_iter().zip(tried) {
        match tried {
            Tried::Called(attempt) => {
                let (enqueued_at, snoozes) = (row.enqueued_at, row.snoozes);
                let journal = journal_row(row, attempt, round, worker, config, &mut rng);
                let snoozes = match journal.disposition {
                    Disposition::Retry => Some(0),
                    Disposition::Snooze => Some(snoozes.saturating_add(1)),
                    _ => None,
                };
                if let Some(snoozes) = snoozes {
                    decision.retried.push(QueueRow {
                        sample_id: journal.sample_id.clone(),
                        payload: journal.payload.clone(),
                        error_msg: journal.error_msg.clone(),
                        retry_count: journal.retry_count,
                        process_after: journal.process_after.unwrap_or(journal.finished_at),
                        enqueued_at,
                        snoozes,
                    });
                }
                decision.rows.push(journal);
            }
            Tried::Deferred(until) => {
                if let Some(until) = until {
                    row.process_after = row.process_after.max(ceil_millis(until));
                }
                decision.deferred += 1;
                decision.retried.push(row);
            }
            Tried::Late => {
                decision.deferred += 1;
                decision.late += 1;
                decision.retried.push(row);
            }
        }
    }
    decision.retried.sort_by(|a, b| {
        a.retry_count
            .cmp(&b.retry_count)
            .then_with(|| oldest_first(a, b))
    });
    decision
}

/// Step 6, *release*: a round that attempted nothing puts its records back in one commit.
/// Returns `false` when its lease ended and another worker took them.
async fn release(
    store: &mut Store,
    worker: &str,
    settle: &Settle,
    deferred: usize,
) -> Result<bool> {
    // Not a round in the journal's sense: no transaction version, so the next round
    // takes this number.
    let tag = CommitTag::operation("release")
        .with("worker", worker)
        .with("deferred", deferred);
    store.release(settle, &tag).await
}

/// Step 6, *journal and settle*: the journal's commit decides the round, then the final,
/// dead-letter and queue commits apply it. Returns `false` when the round lost its lease.
async fn journal_and_settle(
    store: &mut Store,
    worker: &str,
    round: i64,
    rows: &[AttemptRow],
    settle: &Settle,
    report: &mut RoundReport,
) -> Result<bool> {
    let tag = CommitTag::round("round", worker, round)
        .with("processed", report.processed)
        .with("deferred", report.deferred)
        .with("succeeded", report.succeeded)
        .with("retried", report.retried)
        .with("snoozed", report.snoozed)
        .with("dead_lettered", report.dead_lettered);
    match store.commit_round(rows, &tag, Some(settle)).await {
        Err(Error::LeaseLost { .. }) => Ok(false),
        Err(e) => Err(e),
        Ok(times) => {
            let phases = &mut report.phases;
            phases.journal = times.journal;
            phases.final_results = times.final_results;
            phases.dead_letter = times.dead_letter;
            phases.queue = times.queue;
            Ok(true)
        }
    }
}

/// How often a claim that lost a race with another worker is retried.
const CLAIM_RETRIES: u32 = 12;

/// What a round's claim found, and its lease.
pub(crate) struct Claimed {
    pub found: Found,
    /// The round's number.
    pub round: i64,
    /// The end of the lease, the claimed rows' time lock.
    pub lease_until: DateTime<Utc>,
    /// When the claim was made.
    pub at: Instant,
    /// The queue's pause, when it holds: nothing was claimed.
    pub paused: Option<Pause>,
}

/// Reads the records `take` picks (a round's due records) and claims them with a lease
/// (one commit), so a concurrent worker cannot take them. A claim that loses a race
/// re-reads and tries again; one that meets the files of another round whose lease ended
/// first resolves that round. A round's claim takes nothing while the queue is paused, as
/// read before each try. Returns what it found, the lease's end and when the claim was
/// made.
pub(crate) async fn claim(
    store: &mut Store,
    clock: &dyn Clock,
    worker: &str,
    config: &RoundConfig,
    take: Take,
) -> Result<Claimed> {
    for retries in 0.. {
        // Read again after resolving: a round of this worker left by a crashed process
        // may have been fenced, and its number is then taken.
        let round = store.last_round(worker).await? + 1;
        let now = clock.now();
        if matches!(take, Take::Due)
            && let Some(pause) = store.pause()?.filter(|p| p.holds_at(now))
        {
            return Ok(Claimed {
                found: Found {
                    next_due: store.earliest_lock()?,
                    ..Found::default()
                },
                round,
                lease_until: now,
                at: Instant::now(),
                paused: Some(pause),
            });
        }
        let request = ClaimRequest {
            now,
            limit: config.limit,
            keys: config.shard.map(|shard| KeyFilter {
                group_of: std::sync::Arc::new(move |key| shard.sibling_of(key)),
                own: shard.index(),
            }),
            lease_until: ceil_millis(add_saturating(now, config.lease)),
            owner: LeaseOwner {
                worker: worker.to_owned(),
                round,
            },
            take: take.clone(),
        };
        let lease_until = request.lease_until;
        let claimed_at = Instant::now();
        match store.claim_due(request).await {
            Ok(found) if found.unresolved.is_empty() => {
                return Ok(Claimed {
                    found,
                    round,
                    lease_until,
                    at: claimed_at,
                    paused: None,
                });
            }
            Ok(found) if retries < CLAIM_RETRIES => {
                for owner in &found.unresolved {
                    store.resolve_lease(owner, worker).await?;
                }
            }
            Ok(found) => {
                let found = Found {
                    claim: None,
                    ..found
                };
                return Ok(Claimed {
                    found,
                    round,
                    lease_until,
                    at: claimed_at,
                    paused: None,
                });
            }
            Err(e) if e.is_conflict() && retries < CLAIM_RETRIES => {
                tracing::debug!(retries, "claim conflicted with another worker; re-reading")
            }
            Err(e) => return Err(e),
        }
        store
            .retry_after_conflict(Table::RetryQueue, retries)
            .await?;
    }
    unreachable!("the loop returns")
}

/// How long after its claim a round may start calls: its lease, less the longest call (at
/// most half the lease: a longer call runs on heartbeats) and a fifth of the lease to
/// commit in; so at least 30% of the lease.
fn call_window(lease: Duration, timeout: Duration) -> Duration {
    lease
        .saturating_sub(timeout.min(lease / 2))
        .saturating_sub(lease / 5)
}

/// A round's lease: its files and its end.
struct Held {
    files: Vec<Remove>,
    until: DateTime<Utc>,
}

/// Runs `calls` while keeping the round's lease: each time half of the lease is left, one
/// heartbeat commit extends it to a whole lease from now ([`Store::extend_lease`]), so a
/// call that runs long is not taken over by another worker. Calls start only within the
/// first lease's call window and each ends within its timeout, so the heartbeats end too.
/// Returns what the calls gave and the lease as it ends, or `None` when the round lost its
/// lease (it ended, the round was fenced, a heartbeat failed): the calls are dropped and
/// nothing of the round may be committed.
async fn keep_lease<T>(
    store: &mut Store,
    clock: &dyn Clock,
    config: &RoundConfig,
    owner: &LeaseOwner,
    mut held: Held,
    claimed_at: Instant,
    calls: impl std::future::Future<Output = T>,
) -> Option<(T, Held)> {
    let every = (config.lease / 2).max(Duration::from_millis(100));
    let mut beat_at = claimed_at + every;
    let mut calls = std::pin::pin!(calls);
    let mut done = None;
    loop {
        tokio::select! {
            out = &mut calls => return Some((out, held)),
            _ = tokio::time::sleep_until(beat_at.into()) => {}
        }
        beat_at = Instant::now() + every;
        let now = clock.now();
        if now >= held.until {
            tracing::warn!(
                round = owner.round,
                "the lease of round {} ended while its calls ran; they are dropped",
                owner.round
            );
            return None;
        }
        let until = ceil_millis(add_saturating(now, config.lease));
        if until <= held.until {
            continue; // a clock that stands still (a virtual one) needs no heartbeat
        }
        // The calls go on while the heartbeat commits.
        let beat = {
            let mut beat = std::pin::pin!(store.extend_lease(owner, &held.files, until));
            loop {
                tokio::select! {
                    r = &mut beat => break r,
                    out = &mut calls, if done.is_none() => done = Some(out),
                }
            }
        };
        match beat {
            Ok(files) => {
                tracing::debug!(round = owner.round, %until, "lease extended");
                held = Held { files, until };
            }
            Err(e) => {
                tracing::warn!(
                    round = owner.round,
                    "the heartbeat of round {} failed, so it stops its calls and commits \
                     nothing: {e}",
                    owner.round
                );
                return None;
            }
        }
        if let Some(out) = done.take() {
            return Some((out, held));
        }
    }
}

/// One call's result and timing.
struct Attempt {
    outcome: Outcome,
    /// Decided without a call, dead for this reason (a missing payload, a deadline
    /// passed): no rule applies.
    uncalled: Option<DeadReason>,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    duration: Duration,
}

/// What became of one record in a round.
enum Tried {
    Called(Attempt),
    /// The guard held the call back; the record's time lock goes to at least this.
    Deferred(Option<DateTime<Utc>>),
    /// Too little of the lease was left to start the call.
    Late,
}

/// The round's layers around a processor: `Guarded(CatchPanic(Timeout(processor)))`.
fn layers<'c, P>(
    processor: P,
    clock: &'c dyn Clock,
    config: &RoundConfig,
) -> Guarded<'c, CatchPanic<Timeout<P>>> {
    Guarded::new(
        CatchPanic::new(Timeout::new(processor, config.timeout)),
        config.guard.clone(),
        clock,
        config.max_retry_after,
    )
}

/// A record with a missing or empty payload fails at once, uncalled, unless
/// `allow_empty_payload`: `None` for a record to call.
fn missing_payload(row: &QueueRow, clock: &dyn Clock, config: &RoundConfig) -> Option<Tried> {
    let empty = row.payload.as_deref().is_none_or(str::is_empty);
    if !empty || config.allow_empty_payload {
        return None;
    }
    let at = clock.now();
    Some(Tried::Called(Attempt {
        outcome: Outcome::permanent(MISSING_PAYLOAD),
        uncalled: Some(DeadReason::Permanent),
        started_at: at,
        finished_at: at,
        duration: Duration::ZERO,
    }))
}

/// A record past its deadline (`config.max_age` after its enqueue) fails at once,
/// uncalled, with reason `expired`: `None` for a record to call.
fn expired(row: &QueueRow, clock: &dyn Clock, config: &RoundConfig) -> Option<Tried> {
    let age = config.max_age?;
    let at = clock.now();
    if at < add_saturating(row.enqueued_at, age) {
        return None;
    }
    Some(Tried::Called(Attempt {
        outcome: Outcome::permanent(expired_error(age)),
        uncalled: Some(DeadReason::Expired),
        started_at: at,
        finished_at: at,
        duration: Duration::ZERO,
    }))
}

/// The error message of a record dead-lettered past its deadline of `age`.
fn expired_error(age: Duration) -> String {
    format!(
        "expired: enqueued more than {} ago",
        humantime::format_duration(age)
    )
}

/// The record a processor is called with for a row of the queue, its id and payload moved
/// out of the row (a copy of each would cost a round two allocations per record).
fn lend(row: &mut QueueRow) -> Record {
    Record {
        sample_id: std::mem::take(&mut row.sample_id),
        payload: row.payload.take(),
        retry_count: u32::try_from(row.retry_count).unwrap_or(0),
    }
}

/// Puts a lent record's id and payload back in its row.
fn give_back(row: &mut QueueRow, record: Record) {
    row.sample_id = record.sample_id;
    row.payload = record.payload;
}

/// What became of a record, from what became of its call through the round's layers.
fn tried_of(call: Call, clock: &dyn Clock) -> Tried {
    match call {
        Call::Made {
            outcome,
            started_at,
            took,
        } => Tried::Called(Attempt {
            outcome,
            uncalled: None,
            started_at,
            finished_at: clock.now(),
            duration: took,
        }),
        Call::Held { until } => Tried::Deferred(until),
        // Too little of the lease is left (or it ran out waiting for the rate limit): the
        // record goes back as it was.
        Call::Late => Tried::Late,
    }
}

fn breaker_state(config: &RoundConfig, clock: &dyn Clock) -> Option<String> {
    config.guard.breaker(clock.now()).map(|s| s.to_string())
}

/// What the journal's `outcome` column records of a call's outcome.
fn journaled_kind(outcome: &Outcome) -> AttemptKind {
    match outcome {
        Outcome::Success { .. } => AttemptKind::Success,
        Outcome::Transient { .. } => AttemptKind::Transient,
        Outcome::Permanent { .. } => AttemptKind::Permanent,
    }
}

/// Decides where a record goes after an attempt, as the journal row that records it: the
/// first rule matching a failure of a call decides its treatment (see
/// [`Rules`](crate::Rules); a record failed uncalled for its missing payload is dead), else
/// a transient failure is retried on the round's schedule and a permanent one is
/// dead. A snooze past its rule's caps (snoozes in a row, the record's age) is treated as
/// a failure no rule matched.
fn journal_row(
    row: QueueRow,
    attempt: Attempt,
    round: i64,
    worker: &str,
    config: &RoundConfig,
    rng: &mut SmallRng,
) -> AttemptRow {
    let rule = match attempt.uncalled {
        Some(_) => None,
        None => config.rules.find(&attempt.outcome),
    };
    let mut journal = AttemptRow {
        round,
        worker: worker.to_owned(),
        sample_id: row.sample_id,
        retries_before: row.retry_count,
        outcome: journaled_kind(&attempt.outcome),
        error_msg: None,
        started_at: attempt.started_at,
        finished_at: attempt.finished_at,
        duration_ms: i64::try_from(attempt.duration.as_millis()).unwrap_or(i64::MAX),
        process_after: None,
        disposition: Disposition::Dead,
        reason: None,
        retry_count: row.retry_count,
        payload: row.payload,
        response: None,
        rule: rule.map(|r| r.name.clone()),
    };
    let (error, retry_after, transient) = match attempt.outcome {
        Outcome::Success { response } => {
            journal.disposition = Disposition::Final;
            journal.response = response;
            return journal;
        }
        Outcome::Transient {
            error, retry_after, ..
        } => (error, retry_after, true),
        Outcome::Permanent { error, .. } => (error, None, false),
    };
    journal.error_msg = Some(error);
    if let Some(reason) = attempt.uncalled {
        journal.reason = Some(reason);
        return journal;
    }
    // A retry or snooze whose next try would fall at or after the record's deadline is dead now.
    let max_age = match rule {
        Some(
            r @ Rule {
                action: Action::Transient(_),
                ..
            },
        ) => [r.max_age, config.max_age].into_iter().flatten().min(),
        _ => config.max_age,
    };
    let deadline = max_age.map(|age| add_saturating(row.enqueued_at, age));
    let expires = |journal: &mut AttemptRow, next: DateTime<Utc>| {
        let late = deadline.is_some_and(|d| next >= d);
        if late {
            journal.disposition = Disposition::Dead;
            journal.reason = Some(DeadReason::Expired);
            journal.error_msg = journal
                .error_msg
                .take()
                .map(|e| format!("{e} ({})", expired_error(max_age.unwrap_or_default())));
        }
        late
    };
    let end = attempt.finished_at;
    // The time a call that ended now may be followed by another: after `delay`, or later
    // if the downstream asked.
    let lock = |delay: Duration| {
        let after = add_saturating(end, delay);
        let asked = retry_after.map_or(after, |r| r.until(end, config.max_retry_after));
        ceil_millis(after.max(asked))
    };
    let policy = match rule.map(|r| &r.action) {
        Some(Action::Snooze(snooze))
            if u32::try_from(row.snoozes).unwrap_or(u32::MAX) < snooze.max_snoozes
                && end < add_saturating(row.enqueued_at, snooze.max_age) =>
        {
            let next = lock(snooze.wait);
            if !expires(&mut journal, next) {
                journal.disposition = Disposition::Snooze;
                journal.process_after = Some(next);
            }
            return journal;
        }
        Some(Action::Permanent) => None,
        Some(Action::Transient(policy)) => Some(policy),
        Some(Action::Snooze(_)) | None => transient.then_some(&config.policy),
    };
    let Some(policy) = policy else {
        journal.reason = Some(DeadReason::Permanent);
        return journal;
    };
    let count = u32::try_from(row.retry_count).unwrap_or(0);
    match policy.decide(count, rng) {
        RetryDecision::Exhausted => journal.reason = Some(DeadReason::RetriesExhausted),
        RetryDecision::Retry { retry_count, delay } => {
            let next = lock(delay);
            if !expires(&mut journal, next) {
                journal.disposition = Disposition::Retry;
                journal.retry_count = i32::try_from(retry_count).unwrap_or(i32::MAX);
                journal.process_after = Some(next);
            }
        }
    }
    journal
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::RetryAfter;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-11-24T14:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::minutes(minutes)
    }

    /// A record due at 14:00 with `retry_count` failures behind it.
    fn due(id: &str, retry_count: i32) -> QueueRow {
        QueueRow {
            sample_id: id.to_owned(),
            payload: Some("p".into()),
            error_msg: None,
            retry_count,
            process_after: at(0),
            enqueued_at: at(-60),
            snoozes: 0,
        }
    }

    /// A call that ended at 14:01 with `outcome`.
    fn called(outcome: Outcome) -> Tried {
        Tried::Called(Attempt {
            outcome,
            uncalled: None,
            started_at: at(1),
            finished_at: at(1),
            duration: Duration::ZERO,
        })
    }

    fn one(row: QueueRow, tried: Tried) -> Decision {
        decide(vec![row], vec![tried], 7, "w", &RoundConfig::default())
    }

    #[test]
    fn a_success_is_final_with_its_response() {
        let d = one(due("A", 2), called(Outcome::success("ok")));
        assert!(d.retried.is_empty());
        let row = &d.rows[0];
        assert_eq!(
            (row.disposition, row.outcome, row.retries_before),
            (Disposition::Final, AttemptKind::Success, 2)
        );
        assert_eq!((row.round, row.worker.as_str()), (7, "w"));
        assert_eq!(row.response.as_deref(), Some("ok"));
        assert_eq!(d.report(7, Phases::default()).succeeded, 1);
    }

    #[test]
    fn a_permanent_failure_is_dead_at_once() {
        let d = one(due("A", 0), called(Outcome::permanent("bad record")));
        let row = &d.rows[0];
        assert_eq!(row.disposition, Disposition::Dead);
        assert_eq!(row.reason, Some(DeadReason::Permanent));
        assert_eq!(row.error_msg.as_deref(), Some("bad record"));
        assert_eq!(row.retry_count, 0);
        assert!(d.retried.is_empty());
    }

    #[test]
    fn a_transient_failure_is_retried_after_its_backoff_one_retry_counted() {
        // The third failure (two behind it) waits 2^3 = 8 minutes from the call's end.
        let d = one(due("A", 2), called(Outcome::transient("503")));
        let row = &d.rows[0];
        assert_eq!(row.disposition, Disposition::Retry);
        assert_eq!((row.retries_before, row.retry_count), (2, 3));
        assert_eq!(row.process_after, Some(at(1 + 8)));
        assert_eq!(
            d.retried,
            vec![QueueRow {
                error_msg: Some("503".into()),
                retry_count: 3,
                process_after: at(9),
                ..due("A", 2)
            }]
        );
        assert_eq!(d.report(7, Phases::default()).retried, 1);
    }

    #[test]
    fn a_transient_failure_past_the_budget_is_dead_as_retries_exhausted() {
        let d = one(due("A", 5), called(Outcome::transient("503")));
        let row = &d.rows[0];
        assert_eq!(row.disposition, Disposition::Dead);
        assert_eq!(row.reason, Some(DeadReason::RetriesExhausted));
        assert_eq!(row.retry_count, 5);
        assert!(d.retried.is_empty());
    }

    #[test]
    fn a_retry_after_later_than_the_backoff_wins_up_to_its_ceiling() {
        let asked = |retry_after| Outcome::Transient {
            error: "429".into(),
            retry_after: Some(retry_after),
            class: None,
        };
        // Ten minutes asked, two of backoff: ten.
        let d = one(
            due("A", 0),
            called(asked(RetryAfter::Delay(Duration::from_secs(600)))),
        );
        assert_eq!(d.rows[0].process_after, Some(at(11)));
        // A year asked: the ceiling, a day after the call.
        let d = one(
            due("A", 0),
            called(asked(RetryAfter::At(at(365 * 24 * 60)))),
        );
        assert_eq!(d.rows[0].process_after, Some(at(1 + 24 * 60)));
        // Sooner than the backoff: the backoff.
        let d = one(
            due("A", 0),
            called(asked(RetryAfter::Delay(Duration::from_secs(1)))),
        );
        assert_eq!(d.rows[0].process_after, Some(at(1 + 2)));
    }

    #[test]
    fn a_record_held_back_keeps_its_count_and_waits_out_the_pause() {
        let d = one(due("A", 3), Tried::Deferred(Some(at(5))));
        assert!(d.rows.is_empty());
        assert_eq!(d.deferred, 1);
        assert_eq!(
            d.retried,
            vec![QueueRow {
                process_after: at(5),
                ..due("A", 3)
            }]
        );
        // Without a pause (breaker open, the lease running out), its lock is unchanged.
        let d = one(due("A", 3), Tried::Deferred(None));
        assert_eq!(d.retried, vec![due("A", 3)]);
        let report = d.report(7, Phases::default());
        assert_eq!((report.processed, report.deferred), (0, 1));
    }

    #[test]
    fn the_queue_keeps_each_retry_count_together_and_decisions_are_reproducible() {
        let rows = vec![due("A", 1), due("B", 0), due("C", 1), due("D", 0)];
        let tried = || {
            vec![
                called(Outcome::transient("x")),
                called(Outcome::transient("x")),
                Tried::Deferred(None),
                called(Outcome::success("ok")),
            ]
        };
        let config = RoundConfig {
            policy: RetryPolicy::builder()
                .jitter(crate::policy::Jitter::Full)
                .build()
                .unwrap(),
            ..RoundConfig::default()
        };
        let d = decide(rows.clone(), tried(), 3, "w", &config);
        let counts: Vec<(&str, i32)> = d
            .retried
            .iter()
            .map(|r| (r.sample_id.as_str(), r.retry_count))
            .collect();
        // C, held back, keeps its earlier lock: first among the count of 1.
        assert_eq!(counts, [("C", 1), ("B", 1), ("A", 2)]);
        assert_eq!(decide(rows, tried(), 3, "w", &config), d);
    }
}
