"""retrylake: a durable exponential-backoff retry queue for data pipelines, with its state
in Delta Lake tables, driven from Python.

>>> import retrylake
>>> q = retrylake.Queue("./retrylake-data")
>>> q.enqueue([{"sample_id": "a", "payload": "hello"}])
>>> def send(record):
...     return "ok"                      # or raise retrylake.Transient / Permanent
>>> q.drain(send)

A record goes to ``final_results`` when the processor returns, waits in ``retry_queue``
(2, 4, 8, 16, 32 minutes by default) when it raises :class:`Transient` (or any other
exception), and goes to ``dead_letter_queue`` on :class:`Permanent` or its sixth
failure. Every change is a Delta commit; nothing is lost or doubled when a process dies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as _dt
import decimal
import inspect
import itertools
import json
import os
import sys
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from ._retrylake import Queue as _NativeQueue
from ._retrylake import RetrylakeError, __version__

__all__ = [
    "Queue",
    "Record",
    "Transient",
    "Permanent",
    "RetrylakeError",
    "__version__",
]

#: A duration: seconds (int or float) or a ``datetime.timedelta``.
Duration = Union[int, float, _dt.timedelta]

#: A time: a ``datetime`` (naive ones are taken as UTC) or RFC 3339 text.
Time = Union[_dt.datetime, str]


class Transient(Exception):
    """A failure worth retrying later (a timeout, a 503, a rate limit).

    ``retry_after`` (seconds or a ``timedelta``) is the earliest the downstream asked to
    be called again; the record's time lock is raised to at least that, up to the run's
    ``max_retry_after``. ``error_class`` names the kind of failure for the run's
    ``rules`` to match (``class = [...]``).
    """

    def __init__(
        self,
        message: str = "",
        retry_after: Optional[Duration] = None,
        error_class: Optional[str] = None,
    ):
        super().__init__(message)
        if retry_after is not None:
            retry_after = _seconds("retry_after", retry_after)
            if not retry_after >= 0:  # negative, or NaN
                raise ValueError(f"retry_after must be 0 or more seconds, got {retry_after}")
        self.retry_after = retry_after
        if error_class is not None:  # else a class attribute of a subclass, if any
            self.error_class = _error_class(error_class)


class Permanent(Exception):
    """A failure retrying cannot fix (bad data, a 4xx): the record is dead-lettered.
    ``error_class`` names the kind of failure for the run's ``rules`` to match."""

    def __init__(self, message: str = "", error_class: Optional[str] = None):
        super().__init__(message)
        if error_class is not None:  # else a class attribute of a subclass, if any
            self.error_class = _error_class(error_class)


def _error_class(error_class: Optional[str]) -> Optional[str]:
    if error_class is not None and not isinstance(error_class, str):
        raise TypeError(f"error_class must be a str, got {error_class!r}")
    return error_class


@dataclass(frozen=True)
class Record:
    """One record handed to the processor."""

    #: The record's key (``sample_id``).
    id: str
    #: The data to deliver (``None`` only with ``allow_empty_payload=True``).
    payload: Optional[str]
    #: Which attempt this is: 1 on the first call.
    attempt: int
    #: ``<id>:<retry_count>``: the same for every call of one attempt, so a downstream can
    #: drop a duplicate call after a crash.
    idempotency_key: str

    @property
    def retry_count(self) -> int:
        """Retries before this call: 0 on the first."""
        return self.attempt - 1


def _seconds(name: str, value: Duration) -> float:
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be seconds or a timedelta, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise OverflowError(f"{name} is too large: {value!r} seconds") from None


def _time(name: str, value: Optional[Time]) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        try:
            return value.astimezone(_dt.timezone.utc).isoformat()
        except OverflowError:
            raise ValueError(f"{name} is out of range in UTC: {value!r}") from None
    raise TypeError(f"{name} must be a datetime or RFC 3339 text, got {value!r}")


class _Loop:
    """One asyncio event loop on a thread of its own, where ``async def`` processors run
    side by side."""

    _lock = threading.Lock()
    _loop: Optional[asyncio.AbstractEventLoop] = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="retrylake-asyncio", daemon=True
                ).start()
                cls._loop = loop
            return cls._loop


class _Caller:
    """The user's function as the engine calls it. ``submit(id, payload, retry_count,
    done)`` starts one call, on a thread of this caller's pool (a plain function) or on
    the event loop (``async def``), and hands ``done`` the outcome as ``(kind, text,
    retry_after)``: every exception classified, nothing raised back into the engine.

    The calls run on Python's own threads, so an interpreter that exits waits for calls
    still running rather than pulling the interpreter from under them. A plain function
    the engine gave up on (its timeout) may still be running: the record's next call
    waits for it to return (up to the timeout), so a record is never in two calls at
    once."""

    def __init__(
        self,
        processor: Callable[[Record], Any],
        timeout: float,
        concurrency: int,
        other_errors: str,
        root: str,
    ):
        if not callable(processor):
            raise TypeError(f"the processor must be callable, got {processor!r}")
        if other_errors not in ("transient", "permanent"):
            raise ValueError(
                f"other_errors must be 'transient' or 'permanent', got {other_errors!r}"
            )
        self.processor = processor
        self.is_async = inspect.iscoroutinefunction(processor) or inspect.iscoroutinefunction(
            getattr(processor, "__call__", None)
        )
        self.timeout = timeout
        self.other_errors = other_errors
        self.root = root
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, min(concurrency, 1024)), thread_name_prefix="retrylake-call"
        )
        #: A BaseException the processor raised that is not an Exception
        #: (KeyboardInterrupt, SystemExit): the run stops after the round and raises it.
        self.interrupted: Optional[BaseException] = None

    def close(self) -> None:
        """Lets the pool's threads end once their calls return."""
        self.pool.shutdown(wait=False)

    def submit(self, sample_id: str, payload: Optional[str], retry_count: int, done) -> None:
        record = Record(
            id=sample_id,
            payload=payload,
            attempt=retry_count + 1,
            idempotency_key=f"{sample_id}:{retry_count}",
        )
        key = (self.root, sample_id)
        with _RUNNING_CHANGED:
            free = key not in _RUNNING
            if free:
                _RUNNING.add(key)
        try:
            if not free:
                # A call of this record the engine gave up on still runs: wait for it.
                future = self.pool.submit(self._after, key, record)
            elif self.is_async:
                future = asyncio.run_coroutine_threadsafe(self._call_async(record), _Loop.get())
            else:
                future = self.pool.submit(self._call, record)
        except BaseException as e:  # a pool shut down, a loop gone: the call never started
            if free:
                _release(key)
            done(("transient", f"the call could not start: {_describe(e)}", None))
            return
        if free:
            future.add_done_callback(lambda f: (_release(key), done(_result_of(f))))
        else:
            future.add_done_callback(lambda f: done(_result_of(f)))

    def submit_batch(self, items: list, done) -> None:
        """Starts one call of the processor for a batch of ``(id, payload, retry_count)``
        and hands ``done`` one answer per record, in their order."""
        records = [
            Record(id=i, payload=p, attempt=r + 1, idempotency_key=f"{i}:{r}") for i, p, r in items
        ]
        try:
            future = self.pool.submit(self._batch, records)
        except BaseException as e:  # a pool shut down: the call never started
            done([("transient", f"the call could not start: {_describe(e)}", None)] * len(records))
            return
        future.add_done_callback(lambda f: done(_batch_result_of(f, len(records))))

    def _batch(self, records: list) -> list:
        """Calls the processor with the records of a batch. A record still in a call the
        engine gave up on (its timeout) is left out of the call and fails transiently at
        once, so that its batch-mates are not held back: one call of a record at a time."""
        keys = [(self.root, r.id) for r in records]
        with _RUNNING_CHANGED:
            busy = {k for k in keys if k in _RUNNING}
            mine = [k for k in keys if k not in busy]
            _RUNNING.update(mine)
        try:
            called = [r for r, k in zip(records, keys) if k not in busy]
            answers = iter(self._call_batch(called) if called else [])
            return [
                ("transient", "the previous call of this record is still running", None)
                if k in busy
                else next(answers)
                for k in keys
            ]
        finally:
            with _RUNNING_CHANGED:
                _RUNNING.difference_update(mine)
                _RUNNING_CHANGED.notify_all()

    def _call_batch(self, records: list) -> list:
        """One answer per record from one call: what the processor raises (or a result
        it returns lazily raises) applies to every record, else each record takes its own
        result. The processor gets a list of its own, so reordering it changes nothing."""
        n = len(records)
        try:
            result = self.processor(list(records))
            if inspect.isawaitable(result):
                result = self._on_loop(result)
            results = self._results(records, result)
            if any(inspect.isawaitable(r) for r in results):
                # A list of coroutines (one per record): awaited together, each failure
                # its record's own.
                results = self._on_loop(_gather(results))
        except _Answered as a:
            return [a.answer] * n
        except BaseException as e:
            return [self._failure(e)] * n
        return [self._answer(r) for r in results]

    def _on_loop(self, awaitable: Any) -> Any:
        """Awaits on the shared event loop, under the timeout: its value, or raises
        :class:`_Answered` with the failure's answer."""
        answer = asyncio.run_coroutine_threadsafe(
            self._await(awaitable, finish=lambda value: ("value", value, None)), _Loop.get()
        ).result()
        if answer[0] != "value":
            raise _Answered(answer)
        return answer[1]

    def _results(self, records: list, result: Any) -> list:
        """A batch processor's result as one result per record (``_NO_RESULT`` for none): a
        list (or any iterable) in their order, or a dict by id; ``None`` is a success for
        all."""
        n = len(records)
        if result is None:
            return [None] * n
        if isinstance(result, Mapping):
            return [result.get(r.id, _NO_RESULT) for r in records]
        if isinstance(result, (str, bytes, bytearray)) or not isinstance(result, Iterable):
            raise _Answered((
                "transient",
                f"the batch processor returned {type(result).__name__}, expected a list "
                "with one result per record (or a dict by id)",
                None,
            ))
        # At most one per record: an endless iterator is not read to its end.
        results = list(itertools.islice(result, n))
        return results + [_NO_RESULT] * (n - len(results))

    def _answer(self, result: Any) -> tuple:
        if result is _NO_RESULT:
            return ("transient", "the batch processor gave no result for this record", None)
        if isinstance(result, type) and issubclass(result, BaseException):
            # An exception class rather than an instance: a failure all the same.
            try:
                result = result()
            except Exception:  # noqa: BLE001 - a class that needs arguments
                return (self.other_errors, result.__name__, None)
        if isinstance(result, BaseException):
            return self._failure(result)
        return _success(result)

    def _after(self, key: tuple, record: Record):
        """Calls ``record`` once its running call has returned, or gives up at the
        timeout: one call of a record at a time."""
        with _RUNNING_CHANGED:
            if not _RUNNING_CHANGED.wait_for(lambda: key not in _RUNNING, self.timeout):
                return ("transient", "the previous call of this record is still running", None)
            _RUNNING.add(key)
        try:
            if self.is_async:
                return asyncio.run_coroutine_threadsafe(
                    self._call_async(record), _Loop.get()
                ).result()
            return self._call(record)
        finally:
            _release(key)

    def _call(self, record: Record):
        try:
            response = self.processor(record)
            if inspect.isawaitable(response):
                # A plain function that returned an awaitable: await it on the event loop.
                return asyncio.run_coroutine_threadsafe(
                    self._await(response), _Loop.get()
                ).result()
        except BaseException as e:
            return self._failure(e)
        return _success(response)

    async def _call_async(self, record: Record):
        try:
            return await self._await(self.processor(record))
        except (KeyboardInterrupt, SystemExit) as e:
            return self._failure(e)
        except Exception as e:  # noqa: BLE001 - every failure becomes the record's outcome
            return self._failure(e)

    async def _await(self, awaitable: Any, finish: Callable[[Any], tuple] = None):
        finish = finish or _success
        try:
            task = asyncio.ensure_future(_awaited(awaitable))
            finished, _ = await asyncio.wait({task}, timeout=self.timeout)
            if not finished:
                # Whatever the call raises once cancelled, it timed out. Its cancellation
                # gets as long again to run before the record is let go.
                task.cancel()
                await asyncio.wait({task}, timeout=self.timeout)
                return ("transient", f"timeout after {self.timeout:g}s", None)
            response = task.result()
        except _Raised as e:
            return self._failure(e.exc)
        except BaseException as e:
            return self._failure(e)
        return finish(response)

    def _failure(self, e: BaseException):
        # A rule's class: the one the exception names, else its type's name.
        named = getattr(e, "error_class", None)
        error_class = _valid_utf8(named if isinstance(named, str) else type(e).__name__)
        if isinstance(e, Transient):
            return ("transient", _message(e, "Transient"), _retry_after(e), error_class)
        if isinstance(e, Permanent):
            return ("permanent", _message(e, "Permanent"), None, error_class)
        if isinstance(e, asyncio.CancelledError):
            return ("transient", "cancelled", None)
        if not isinstance(e, Exception):
            # KeyboardInterrupt, SystemExit: stop after this round, then raise it.
            self.interrupted = self.interrupted or e
            return ("transient", f"interrupted ({_describe(e)})", None)
        return (self.other_errors, _describe(e), None, error_class)


#: The records with a call running, by queue root: one call of a record at a time.
_RUNNING: set = set()
_RUNNING_CHANGED = threading.Condition()


def _release(key: tuple) -> None:
    with _RUNNING_CHANGED:
        _RUNNING.discard(key)
        _RUNNING_CHANGED.notify_all()


#: A record a batch processor gave no result for.
_NO_RESULT = object()


class _Answered(Exception):
    """Carries the answer every record of a batch gets (a timeout, a wrong result)."""

    def __init__(self, answer: tuple):
        super().__init__(answer)
        self.answer = answer


async def _gather(results: list) -> list:
    """Awaits the awaitables among ``results`` together; what one raises is its value."""

    async def one(r):
        if not inspect.isawaitable(r):
            return r
        try:
            return await r
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            return e

    return list(await asyncio.gather(*(one(r) for r in results)))


def _batch_result_of(future, records: int) -> list:
    try:
        return future.result()
    except BaseException as e:  # cancelled before it ran
        return [("transient", f"the call did not run: {_describe(e)}", None)] * records


def _result_of(future) -> tuple:
    try:
        return future.result()
    except BaseException as e:  # cancelled before it ran
        return ("transient", f"the call did not run: {_describe(e)}", None)


class _Raised(Exception):
    """Carries what a processor's coroutine raised out of it: ``KeyboardInterrupt`` or
    ``SystemExit`` raised as they are would stop the event loop every ``async def``
    processor shares."""

    def __init__(self, exc: BaseException):
        super().__init__(exc)
        self.exc = exc


async def _awaited(awaitable: Any) -> Any:
    try:
        return await awaitable
    except asyncio.CancelledError:
        raise  # the timeout cancelling it
    except BaseException as e:
        raise _Raised(e) from None


def _retry_after(e: Transient) -> Optional[float]:
    """A ``Transient``'s ``retry_after`` in seconds, however it was set; one that is no
    duration (negative, NaN, of another type) is left out."""
    value = getattr(e, "retry_after", None)
    try:
        seconds = None if value is None else _seconds("retry_after", value)
    except OverflowError:  # an int past float's range: as long as can be (capped later)
        return float("inf")
    except TypeError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None


def _success(response: Any) -> tuple:
    return ("success", None if response is None else _text(response), None)


def _text(response: Any) -> str:
    """A response as the text stored in ``final_results``: a string as it is, bytes as
    UTF-8, anything else as JSON, or its ``repr`` when JSON cannot write it."""
    if isinstance(response, str):
        text = response
    elif isinstance(response, (bytes, bytearray, memoryview)):
        text = bytes(response).decode("utf-8", errors="replace")
    else:
        try:
            text = json.dumps(response, default=_json_default)
        except Exception:  # noqa: BLE001 - circular, unwritable: keep what can be shown
            text = _safe(repr, response)
    return _valid_utf8(text)


def _describe(e: BaseException) -> str:
    """``"KeyError: 'x'"``: the exception's type and message, whatever its ``__str__``."""
    message = _safe(str, e)
    name = type(e).__name__
    return _valid_utf8(f"{name}: {message}" if message else name)


def _message(e: BaseException, default: str) -> str:
    return _valid_utf8(_safe(str, e) or default)


def _safe(show: Callable[[Any], str], value: Any) -> str:
    try:
        return show(value)
    except Exception:  # noqa: BLE001 - a __str__ or __repr__ that raises
        return f"<unprintable {type(value).__name__}>"


def _valid_utf8(text: str) -> str:
    """``text`` with lone surrogates (which UTF-8 cannot hold) escaped."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _json_default(value: Any) -> Any:
    """What JSON cannot write natively but has one obvious text for: times and dates
    (ISO 8601), decimals, UUIDs. Anything else is refused."""
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    raise TypeError(f"{type(value).__name__} has no JSON text")


class Queue:
    """A retry queue on four Delta tables under ``root`` (a folder, or an ``s3://``,
    ``gs://``, ``az://`` URL), created on first use.

    ``storage_options`` are the object store's settings (as for delta-rs:
    ``AWS_ENDPOINT_URL``, ``AWS_REGION``, ...); without them the usual environment
    variables apply. ``worker`` names this runner in the journal: concurrent runners need
    distinct names.
    """

    def __init__(
        self,
        root: str,
        storage_options: Optional[Mapping[str, str]] = None,
        worker: str = "main",
    ):
        if isinstance(root, os.PathLike):
            root = os.fspath(root)
        if not isinstance(root, str):
            raise TypeError(f"root must be a folder or a URL as str, got {root!r}")
        self._native = _NativeQueue(
            root, dict(storage_options) if storage_options else None, worker
        )
        self.root = root

    def __repr__(self) -> str:
        return f"retrylake.Queue({self.root!r}, worker={self.worker_name!r})"

    @property
    def worker_name(self) -> str:
        """This runner's name in the journal."""
        return self._native.worker

    def enqueue(
        self,
        data: Any,
        *,
        id_field: str = "sample_id",
        payload_field: str = "payload",
        format: Optional[str] = None,
        skip_invalid: bool = False,
        now: Optional[Time] = None,
    ) -> dict:
        """Adds new records to the queue, due now; ids already in a table are skipped.

        ``data`` is a list (or iterable) of dicts, any Arrow-compatible table or stream
        (anything with ``__arrow_c_stream__``: pyarrow, pandas through pyarrow, polars,
        DuckDB results), or the path of a JSON Lines, CSV or Parquet file. A payload that
        is not a string is stored as its JSON text. Nothing is written unless every record
        is valid, or ``skip_invalid`` dead-letters the invalid ones. Returns the counts
        (``read``, ``enqueued``, ``skipped_existing``, ``invalid``).
        """
        args = (id_field, payload_field, skip_invalid, _time("now", now))
        if isinstance(data, (str,)) or hasattr(data, "__fspath__"):
            report = self._native.enqueue_file(str(data), format, *args)
        elif hasattr(data, "__arrow_c_stream__"):
            report = self._native.enqueue_arrow(data, "<arrow>", *args)
        elif _is_pandas(data):
            import pyarrow

            report = self._native.enqueue_arrow(
                pyarrow.Table.from_pandas(data, preserve_index=False), "<pandas>", *args
            )
        elif isinstance(data, (Mapping, bytes)):
            raise TypeError("enqueue takes a list of dicts, an Arrow table or a file path")
        else:
            lines = b"\n".join(_json_line(i, r, id_field) for i, r in enumerate(data, 1))
            report = self._native.enqueue_jsonl(lines, "<records>", *args)
        return json.loads(report)

    def run(
        self, processor: Callable[[Record], Any], *, now: Optional[Time] = None, **options: Any
    ) -> dict:
        """Runs one round: every due record (up to ``limit``) through ``processor``, as of
        ``now`` (the system clock by default). Returns the round's report (``round``,
        ``processed``, ``succeeded``, ``retried``, ``dead_lettered``, ``next_due``, ...).
        Options as for :meth:`drain`."""
        reports = self._rounds(processor, "one", options, now=now)
        return reports[0] if reports else {}

    def drain(
        self, processor: Callable[[Record], Any], *, now: Optional[Time] = None, **options: Any
    ) -> list:
        """Runs rounds until the queue is empty, waiting for each next due record; with
        ``now``, on a virtual clock that starts there and jumps to each next due time, so
        a whole backoff schedule runs in seconds. Returns the rounds' reports.

        Options (the CLI's defaults): ``limit`` (100000 records a round),
        ``concurrency`` (16), ``timeout`` (30 s), ``lease`` (15 min), ``max_retries`` (5),
        ``base_backoff`` (60 s), ``multiplier`` (2.0), ``max_backoff`` (1 h), ``jitter``
        (``"none"``, ``"full"``, ``"equal"``, ``"decorrelated"``), ``seed`` (42),
        ``shard`` (``"I/N"``), ``rate`` (``"N/s"``, ``"N/m"``, ``"N/h"``), ``breaker``
        (True), ``breaker_failure_rate`` (0.5), ``breaker_window`` (100),
        ``breaker_min_calls`` (50), ``breaker_cool_down`` (30 s), ``allow_empty_payload``
        (False), ``max_retry_after`` (1 day), ``maintenance`` (True), ``poll`` (5 s),
        ``other_errors`` (``"transient"``: how an exception other than
        :class:`Transient` and :class:`Permanent` counts), ``call_batch`` (None: the
        processor takes one record; N: it takes a list of at most N records and returns a
        list with one result per record, in their order, or a dict by id, each a response
        or an exception instance for that record's failure; what it raises applies to the
        whole batch), ``rules`` (None; a path to a rules TOML file, or a list of dicts of the
        same shape: ``[{"name": "throttled", "class": ["RateLimited"], "action": "snooze",
        "wait": "1m"}]``; an exception's class is its ``error_class`` or its type's name),
        ``max_age`` (None; a record's deadline from its enqueue: past it, it is not called
        again and goes to ``dead_letter_queue`` with reason ``expired``, as does a failure
        whose next try would fall at or after it), ``on_dead_letter`` (None; a shell command, or
        an ``http(s)://`` URL, that gets the dead letters of each round as JSON, at least
        once, with an idempotency key, after the round commits; see the README's "Operator
        controls"). Durations are seconds or ``timedelta``.

        A round on a paused queue (:meth:`pause`) claims nothing; its report's
        ``queue_paused`` holds the pause (``None`` otherwise).
        """
        return self._rounds(processor, "drained", options, now=now)

    def worker(self, processor: Callable[[Record], Any], **options: Any) -> list:
        """Runs rounds until Ctrl-C or SIGTERM, polling every ``poll`` seconds; the round
        in flight finishes first, then ``KeyboardInterrupt`` is raised. Options as for
        :meth:`drain`."""
        import signal

        main = threading.current_thread() is threading.main_thread()
        previous = None
        if main:

            def stop(signum, frame):
                raise KeyboardInterrupt("SIGTERM")

            previous = signal.signal(signal.SIGTERM, stop)
        try:
            return self._rounds(processor, "stopped", options)
        finally:
            if main:
                # None: a handler not set from Python, which cannot be put back.
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    def status(self, *, now: Optional[Time] = None) -> dict:
        """The queue's state: ``waiting``, ``due``, ``final``, ``dead``, ``next_due``,
        ``dead_by_error``, ``dead_by_reason``, ``recovered_share``, ``paused`` (the pause
        holding at ``now``, as :meth:`paused` gives it, or ``None``) and more."""
        return json.loads(self._native.status(_time("now", now)))

    def query(self, sql: str, *, version: Optional[int] = None, as_of: Optional[Time] = None):
        """Runs one read-only SQL statement over ``retry_queue``, ``final_results``,
        ``dead_letter_queue`` and ``attempts``; returns a ``pyarrow.Table``
        (``.to_pandas()``, ``polars.from_arrow``). The SQL is the CLI's: Delta's
        ``t VERSION AS OF n`` and ``t TIMESTAMP AS OF 'ts'`` per table, ``DESCRIBE HISTORY
        t [LIMIT n]``, ``DESCRIBE DETAIL t`` and ``delta.`path``` tables. ``version`` and
        ``as_of`` apply to every table the SQL names without its own ``AS OF``; a table
        without that version raises :class:`RetrylakeError` naming the versions it has."""
        stream = self._native.query(sql, version, _time("as_of", as_of))
        import pyarrow

        return pyarrow.RecordBatchReader.from_stream(stream).read_all()

    def history(self, tables: Union[str, Sequence[str]] = ()) -> list:
        """The commits of ``tables`` (all four by default), newest first: the audit trail
        (``table``, ``version``, ``timestamp``, ``operation``, ``job``, ``round``,
        ``worker``, ``details``)."""
        if isinstance(tables, str):
            tables = [tables]
        return json.loads(self._native.history(list(tables)))

    def redrive(
        self,
        *,
        ids: Union[str, Iterable[str]] = (),
        reason: Optional[str] = None,
        error_msg: Optional[str] = None,
        limit: Optional[int] = None,
        now: Optional[Time] = None,
    ) -> dict:
        """Moves dead letters matching every filter given back into the queue, due now,
        with ``retry_count`` 0. Returns ``round`` and ``redriven``."""
        if isinstance(ids, str):
            ids = [ids]
        return json.loads(
            self._native.redrive(list(ids), reason, error_msg, limit, _time("now", now))
        )

    def pause(
        self,
        until: Optional[Time] = None,
        reason: Optional[str] = None,
        *,
        now: Optional[Time] = None,
    ) -> dict:
        """Pauses the queue: from their next round, every worker's rounds (in any process,
        on any host) claim nothing, until ``until`` (a ``datetime``, naive ones taken as
        UTC) or a :meth:`resume`; enqueues, redrives and cancels go on. ``reason`` (one
        line) is kept with the pause and in ``retry_queue``'s history. ``now`` is the time
        the pause is made at (the system clock by default); ``until`` must be after it.
        Returns the pause: ``until``, ``reason``, ``by`` (``user@host``) and ``at``."""
        return json.loads(self._native.pause(_time("until", until), reason, _time("now", now)))

    def resume(self) -> None:
        """Ends a pause of the queue: workers claim again from their next round."""
        self._native.resume()

    def paused(self, *, now: Optional[Time] = None) -> Optional[dict]:
        """The pause holding at ``now`` (the system clock by default), as the tables say
        now (other processes' pauses and resumes included), or ``None``: a dict with
        ``until``, ``reason``, ``by`` and ``at``."""
        return json.loads(self._native.paused(_time("now", now)))

    def cancel(
        self,
        ids: Union[str, Iterable[str], None] = None,
        *,
        error_msg: Optional[str] = None,
        older_than: Optional[Duration] = None,
        all: bool = False,
        reason: Optional[str] = None,
        now: Optional[Time] = None,
    ) -> dict:
        """Moves the queued records matching every filter given (``ids``, the last error
        exactly ``error_msg``, enqueued at least ``older_than`` before ``now``) to
        ``dead_letter_queue`` with reason ``cancelled`` and ``reason`` as their
        ``error_msg`` (``cancelled by user@host`` by default), journaled like a round. With
        no filter it refuses unless ``all=True``. A record a running round holds under its
        lease is left to that round and counted in ``held``. Returns ``rounds``,
        ``cancelled`` and ``held``."""
        if ids is None:
            ids = []
        elif isinstance(ids, str):
            ids = [ids]
        else:
            ids = list(ids)
            if not ids:
                # Given, and empty: never "every record".
                raise ValueError("cancel needs at least one id in ids (an empty list matches none)")
        if older_than is not None:
            older_than = _seconds("older_than", older_than)
        if not isinstance(all, bool):
            raise TypeError(f"all must be a bool, got {all!r}")
        return json.loads(
            self._native.cancel(
                list(ids), error_msg, older_than, all, reason, _time("now", now)
            )
        )

    _DEFAULTS = dict(
        poll=5.0,
        limit=100_000,
        concurrency=16,
        timeout=30.0,
        lease=900.0,
        max_retries=5,
        base_backoff=60.0,
        multiplier=2.0,
        max_backoff=3600.0,
        jitter="none",
        seed=42,
        shard=None,
        rate=None,
        breaker=True,
        breaker_failure_rate=0.5,
        breaker_window=100,
        breaker_min_calls=50,
        breaker_cool_down=30.0,
        allow_empty_payload=False,
        max_retry_after=86400.0,
        maintenance=True,
        call_batch=None,
        rules=None,
        max_age=None,
        on_dead_letter=None,
    )
    _DURATIONS = (
        "poll",
        "timeout",
        "lease",
        "base_backoff",
        "max_backoff",
        "breaker_cool_down",
        "max_retry_after",
    )

    def _rounds(self, processor, until: str, options: dict, now: Optional[Time] = None) -> list:
        other_errors = options.pop("other_errors", "transient")
        unknown = sorted(set(options) - set(self._DEFAULTS))
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(unknown)}")
        settings = {**self._DEFAULTS, **options}
        for name in self._DURATIONS:
            settings[name] = _seconds(name, settings[name])
        if settings["max_age"] is not None:
            settings["max_age"] = _seconds("max_age", settings["max_age"])
        for name in ("timeout", "poll"):
            if not settings[name] > 0:
                raise ValueError(f"{name} must be more than 0 seconds, got {settings[name]}")
        concurrency = settings["concurrency"]
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise TypeError(f"concurrency must be an int, got {concurrency!r}")
        rules = settings.pop("rules")
        if rules is None:
            settings["rules_file"], settings["rules_json"] = None, None
        elif isinstance(rules, (str, os.PathLike)):
            settings["rules_file"], settings["rules_json"] = os.fspath(rules), None
        elif isinstance(rules, Sequence) and not isinstance(rules, (bytes, bytearray)):
            if not all(isinstance(r, Mapping) for r in rules):
                raise TypeError("rules must be a path to a TOML file or a list of dicts")
            settings["rules_file"] = None
            settings["rules_json"] = json.dumps({"rule": [_rule(n, r) for n, r in enumerate(rules, 1)]})
        else:
            raise TypeError(f"rules must be a path to a TOML file or a list of dicts, got {rules!r}")
        call_batch = settings["call_batch"]
        if call_batch is not None and (isinstance(call_batch, bool) or not isinstance(call_batch, int)):
            raise TypeError(f"call_batch must be an int or None, got {call_batch!r}")
        if call_batch is not None and call_batch < 1:
            raise ValueError(f"call_batch must be at least 1, got {call_batch}")
        for name in ("limit", "max_retries", "seed", "breaker_window", "breaker_min_calls"):
            if isinstance(settings[name], bool):
                raise TypeError(f"{name} must be an int, got {settings[name]!r}")
        # One call of a record at a time is kept per place, however the root is spelt.
        caller = _Caller(
            processor, settings["timeout"], concurrency, other_errors, self._native.tables
        )
        try:
            reports = self._native.rounds(caller, until, _time("now", now), **settings)
        finally:
            caller.close()
        return json.loads(reports)


#: The fields of a rule that are durations.
_RULE_DURATIONS = ("wait", "max_age", "base_backoff", "max_backoff")


def _rule(n: int, rule: Mapping) -> dict:
    """A rule given as a dict, as the engine reads it: durations given as seconds or a
    ``timedelta`` become text (``"1500ms"``); a value JSON cannot hold is refused, naming
    the rule and the field."""
    out = {}
    for field, value in rule.items():
        if field in _RULE_DURATIONS and not isinstance(value, str):
            if isinstance(value, bool):
                raise TypeError(f"rule {n}: {field} must be a duration, got {value!r}")
            ms = _seconds(f"rule {n}: {field}", value) * 1000
            if not 0 <= ms < 2**63:
                raise ValueError(f"rule {n}: {field} must be 0 or more seconds, got {value!r}")
            value = f"{round(ms)}ms"
        else:
            try:
                json.dumps(value)
            except (TypeError, ValueError) as e:
                raise TypeError(f"rule {n}: {field} cannot be {value!r}: {e}") from None
        out[field] = value
    return out


def _is_pandas(data: Any) -> bool:
    """A pandas DataFrame (or a subclass, such as geopandas'), without importing pandas."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(data, pandas.DataFrame)


def _json_line(n: int, record: Any, id_field: str) -> bytes:
    if not isinstance(record, Mapping):
        raise TypeError(f"record {n} is {type(record).__name__}, not a dict")
    try:
        id = record.get(id_field)
        if isinstance(id, int) and not isinstance(id, bool):
            # As its digits (an IntEnum's too): a JSON number past 2^64 would be read back
            # as a float.
            record = {**record, id_field: str(int(id))}
        # A lone surrogate cannot be encoded: refused here, naming the record.
        return json.dumps(record, default=_json_default, ensure_ascii=False).encode("utf-8")
    except TypeError as e:
        raise TypeError(f"record {n}: {e}") from None
    except ValueError as e:  # UnicodeEncodeError, an int past Python's digit limit
        raise ValueError(f"record {n}: {e}") from None
