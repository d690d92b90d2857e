#!/usr/bin/env python3
"""Scale-out on object storage: 1, 2 and 4 sharded `retrylake run` processes against the
same tables on an S3-compatible server (moto's, on loopback), side by side.

    cargo build --release
    python3 bench/scale.py [N] [--workers 1 2 4] [--call-ms MS]

For each worker count it enqueues N records (3% empty payloads) under a fresh prefix, then
starts that many processes at once, `--shard i/k --worker w<i> --drain` on the real clock
(30% transient failures, backoff 50 ms to 400 ms), and waits until the queue is empty. It
prints attempts per second, the speed-up over one worker, the rounds, and the commits that
lost a race with another worker and were tried again (`conflicts` in `run --json`).

`--call-ms MS` replaces the instant `simulate` processor by the `http` one against a
loopback server that takes MS milliseconds per call (30% of calls answer 503), the case
where workers wait on a slow downstream rather than on the object store.
Starts its own moto server (scripts/py-tools.sh installs it) unless --endpoint is given.
"""
import argparse, http.server, json, os, random, socket, subprocess, sys, tempfile, threading
import time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAST = "2020-01-01T00:00:00Z"
BUCKET = "retrylake-bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port, what):
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not start on port {port}")


def start_moto():
    port = free_port()
    proc = subprocess.Popen([os.path.join(ROOT, "scripts/py-tools.sh"), "s3-server", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(port, "moto_server")
    return proc, f"http://127.0.0.1:{port}"


class SlowApi(http.server.BaseHTTPRequestHandler):
    """Takes `delay` seconds per call; 30% of calls answer 503 (transient)."""
    delay = 0.0
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without this, Nagle's algorithm and the
    # client's delayed ACK add 40 ms to every call.
    disable_nagle_algorithm = True

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.delay)
        status = 503 if random.random() < 0.3 else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def start_api(call_ms):
    SlowApi.delay = call_ms / 1000
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowApi)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"


def run(binary, env, data, args):
    out = subprocess.run([binary, "--data", data, *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"retrylake {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def scale(binary, env, input_path, n, workers, processor):
    data = f"s3://{BUCKET}/scale-{workers}w-{time.time_ns()}"
    run(binary, env, data, ["enqueue", input_path, "--now", PAST])
    common = ["run", "--drain", "--json", "--poll=200ms", "--base-backoff=50ms",
              "--max-backoff=400ms", "--lease=10m", *processor]
    start = time.perf_counter()
    procs = [subprocess.Popen([binary, "--data", data, *common, f"--worker=w{i}",
                               f"--shard={i}/{workers}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(workers)]
    rounds = attempts = conflicts = 0
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            sys.exit(f"worker failed: {stderr}")
        for line in stdout.splitlines():
            r = json.loads(line)
            if r["round"] is not None:
                rounds += 1
            attempts += r["processed"]
            conflicts += r.get("conflicts", 0)
    wall = time.perf_counter() - start
    status = json.loads(run(binary, env, data, ["status", "--json"]))
    assert status["waiting"] == 0 and status["final"] + status["dead"] == n, status
    return wall, attempts, rounds, conflicts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=20_000)
    ap.add_argument("--workers", nargs="*", type=int, default=[1, 2, 4])
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/retrylake"))
    ap.add_argument("--endpoint", help="an S3-compatible server already running (with no auth)")
    ap.add_argument("--call-ms", type=float, help="an http processor taking this long per call")
    ap.add_argument("--concurrency", type=int, default=16)
    a = ap.parse_args()

    moto = None
    if a.endpoint is None:
        moto, a.endpoint = start_moto()
    urllib.request.urlopen(urllib.request.Request(f"{a.endpoint}/{BUCKET}", method="PUT"))
    env = dict(os.environ, AWS_ENDPOINT_URL=a.endpoint, AWS_ACCESS_KEY_ID="bench",
               AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1", AWS_ALLOW_HTTP="true")
    if a.call_ms is None:
        processor = ["--transient-rate=0.3"]
        what = "simulate processor (instant calls, 30% transient)"
    else:
        # The breaker off: its cool-downs would measure random 503 streaks, not scaling.
        processor = ["--processor=http", f"--url={start_api(a.call_ms)}", "--timeout=10s",
                     "--breaker=off"]
        what = f"http processor, {a.call_ms:g} ms per call (30% answer 503)"
    processor.append(f"--concurrency={a.concurrency}")

    with tempfile.TemporaryDirectory() as tmp:
        input_path = os.path.join(tmp, "input.jsonl")
        with open(input_path, "w") as f:
            subprocess.run([sys.executable, os.path.join(ROOT, "bench/gen_input.py"), str(a.n)],
                           stdout=f, check=True)
        print(f"{a.n} records on moto's S3 server ({a.endpoint}); {what}; "
              f"--concurrency {a.concurrency} per worker; {os.cpu_count()} cores")
        print(f"{'workers':>7} {'wall s':>8} {'attempts':>9} {'attempts/s':>11} {'speed-up':>9} "
              f"{'rounds':>7} {'conflicts':>10}")
        base = None
        try:
            for k in a.workers:
                wall, attempts, rounds, conflicts = scale(a.binary, env, input_path, a.n, k,
                                                          processor)
                rate = attempts / wall
                base = base or rate
                print(f"{k:>7} {wall:>8.2f} {attempts:>9} {rate:>11.0f} {rate / base:>8.2f}x "
                      f"{rounds:>7} {conflicts:>10}", flush=True)
        finally:
            if moto:
                moto.terminate()


if __name__ == "__main__":
    main()
