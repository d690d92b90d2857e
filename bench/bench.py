#!/usr/bin/env python3
"""retrylake against the physical floor of its workload, and beside the reference algorithm
(the original Spark job's), on the same input, in one run.

For each N: writes N records shaped like the original job's (3% empty payloads), then
  * runs retrylake as a user runs it: one `retrylake enqueue` process, then one
    `retrylake run --drain --json` process on the virtual clock (simulate processor, 30%
    transient), which jumps to the earliest `process_after` until the queue is empty;
    and, as a second line, the same from a copy of the enqueued tables with one
    `retrylake run` process per round;
  * measures the floor (`examples/floor.rs`): one delta-rs append, from memory, of every row
    each table receives over the whole workload (the enqueued rows, one journal row per
    attempt, the final and dead rows, the retried rows), one commit per table;
  * runs the reference baseline (reference.py, the original job's loop on the Python
    `deltalake` package), up to 1M records, as information;
and prints the total and each phase as a multiple of its share of the floor, time per
million attempts, and each process's peak memory. With `--time-lock` it also times a
round of 1k due records among 1M that are not due, against the same 1k records alone.

    cargo build --release --bin retrylake --example floor
    python3 -m venv /tmp/refpy && /tmp/refpy/bin/pip install deltalake pyarrow
    python3 bench/bench.py 100000 1000000 [10000000] [--time-lock] [--skip-reference]
"""
import argparse, datetime as dt, json, os, shutil, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
START = dt.datetime(2025, 11, 24, 14, 0, tzinfo=dt.timezone.utc)
# The reference keeps the whole queue in memory as pandas frames: 10M records need ~10 GB.
REFERENCE_MAX = 1_000_000


def run_rss(cmd):
    """Runs a command, returning (stdout, wall seconds, peak RSS in MB)."""
    t0 = time.perf_counter()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(r)
        os.execvp(cmd[0], cmd)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed with {os.waitstatus_to_exitcode(status)}")
    return b"".join(chunks).decode(), wall, usage.ru_maxrss / 1024


def ts(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rounds_of(out, totals):
    """Adds a `run --json` output's rounds to `totals`; returns the last report."""
    report = None
    for line in out.strip().splitlines():
        report = json.loads(line)
        totals["rounds"] += report["round"] is not None
        totals["attempts"] += report["processed"]
        for k, v in report["timings_ms"].items():
            totals["phases"][k] = totals["phases"].get(k, 0.0) + v / 1000
    return report


def status(binary, data, now):
    out, _, _ = run_rss([binary, "--data", data, "status", "--json", "--now", ts(now)])
    return json.loads(out)


def retrylake(binary, data, inp, seed):
    """One enqueue process, then one `run --drain` process; then, from a copy of the
    enqueued tables, one `run` process per round."""
    shutil.rmtree(data, ignore_errors=True)
    _, enqueue_s, enqueue_peak = run_rss([binary, "--data", data, "enqueue", inp, "--now", ts(START)])
    per_round = data + "-per-round"
    shutil.rmtree(per_round, ignore_errors=True)
    shutil.copytree(data, per_round)
    run = [binary, "run", "--json", "--transient-rate", "0.3", "--seed", str(seed)]

    drain = {"rounds": 0, "attempts": 0, "phases": {}}
    out, drain["wall_s"], drain["peak_mb"] = run_rss(
        run[:1] + ["--data", data] + run[1:] + ["--drain", "--now", ts(START)])
    rounds_of(out, drain)
    drain["status"] = status(binary, data, START + dt.timedelta(days=1))

    steps = {"rounds": 0, "attempts": 0, "phases": {}, "wall_s": 0.0, "peak_mb": 0.0, "processes": 0}
    now = START
    while True:
        out, wall, rss = run_rss(run[:1] + ["--data", per_round] + run[1:] + ["--now", ts(now)])
        steps["processes"] += 1
        steps["wall_s"] += wall
        steps["peak_mb"] = max(steps["peak_mb"], rss)
        report = rounds_of(out, steps)
        if report["next_due"] is None:
            break
        now = max(now, dt.datetime.fromisoformat(report["next_due"].replace("Z", "+00:00")))
    steps["status"] = status(binary, per_round, now)
    shutil.rmtree(per_round, ignore_errors=True)
    return {"enqueue_s": enqueue_s, "enqueue_peak_mb": enqueue_peak, "drain": drain, "steps": steps}


def reference_baseline(python, data, inp):
    out, wall, rss = run_rss([python, os.path.join(HERE, "reference.py"), data, inp])
    r = json.loads(out.strip().splitlines()[-1])
    r["peak_mb"] = rss
    return r


def time_lock(binary, work, seed):
    """A round of 1k due rows among 1M not due, against the same 1k rows alone."""
    big = os.path.join(work, "waiting.jsonl")
    small = os.path.join(work, "due.jsonl")
    with open(big, "w") as f:
        for i in range(1_000_000):
            f.write(json.dumps({"sample_id": f"W-{i:07d}", "payload": "waiting " + "x" * 100}) + "\n")
    with open(small, "w") as f:
        for i in range(1_000):
            f.write(json.dumps({"sample_id": f"D-{i:07d}", "payload": "due " + "x" * 100}) + "\n")
    later = START + dt.timedelta(days=1)
    results = {}
    for name, setup in (("alone", [(small, START)]), ("among_1m", [(big, later), (small, START)])):
        data = os.path.join(work, f"lock-{name}")
        shutil.rmtree(data, ignore_errors=True)
        for path, when in setup:
            run_rss([binary, "--data", data, "enqueue", path, "--now", ts(when)])
        best = None
        # Best of three fresh copies: the round is small and the machine is shared.
        for attempt in range(3):
            copy = f"{data}-{attempt}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(data, copy)
            out, wall, _ = run_rss([binary, "--data", copy, "run", "--json", "--now", ts(START),
                                    "--transient-rate", "0.3", "--seed", str(seed)])
            assert json.loads(out.strip().splitlines()[-1])["processed"] == 1000
            best = wall if best is None else min(best, wall)
            shutil.rmtree(copy, ignore_errors=True)
        results[name] = best
    return results


def report(n, ours, floor, ref):
    d, s = ours["drain"], ours["steps"]
    st = d["status"]
    attempts = d["attempts"]
    retried = attempts - st["final"] - st["dead"]
    total = ours["enqueue_s"] + d["wall_s"]
    f_total = floor["total_s"]
    per_m = lambda secs: secs / (attempts / 1e6)
    print(f"\n== {n:,} records ==")
    print(f"workload: {n:,} enqueued; {attempts:,} attempts in {d['rounds']} rounds: "
          f"{st['final']:,} final, {st['dead']:,} dead, {retried:,} retried; waiting {st['waiting']}")
    assert st["waiting"] == 0 and st["final"] + st["dead"] == n, st
    print(f"floor, one append per table of every row it receives: {f_total:.2f} s "
          f"(retry_queue {floor['enqueue_s'] + floor['queue_s']:.2f} s, attempts {floor['journal_s']:.2f} s, "
          f"final_results {floor['final_s']:.2f} s, dead_letter_queue {floor['dead_letter_s']:.2f} s)")
    print(f"retrylake, enqueue + run --drain (2 processes): {total:.2f} s = "
          f"{total / f_total:.2f}x the floor; {per_m(total):.2f} s per million attempts; "
          f"peak RSS enqueue {ours['enqueue_peak_mb']:.0f} MB, run {d['peak_mb']:.0f} MB")
    s_total = ours["enqueue_s"] + s["wall_s"]
    print(f"retrylake, enqueue + one run process per round ({s['processes']} processes): {s_total:.2f} s = "
          f"{s_total / f_total:.2f}x the floor; peak RSS run {s['peak_mb']:.0f} MB")
    if s["status"]["final"] != st["final"] or s["status"]["dead"] != st["dead"]:
        sys.exit(f"the two runs disagree: {st} against {s['status']}")
    ph = d["phases"]
    settle = sum(ph.get(k, 0.0) for k in ("journal", "final", "dead_letter", "queue"))
    other = d["wall_s"] - sum(ph.values())
    rows = [
        ("enqueue", ours["enqueue_s"], floor["enqueue_s"],
         "the process: parse, check ids, write / the enqueued rows"),
        ("read", ph.get("read", 0.0), floor["enqueue_s"] + floor["queue_s"],
         "find, read and claim the due rows / every row that enters retry_queue"),
        ("settle", settle, floor["journal_s"] + floor["final_s"] + floor["dead_letter_s"] + floor["queue_s"],
         "write all four tables' files side by side, then the four commits / journal, final, dead and retried rows"),
        ("  journal", ph.get("journal", 0.0), None, "the files of all four commits, then the journal's commit"),
        ("  final", ph.get("final", 0.0), None, "the final_results commit"),
        ("  dead", ph.get("dead_letter", 0.0), None, "the dead_letter_queue commit"),
        ("  queue", ph.get("queue", 0.0), None, "the retry_queue commit"),
        ("prepare", ph.get("prepare", 0.0), None, "before each round: read the tables' new commits, recovery checks"),
        ("process", ph.get("process", 0.0), None, "the simulate processor's calls"),
        ("decide", ph.get("decide", 0.0), None, "deciding where each record goes"),
        ("upkeep", ph.get("upkeep", 0.0), None, "after each round: compaction, checkpoints, log cleanup"),
        ("other", other, None, "process start, opening tables, freeing rows, the final check"),
    ]
    print(f"  {'phase':<10} {'time':>9} {'its floor':>10} {'ratio':>7}  what")
    for name, secs, share, what in rows:
        ratio = f"{secs / share:6.2f}x" if share else f"{'':>7}"
        fl = f"{share * 1000:8.0f} ms" if share else f"{'':>11}"
        print(f"  {name:<10} {secs * 1000:6.0f} ms {fl} {ratio}  {what}")
    if ref:
        print(f"reference (information): {ref['rounds']} rounds, {ref['attempts']:,} attempts, "
              f"{ref['wall_s']:.2f} s of rounds, peak {ref['peak_mb']:.0f} MB; retrylake's enqueue + drain "
              f"is {ref['wall_s'] / total:.1f}x faster")
    return {"n": n, "attempts": attempts, "total_s": total, "per_m_s": per_m(total),
            "floor_per_m_s": per_m(f_total), "peak_mb": max(ours["enqueue_peak_mb"], d["peak_mb"])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/retrylake"))
    ap.add_argument("--floor", default=os.path.join(ROOT, "target/release/examples/floor"))
    ap.add_argument("--reference-python", default="/tmp/refpy/bin/python")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--time-lock", action="store_true")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="retrylake-bench-")
    os.makedirs(work, exist_ok=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {os.cpu_count()} cores, {cpu}")
    lines = []
    for n in a.sizes:
        inp = os.path.join(work, f"in-{n}.jsonl")
        with open(inp, "w") as f:
            subprocess.run([sys.executable, os.path.join(HERE, "gen_input.py"), str(n)], stdout=f, check=True)
        ours = retrylake(a.binary, os.path.join(work, f"rl-{n}"), inp, a.seed)
        shutil.rmtree(os.path.join(work, f"rl-{n}"), ignore_errors=True)
        st = ours["drain"]["status"]
        out, _, _ = run_rss([a.floor, inp, os.path.join(work, f"floor-{n}"),
                             str(ours["drain"]["attempts"]), str(st["final"]), str(st["dead"])])
        floor = json.loads(out)
        ref = None
        if not a.skip_reference and n <= REFERENCE_MAX:
            ref = reference_baseline(a.reference_python, os.path.join(work, f"ref-{n}"), inp)
            shutil.rmtree(os.path.join(work, f"ref-{n}"), ignore_errors=True)
        lines.append(report(n, ours, floor, ref))
        os.remove(inp)
    print("\n== growth: enqueue + run --drain, per million attempts ==")
    base = next((l for l in lines if l["n"] == 1_000_000), None)
    for l in lines:
        vs = f"; {l['per_m_s'] / base['per_m_s']:.2f}x the 1M figure" if base else ""
        print(f"  {l['n']:>11,} records: {l['per_m_s']:.2f} s per million attempts (floor "
              f"{l['floor_per_m_s']:.2f} s){vs}; peak {l['peak_mb']:.0f} MB")
    if a.time_lock:
        r = time_lock(a.binary, work, a.seed)
        print(f"\n== time lock: a round of 1,000 due records ==")
        print(f"alone: {r['alone'] * 1000:.0f} ms; among 1,000,000 not due: {r['among_1m'] * 1000:.0f} ms "
              f"({r['among_1m'] / r['alone']:.2f}x)")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
