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
import inspect
import json
import threading
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
    ``max_retry_after``.
    """

    def __init__(self, message: str = "", retry_after: Optional[Duration] = None):
        super().__init__(message)
        self.retry_after = None if retry_after is None else _seconds("retry_after", retry_after)


class Permanent(Exception):
    """A failure retrying cannot fix (bad data, a 4xx): the record is dead-lettered."""


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
    return float(value)


def _time(name: str, value: Optional[Time]) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.astimezone(_dt.timezone.utc).isoformat()
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
    """The user's function as the engine calls it: ``(id, payload, retry_count)`` in,
    ``(kind, text, retry_after)`` out, every exception classified."""

    def __init__(self, processor: Callable[[Record], Any], timeout: float, other_errors: str):
        if not callable(processor):
            raise TypeError(f"the processor must be callable, got {processor!r}")
        if other_errors not in ("transient", "permanent"):
            raise ValueError(f"other_errors must be 'transient' or 'permanent', got {other_errors!r}")
        self.processor = processor
        self.timeout = timeout
        self.other_errors = other_errors
        #: Set when the processor raised KeyboardInterrupt: the run stops after the round.
        self.interrupted = False

    def __call__(self, sample_id: str, payload: Optional[str], retry_count: int):
        record = Record(
            id=sample_id,
            payload=payload,
            attempt=retry_count + 1,
            idempotency_key=f"{sample_id}:{retry_count}",
        )
        try:
            response = self.processor(record)
            # An `async def`, or a plain function that returns an awaitable: run it on the
            # event loop, cut off at the timeout.
            if inspect.isawaitable(response):
                future = asyncio.run_coroutine_threadsafe(
                    asyncio.wait_for(_awaited(response), self.timeout), _Loop.get()
                )
                try:
                    response = future.result()
                except concurrent.futures.CancelledError:
                    raise Transient("cancelled")
        except Transient as e:
            return ("transient", str(e) or "Transient", e.retry_after)
        except Permanent as e:
            return ("permanent", str(e) or "Permanent", None)
        except (asyncio.TimeoutError, concurrent.futures.TimeoutError):
            return ("transient", f"timeout after {self.timeout:g}s", None)
        except KeyboardInterrupt:
            self.interrupted = True
            return ("transient", "interrupted (KeyboardInterrupt)", None)
        except Exception as e:  # noqa: BLE001 - every failure becomes the record's outcome
            return (self.other_errors, f"{type(e).__name__}: {e}", None)
        return ("success", None if response is None else _text(response), None)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _text(response: Any) -> str:
    if isinstance(response, str):
        return response
    if isinstance(response, (bytes, bytearray)):
        return bytes(response).decode("utf-8", errors="replace")
    return json.dumps(response, default=str)


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
        self._native = _NativeQueue(
            str(root), dict(storage_options) if storage_options else None, worker
        )
        self.root = str(root)

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
            lines = "\n".join(_json_line(i, r) for i, r in enumerate(data, 1))
            report = self._native.enqueue_jsonl(lines.encode(), "<records>", *args)
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
        :class:`Transient` and :class:`Permanent` counts). Durations are seconds or
        ``timedelta``.
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
                signal.signal(signal.SIGTERM, previous)

    def status(self, *, now: Optional[Time] = None) -> dict:
        """The queue's state: ``waiting``, ``due``, ``final``, ``dead``, ``next_due``,
        ``dead_by_error``, ``recovered_share`` and more."""
        return json.loads(self._native.status(_time("now", now)))

    def query(self, sql: str, *, version: Optional[int] = None, as_of: Optional[Time] = None):
        """Runs one read-only SQL statement over ``retry_queue``, ``final_results``,
        ``dead_letter_queue`` and ``attempts`` (at a table ``version`` or the time
        ``as_of``); returns a ``pyarrow.Table`` (``.to_pandas()``, ``polars.from_arrow``)."""
        stream = self._native.query(sql, version, _time("as_of", as_of))
        import pyarrow

        return pyarrow.RecordBatchReader.from_stream(stream).read_all()

    def history(self, tables: Sequence[str] = ()) -> list:
        """The commits of ``tables`` (all four by default), newest first: the audit trail
        (``table``, ``version``, ``timestamp``, ``operation``, ``job``, ``round``,
        ``worker``, ``details``)."""
        return json.loads(self._native.history(list(tables)))

    def redrive(
        self,
        *,
        ids: Iterable[str] = (),
        reason: Optional[str] = None,
        error_msg: Optional[str] = None,
        limit: Optional[int] = None,
        now: Optional[Time] = None,
    ) -> dict:
        """Moves dead letters matching every filter given back into the queue, due now,
        with ``retry_count`` 0. Returns ``round`` and ``redriven``."""
        return json.loads(
            self._native.redrive(list(ids), reason, error_msg, limit, _time("now", now))
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
        caller = _Caller(processor, settings["timeout"], other_errors)
        reports = self._native.rounds(caller, until, _time("now", now), **settings)
        return json.loads(reports)


def _is_pandas(data: Any) -> bool:
    return type(data).__module__.startswith("pandas") and hasattr(data, "to_dict")


def _json_line(n: int, record: Any) -> str:
    if not isinstance(record, Mapping):
        raise TypeError(f"record {n} is {type(record).__name__}, not a dict")
    return json.dumps(record, default=str, ensure_ascii=False)
