"""Start ``ragtune serve`` as a real child process and learn its address (tests and benchmarks)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

_SERVING = re.compile(r"serving on (http://127\.0\.0\.1:\d+)")


def start_serve(env: dict[str, str], *args: str, timeout: float = 180.0) -> tuple[subprocess.Popen[str], str]:
    """``ragtune serve --port 0 ARGS`` on loopback with ``env``; returns the process and the URL it
    printed. The caller owns the process (and its stderr pipe) and must stop it."""
    proc = subprocess.Popen([sys.executable, "-m", "ragtune.cli.main", "serve", "--host", "127.0.0.1", "--port", "0",
                             *args], env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"ragtune serve exited with {proc.returncode}")
            match = _SERVING.search(line)
            if match:
                return proc, match.group(1)
        raise RuntimeError(f"ragtune serve did not start within {timeout:.0f} s")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
