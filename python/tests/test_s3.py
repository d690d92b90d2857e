"""The package on S3-compatible storage: moto's server on loopback (through
scripts/s3_server.py, which keeps S3's conditional writes atomic), or the one
RETRYLAKE_TEST_S3_ENDPOINT names."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

import retrylake

BUCKET = "retrylake-tests"
SERVER = Path(__file__).resolve().parents[2] / "scripts" / "s3_server.py"


@pytest.fixture(scope="session")
def endpoint():
    given = os.environ.get("RETRYLAKE_TEST_S3_ENDPOINT")
    server = None
    if given:
        url = given
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, str(SERVER), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the S3 test server did not start"
                time.sleep(0.1)
    urllib.request.urlopen(urllib.request.Request(f"{url}/{BUCKET}", method="PUT")).read()
    yield url
    if server:
        server.kill()


def test_the_queue_works_on_s3(endpoint):
    options = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    root = f"s3://{BUCKET}/python-{uuid.uuid4().hex}"
    q = retrylake.Queue(root, storage_options=options)
    start = "2025-11-24T14:00:00Z"
    q.enqueue([{"sample_id": f"s{i}", "payload": "p"} for i in range(20)], now=start)

    def flaky(record):
        if record.attempt == 1 and record.id.endswith(("1", "7")):
            raise retrylake.Transient("busy")
        return "ok"

    q.drain(flaky, now=start, breaker=False)
    assert q.status(now="2025-11-25T00:00:00Z")["final"] == 20
    final = q.query("SELECT sample_id FROM final_results").column(0).to_pylist()
    assert sorted(final) == sorted(f"s{i}" for i in range(20))
    # Another process's view of the same tables.
    other = retrylake.Queue(root, storage_options=options, worker="other")
    assert other.query("SELECT count(*) AS n FROM attempts").column(0)[0].as_py() == 24
