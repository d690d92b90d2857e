//! Building one of the built-in processors from settings: what the CLI's `--processor`,
//! `--command`, `--url`, `--header` and `--header-env` flags describe.

use std::str::FromStr;

use super::http::DEFAULT_TRANSIENT_STATUSES;
use super::{BatchProcessor, CommandProcessor, HttpProcessor, Processor, SimulateProcessor};
use crate::error::{Error, Result};

/// Which built-in processor handles the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessorKind {
    /// [`SimulateProcessor`]: transient failures drawn at a set rate, nothing sent.
    Simulate,
    /// [`CommandProcessor`]: `sh -c COMMAND` per record.
    Command,
    /// [`HttpProcessor`]: each record POSTed as JSON to a URL.
    Http,
}

impl ProcessorKind {
    /// Whether the circuit breaker guards this processor unless told otherwise: on for
    /// `http` and `command`, off for `simulate` (its failures are independent draws, and a
    /// breaker would make a run depend on timing).
    ///
    /// ```
    /// use retrylake::ProcessorKind;
    ///
    /// assert!(ProcessorKind::Http.breaker_by_default());
    /// assert!(!ProcessorKind::Simulate.breaker_by_default());
    /// ```
    pub fn breaker_by_default(self) -> bool {
        self != ProcessorKind::Simulate
    }
}

impl FromStr for ProcessorKind {
    type Err = Error;

    /// `simulate`, `command` or `http`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "simulate" => Ok(ProcessorKind::Simulate),
            "command" => Ok(ProcessorKind::Command),
            "http" => Ok(ProcessorKind::Http),
            _ => Err(Error::InvalidConfig(format!(
                "unknown processor '{s}' (expected simulate, command or http)"
            ))),
        }
    }
}

/// Splits a header given as `Name: value` text into its trimmed name and value.
///
/// A line without a colon or with an empty name is an [`Error::InvalidConfig`]; the value
/// is never shown in the error (it may be a secret). [`HttpProcessorBuilder::build`]
/// checks that the name and value are valid in HTTP.
///
/// [`HttpProcessorBuilder::build`]: super::http::HttpProcessorBuilder::build
///
/// ```
/// use retrylake::processor::parse_header;
///
/// assert_eq!(parse_header("X-Team: lab ").unwrap(), ("X-Team", "lab"));
/// assert!(parse_header("no colon").is_err());
/// ```
pub fn parse_header(line: &str) -> Result<(&str, &str)> {
    split_header(line, "a header")
}

/// [`parse_header`], its error naming what gave the line (a flag).
fn split_header<'a>(line: &'a str, what: &str) -> Result<(&'a str, &'a str)> {
    match line.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => Ok((name.trim(), value.trim())),
        _ => Err(Error::InvalidConfig(format!(
            "{what} expects 'Name: value', got a value without a name and colon"
        ))),
    }
}

/// The settings of a built-in processor; [`ProcessorOptions::build`] checks them and
/// makes the processor. The CLI's `run` and `worker` build theirs this way, so a library
/// user gets the same processors and the same checks.
///
/// Errors name the settings by their CLI flags (`--url`, `--header`, `--header-env`).
///
/// ```
/// use retrylake::{ProcessorKind, ProcessorOptions};
///
/// let mut options = ProcessorOptions::new(ProcessorKind::Http);
/// options.url = Some("https://lab.example/results".into());
/// options.headers.push("X-Team: lab".into());
/// let _processor = options.build()?;
///
/// // A processor missing what it needs is refused.
/// assert!(ProcessorOptions::new(ProcessorKind::Command).build().is_err());
/// # Ok::<(), retrylake::Error>(())
/// ```
#[derive(Clone)]
pub struct ProcessorOptions {
    /// Which processor.
    pub kind: ProcessorKind,
    /// The shell command of [`ProcessorKind::Command`]; required for it.
    pub command: Option<String>,
    /// The endpoint of [`ProcessorKind::Http`]; required for it.
    pub url: Option<String>,
    /// Headers sent with every HTTP call, each as `Name: value` (see [`parse_header`]).
    pub headers: Vec<String>,
    /// Secret headers, each as `Name: VAR`: the value is read from the environment
    /// variable `VAR` when the processor is built, and never appears in logs or errors.
    pub env_headers: Vec<String>,
    /// The HTTP statuses that are transient; every other non-2xx is permanent. Default
    /// value is [`DEFAULT_TRANSIENT_STATUSES`].
    pub transient_statuses: Vec<u16>,
    /// The probability (0 to 1) that a simulated call fails transiently. Default value is
    /// `0.3`.
    pub transient_probability: f64,
    /// The simulator's seed. Default value is `42`.
    pub seed: u64,
    /// Idle HTTP connections kept open: match the round's concurrency. Default value is
    /// `16`.
    pub pool_size: usize,
}

impl ProcessorOptions {
    /// The settings of a `kind` processor, every other setting at its default value.
    pub fn new(kind: ProcessorKind) -> Self {
        ProcessorOptions {
            kind,
            command: None,
            url: None,
            headers: Vec::new(),
            env_headers: Vec::new(),
            transient_statuses: DEFAULT_TRANSIENT_STATUSES.to_vec(),
            transient_probability: 0.3,
            seed: 42,
            pool_size: 16,
        }
    }

    /// Checks the settings and builds the processor: an [`Error::InvalidConfig`] for a
    /// missing command or URL, a bad URL, header or status, a transient rate outside 0 to
    /// 1, or a `--header-env` variable that is not set.
    pub fn build(&self) -> Result<Box<dyn Processor>> {
        Ok(match self.make()? {
            Made::Simulate(p) => Box::new(p),
            Made::Command(p) => Box::new(p),
            Made::Http(p) => Box::new(p),
        })
    }

    /// [`ProcessorOptions::build`], the processor called per batch of records (`--call-batch`):
    /// `http` POSTs a JSON array, `command` runs once with JSON Lines on stdin.
    pub fn build_batch(&self) -> Result<Box<dyn BatchProcessor>> {
        Ok(match self.make()? {
            Made::Simulate(p) => Box::new(p),
            Made::Command(p) => Box::new(p),
            Made::Http(p) => Box::new(p),
        })
    }

    fn make(&self) -> Result<Made> {
        let invalid = |message: String| Error::InvalidConfig(message);
        Ok(match self.kind {
            ProcessorKind::Simulate => {
                if !(0.0..=1.0).contains(&self.transient_probability) {
                    return Err(invalid(format!(
                        "--transient-rate {} is not a probability between 0 and 1",
                        self.transient_probability
                    )));
                }
                Made::Simulate(SimulateProcessor::new(
                    self.transient_probability,
                    self.seed,
                ))
            }
            ProcessorKind::Command => {
                let command = self
                    .command
                    .clone()
                    .ok_or_else(|| invalid("--processor command needs --command".into()))?;
                Made::Command(CommandProcessor::new(command))
            }
            ProcessorKind::Http => {
                let url = self
                    .url
                    .as_deref()
                    .ok_or_else(|| invalid("--processor http needs --url".into()))?;
                let mut builder = HttpProcessor::builder(url)
                    .transient_statuses(self.transient_statuses.iter().copied())
                    .pool_size(self.pool_size);
                for header in &self.headers {
                    let (name, value) = split_header(header, "--header")?;
                    builder = builder.header(name, value);
                }
                for header in &self.env_headers {
                    let (name, var) = split_header(header, "--header-env")?;
                    let value = std::env::var(var).map_err(|e| {
                        invalid(format!(
                            "--header-env {name}: environment variable {var} is not set: {e}"
                        ))
                    })?;
                    builder = builder.secret_header(name, &value);
                }
                Made::Http(builder.build()?)
            }
        })
    }
}

/// A built-in processor, before it is boxed as one kind of processor or the other.
#[allow(clippy::large_enum_variant)] // built once, boxed at once
enum Made {
    Simulate(SimulateProcessor),
    Command(CommandProcessor),
    Http(HttpProcessor),
}
