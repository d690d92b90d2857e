#!/usr/bin/env python3
"""How closely `--rate` holds: calls per second seen by a loopback HTTP server.

    cargo build --release
    python3 bench/rate.py [--rates 20/s 50/s 100/s] [--seconds 5] [--concurrency 16]

For each rate it enqueues rate x seconds records (local tables in a temp dir), runs one
`retrylake run --processor http --rate R` against a server on 127.0.0.1 that answers 200 at
once and timestamps every request, and prints the calls per second measured between the
first and the last request, and the deviation from the rate asked. The same records
without `--rate` (the unthrottled baseline, same run) show the limit is what holds them.
"""
import argparse, http.server, json, os, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOW = "2025-11-24T14:00:00Z"


class Api(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without this, Nagle's algorithm and the
    # client's delayed ACK add 40 ms to every call.
    disable_nagle_algorithm = True
    times = []
    lock = threading.Lock()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with Api.lock:
            Api.times.append(time.perf_counter())
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def per_second(rate):
    calls, unit = rate.split("/")
    return float(calls) / {"s": 1, "m": 60, "h": 3600}[unit]


def measure(binary, url, n, extra, concurrency):
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        path = os.path.join(tmp, "in.jsonl")
        with open(path, "w") as f:
            for i in range(n):
                f.write(json.dumps({"sample_id": f"R-{i:06d}", "payload": "p"}) + "\n")
        subprocess.run([binary, "--data", data, "enqueue", path, "--now", NOW], check=True,
                       capture_output=True)
        Api.times = []
        out = subprocess.run([binary, "--data", data, "run", "--processor=http", f"--url={url}",
                              f"--concurrency={concurrency}", "--now", NOW, "--json", *extra],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(out.stderr)
        assert json.loads(out.stdout.splitlines()[-1])["succeeded"] == n, out.stdout
        times = sorted(Api.times)
        return (len(times) - 1) / (times[-1] - times[0]), times[-1] - times[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", nargs="*", default=["20/s", "50/s", "100/s", "600/m"])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/retrylake"))
    a = ap.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"--concurrency {a.concurrency}, ~{a.seconds:g} s per rate, {os.cpu_count()} cores")
    print(f"{'--rate':>8} {'asked/s':>8} {'calls':>6} {'over s':>7} {'measured/s':>11} {'off':>7}")
    for rate in a.rates:
        asked = per_second(rate)
        n = max(2, round(asked * a.seconds))
        measured, span = measure(a.binary, url, n, [f"--rate={rate}"], a.concurrency)
        print(f"{rate:>8} {asked:>8.1f} {n:>6} {span:>7.2f} {measured:>11.1f} "
              f"{(measured - asked) / asked:>+7.1%}", flush=True)
    n = max(2, round(per_second(a.rates[-1]) * a.seconds))
    measured, span = measure(a.binary, url, n, [], a.concurrency)
    print(f"{'none':>8} {'-':>8} {n:>6} {span:>7.2f} {measured:>11.1f} {'(baseline)':>7}")


if __name__ == "__main__":
    main()
