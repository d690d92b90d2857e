"""Operator controls from Python against real Delta tables: pause and resume (seen by
every worker, in any process), cancel (by ids, last error, age; racing a worker in another
process), and a record's deadline (max_age, reason expired)."""

import datetime
import json
import subprocess
import sys
import textwrap
import time

import pytest

import retrylake

START = "2025-11-24T14:00:00Z"
T0 = datetime.datetime(2025, 11, 24, 14, 0, tzinfo=datetime.timezone.utc)


def at(**delta):
    """START moved by `delta` (hours=, minutes=, seconds=), as RFC 3339 text."""
    return (T0 + datetime.timedelta(**delta)).isoformat().replace("+00:00", "Z")


def ok(record):
    return "ok"


def queue_with(tmp_path, ids, now=START):
    q = retrylake.Queue(str(tmp_path / "data"))
    q.enqueue([{"sample_id": i, "payload": f"payload of {i}"} for i in ids], now=now)
    return q


def column(q, sql, name="sample_id"):
    return q.query(sql).column(name).to_pylist()


def places(q):
    """Each table's ids (a list: an id twice in one table shows)."""
    return {
        t: sorted(column(q, f"SELECT sample_id FROM {t}"))
        for t in ("retry_queue", "final_results", "dead_letter_queue")
    }


def assert_each_in_exactly_one_table(q, ids):
    found = places(q)
    everywhere = sorted(i for t in found.values() for i in t)
    assert everywhere == sorted(ids), "a record lost, doubled, or in two tables"


def dead(q):
    """The dead letters by id: (reason, error_msg, retry_count)."""
    rows = q.query("SELECT sample_id, reason, error_msg, retry_count FROM dead_letter_queue")
    return {r["sample_id"]: (r["reason"], r["error_msg"], r["retry_count"]) for r in rows.to_pylist()}


# --- pause and resume ---------------------------------------------------------------------


def test_a_paused_queue_claims_nothing_until_resumed(tmp_path):
    q = queue_with(tmp_path, ["a", "b", "c"])
    pause = q.pause(reason="downstream maintenance", now=START)
    assert pause["until"] is None and pause["reason"] == "downstream maintenance"
    assert pause["at"] == START and "@" in pause["by"]
    assert q.paused(now=START) == pause
    assert q.status(now=START)["paused"] == pause

    calls = []
    report = q.run(lambda r: calls.append(r.id) or "ok", now=at(hours=1))
    assert report["queue_paused"] == pause
    assert (report["round"], report["processed"]) == (None, 0)
    assert calls == []
    status = q.status(now=at(hours=1))
    assert (status["waiting"], status["final"], status["paused"]) == (3, 0, pause)
    # Recorded in retry_queue's history, with who and why.
    jobs = [c["job"] for c in q.history("retry_queue")]
    assert jobs[0] == "pause"

    q.resume()
    assert q.paused() is None and q.status()["paused"] is None
    report = q.run(lambda r: calls.append(r.id) or "ok", now=at(hours=1))
    assert report["queue_paused"] is None
    assert (report["processed"], report["succeeded"]) == (3, 3)
    assert sorted(calls) == ["a", "b", "c"]
    assert "resume" in [c["job"] for c in q.history("retry_queue")]
    # A resume of a queue that is not paused changes nothing but the history.
    q.resume()
    assert q.paused() is None


def test_a_pause_until_ends_by_itself(tmp_path):
    q = queue_with(tmp_path, ["a", "b"])
    # An aware time in another zone, and a naive one (UTC), name the same instant.
    until = datetime.datetime(2025, 11, 24, 16, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    pause = q.pause(until=until, now=START)
    assert pause["until"] == at(hours=1)
    assert q.pause(until=datetime.datetime(2025, 11, 24, 15, 0), now=START)["until"] == at(hours=1)

    before = q.run(ok, now=at(minutes=59, seconds=59))
    assert before["processed"] == 0 and before["queue_paused"]["until"] == at(hours=1)
    assert q.paused(now=at(minutes=30))["until"] == at(hours=1)
    # At its end and after it, no pause holds: a round at that clock processes.
    assert q.paused(now=at(hours=1)) is None
    assert q.status(now=at(hours=2))["paused"] is None
    after = q.run(ok, now=at(hours=2))
    assert after["queue_paused"] is None and after["succeeded"] == 2


def test_a_drain_waits_out_a_timed_pause_and_stops_on_an_open_one(tmp_path):
    q = queue_with(tmp_path, ["a"])
    q.pause(now=START)
    reports = q.drain(ok, now=START)
    assert [r["processed"] for r in reports] == [0] and reports[0]["queue_paused"]
    assert q.status(now=START)["waiting"] == 1
    q.resume()
    # Paused until 15:00: the virtual clock jumps there and the record is called then.
    q.pause(until=at(hours=1), now=START)
    reports = q.drain(ok, now=START)
    assert reports[0]["queue_paused"]["until"] == at(hours=1)
    assert sum(r["succeeded"] for r in reports) == 1
    called = column(q, "SELECT started_at FROM attempts", "started_at")
    assert called[0] >= T0 + datetime.timedelta(hours=1)


def test_another_queue_sees_a_pause_and_a_resume(tmp_path):
    q = queue_with(tmp_path, ["a"])
    other = retrylake.Queue(str(tmp_path / "data"), worker="other")
    assert other.paused(now=START) is None
    q.pause(reason="r", now=START)
    assert other.paused(now=START)["reason"] == "r"
    assert other.run(ok, now=START)["processed"] == 0
    q.resume()
    assert other.paused(now=START) is None
    assert other.run(ok, now=START)["succeeded"] == 1


def test_bad_pauses_are_refused_with_the_engines_message(tmp_path):
    q = queue_with(tmp_path, ["a"])
    with pytest.raises(ValueError, match="not in the future"):
        q.pause(until=datetime.datetime(2025, 11, 24, 13, 0), now=START)
    with pytest.raises(ValueError, match="not in the future"):
        q.pause(until=START, now=START)
    with pytest.raises(ValueError, match="control character"):
        q.pause(reason="two\nlines")
    with pytest.raises(ValueError, match="at most 4096"):
        q.pause(reason="x" * 4097)
    with pytest.raises(ValueError, match="until"):
        q.pause(until="tomorrow")
    with pytest.raises(TypeError):
        q.pause(until=12345)
    with pytest.raises(TypeError):
        q.pause(reason=7)
    # Nothing was written.
    assert q.paused() is None
    assert [c["job"] for c in q.history("retry_queue")] == ["enqueue", "create"]
    assert q.run(ok, now=START)["succeeded"] == 1


WORKER = textwrap.dedent(
    """
    import sys, time, retrylake
    root, calls = sys.argv[1], sys.argv[2]
    q = retrylake.Queue(root, worker="child")

    def record_call(record):
        with open(calls, "a") as f:
            f.write(f"{record.id} {time.time()}\\n")
        return "ok"

    try:
        q.worker(record_call, poll=0.1, breaker=False)
    except KeyboardInterrupt:
        sys.exit(0)
    """
)


def read_calls(path):
    try:
        with open(path) as f:
            return [(i, float(t)) for i, t in (line.split() for line in f)]
    except FileNotFoundError:
        return []


def wait_for(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_worker_in_another_process_obeys_a_pause(tmp_path):
    root, calls = str(tmp_path / "data"), str(tmp_path / "calls.log")
    q = retrylake.Queue(root)
    child = subprocess.Popen([sys.executable, "-c", WORKER, root, calls])
    try:
        # Paused until a resume: records enqueued meanwhile wait.
        q.pause(reason="hold on")
        q.enqueue([{"sample_id": f"p{i}", "payload": "x"} for i in range(5)])
        time.sleep(1.5)
        assert child.poll() is None
        assert read_calls(calls) == [] and q.status()["waiting"] == 5
        q.resume()
        wait_for(lambda: q.status()["final"] == 5, "the worker did not go on after the resume")

        # Paused for a while: the worker goes on by itself once it ends.
        until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
        q.pause(until=until)
        q.enqueue([{"sample_id": f"u{i}", "payload": "x"} for i in range(5)])
        wait_for(lambda: q.status()["final"] == 10, "the worker did not go on after the pause")
        later = [t for i, t in read_calls(calls) if i.startswith("u")]
        assert len(later) == 5 and min(later) >= until.timestamp()
    finally:
        child.terminate()
        child.wait(timeout=60)
    assert_each_in_exactly_one_table(q, [f"p{i}" for i in range(5)] + [f"u{i}" for i in range(5)])


# --- cancel -------------------------------------------------------------------------------


def test_cancel_by_ids_error_and_age_takes_exactly_those(tmp_path):
    old = ["a1", "a2", "a3", "a4", "a5"]
    young = ["b1", "b2", "b3", "b4", "b5"]
    q = queue_with(tmp_path, old + ["c1"])
    q.enqueue([{"sample_id": i, "payload": f"payload of {i}"} for i in young], now=at(hours=1))

    def first(record):
        if record.id == "c1":
            return "done"
        if record.id in ("a1", "a2", "b1"):
            raise retrylake.Transient("HTTP 503")
        raise retrylake.Transient("timeout")

    report = q.run(first, now=at(hours=1))
    assert (report["retried"], report["succeeded"]) == (10, 1)
    queued_before = {r["sample_id"]: r for r in q.query("SELECT * FROM retry_queue").to_pylist()}
    final_before = q.query("SELECT * FROM final_results").to_pylist()

    # By ids (an id not queued, and one already final, are no match).
    r = q.cancel(["a4", "b2", "nope", "c1"], now=at(hours=2))
    assert (r["cancelled"], r["held"], len(r["rounds"])) == (2, 0, 1)
    # By last error, with a reason of the operator's.
    r = q.cancel(error_msg="HTTP 503", reason="endpoint retired", now=at(hours=2))
    assert (r["cancelled"], r["held"]) == (3, 0)
    # Every filter given must hold: b3 and b4 failed with "timeout".
    r = q.cancel(["b3", "b4"], error_msg="HTTP 503", now=at(hours=2))
    assert (r["cancelled"], r["rounds"]) == (0, [])
    # By age: enqueued at least 90 minutes before 16:00 is the 14:00 batch (a3, a5 left).
    r = q.cancel(older_than=datetime.timedelta(minutes=90), now=at(hours=2))
    assert r["cancelled"] == 2
    assert q.cancel(older_than=5400, now=at(hours=2))["cancelled"] == 0, "seconds too"

    cancelled = {"a1", "a2", "a3", "a4", "a5", "b1", "b2"}
    letters = dead(q)
    assert set(letters) == cancelled
    assert all(reason == "cancelled" and retries == 1 for reason, _, retries in letters.values())
    assert {i for i, (_, e, _) in letters.items() if e == "endpoint retired"} == {"a1", "a2", "b1"}
    assert all(letters[i][1].startswith("cancelled by ") for i in ("a3", "a4", "a5", "b2"))
    # The dead letters keep their payloads; the rest is untouched.
    rows = q.query("SELECT sample_id, payload FROM dead_letter_queue").to_pylist()
    payloads = {r["sample_id"]: r["payload"] for r in rows}
    assert payloads == {i: f"payload of {i}" for i in cancelled}
    queued_after = {r["sample_id"]: r for r in q.query("SELECT * FROM retry_queue").to_pylist()}
    assert queued_after == {i: queued_before[i] for i in ("b3", "b4", "b5")}
    assert q.query("SELECT * FROM final_results").to_pylist() == final_before
    assert_each_in_exactly_one_table(q, old + young + ["c1"])
    # Journaled: one `cancel` attempt per cancelled record, dead with reason cancelled.
    journal = q.query(
        "SELECT sample_id, disposition, reason, worker FROM attempts WHERE outcome = 'cancel'"
    ).to_pylist()
    assert sorted(r["sample_id"] for r in journal) == sorted(cancelled)
    assert {(r["disposition"], r["reason"], r["worker"]) for r in journal} == {
        ("dead", "cancelled", "cancel")
    }
    # Only what is left is called again.
    calls = []
    q.drain(lambda r: calls.append(r.id) or "ok", now=at(hours=2))
    assert sorted(calls) == ["b3", "b4", "b5"]
    assert_each_in_exactly_one_table(q, old + young + ["c1"])
    by_reason = {r["reason"]: r["count"] for r in q.status()["dead_by_reason"]}
    assert by_reason == {"cancelled": 7}


def test_cancel_all_and_refusals(tmp_path):
    q = queue_with(tmp_path, ["a", "b", "c"])
    with pytest.raises(ValueError, match="cancel needs"):
        q.cancel()
    with pytest.raises(ValueError, match="cancel needs"):
        q.cancel([])
    with pytest.raises(ValueError, match="control character"):
        q.cancel(all=True, reason="a\tb")
    with pytest.raises(ValueError, match="older_than"):
        q.cancel(older_than=-1)
    with pytest.raises(TypeError, match="older_than"):
        q.cancel(older_than="1h")
    with pytest.raises(TypeError, match="all"):
        q.cancel(all="yes")
    with pytest.raises(TypeError):
        q.cancel([1, 2])
    assert q.status()["waiting"] == 3 and q.status()["dead"] == 0, "nothing changed"

    # One id as a string; then every queued record.
    assert q.cancel("a")["cancelled"] == 1
    r = q.cancel(all=True)
    assert r["cancelled"] == 2
    assert {reason for reason, _, _ in dead(q).values()} == {"cancelled"}
    assert q.status()["waiting"] == 0
    # Nothing left to cancel: an empty report, not an error.
    assert q.cancel(all=True) == {"rounds": [], "cancelled": 0, "held": 0}
    # A cancelled record can be redriven like any dead letter.
    assert q.redrive(reason="cancelled")["redriven"] == 3
    q.drain(ok)
    assert places(q) == {"retry_queue": [], "final_results": ["a", "b", "c"], "dead_letter_queue": []}


def test_cancel_works_while_paused(tmp_path):
    q = queue_with(tmp_path, ["a", "b"])
    q.pause(now=START)
    assert q.cancel("a", now=START)["cancelled"] == 1
    assert q.run(ok, now=START)["processed"] == 0
    q.resume()
    assert q.run(ok, now=START)["succeeded"] == 1
    assert places(q) == {"retry_queue": [], "final_results": ["b"], "dead_letter_queue": ["a"]}


RACER = textwrap.dedent(
    """
    import sys, time, retrylake
    root, calls, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    q = retrylake.Queue(root, worker="racer")

    def slow(record):
        with open(calls, "a") as f:
            f.write(f"{record.idempotency_key}\\n")
        time.sleep(0.01)
        if record.attempt == 1 and int(record.id[1:]) % 3 == 0:
            raise retrylake.Transient("first try fails")
        return "ok"

    options = dict(limit=8, concurrency=4, breaker=False, base_backoff=0.05,
                   max_backoff=0.2, poll=0.1)
    try:
        if mode == "drain":
            q.drain(slow, **options)
        else:
            q.worker(slow, **options)
    except KeyboardInterrupt:
        pass
    print("done")
    """
)


@pytest.mark.parametrize("mode", ["drain", "worker"])
def test_a_cancel_racing_a_worker_in_another_process(tmp_path, mode):
    root, calls = str(tmp_path / "data"), str(tmp_path / "calls.log")
    ids = [f"r{i:03}" for i in range(150)]
    q = retrylake.Queue(root)
    q.enqueue([{"sample_id": i, "payload": "p"} for i in ids])
    child = subprocess.Popen(
        [sys.executable, "-c", RACER, root, calls, mode], stdout=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: len(read_lines(calls)) >= 20, "the worker made no progress")
        # First the records waiting out a failure, then everything queued, while the
        # worker runs rounds.
        first = q.cancel(error_msg="first try fails", reason="racing")
        second = q.cancel(all=True, reason="racing")
        cancelled = first["cancelled"] + second["cancelled"]
        assert cancelled > 0, "the worker finished before the cancel: no race"
        # What the worker held is placed by it; then the queue is empty.
        wait_for(lambda: q.status()["waiting"] == 0, "records left in the queue")
        if mode == "worker":
            child.terminate()
        out, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0 and "done" in out, out

    assert_each_in_exactly_one_table(q, ids)
    letters = dead(q)
    assert len(letters) == cancelled
    assert {reason for reason, _, _ in letters.values()} == {"cancelled"}
    assert {e for _, e, _ in letters.values()} == {"racing"}
    final = set(column(q, "SELECT sample_id FROM final_results"))
    assert final | set(letters) == set(ids)
    # A cancelled record never succeeded, and every final one succeeded exactly once.
    outcomes = q.query("SELECT sample_id, outcome FROM attempts").to_pylist()
    succeeded = [r["sample_id"] for r in outcomes if r["outcome"] == "success"]
    assert sorted(succeeded) == sorted(final)
    assert sorted(r["sample_id"] for r in outcomes if r["outcome"] == "cancel") == sorted(letters)
    # Every call the worker made is journaled (none of a cancelled record after its cancel).
    called = [r for r in outcomes if r["outcome"] in ("success", "transient", "permanent")]
    assert len(called) == len(read_lines(calls))


def read_lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


# --- max_age ------------------------------------------------------------------------------


@pytest.mark.parametrize("max_age", [datetime.timedelta(hours=6), 6 * 3600, 6 * 3600.0])
def test_max_age_expires_old_records_and_calls_younger_ones(tmp_path, max_age):
    q = queue_with(tmp_path, ["old1", "old2"])
    q.enqueue([{"sample_id": i, "payload": "p"} for i in ("young1", "young2")], now=at(hours=5))
    calls = []
    report = q.run(lambda r: calls.append(r.id) or "ok", now=at(hours=7), max_age=max_age)
    assert (report["processed"], report["succeeded"], report["dead_lettered"]) == (4, 2, 2)
    assert sorted(calls) == ["young1", "young2"]
    letters = dead(q)
    assert set(letters) == {"old1", "old2"}
    assert all(r == "expired" and "expired" in e for r, e, _ in letters.values())
    assert places(q)["final_results"] == ["young1", "young2"]
    journal = q.query(
        "SELECT sample_id, outcome, reason FROM attempts WHERE sample_id LIKE 'old%'"
    ).to_pylist()
    assert {r["reason"] for r in journal} == {"expired"} and len(journal) == 2
    assert {r["reason"]: r["count"] for r in q.status()["dead_by_reason"]} == {"expired": 2}


def test_a_retry_past_the_deadline_is_dead_now(tmp_path):
    q = queue_with(tmp_path, ["x", "y"])
    calls = []

    def fails(record):
        calls.append(record.id)
        if record.id == "x":
            raise retrylake.Transient("boom")
        return "ok"

    # The first retry (2 minutes) falls before the 150 s deadline, the second (4 minutes
    # more) after.
    q.drain(fails, now=START, max_age=150, breaker=False)
    assert calls.count("x") == 2 and calls.count("y") == 1
    reason, error, retries = dead(q)["x"]
    assert reason == "expired" and "boom" in error and "expired" in error and retries == 1
    # Without a deadline the schedule runs to the end.
    q2 = queue_with(tmp_path / "2", ["x"])
    q2.drain(fails, now=START, breaker=False)
    assert dead(q2)["x"][0] == "retries_exhausted"


def test_a_transient_rules_max_age_overrides_the_rounds(tmp_path):
    q = queue_with(tmp_path, ["busy", "other"])

    def fails(record):
        raise retrylake.Transient("busy" if record.id == "busy" else "flaky")

    rules = [{"name": "short", "message": "busy", "action": "transient", "max_age": 150}]
    q.drain(fails, now=START, rules=rules, max_age=datetime.timedelta(hours=1), breaker=False)
    letters = dead(q)
    assert letters["busy"][0] == "expired" and letters["busy"][2] == 1
    # Calls at 0, 2, 6, 14 and 30 minutes fit in the round's hour; the next, at 62, does not.
    assert letters["other"][0] == "expired" and letters["other"][2] == 4


def test_bad_max_ages_are_refused(tmp_path):
    q = queue_with(tmp_path, ["a"])
    with pytest.raises(ValueError, match="max-age"):
        q.run(ok, max_age=0)
    with pytest.raises(ValueError, match="max_age"):
        q.run(ok, max_age=-1)
    with pytest.raises(ValueError, match="max_age"):
        q.run(ok, max_age=float("nan"))
    with pytest.raises(TypeError, match="max_age"):
        q.run(ok, max_age="6h")
    assert q.status()["waiting"] == 1, "nothing ran"
    assert q.run(ok, max_age=None)["succeeded"] == 1


# --- alerts when records die --------------------------------------------------------------


def test_dead_letters_reach_a_command_hook_from_python_once_each(tmp_path):
    ids = [f"A-{i}" for i in range(12)]
    q = queue_with(tmp_path, ids)
    alerts = tmp_path / "alerts"
    alerts.mkdir()
    hook = f"cat > '{alerts}'/\"$RETRYLAKE_IDEMPOTENCY_KEY\""

    def half_bad(record):
        if record.id.endswith(("1", "3", "5")):
            raise retrylake.Permanent("rejected")
        return "ok"

    q.drain(half_bad, now=START, on_dead_letter=hook)
    got = {}
    for f in alerts.iterdir():
        alert = json.loads(f.read_text())
        assert f.name == alert["idempotency_key"] + ":0"
        for letter in alert["dead_letters"]:
            got.setdefault(letter["sample_id"], []).append(letter["reason"])
    assert got == {i: ["permanent"] for i in dead(q)}
    assert sorted(got) == ["A-1", "A-11", "A-3", "A-5"]
    with pytest.raises(ValueError, match="on-dead-letter"):
        q.drain(half_bad, now=START, on_dead_letter="   ")
