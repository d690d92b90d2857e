"""Spark runs the workers: python/examples/spark_workers.py with pyspark in local mode, one
shard worker per partition over one queue, every record placed once.

Skipped when pyspark is not installed, unless RETRYLAKE_TEST_REQUIRE_SPARK is set (CI sets
it: scripts/py-requirements.txt installs pyspark, and Java 17 is on the machine)."""

import os
import pathlib
import sys

import pytest

import retrylake

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
START = "2025-11-24T14:00:00Z"

if os.environ.get("RETRYLAKE_TEST_REQUIRE_SPARK"):
    import pyspark  # noqa: F401 - fails the run when it is missing
else:
    pytest.importorskip("pyspark")

sys.path.insert(0, str(EXAMPLES))
import spark_workers  # noqa: E402


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    # The workers run this interpreter, where the package is installed.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("retrylake-test")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    session.sparkContext.addPyFile(str(EXAMPLES / "spark_workers.py"))
    # The workers cannot import this test module: its processor travels by value.
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield session
    session.stop()


def flaky(record):
    """Fails every third record's first two attempts; empty payloads are permanent."""
    if not record.payload:
        raise retrylake.Permanent("Missing Payload")
    if int(record.id.split("-")[1]) % 3 == 0 and record.attempt <= 2:
        raise retrylake.Transient("503 Service Unavailable")
    return f"ok {record.id}"


def test_spark_partitions_drain_one_queue_each_record_placed_once(spark, tmp_path):
    root = str(tmp_path / "queue")
    n, shards = 600, 4
    rows = [(f"S-{i}", "" if i % 50 == 7 else f"payload {i}") for i in range(n)]
    df = spark.createDataFrame(rows, "sample_id string, payload string")

    enqueued = spark_workers.enqueue(df, root, now=START)
    assert (enqueued["read"], enqueued["enqueued"]) == (n, n)
    # The driver enqueues the same DataFrame again (a rerun of the job): nothing doubles.
    assert spark_workers.enqueue(df, root, now=START)["skipped_existing"] == n

    reports = spark_workers.run_workers(spark, root, shards, processor=flaky, now=START)
    by_shard = {r.shard: r for r in reports}
    assert sorted(by_shard) == list(range(shards))
    # Every shard had records of its own and drained them, retries included.
    assert all(r.processed > 0 and r.rounds >= 3 for r in reports), reports

    q = retrylake.Queue(root)
    status = q.status()
    dead = n // 50
    assert (status["waiting"], status["final"], status["dead"]) == (0, n - dead, dead), status
    placed = q.query(
        "SELECT sample_id, count(*) AS n FROM (SELECT sample_id FROM final_results "
        "UNION ALL SELECT sample_id FROM dead_letter_queue) GROUP BY sample_id"
    ).to_pylist()
    assert sorted(r["sample_id"] for r in placed) == sorted(r[0] for r in rows)
    assert {r["n"] for r in placed} == {1}

    # Each record was called by one shard's worker only, and every call was journaled.
    journal = q.query(
        "SELECT sample_id, count(DISTINCT worker) AS workers, count(*) AS calls "
        "FROM attempts GROUP BY sample_id"
    ).to_pylist()
    assert {r["workers"] for r in journal} == {1}
    calls = sum(r["calls"] for r in journal)
    assert calls == sum(r.processed for r in reports) == n + 2 * (
        len([i for i in range(n) if i % 3 == 0 and i % 50 != 7])
    )
    workers = q.query("SELECT DISTINCT worker FROM attempts").column("worker").to_pylist()
    assert sorted(workers) == sorted(r.worker for r in reports)

    # A struct payload keeps its keys on the way in.
    nested = spark.createDataFrame(
        [("N-1", (1, "x"))], "sample_id string, payload struct<n: int, m: string>"
    )
    spark_workers.enqueue(nested, root, now=START)
    stored = q.query("SELECT payload FROM retry_queue WHERE sample_id = 'N-1'").to_pylist()
    assert stored == [{"payload": '{"n":1,"m":"x"}'}], stored
    q.drain(flaky, now=START)

    # Spark runs the job again (a retried stage, a rerun): nothing is called twice.
    again = spark_workers.run_workers(spark, root, shards, processor=flaky, now=START)
    assert sum(r.processed for r in again) == 0
    assert q.status()["final"] == n - dead + 1
