//! Processors: what a round calls for each due record.
//!
//! A processor turns one [`Record`] into an [`Outcome`]; a [`BatchProcessor`] turns many
//! records into one outcome each, in one call. The round handles everything else: the
//! time lock, concurrency, the timeout, backoff and the commits. Implement either to send
//! records anywhere; `simulate`, `command` and `http` come built in (the last two in both
//! forms), and [`ProcessorOptions`] builds one of them from settings.

pub mod batch;
mod command;
pub mod http;
mod options;
mod simulate;

pub use batch::BatchProcessor;
pub use command::CommandProcessor;
pub use http::HttpProcessor;
pub use options::{ProcessorKind, ProcessorOptions, parse_header};
pub use simulate::SimulateProcessor;

/// Most bytes of a success's answer (a body, a command's stdout) kept as its response.
pub const MAX_RESPONSE_BYTES: usize = 64 << 10;

use async_trait::async_trait;

use crate::outcome::Outcome;

/// One record as a processor sees it.
///
/// ```
/// use retrylake::Record;
///
/// let record = Record {
///     sample_id: "S-1".into(),
///     payload: Some(r#"{"value": 7}"#.into()),
///     retry_count: 2,
/// };
/// // Sent with each call, so a downstream can drop a repeated one.
/// assert_eq!(record.idempotency_key(), "S-1:2");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's key.
    pub sample_id: String,
    /// The data to deliver. The round never calls a processor with a missing or empty
    /// payload unless `allow_empty_payload` is set.
    pub payload: Option<String>,
    /// How many times the record was retried before this call: 0 on its first call.
    pub retry_count: u32,
}

impl Record {
    /// `<sample_id>:<retry_count>`: the same for every call of one attempt, so a
    /// downstream can drop a duplicate call after a crash.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.sample_id, self.retry_count)
    }
}

/// Sends one record to an external system and classifies what happened.
///
/// A failing record is an [`Outcome`], never a panic: return
/// [`Outcome::Transient`] for what a later retry may fix and [`Outcome::Permanent`] for
/// what it cannot. Calls run concurrently, and a call that outlives the round's timeout is
/// cancelled (its future dropped), so hold resources in guards that clean up on drop.
///
/// ```
/// use async_trait::async_trait;
/// use retrylake::{Outcome, Processor, Record};
///
/// struct Uppercase;
///
/// #[async_trait]
/// impl Processor for Uppercase {
///     async fn process(&self, record: &Record) -> Outcome {
///         match record.payload.as_deref() {
///             Some(p) if p.is_ascii() => Outcome::success(p.to_uppercase()),
///             _ => Outcome::permanent("payload is not ASCII"),
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait Processor: Send + Sync {
    /// Processes one record.
    async fn process(&self, record: &Record) -> Outcome;
}

/// What a round calls: a [`Processor`] once per record, or a [`BatchProcessor`] once per
/// batch of at most [`RoundConfig::call_batch`](crate::RoundConfig::call_batch) records.
/// A reference to either converts into it.
#[derive(Clone, Copy)]
pub enum Calls<'a> {
    /// One call per record.
    Each(&'a dyn Processor),
    /// One call per batch of records.
    Batches(&'a dyn BatchProcessor),
}

impl<'a, P: Processor + 'a> From<&'a P> for Calls<'a> {
    fn from(processor: &'a P) -> Self {
        Calls::Each(processor)
    }
}

impl<'a> From<&'a dyn Processor> for Calls<'a> {
    fn from(processor: &'a dyn Processor) -> Self {
        Calls::Each(processor)
    }
}

impl<'a> From<&'a dyn BatchProcessor> for Calls<'a> {
    fn from(processor: &'a dyn BatchProcessor) -> Self {
        Calls::Batches(processor)
    }
}
