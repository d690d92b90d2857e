"""A hostile review of the Python package: what a processor, an input or a caller can do
to break the promise (no record lost or doubled; no panic, segfault or hang; bad input is
a clear Python exception and nothing half-written).

Tests marked ``# FAILED BEFORE THE FIX`` showed a defect the review found: each failed
against the package as it was and passes since its fix. The others (``# HOLDS``) cover a
real risk the package already withstood. Everything that could poison the rest of the session (the shared asyncio
loop, the blocking pool, the interpreter's exit) runs in a child process.
"""

import datetime as dt
import sys
import threading
import time

import pyarrow as pa
import pytest

import retrylake
from helpers import child

START = "2025-11-24T14:00:00Z"


@pytest.fixture
def q(tmp_path):
    return retrylake.Queue(str(tmp_path / "data"))


def where_is(q, sample_id):
    """The tables that hold `sample_id`."""
    found = []
    for table in ("retry_queue", "final_results", "dead_letter_queue"):
        n = q.query(
            f"SELECT count(*) AS n FROM {table} WHERE sample_id = '{sample_id}'"
        ).column("n")[0].as_py()
        found += [table] * n
    return found




# --------------------------------------------------------------------------------------
# What a processor returns
# --------------------------------------------------------------------------------------


class _StrRaises:
    def __str__(self):
        raise RuntimeError("str boom")

    __repr__ = __str__


def _circular():
    c = []
    c.append(c)
    return c


@pytest.mark.parametrize(
    "response",
    [
        pytest.param("lone surrogate \ud800", id="surrogate-str"),
        pytest.param(_StrRaises(), id="str-raises"),
        pytest.param({(1, 2): "tuple key"}, id="tuple-key"),
        pytest.param(_circular(), id="circular"),
    ],
)
def test_a_processor_that_returned_is_a_success_whatever_it_returned(q, response):
    # FAILED BEFORE THE FIX. The processor returned, so its side effect happened: the record must go
    # to final_results (with a lossy/placeholder response), not be retried and delivered
    # again. Now `_text(response)` (`_Caller.__call__`, retrylake/__init__.py:168, outside the try) or the
    # Rust extract to String (src/lib.rs:177) raises, and PyProcessor turns that into a
    # Transient ("the processor's answer: ..."), so the record is called again.
    q.enqueue([{"sample_id": "a", "payload": "p"}], now=START)
    calls = []

    def proc(record):
        calls.append(record.idempotency_key)
        return response

    r = q.run(proc, now=START, breaker=False)
    assert r["succeeded"] == 1, q.query("SELECT error_msg FROM retry_queue").to_pylist()
    assert where_is(q, "a") == ["final_results"]


def test_a_sync_function_returning_a_coroutine_is_not_a_silent_success(q):
    # HOLDS now; FAILED at the start of this review (HEAD 67f7217): a plain function
    # returning a coroutine (a lambda, a decorator around an `async def`) was not seen as
    # async (`inspect.iscoroutinefunction` only), the coroutine never ran and the record
    # went to final_results undelivered. The working tree's `inspect.isawaitable(response)`
    # fixes it; this keeps it fixed.
    delivered = []

    async def send(record):
        delivered.append(record.id)
        return "sent"

    q.enqueue([{"sample_id": "a", "payload": "p"}], now=START)
    q.run(lambda record: send(record), now=START, breaker=False)
    assert delivered == ["a"], "in final_results without ever being delivered"


# --------------------------------------------------------------------------------------
# What a processor raises
# --------------------------------------------------------------------------------------


class _PermanentStrRaises(retrylake.Permanent):
    def __str__(self):
        raise RuntimeError("str boom")


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(_PermanentStrRaises("x"), id="str-raises"),
        pytest.param(retrylake.Permanent("bad \ud800 surrogate"), id="surrogate"),
    ],
)
def test_a_permanent_failure_stays_permanent_whatever_its_message(q, error):
    # FAILED BEFORE THE FIX. `str(e)` inside `except Permanent` (retrylake/__init__.py:160) raises, or
    # the message cannot be extracted as a Rust String (src/lib.rs:177): the Permanent
    # becomes a Transient and the record is retried (delivered again) instead of
    # dead-lettered. Expected: dead_letter_queue, with a lossy message.
    q.enqueue([{"sample_id": "a", "payload": "p"}], now=START)

    def proc(record):
        raise error

    r = q.run(proc, now=START, breaker=False)
    assert r["dead_lettered"] == 1
    assert where_is(q, "a") == ["dead_letter_queue"]


@pytest.mark.parametrize("retry_after", [float("inf"), 1e30], ids=["inf", "1e30"])
def test_a_huge_retry_after_is_capped_not_ignored(q, retry_after):
    # FAILED BEFORE THE FIX. Transient(retry_after=inf or 1e30): the downstream asked to be left alone
    # for a very long time; the time lock should be capped at max_retry_after (1 day by
    # default), as retry_after=10**12 is. Now PyProcessor does
    # `Duration::try_from_secs_f64(s).ok()` (src/lib.rs:188), which drops it, and the
    # record comes back after the 2-minute schedule: the downstream is hammered.
    q.enqueue([{"sample_id": "a", "payload": "p"}], now=START)

    def proc(record):
        raise retrylake.Transient("slow down", retry_after=retry_after)

    q.run(proc, now=START, breaker=False)
    after = q.query("SELECT process_after FROM retry_queue").column(0)[0].as_py()
    start = dt.datetime(2025, 11, 24, 14, tzinfo=dt.timezone.utc)
    assert after - start >= dt.timedelta(days=1), after


@pytest.mark.parametrize("retry_after", [-5, float("nan"), dt.timedelta(seconds=-1)])
def test_a_retry_after_that_is_no_duration_is_refused(retry_after):
    # FAILED BEFORE THE FIX. Transient(retry_after=-5 / NaN) is accepted (retrylake/__init__.py:57,
    # `_seconds` only checks the type) and later silently ignored in src/lib.rs:188. Expected: a
    # ValueError naming retry_after, as every duration option gives.
    with pytest.raises(ValueError, match="retry_after"):
        retrylake.Transient("x", retry_after=retry_after)


def test_system_exit_in_a_processor_is_not_swallowed(q):
    # FAILED BEFORE THE FIX (a design call, but a surprising one). `sys.exit()` in a plain processor
    # is a BaseException the wrapper does not catch (retrylake/__init__.py:166 catches
    # Exception and KeyboardInterrupt only); PyProcessor (src/lib.rs:193) turns it into a
    # Transient and the run carries on. Expected: like KeyboardInterrupt, the run stops
    # after the round and SystemExit propagates.
    q.enqueue([{"sample_id": "a", "payload": "p"}], now=START)

    def proc(record):
        sys.exit(3)

    with pytest.raises(SystemExit):
        q.run(proc, now=START, breaker=False)


def test_an_async_processor_raising_keyboard_interrupt_does_not_kill_async_for_good(tmp_path):
    # FAILED BEFORE THE FIX. KeyboardInterrupt (or SystemExit) raised by an `async def` processor
    # escapes asyncio's task machinery and stops the package's one event loop
    # (retrylake/__init__.py:104-120, `loop.run_forever` on a daemon thread, never
    # restarted). From then on every async processor in the process times out: here a
    # processor that just returns "ok" can never succeed again; the blocked
    # `future.result()` threads leak too. The KeyboardInterrupt also does not stop the run
    # as it does for a plain function (`interrupted` is never set).
    code = """
    import sys, retrylake
    q = retrylake.Queue(sys.argv[1])
    START = "2025-11-24T14:00:00Z"
    q.enqueue([{"sample_id": "a", "payload": "p"}], now=START)

    async def bad(record):
        raise KeyboardInterrupt

    try:
        q.run(bad, now=START, timeout=0.5, lease=1, breaker=False)
        print("RUN-NOT-STOPPED")
    except KeyboardInterrupt:
        pass
    q.enqueue([{"sample_id": "b", "payload": "p"}], now=START)

    async def good(record):
        return "ok"

    r = q.run(good, now="2025-11-24T15:00:00Z", timeout=0.5, lease=1, breaker=False)
    print("SUCCEEDED", r["succeeded"])
    """
    rc, out = child(code, tmp_path)
    assert "SUCCEEDED 2" in out, out
    assert "RUN-NOT-STOPPED" not in out, out


def test_an_async_processor_raising_system_exit_does_not_kill_async_for_good(tmp_path):
    # FAILED BEFORE THE FIX. Same root cause as above (SystemExit stops the shared event loop).
    code = """
    import sys, retrylake
    q = retrylake.Queue(sys.argv[1])
    START = "2025-11-24T14:00:00Z"
    q.enqueue([{"sample_id": "a", "payload": "p"}], now=START)

    async def bad(record):
        raise SystemExit(2)

    try:
        q.run(bad, now=START, timeout=0.5, lease=1, breaker=False)
    except BaseException:
        pass

    async def good(record):
        return "ok"

    r = q.run(good, now="2025-11-24T15:00:00Z", timeout=0.5, lease=1, breaker=False)
    print("SUCCEEDED", r["succeeded"])
    """
    rc, out = child(code, tmp_path)
    assert "SUCCEEDED 1" in out, out


# --------------------------------------------------------------------------------------
# Calls that outlive their timeout
# --------------------------------------------------------------------------------------


def test_an_attempt_does_not_start_while_the_previous_call_of_that_record_runs(q):
    # FAILED BEFORE THE FIX. A plain processor past its timeout keeps running on a blocking thread
    # (src/lib.rs:174, spawn_blocking cannot be cancelled); drain on a virtual clock then
    # calls the same record again at once, with a new idempotency key (`id:1`), while the
    # first call (`id:0`) is still delivering it: two deliveries in flight that a
    # downstream cannot tell apart as duplicates. Also drain() returns while the user's
    # function still runs. Expected: at most one call of a record at a time (or drain
    # waits for its calls).
    q.enqueue([{"sample_id": "a", "payload": "p"}], now=START)
    lock = threading.Lock()
    state = {"now": 0, "most": 0}

    def slow(record):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.6)
        with lock:
            state["now"] -= 1
        return "ok"

    q.drain(slow, now=START, timeout=0.1, lease=1, max_retries=3, breaker=False)
    time.sleep(0.7)
    # A plain function cannot be stopped from outside, so drain may return while the call
    # it gave up on still runs (the README says so); but no second call of the record
    # starts while it does.
    assert state["most"] == 1, state


def test_hung_processors_do_not_stall_the_queues_own_storage(tmp_path):
    # FAILED BEFORE THE FIX. Every timed-out call of a hung processor keeps one thread of tokio's
    # blocking pool (512 threads; src/lib.rs:174). The local object store does its file
    # I/O on that same pool, so once it is full the round's commit waits for the hung
    # calls: here a round with timeout 0.2 s takes until the processors are released
    # (4 s here), i.e. forever for a processor that never returns. Expected: the round
    # commits shortly after its timeout.
    code = """
    import sys, threading, time, retrylake
    q = retrylake.Queue(sys.argv[1])
    START = "2025-11-24T14:00:00Z"
    release = threading.Event()
    threading.Timer(4, release.set).start()
    q.enqueue([{"sample_id": f"h{i}", "payload": "p"} for i in range(520)], now=START)
    t = time.time()
    q.run(lambda r: release.wait(), now=START, timeout=0.2, lease=1,
          concurrency=520, breaker=False)
    print("ROUND-TOOK", round(time.time() - t, 1))
    release.set()
    """
    rc, out = child(code, tmp_path, timeout=20)
    took = [float(line.split()[1]) for line in out.splitlines() if line.startswith("ROUND-TOOK")]
    assert took and took[0] < 2.5, out[-2000:]


def test_exit_while_timed_out_calls_finish_does_not_abort(tmp_path):
    # FAILED BEFORE THE FIX (a race: in 2 of 3 runs, so four tries). A timed-out call still
    # running when the interpreter shuts down ends in `Python::attach` on a tokio thread
    # (src/lib.rs:175) during finalization: "Fatal Python error: PyGILState_Release:
    # thread state ... must be current when releasing", SIGABRT, exit code 134. Expected:
    # a clean exit.
    code = """
    import sys, threading, retrylake
    q = retrylake.Queue(sys.argv[1] + sys.argv[2])
    START = "2025-11-24T14:00:00Z"
    release = threading.Event()
    q.enqueue([{"sample_id": f"a{i}", "payload": "p"} for i in range(100)], now=START)
    q.run(lambda r: release.wait(), now=START, timeout=0.2, lease=1,
          breaker=False, concurrency=100)
    threading.Timer(0.3, release.set).start()
    """
    for attempt in range(4):
        rc, out = child(code, tmp_path, args=(str(attempt),))
        assert rc == 0, (attempt, rc, out[-1500:])


# --------------------------------------------------------------------------------------
# Re-entrancy and sharing one Queue object
# --------------------------------------------------------------------------------------


def test_a_processor_calling_back_into_its_queue_fails_fast(q):
    # HOLDS now (771ad55); FAILED at the start of this review: the rounds hold the queue's
    # async mutex for the whole run, and a processor calling q.status() on its own queue
    # waited for it until its timeout, then the record was retried and the blocked call
    # ran later behind the user's back. Now: RuntimeError at once.
    q.enqueue([{"sample_id": "a", "payload": "p"}], now=START)
    seen = []

    def proc(record):
        t = time.monotonic()
        try:
            q.status()
            seen.append("answered")
        except Exception as e:  # noqa: BLE001
            seen.append(type(e).__name__)
        seen.append(time.monotonic() - t)
        return "ok"

    q.run(proc, now=START, timeout=1.5, lease=3, breaker=False)
    time.sleep(0.2)
    assert seen and seen[-1] < 1.0, seen
    assert where_is(q, "a") == ["final_results"]


def test_worker_name_does_not_block_while_a_worker_runs(q):
    # HOLDS now (771ad55); FAILED at the start of this review: `worker_name` (and status,
    # enqueue, query...) on a Queue whose `worker()` ran in another thread waited for the
    # worker to stop, i.e. forever. Here the worker stops after ~2.5 s; the getter must
    # answer at once.
    stop_at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2.5)
    q.enqueue([{"sample_id": "stop", "payload": "p"}], now=stop_at)

    def proc(record):
        raise KeyboardInterrupt  # stops the worker

    def work():
        try:
            q.worker(proc, poll=0.2)
        except KeyboardInterrupt:
            pass

    th = threading.Thread(target=work)
    th.start()
    time.sleep(0.5)
    t = time.monotonic()
    name = q.worker_name
    took = time.monotonic() - t
    th.join(10)
    assert name == "main"
    assert took < 0.5, f"worker_name blocked {took:.1f}s behind the running worker"


def test_two_queue_objects_with_the_default_worker_name_do_not_double_calls(tmp_path):
    # FAILED BEFORE THE FIX (documented: "concurrent runners need distinct names", but it is the
    # default). Two Queue objects on one root, both worker "main", draining at once: each
    # takes the other's claimed records back as a crashed round of its own worker, and
    # records are delivered two to four times. Expected: each record called once, or the
    # second runner refused with a clear error.
    root = str(tmp_path / "data")
    queues = [retrylake.Queue(root), retrylake.Queue(root)]
    queues[0].enqueue([{"sample_id": f"s{i}", "payload": "p"} for i in range(40)], now=START)
    calls = {}
    lock = threading.Lock()

    def proc(record):
        with lock:
            calls[record.id] = calls.get(record.id, 0) + 1
        time.sleep(0.01)
        return "ok"

    errors = []

    def run(queue):
        try:
            queue.drain(proc, now=START, limit=5, concurrency=4, breaker=False, maintenance=False)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(queue,)) for queue in queues]
    [t.start() for t in threads]
    [t.join() for t in threads]
    doubled = {k: v for k, v in calls.items() if v > 1}
    assert not doubled, f"called more than once: {doubled}"


def test_two_workers_with_distinct_names_never_double_a_call(tmp_path):
    # HOLDS. Two Queue objects on one root, workers w1 and w2, draining at once.
    root = str(tmp_path / "data")
    queues = [retrylake.Queue(root, worker="w1"), retrylake.Queue(root, worker="w2")]
    queues[0].enqueue([{"sample_id": f"s{i}", "payload": "p"} for i in range(40)], now=START)
    calls = {}
    lock = threading.Lock()

    def proc(record):
        with lock:
            calls[record.id] = calls.get(record.id, 0) + 1
        time.sleep(0.01)
        return "ok"

    threads = [
        threading.Thread(
            target=lambda qq=qq: qq.drain(
                proc, now=START, limit=5, concurrency=4, breaker=False, maintenance=False
            )
        )
        for qq in queues
    ]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(calls) == 40 and max(calls.values()) == 1
    n = queues[0].query("SELECT count(*) n, count(DISTINCT sample_id) d FROM final_results")
    assert n.to_pylist() == [{"n": 40, "d": 40}]


def test_two_queue_objects_enqueueing_the_same_ids_at_once_do_not_double(tmp_path):
    # HOLDS.
    root = str(tmp_path / "data")
    queues = [retrylake.Queue(root), retrylake.Queue(root)]
    records = [{"sample_id": f"s{i}", "payload": "p"} for i in range(40)]
    threads = [
        threading.Thread(target=lambda qq=qq: qq.enqueue(records, now=START)) for qq in queues
    ]
    [t.start() for t in threads]
    [t.join() for t in threads]
    n = queues[0].query("SELECT count(*) n, count(DISTINCT sample_id) d FROM retry_queue")
    assert n.to_pylist() == [{"n": 40, "d": 40}]


# --------------------------------------------------------------------------------------
# Arrow input
# --------------------------------------------------------------------------------------

SCHEMA = pa.schema([("sample_id", pa.string()), ("payload", pa.string())])


def test_an_arrow_stream_whose_batches_change_type_is_a_value_error_not_a_panic(q):
    # FAILED BEFORE THE FIX. pyarrow's RecordBatchReader.from_batches over a generator does not check
    # the batches against the schema; a batch of int64 columns in a stream declared
    # string is imported by arrow-rs as a StringArray, which panics ("StringArray data
    # should contain 2 buffers only") in parse_batches (src/lib.rs:394 reads the stream
    # unchecked; src/input.rs:575). The panic surfaces as pyo3's PanicException, a
    # BaseException that `except Exception` does not catch. Expected: ValueError, nothing
    # written.
    def batches():
        yield pa.record_batch({"sample_id": ["g1"], "payload": ["x"]})
        yield pa.record_batch({"sample_id": [1], "payload": [2]})

    with pytest.raises(ValueError):
        q.enqueue(pa.RecordBatchReader.from_batches(SCHEMA, batches()), now=START)
    assert q.status(now=START)["waiting"] == 0


def test_a_binary_payload_that_is_not_utf8_is_not_silently_nulled(q):
    # FAILED BEFORE THE FIX. parse_batches casts the payload column with arrow's *safe* cast
    # (src/input.rs:575-576, `cast(column, &DataType::Utf8)`), which turns a value it cannot
    # convert into null: the payload b"\xff" is stored as None, the data lost (and the
    # record later dead-lettered as empty). Expected: ValueError naming the row, or the
    # bytes kept.
    table = pa.table({"sample_id": ["a", "b"], "payload": pa.array([b"\xff", b"ok"])})
    try:
        q.enqueue(table, now=START)
    except ValueError:
        return
    payload = q.query("SELECT payload FROM retry_queue WHERE sample_id = 'a'").column(0)[0].as_py()
    assert payload is not None, "the payload b'\\xff' became null"


def test_a_list_payload_from_arrow_is_stored_as_json_like_from_dicts(q):
    # FAILED BEFORE THE FIX. The docs: "A payload that is not a string is stored as its JSON text".
    # From a list of dicts ["x", "y"] is stored as '["x", "y"]'; from an Arrow table the
    # same list goes through arrow's cast to Utf8 (src/input.rs:576) and is stored as
    # "[x, y]", which is not JSON (and a struct column is refused outright).
    q.enqueue([{"sample_id": "d", "payload": ["x", "y"]}], now=START)
    q.enqueue(pa.table({"sample_id": ["a"], "payload": pa.array([["x", "y"]])}), now=START)
    import json

    rows = {
        r["sample_id"]: r["payload"]
        for r in q.query("SELECT sample_id, payload FROM retry_queue").to_pylist()
    }

    assert json.loads(rows["d"]) == ["x", "y"]
    assert json.loads(rows["a"]) == ["x", "y"], rows["a"]


def test_odd_arrow_producers_give_clear_errors(q):
    # HOLDS. __arrow_c_stream__ returning a non-capsule, a capsule of the wrong kind, or
    # raising; a stream that raises mid-way: an exception, nothing written.
    class Garbage:
        def __arrow_c_stream__(self, requested_schema=None):
            return 42

    class WrongCapsule:
        def __arrow_c_stream__(self, requested_schema=None):
            return SCHEMA.__arrow_c_schema__()

    class Raises:
        def __arrow_c_stream__(self, requested_schema=None):
            raise KeyError("nope")

    def dies():
        yield pa.record_batch({"sample_id": ["g1"], "payload": ["x"]})
        raise RuntimeError("generator died")

    with pytest.raises(ValueError, match="capsule"):
        q.enqueue(Garbage())
    with pytest.raises(ValueError):
        q.enqueue(WrongCapsule())
    with pytest.raises(KeyError):
        q.enqueue(Raises())
    with pytest.raises(ValueError, match="generator died"):
        q.enqueue(pa.RecordBatchReader.from_batches(SCHEMA, dies()))
    with pytest.raises(ValueError, match="missing id"):
        q.enqueue(pa.table({"sample_id": ["a", None], "payload": ["x", "y"]}))
    assert q.status()["waiting"] == 0


def test_odd_arrow_types_that_work(q):
    # HOLDS. large_string, string_view, dictionary payloads, integer ids up to u64::MAX,
    # empty streams.
    r = q.enqueue(
        pa.table(
            {
                "sample_id": pa.array(["a", "b"], pa.large_string()),
                "payload": pa.array(["x", "y"], pa.string_view()),
            }
        ),
        now=START,
    )
    assert r["enqueued"] == 2
    r = q.enqueue(
        pa.table(
            {
                "sample_id": pa.array([2**64 - 1], pa.uint64()),
                "payload": pa.array(["x"]).dictionary_encode(),
            }
        ),
        now=START,
    )
    assert r["enqueued"] == 1
    assert q.enqueue(pa.RecordBatchReader.from_batches(SCHEMA, []))["read"] == 0
    assert where_is(q, str(2**64 - 1)) == ["retry_queue"]


# --------------------------------------------------------------------------------------
# A list of dicts
# --------------------------------------------------------------------------------------


def test_big_integer_ids_are_not_rounded_into_each_other(q):
    # FAILED BEFORE THE FIX. An int id beyond u64 goes through json.dumps as digits, and serde_json
    # (no arbitrary_precision) reads it as a float: 10**20 is stored as the id "1e+20",
    # and 10**20 + 1 is the same id. Enqueued one after the other, the
    # second is "skipped_existing": a record lost. (src/input.rs:407 `n.to_string()` of a
    # float Number; retrylake/__init__.py:388 json.dumps.) Expected: the id's exact
    # digits, or a ValueError.
    q.enqueue([{"sample_id": 10**20, "payload": "first"}], now=START)
    r = q.enqueue([{"sample_id": 10**20 + 1, "payload": "second"}], now=START)
    assert r["enqueued"] == 1, r
    assert where_is(q, str(10**20)) == ["retry_queue"]


@pytest.mark.parametrize(
    "record",
    [
        pytest.param({"sample_id": b"abc", "payload": "p"}, id="bytes-id"),
        pytest.param({"sample_id": "a", "payload": b"hello"}, id="bytes-payload"),
        pytest.param({"sample_id": "a", "payload": {1, 2}}, id="set-payload"),
    ],
)
def test_values_without_json_text_are_refused_not_stored_as_repr(q, record):
    # FAILED BEFORE THE FIX. `json.dumps(record, default=str)` (`_json_line`, retrylake/__init__.py:388) turns a
    # bytes id into the id "b'abc'", a bytes payload into the text "b'hello'", a set into
    # "{1, 2}": silently corrupted data. Expected: TypeError/ValueError naming the record
    # (or, for bytes, the decoded text).
    try:
        q.enqueue([record], now=START)
    except (TypeError, ValueError):
        return
    row = q.query("SELECT sample_id, payload FROM retry_queue").to_pylist()[0]
    assert "b'" not in row["sample_id"] and "b'" not in (row["payload"] or ""), row
    assert row["payload"] != "{1, 2}", row


def test_non_json_numbers_and_bad_ids_are_refused_whole(q):
    # HOLDS. NaN anywhere, ids that are booleans, blank, too long: ValueError, nothing
    # written.
    for records in (
        [{"sample_id": "ok", "payload": "p"}, {"sample_id": "a", "payload": {"x": float("nan")}}],
        [{"sample_id": "ok", "payload": "p"}, {"sample_id": True, "payload": "p"}],
        [{"sample_id": "ok", "payload": "p"}, {"sample_id": "x" * 5000, "payload": "p"}],
        [{"sample_id": "ok", "payload": "p"}, {"sample_id": " ", "payload": "p"}],
    ):
        with pytest.raises(ValueError):
            q.enqueue(records, now=START)
    assert q.status(now=START)["waiting"] == 0


# --------------------------------------------------------------------------------------
# Options, times and other arguments
# --------------------------------------------------------------------------------------


def test_timeout_zero_is_refused(q):
    # FAILED BEFORE THE FIX. timeout=0 passes `seconds()` (src/lib.rs:72) and RoundConfig::check (src/round.rs:103):
    # every async call times out before it starts ("timeout after 0s"), each record is
    # charged an attempt per round and ends dead-lettered without ever being delivered.
    # Expected: ValueError naming timeout.
    with pytest.raises(ValueError, match="timeout"):
        q.run(lambda r: "ok", now=START, timeout=0)


@pytest.mark.parametrize(
    "option, value",
    [("limit", -1), ("limit", 2**64), ("seed", -1), ("max_retries", 2**40), ("concurrency", -3)],
)
def test_integer_options_out_of_range_name_the_option(q, option, value):
    # HOLDS (barely). The integers go unchecked from retrylake/__init__.py:377 to pyo3's
    # extraction into usize/u32/u64 (src/lib.rs:415 ff.); the OverflowError's message is
    # only "can't convert negative int to unsigned", but pyo3 adds the note "while
    # processing 'limit'" (shown in the traceback; pytest's match reads notes too).
    with pytest.raises((ValueError, OverflowError), match=option):
        q.run(lambda r: "ok", now=START, **{option: value})


def test_redrive_ids_given_as_one_string_are_not_split_into_characters(q):
    # FAILED BEFORE THE FIX. `list(ids)` (`Queue.redrive`, retrylake/__init__.py:332) turns ids="ab" into ["a", "b"]:
    # the dead letters "a" and "b" are redriven, "ab" is not. Expected: ["ab"] or a
    # TypeError.
    q.enqueue([{"sample_id": s, "payload": "p"} for s in ("a", "b", "ab")], now=START)

    def proc(record):
        raise retrylake.Permanent("bad")

    q.run(proc, now=START)
    try:
        q.redrive(ids="ab", now=START)
    except TypeError:
        return
    assert where_is(q, "a") == ["dead_letter_queue"], "redrove 'a' though asked for 'ab'"
    assert where_is(q, "ab") == ["retry_queue"]


def test_history_of_one_table_given_as_a_string(q):
    # FAILED BEFORE THE FIX (minor). `list(tables)` (`Queue.history`, retrylake/__init__.py:318) splits
    # "retry_queue" into characters: "unknown table 'r'". Expected: that table's history,
    # or a TypeError saying a list is wanted.
    try:
        commits = q.history("retry_queue")
    except TypeError:
        return
    assert {c["table"] for c in commits} == {"retry_queue"}


def test_a_now_whose_schedule_passes_year_9999_is_refused_or_readable(q):
    # FAILED BEFORE THE FIX. now=datetime.max is accepted; the backoff puts process_after and the
    # journal's times in year 10000, which the package's own query() then cannot hand to
    # Python (`to_pylist()`: OverflowError: date value out of range). Expected: a
    # ValueError up front for a now whose schedule leaves the datetime range, or times
    # clamped.
    far = dt.datetime.max
    try:
        q.enqueue([{"sample_id": "a", "payload": "p"}], now=far)

        def proc(record):
            raise retrylake.Transient("t")

        q.drain(proc, now=far, breaker=False)
    except ValueError:
        return
    q.query("SELECT * FROM attempts").to_pylist()
    q.query("SELECT * FROM dead_letter_queue").to_pylist()


def test_duration_options_that_are_no_duration_are_refused(q):
    # HOLDS. NaN, inf, negative durations and too short/long leases: ValueError naming
    # the option.
    for option, value in [
        ("base_backoff", float("nan")),
        ("poll", float("inf")),
        ("max_retry_after", float("inf")),
        ("timeout", dt.timedelta(days=-1)),
        ("lease", 0.001),
        ("lease", 1e20),
        ("multiplier", float("nan")),
        ("breaker_failure_rate", float("nan")),
    ]:
        with pytest.raises(ValueError):
            q.run(lambda r: "ok", now=START, **{option: value})
    with pytest.raises(ValueError, match="now"):
        q.run(lambda r: "ok", now="yesterday")
    # A huge concurrency is just "all at once".
    q.enqueue([{"sample_id": "a", "payload": "p"}], now=START)
    assert q.run(lambda r: "ok", now=START, concurrency=2**64 - 1)["succeeded"] == 1


# --------------------------------------------------------------------------------------
# Query
# --------------------------------------------------------------------------------------


def test_sql_that_writes_or_reads_files_is_refused(q, tmp_path):
    # HOLDS.
    target = tmp_path / "out.csv"
    for sql in (
        f"COPY (SELECT 1) TO '{target}'",
        "CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '/etc/passwd'",
        "INSERT INTO retry_queue SELECT * FROM retry_queue",
        "DELETE FROM retry_queue",
        "DROP TABLE retry_queue",
        "CREATE VIEW v AS SELECT 1",
        "SET datafusion.execution.batch_size = 1",
        "SELECT * FROM '/etc/passwd'",
        "SELECT 1; SELECT 2",
    ):
        with pytest.raises(retrylake.RetrylakeError):
            q.query(sql)
    assert not target.exists()


def test_a_query_result_is_read_once_and_an_empty_one_keeps_its_schema(q):
    # HOLDS.
    stream = q._native.query("SELECT 1 AS x", None, None)
    assert pa.RecordBatchReader.from_stream(stream).read_all().num_rows == 1
    with pytest.raises(RuntimeError, match="already read"):
        pa.RecordBatchReader.from_stream(stream)
    empty = q.query("SELECT sample_id, retry_count FROM retry_queue WHERE false")
    assert empty.num_rows == 0 and empty.column_names == ["sample_id", "retry_count"]


def test_a_long_query_can_be_interrupted_with_ctrl_c(tmp_path):
    # FAILED BEFORE THE FIX. query() (like status, enqueue, history) runs in `block`
    # (src/lib.rs:149), which releases the GIL and waits without ever checking for
    # signals: Ctrl-C during a long query does nothing until the query ends (here: far
    # beyond the test's patience). Expected: KeyboardInterrupt within a second or two,
    # as rounds do (`drive` checks every 100 ms).
    code = """
    import os, signal, sys, threading, time, retrylake
    q = retrylake.Queue(sys.argv[1])
    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    t = time.time()
    try:
        q.query("SELECT count(*) FROM generate_series(1, 100000000000)")
        print("FINISHED")
    except KeyboardInterrupt:
        print("INTERRUPTED", round(time.time() - t, 1))
    """
    rc, out = child(code, tmp_path, timeout=4)
    assert "INTERRUPTED" in out, f"Ctrl-C ignored for 4 s (rc={rc}): {out[-500:]}"
