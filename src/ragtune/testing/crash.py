"""A real crash of the embedded PostgreSQL, for the recovery tests and benchmark."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil

from ragtune.store.server import EmbeddedPostgres


def kill_embedded_postgres(folder: Path) -> int:
    """SIGKILL the running postmaster of the data folder ``folder``; returns its pid once it is dead
    (gone, or a zombie its parent has not reaped yet)."""
    status = EmbeddedPostgres(folder).status()
    if not status.running or not status.pid:
        raise RuntimeError(f"no embedded PostgreSQL runs in {folder}")
    os.kill(status.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(status.pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.005)
    return status.pid
