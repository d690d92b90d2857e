"""A hostile review of the Python batch processor (``call_batch=N``, commit 54dbf72):
``_Caller.submit_batch / _batch / _call_batch / _answers`` in retrylake/__init__.py and
``PyBatchProcessor`` in src/lib.rs.

Each test says what it attacks and what is expected. ``FAILED BEFORE THE FIX:`` marks a test the code as
reviewed is believed to fail (its cause by file:line); ``HOLDS:`` one it is believed to
pass, kept as a guard.
"""

import threading
import time
import warnings

import pytest

import retrylake

START = "2025-11-24T14:00:00Z"
LATER = "2025-11-25T14:00:00Z"


def queue_with(tmp_path, ids):
    q = retrylake.Queue(str(tmp_path / "data"))
    q.enqueue([{"sample_id": i, "payload": {"n": n}} for n, i in enumerate(ids)], now=START)
    return q


def placed(q):
    """Each record's table (and error or response), by id."""
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


def test_a_batch_function_that_reorders_its_list_does_not_swap_outcomes(tmp_path):
    # FAILED BEFORE THE FIX: outcomes land on the wrong records when the batch function reorders the
    # list it was given, even with results keyed by id.
    # `_batch` (retrylake/__init__.py:229) hands the user a list (`called`) and, after the
    # call, maps answers back to records by position over `keys`, computed before the call
    # (__init__.py:234). `_answers` builds those answers by walking the same `called` list
    # after the user had it (__init__.py:266 for a dict, :276 for a list). A function that
    # sorts its batch in place (to group requests by lab, by size...) and answers by id
    # shifts every answer: here `a`, stored, is dead-lettered with `b`'s error, and `b`,
    # refused, is stored as a success: the promise's "no silent wrong placement".
    # Expected: answers by id go to the record of that id, whatever the function did to its
    # list (hand it a copy, or read the answers against the records as they were sent).
    q = queue_with(tmp_path, ["a", "b"])

    def send(records):
        records.sort(key=lambda r: r.id, reverse=True)
        return {r.id: retrylake.Permanent("bad b") if r.id == "b" else "stored a" for r in records}

    q.run(send, now=START, call_batch=10, breaker=False)
    assert placed(q) == {
        "a": ("final_results", "stored a"),
        "b": ("dead_letter_queue", "bad b"),
    }


@pytest.mark.parametrize("kind", ["plain", "async"])
def test_a_list_of_unawaited_coroutines_is_not_a_success(tmp_path, kind):
    # FAILED BEFORE THE FIX: a batch function that returns one coroutine per record (an async client,
    # `[client.post(r) for r in records]`, the `asyncio.gather` forgotten) stores every
    # record as a success, though nothing was sent.
    # `_answers` (retrylake/__init__.py:276) takes each item as it is and `_answer`
    # (__init__.py:279) makes anything not an exception a success: the coroutine's repr
    # ("<coroutine object ...>") becomes the stored response, and the coroutine is never
    # run. The per-record path awaits what a plain function returns when it is awaitable
    # (`_call`); the batch path never looks at the items.
    # Expected: each awaitable result is awaited (its result is the record's), or the
    # record fails; in no case is a record stored with a response it never got.
    q = queue_with(tmp_path, ["a", "b"])

    async def post(record):
        return f"sent {record.id}"

    if kind == "plain":

        def send(records):
            return [post(r) for r in records]

    else:

        async def send(records):
            return [post(r) for r in records]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "coroutine ... was never awaited"
        q.run(send, now=START, call_batch=10, breaker=False)
    for rid, (table, response) in placed(q).items():
        assert table != "final_results" or response == f"sent {rid}", (rid, table, response)


def test_an_exception_class_as_a_result_is_a_failure(tmp_path):
    # FAILED BEFORE THE FIX: the batch contract says a result may be "an exception instance for that
    # record's failure"; an exception class (`retrylake.Permanent`, as one writes after
    # `raise`, which takes a class as well) is stored as a success whose response is
    # "<class 'retrylake.Permanent'>".
    # `_answer` (retrylake/__init__.py:279) checks `isinstance(result, BaseException)`,
    # false for a class, so `_success` stores the class's repr (its JSON fails).
    # Expected: an exception class counts as its instance, as `raise` does: `a` waits for
    # a retry, `b` is dead-lettered, `c` follows other_errors (transient); none is stored.
    q = queue_with(tmp_path, ["a", "b", "c"])

    def send(records):
        return {"a": retrylake.Transient, "b": retrylake.Permanent, "c": ValueError}

    q.run(send, now=START, call_batch=10, breaker=False)
    where = placed(q)
    assert {rid: table for rid, (table, _) in where.items()} == {
        "a": "retry_queue",
        "b": "dead_letter_queue",
        "c": "retry_queue",
    }, where


@pytest.mark.parametrize("raised", ["permanent", "transient", "interrupt"])
def test_what_a_generator_batch_function_raises_keeps_its_meaning(tmp_path, raised):
    # FAILED BEFORE THE FIX: a batch function written as a generator (`yield` one result per record, a
    # natural shape for a loop of calls) has its body run while `_answers` reads it
    # (`list(result)`, retrylake/__init__.py:276), which `_call_batch` calls outside its
    # `try` (__init__.py:256). What the body raises escapes `_batch`, and
    # `_batch_result_of` (__init__.py:363-367) makes it "the call did not run: ...", a
    # transient failure for every record:
    # - Permanent("schema changed") is retried instead of dead-lettered;
    # - Transient(retry_after=600) loses its Retry-After (the record is due again after
    #   the backoff, 60 s, not 10 minutes), and its message is rewritten;
    # - KeyboardInterrupt (Ctrl-C while the generator works) is swallowed: `interrupted`
    #   is never set, the run goes on instead of stopping after the round.
    # Expected: as for a plain function that raises (test_batch.py,
    # test_what_the_batch_raises_applies_to_every_record): `b` dead-lettered with
    # "schema changed"; `b` queued with "slow down" and its time lock at least 10 minutes
    # on; the run stops with KeyboardInterrupt, every record in exactly one table.
    q = queue_with(tmp_path, ["a", "b"])

    def send(records):
        for r in records:
            if r.id == "b":
                if raised == "permanent":
                    raise retrylake.Permanent("schema changed")
                if raised == "transient":
                    raise retrylake.Transient("slow down", retry_after=600)
                raise KeyboardInterrupt
            yield f"stored {r.id}"

    if raised == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            q.run(send, now=START, call_batch=10, breaker=False)
        assert set(placed(q)) == {"a", "b"}
        return
    q.run(send, now=START, call_batch=10, breaker=False)
    where = placed(q)
    if raised == "permanent":
        assert where["b"] == ("dead_letter_queue", "schema changed"), where
    else:
        assert where["b"] == ("retry_queue", "slow down"), where
        lock = q.query("SELECT process_after FROM retry_queue WHERE sample_id = 'b'")
        assert lock.column(0)[0].as_py().isoformat() >= "2025-11-24T14:10:00", lock


def test_a_record_still_running_does_not_time_out_its_batch_mates(tmp_path):
    # FAILED BEFORE THE FIX: one record left running by a timed-out call makes every batch it is in time
    # out, its batch-mates (never called before) charged a failed attempt each time.
    # `_batch` (retrylake/__init__.py:224) waits for *all* the batch's records to be free
    # for up to `self.timeout`, the very timeout the engine's `Timeout` layer
    # (src/layer.rs, the batch `Timeout`) gives the whole call: the engine gives up first,
    # and every record of the batch fails "timeout after 1s (the whole batch)". Only then
    # does the thread call the processor for the free records (a call the engine no longer
    # waits for: its result is thrown away, the records sent again later). The per-record
    # path holds back only the busy record (`_after`). With a hung record that stays due,
    # its batch-mates burn their retries and reach the dead-letter queue for nothing.
    # Expected: `a`, never called before, is called at once and stored; only `s` (still in
    # its first call) fails ("the previous call of this record is still running").
    q = queue_with(tmp_path, ["s"])
    release = threading.Event()

    def send(records):
        if any(r.id == "s" and r.attempt == 1 for r in records):
            release.wait(30)  # hangs well past the timeout: the engine gives up on it
        else:
            time.sleep(0.2)
        return ["ok"] * len(records)

    try:
        q.run(send, now=START, call_batch=2, timeout=1, breaker=False)
        assert placed(q)["s"][0] == "retry_queue"
        # `s`'s first call still runs on its thread. A new record joins it in one batch.
        q.enqueue([{"sample_id": "a", "payload": "p"}], now=START)
        q.run(send, now=LATER, call_batch=2, timeout=1, breaker=False)
        where = placed(q)
    finally:
        release.set()
    assert where["a"] == ("final_results", "ok"), where
    assert where["s"][0] == "retry_queue", where


def test_odd_result_shapes_never_make_a_success_of_a_missing_result(tmp_path):
    # HOLDS: results that answer no record (a dict keyed by Record objects or by ints, a
    # list longer than the batch, a generator that stops short) fail those records
    # transiently ("no result"); results past the last record are dropped; nothing is
    # lost or doubled. `_answers` (retrylake/__init__.py:266-277), `one_per_record`
    # (src/processor/batch.rs).
    ids = ["a", "b", "c"]
    missing = "the batch processor gave no result for this record"
    cases = [
        ("keyed by Record", lambda records: {r: "ok" for r in records}, {}),
        ("keyed by int", lambda records: {0: "ok", 1: "ok", 2: "ok"}, {}),
        ("longer", lambda records: ["ok"] * (len(records) + 5), {i: "ok" for i in ids}),
        ("short generator", lambda records: (x for x in ["ok"]), {"a": "ok"}),
    ]
    for name, send, stored in cases:
        q = queue_with(tmp_path / name.replace(" ", "-"), ids)
        q.run(send, now=START, call_batch=10, breaker=False)
        where = placed(q)
        assert set(where) == set(ids), (name, where)
        for rid in ids:
            if rid in stored:
                assert where[rid] == ("final_results", stored[rid]), (name, where)
            else:
                assert where[rid] == ("retry_queue", missing), (name, where)
