//! The result of one attempt to process a record: data the queue persists, not an error.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// When a downstream asked to be called again (HTTP `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// After this long (delta-seconds), counted from the end of the call.
    Delay(Duration),
    /// Not before this time (an HTTP date).
    At(DateTime<Utc>),
}

/// How one call to a processor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Processed: the record goes to `final_results`.
    Success {
        /// What the processor answered (a response body, a command's stdout), if anything.
        response: Option<String>,
    },
    /// A failure worth retrying later (timeout, 503, rate limit).
    Transient {
        /// What happened, stored as the record's `error_msg`.
        error: String,
        /// The earliest the downstream asked to be called again. The record's time lock
        /// is raised to at least this, up to the round's ceiling.
        retry_after: Option<RetryAfter>,
    },
    /// A failure that retrying cannot fix (bad data, 4xx): the record is dead-lettered.
    Permanent {
        /// What happened, stored as the record's `error_msg`.
        error: String,
    },
}

impl Outcome {
    /// A success with a response.
    pub fn success(response: impl Into<String>) -> Self {
        Outcome::Success {
            response: Some(response.into()),
        }
    }

    /// A transient failure without a Retry-After.
    pub fn transient(error: impl Into<String>) -> Self {
        Outcome::Transient {
            error: error.into(),
            retry_after: None,
        }
    }

    /// A permanent failure.
    pub fn permanent(error: impl Into<String>) -> Self {
        Outcome::Permanent {
            error: error.into(),
        }
    }

    /// The outcome's name as stored in the `attempts` table.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Success { .. } => OutcomeKind::Success,
            Outcome::Transient { .. } => OutcomeKind::Transient,
            Outcome::Permanent { .. } => OutcomeKind::Permanent,
        }
    }
}

/// The three outcome classes, as named in the `attempts` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeKind {
    /// `success`
    Success,
    /// `transient`
    Transient,
    /// `permanent`
    Permanent,
}

impl OutcomeKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Success => "success",
            OutcomeKind::Transient => "transient",
            OutcomeKind::Permanent => "permanent",
        }
    }
}
