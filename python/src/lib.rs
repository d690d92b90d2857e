//! The native module of the `retrylake` Python package (`retrylake._retrylake`): the queue
//! of the Rust library behind a Python class, a Python callable as its processor, and Arrow
//! in and out through the Arrow PyCapsule interface. The package's Python code
//! (`retrylake/__init__.py`) gives it its documented API; this module is not meant to be
//! used directly.
//!
//! The GIL is released while the engine reads, calls and commits. Each call is handed to
//! Python (`_Caller.submit`), which runs plain functions on its own thread pool and
//! `async def` ones on its event loop, and answers through a callback: no engine thread
//! waits inside Python.

// The methods mirror the Python API's keyword arguments, one parameter each.
#![allow(clippy::too_many_arguments)]

use std::collections::HashSet;
use std::ffi::{CStr, c_void};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::ffi_stream::{ArrowArrayStreamReader, FFI_ArrowArrayStream};
use deltalake::arrow::record_batch::{RecordBatchIterator, RecordBatchReader};
use pyo3::exceptions::{PyException, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyCapsule};
use retrylake::input::{Fields, InputFormat, parse_batches, parse_jsonl_from};
use retrylake::store::Table;
use retrylake::{
    Alerts, AsOf, BatchProcessor, BreakerConfig, Calls, CancelFilter, Clock, DeadLetterHook,
    EnqueueOptions, Error, FixedClock, Guard, GuardConfig, Maintenance, Outcome, Processor, Record,
    RedriveFilter, RetryAfter, RetryPolicy, RoundConfig, Rounds, Rules, Shutdown, SystemClock,
    Until, WorkerName,
};
use tokio::sync::Mutex as AsyncMutex;

pyo3::create_exception!(
    _retrylake,
    RetrylakeError,
    PyException,
    "The queue could not do what was asked: storage, tables, a lost lease."
);

/// The stack of the thread that plans a query (not of the runtime's threads: a large
/// stack for each blocking thread would exhaust a limited address space): DataFusion and
/// delta-rs plan by recursion over the SQL, and a query of tens of thousands of terms (an
/// `IN` list) overflows the default 2 MB. Only the pages used are committed.
const STACK: usize = 256 << 20;

/// The one runtime every queue of the process runs on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("retrylake")
            .build()
            .expect("a tokio runtime")
    })
}

/// A library error as a Python exception: bad input and settings are `ValueError`s.
fn py_err(e: Error) -> PyErr {
    match e {
        Error::InvalidConfig(_) | Error::InvalidPolicy(_) | Error::InvalidInput { .. } => {
            PyValueError::new_err(e.to_string())
        }
        other => RetrylakeError::new_err(other.to_string()),
    }
}

fn invalid(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}

/// A duration from seconds, refusing what no duration is.
fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        invalid(format!(
            "{name} must be a non-negative number of seconds, got {value}"
        ))
    })
}

/// A time from RFC 3339 text (the package sends `datetime.isoformat()` in UTC), from 1970
/// and before the year 9000: a schedule from a later one would pass the year 9999, and
/// one before year 1 cannot be read back by Python's `datetime` either.
fn time(name: &str, value: &str) -> PyResult<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| invalid(format!("{name}: {e}: {value:?}")))?;
    if !(1970..9000).contains(&t.year()) {
        return Err(invalid(format!(
            "{name} must be from 1970 and before the year 9000, got {value}"
        )));
    }
    Ok(t)
}

fn json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| RetrylakeError::new_err(e.to_string()))
}

/// Runs the work `make` builds on a thread of its own (on the runtime), with the GIL
/// released, calling `tick` every 100 ms until the work answers; an error from `tick`
/// stops the wait and drops the work where it is (what it holds, such as the queue's
/// lock, is let go), so only work that may stop anywhere may use it.
fn wait_for<T, F>(
    py: Python<'_>,
    what: &str,
    make: impl FnOnce() -> F + Send + 'static,
    mut tick: impl FnMut(Python<'_>) -> PyResult<()>,
) -> PyResult<retrylake::Result<T>>
where
    T: Send + 'static,
    F: Future<Output = retrylake::Result<T>>,
{
    let (done, outcome) = std::sync::mpsc::channel();
    // Dropped when this function returns: the work stops then, if it still runs.
    let (_cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("retrylake-{what}"))
        .stack_size(STACK)
        .spawn(move || {
            runtime().block_on(async move {
                tokio::select! {
                    out = make() => { let _ = done.send(out); }
                    _ = cancelled => {}
                }
            });
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the {what}: {e}")))?;
    let mut outcome = Some(outcome);
    loop {
        // The receiver goes to the detached closure and back (it is not `Sync`).
        let receiver = outcome.take().expect("given back every time");
        let (answer, receiver) = py.detach(move || {
            let answer = receiver.recv_timeout(Duration::from_millis(100));
            (answer, receiver)
        });
        outcome = Some(receiver);
        match answer {
            Ok(out) => return Ok(out),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => tick(py)?,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err(format!(
                    "retrylake's {what} ended without an answer"
                )));
            }
        }
    }
}

/// Runs rounds, built by `make`, as [`wait_for`] does. On a signal (Ctrl-C), or when
/// `interrupted` says the processor raised `KeyboardInterrupt`, it calls `stop` (the
/// rounds end after the round in flight), waits for the rounds to finish, and then raises
/// the interruption: nothing is left half-done.
fn drive<T, F>(
    py: Python<'_>,
    make: impl FnOnce() -> F + Send + 'static,
    interrupted: impl Fn(Python<'_>) -> PyResult<()>,
    stop: impl Fn(),
) -> PyResult<T>
where
    T: Send + 'static,
    F: Future<Output = retrylake::Result<T>>,
{
    let mut interruption: Option<PyErr> = None;
    let out = wait_for(py, "rounds", make, |py| {
        if interruption.is_none()
            && let Err(e) = py.check_signals().and_then(|()| interrupted(py))
        {
            stop();
            interruption = Some(e);
        }
        Ok(())
    })?;
    // The rounds may have ended before a tick saw the processor's interruption.
    match interruption.or_else(|| interrupted(py).err()) {
        Some(e) => Err(e),
        None => out.map_err(py_err),
    }
}

/// Runs a read (status, query, history), built by `make`, as [`wait_for`] does; Ctrl-C
/// raises `KeyboardInterrupt` at once and drops the read (it changes nothing), so the
/// queue is free for the next call.
fn read<T, F>(py: Python<'_>, make: impl FnOnce() -> F + Send + 'static) -> PyResult<T>
where
    T: Send + 'static,
    F: Future<Output = retrylake::Result<T>>,
{
    wait_for(py, "read", make, |py| py.check_signals())?.map_err(py_err)
}

/// Runs a short piece of work (open, enqueue, redrive), built by `make`, with the GIL
/// released.
fn block<T, F>(py: Python<'_>, make: impl FnOnce() -> F + Send) -> PyResult<T>
where
    T: Send,
    F: Future<Output = retrylake::Result<T>>,
{
    py.detach(move || runtime().block_on(make()))
        .map_err(py_err)
}

/// A Python object as the processor: `submit(id, payload, retry_count, done)` starts one
/// call on Python's side (a thread of its pool, or its event loop) and hands `done` the
/// outcome as `(kind, text, retry_after_seconds)`, kind being `success`, `transient` or
/// `permanent`. The package's `_Caller` wraps the user's function so and does the
/// classifying. No thread of the engine waits inside Python: a call past its timeout is
/// left to Python, and the engine's storage never waits for a free thread.
struct PyProcessor {
    caller: Py<PyAny>,
}

/// What `done` receives: `(kind, text, retry_after_seconds)`, and the failure's class as
/// a fourth item when it has one.
struct Answer {
    kind: String,
    text: Option<String>,
    retry_after: Option<f64>,
    class: Option<String>,
}

impl Answer {
    /// Reads the tuple `done` was given.
    fn read(answer: &Bound<'_, PyAny>) -> PyResult<Self> {
        let answer = answer.cast::<pyo3::types::PyTuple>()?;
        let class = match answer.len() {
            3 => None,
            4 => answer.get_item(3)?.extract()?,
            n => {
                return Err(PyValueError::new_err(format!(
                    "an answer has 3 or 4 items, got {n}"
                )));
            }
        };
        Ok(Answer {
            kind: answer.get_item(0)?.extract()?,
            text: answer.get_item(1)?.extract()?,
            retry_after: answer.get_item(2)?.extract()?,
            class,
        })
    }
}

#[async_trait::async_trait]
impl Processor for PyProcessor {
    async fn process(&self, record: &Record) -> Outcome {
        let (tx, rx) = tokio::sync::oneshot::channel::<Answer>();
        let tx = Mutex::new(Some(tx));
        let submitted = Python::attach(|py| -> PyResult<()> {
            let done = PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
                let answer = Answer::read(&args.get_item(0)?)?;
                if let Some(tx) = tx.lock().expect("not poisoned").take() {
                    // The round may have stopped waiting (its timeout): nothing to do then.
                    let _ = tx.send(answer);
                }
                PyResult::Ok(())
            })?;
            let args = (
                record.sample_id.as_str(),
                record.payload.as_deref(),
                record.retry_count,
                done,
            );
            self.caller.call_method1(py, "submit", args)?;
            Ok(())
        });
        if let Err(e) = submitted {
            return Outcome::transient(format!("the processor's call could not start: {e}"));
        }
        match rx.await {
            Ok(answer) => outcome_of(answer),
            Err(_) => Outcome::transient("the processor's call ended without an answer"),
        }
    }
}

/// The outcome an answer names.
fn outcome_of(answer: Answer) -> Outcome {
    let class = answer.class.map(retrylake::ErrorClass::Named);
    match answer.kind.as_str() {
        "success" => Outcome::Success {
            response: answer.text,
        },
        "permanent" => Outcome::Permanent {
            error: answer.text.unwrap_or_default(),
            class,
        },
        _ => Outcome::Transient {
            error: answer.text.unwrap_or_default(),
            retry_after: answer.retry_after.and_then(retry_after_delay),
            class,
        },
    }
}

/// A Python object as a batch processor: `submit_batch([(id, payload, retry_count), ...],
/// done)` starts one call for the batch and hands `done` a list of answers, one per record
/// in their order (see [`PyProcessor`]).
struct PyBatchProcessor {
    caller: Py<PyAny>,
}

#[async_trait::async_trait]
impl BatchProcessor for PyBatchProcessor {
    async fn process_batch(&self, records: &[Record]) -> Vec<Outcome> {
        let (tx, rx) = tokio::sync::oneshot::channel::<Vec<Answer>>();
        let tx = Mutex::new(Some(tx));
        let submitted = Python::attach(|py| -> PyResult<()> {
            let done = PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
                let answers = args
                    .get_item(0)?
                    .try_iter()?
                    .map(|a| Answer::read(&a?))
                    .collect::<PyResult<Vec<Answer>>>()?;
                if let Some(tx) = tx.lock().expect("not poisoned").take() {
                    let _ = tx.send(answers);
                }
                PyResult::Ok(())
            })?;
            let items: Vec<(&str, Option<&str>, u32)> = records
                .iter()
                .map(|r| (r.sample_id.as_str(), r.payload.as_deref(), r.retry_count))
                .collect();
            self.caller
                .call_method1(py, "submit_batch", (items, done))?;
            Ok(())
        });
        if let Err(e) = submitted {
            let failed = Outcome::transient(format!("the processor's call could not start: {e}"));
            return vec![failed; records.len()];
        }
        match rx.await {
            Ok(answers) => answers.into_iter().map(outcome_of).collect(),
            Err(_) => vec![
                Outcome::transient("the processor's call ended without an answer");
                records.len()
            ],
        }
    }
}

/// A Retry-After of `seconds`: however large (infinite included) it is kept, and the
/// round caps it at its `max_retry_after`; what is no duration (negative, NaN) is none.
fn retry_after_delay(seconds: f64) -> Option<RetryAfter> {
    if seconds.is_nan() || seconds < 0.0 {
        return None;
    }
    Some(RetryAfter::Delay(
        Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX),
    ))
}

/// An Arrow stream of a query's result, read through `__arrow_c_stream__` (pyarrow,
/// polars, DuckDB and others read it without a copy).
#[pyclass(module = "retrylake._retrylake", frozen)]
struct ArrowStream {
    result: Mutex<Option<(SchemaRef, Vec<RecordBatch>)>>,
}

const STREAM_NAME: &CStr = c"arrow_array_stream";

#[pymethods]
impl ArrowStream {
    /// Exports the result as an `ArrowArrayStream` capsule, once.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema;
        let (schema, batches) = self
            .result
            .lock()
            .expect("not poisoned")
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this result was already read"))?;
        let reader = RecordBatchIterator::new(batches.into_iter().map(Ok), schema);
        let stream = FFI_ArrowArrayStream::new(Box::new(reader));
        PyCapsule::new_with_value(py, stream, STREAM_NAME)
    }
}

/// Reads an object that has `__arrow_c_stream__` as a record batch reader.
fn arrow_reader(data: &Bound<'_, PyAny>) -> PyResult<ArrowArrayStreamReader> {
    let capsule = data.call_method1("__arrow_c_stream__", (data.py().None(),))?;
    let capsule = capsule
        .cast_into::<PyCapsule>()
        .map_err(|_| invalid("__arrow_c_stream__ did not return a capsule"))?;
    let pointer: *mut c_void = capsule.pointer_checked(Some(STREAM_NAME))?.as_ptr();
    // SAFETY: the capsule is named `arrow_array_stream`, so by the Arrow PyCapsule
    // interface it points to an `FFI_ArrowArrayStream`; `from_raw` moves the stream out
    // and leaves a released one behind, which the capsule's destructor then ignores.
    unsafe { ArrowArrayStreamReader::from_raw(pointer.cast::<FFI_ArrowArrayStream>()) }
        .map_err(|e| invalid(format!("not a readable Arrow stream: {e}")))
}

/// The queue: the Rust library's [`retrylake::Queue`], shared by the calls of one Python
/// object (they take turns).
#[pyclass(module = "retrylake._retrylake", frozen)]
struct Queue {
    inner: Arc<AsyncMutex<retrylake::Queue>>,
    /// Where the tables are, as one name for each place (a local folder canonicalized).
    tables: String,
    worker: String,
    /// Set while rounds run: every other call then fails at once instead of waiting for
    /// them (a worker runs until stopped, and a processor calling its own queue would
    /// wait for itself).
    running: AtomicBool,
}

impl Queue {
    /// The queue, for work on the runtime; an error while rounds run.
    fn queue(&self) -> PyResult<Arc<AsyncMutex<retrylake::Queue>>> {
        if self.running.load(Ordering::SeqCst) {
            return Err(PyRuntimeError::new_err(
                "this Queue is running rounds (run, drain or worker); open another \
                 retrylake.Queue on the same tables to use them meanwhile",
            ));
        }
        Ok(self.inner.clone())
    }
}

/// The (tables, worker) pairs running rounds in this process: two runners under one
/// worker name take each other's records for a crashed round's and call them again.
fn running_workers() -> &'static Mutex<HashSet<(String, String)>> {
    static RUNNING: OnceLock<Mutex<HashSet<(String, String)>>> = OnceLock::new();
    RUNNING.get_or_init(Default::default)
}

/// Marks a queue, and its worker name on its tables, as running rounds while it lives.
struct Running<'a> {
    flag: &'a AtomicBool,
    worker: (String, String),
}

impl<'a> Running<'a> {
    fn start(queue: &'a Queue) -> PyResult<Self> {
        let flag = &queue.running;
        flag.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .map_err(|_| {
                PyRuntimeError::new_err(
                    "this Queue is already running rounds; open another retrylake.Queue \
                     (with another worker name) to run more at once",
                )
            })?;
        let worker = (queue.tables.clone(), queue.worker.clone());
        if !running_workers()
            .lock()
            .expect("not poisoned")
            .insert(worker.clone())
        {
            flag.store(false, Ordering::SeqCst);
            return Err(PyRuntimeError::new_err(format!(
                "another Queue of this process runs rounds on these tables as worker '{}'; \
                 give each runner its own worker name (Queue(..., worker=...))",
                worker.1
            )));
        }
        Ok(Running { flag, worker })
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        running_workers()
            .lock()
            .expect("not poisoned")
            .remove(&self.worker);
        self.flag.store(false, Ordering::SeqCst);
    }
}

fn fields(id_field: String, payload_field: String) -> PyResult<Fields> {
    if id_field == payload_field {
        return Err(invalid(format!(
            "id_field and payload_field are both '{id_field}': a record's id and payload \
             are two fields"
        )));
    }
    Ok(Fields {
        id: id_field,
        payload: payload_field,
    })
}

#[pymethods]
impl Queue {
    /// Opens (creating if needed) the four tables under `root`, a folder or a URL.
    #[new]
    #[pyo3(signature = (root, storage_options=None, worker="main"))]
    fn new(
        py: Python<'_>,
        root: String,
        storage_options: Option<std::collections::HashMap<String, String>>,
        worker: &str,
    ) -> PyResult<Self> {
        // A bad name is refused before any table is created.
        worker.parse::<WorkerName>().map_err(py_err)?;
        let queue = block(py, || async {
            retrylake::Queue::open_with(&root, storage_options.unwrap_or_default()).await
        })?
        .with_worker(worker)
        .map_err(py_err)?;
        // `/data`, `./data/` and `file:///data` are one place.
        let tables = std::fs::canonicalize(root.strip_prefix("file://").unwrap_or(&root))
            .map(|p| p.display().to_string())
            .unwrap_or(root);
        Ok(Queue {
            tables,
            worker: queue.worker().to_owned(),
            inner: Arc::new(AsyncMutex::new(queue)),
            running: AtomicBool::new(false),
        })
    }

    /// The worker name.
    #[getter]
    fn worker(&self) -> String {
        self.worker.clone()
    }

    /// Where the tables are, one name for each place (a local folder canonicalized).
    #[getter]
    fn tables(&self) -> String {
        self.tables.clone()
    }

    /// Enqueues a file (JSON Lines, CSV, Parquet); returns the report as JSON.
    #[pyo3(signature = (path, format, id_field, payload_field, skip_invalid, now))]
    fn enqueue_file(
        &self,
        py: Python<'_>,
        path: String,
        format: Option<String>,
        id_field: String,
        payload_field: String,
        skip_invalid: bool,
        now: Option<String>,
    ) -> PyResult<String> {
        let format = format
            .map(|f| f.parse::<InputFormat>().map_err(invalid))
            .transpose()?;
        let options = EnqueueOptions {
            format,
            fields: fields(id_field, payload_field)?,
            skip_invalid,
        };
        let report = self.change_at(py, now, async move |queue| {
            queue.enqueue(Path::new(&path), &options).await
        })?;
        json(&report)
    }

    /// Enqueues JSON Lines held in memory (the package writes a list of dicts so);
    /// `source` names the input in errors and dead letters.
    #[pyo3(signature = (data, source, id_field, payload_field, skip_invalid, now))]
    fn enqueue_jsonl(
        &self,
        py: Python<'_>,
        data: Vec<u8>,
        source: String,
        id_field: String,
        payload_field: String,
        skip_invalid: bool,
        now: Option<String>,
    ) -> PyResult<String> {
        let fields = fields(id_field, payload_field)?;
        let input = py
            .detach(|| parse_jsonl_from(data.as_slice(), &fields))
            .map_err(|e| invalid(format!("{source}: {e}")))?;
        self.enqueue_parsed(py, source, input, skip_invalid, now)
    }

    /// Enqueues an Arrow-compatible object (anything with `__arrow_c_stream__`).
    #[pyo3(signature = (data, source, id_field, payload_field, skip_invalid, now))]
    fn enqueue_arrow(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        source: String,
        id_field: String,
        payload_field: String,
        skip_invalid: bool,
        now: Option<String>,
    ) -> PyResult<String> {
        // Checked first: importing the stream consumes it (a reader is read once).
        let fields = fields(id_field, payload_field)?;
        let reader = arrow_reader(data)?;
        let schema = reader.schema();
        // The stream may call back into Python (a pyarrow reader over a generator): read it
        // on this thread, which holds the GIL. A producer whose batches do not match the
        // schema it declared trips assertions inside arrow's import: a ValueError too.
        let input = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            parse_batches(&schema, reader, &fields)
        }))
        .unwrap_or_else(|_| {
            Err("the Arrow stream's batches do not match the schema it declared".to_owned())
        })
        .map_err(|e| invalid(format!("{source}: {e}")))?;
        self.enqueue_parsed(py, source, input, skip_invalid, now)
    }

    /// Runs rounds with `call` as the processor (see `PyProcessor`) until `until` (`one`,
    /// `none_due`, `drained`, `stopped`); returns the rounds' reports as JSON. `now` runs
    /// them on a virtual clock that jumps to each next due time.
    #[pyo3(signature = (
        call, until, now, poll, limit, concurrency, timeout, lease, max_retries,
        base_backoff, multiplier, max_backoff, jitter, seed, shard, rate, breaker,
        breaker_failure_rate, breaker_window, breaker_min_calls, breaker_cool_down,
        allow_empty_payload, max_retry_after, maintenance, call_batch, rules_file, rules_json,
        max_age=None, on_dead_letter=None
    ))]
    fn rounds(
        &self,
        py: Python<'_>,
        call: Py<PyAny>,
        until: &str,
        now: Option<String>,
        poll: f64,
        limit: usize,
        concurrency: usize,
        timeout: f64,
        lease: f64,
        max_retries: u32,
        base_backoff: f64,
        multiplier: f64,
        max_backoff: f64,
        jitter: &str,
        seed: u64,
        shard: Option<&str>,
        rate: Option<&str>,
        breaker: bool,
        breaker_failure_rate: f64,
        breaker_window: usize,
        breaker_min_calls: usize,
        breaker_cool_down: f64,
        allow_empty_payload: bool,
        max_retry_after: f64,
        maintenance: bool,
        call_batch: Option<usize>,
        rules_file: Option<String>,
        rules_json: Option<String>,
        max_age: Option<f64>,
        on_dead_letter: Option<String>,
    ) -> PyResult<String> {
        let rules = match (rules_file, rules_json) {
            (Some(path), _) => Rules::load(std::path::Path::new(&path)).map_err(py_err)?,
            (None, Some(json)) => {
                Rules::parse_json(&json).map_err(|e| invalid(format!("rules: {e}")))?
            }
            (None, None) => Rules::none(),
        };
        let policy = RetryPolicy::builder()
            .base(seconds("base_backoff", base_backoff)?)
            .multiplier(multiplier)
            .max_retries(max_retries)
            .max_backoff(seconds("max_backoff", max_backoff)?)
            .jitter(
                jitter
                    .parse()
                    .map_err(|e| invalid(format!("jitter: {e}")))?,
            )
            .build()
            .map_err(py_err)?;
        let breaker_config = BreakerConfig {
            failure_share: breaker_failure_rate,
            window: breaker_window,
            min_calls: breaker_min_calls,
            cool_down: seconds("breaker_cool_down", breaker_cool_down)?,
        };
        breaker_config.check().map_err(py_err)?;
        let rate = rate
            .map(|r| r.parse().map_err(|e| invalid(format!("rate: {e}"))))
            .transpose()?;
        let shard = shard
            .map(|s| s.parse().map_err(|e| invalid(format!("shard: {e}"))))
            .transpose()?;
        let config = RoundConfig {
            policy,
            limit,
            concurrency,
            call_batch: call_batch.unwrap_or(retrylake::DEFAULT_CALL_BATCH),
            rules: Arc::new(rules),
            timeout: seconds("timeout", timeout)?,
            allow_empty_payload,
            seed,
            max_retry_after: seconds("max_retry_after", max_retry_after)?,
            shard,
            progress: None,
            lease: seconds("lease", lease)?,
            guard: Guard::new(GuardConfig {
                breaker: breaker.then_some(breaker_config),
                rate,
            }),
            max_age: max_age.map(|age| seconds("max_age", age)).transpose()?,
        };
        config.check().map_err(py_err)?;
        let until = match until {
            "one" => Until::OneRound,
            "none_due" => Until::NoneDue,
            "drained" => Until::Drained,
            "stopped" => Until::Stopped,
            other => return Err(invalid(format!("until: unknown {other:?}"))),
        };
        let now = now.map(|t| time("now", &t)).transpose()?;
        let shutdown = Shutdown::new();
        let mut rounds = Rounds::new(until)
            .poll(seconds("poll", poll)?)
            .shutdown(shutdown.clone())
            .maintenance(if maintenance {
                Maintenance::default()
            } else {
                Maintenance::off()
            });
        if let Some(hook) = on_dead_letter {
            let hook: DeadLetterHook = hook.parse().map_err(py_err)?;
            rounds = rounds.on_dead_letter(Alerts::new(&hook).map_err(py_err)?);
        }
        let virtual_clock = now.map(|t| Arc::new(FixedClock::new(t)));
        if let Some(clock) = &virtual_clock {
            rounds = rounds.virtual_clock(clock.clone());
        }
        let ended = rounds.clone();
        let caller = call.clone_ref(py);
        let each = PyProcessor {
            caller: call.clone_ref(py),
        };
        let batches = PyBatchProcessor { caller: call };
        let queue = self.queue()?;
        // Until the rounds end: `drive` returns only once the work has finished.
        let _running = Running::start(self)?;
        let work = move || async move {
            let mut queue = queue.lock().await;
            match virtual_clock {
                Some(virtual_clock) => queue.set_clock(virtual_clock),
                None => queue.set_clock(clock(None)),
            }
            let mut reports = Vec::new();
            let processor = match call_batch {
                None => Calls::Each(&each),
                Some(_) => Calls::Batches(&batches),
            };
            let ran = retrylake::run_rounds(&mut queue, processor, &config, &rounds, |r| {
                reports.push(r.clone());
                Ok::<(), Error>(())
            })
            .await;
            ran.map(|()| reports)
        };
        let reports = drive(
            py,
            work,
            // A KeyboardInterrupt or SystemExit the processor raised: the same one again.
            |py| match caller.getattr(py, "interrupted")? {
                e if e.is_none(py) => Ok(()),
                e => Err(PyErr::from_value(e.into_bound(py))),
            },
            || shutdown.trigger(),
        )?;
        if let Some(error) = ended.undelivered_alerts() {
            let warning = py.get_type::<pyo3::exceptions::PyRuntimeWarning>();
            PyErr::warn(
                py,
                &warning,
                &std::ffi::CString::new(format!("on_dead_letter: {error}").replace('\0', ""))
                    .unwrap_or_default(),
                1,
            )?;
        }
        json(&reports)
    }

    /// The queue's state, as JSON.
    #[pyo3(signature = (now=None))]
    fn status(&self, py: Python<'_>, now: Option<String>) -> PyResult<String> {
        let now = now.map(|t| time("now", &t)).transpose()?;
        let queue = self.queue()?;
        let status = read(py, move || async move {
            let mut queue = queue.lock().await;
            queue.set_clock(clock(now));
            queue.status().await
        })?;
        json(&status)
    }

    /// Pauses the queue until `until` (or a resume); returns the pause as JSON.
    #[pyo3(signature = (until, reason, now))]
    fn pause(
        &self,
        py: Python<'_>,
        until: Option<String>,
        reason: Option<String>,
        now: Option<String>,
    ) -> PyResult<String> {
        let until = until.map(|t| time("until", &t)).transpose()?;
        let pause = self.change_at(py, now, async move |queue| {
            queue.pause(until, reason.as_deref()).await
        })?;
        json(&pause)
    }

    /// Ends a pause of the queue.
    fn resume(&self, py: Python<'_>) -> PyResult<()> {
        self.change_at(py, None, async move |queue| queue.resume().await)
    }

    /// The pause holding at `now` (the system clock without it), after reading the
    /// tables again, as JSON (`null` for none).
    #[pyo3(signature = (now=None))]
    fn paused(&self, py: Python<'_>, now: Option<String>) -> PyResult<String> {
        let now = now.map(|t| time("now", &t)).transpose()?;
        let queue = self.queue()?;
        let paused = read(py, move || async move {
            let mut queue = queue.lock().await;
            queue.set_clock(clock(now));
            queue.refresh().await?;
            queue.paused()
        })?;
        json(&paused)
    }

    /// Moves the queued records matching every filter given to the dead letters (reason
    /// `cancelled`); the report as JSON.
    #[pyo3(signature = (ids, error_msg, older_than, all, reason, now))]
    fn cancel(
        &self,
        py: Python<'_>,
        ids: Vec<String>,
        error_msg: Option<String>,
        older_than: Option<f64>,
        all: bool,
        reason: Option<String>,
        now: Option<String>,
    ) -> PyResult<String> {
        let filter = CancelFilter {
            ids,
            error_msg,
            older_than: older_than
                .map(|age| seconds("older_than", age))
                .transpose()?,
            all,
            reason,
        };
        let report = self.change_at(py, now, async move |queue| queue.cancel(&filter).await)?;
        json(&report)
    }

    /// A read-only SQL query over the four tables (Delta SQL: `VERSION AS OF`, `DESCRIBE
    /// HISTORY`, `delta.\`path\``), every table it names at a version or a time.
    #[pyo3(signature = (sql, version=None, as_of=None))]
    fn query(
        &self,
        py: Python<'_>,
        sql: String,
        version: Option<u64>,
        as_of: Option<String>,
    ) -> PyResult<ArrowStream> {
        let as_of = match (version, as_of) {
            (Some(_), Some(_)) => return Err(invalid("give version or as_of, not both")),
            (Some(v), None) => AsOf::Version(v),
            (None, Some(t)) => AsOf::Time(time("as_of", &t)?),
            (None, None) => AsOf::Latest,
        };
        let queue = self.queue()?;
        let result = read(py, move || async move {
            queue.lock().await.query_with_schema(&sql, as_of).await
        })?;
        Ok(ArrowStream {
            result: Mutex::new(Some(result)),
        })
    }

    /// The commits of `tables` (all four when empty), newest first, as JSON.
    #[pyo3(signature = (tables))]
    fn history(&self, py: Python<'_>, tables: Vec<String>) -> PyResult<String> {
        let tables = if tables.is_empty() {
            Table::ALL.to_vec()
        } else {
            tables
                .iter()
                .map(|t| t.parse::<Table>().map_err(py_err))
                .collect::<PyResult<Vec<_>>>()?
        };
        let queue = self.queue()?;
        let commits = read(py, move || async move {
            queue.lock().await.history(&tables).await
        })?;
        json(&commits)
    }

    /// Moves matching dead letters back into the queue, due now; the report as JSON.
    #[pyo3(signature = (ids, reason, error_msg, limit, now))]
    fn redrive(
        &self,
        py: Python<'_>,
        ids: Vec<String>,
        reason: Option<String>,
        error_msg: Option<String>,
        limit: Option<usize>,
        now: Option<String>,
    ) -> PyResult<String> {
        let filter = RedriveFilter {
            reason: reason.map(|r| r.parse().map_err(py_err)).transpose()?,
            error_msg,
            ids,
            limit,
        };
        let report = self.change_at(py, now, async move |queue| queue.redrive(&filter).await)?;
        json(&report)
    }
}

impl Queue {
    fn enqueue_parsed(
        &self,
        py: Python<'_>,
        source: String,
        input: retrylake::input::ParsedInput,
        skip_invalid: bool,
        now: Option<String>,
    ) -> PyResult<String> {
        let report = self.change_at(py, now, async move |queue| {
            queue
                .enqueue_input(Path::new(&source), input, skip_invalid)
                .await
        })?;
        json(&report)
    }

    /// Runs `change` on the queue, on the clock `now` names (the system's without it),
    /// with the GIL released.
    fn change_at<T: Send>(
        &self,
        py: Python<'_>,
        now: Option<String>,
        change: impl AsyncFnOnce(&mut retrylake::Queue) -> retrylake::Result<T> + Send,
    ) -> PyResult<T> {
        let now = now.map(|t| time("now", &t)).transpose()?;
        let queue = self.queue()?;
        block(py, move || async move {
            let mut queue = queue.lock().await;
            queue.set_clock(clock(now));
            change(&mut queue).await
        })
    }
}

/// The clock a call runs on: fixed at `now` when given, else the system's.
fn clock(now: Option<DateTime<Utc>>) -> Arc<dyn Clock> {
    match now {
        Some(now) => Arc::new(FixedClock::new(now)),
        None => Arc::new(SystemClock),
    }
}

#[pymodule]
fn _retrylake(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Queue>()?;
    m.add_class::<ArrowStream>()?;
    m.add("RetrylakeError", m.py().get_type::<RetrylakeError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
