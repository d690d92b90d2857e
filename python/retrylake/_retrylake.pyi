"""Types of the native module. Use the `retrylake` package's API, not this module."""

from typing import Any, Callable, Optional

__version__: str

class RetrylakeError(Exception):
    """The queue could not do what was asked: storage, tables, a lost lease."""

class ArrowStream:
    """A query's result, read once through the Arrow PyCapsule interface."""

    def __arrow_c_stream__(self, requested_schema: Optional[object] = None) -> object: ...

class Queue:
    def __init__(
        self, root: str, storage_options: Optional[dict[str, str]] = None, worker: str = "main"
    ) -> None: ...
    @property
    def worker(self) -> str: ...
    @property
    def tables(self) -> str: ...
    def enqueue_file(
        self,
        path: str,
        format: Optional[str],
        id_field: str,
        payload_field: str,
        skip_invalid: bool,
        now: Optional[str],
    ) -> str: ...
    def enqueue_jsonl(
        self,
        data: bytes,
        source: str,
        id_field: str,
        payload_field: str,
        skip_invalid: bool,
        now: Optional[str],
    ) -> str: ...
    def enqueue_arrow(
        self,
        data: Any,
        source: str,
        id_field: str,
        payload_field: str,
        skip_invalid: bool,
        now: Optional[str],
    ) -> str: ...
    def rounds(
        self,
        call: Callable[[str, Optional[str], int], tuple[str, Optional[str], Optional[float]]],
        until: str,
        now: Optional[str],
        poll: float,
        limit: int,
        concurrency: int,
        timeout: float,
        lease: float,
        max_retries: int,
        base_backoff: float,
        multiplier: float,
        max_backoff: float,
        jitter: str,
        seed: int,
        shard: Optional[str],
        rate: Optional[str],
        breaker: bool,
        breaker_failure_rate: float,
        breaker_window: int,
        breaker_min_calls: int,
        breaker_cool_down: float,
        allow_empty_payload: bool,
        max_retry_after: float,
        maintenance: bool,
        call_batch: Optional[int],
        rules_file: Optional[str],
        rules_json: Optional[str],
        max_age: Optional[float] = None,
        on_dead_letter: Optional[str] = None,
    ) -> str: ...
    def status(self, now: Optional[str] = None) -> str: ...
    def pause(self, until: Optional[str], reason: Optional[str], now: Optional[str]) -> str: ...
    def resume(self) -> None: ...
    def paused(self, now: Optional[str] = None) -> str: ...
    def cancel(
        self,
        ids: list[str],
        error_msg: Optional[str],
        older_than: Optional[float],
        all: bool,
        reason: Optional[str],
        now: Optional[str],
    ) -> str: ...
    def query(
        self, sql: str, version: Optional[int] = None, as_of: Optional[str] = None
    ) -> ArrowStream: ...
    def history(self, tables: list[str]) -> str: ...
    def redrive(
        self,
        ids: list[str],
        reason: Optional[str],
        error_msg: Optional[str],
        limit: Optional[int],
        now: Optional[str],
    ) -> str: ...
