"""What the tests share: running code in a fresh interpreter."""

import subprocess
import sys
import textwrap


def child(code, tmp_path, timeout=20, args=()):
    """Runs `code` in a fresh interpreter with the data root (`tmp_path / "data"`) as
    argv[1] and `args` after it; returns (returncode, stdout and stderr). A child still
    running after `timeout` seconds is killed and reported as returncode None."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    proc = subprocess.Popen(
        [sys.executable, "-u", str(script), str(tmp_path / "data"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return None, out
