"""A second hostile review of the Python package (after test_hostile.py, whose ground it
does not cover again): where the tables go, what in-memory inputs with invalid records,
odd Arrow schemas and odd Python values do, how a processor's exceptions are read, and
what Ctrl-C leaves behind.

Tests marked ``# FAILED BEFORE THE FIX`` showed a defect: each failed against the package
as it was and passes since its fix. The others guard a risk the package withstood. Anything that
could poison the session (a query left running, signals) runs in a child process.
"""

import datetime as dt
import enum
import json
import os
import shutil
import threading
import time

import pyarrow as pa
import pytest

import retrylake
from helpers import child

START = "2025-11-24T14:00:00Z"
START_DT = dt.datetime(2025, 11, 24, 14, tzinfo=dt.timezone.utc)
TABLES = ("retry_queue", "final_results", "dead_letter_queue")


@pytest.fixture
def q(tmp_path):
    return retrylake.Queue(str(tmp_path / "data"))


def rows(q, table, columns="*"):
    return q.query(f"SELECT {columns} FROM {table} ORDER BY sample_id").to_pylist()


def where_is(q, sample_id):
    """The tables that hold `sample_id`, once per row."""
    found = []
    for table in TABLES:
        n = q.query(
            f"SELECT count(*) AS n FROM {table} WHERE sample_id = '{sample_id}'"
        ).column("n")[0].as_py()
        found += [table] * n
    return found




# --------------------------------------------------------------------------------------
# Where the tables go
# --------------------------------------------------------------------------------------


def test_an_empty_root_does_not_put_the_tables_at_the_filesystem_root():
    # FAILED BEFORE THE FIX. Queue("") is accepted and creates retry_queue, final_results,
    # dead_letter_queue and attempts in "/" (not even the working directory): the store
    # joins the root and the table name as `format!("{}/{}", root.trim_end_matches('/'),
    # ...)` (src/store/mod.rs:557, and :148), and `create_dir_all("")` succeeds;
    # python/src/lib.rs:399-401 and retrylake/__init__.py:371 pass "" through unchecked. A
    # config whose data path came out empty writes the queue outside any data root.
    # Expected: ValueError naming the root. (What this test creates in "/" it removes.)
    before = {t: os.path.exists(f"/{t}") for t in (*TABLES, "attempts")}
    try:
        with pytest.raises(ValueError, match="root"):
            retrylake.Queue("")
    finally:
        for t, existed in before.items():
            if not existed and os.path.isdir(f"/{t}/_delta_log"):
                shutil.rmtree(f"/{t}")


@pytest.mark.parametrize("kind", ["None", "bytes"])
def test_a_root_that_is_no_path_is_a_type_error(tmp_path, monkeypatch, kind):
    # FAILED BEFORE THE FIX. `Queue.__init__` does `str(root)` (retrylake/__init__.py:371): Queue(None)
    # opens a queue in the folder "./None", Queue(b"/some/path") one in "./b'/some/path'".
    # A variable left unset silently gets a fresh, empty queue, and records enqueued there
    # are not where any worker looks. Expected: TypeError (or bytes decoded as a path).
    monkeypatch.chdir(tmp_path)
    wanted = str(tmp_path / "data")
    root = None if kind == "None" else os.fsencode(wanted)
    try:
        queue = retrylake.Queue(root)
    except TypeError:
        return
    assert kind == "bytes" and queue.root == wanted, f"opened {queue.root!r}"


# --------------------------------------------------------------------------------------
# Invalid records of in-memory inputs (skip_invalid)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["records", "arrow", "pandas"])
def test_invalid_records_of_two_in_memory_enqueues_are_both_kept(q, kind):
    # FAILED BEFORE THE FIX: a record lost. With skip_invalid, an invalid record is dead-lettered
    # under the id `invalid:<source>:<line>` (src/input.rs:656 synthetic_id); every
    # in-memory enqueue names its source the same constant "<records>", "<arrow>" or
    # "<pandas>" (retrylake/__init__.py:406, 411, 417). The second enqueue's invalid record
    # on the same line gets the same id, is taken as already there
    # (src/enqueue.rs:135 `!existing.contains(&d.sample_id)`) and is dropped: its payload
    # is in no table, and the report says `invalid: 0, skipped_existing: 1`.
    # Expected: both invalid records in dead_letter_queue.
    def data(good, payload):
        records = [{"sample_id": good, "payload": "ok"}, {"sample_id": "", "payload": payload}]
        if kind == "records":
            return records
        table = pa.Table.from_pylist(records)
        return table if kind == "arrow" else table.to_pandas()

    first = q.enqueue(data("a", "first bad"), skip_invalid=True, now=START)
    second = q.enqueue(data("b", "second bad"), skip_invalid=True, now=START)
    assert first["invalid"] == 1
    assert second["invalid"] == 1, second
    payloads = sorted(r["payload"] for r in rows(q, "dead_letter_queue"))
    # A dead letter of a dict keeps the record's JSON text, of Arrow its payload.
    assert len(payloads) == 2 and "first bad" in payloads[0] and "second bad" in payloads[1]


def test_invalid_records_of_two_files_with_one_name_are_both_kept(q, tmp_path):
    # FAILED BEFORE THE FIX: the same defect for files: the synthetic id holds the file's name only
    # (src/input.rs:656-661, `path.file_name()`), so day1/input.jsonl and
    # day2/input.jsonl (a daily drop into dated folders) give their bad line 2 one id, and
    # the second is dropped without a word.
    for day, payload in (("day1", "first bad"), ("day2", "second bad")):
        folder = tmp_path / day
        folder.mkdir()
        (folder / "input.jsonl").write_text(
            json.dumps({"sample_id": f"ok-{day}", "payload": "p"})
            + "\n"
            + json.dumps({"sample_id": "", "payload": payload})
            + "\n"
        )
        q.enqueue(folder / "input.jsonl", skip_invalid=True, now=START)
    payloads = sorted(r["payload"] for r in rows(q, "dead_letter_queue"))
    assert len(payloads) == 2 and "second bad" in payloads[1], payloads


def test_an_in_memory_enqueue_that_fails_part_way_writes_nothing(q):
    # HOLDS. A generator of records that raises after some rows, and one that yields a
    # non-dict: nothing of it is written (the rows are collected before the native call).
    def dies():
        yield {"sample_id": "g1", "payload": "x"}
        yield {"sample_id": "g2", "payload": "y"}
        raise RuntimeError("source died")

    def odd():
        yield {"sample_id": "o1", "payload": "x"}
        yield ["not", "a", "dict"]

    with pytest.raises(RuntimeError, match="source died"):
        q.enqueue(dies(), now=START)
    with pytest.raises(TypeError, match="record 2"):
        q.enqueue(odd(), now=START)
    assert q.status(now=START)["waiting"] == 0
    assert rows(q, "dead_letter_queue") == []


def test_an_endless_line_in_an_input_file_is_an_error_not_an_abort(tmp_path):
    # FAILED BEFORE THE FIX: the interpreter is killed. parse_jsonl_from reads each line whole with
    # `read_until(b'\n')` and no bound (src/input.rs:234); a file with a line longer than
    # the memory the process may take (here /dev/zero under a 1.5 GB address-space cap;
    # a multi-GB line in a real file, or a FIFO, does the same) ends in Rust's
    # "memory allocation of 2147483648 bytes failed" and SIGABRT, which no Python code
    # can catch. Expected: ValueError (a line too long) or MemoryError, the process alive.
    code = """
    import resource, sys, retrylake
    q = retrylake.Queue(sys.argv[1])
    q.enqueue([{"sample_id": "warm-up", "payload": "p"}])
    status = open("/proc/self/status").read().split("VmSize:")[1]
    vm = int(status.split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 1536 * 2**20, resource.RLIM_INFINITY))
    try:
        q.enqueue("/dev/zero", format="jsonl")
        print("ENQUEUED")
    except (ValueError, MemoryError, retrylake.RetrylakeError) as e:
        print("REFUSED", type(e).__name__)
    """
    rc, out = child(code, tmp_path, timeout=30)
    assert rc == 0 and "REFUSED" in out, (rc, out[:300])


# --------------------------------------------------------------------------------------
# Odd Arrow schemas
# --------------------------------------------------------------------------------------


def test_an_arrow_table_with_two_id_columns_is_refused(q):
    # FAILED BEFORE THE FIX. parse_batches checks the types of a HashMap of the columns by name, where
    # the last of two same-named columns wins (src/input.rs:551), but reads the values with
    # `batch.column_by_name`, which takes the first (src/input.rs:585): here the float
    # column (a type an id may not have) is read as the ids, and "1.5" is enqueued; with
    # two string columns one of them is silently ignored. Expected: ValueError naming the
    # duplicate column.
    table = pa.Table.from_arrays(
        [pa.array([1.5]), pa.array(["a"]), pa.array(["p"])],
        names=["sample_id", "sample_id", "payload"],
    )
    with pytest.raises(ValueError, match="sample_id"):
        q.enqueue(table, now=START)
    assert q.status(now=START)["waiting"] == 0


def test_an_arrow_table_with_two_payload_columns_is_refused(q):
    # FAILED BEFORE THE FIX. Same cause: two `payload` columns, the second all null; which one is the
    # payload is a guess (the first is taken). Expected: ValueError.
    table = pa.Table.from_arrays(
        [pa.array(["a"]), pa.array(["kept?"]), pa.array([None], pa.string())],
        names=["sample_id", "payload", "payload"],
    )
    with pytest.raises(ValueError, match="payload"):
        q.enqueue(table, now=START)


def test_a_struct_payload_from_arrow_keeps_its_null_fields(q):
    # FAILED BEFORE THE FIX: data changed. The same payload {"a": 1, "b": None} is stored as
    # '{"a":1,"b":null}' from a list of dicts but as '{"a":1}' from Arrow: json_texts
    # writes nested columns with arrow's LineDelimitedWriter, which drops null fields
    # (src/input.rs:634, no `with_explicit_nulls(true)`). A downstream that tells a
    # missing key from a null one gets another record.
    struct = pa.struct([("a", pa.int64()), ("b", pa.string())])
    q.enqueue([{"sample_id": "d", "payload": {"a": 1, "b": None}}], now=START)
    q.enqueue(
        pa.table({"sample_id": ["a"], "payload": pa.array([{"a": 1, "b": None}], struct)}),
        now=START,
    )
    stored = {r["sample_id"]: json.loads(r["payload"]) for r in rows(q, "retry_queue")}
    assert stored["d"] == {"a": 1, "b": None}
    assert stored["a"] == {"a": 1, "b": None}, stored["a"]


def test_a_nested_arrow_payload_does_not_turn_nan_and_infinity_into_null(q):
    # FAILED BEFORE THE FIX: data changed without a word. A list payload [1.0, nan, inf] is stored
    # as '[1.0,null,null]' (arrow's JSON writer writes non-finite floats as null;
    # src/input.rs:634-642). A list of dicts with NaN is refused (ValueError), a flat
    # float column keeps 'NaN'. Expected: ValueError naming the row, or the values kept.
    table = pa.table(
        {"sample_id": ["a"], "payload": pa.array([[1.0, float("nan"), float("inf")]])}
    )
    try:
        q.enqueue(table, now=START)
    except ValueError:
        return
    payload = rows(q, "retry_queue")[0]["payload"]
    assert "null" not in payload, payload


def test_id_field_and_payload_field_naming_one_field(q):
    # FAILED BEFORE THE FIX. id_field == payload_field: from dicts the payload is silently None
    # (KeySeed matches the id first, src/input.rs:320, so the payload is never read) and
    # the record is later dead-lettered "Missing Payload" without a call; from Arrow the
    # payload is the id. Expected: ValueError, or at least one behaviour for both.
    try:
        q.enqueue([{"x": "a"}], id_field="x", payload_field="x", now=START)
    except ValueError:
        return
    q.enqueue(pa.table({"x": ["b"]}), id_field="x", payload_field="x", now=START)
    stored = {r["sample_id"]: r["payload"] for r in rows(q, "retry_queue")}
    assert stored in ({"a": "a", "b": "b"}, {"a": None, "b": None}), stored


# --------------------------------------------------------------------------------------
# Odd Python values in a list of dicts
# --------------------------------------------------------------------------------------


class _Code(int, enum.Enum):
    ONE = 1


def test_an_int_enum_id_is_enqueued_as_its_number(q):
    # FAILED BEFORE THE FIX. `_json_line` turns an int id into `str(id)` (retrylake/__init__.py:575),
    # which for an `(int, Enum)` member is "_Code.ONE", not "1" (json.dumps, and every
    # other input, gives 1). The record is keyed by the member's name: an enqueue of id 1
    # from a file later does not see it as existing, and the same record is queued twice.
    q.enqueue([{"sample_id": _Code.ONE, "payload": "p"}], now=START)
    r = q.enqueue([{"sample_id": 1, "payload": "p"}], now=START)
    assert [row["sample_id"] for row in rows(q, "retry_queue")] == ["1"]
    assert r["skipped_existing"] == 1


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"sample_id": 10**5000, "payload": "p"}, id="huge-int-id"),
        pytest.param({"sample_id": "a", "payload": "lone \ud800"}, id="surrogate-payload"),
    ],
)
def test_a_bad_value_in_a_list_of_dicts_says_which_record(q, bad):
    # FAILED BEFORE THE FIX (minor). An id of 5000 digits raises Python's own "Exceeds the limit (4300
    # digits) for integer string conversion" from `str(id)` (retrylake/__init__.py:575,
    # outside the try that adds "record N"); a lone surrogate raises UnicodeEncodeError
    # from `lines.encode()` (retrylake/__init__.py:417) with a position in the joined text.
    # Neither says which record, and skip_invalid does not dead-letter them either.
    with pytest.raises(ValueError, match="record 2"):
        q.enqueue([{"sample_id": "ok", "payload": "p"}, bad], skip_invalid=True, now=START)
    assert q.status(now=START)["waiting"] == 0


def test_a_pandas_series_is_a_type_error(q):
    # FAILED BEFORE THE FIX (minor). `_is_pandas` accepts any pandas object with `to_dict`
    # (retrylake/__init__.py:565) and a Series goes to `Table.from_pandas`, which fails
    # with "AttributeError: 'Series' object has no attribute 'columns'". Expected: the
    # TypeError a dict gets ("enqueue takes a list of dicts, an Arrow table or a file
    # path").
    import pandas as pd

    with pytest.raises(TypeError):
        q.enqueue(pd.Series(["a", "b"], name="sample_id"), now=START)


# --------------------------------------------------------------------------------------
# What a processor raises
# --------------------------------------------------------------------------------------


class _RateLimited(retrylake.Transient):
    """The usual way to carry a Retry-After: set it from the response."""

    def __init__(self, seconds):
        super().__init__("429 rate limited")
        self.retry_after = dt.timedelta(seconds=seconds)


def test_a_retry_after_set_after_construction_is_honoured(q):
    # FAILED BEFORE THE FIX. `_failure` hands `e.retry_after` to the engine as it is
    # (retrylake/__init__.py:250); only the constructor converts a timedelta to seconds.
    # A timedelta set afterwards (or a huge int) fails the Rust extraction of `done`'s
    # argument (python/src/lib.rs:215), the callback's exception is only logged, and the
    # record comes back with "the processor's call ended without an answer" (or "timeout
    # after 2s", see below), its message lost and
    # its 5-hour Retry-After ignored: the downstream is called again after 2 minutes. The
    # round also waits out the whole timeout (30 s by default) for an answer that never
    # comes when the logged traceback keeps `done`'s sender alive (it does under pytest).
    q.enqueue([{"sample_id": "a", "payload": "p"}], now=START)

    def proc(record):
        raise _RateLimited(5 * 3600)

    t = time.monotonic()
    q.run(proc, now=START, breaker=False, timeout=2, lease=10)
    took = time.monotonic() - t
    row = rows(q, "retry_queue", "error_msg, process_after")[0]
    assert row["error_msg"] == "429 rate limited", row
    assert row["process_after"] - START_DT >= dt.timedelta(hours=5), row
    assert took < 1.5, f"the round waited {took:.1f}s for the processor's answer"


def test_a_timeout_error_the_processor_raises_keeps_its_message(q):
    # FAILED BEFORE THE FIX. Since Python 3.11 asyncio.TimeoutError and concurrent.futures.TimeoutError
    # are the builtin TimeoutError, so `_failure`'s check for the package's own timeout
    # (retrylake/__init__.py:253) catches any TimeoutError the user's code raises (a
    # socket timeout is one): its message is replaced by "timeout after 30s" (the call
    # took milliseconds), and it is transient even under other_errors="permanent".
    # Expected: the processor's own message.
    q.enqueue([{"sample_id": "a", "payload": "p"}], now=START)

    def proc(record):
        raise TimeoutError("downstream read timed out after 2s")

    q.run(proc, now=START, breaker=False, other_errors="permanent")
    found = [
        r["error_msg"] for t in ("retry_queue", "dead_letter_queue") for r in rows(q, t)
    ]
    assert found and "downstream read timed out" in found[0], found


# --------------------------------------------------------------------------------------
# One call of a record at a time
# --------------------------------------------------------------------------------------


def test_one_call_of_a_record_at_a_time_whatever_the_roots_spelling(tmp_path, monkeypatch):
    # FAILED BEFORE THE FIX. The guard that keeps a record in one call at a time is keyed by
    # `(self.root, sample_id)` with the root as the user spelled it
    # (retrylake/__init__.py:180, 373), not the canonical path the native Queue already
    # computes (python/src/lib.rs:404).
    # Worker w1 on "data" gives up on a slow call of `a` (timeout); worker w2 on "./data/"
    # (the same tables) takes `a` up again while that call still runs: two deliveries of
    # one record in flight at once. With one spelling w2 waits (test_hostile.py).
    monkeypatch.chdir(tmp_path)
    w1 = retrylake.Queue("data", worker="w1")
    w2 = retrylake.Queue("./data/", worker="w2")
    w1.enqueue([{"sample_id": "a", "payload": "p"}], now=START)
    lock = threading.Lock()
    state = {"now": 0, "most": 0}

    def slow(record):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(1.0)
        with lock:
            state["now"] -= 1
        return "ok"

    w1.run(slow, now=START, timeout=0.2, lease=1, breaker=False)
    later = START_DT + dt.timedelta(hours=1)
    w2.run(slow, now=later, timeout=0.5, lease=2, breaker=False)
    time.sleep(1.2)
    assert state["most"] == 1, state


# --------------------------------------------------------------------------------------
# Times
# --------------------------------------------------------------------------------------


def test_a_now_before_year_1_is_refused(q):
    # FAILED BEFORE THE FIX. `time()` (python/src/lib.rs:85-94) refuses years from 9000 but not before
    # year 1: now="0000-06-01T00:00:00Z" is accepted, and the rounds write year-0 times that
    # the package's own query() cannot hand to Python ("OverflowError: date value out of
    # range" from to_pylist on attempts and dead_letter_queue). Expected: ValueError.
    with pytest.raises(ValueError, match="now"):
        q.enqueue([{"sample_id": "a", "payload": "p"}], now="0000-06-01T00:00:00Z")


# --------------------------------------------------------------------------------------
# Ctrl-C
# --------------------------------------------------------------------------------------


def test_ctrl_c_on_a_long_query_leaves_the_queue_usable(tmp_path):
    # FAILED BEFORE THE FIX. Ctrl-C now interrupts a long query (`read`, python/src/lib.rs:176-183,
    # through `wait_for`, :103), but the abandoned read goes on running on its thread
    # holding the Queue's lock (`queue.lock().await`, python/src/lib.rs:661), so the next
    # call on that Queue waits behind it; enqueue (`block`, python/src/lib.rs:186, which
    # never checks signals) cannot even be interrupted: the process hangs for as long as
    # the query would have run (here: hours, on a CPU it keeps busy). Expected:
    # the query cancelled (or the lock given up) so the enqueue answers at once.
    code = """
    import os, signal, sys, threading, time, retrylake
    q = retrylake.Queue(sys.argv[1])
    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    try:
        q.query("SELECT count(*) FROM generate_series(1, 100000000000)")
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
    t = time.time()
    q.enqueue([{"sample_id": "a", "payload": "p"}], now="2025-11-24T14:00:00Z")
    print("ENQUEUED", round(time.time() - t, 1), flush=True)
    """
    rc, out = child(code, tmp_path, timeout=10)
    assert "INTERRUPTED" in out, out[-1000:]
    assert "ENQUEUED" in out, f"the enqueue after Ctrl-C hung (rc={rc}): {out[-1000:]}"


def test_ctrl_c_at_any_moment_of_a_drain_loses_and_doubles_nothing(tmp_path):
    # HOLDS. SIGINT at eight moments of a drain (reading, calling, committing):
    # KeyboardInterrupt comes out, the interpreter does not abort, and after a clean
    # drain by another worker every record is in exactly one table and every record in
    # final_results was delivered exactly once.
    code = """
    import collections, os, signal, sys, threading, time, retrylake
    START = "2025-11-24T14:00:00Z"
    delivered = collections.Counter()
    lock = threading.Lock()

    def proc(record):
        time.sleep(0.002)
        if record.attempt == 1 and hash(record.id) % 3 == 0:
            raise retrylake.Transient("later")
        if record.id.endswith("7"):
            raise retrylake.Permanent("never")
        with lock:
            delivered[record.id] += 1
        return "ok"

    ALL = ("SELECT sample_id FROM retry_queue UNION ALL SELECT sample_id FROM "
           "final_results UNION ALL SELECT sample_id FROM dead_letter_queue")
    interrupted = 0
    for k in range(8):
        root = f"{sys.argv[1]}-{k}"
        q = retrylake.Queue(root)
        ids = [f"s{k}-{i}" for i in range(150)]
        q.enqueue([{"sample_id": s, "payload": "p"} for s in ids], now=START)
        fired = threading.Event()

        def fire():
            os.kill(os.getpid(), signal.SIGINT)
            fired.set()

        threading.Timer(0.03 + 0.05 * k, fire).start()
        try:
            try:
                q.drain(proc, now=START, limit=40, concurrency=8, breaker=False)
            except KeyboardInterrupt:
                interrupted += 1
            finally:
                fired.wait()
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass  # the signal came after the drain had ended
        q = retrylake.Queue(root, worker="after")
        q.drain(proc, now="2025-11-24T20:00:00Z", breaker=False)
        counts = q.query(f"SELECT sample_id, count(*) AS n FROM ({ALL}) GROUP BY sample_id")
        places = dict(zip(*(counts.column(c).to_pylist() for c in ("sample_id", "n"))))
        assert places == {s: 1 for s in ids}, {s: places.get(s) for s in ids if places.get(s) != 1}
        final = q.query("SELECT sample_id FROM final_results").column(0).to_pylist()
        assert all(delivered[s] == 1 for s in final), {s: delivered[s] for s in final}
    print("INTERRUPTED", interrupted, "OK", flush=True)
    """
    rc, out = child(code, tmp_path, timeout=60)
    assert rc == 0 and "OK" in out, (rc, out[-2000:])
    assert int(out.split("INTERRUPTED")[1].split()[0]) >= 4, out[-500:]
