"""kill -9 of a Python process mid-round, at several moments: a fresh process finishes the
work, and every record ends in exactly one table, once."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import retrylake

START = "2025-11-24T14:00:00Z"
# A day later on the virtual clock: the killed round's lease has ended.
LATER = "2025-11-25T14:00:00Z"
RECORDS = 60

CHILD = textwrap.dedent(
    """
    import sys, time, retrylake
    root, calls = sys.argv[1], sys.argv[2]
    q = retrylake.Queue(root)

    def slow(record):
        with open(calls, "a") as f:
            f.write(record.idempotency_key + "\\n")
        time.sleep(0.01)
        if record.attempt == 1 and record.id.endswith("3"):
            raise retrylake.Transient("first try fails")
        return "ok"

    q.drain(slow, now=sys.argv[3], limit=7, concurrency=2, breaker=False)
    """
)


def calls_so_far(path):
    try:
        with open(path) as f:
            return len(f.readlines())
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("kill_after", [1, 9, 25, 50])
def test_kill_9_mid_round_loses_and_doubles_nothing(tmp_path, kill_after):
    root, calls = str(tmp_path / "data"), str(tmp_path / "calls.log")
    q = retrylake.Queue(root)
    q.enqueue([{"sample_id": f"r{i:02}", "payload": "p"} for i in range(RECORDS)], now=START)
    child = subprocess.Popen([sys.executable, "-c", CHILD, root, calls, START])
    deadline = time.monotonic() + 120
    while calls_so_far(calls) < kill_after and child.poll() is None:
        assert time.monotonic() < deadline, "the child made no progress"
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL, "the child ended before it was killed"

    # A new process under the same worker name finishes the work, a day later.
    again = retrylake.Queue(root)
    again.drain(lambda record: "ok", now=LATER, breaker=False)

    final = again.query("SELECT sample_id FROM final_results").column(0).to_pylist()
    assert sorted(final) == [f"r{i:02}" for i in range(RECORDS)], "lost or doubled"
    for table in ("retry_queue", "dead_letter_queue"):
        n = again.query(f"SELECT count(*) AS n FROM {table}").column(0)[0].as_py()
        assert n == 0, table
    # Every success is journaled once.
    doubled = again.query(
        "SELECT sample_id, count(*) AS n FROM attempts WHERE outcome = 'success' "
        "GROUP BY sample_id HAVING count(*) > 1"
    )
    assert doubled.num_rows == 0, doubled.to_pylist()


WORKER = textwrap.dedent(
    """
    import sys, time, retrylake
    root, calls = sys.argv[1], sys.argv[2]
    q = retrylake.Queue(root)

    def slow(record):
        with open(calls, "a") as f:
            f.write(record.idempotency_key + "\\n")
        time.sleep(0.02)
        return "ok"

    try:
        q.worker(slow, poll=0.2, limit=5, concurrency=2, breaker=False)
    except KeyboardInterrupt:
        print("stopped after the round in flight")
        sys.exit(0)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_stops_on_a_signal_after_its_round(tmp_path, sig):
    root, calls = str(tmp_path / "data"), str(tmp_path / "calls.log")
    q = retrylake.Queue(root)
    q.enqueue([{"sample_id": f"w{i:02}", "payload": "p"} for i in range(40)])
    child = subprocess.Popen(
        [sys.executable, "-c", WORKER, root, calls], stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while calls_so_far(calls) < 8:
        assert child.poll() is None, "the worker ended on its own"
        assert time.monotonic() < deadline, "the worker made no progress"
        time.sleep(0.005)
    child.send_signal(sig)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and "stopped" in out, out
    # Every call it made was committed, and every record is in exactly one table.
    journaled = q.query("SELECT count(*) AS n FROM attempts").column(0)[0].as_py()
    assert journaled == calls_so_far(calls)
    total = sum(
        q.query(f"SELECT count(*) AS n FROM {t}").column(0)[0].as_py()
        for t in ("retry_queue", "final_results", "dead_letter_queue")
    )
    assert total == 40
    assert 8 <= q.status()["final"] < 40
