"""A Python function as a batch processor (``call_batch=N``): one call for many records,
each record placed by its own result; and the guarantees hold with batches (kill -9)."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import retrylake

START = "2025-11-24T14:00:00Z"
LATER = "2025-11-25T14:00:00Z"


def queue_with(tmp_path, ids):
    q = retrylake.Queue(str(tmp_path / "data"))
    q.enqueue([{"sample_id": i, "payload": {"n": n}} for n, i in enumerate(ids)], now=START)
    return q


def placed(q):
    """Each record's table (and error), by id."""
    where = {}
    for table, column in (
        ("final_results", "response"),
        ("retry_queue", "error_msg"),
        ("dead_letter_queue", "error_msg"),
    ):
        rows = q.query(f"SELECT sample_id, {column} AS x FROM {table}").to_pylist()
        for row in rows:
            assert row["sample_id"] not in where, f"{row['sample_id']} in two tables"
            where[row["sample_id"]] = (table, row["x"])
    return where


def test_each_record_of_a_batch_takes_its_own_result(tmp_path):
    ids = [f"r{i:02}" for i in range(10)]
    q = queue_with(tmp_path, ids)
    batches = []

    def send(records):
        batches.append([r.id for r in records])
        results = []
        for r in records:
            n = int(r.id[1:])
            if n % 5 == 1:
                results.append(retrylake.Transient("busy", retry_after=600))
            elif n % 5 == 2:
                results.append(retrylake.Permanent("no such lab"))
            elif n % 5 == 3:
                results.append(ValueError("odd value"))
            else:
                results.append({"stored": r.id, "key": r.idempotency_key, "attempt": r.attempt})
        return results

    report = q.run(send, now=START, call_batch=4, concurrency=1, breaker=False)
    assert report["processed"] == 10
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(sum(batches, [])) == ids
    where = placed(q)
    assert where["r00"] == ("final_results", '{"stored": "r00", "key": "r00:0", "attempt": 1}')
    assert where["r01"] == ("retry_queue", "busy")
    assert where["r02"] == ("dead_letter_queue", "no such lab")
    assert where["r03"] == ("retry_queue", "ValueError: odd value")
    lock = q.query("SELECT process_after FROM retry_queue WHERE sample_id = 'r01'")
    assert lock.column(0)[0].as_py().isoformat() >= "2025-11-24T14:10:00"


def test_a_dict_by_id_none_and_a_short_list(tmp_path):
    ids = ["a", "b", "c"]
    for result, expect in [
        (lambda records: {"a": "A", "c": retrylake.Permanent("bad c")}, {
            "a": ("final_results", "A"),
            "b": ("retry_queue", "the batch processor gave no result for this record"),
            "c": ("dead_letter_queue", "bad c"),
        }),
        (lambda records: None, {i: ("final_results", None) for i in ids}),
        (lambda records: ["only one"], {
            "a": ("final_results", "only one"),
            "b": ("retry_queue", "the batch processor gave no result for this record"),
            "c": ("retry_queue", "the batch processor gave no result for this record"),
        }),
        (lambda records: "not a list", {
            i: ("retry_queue", "the batch processor returned str, expected a list with one "
                "result per record (or a dict by id)") for i in ids
        }),
    ]:
        q = queue_with(tmp_path / str(id(result)), ids)
        q.run(result, now=START, call_batch=10, breaker=False)
        assert placed(q) == expect


def test_what_the_batch_raises_applies_to_every_record(tmp_path):
    for raised, table, error in [
        (retrylake.Transient("down"), "retry_queue", "down"),
        (retrylake.Permanent("schema changed"), "dead_letter_queue", "schema changed"),
        (KeyError("x"), "retry_queue", "KeyError: 'x'"),
    ]:
        q = queue_with(tmp_path / type(raised).__name__, ["a", "b"])

        def send(records, raised=raised):
            raise raised

        q.run(send, now=START, call_batch=5, breaker=False)
        assert placed(q) == {"a": (table, error), "b": (table, error)}


def test_an_async_batch_processor_is_cut_off_by_the_timeout(tmp_path):
    q = queue_with(tmp_path / "slow", ["a", "b", "c"])

    async def slow(records):
        await asyncio.sleep(60)

    t = time.monotonic()
    q.run(slow, now=START, call_batch=2, timeout=0.3, breaker=False)
    assert time.monotonic() - t < 20
    # The engine's timeout or the event loop's, whichever comes first.
    for table, error in placed(q).values():
        assert table == "retry_queue" and error.startswith("timeout after"), error

    q = queue_with(tmp_path / "quick", ["a", "b", "c"])

    async def quick(records):
        await asyncio.sleep(0.01)
        return [r.id.upper() for r in records]

    q.run(quick, now=START, call_batch=2, breaker=False)
    assert placed(q) == {i: ("final_results", i.upper()) for i in "abc"}


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "10"])
def test_a_bad_call_batch_is_refused(tmp_path, bad):
    q = queue_with(tmp_path, ["a"])
    with pytest.raises((TypeError, ValueError), match="call_batch"):
        q.run(lambda records: None, now=START, call_batch=bad)
    assert placed(q) == {"a": ("retry_queue", None)}


CHILD = textwrap.dedent(
    """
    import sys, time, retrylake
    root, calls = sys.argv[1], sys.argv[2]
    q = retrylake.Queue(root)

    def slow(records):
        with open(calls, "a") as f:
            f.writelines(r.idempotency_key + "\\n" for r in records)
        time.sleep(0.02)
        return [retrylake.Transient("first try fails")
                if r.attempt == 1 and r.id.endswith("3") else "ok" for r in records]

    q.drain(slow, now=sys.argv[3], limit=12, concurrency=2, call_batch=3, breaker=False)
    """
)


@pytest.mark.parametrize("kill_after", [1, 10, 30, 60])
def test_kill_9_mid_batch_loses_and_doubles_nothing(tmp_path, kill_after):
    root, calls = str(tmp_path / "data"), str(tmp_path / "calls.log")
    ids = [f"r{i:02}" for i in range(80)]
    q = queue_with(tmp_path, ids)
    child = subprocess.Popen([sys.executable, "-c", CHILD, root, calls, START])
    deadline = time.monotonic() + 120
    while child.poll() is None:
        try:
            with open(calls) as f:
                if len(f.readlines()) >= kill_after:
                    break
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, "the child made no progress"
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL, "the child ended before it was killed"

    again = retrylake.Queue(root)
    again.drain(lambda records: ["ok"] * len(records), now=LATER, call_batch=7, breaker=False)
    final = again.query("SELECT sample_id FROM final_results").column(0).to_pylist()
    assert sorted(final) == ids, "lost or doubled"
    doubled = again.query(
        "SELECT sample_id, attempt, count(*) AS n FROM attempts "
        "GROUP BY sample_id, attempt HAVING count(*) > 1"
    )
    assert doubled.num_rows == 0, doubled.to_pylist()


def test_an_endless_iterator_is_read_one_result_per_record(tmp_path):
    import itertools

    q = queue_with(tmp_path, ["a", "b"])
    q.run(lambda records: itertools.repeat("ok"), now=START, call_batch=5, breaker=False)
    assert placed(q) == {"a": ("final_results", "ok"), "b": ("final_results", "ok")}
