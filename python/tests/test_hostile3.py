"""A third hostile review of the Python package (after test_hostile.py and
test_hostile2.py, whose ground it does not cover again), of what changed with them: the
hashed ids of invalid records, nested Arrow payloads (NaN refusal, JSON text), the
duplicate-column refusal, the empty-root refusal, the `tables` name that keys the
one-runner and one-call guards, the `_Raised` carrier and `_retry_after`, Ctrl-C on reads,
the time bounds, and the Spark example.

Tests marked ``# FAILED BEFORE THE FIX`` showed a defect (file:line of its cause then);
each passes since its fix. The others guard a risk the package withstood. Anything that could poison the session runs in a child
process.
"""

import asyncio
import collections
import datetime as dt
import decimal
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
NAN = float("nan")


@pytest.fixture
def q(tmp_path):
    return retrylake.Queue(str(tmp_path / "data"))


def rows(q, table, columns="*"):
    return q.query(f"SELECT {columns} FROM {table} ORDER BY sample_id").to_pylist()


def stored_payload(q):
    return [r["payload"] for r in rows(q, "retry_queue", "sample_id, payload")]




# --------------------------------------------------------------------------------------
# Ids of invalid records: `invalid:<name>:<line>:<fnv of the text>`
# --------------------------------------------------------------------------------------


def _two_days(tmp_path, name, contents):
    """Writes `contents[i]` to day<i>/<name>; returns the paths."""
    paths = []
    for i, content in enumerate(contents, 1):
        folder = tmp_path / f"day{i}"
        folder.mkdir()
        path = folder / name
        path.write_bytes(content)
        paths.append(path)
    return paths


def test_invalid_csv_records_whose_fields_join_alike_are_both_kept(q, tmp_path):
    # FAILED BEFORE THE FIX: a record lost. The text hashed into a CSV invalid record's id is its
    # fields joined with "," (src/input.rs:515 `fields.join(",")`, hashed at
    # src/enqueue.rs:101 / src/input.rs:715), which drops the quoting: day1's line 2
    # `invalid:x,"y,z"` (id `invalid:x`, payload `y,z`) and day2's line 2
    # `"invalid:x,y",z` (id `invalid:x,y`, payload `z`) both hash "invalid:x,y,z", get one
    # id, and the second enqueue reports `skipped_existing: 1, invalid: 0`: day2's record
    # is in no table. Expected: both dead-lettered (hash the bytes as read).
    paths = _two_days(
        tmp_path,
        "in.csv",
        [b'sample_id,payload\ninvalid:x,"y,z"\n', b'sample_id,payload\n"invalid:x,y",z\n'],
    )
    reports = [q.enqueue(p, skip_invalid=True, now=START) for p in paths]
    assert [r["invalid"] for r in reports] == [1, 1], reports
    assert len(rows(q, "dead_letter_queue")) == 2


def test_invalid_jsonl_lines_that_differ_only_in_non_utf8_bytes_are_both_kept(q, tmp_path):
    # FAILED BEFORE THE FIX: a record lost. An invalid JSON Lines record's id hashes its line
    # *lossily decoded* (src/input.rs:273 `String::from_utf8_lossy(line)`, hashed at
    # src/enqueue.rs:101): in a Latin-1 export, `café` (\xe9) and `cafè` (\xe8) both
    # become `caf\ufffd`, so day2's line 1 gets day1's id and is skipped as existing; its
    # dead letter is never written (and day1's stored text has lost the byte too).
    # Expected: two dead letters (hash the raw bytes).
    paths = _two_days(
        tmp_path,
        "in.jsonl",
        [b'{"sample_id":"caf\xe9","payload":"x"}\n', b'{"sample_id":"caf\xe8","payload":"x"}\n'],
    )
    reports = [q.enqueue(p, skip_invalid=True, now=START) for p in paths]
    assert [r["invalid"] for r in reports] == [1, 1], reports
    assert len(rows(q, "dead_letter_queue")) == 2


def test_invalid_arrow_rows_with_different_bad_ids_and_one_payload_are_both_kept(q):
    # FAILED BEFORE THE FIX: a record lost. For Arrow input the hashed text is the payload only
    # (src/input.rs:643 `raw: payload.map(str::to_owned)`): two tables whose row 1 has
    # different bad ids ("A\t1", "B\t2": a tab-separated key left unsplit) and the same
    # payload get one id, `invalid:<arrow>:1:<hash>`, and the second is dropped as
    # existing (`skipped_existing: 1`). Expected: two dead letters (hash the id too).
    reports = [
        q.enqueue(
            pa.table({"sample_id": [bad], "payload": ["same"]}), skip_invalid=True, now=START
        )
        for bad in ("A\t1", "B\t2")
    ]
    assert [r["invalid"] for r in reports] == [1, 1], reports
    assert len(rows(q, "dead_letter_queue")) == 2


def test_a_csv_with_cr_line_endings_gives_no_two_records_one_id(q, tmp_path):
    # FAILED BEFORE THE FIX: a record doubled. The csv reader ends a record at a lone "\r" (classic
    # Mac / "CSV (Macintosh)" exports), but the line numbers count "\n" only
    # (src/input.rs:461-466 `line_at`): every record of such a file is "line 1". Two
    # equal invalid rows then get one synthetic id (src/input.rs:715, same line, same
    # text) and both are written: dead_letter_queue holds one id twice; a redrive puts it
    # twice in the queue and final_results ends with two rows of one id. Valid records
    # with one id are refused as duplicates; these are not. Expected: distinct ids (or
    # the file refused).
    path = tmp_path / "mac.csv"
    path.write_bytes(b"sample_id,payload\r,dup\r,dup\rgood,p\r")
    q.enqueue(path, skip_invalid=True, now=START)
    dead = [r["sample_id"] for r in rows(q, "dead_letter_queue")]
    assert len(dead) == len(set(dead)), dead
    q.redrive(now=START)
    q.drain(lambda r: "ok", now=START, breaker=False)
    n = q.query("SELECT count(*) AS n, count(DISTINCT sample_id) AS d FROM final_results")
    assert n.to_pylist()[0]["n"] == n.to_pylist()[0]["d"], n.to_pylist()


# --------------------------------------------------------------------------------------
# Nested Arrow payloads
# --------------------------------------------------------------------------------------


def _sliced_nested():
    # Row 0 holds NaN; the slice holds row 1 only.
    table = pa.table({"sample_id": ["bad", "a"], "payload": pa.array([[NAN], [1.0]])})
    return table.slice(1)


def _sliced_binary():
    table = pa.table({"sample_id": ["bad", "a"], "payload": pa.array([b"\xff", b"ok"])})
    return table.slice(1)


@pytest.mark.parametrize(
    "make", [_sliced_nested, _sliced_binary], ids=["nested-nan", "binary-not-utf8"]
)
def test_a_sliced_arrow_table_is_judged_by_its_own_rows(q, make):
    # FAILED BEFORE THE FIX: valid input refused. `Table.slice` (enqueueing a big table in chunks)
    # exports the whole buffers with an offset. has_non_finite walks a list's child
    # values whole (src/input.rs:681-701 `data.child_data()`), not the slice's range, and
    # the strict cast validates the whole binary buffer (src/input.rs:622): a slice whose
    # only row is `[1.0]` / `b"ok"` is refused for a row it does not hold ("holds NaN or
    # an infinity" / "non UTF-8 data"), and so is every chunk of the table. Expected:
    # the slice enqueued.
    table = make()
    assert table.num_rows == 1
    q.enqueue(table, now=START)
    assert [r["sample_id"] for r in rows(q, "retry_queue")] == ["a"]


def _null_struct_over_nan():
    inner = pa.StructArray.from_arrays(
        [pa.array([1.0, NAN])], ["x"], mask=pa.array([False, True])
    )
    return pa.StructArray.from_arrays([pa.array(["k", "k"]), inner], ["name", "inner"])


def _null_list_over_nan():
    xs = pa.ListArray.from_arrays(
        pa.array([0, 1, 2], pa.int32()), pa.array([1.0, NAN]), mask=pa.array([False, True])
    )
    return pa.StructArray.from_arrays([pa.array(["k", "k"]), xs], ["name", "xs"])


def _unused_dictionary_nan():
    values = pa.DictionaryArray.from_arrays(pa.array([0, 0], pa.int8()), pa.array([1.0, NAN]))
    xs = pa.ListArray.from_arrays(pa.array([0, 1, 2], pa.int32()), values)
    return xs


@pytest.mark.parametrize(
    "make",
    [_null_struct_over_nan, _null_list_over_nan, _unused_dictionary_nan],
    ids=["null-struct", "null-list-slot", "unused-dictionary-value"],
)
def test_a_nan_no_row_holds_does_not_refuse_the_table(q, make):
    # FAILED BEFORE THE FIX: valid input refused. has_non_finite (src/input.rs:681-701) checks each
    # float child's own validity only, not its parents': a NaN under a null struct, under
    # a null list entry, or a dictionary value no key uses is in no payload (the JSON
    # writer writes null / never reaches it), yet the whole table is refused. Expected:
    # enqueued, no payload holding NaN.
    payload = make()
    q.enqueue(pa.table({"sample_id": [f"r{i}" for i in range(len(payload))],
                        "payload": payload}), now=START)
    assert len(stored_payload(q)) == len(payload), stored_payload(q)


def test_a_nested_arrow_decimal_keeps_its_digits(q):
    # FAILED BEFORE THE FIX: data changed without a word. json_texts parses the JSON writer's text
    # back into a serde_json Value (src/input.rs:671) and writes that (:674): numbers
    # become f64, so {"amount": 12345678901234567890.12} (decimal128(38, 2), a money
    # amount) is stored as {"amount":1.2345678901234567e+19}. From a list of dicts the
    # same Decimal keeps every digit (as text), and a flat decimal column does too.
    # Expected: the digits kept (or the column refused).
    amount = decimal.Decimal("12345678901234567890.12")
    payload = pa.array([{"amount": amount}], pa.struct([("amount", pa.decimal128(38, 2))]))
    q.enqueue(pa.table({"sample_id": ["a"], "payload": payload}), now=START)
    assert "12345678901234567890.12" in stored_payload(q)[0], stored_payload(q)


def test_a_struct_payload_with_two_fields_of_one_name_is_refused_or_kept(q):
    # FAILED BEFORE THE FIX: data changed without a word. A struct may name two fields alike (Arrow
    # allows it; Spark's toPandas names it `error_on_duplicated_field_names`). The JSON
    # writer writes {"a":1,"a":2}; the serde_json re-parse (src/input.rs:671) keeps the
    # last, and the payload is stored as {"a":2}: field a=1 is gone. The top-level
    # column check (src/input.rs:578) refuses duplicates; nested ones are not looked at.
    # Expected: ValueError naming the field, or both values kept.
    payload = pa.StructArray.from_arrays([pa.array([1]), pa.array([2])], ["a", "a"])
    try:
        q.enqueue(pa.table({"sample_id": ["a"], "payload": payload}), now=START)
    except ValueError:
        return
    text = stored_payload(q)[0]
    assert "1" in text and "2" in text, text


def test_a_csv_header_naming_the_id_column_twice_is_refused(q, tmp_path):
    # FAILED BEFORE THE FIX. An Arrow column named twice is now refused (src/input.rs:578); a CSV
    # header naming it twice is not: parse_csv takes the first (src/input.rs:485
    # `position`), and the record is enqueued as "A" while the second column says "B",
    # without a word. Expected: ValueError naming the column, as for Arrow and Parquet.
    path = tmp_path / "in.csv"
    path.write_text("sample_id,payload,sample_id\nA,p,B\n")
    with pytest.raises(ValueError, match="sample_id"):
        q.enqueue(path, now=START)
    assert q.status(now=START)["waiting"] == 0


def test_a_big_int_inside_a_dict_payload_keeps_its_digits(q):
    # FAILED BEFORE THE FIX: data changed without a word (next to today's change: `_json_line` now
    # writes int *ids* as digits because "a JSON number past 2^64 would be read back as a
    # float", retrylake/__init__.py:599-602, but payloads keep the problem). A payload
    # {"n": 2**70} is re-serialized from a serde_json Value (src/input.rs:300
    # `other.to_string()`) and stored as {"n":1.1805916207174113e+21}. Same for a JSON
    # Lines file. Expected: the digits kept (store the payload's text as read).
    q.enqueue([{"sample_id": "a", "payload": {"n": 2**70}}], now=START)
    assert str(2**70) in stored_payload(q)[0], stored_payload(q)


# --------------------------------------------------------------------------------------
# What a processor raises
# --------------------------------------------------------------------------------------


class _HugeRetryAfter(retrylake.Transient):
    """A Retry-After header of 400 digits, read with int() and set after construction."""

    def __init__(self):
        super().__init__("429 rate limited")
        self.retry_after = 10**400


def _raise_sync(record):
    raise _HugeRetryAfter()


async def _raise_async(record):
    raise _HugeRetryAfter()


@pytest.mark.parametrize("proc", [_raise_sync, _raise_async], ids=["plain", "async"])
def test_a_huge_int_retry_after_keeps_the_transient_failure(q, proc):
    # FAILED BEFORE THE FIX. `_retry_after` (retrylake/__init__.py:302-311) catches TypeError only;
    # `float(10**400)` in `_seconds` raises OverflowError out of `_failure`
    # (retrylake/__init__.py:253). A plain processor's record is stored as "the call did
    # not run: OverflowError: ..." (it ran) with its Retry-After ignored (back in 2
    # minutes); an async one's OverflowError is classified as an *other* error: under
    # other_errors="permanent" a Transient is dead-lettered. Expected: retried, its
    # message kept, the Retry-After capped at max_retry_after (or left out).
    q.enqueue([{"sample_id": "a", "payload": "p"}], now=START)
    q.run(proc, now=START, breaker=False, other_errors="permanent")
    queued = rows(q, "retry_queue", "error_msg")
    assert queued, f"dead-lettered: {rows(q, 'dead_letter_queue', 'error_msg')}"
    assert queued[0]["error_msg"] == "429 rate limited", queued


async def _turns_cancel_into_timeout(record):
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        # What a client does that reports an aborted request as its own timeout.
        raise TimeoutError("request aborted") from None


def test_an_async_call_the_timeout_cancelled_is_retried_whatever_it_raised(q):
    # FAILED BEFORE THE FIX (a regression of the `_Raised` carrier). When the call's own timeout
    # cancels the coroutine and the coroutine answers the cancellation with an exception
    # (here TimeoutError), `_awaited` wraps it as the processor's own
    # (retrylake/__init__.py:293-299) and `_await` classifies it by other_errors
    # (retrylake/__init__.py:243-244): under other_errors="permanent" a record whose call
    # merely timed out is dead-lettered. Before the change it was "timeout after 0.3s",
    # transient. (It races the engine's own timer, which wins now and then: five records
    # make the outcome certain.) Expected: every record retried.
    q.enqueue([{"sample_id": f"s{i}", "payload": "p"} for i in range(5)], now=START)
    report = q.run(
        _turns_cancel_into_timeout,
        now=START,
        breaker=False,
        timeout=0.3,
        other_errors="permanent",
    )
    assert report["dead_lettered"] == 0, rows(q, "dead_letter_queue", "sample_id, error_msg")


async def _raises_cancelled(record):
    raise asyncio.CancelledError()


def test_an_async_processor_raising_cancelled_error_is_retried_and_the_loop_lives(q):
    # HOLDS. CancelledError the processor raises itself (not the timeout's) is let
    # through `_awaited` as if it were the timeout's: the record is retried, transient,
    # even under other_errors="permanent", and the shared event loop still serves.
    q.enqueue([{"sample_id": "a", "payload": "p"}], now=START)
    r = q.run(_raises_cancelled, now=START, breaker=False, other_errors="permanent")
    assert r["retried"] == 1, r

    async def ok(record):
        return "ok"

    later = START_DT + dt.timedelta(hours=1)
    q.drain(ok, now=later, breaker=False)
    assert [x["sample_id"] for x in rows(q, "final_results")] == ["a"]


# --------------------------------------------------------------------------------------
# Where the tables are: `tables` and the empty-root refusal
# --------------------------------------------------------------------------------------


def test_a_path_and_its_file_url_are_one_place_for_one_worker_name(tmp_path):
    # FAILED BEFORE THE FIX: records called twice. The one-runner-per-worker-name guard
    # (python/src/lib.rs:341-362) and the one-call-per-record guard
    # (retrylake/__init__.py:181, keyed by `tables`) know a place by
    # `std::fs::canonicalize(root)` (python/src/lib.rs:420), which fails for a URL and
    # keeps it verbatim: Queue("/x/data", worker="w") and Queue("file:///x/data",
    # worker="w") open the same tables (delta-rs reads file:// URLs) but are two places
    # to the guards, so both run as "w" at once, each takes the other's claimed records
    # for a crashed round of its own, and calls them again. Expected: the second runner
    # refused (RuntimeError), or no record called twice.
    path = str(tmp_path / "data")
    queues = [retrylake.Queue(path, worker="w"), retrylake.Queue("file://" + path, worker="w")]
    queues[0].enqueue([{"sample_id": f"s{i}", "payload": "p"} for i in range(40)], now=START)
    calls = collections.Counter()
    lock = threading.Lock()

    def proc(record):
        with lock:
            calls[record.id] += 1
        time.sleep(0.01)
        return "ok"

    refused = []

    def run(queue):
        try:
            queue.drain(proc, now=START, limit=5, concurrency=4, breaker=False, maintenance=False)
        except RuntimeError as e:
            refused.append(e)

    threads = [threading.Thread(target=run, args=(queue,)) for queue in queues]
    [t.start() for t in threads]
    [t.join() for t in threads]
    doubled = {k: v for k, v in calls.items() if v > 1}
    assert not doubled, f"called more than once: {doubled} (refused: {refused})"


def test_a_file_url_with_an_empty_path_does_not_put_the_tables_at_the_filesystem_root():
    # FAILED BEFORE THE FIX. refuse_empty (src/store/mod.rs:545) refuses "" and blanks, but
    # "file://" (f"file://{os.environ.get('DATA_DIR', '')}") has an empty path as well:
    # the tables are located at `format!("{}/{}", root.trim_end_matches('/'), name)` =
    # "file:/retry_queue" (src/store/mod.rs:569), and retry_queue, final_results,
    # dead_letter_queue and attempts are created in "/", the defect refuse_empty was
    # added for. Expected: ValueError naming the root. (What this test creates in "/" it
    # removes.)
    before = {t: os.path.exists(f"/{t}") for t in (*TABLES, "attempts")}
    try:
        with pytest.raises(ValueError, match="root"):
            retrylake.Queue("file://")
    finally:
        for t, existed in before.items():
            if not existed and os.path.isdir(f"/{t}/_delta_log"):
                shutil.rmtree(f"/{t}")


# --------------------------------------------------------------------------------------
# Times
# --------------------------------------------------------------------------------------


def test_the_1970_bound_is_in_utc_whatever_the_zone(q):
    # HOLDS. 00:30 on 1 January 1970 at +01:00 is 1969 in UTC: refused, naming `now`;
    # 23:30 on 31 December 1969 at -01:00 is 1970 in UTC: accepted.
    plus_one = dt.timezone(dt.timedelta(hours=1))
    for now in (dt.datetime(1970, 1, 1, 0, 30, tzinfo=plus_one), "1970-01-01T00:30:00+01:00"):
        with pytest.raises(ValueError, match="now"):
            q.enqueue([{"sample_id": "a", "payload": "p"}], now=now)
    assert q.enqueue([{"sample_id": "b", "payload": "p"}], now="1969-12-31T23:30:00-01:00")[
        "enqueued"
    ] == 1


# --------------------------------------------------------------------------------------
# Ctrl-C on reads
# --------------------------------------------------------------------------------------


def test_ctrl_c_again_and_again_on_reads_leaves_the_queue_whole(tmp_path):
    # HOLDS. SIGINT at 45 random moments of status, history and a join query (each read
    # dropped where it was, the queue's lock with it): no panic, no abort, the next call
    # answers at once, and a drain afterwards places every record once.
    code = """
    import os, random, signal, sys, threading, time, retrylake
    START = "2025-11-24T14:00:00Z"
    q = retrylake.Queue(sys.argv[1])
    q.enqueue([{"sample_id": f"s{i}", "payload": "p"} for i in range(200)], now=START)
    q.run(lambda r: "ok", now=START, limit=50, breaker=False)
    rng = random.Random(3)
    interrupted = 0
    for k in range(45):
        fired = threading.Event()
        def fire():
            os.kill(os.getpid(), signal.SIGINT)
            fired.set()
        threading.Timer(rng.uniform(0.0, 0.03), fire).start()
        try:
            try:
                if k % 3 == 0:
                    q.status(now=START)
                elif k % 3 == 1:
                    q.history()
                else:
                    q.query("SELECT r.sample_id FROM retry_queue r JOIN final_results f "
                            "ON r.sample_id <> f.sample_id")
            except KeyboardInterrupt:
                interrupted += 1
            finally:
                fired.wait()
                # The signal may have been taken by the timer's thread, so the main
                # thread raises it at its next call: make that call here, inside the
                # try, not at the loop's next turn.
                time.sleep(0.002)
        except KeyboardInterrupt:
            pass  # the signal came after the read had answered
    t = time.monotonic()
    s = q.status(now=START)
    took = time.monotonic() - t
    q.drain(lambda r: "ok", now=START, breaker=False)
    n = q.query("SELECT count(*) AS n, count(DISTINCT sample_id) AS d FROM final_results")
    print("RESULT", interrupted, round(took, 2), s["waiting"], n.to_pylist(), flush=True)
    """
    rc, out = child(code, tmp_path, timeout=30)
    assert rc == 0, (rc, out[-2000:])
    assert "panicked" not in out, out[-2000:]
    interrupted, took, waiting, counts = out.split("RESULT ")[1].split(" ", 3)
    assert int(interrupted) >= 10, out[-500:]
    assert float(took) < 1.0 and int(waiting) == 150, out[-500:]
    assert "'n': 200, 'd': 200" in counts, out[-500:]


# --------------------------------------------------------------------------------------
# The Spark example
# --------------------------------------------------------------------------------------


# The Spark example's struct payloads (they went through toPandas, which turned them into
# lists) are checked against real Spark in test_spark.py, since the example enqueues
# through Arrow.
