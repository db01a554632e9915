"""Run the server for tests and benchmarks: ``ragtune serve`` as a real child process (learning its
address), or an app in a thread of this process on a free loopback port."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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


@contextmanager
def serve_in_thread(app: Any, settings: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields its URL and stops it
    (gracefully) on exit."""
    from ragtune.server.app import bind, make_server

    server = make_server(app, settings, log_level="warning")
    sock = bind("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
