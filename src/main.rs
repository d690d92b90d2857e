//! The `retrylake` command: flags and dispatch only; the work is in the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::util::pretty::pretty_format_batches;
use retrylake::metrics::Metrics;
use retrylake::store::{DeadReason, Table};
use retrylake::{
    Alerts, AsOf, BatchProcessor, BreakerConfig, Calls, CancelFilter, DeadLetterHook,
    EnqueueOptions, Fields, FixedClock, Guard, GuardConfig, InputFormat, Jitter, Maintenance,
    Processor, ProcessorKind, ProcessorOptions, Progress, Queue, Rate, RedriveFilter, RetryPolicy,
    RoundConfig, RoundReport, Rounds, RowRetention, Rules, Shard, Shutdown, Status, Until,
    WorkerName, run_rounds,
};

/// A durable exponential-backoff retry queue on Delta Lake tables.
#[derive(Parser)]
#[command(name = "retrylake", version, about, max_term_width = 100)]
struct Cli {
    /// Where the tables live.
    #[arg(
        long,
        global = true,
        env = "RETRYLAKE_DATA",
        default_value = "./retrylake-data"
    )]
    data: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the four tables (empty, version 0) if they are missing.
    Init,
    /// Add the records of a file to the retry queue, due now.
    Enqueue {
        /// JSON Lines, CSV or Parquet file.
        file: PathBuf,
        #[command(flatten)]
        input: InputArgs,
        /// The current time (RFC 3339); the system clock by default.
        #[arg(long, value_parser = parse_time)]
        now: Option<DateTime<Utc>>,
    },
    /// Run a round: process every due record once.
    Run(Box<RunCommand>),
    /// Run rounds until SIGINT or SIGTERM, sleeping until the next record is due.
    Worker(Box<WorkerArgs>),
    /// Run SQL over retry_queue, final_results, dead_letter_queue and attempts, with
    /// Delta's VERSION AS OF, DESCRIBE HISTORY and delta.`path`; without SQL, a SQL shell
    /// (statements from stdin in a pipe).
    #[command(visible_alias = "sql")]
    Query {
        /// The statement, e.g. "SELECT error_msg, COUNT(*) FROM dead_letter_queue GROUP BY 1";
        /// omitted: a shell on a terminal, else the `;`-separated statements on stdin.
        #[arg(allow_hyphen_values = true)]
        sql: Option<String>,
        /// Read every table the SQL names at this version, unless it says its own
        /// VERSION AS OF (a table without that version is an error).
        #[arg(long, conflicts_with = "as_of")]
        version: Option<u64>,
        /// Read every table the SQL names as it was at this time (RFC 3339), unless it
        /// says its own AS OF.
        #[arg(long, value_parser = parse_time)]
        as_of: Option<DateTime<Utc>>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
    /// List the commits of a table (or of all four), newest first.
    History {
        /// retry_queue, final_results, dead_letter_queue or attempts; all when omitted.
        table: Option<String>,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back into the retry queue (retry_count 0, due now).
    Redrive {
        /// Only dead letters with this reason (permanent, retries_exhausted, invalid_input).
        #[arg(long, value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<DeadReason>()))]
        reason: Option<DeadReason>,
        /// Only dead letters with exactly this error message.
        #[arg(long)]
        error_msg: Option<String>,
        /// Only this id (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// At most this many, oldest first.
        #[arg(long, value_parser = parse_count)]
        limit: Option<usize>,
        /// The current time (RFC 3339); the system clock by default.
        #[arg(long, value_parser = parse_time)]
        now: Option<DateTime<Utc>>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Pause the queue: every worker's rounds claim nothing until --until or a resume
    /// (enqueues go on).
    Pause {
        /// End the pause by itself at this time (RFC 3339); until a resume when omitted.
        #[arg(long, value_parser = parse_time)]
        until: Option<DateTime<Utc>>,
        /// Why, for the status and the history.
        #[arg(long)]
        reason: Option<String>,
        /// The current time (RFC 3339); the system clock by default.
        #[arg(long, value_parser = parse_time)]
        now: Option<DateTime<Utc>>,
    },
    /// End a pause: workers claim again from their next round.
    Resume,
    /// Move queued records to the dead-letter queue (reason cancelled), now.
    Cancel {
        /// Only this id (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Only records whose last error is exactly this.
        #[arg(long)]
        error_msg: Option<String>,
        /// Only records enqueued at least this long ago.
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// Every queued record (required when no other filter is given).
        #[arg(long)]
        all: bool,
        /// Why, written as the dead letters' error_msg.
        #[arg(long)]
        reason: Option<String>,
        /// The current time (RFC 3339); the system clock by default.
        #[arg(long, value_parser = parse_time)]
        now: Option<DateTime<Utc>>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Compact a table (or all four), ordering retry_queue by process_after, and
    /// checkpoint it.
    Optimize {
        /// retry_queue, final_results, dead_letter_queue or attempts; all when omitted.
        table: Option<String>,
    },
    /// Delete data files that no version younger than --retain needs.
    Vacuum {
        /// Keep what versions of this age still read (time travel stops before it).
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        retain: Duration,
    },
    /// Write a self-contained HTML report: backlog over time, attempts per round, dead
    /// letters, the backoff schedule.
    Report {
        /// The HTML file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        policy: PolicyArgs,
        /// The current time (RFC 3339); the system clock by default.
        #[arg(long, value_parser = parse_time)]
        now: Option<DateTime<Utc>>,
    },
    /// Show the backlog, due records, retries and dead letters.
    Status {
        /// The current time (RFC 3339); the system clock by default.
        #[arg(long, value_parser = parse_time)]
        now: Option<DateTime<Utc>>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct InputArgs {
    /// Input format; by the file's extension when not given.
    #[arg(long, value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<InputFormat>()))]
    format: Option<InputFormat>,
    /// The field holding each record's id.
    #[arg(long, default_value = "sample_id")]
    id_field: String,
    /// The field holding each record's payload.
    #[arg(long, default_value = "payload")]
    payload_field: String,
    /// Dead-letter invalid records (reason invalid_input) instead of refusing the file.
    #[arg(long)]
    skip_invalid: bool,
}

impl InputArgs {
    fn options(&self) -> EnqueueOptions {
        EnqueueOptions {
            format: self.format,
            fields: Fields {
                id: self.id_field.clone(),
                payload: self.payload_field.clone(),
            },
            skip_invalid: self.skip_invalid,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    /// An aligned text table.
    Table,
    /// A JSON array of row objects.
    Json,
    /// CSV with a header row.
    Csv,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProcessorArg {
    /// The original Spark job's simulator: transient failures at --transient-rate.
    Simulate,
    /// `sh -c CMD` per record (--command).
    Command,
    /// POST each record as JSON to --url.
    Http,
}

impl ProcessorArg {
    fn kind(self) -> ProcessorKind {
        match self {
            ProcessorArg::Simulate => ProcessorKind::Simulate,
            ProcessorArg::Command => ProcessorKind::Command,
            ProcessorArg::Http => ProcessorKind::Http,
        }
    }
}

/// `run`: the flags it shares with `worker`, and its own.
#[derive(Args)]
struct RunCommand {
    #[command(flatten)]
    run: RunArgs,
    /// The current time (RFC 3339); the system clock by default.
    #[arg(long, value_parser = parse_time)]
    now: Option<DateTime<Utc>>,
    /// Keep running rounds until the queue is empty: with --now the clock jumps to the
    /// next due record, otherwise it waits for it.
    #[arg(long)]
    drain: bool,
    /// Print one JSON object per round.
    #[arg(long)]
    json: bool,
}

/// The flags `run` and `worker` share.
#[derive(Args)]
struct RunArgs {
    /// What processes each record: `run` simulates when not given (and says so); a
    /// worker must be told.
    #[arg(long, value_enum)]
    processor: Option<ProcessorArg>,
    /// The shell command of the command processor.
    #[arg(long, required_if_eq("processor", "command"))]
    command: Option<String>,
    /// The endpoint of the http processor.
    #[arg(long, required_if_eq("processor", "http"))]
    url: Option<String>,
    /// A header for every HTTP call, as 'Name: value' (repeatable).
    #[arg(long = "header", value_name = "'NAME: VALUE'")]
    headers: Vec<String>,
    /// A secret header whose value is read from an environment variable, as 'Name: VAR'
    /// (repeatable); the value never appears in logs or errors.
    #[arg(long = "header-env", value_name = "'NAME: VAR'")]
    env_headers: Vec<String>,
    /// HTTP statuses that are transient (all other non-2xx are permanent).
    #[arg(long = "transient-status", value_delimiter = ',', default_values_t = retrylake::processor::http::DEFAULT_TRANSIENT_STATUSES)]
    transient_statuses: Vec<u16>,
    /// The furthest a Retry-After may push a record back.
    #[arg(long, default_value = "1d", value_parser = parse_duration)]
    max_retry_after: Duration,
    /// The probability (0 to 1) that a simulated call fails transiently.
    #[arg(long = "transient-rate", default_value_t = 0.3, value_parser = parse_probability)]
    transient_probability: f64,
    /// Seed of the simulator and of the jitter.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Most calls in flight at once (batches, with --call-batch).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: u32,
    /// Rules that give some failures another treatment (permanent, their own schedule, or
    /// a snooze that counts no retry), from a TOML file (see the README).
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Send records in batches of at most N per call: http POSTs a JSON array, command
    /// reads JSON Lines on stdin, and each answers per record (see the README). A batch
    /// is cut from the records due and never waits to fill.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    call_batch: Option<u32>,
    /// Longest a call may take before it counts as a transient failure.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    timeout: Duration,
    /// Most records to process: one round of at most N. Without it, `run` goes on with
    /// rounds of --batch-size records while more are due.
    #[arg(long, value_parser = parse_count)]
    limit: Option<usize>,
    /// Most records per round when --limit is not given; bounds a round's memory.
    #[arg(long, default_value_t = retrylake::ROUND_BATCH, value_parser = parse_count)]
    batch_size: usize,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    guard: GuardArgs,
    /// Call the processor even for records with an empty payload.
    #[arg(long)]
    allow_empty_payload: bool,
    /// This runner's name in the journal; concurrent runners need distinct names.
    #[arg(long, default_value = "main")]
    worker: WorkerName,
    /// Only the records of shard I of N (0-based), by a stable hash of sample_id.
    #[arg(long, value_name = "I/N", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<Shard>().map_err(|e| e.to_string())))]
    shard: Option<Shard>,
    /// How long a round holds the records it claims; a round running longer commits nothing.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    lease: Duration,
    /// Where the dead letters of each round go, at least once, after the round commits: a
    /// shell command (the alert as JSON on stdin) or an http(s):// URL (POSTed as JSON).
    #[arg(long, value_name = "CMD|URL", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<DeadLetterHook>()))]
    on_dead_letter: Option<DeadLetterHook>,
    /// A record's deadline from its enqueue: past it, it is not called again and goes to
    /// the dead-letter queue with reason expired.
    #[arg(long, value_name = "DUR", value_parser = parse_positive_duration)]
    max_age: Option<Duration>,
    /// Enqueue this file first.
    #[arg(long)]
    input: Option<PathBuf>,
    #[command(flatten)]
    input_args: InputArgs,
    /// With --drain on the system clock, and for a worker: the longest wait between
    /// rounds, so records enqueued or released by other runners are picked up.
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    poll: Duration,
    /// After every round, keep the tables small: compact the small files of attempts,
    /// final_results and dead_letter_queue, and remove expired _delta_log entries.
    #[arg(long, value_name = "on|off", default_value = "on", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    maintenance: bool,
    /// Compact a table once this many of its files are small.
    #[arg(long, default_value_t = 32, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..))]
    compact_at: usize,
    /// How long _delta_log entries are kept, so how far back time travel reaches at least
    /// (a duration such as 2d, or 'forever').
    #[arg(long, default_value = "1d", value_parser = parse_retention)]
    log_retention: Retention,
    /// How long data files the tables no longer use stay on storage before a vacuum
    /// deletes them, so how long time travel reads a version's data (or 'forever').
    #[arg(long, value_name = "DUR", default_value = "7d", value_parser = parse_vacuum_after)]
    vacuum_after: Retention,
    /// How long attempts rows are kept, by finished_at (a duration such as 30d, or
    /// 'forever'); pruned rows leave a DELETE in the table's history. Applies with
    /// --maintenance off too.
    #[arg(long, value_name = "DUR", default_value = "forever", value_parser = parse_retention)]
    keep_attempts: Retention,
    /// How long final_results rows are kept, by processed_at (or 'forever').
    #[arg(long, value_name = "DUR", default_value = "forever", value_parser = parse_retention)]
    keep_final: Retention,
    /// How long dead_letter_queue rows are kept, by failed_at (or 'forever').
    #[arg(long, value_name = "DUR", default_value = "forever", value_parser = parse_retention)]
    keep_dead: Retention,
}

/// The backoff policy's flags, shared by `run`, `worker` and `report`.
#[derive(Args)]
struct PolicyArgs {
    /// Retries before a record is dead-lettered.
    #[arg(long, default_value_t = 5)]
    max_retries: u32,
    /// Delay unit: retry n waits base * multiplier^n.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    base_backoff: Duration,
    /// Growth factor per retry.
    #[arg(long, default_value_t = 2.0)]
    multiplier: f64,
    /// Cap on any delay.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    max_backoff: Duration,
    /// Random spread: none, full, equal or decorrelated.
    #[arg(long, default_value = "none", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<Jitter>().map_err(|e| e.to_string())))]
    jitter: Jitter,
}

impl PolicyArgs {
    fn policy(&self) -> Result<RetryPolicy> {
        Ok(RetryPolicy::builder()
            .base(self.base_backoff)
            .multiplier(self.multiplier)
            .max_retries(self.max_retries)
            .max_backoff(self.max_backoff)
            .jitter(self.jitter)
            .build()?)
    }
}

/// The guard between the rounds and the downstream: circuit breaker and rate limit.
#[derive(Args)]
struct GuardArgs {
    /// Most calls per second, minute or hour across all calls in flight (N/s, N/m, N/h).
    #[arg(long, value_name = "N/s", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<Rate>()))]
    rate: Option<Rate>,
    /// The circuit breaker: on by default for the http and command processors, off for
    /// simulate (its failures are independent draws, and a breaker would make a run
    /// depend on timing).
    #[arg(long, value_name = "on|off", value_parser = clap::builder::BoolishValueParser::new())]
    breaker: Option<bool>,
    /// The share of recent calls failing transiently that opens the breaker.
    #[arg(long = "breaker-failure-rate", default_value_t = 0.5, value_parser = parse_share)]
    breaker_failure_share: f64,
    /// How many of the latest calls the breaker weighs.
    #[arg(long, default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    breaker_window: usize,
    /// The fewest calls in the window before the breaker may open.
    #[arg(long, default_value_t = 50, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    breaker_min_calls: usize,
    /// How long an open breaker makes no calls before one probe decides.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    breaker_cool_down: Duration,
}

impl GuardArgs {
    fn guard(&self, processor: ProcessorKind) -> Result<Guard> {
        let breaker = self.breaker.unwrap_or(processor.breaker_by_default());
        let breaker_config = BreakerConfig {
            failure_share: self.breaker_failure_share,
            window: self.breaker_window,
            min_calls: self.breaker_min_calls,
            cool_down: self.breaker_cool_down,
        };
        // Checked whether or not the breaker is on: settings that cannot work are a
        // mistake either way.
        breaker_config.check()?;
        Ok(Guard::new(GuardConfig {
            breaker: breaker.then_some(breaker_config),
            rate: self.rate,
        }))
    }
}

impl RunArgs {
    /// The tables' upkeep after every round.
    /// `rounds` with the poll, upkeep and dead-letter alerts these flags set.
    fn rounds(&self, rounds: Rounds) -> Result<Rounds> {
        let mut rounds = rounds.poll(self.poll).maintenance(self.maintenance());
        if let Some(hook) = &self.on_dead_letter {
            rounds = rounds.on_dead_letter(Alerts::new(hook)?);
        }
        Ok(rounds)
    }

    fn maintenance(&self) -> Maintenance {
        let keep_rows = RowRetention {
            attempts: self.keep_attempts.0,
            final_results: self.keep_final.0,
            dead_letter_queue: self.keep_dead.0,
        };
        if !self.maintenance {
            return Maintenance {
                keep_rows,
                ..Maintenance::off()
            };
        }
        Maintenance {
            compact_at: Some(self.compact_at),
            log_retention: self.log_retention.0,
            vacuum_after: self.vacuum_after.0,
            keep_rows,
            ..Maintenance::default()
        }
    }
}

#[derive(Args)]
struct WorkerArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Serve Prometheus metrics on this address (host:port, or a port on 127.0.0.1).
    #[arg(long)]
    metrics_addr: Option<String>,
    // `run`'s own flags, refused with a message rather than clap's "unexpected argument".
    #[arg(long, hide = true, value_name = "TS")]
    now: Option<String>,
    #[arg(long, hide = true)]
    drain: bool,
    #[arg(long, hide = true)]
    json: bool,
}

impl WorkerArgs {
    /// Refuses `run`'s flags that a worker would ignore, and a processor left to chance.
    fn check(&self) -> Result<ProcessorArg> {
        let ignored: Vec<&str> = [
            (self.now.is_some(), "--now"),
            (self.drain, "--drain"),
            (self.json, "--json"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect();
        if !ignored.is_empty() {
            bail!(
                "worker does not take {}: it runs on the system clock until SIGINT or SIGTERM \
                 and logs one line per round (use `retrylake run` for a virtual clock, \
                 --drain or --json)",
                ignored.join(", ")
            );
        }
        self.run.processor.context(
            "worker needs a processor: choose --processor http|command|simulate \
             (simulate only pretends to process records)",
        )
    }
}

async fn worker(data: &str, args: WorkerArgs) -> Result<()> {
    let kind = args.check()?;
    let shutdown = Shutdown::on_signals().context("cannot listen for signals")?;
    let (mut queue, processor, config, _clock) = prepare(data, &args.run, kind, None).await?;
    let mut rounds = args
        .run
        .rounds(Rounds::new(Until::Stopped))?
        .shutdown(shutdown);
    if let Some(addr) = &args.metrics_addr {
        let metrics = Arc::new(Mutex::new(Metrics::default()));
        let bound = retrylake::metrics::serve(addr, metrics.clone()).await?;
        tracing::info!("metrics on http://{bound}/metrics");
        rounds = rounds.metrics(metrics);
    }
    tracing::info!(worker = queue.worker(), "worker started");
    run_rounds(&mut queue, processor.calls(), &config, &rounds, |r| {
        if let Some(round) = r.round {
            tracing::info!(
                "round {round}: {} processed, {} succeeded, {} to retry, {} snoozed, {} dead-lettered in {:.2?}",
                r.processed,
                r.succeeded,
                r.retried,
                r.snoozed,
                r.dead_lettered,
                r.phases.total()
            );
        }
        Ok::<(), anyhow::Error>(())
    })
    .await?;
    tracing::info!("worker stopped");
    Ok(())
}

/// A progress bar for long rounds when stderr is a terminal; nothing in logs and pipes.
fn progress_bar() -> Option<Progress> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::hidden();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} calls  {per_sec}  eta {eta}")
            .expect("a valid template"),
    );
    Some(Progress::new(move |done, total| {
        if done == 1 && total >= 100 {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        if done == total {
            bar.finish_and_clear();
            bar.reset();
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
    }))
}

/// The table a command names, or all four.
fn tables(name: Option<&str>) -> Result<Vec<Table>> {
    Ok(match name {
        None => Table::ALL.to_vec(),
        Some(name) => vec![name.parse()?],
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 90s, 2m, 1h)"))
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("expected a duration above zero (e.g. 90s, 2m, 1h)".to_owned()),
        d => Ok(d),
    }
}

/// A retention (of log entries, of rows): a duration, or forever.
#[derive(Debug, Clone, Copy)]
struct Retention(Option<Duration>);

fn parse_retention(s: &str) -> Result<Retention, String> {
    if s == "forever" {
        return Ok(Retention(None));
    }
    match parse_positive_duration(s)? {
        d if d < Duration::from_secs(3600) => Err(
            "expected at least 1h (or 'forever'): a process still working on an older version \
             (a round under its lease, a paused worker) must find what it reads"
                .to_owned(),
        ),
        d => Ok(Retention(Some(d))),
    }
}

/// How long unused data files are kept: at least a day, or forever.
fn parse_vacuum_after(s: &str) -> Result<Retention, String> {
    match parse_retention(s)? {
        Retention(Some(d)) if d < Duration::from_secs(24 * 3600) => Err(
            "expected at least 1d (or 'forever'): a round stalled past it could commit a file \
             the vacuum deleted"
                .to_owned(),
        ),
        r => Ok(r),
    }
}

/// A count of records: zero would do nothing and look like success.
fn parse_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number of at least 1".to_owned()),
    }
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    humantime::parse_rfc3339_weak(s)
        .map(DateTime::<Utc>::from)
        .map_err(|_| "expected an RFC 3339 time such as 2025-11-24T14:00:00Z".to_owned())
}

fn parse_probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err("expected a probability between 0 and 1".to_owned()),
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 1.0 => Ok(p),
        _ => Err("expected a share above 0 and at most 1".to_owned()),
    }
}

fn main() -> ExitCode {
    one_malloc_arena();
    // A panic on a dependency's background task (object_store's writer when the disk is
    // full) is turned into an error by the runtime; keep its trace out of the user's way,
    // but never out of the log.
    std::panic::set_hook(Box::new(|info| {
        if std::thread::current().name() == Some("main") {
            eprintln!("error: internal error: {info}");
        } else {
            // delta-kernel's executor thread panics when the tables it serves are dropped
            // as the process ends: expected, not worth a line. Any other is a fault, logged
            // as one line (object_store's writer panics on a full disk, say).
            let payload = info.payload();
            let text = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)")
                .replace('\n', " ");
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            if text.contains("TokioMultiThreadExecutor has crashed") {
                tracing::debug!(target: "retrylake::panic", "background task failed: {text} ({at})");
            } else {
                tracing::error!(target: "retrylake::panic", "background task failed: {text} ({at})");
            }
        }
    }));
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RETRYLAKE_LOG")
                .unwrap_or_else(|_| "retrylake=info".into()),
        )
        .with_target(false)
        .init();
    // DataFusion and delta-rs plan by recursion over the SQL, on this thread: a query of
    // tens of thousands of terms (an `IN` list on stdin) needs more than the default stack.
    // Only the pages used are committed; the runtime's threads keep the default (a large
    // stack for each blocking thread would exhaust a limited address space).
    const STACK: usize = 256 << 20;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = std::thread::Builder::new()
        .name("main".into())
        .stack_size(STACK)
        .spawn(move || runtime.block_on(dispatch(cli)))
        .map_err(anyhow::Error::from)
        .and_then(|thread| {
            thread.join().unwrap_or_else(|_| {
                Err(anyhow::anyhow!("internal error: the main thread panicked"))
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, skipping causes whose text is already shown
/// (delta-rs errors repeat their sources in their own message).
fn message(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message.replace('\n', " ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn open(data: &str, now: Option<DateTime<Utc>>) -> Result<Queue> {
    let queue = Queue::open(data).await?;
    Ok(match now {
        Some(now) => queue.with_clock(Arc::new(FixedClock::new(now))),
        None => queue,
    })
}

async fn dispatch(cli: Cli) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Init => {
            open(&cli.data, None).await?;
            writeln!(out, "tables ready under {}", cli.data)?;
        }
        Command::Enqueue { file, input, now } => {
            let mut queue = open(&cli.data, now).await?;
            let report = queue.enqueue(&file, &input.options()).await?;
            writeln!(
                out,
                "enqueued {} of {} records ({} already known, {} invalid dead-lettered)",
                report.enqueued, report.read, report.skipped_existing, report.invalid
            )?;
        }
        Command::Run(args) => run(&cli.data, *args, &mut out).await?,
        Command::Worker(args) => worker(&cli.data, *args).await?,
        Command::Query {
            sql,
            version,
            as_of,
            format,
        } => {
            let mut queue = Queue::open_existing(&cli.data).await?;
            let as_of = match (version, as_of) {
                (Some(v), _) => AsOf::Version(v),
                (None, Some(t)) => AsOf::Time(t),
                (None, None) => AsOf::Latest,
            };
            let session = Session {
                root: &cli.data,
                queue: &mut queue,
                as_of,
                format,
            };
            match sql {
                Some(sql) => session.run(&sql, &mut out).await?,
                None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                    drop(out);
                    session.shell().await?
                }
                None => session.script(std::io::stdin().lock(), &mut out).await?,
            }
        }
        Command::Pause { until, reason, now } => {
            let mut queue = open(&cli.data, now).await?;
            let pause = queue.pause(until, reason.as_deref()).await?;
            match pause.until {
                Some(until) => writeln!(out, "queue paused until {}", until.to_rfc3339())?,
                None => writeln!(out, "queue paused until `retrylake resume`")?,
            }
        }
        Command::Resume => {
            let mut queue = Queue::open(&cli.data).await?;
            queue.resume().await?;
            writeln!(out, "queue resumed")?;
        }
        Command::Cancel {
            ids,
            error_msg,
            older_than,
            all,
            reason,
            now,
            json,
        } => {
            let mut queue = open(&cli.data, now).await?;
            let filter = CancelFilter {
                ids,
                error_msg,
                older_than,
                all,
                reason,
            };
            let report = queue.cancel(&filter).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&report)?)?;
            } else {
                writeln!(out, "cancelled {} records", report.cancelled)?;
            }
            if report.held > 0 {
                tracing::warn!(
                    "{} matching records are held by a running round and were left to it; \
                     cancel again once it has placed them",
                    report.held
                );
            }
        }
        Command::Optimize { table } => {
            let mut queue = Queue::open(&cli.data).await?;
            for t in queue.optimize(&tables(table.as_deref())?).await? {
                writeln!(
                    out,
                    "{}: {} files compacted into {}",
                    t.table, t.files_removed, t.files_added
                )?;
            }
        }
        Command::Vacuum { retain } => {
            let mut queue = Queue::open(&cli.data).await?;
            for t in queue.vacuum(retain).await? {
                writeln!(out, "{}: {} files deleted", t.table, t.files_deleted)?;
            }
        }
        Command::History { table, json } => {
            let tables = tables(table.as_deref())?;
            let mut queue = Queue::open_existing(&cli.data).await?;
            let commits = queue.history(&tables).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&commits)?)?;
            } else {
                print_history(&mut out, &commits)?;
            }
        }
        Command::Redrive {
            reason,
            error_msg,
            ids,
            limit,
            now,
            json,
        } => {
            let mut queue = open(&cli.data, now).await?;
            let filter = RedriveFilter {
                reason,
                error_msg,
                ids,
                limit,
            };
            let report = queue.redrive(&filter).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&report)?)?;
            } else {
                writeln!(
                    out,
                    "redrove {} dead letters into the retry queue",
                    report.redriven
                )?;
            }
        }
        Command::Report {
            out: file,
            policy,
            now,
        } => {
            let mut queue = Queue::open_existing(&cli.data).await?;
            if let Some(now) = now {
                queue = queue.with_clock(Arc::new(FixedClock::new(now)));
            }
            let html = queue.report(&policy.policy()?).await?;
            std::fs::write(&file, html)
                .with_context(|| format!("cannot write {}", file.display()))?;
            writeln!(out, "report written to {}", file.display())?;
        }
        Command::Status { now, json } => {
            let mut queue = Queue::open_existing(&cli.data).await?;
            if let Some(now) = now {
                queue = queue.with_clock(Arc::new(FixedClock::new(now)));
            }
            let status = queue.status().await?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&status)?)?;
            } else {
                print_status(&mut out, &status)?;
            }
        }
    }
    Ok(())
}

/// Keeps glibc to one malloc arena. A round's rows are allocated on one runtime thread and
/// freed on another, and with an arena per thread the arenas grow apart: a round of 100,000
/// records then peaks near 330 MB, against 220 MB with one arena, at the same speed.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; it runs before any other thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// A built-in processor, called per record or, with `--call-batch`, per batch.
enum Built {
    Each(Box<dyn Processor>),
    Batches(Box<dyn BatchProcessor>),
}

impl Built {
    fn calls(&self) -> Calls<'_> {
        match self {
            Built::Each(p) => Calls::Each(p.as_ref()),
            Built::Batches(p) => Calls::Batches(p.as_ref()),
        }
    }
}

/// The queue, processor and round settings `run` and `worker` share; enqueues `--input`.
/// Every setting is checked before the tables are opened.
async fn prepare(
    data: &str,
    args: &RunArgs,
    kind: ProcessorArg,
    now: Option<DateTime<Utc>>,
) -> Result<(Queue, Built, RoundConfig, Option<Arc<FixedClock>>)> {
    let kind = kind.kind();
    let policy = args.policy.policy()?;
    let options = ProcessorOptions {
        kind,
        command: args.command.clone(),
        url: args.url.clone(),
        headers: args.headers.clone(),
        env_headers: args.env_headers.clone(),
        transient_statuses: args.transient_statuses.clone(),
        transient_probability: args.transient_probability,
        seed: args.seed,
        pool_size: args.concurrency as usize,
    };
    let processor = match args.call_batch {
        None => Built::Each(options.build()?),
        Some(_) => Built::Batches(options.build_batch()?),
    };
    let config = RoundConfig {
        policy,
        limit: args.limit.unwrap_or(args.batch_size),
        concurrency: args.concurrency as usize,
        call_batch: args
            .call_batch
            .map_or(retrylake::DEFAULT_CALL_BATCH, |n| n as usize),
        rules: Arc::new(match &args.rules {
            Some(path) => Rules::load(path)?,
            None => Rules::none(),
        }),
        timeout: args.timeout,
        allow_empty_payload: args.allow_empty_payload,
        seed: args.seed,
        max_retry_after: args.max_retry_after,
        shard: args.shard,
        lease: args.lease,
        progress: progress_bar(),
        guard: args.guard.guard(kind)?,
        max_age: args.max_age,
    };
    let clock = now.map(|now| Arc::new(FixedClock::new(now)));
    let mut queue = Queue::open(data).await?.with_worker(args.worker.as_str())?;
    if let Some(clock) = &clock {
        queue = queue.with_clock(clock.clone());
    }
    if let Some(input) = &args.input {
        let report = queue.enqueue(input, &args.input_args.options()).await?;
        tracing::info!(
            enqueued = report.enqueued,
            known = report.skipped_existing,
            invalid = report.invalid,
            "enqueued {}",
            input.display()
        );
    }
    Ok((queue, processor, config, clock))
}

async fn run(data: &str, command: RunCommand, out: &mut impl Write) -> Result<()> {
    let RunCommand {
        run: args,
        now,
        drain,
        json,
    } = command;
    let kind = args.processor.unwrap_or(ProcessorArg::Simulate);
    let (mut queue, processor, config, clock) = prepare(data, &args, kind, now).await?;
    if args.processor.is_none() {
        // The quick start relies on the default; a pipeline must not, unawares.
        eprintln!(
            "warning: no --processor given: records are only simulated (a share of \
             --transient-rate fails), nothing is sent anywhere; choose --processor \
             http|command|simulate"
        );
    }
    // A round takes at most --batch-size records; without --limit, run goes on while more
    // are due, and with --drain until the queue is empty.
    let until = match (drain, args.limit) {
        (true, _) => Until::Drained,
        (false, Some(_)) => Until::OneRound,
        (false, None) => Until::NoneDue,
    };
    let mut rounds = args.rounds(Rounds::new(until))?;
    if let Some(clock) = clock {
        rounds = rounds.virtual_clock(clock);
    }
    run_rounds(&mut queue, processor.calls(), &config, &rounds, |report| {
        print_round(out, report, json)
    })
    .await
}

fn print_round(out: &mut impl Write, report: &RoundReport, json: bool) -> Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(report)?)?;
        return Ok(());
    }
    let next = report.next_due.map_or_else(
        || "queue empty".to_owned(),
        |t| format!("next due {}", t.to_rfc3339()),
    );
    let paused = report.paused_until.map(|until| {
        let why = match report.breaker.as_deref() {
            Some("open") => "circuit breaker open",
            _ => "the downstream asked to wait",
        };
        format!("calls paused until {} ({why})", until.to_rfc3339())
    });
    match (report.round, paused) {
        (None, _) if report.queue_paused.is_some() => {
            let p = report.queue_paused.as_ref().expect("checked");
            let until = p.until.map_or_else(
                || "until `retrylake resume`".to_owned(),
                |t| format!("until {}", t.to_rfc3339()),
            );
            writeln!(out, "queue paused {until} by {}; nothing claimed", p.by)?
        }
        (None, _) if report.lost > 0 => writeln!(
            out,
            "round lost its lease: {} records taken by another worker, nothing committed; {next}",
            report.lost
        )?,
        (None, Some(paused)) => writeln!(out, "{paused}; nothing claimed")?,
        (None, None) => writeln!(out, "nothing due; {next}")?,
        (Some(round), paused) => {
            write!(
                out,
                "round {round}: {} processed, {} succeeded, {} to retry, {} dead-lettered",
                report.processed, report.succeeded, report.retried, report.dead_lettered
            )?;
            if report.snoozed > 0 {
                write!(out, ", {} snoozed", report.snoozed)?;
            }
            if report.deferred > 0 {
                write!(out, ", {} not called", report.deferred)?;
            }
            match paused {
                Some(paused) => writeln!(out, "; {paused}")?,
                None => writeln!(out, "; {next}")?,
            }
        }
    }
    Ok(())
}

/// Where SQL runs: the tables, the version they are read at, and how results print.
struct Session<'a> {
    root: &'a str,
    queue: &'a mut Queue,
    as_of: AsOf,
    format: OutputFormat,
}

impl Session<'_> {
    /// Runs one statement and prints its result.
    async fn run(self, sql: &str, out: &mut impl Write) -> Result<()> {
        let mut session = self;
        session.statement(sql, out).await
    }

    async fn statement(&mut self, sql: &str, out: &mut impl Write) -> Result<()> {
        let (schema, batches) = self.queue.query_with_schema(sql, self.as_of).await?;
        if batches.is_empty() && !matches!(self.format, OutputFormat::Json) {
            // An empty result still shows its columns.
            let empty = RecordBatch::new_empty(schema);
            return print_batches(out, &[empty], self.format);
        }
        print_batches(out, &batches, self.format)
    }

    /// Runs the `;`-separated statements of `input` in order, stopping at the first that
    /// fails, named by its number and line.
    async fn script(mut self, mut input: impl std::io::Read, out: &mut impl Write) -> Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes).context("cannot read stdin")?;
        let script = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "stdin is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            )
        })?;
        let statements = retrylake::sql::statements(&script)?;
        if statements.is_empty() {
            bail!("no SQL on stdin: give a statement, or pipe statements separated by `;`");
        }
        for (n, statement) in statements.iter().enumerate() {
            self.statement(&statement.sql, out)
                .await
                .with_context(|| format!("statement {} (line {})", n + 1, statement.line))?;
        }
        Ok(())
    }

    /// The interactive shell: statements end with `;` and may span lines; history is
    /// kept in `RETRYLAKE_HISTORY` (default `~/.retrylake_history`). Ctrl-C cancels the
    /// statement being typed or run; Ctrl-D or `exit` leaves.
    async fn shell(mut self) -> Result<()> {
        use rustyline::error::ReadlineError;
        let mut editor = rustyline::DefaultEditor::new().context("cannot start the shell")?;
        let history = std::env::var_os("RETRYLAKE_HISTORY")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".retrylake_history"))
            });
        if let Some(file) = &history {
            let _ = editor.load_history(file);
        }
        eprintln!(
            "retrylake SQL over {}: end statements with `;`; DESCRIBE HISTORY t, \
             t VERSION AS OF n and delta.`path` work; `exit` or Ctrl-D leaves",
            self.root
        );
        let mut text = String::new();
        loop {
            let prompt = if text.is_empty() {
                "retrylake> "
            } else {
                "        -> "
            };
            let line = match tokio::task::block_in_place(|| editor.readline(prompt)) {
                Ok(line) => line,
                Err(ReadlineError::Interrupted) => {
                    text.clear();
                    continue;
                }
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e).context("cannot read the terminal"),
            };
            if text.is_empty()
                && matches!(
                    line.trim()
                        .trim_end_matches(';')
                        .to_ascii_lowercase()
                        .as_str(),
                    "exit" | "quit" | "\\q" | ".quit" | ".exit"
                )
            {
                break;
            }
            if text.is_empty() && line.trim().is_empty() {
                continue;
            }
            text.push_str(&line);
            text.push('\n');
            if !retrylake::sql::is_complete(&text) {
                continue;
            }
            let _ = editor.add_history_entry(text.trim_end());
            let statements = match retrylake::sql::statements(&text) {
                Ok(statements) => statements,
                Err(e) => {
                    eprintln!("error: {e}");
                    text.clear();
                    continue;
                }
            };
            text.clear();
            for statement in statements {
                let mut out = std::io::stdout().lock();
                let started = std::time::Instant::now();
                let result = tokio::select! {
                    result = self.statement(&statement.sql, &mut out) => result,
                    _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("cancelled")),
                };
                match result {
                    Ok(()) => eprintln!("({:.3} s)", started.elapsed().as_secs_f64()),
                    Err(e) => {
                        eprintln!("error: {}", message(&e));
                        break;
                    }
                }
            }
        }
        if let Some(file) = &history
            && let Err(e) = editor.save_history(file)
        {
            tracing::warn!("cannot save the shell's history to {}: {e}", file.display());
        }
        Ok(())
    }
}

fn print_batches(
    out: &mut impl Write,
    batches: &[RecordBatch],
    format: OutputFormat,
) -> Result<()> {
    match format {
        OutputFormat::Table => writeln!(out, "{}", pretty_format_batches(batches)?)?,
        OutputFormat::Json => {
            let mut writer = deltalake::arrow::json::ArrayWriter::new(Vec::new());
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            let body = writer.into_inner();
            out.write_all(if body.is_empty() { b"[]" } else { &body })?;
            writeln!(out)?;
        }
        OutputFormat::Csv => {
            let mut writer = deltalake::arrow::csv::Writer::new(&mut *out);
            for batch in batches {
                writer.write(&flat(batch)?)?;
            }
        }
    }
    Ok(())
}

/// `batch` with its nested columns (maps, lists, structs, which CSV cannot hold) as text,
/// written as the table format shows them.
fn flat(batch: &RecordBatch) -> Result<RecordBatch> {
    use deltalake::arrow::array::{ArrayRef, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    use deltalake::arrow::util::display::{ArrayFormatter, FormatOptions};
    if !batch.columns().iter().any(|c| c.data_type().is_nested()) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if !column.data_type().is_nested() {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
            continue;
        }
        let formatter = ArrayFormatter::try_new(column, &FormatOptions::default())?;
        let text: StringArray = (0..column.len())
            .map(|i| column.is_valid(i).then(|| formatter.value(i).to_string()))
            .collect();
        fields.push(Field::new(field.name(), DataType::Utf8, true));
        columns.push(std::sync::Arc::new(text));
    }
    Ok(RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(fields)),
        columns,
    )?)
}

fn print_history(out: &mut impl Write, commits: &[retrylake::Commit]) -> Result<()> {
    writeln!(
        out,
        "{:<18} {:>7}  {:<20}  {:<14} {:<9} {:>6}  {:<10} details",
        "table", "version", "timestamp", "operation", "job", "round", "worker"
    )?;
    for c in commits {
        let details: Vec<String> = c.details.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(
            out,
            "{:<18} {:>7}  {:<20}  {:<14} {:<9} {:>6}  {:<10} {}",
            c.table,
            c.version,
            c.timestamp
                .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
            c.operation.as_deref().unwrap_or(""),
            c.job.as_deref().unwrap_or(""),
            c.round.map_or_else(String::new, |r| r.to_string()),
            c.worker.as_deref().unwrap_or(""),
            details.join(" ")
        )?;
    }
    Ok(())
}

fn print_status(out: &mut impl Write, s: &Status) -> Result<()> {
    let next = s
        .next_due
        .map_or_else(|| "-".to_owned(), |t| t.to_rfc3339());
    let avg = s
        .avg_retries
        .map_or_else(|| "-".to_owned(), |a| format!("{a:.2}"));
    let max = s
        .max_retries
        .map_or_else(|| "-".to_owned(), |m| m.to_string());
    if let Some(p) = &s.paused {
        let until = p.until.map_or_else(
            || "until `retrylake resume`".to_owned(),
            |t| format!("until {}", t.to_rfc3339()),
        );
        let why = p
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        writeln!(
            out,
            "PAUSED         {until} (by {} at {}){why}",
            p.by,
            p.at.to_rfc3339()
        )?;
    }
    writeln!(
        out,
        "retry queue    {:>8} waiting, {} due now",
        s.waiting, s.due
    )?;
    if s.snoozed > 0 {
        writeln!(
            out,
            "snoozed        {:>8} waiting out a snooze (no retry counted)",
            s.snoozed
        )?;
    }
    writeln!(out, "retries        avg {avg}, max {max}")?;
    writeln!(out, "next due       {next}")?;
    writeln!(out, "final results  {:>8}", s.final_count)?;
    writeln!(out, "dead letters   {:>8}", s.dead)?;
    if !s.dead_by_reason.is_empty() {
        let reasons: Vec<String> = s
            .dead_by_reason
            .iter()
            .map(|r| format!("{} {}", r.count, r.reason.as_deref().unwrap_or("(none)")))
            .collect();
        writeln!(out, "  by reason    {}", reasons.join(", "))?;
    }
    if let Some(share) = s.recovered_share {
        writeln!(
            out,
            "recovered      {:>7.1}% of the {} records that needed a retry",
            share * 100.0,
            s.needed_retry
        )?;
    }
    if !s.dead_by_error.is_empty() {
        writeln!(out, "\ndead letters by error:")?;
        for e in &s.dead_by_error {
            writeln!(
                out,
                "{:>10}  {}",
                e.count,
                e.error_msg.as_deref().unwrap_or("(none)")
            )?;
        }
    }
    Ok(())
}
