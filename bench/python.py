#!/usr/bin/env python3
"""The Python package beside the reference algorithm, on the same Python processing function.

For each N: writes N records shaped like the original job's (3% empty payloads), then
  * runs the reference baseline (reference.py: the original job's loop on the Python
    `deltalake` package, calling `process_lab_result` row by row);
  * runs the same `process_lab_result` as a retrylake Python processor: one process that
    enqueues the file and drains the queue on a virtual clock (`Queue.drain(now=...)`);
and prints both times, their ratio and each process's peak memory (with `--call-batch N`,
also the same function called with a list of N records at a time). Then, in this process:
  * the cost of a call: a trivial plain and `async def` processor, calls per second at
    concurrency 1 and 16 (the call phase of the round, and the whole drain);
  * how concurrency scales for a processor that sleeps 20 ms (plain and async).

Needs the package built in release mode, with `deltalake` for the reference:

    python3 -m venv /tmp/rlpy && /tmp/rlpy/bin/pip install ./python deltalake==1.6.6
    /tmp/rlpy/bin/python bench/python.py 100000 1000000 --call-batch 1000
"""
import argparse, asyncio, datetime as dt, json, os, random, shutil, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import run_rss  # noqa: E402
from reference import process_lab_result  # noqa: E402 - the reference's own function

import retrylake  # noqa: E402

START = "2025-11-24T14:00:00Z"
RATE = 0.3


def lab_processor(seed):
    """`process_lab_result` as a retrylake processor: its outcome as an exception."""
    rng = random.Random(seed)

    def process(record):
        status, msg = process_lab_result({"payload": record.payload}, rng, RATE)
        if status == "SUCCESS":
            return msg
        if status == "TRANSIENT_FAIL":
            raise retrylake.Transient(msg)
        raise retrylake.Permanent(msg)

    return process


def lab_batch_processor(seed):
    """`process_lab_result` as a retrylake batch processor: a list of outcomes, failures as
    exception instances."""
    rng = random.Random(seed)

    def process(records):
        results = []
        for record in records:
            status, msg = process_lab_result({"payload": record.payload}, rng, RATE)
            if status == "SUCCESS":
                results.append(msg)
            elif status == "TRANSIENT_FAIL":
                results.append(retrylake.Transient(msg))
            else:
                results.append(retrylake.Permanent(msg))
        return results

    return process


def child(root, inp, concurrency, seed, call_batch=None):
    """One process as a user runs it: enqueue the file, drain the queue."""
    q = retrylake.Queue(root)
    t0 = time.perf_counter()
    q.enqueue(inp, now=START)
    t1 = time.perf_counter()
    # allow_empty_payload: the function, not the engine, dead-letters empty payloads, as
    # in the reference.
    processor = lab_batch_processor(seed) if call_batch else lab_processor(seed)
    reports = q.drain(processor, now=START, concurrency=concurrency,
                      allow_empty_payload=True, call_batch=call_batch)
    t2 = time.perf_counter()
    s = q.status()
    print(json.dumps({"enqueue_s": t1 - t0, "drain_s": t2 - t1, "rounds": len(reports),
                      "attempts": sum(r["processed"] for r in reports),
                      "call_s": sum(r["timings_ms"]["process"] for r in reports) / 1000,
                      "final": s["final"], "dead": s["dead"], "waiting": s["waiting"]}))


def side_by_side(n, work, concurrency, seed, call_batches=()):
    inp = os.path.join(work, f"in-{n}.jsonl")
    with open(inp, "w") as f:
        subprocess.run([sys.executable, os.path.join(HERE, "gen_input.py"), str(n)], stdout=f, check=True)
    out, ref_wall, ref_peak = run_rss([sys.executable, os.path.join(HERE, "reference.py"),
                                       os.path.join(work, f"ref-{n}"), inp])
    ref = json.loads(out.strip().splitlines()[-1])
    print(f"\n== {n:,} records, the same Python function ==")
    print(f"reference:  {ref['rounds']} rounds, {ref['attempts']:,} calls, {ref['wall_s']:.2f} s of rounds "
          f"({ref_wall:.2f} s whole process), peak {ref_peak:.0f} MB; "
          f"final {ref['final']:,}, dead {ref['dead']:,}")
    for call_batch in [None, *call_batches]:
        extra = ["--call-batch", str(call_batch)] if call_batch else []
        out, ours_wall, ours_peak = run_rss([sys.executable, os.path.abspath(__file__), "--child",
                                             os.path.join(work, f"rl-{n}-{call_batch}"), inp,
                                             "--concurrency", str(concurrency), "--seed", str(seed),
                                             *extra])
        ours = json.loads(out)
        total = ours["enqueue_s"] + ours["drain_s"]
        label = f"batches of {call_batch}" if call_batch else "per record"
        print(f"retrylake, {label}:  {ours['rounds']} rounds, {ours['attempts']:,} attempts, {total:.2f} s "
              f"(enqueue {ours['enqueue_s']:.2f} s + drain {ours['drain_s']:.2f} s, of it calls "
              f"{ours['call_s']:.2f} s; {ours_wall:.2f} s whole process), peak {ours_peak:.0f} MB; "
              f"final {ours['final']:,}, dead {ours['dead']:,}, waiting {ours['waiting']}")
        print(f"  ratio: reference / retrylake = {ref['wall_s'] / total:.2f} in time "
              f"({ref_wall / ours_wall:.2f} whole process), {ref_peak / ours_peak:.2f} in peak memory")


def drain(processor, n, concurrency, work, name):
    root = os.path.join(work, name)
    shutil.rmtree(root, ignore_errors=True)
    q = retrylake.Queue(root)
    q.enqueue([{"sample_id": f"R-{i}", "payload": "x"} for i in range(n)], now=START)
    t0 = time.perf_counter()
    reports = q.drain(processor, now=START, concurrency=concurrency)
    wall = time.perf_counter() - t0
    assert sum(r["succeeded"] for r in reports) == n, reports
    return wall, sum(r["timings_ms"]["process"] for r in reports) / 1000


def trivial(record):
    return None


async def trivial_async(record):
    return None


def sleeper(record):
    time.sleep(0.02)


async def sleeper_async(record):
    await asyncio.sleep(0.02)


def overhead(calls, work):
    print(f"\n== the cost of a call: {calls:,} records, a processor that returns at once ==")
    for label, fn in (("plain", trivial), ("async", trivial_async)):
        for c in (1, 16):
            wall, call = drain(fn, calls, c, work, f"trivial-{label}-{c}")
            print(f"{label:<6} concurrency {c:>3}: {calls / call:>9,.0f} calls/s in the call phase "
                  f"({call / calls * 1e6:5.1f} µs a call), {calls / wall:>9,.0f} records/s whole drain")


def scaling(work):
    print("\n== concurrency, a processor that sleeps 20 ms (ideal: concurrency / 0.02 s) ==")
    for label, fn in (("plain", sleeper), ("async", sleeper_async)):
        for c in (1, 4, 16, 64, 256):
            n = min(2000, 50 * c)
            _, call = drain(fn, n, c, work, f"sleep-{label}-{c}")
            ideal = c / 0.02
            print(f"{label:<6} concurrency {c:>3}: {n:>5} records, {n / call:>8,.0f} calls/s "
                  f"({n / call / ideal:4.0%} of ideal {ideal:,.0f})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[100_000])
    ap.add_argument("--concurrency", type=int, default=16, help="of the side-by-side run")
    ap.add_argument("--calls", type=int, default=20_000, help="records of the call-cost run")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--call-batch", type=int, action="append", default=[],
                    help="also run the side-by-side with batches of N records a call (repeatable)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--child", nargs=2, metavar=("ROOT", "INPUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(*a.child, a.concurrency, a.seed, a.call_batch[0] if a.call_batch else None)
    work = a.work or tempfile.mkdtemp(prefix="retrylake-pybench-")
    os.makedirs(work, exist_ok=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {os.cpu_count()} cores, {cpu}; Python {sys.version.split()[0]}, retrylake "
          f"{retrylake.__version__}")
    for n in a.sizes:
        side_by_side(n, work, a.concurrency, a.seed, a.call_batch)
    overhead(a.calls, work)
    scaling(work)
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
