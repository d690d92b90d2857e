//! # retrylake
//!
//! A durable exponential-backoff retry queue for data pipelines, with its state in Delta
//! Lake tables.
//!
//! Records wait in `retry_queue` until their time lock (`process_after`) passes; a round
//! hands every due record to a [`Processor`]. A success goes to `final_results`, a
//! transient failure waits `base * multiplier^n` (2, 4, 8, 16, 32 minutes by default), and
//! a permanent failure or the sixth transient one goes to `dead_letter_queue`. Each round
//! is journaled in `attempts` before any other table changes, so a crash never loses or
//! doubles a record.
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

pub mod audit;
pub mod clock;
pub mod enqueue;
pub mod error;
pub mod guard;
pub mod input;
pub mod layer;
pub mod maintenance;
pub mod metrics;
pub mod monitor;
pub mod outcome;
pub mod policy;
pub mod processor;
pub mod queue;
pub mod redrive;
pub mod report;
pub mod round;
pub mod shard;
pub mod status;
pub mod store;
pub mod worker;

pub use clock::{Clock, FixedClock, SystemClock};
pub use enqueue::{EnqueueOptions, EnqueueReport};
pub use error::{Error, Result};
pub use guard::{BreakerConfig, Guard, GuardConfig, Rate};
pub use layer::{Call, CatchPanic, Guarded, Timeout};
pub use outcome::{Outcome, RetryAfter};
pub use policy::{Jitter, RetryPolicy};
pub use processor::{
    CommandProcessor, HttpProcessor, Processor, ProcessorKind, ProcessorOptions, Record,
    SimulateProcessor,
};
pub use queue::{Queue, WorkerName};
pub use round::{OutcomeCounts, Phases, RoundConfig, RoundReport};
pub use shard::Shard;
pub use status::Status;
pub use store::StorageOptions;
pub use worker::{Rounds, Shutdown, Until, run_rounds};
