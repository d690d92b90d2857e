"""Spark runs the workers: one retrylake shard worker per partition, over one queue.

The driver enqueues a DataFrame (ids already queued or placed are skipped, so a rerun of
the job enqueues nothing twice), then starts N tasks; task ``i`` drains shard ``i/N`` of
the queue with a Python function as the processor, under its own worker name. Shards
split the records by a hash of their id, so every record is called by one task. A task
Spark retries after a crash runs under the same worker name, so it first completes what
the crashed attempt journaled, then goes on: nothing is lost or placed twice. Leave
``spark.speculation`` off (Spark's default), and run one such job per queue at a time: a
speculative copy of a running task, or a second job, would share its worker names, and
although the queue still places every record once, a record could be called twice.

On a cluster (Databricks, EMR, Dataproc), put the tables on object storage and install
the retrylake wheel on every node (a cluster library, a bootstrap action, or
``--py-files``); the workers then share nothing but the bucket:

    spark-submit python/examples/spark_workers.py s3://bucket/queue input.parquet 64

Locally (``pip install ./python pyspark``):

    python python/examples/spark_workers.py /tmp/queue input.jsonl 4

The function each task runs, ``drain_shards``, is an ordinary ``mapInArrow`` function:
it reads the shard numbers of its partition and yields one row of counts per shard, so
the driver learns what every worker did.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterator, Optional

import pyarrow as pa

import retrylake

#: What each task reports back: one row per shard it drained.
REPORT = "shard long, worker string, rounds long, processed long, succeeded long, " \
    "retried long, dead_lettered long"


def send(record: retrylake.Record) -> str:
    """The processor: stands for a call to a downstream API. Replace with yours."""
    if not record.payload:
        raise retrylake.Permanent("Missing Payload")
    return f"delivered {record.id}"


def drain_shards(
    root: str,
    shards: int,
    processor: Callable[[retrylake.Record], object] = send,
    storage_options: Optional[dict] = None,
    now: Optional[str] = None,
    **options,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function that drains shards ``id/shards`` of the queue at
    ``root``, one after the other, for the shard numbers in its partition's ``id``
    column. ``now`` runs the workers on a virtual clock (tests); ``options`` are
    :meth:`retrylake.Queue.drain`'s."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for shard in batch.column("id").to_pylist():
                worker = f"spark-shard-{shard}-of-{shards}"
                queue = retrylake.Queue(root, storage_options=storage_options, worker=worker)
                reports = queue.drain(processor, shard=f"{shard}/{shards}", now=now, **options)
                counts = {
                    key: sum(r[key] for r in reports)
                    for key in ("processed", "succeeded", "retried", "dead_lettered")
                }
                yield pa.RecordBatch.from_pylist(
                    [{"shard": shard, "worker": worker, "rounds": len(reports), **counts}]
                )

    return run


def enqueue(df, root: str, storage_options: Optional[dict] = None, **options) -> dict:
    """Enqueues a Spark DataFrame (``sample_id`` and ``payload`` columns, by default) from
    the driver, as Arrow (a struct or array payload is stored as its JSON text, keys
    kept). It passes through the driver's memory: for more than it holds, write the
    DataFrame as Parquet files and enqueue each file."""
    queue = retrylake.Queue(root, storage_options=storage_options, worker="spark-driver")
    if hasattr(df, "toArrow"):  # Spark 4
        table = df.toArrow()
    else:  # Spark 3.x has it under another name
        batches = df._collect_as_arrow()
        table = pa.Table.from_batches(batches) if batches else _empty(df)
    return queue.enqueue(table, **options)


def _empty(df) -> pa.Table:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(df.schema).empty_table()


def run_workers(spark, root: str, shards: int, **kwargs):
    """Drains the queue at ``root`` with ``shards`` Spark tasks, one shard each; returns
    their reports as a Spark DataFrame, collected. ``kwargs`` go to :func:`drain_shards`."""
    work = spark.range(0, shards, 1, numPartitions=shards)
    return work.mapInArrow(drain_shards(root, shards, **kwargs), REPORT).collect()


def main(argv: list) -> int:
    if len(argv) != 4:
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        print(f"usage: {argv[0]} ROOT INPUT SHARDS", file=sys.stderr)
        return 2
    from pyspark.sql import SparkSession

    root, path, shards = argv[1], argv[2], int(argv[3])
    spark = SparkSession.builder.appName("retrylake-workers").getOrCreate()
    spark.sparkContext.addPyFile(__file__)
    print(enqueue(spark.read.json(path) if path.endswith(".jsonl") else spark.read.parquet(path), root))
    for row in run_workers(spark, root, shards):
        print(row.asDict())
    print(retrylake.Queue(root).status())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
