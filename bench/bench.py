#!/usr/bin/env python3
"""retrylake beside the reference algorithm (the original Spark job's) on the same input, in one run.

For each N: writes N records shaped like the original job's (3% empty payloads), then
  * runs the reference baseline (reference.py, the original job's loop on the Python `deltalake`
    package) on them;
  * runs retrylake as a user would: one `retrylake enqueue` process, then one
    `retrylake run --json` process per round on a virtual clock, each round jumping to the
    earliest `process_after`, until the queue is empty (simulate processor, 30% transient);
  * times one delta-rs append of the same rows (the physical limit, `examples/append_limit`);
and prints attempts per second, time per phase, peak memory and the ratios. With
`--time-lock` it also times a round of 1k due records among 1M that are not due, against
the same 1k records alone.

    cargo build --release --bin retrylake --example append_limit
    python3 -m venv /tmp/refpy && /tmp/refpy/bin/pip install deltalake pyarrow
    python3 bench/bench.py 100000 1000000 [--time-lock] [--reference-python /tmp/refpy/bin/python]
"""
import argparse, datetime as dt, json, os, shutil, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
START = dt.datetime(2025, 11, 24, 14, 0, tzinfo=dt.timezone.utc)


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


def retrylake(binary, data, inp, seed):
    """Enqueue, then one run process per round until the queue is empty."""
    phases = {}
    shutil.rmtree(data, ignore_errors=True)
    _, enqueue_s, enqueue_peak = run_rss([binary, "--data", data, "enqueue", inp, "--now", ts(START)])
    now, rounds, attempts, rounds_s, round_peak, processes = START, 0, 0, 0.0, 0.0, 0
    while True:
        out, wall, rss = run_rss([binary, "--data", data, "run", "--json", "--now", ts(now),
                                  "--transient-rate", "0.3", "--seed", str(seed)])
        processes += 1
        rounds_s += wall
        round_peak = max(round_peak, rss)
        # One JSON line per round: a process runs rounds of --batch-size while more are due.
        for line in out.strip().splitlines():
            report = json.loads(line)
            rounds += report["round"] is not None
            attempts += report["processed"]
            for k, v in report["timings_ms"].items():
                phases[k] = phases.get(k, 0.0) + v / 1000
        if report["next_due"] is None:
            break
        now = max(now, dt.datetime.fromisoformat(report["next_due"].replace("Z", "+00:00")))
    status, _, _ = run_rss([binary, "--data", data, "status", "--json", "--now", ts(now)])
    status = json.loads(status)
    return {"enqueue_s": enqueue_s, "rounds_s": rounds_s, "total_s": enqueue_s + rounds_s,
            "rounds": rounds, "processes": processes, "attempts": attempts,
            "peak_mb": max(enqueue_peak, round_peak), "enqueue_peak_mb": enqueue_peak,
            "round_peak_mb": round_peak, "phases": phases,
            "final": status["final"], "dead": status["dead"], "waiting": status["waiting"]}


def reference_baseline(python, data, inp):
    out, wall, rss = run_rss([python, os.path.join(HERE, "reference.py"), data, inp])
    r = json.loads(out.strip().splitlines()[-1])
    r["peak_mb"] = rss
    r["process_s"] = wall
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
        results[name] = best
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[100_000])
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/retrylake"))
    ap.add_argument("--append-limit", default=os.path.join(ROOT, "target/release/examples/append_limit"))
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
    for n in a.sizes:
        inp = os.path.join(work, f"in-{n}.jsonl")
        with open(inp, "w") as f:
            subprocess.run([sys.executable, os.path.join(HERE, "gen_input.py"), str(n)], stdout=f, check=True)
        ref = None if a.skip_reference else reference_baseline(a.reference_python, os.path.join(work, f"ref-{n}"), inp)
        ours = retrylake(a.binary, os.path.join(work, f"rl-{n}"), inp, a.seed)
        limit_out, _, _ = run_rss([a.append_limit, inp, os.path.join(work, f"limit-{n}")])
        limit = json.loads(limit_out)
        print(f"\n== {n:,} records ==")
        if ref:
            print(f"reference:     {ref['rounds']} rounds, {ref['attempts']:,} attempts, "
                  f"{ref['wall_s']:.2f} s of rounds ({ref['attempts'] / ref['wall_s']:,.0f} attempts/s), "
                  f"peak {ref['peak_mb']:.0f} MB; final {ref['final']:,}, dead {ref['dead']:,}")
        print(f"retrylake:     {ours['rounds']} rounds in {ours['processes']} run processes, "
              f"{ours['attempts']:,} attempts, {ours['total_s']:.2f} s (enqueue {ours['enqueue_s']:.2f} s + "
              f"rounds {ours['rounds_s']:.2f} s, {ours['attempts'] / ours['total_s']:,.0f} attempts/s), "
              f"peak {ours['peak_mb']:.0f} MB (enqueue {ours['enqueue_peak_mb']:.0f} MB, "
              f"run {ours['round_peak_mb']:.0f} MB); final {ours['final']:,}, dead {ours['dead']:,}, "
              f"waiting {ours['waiting']}")
        if ref:
            print(f"speed-up:      {ref['wall_s'] / ours['total_s']:.1f}x the reference's rounds "
                  f"(memory {ref['peak_mb'] / ours['peak_mb']:.1f}x less)")
        print(f"physical limit: one delta-rs append of the {n:,} rows: {limit['append_s'] * 1000:.0f} ms")
        print("phases of all rounds (in-process), against that append; the journal phase writes the")
        print("files of all four commits side by side, the others only commit theirs:")
        for k, v in ours["phases"].items():
            print(f"  {k:<10} {v * 1000:8.0f} ms  {v / limit['append_s']:6.1f}x the append")
        other = ours["rounds_s"] - sum(ours["phases"].values())
        print(f"  {'other':<10} {other * 1000:8.0f} ms  (starting {ours['processes']} processes, opening "
              f"tables, recovery checks, deciding and freeing each round's rows)")
        print(f"  {'enqueue':<10} {ours['enqueue_s'] * 1000:8.0f} ms  {ours['enqueue_s'] / limit['append_s']:6.1f}x "
              f"the append (a process: parsing, checking ids, writing)")
    if a.time_lock:
        r = time_lock(a.binary, work, a.seed)
        print(f"\n== time lock: a round of 1,000 due records ==")
        print(f"alone: {r['alone'] * 1000:.0f} ms; among 1,000,000 not due: {r['among_1m'] * 1000:.0f} ms "
              f"({r['among_1m'] / r['alone']:.2f}x)")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
