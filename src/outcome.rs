//! The result of one attempt to process a record: data the queue persists, not an error.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::add_saturating;

/// When a downstream asked to be called again (HTTP `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// After this long (delta-seconds), counted from the end of the call.
    Delay(Duration),
    /// Not before this time (an HTTP date).
    At(DateTime<Utc>),
}

impl RetryAfter {
    /// The time a call that ended at `end` may be followed by another: `end` plus the
    /// delay, or the date, but never more than `ceiling` after `end` (and never panicking,
    /// however large the delay or the ceiling: past the last time a timestamp holds, that
    /// time). A date before `end` asks for no wait and gives that date.
    pub fn until(self, end: DateTime<Utc>, ceiling: Duration) -> DateTime<Utc> {
        let cap = add_saturating(end, ceiling);
        match self {
            RetryAfter::Delay(d) => add_saturating(end, d),
            RetryAfter::At(at) => at,
        }
        .min(cap)
    }
}

/// What kind of failure a call was, for rules to match ([`Rules`](crate::Rules)): set by
/// the built-in processors, and by yours with [`Outcome::with_class`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// An HTTP status: the `http` processor's answer, or a batch item's `"status"`.
    Status(u16),
    /// A command's exit status: the `command` processor.
    Exit(i32),
    /// A name a processor gives its failure (`"deadlock"`; from Python, the exception's
    /// type name unless it names another; a batch item's `"class"`).
    Named(String),
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorClass::Status(s) => write!(f, "HTTP status {s}"),
            ErrorClass::Exit(c) => write!(f, "exit status {c}"),
            ErrorClass::Named(n) => write!(f, "class {n}"),
        }
    }
}

/// How one call to a processor ended: what a [`Processor`](crate::Processor) returns.
///
/// ```
/// use std::time::Duration;
/// use retrylake::{Outcome, RetryAfter};
///
/// fn classify(status: u16, body: &str) -> Outcome {
///     match status {
///         200..=299 => Outcome::success(body),
///         429 => Outcome::Transient {
///             error: "rate limited".into(),
///             retry_after: Some(RetryAfter::Delay(Duration::from_secs(60))),
///             class: None,
///         },
///         500..=599 => Outcome::transient(format!("HTTP {status}")),
///         _ => Outcome::permanent(format!("HTTP {status}: {body}")),
///     }
/// }
/// assert!(matches!(classify(503, ""), Outcome::Transient { .. }));
/// assert_eq!(classify(404, "no such lab"), Outcome::permanent("HTTP 404: no such lab"));
/// ```
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
        /// What kind of failure it was, for rules to match.
        class: Option<ErrorClass>,
    },
    /// A failure that retrying cannot fix (bad data, 4xx): the record is dead-lettered.
    Permanent {
        /// What happened, stored as the record's `error_msg`.
        error: String,
        /// What kind of failure it was, for rules to match.
        class: Option<ErrorClass>,
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
            class: None,
        }
    }

    /// A permanent failure.
    pub fn permanent(error: impl Into<String>) -> Self {
        Outcome::Permanent {
            error: error.into(),
            class: None,
        }
    }

    /// The failure with its class set, for rules to match; a success is unchanged.
    ///
    /// ```
    /// use retrylake::{ErrorClass, Outcome};
    ///
    /// let deadlock = Outcome::transient("deadlock detected").with_class("deadlock");
    /// assert_eq!(deadlock.class(), Some(&ErrorClass::Named("deadlock".into())));
    /// ```
    pub fn with_class(mut self, class: impl Into<ErrorClass>) -> Self {
        if let Outcome::Transient { class: c, .. } | Outcome::Permanent { class: c, .. } = &mut self
        {
            *c = Some(class.into());
        }
        self
    }

    /// The failure's class, if it has one.
    pub fn class(&self) -> Option<&ErrorClass> {
        match self {
            Outcome::Success { .. } => None,
            Outcome::Transient { class, .. } | Outcome::Permanent { class, .. } => class.as_ref(),
        }
    }

    /// The failure's message; `None` for a success.
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Success { .. } => None,
            Outcome::Transient { error, .. } | Outcome::Permanent { error, .. } => Some(error),
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

impl From<&str> for ErrorClass {
    fn from(name: &str) -> Self {
        ErrorClass::Named(name.to_owned())
    }
}

impl From<String> for ErrorClass {
    fn from(name: String) -> Self {
        ErrorClass::Named(name)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::tests::{any_duration, any_time};
    use proptest::prelude::*;

    fn any_retry_after() -> impl Strategy<Value = RetryAfter> {
        prop_oneof![
            any_duration().prop_map(RetryAfter::Delay),
            any_time().prop_map(RetryAfter::At),
        ]
    }

    #[test]
    fn the_ceiling_holds_at_the_end_of_time() {
        let max = DateTime::<Utc>::MAX_UTC;
        let huge = RetryAfter::Delay(Duration::from_secs(u64::MAX));
        assert_eq!(huge.until(max, Duration::MAX), max);
        let end = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let day = Duration::from_secs(86_400);
        assert_eq!(huge.until(end, day), add_saturating(end, day));
        assert_eq!(
            RetryAfter::At(max).until(end, day),
            add_saturating(end, day)
        );
        assert_eq!(huge.until(end, Duration::MAX), max);
    }

    proptest! {
        #[test]
        fn until_is_bounded_by_the_ceiling(
            asked in any_retry_after(),
            end in any_time(),
            ceiling in any_duration(),
        ) {
            let until = asked.until(end, ceiling);
            prop_assert!(until <= add_saturating(end, ceiling));
            match asked {
                RetryAfter::Delay(d) => {
                    prop_assert!(until >= end);
                    prop_assert!(until <= add_saturating(end, d));
                }
                RetryAfter::At(at) => prop_assert!(until <= at),
            }
        }
    }
}
