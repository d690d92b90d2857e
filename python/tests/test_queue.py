"""The Python package against real Delta tables in temp dirs: the original job's worked
example, every way in and out, and every outcome a Python processor can give."""

import asyncio
import datetime
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import retrylake

START = "2025-11-24T14:00:00Z"


@pytest.fixture
def q(tmp_path):
    return retrylake.Queue(str(tmp_path / "data"))


def ids(table):
    return sorted(table.column("sample_id").to_pylist())


def where_is(q, sample_id):
    """The tables that hold `sample_id`."""
    found = []
    for table in ("retry_queue", "final_results", "dead_letter_queue"):
        n = q.query(f"SELECT count(*) AS n FROM {table} WHERE sample_id = '{sample_id}'")
        found += [table] * n.column("n")[0].as_py()
    return found


def test_the_original_jobs_worked_example(q):
    q.enqueue(
        [
            {"sample_id": "S-101", "payload": "Valid data A"},
            {"sample_id": "S-102", "payload": ""},
            {"sample_id": "S-103", "payload": "Valid data B"},
            {"sample_id": "S-999", "payload": "always fails"},
        ],
        now=START,
    )
    calls = []

    def api(record):
        calls.append(record.idempotency_key)
        if record.id == "S-999" or (record.id == "S-101" and record.attempt == 1):
            raise retrylake.Transient("API Timeout")
        return record.payload

    # 14:00: S-101 fails transiently, S-102 is dead-lettered without a call, S-103
    # succeeds, S-999 waits 2 minutes.
    r = q.run(api, now=START)
    assert (r["round"], r["processed"], r["succeeded"], r["retried"], r["dead_lettered"]) == (
        1,
        4,
        1,
        2,
        1,
    )
    assert r["next_due"] == "2025-11-24T14:02:00Z"
    # Nothing is due a minute later: the time lock holds.
    assert q.run(api, now="2025-11-24T14:01:00Z")["processed"] == 0
    # The rest of the schedule runs on a virtual clock: 2, 4, 8, 16, 32 minutes.
    q.drain(api, now="2025-11-24T14:02:00Z")
    assert ids(q.query("SELECT sample_id FROM final_results")) == ["S-101", "S-103"]
    dead = q.query(
        "SELECT sample_id, error_msg, retry_count FROM dead_letter_queue ORDER BY sample_id"
    ).to_pylist()
    assert dead[0]["sample_id"] == "S-102"
    assert dead[1] == {"sample_id": "S-999", "error_msg": "API Timeout", "retry_count": 5}
    assert calls.count("S-999:0") == 1 and len([c for c in calls if c.startswith("S-999")]) == 6
    finished = q.query(
        "SELECT finished_at FROM attempts WHERE sample_id = 'S-999' ORDER BY finished_at"
    ).column("finished_at").to_pylist()
    gaps = [(b - a).total_seconds() / 60 for a, b in zip(finished, finished[1:])]
    assert [round(g) for g in gaps] == [2, 4, 8, 16, 32]
    status = q.status(now="2025-11-25T00:00:00Z")
    assert (status["waiting"], status["final"], status["dead"]) == (0, 2, 2)


def test_enqueue_takes_dicts_arrow_streams_pandas_and_files(q, tmp_path):
    r = q.enqueue([{"sample_id": "d1", "payload": {"nested": [1, 2]}}, {"sample_id": 7, "payload": "x"}])
    assert r == {"read": 2, "enqueued": 2, "skipped_existing": 0, "invalid": 0}
    table = pa.table({"id": ["a1", "a2", "a3"], "body": ["x", None, "z"]})
    assert q.enqueue(table, id_field="id", payload_field="body")["enqueued"] == 3
    batches = pa.RecordBatchReader.from_batches(
        table.schema,
        (pa.record_batch({"id": [f"g{i}"], "body": ["p"]}) for i in range(3)),
    )
    assert q.enqueue(batches, id_field="id", payload_field="body")["enqueued"] == 3
    pq.write_table(pa.table({"sample_id": ["f1", "f2"], "payload": ["p", "q"]}), tmp_path / "in.parquet")
    assert q.enqueue(tmp_path / "in.parquet")["enqueued"] == 2
    # The same records again: skipped, not doubled.
    assert q.enqueue(table, id_field="id", payload_field="body")["skipped_existing"] == 3
    pd = pytest.importorskip("pandas")
    assert q.enqueue(pd.DataFrame({"sample_id": ["p1"], "payload": ["v"]}))["enqueued"] == 1
    queued = q.query("SELECT sample_id, payload FROM retry_queue ORDER BY sample_id").to_pylist()
    by_id = {r["sample_id"]: r["payload"] for r in queued}
    assert by_id["d1"] == '{"nested":[1,2]}' or by_id["d1"].replace(" ", "") == '{"nested":[1,2]}'
    assert by_id["7"] == "x" and by_id["a2"] is None


def test_bad_input_is_refused_whole_and_named(q):
    with pytest.raises(ValueError, match="dup"):
        q.enqueue([{"sample_id": "dup", "payload": "a"}, {"sample_id": "dup", "payload": "b"}])
    with pytest.raises(ValueError, match="line 2"):
        q.enqueue([{"sample_id": "ok", "payload": "a"}, {"payload": "no id"}])
    assert q.status()["waiting"] == 0, "nothing half-written"
    r = q.enqueue([{"sample_id": "ok", "payload": "a"}, {"payload": "no id"}], skip_invalid=True)
    assert (r["enqueued"], r["invalid"]) == (1, 1)
    with pytest.raises(ValueError, match="no column 'sample_id'"):
        q.enqueue(pa.table({"other": ["x"]}))
    # Refused settings leave a stream unread: the same reader enqueues afterwards.
    table = pa.table({"sample_id": ["r1"], "payload": ["p"]})
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
    with pytest.raises(ValueError, match="both 'x'"):
        q.enqueue(reader, id_field="x", payload_field="x")
    assert q.enqueue(reader)["enqueued"] == 1
    with pytest.raises(TypeError, match="record 1 is int"):
        q.enqueue([1, 2])
    with pytest.raises(TypeError):
        q.enqueue({"sample_id": "a"})
    with pytest.raises(ValueError, match="/no/such/file.jsonl"):
        q.enqueue("/no/such/file.jsonl")
    with pytest.raises(retrylake.RetrylakeError, match="no_such_table"):
        q.query("SELECT * FROM no_such_table")


def test_every_outcome_of_a_python_processor(q):
    q.enqueue([{"sample_id": s, "payload": s} for s in ("ok", "perm", "trans", "boom")], now=START)

    def proc(record):
        if record.id == "perm":
            raise retrylake.Permanent("schema mismatch")
        if record.id == "trans":
            raise retrylake.Transient("503")
        if record.id == "boom":
            raise KeyError("missing")
        if record.id == "later":
            raise retrylake.Transient("slow down", retry_after=600)
        return {"status": "stored"}

    r = q.run(proc, now=START, breaker=False)
    assert (r["succeeded"], r["retried"], r["dead_lettered"]) == (1, 2, 1)
    final = q.query("SELECT response FROM final_results").column("response").to_pylist()
    assert final == ['{"status": "stored"}']
    rows = q.query("SELECT sample_id, error_msg FROM retry_queue").to_pylist()
    errors = {row["sample_id"]: row["error_msg"] for row in rows}
    assert errors == {"boom": "KeyError: 'missing'", "trans": "503"}
    # Retry-After: ten minutes, not the two of the schedule (a Retry-After also pauses the
    # other calls, so this record has a round of its own).
    q.enqueue([{"sample_id": "later", "payload": "p"}], now=START)
    q.run(proc, now=START, breaker=False)
    lock = q.query("SELECT process_after FROM retry_queue WHERE sample_id = 'later'")
    wait = lock.column(0)[0].as_py() - datetime.datetime(2025, 11, 24, 14, tzinfo=datetime.timezone.utc)
    assert wait.total_seconds() >= 600, wait
    # Other exceptions may count as permanent instead.
    q.run(proc, now="2025-11-24T15:00:00Z", other_errors="permanent", breaker=False)
    assert where_is(q, "boom") == ["dead_letter_queue"]


def test_options_are_checked(q, tmp_path):
    with pytest.raises(TypeError, match="unknown option"):
        q.run(lambda r: None, concurrenc=3)
    with pytest.raises(ValueError, match="jitter"):
        q.run(lambda r: None, jitter="sometimes")
    with pytest.raises(ValueError):
        q.run(lambda r: None, concurrency=0)
    with pytest.raises(ValueError):
        q.run(lambda r: None, timeout=-1)
    with pytest.raises(TypeError):
        q.run(lambda r: None, timeout="30s")
    with pytest.raises(TypeError, match="callable"):
        q.run("not a function")
    with pytest.raises(ValueError, match="bad name!"):
        retrylake.Queue(str(tmp_path / "named"), worker="bad name!")
    assert not (tmp_path / "named").exists(), "nothing created for a refused name"


def test_plain_functions_run_side_by_side_and_async_ones_on_one_loop(q):
    q.enqueue([{"sample_id": f"s{i}", "payload": "p"} for i in range(24)], now=START)
    lock = threading.Lock()
    state = {"now": 0, "most": 0}

    def enter():
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])

    def leave():
        with lock:
            state["now"] -= 1

    def slow(record):
        enter()
        time.sleep(0.05)
        leave()
        return "ok"

    q.run(slow, now=START, limit=12, concurrency=4)
    assert 2 <= state["most"] <= 4, state

    state["most"] = 0
    loops = set()

    async def slow_async(record):
        loops.add(id(asyncio.get_running_loop()))
        enter()
        await asyncio.sleep(0.05)
        leave()
        return "ok"

    q.run(slow_async, now=START, concurrency=12)
    assert 2 <= state["most"] <= 12 and len(loops) == 1, state
    assert q.status(now=START)["final"] == 24


def test_a_hung_async_processor_is_cut_off_by_the_timeout(q):
    q.enqueue([{"sample_id": "h", "payload": "p"}], now=START)

    cancelled = threading.Event()

    async def hangs(record):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    r = q.run(hangs, now=START, timeout=0.2)
    assert r["retried"] == 1
    # The engine's timeout or the event loop's, whichever fires first.
    assert "timeout after" in q.query("SELECT error_msg FROM retry_queue").column(0)[0].as_py()
    assert cancelled.wait(5), "the coroutine was not cancelled"


def test_keyboard_interrupt_in_the_processor_stops_cleanly(q):
    q.enqueue([{"sample_id": f"k{i}", "payload": "p"} for i in range(10)], now=START)

    def interrupt(record):
        if record.id == "k3":
            raise KeyboardInterrupt
        return "ok"

    with pytest.raises(KeyboardInterrupt):
        q.drain(interrupt, now=START, concurrency=1)
    # The round in flight committed: every record is in exactly one table.
    for i in range(10):
        assert len(where_is(q, f"k{i}")) == 1
    q.drain(lambda r: "ok", now="2025-11-24T15:00:00Z")
    assert q.status(now="2025-11-24T16:00:00Z")["final"] == 10


def test_query_time_travel_history_and_redrive(q):
    q.enqueue([{"sample_id": "a", "payload": "p"}, {"sample_id": "b", "payload": "p"}], now=START)

    def fail_b(record):
        if record.id == "b":
            raise retrylake.Permanent("bad")
        return "ok"

    q.run(fail_b, now=START)
    assert ids(q.query("SELECT sample_id FROM retry_queue", version=1)) == ["a", "b"]
    empty = q.query("SELECT sample_id FROM retry_queue")
    assert empty.num_rows == 0 and empty.schema.names == ["sample_id"]
    jobs = [c["job"] for c in q.history(["retry_queue"])]
    assert "enqueue" in jobs and "round" in jobs
    with pytest.raises(ValueError, match="unknown table"):
        q.history(["nope"])
    assert q.redrive(ids=["b"], now="2025-11-24T15:00:00Z")["redriven"] == 1
    q.drain(lambda r: "ok", now="2025-11-24T15:00:00Z")
    assert ids(q.query("SELECT sample_id FROM final_results")) == ["a", "b"]
    with pytest.raises(retrylake.RetrylakeError, match="read-only|not allowed|DML|DELETE"):
        q.query("DELETE FROM final_results")


def test_dataframes_in_and_out(q):
    pl = pytest.importorskip("polars")
    pd = pytest.importorskip("pandas")
    assert q.enqueue(pl.DataFrame({"sample_id": ["pl1", "pl2"], "payload": ["a", "b"]}))["enqueued"] == 2
    assert q.enqueue(pd.DataFrame({"sample_id": ["pd1"], "payload": ["c"]}))["enqueued"] == 1

    class Frame(pd.DataFrame):  # a subclass, as geopandas' is
        pass

    assert q.enqueue(Frame({"sample_id": ["pd2"], "payload": ["d"]}))["enqueued"] == 1
    q.drain(lambda r: r.payload.upper(), now=START)
    result = q.query("SELECT sample_id, response FROM final_results ORDER BY sample_id")
    frame = pl.from_arrow(result)
    assert frame.to_dicts() == [
        {"sample_id": "pd1", "response": "C"},
        {"sample_id": "pd2", "response": "D"},
        {"sample_id": "pl1", "response": "A"},
        {"sample_id": "pl2", "response": "B"},
    ]
    assert list(result.to_pandas()["sample_id"]) == ["pd1", "pd2", "pl1", "pl2"]


def test_a_hung_plain_function_costs_its_record_a_retry_not_the_round(q):
    q.enqueue([{"sample_id": "hang", "payload": "p"}, {"sample_id": "fine", "payload": "p"}], now=START)
    release = threading.Event()

    def hangs(record):
        if record.id == "hang":
            release.wait(30)
        return "ok"

    try:
        r = q.run(hangs, now=START, timeout=0.2, breaker=False)
    finally:
        release.set()
    assert (r["succeeded"], r["retried"]) == (1, 1)
    assert where_is(q, "hang") == ["retry_queue"]


def test_a_processor_calling_its_own_queue_fails_that_call_not_the_process(q, tmp_path):
    q.enqueue([{"sample_id": "r", "payload": "p"}], now=START)

    def reentrant(record):
        return str(q.status())

    # Without the check, the call would wait for the rounds that wait for it: a deadlock.
    r = q.run(reentrant, now=START, breaker=False)
    assert r["retried"] == 1
    error = q.query("SELECT error_msg FROM retry_queue").column(0)[0].as_py()
    assert error.startswith("RuntimeError: this Queue is running rounds"), error
    # Another Queue on the same tables is the way.
    other = retrylake.Queue(str(tmp_path / "data"), worker="reader")
    q.run(lambda record: str(other.status()["waiting"]), now="2025-11-24T15:00:00Z")
    assert q.query("SELECT response FROM final_results").column(0).to_pylist() == ["1"]


def test_a_plain_function_returning_an_awaitable_is_awaited(q):
    q.enqueue([{"sample_id": "aw", "payload": "p"}], now=START)

    async def deliver(record):
        await asyncio.sleep(0)
        return "delivered " + record.id

    q.run(lambda record: deliver(record), now=START)
    assert q.query("SELECT response FROM final_results").column(0).to_pylist() == ["delivered aw"]
