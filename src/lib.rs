//! # retrylake
//!
//! A durable exponential-backoff retry queue for data pipelines, with its state in Delta
//! Lake tables.
//!
//! Records wait in `retry_queue` until their time lock (`process_after`) passes; a round
//! hands every due record to a [`Processor`]. A success goes to `final_results`, a
//! transient failure waits `base * multiplier^n` (2, 4, 8, 16, 32 minutes by default), and
//! a permanent failure or the sixth transient one goes to `dead_letter_queue`. A round
//! first claims its records under a lease (one commit to `retry_queue`), then calls, then
//! journals every decision in `attempts` before it changes any other table, so a crash or a
//! second worker never loses or doubles a record.
//!
//! ## Where to start
//!
//! - [`Queue`]: open the tables, [`enqueue`](Queue::enqueue), run a round
//!   ([`run_round`](Queue::run_round), or many with [`run_rounds`]), [`status`](Queue::status),
//!   [`query`](Queue::query) them in SQL, [`redrive`](Queue::redrive) dead letters.
//! - [`Processor`]: what a round calls for each record, returning an [`Outcome`] for a
//!   [`Record`]; [`HttpProcessor`], [`CommandProcessor`] and [`SimulateProcessor`] come
//!   built in. A [`BatchProcessor`] takes many records in one call, one outcome each
//!   (the same three implement it); [`Calls`] says which a round uses.
//! - [`RoundConfig`]: how a round runs (concurrency, batch size, timeout, lease, shard, the
//!   [`Guard`] of breaker and rate limit), with its [`RetryPolicy`] and the [`Rules`] that
//!   give some failures (by [`ErrorClass`] or message) another treatment.
//! - [`Error`]: what stops the queue itself; a failing record is an [`Outcome`], never an
//!   error.
//! - [`store`]: the tables' rows, for reading them directly.
//!
//! ## Quick start
//!
//! ```no_run
//! # async fn demo() -> retrylake::Result<()> {
//! use retrylake::{Queue, RoundConfig, SimulateProcessor};
//!
//! let mut queue = Queue::open("./retrylake-data").await?;
//! queue.enqueue("samples.jsonl".as_ref(), &Default::default()).await?;
//! let processor = SimulateProcessor::new(0.3, 42);
//! let report = queue.run_round(&processor, &RoundConfig::default()).await?;
//! println!("{} succeeded, {} to retry", report.succeeded, report.retried);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod alert;
mod audit;
mod catalog;
mod clock;
mod control;
mod enqueue;
mod error;
mod guard;
mod hash;
pub mod input;
pub mod layer;
pub mod metrics;
pub mod monitor;
mod outcome;
mod policy;
pub mod processor;
mod queue;
mod redrive;
mod report;
mod round;
mod rules;
mod shard;
pub mod sql;
mod status;
pub mod store;
mod worker;

pub use alert::{ALERT_BATCH, AlertedLetter, Alerts, DeadLetterAlert, DeadLetterHook};
pub use audit::Audit;
pub use clock::{Clock, FixedClock, SystemClock};
pub use control::{CANCEL_WORKER, CancelFilter, CancelReport, MAX_REASON_LEN, Pause};
pub use enqueue::{EnqueueOptions, EnqueueReport};
pub use error::{Error, Result};
pub use guard::{Admission, BreakerConfig, BreakerState, Guard, GuardConfig, Rate};
pub use input::{Fields, INVALID_ID_PREFIX, InputFormat, MAX_ID_LEN};
pub use layer::{Call, CatchPanic, Guarded, Timeout};
pub use monitor::Commit;
pub use outcome::{ErrorClass, Outcome, OutcomeKind, RetryAfter};
pub use policy::{Jitter, RetryDecision, RetryPolicy, RetryPolicyBuilder};
pub use processor::{
    BatchProcessor, Calls, CommandProcessor, HttpProcessor, Processor, ProcessorKind,
    ProcessorOptions, Record, SimulateProcessor,
};
pub use queue::{DEFAULT_WORKER, Queue, WorkerName};
pub use redrive::{REDRIVE_WORKER, RedriveFilter, RedriveReport};
pub use round::{
    DEFAULT_CALL_BATCH, MAX_LEASE, MIN_LEASE, MISSING_PAYLOAD, OutcomeCounts, Phases, Progress,
    ROUND_BATCH, RoundConfig, RoundReport,
};
pub use rules::{Action, MAX_RULES, Rule, Rules, Snooze};
pub use shard::Shard;
pub use status::{ErrorCount, ReasonCount, Status};
pub use store::{AsOf, Maintained, Maintenance, RowRetention, StorageOptions};
pub use worker::{Rounds, Shutdown, Until, run_rounds};
