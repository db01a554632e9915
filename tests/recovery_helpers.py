"""Real crashes for the recovery tests: an embedded PostgreSQL of its own in a fresh folder, and a
SIGKILL of its postmaster (the pid from ``EmbeddedPostgres.status()``)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from ragtune.store.server import EmbeddedPostgres
from ragtune.testing.crash import kill_embedded_postgres


@contextmanager
def embedded_folder(prefix: str = "ragtune-test-crash-") -> Iterator[Path]:
    """A data folder whose server is stopped and removed afterwards. Outside pytest's basetemp,
    for the same reason as the session server (see conftest)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        server = EmbeddedPostgres(path)
        for _ in range(50):  # a restart may be finishing in a background thread
            try:
                server.stop()
                break
            except Exception:
                time.sleep(0.2)
        shutil.rmtree(path, ignore_errors=True)


kill_postgres = kill_embedded_postgres


def postmaster_pid(folder: Path) -> int | None:
    return EmbeddedPostgres(folder).status().pid


def starts_logged(folder: Path) -> int:
    """How many times the server was started in this folder (its log's "starting PostgreSQL" lines)."""
    log = EmbeddedPostgres(folder).log_file
    return log.read_text(errors="replace").count("starting PostgreSQL") if log.exists() else 0


class RecoveryStopper:
    """Holds a crash recovery open: SIGSTOPs the startup process (the one replaying the WAL) of
    the next server started in ``folder`` as soon as it appears, until ``release()``. A real
    recovery that lasts as long as a test needs, without writing gigabytes of WAL."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.stopped: psutil.Process | None = None
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RecoveryStopper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._thread.join(10)

    def release(self) -> None:
        self._release.set()

    def _run(self) -> None:
        from ragtune.store.server import _read_pidfile

        pgdata = EmbeddedPostgres(self.folder).pgdata
        first = _read_pidfile(pgdata)
        deadline = time.monotonic() + 60
        while not self._release.is_set() and time.monotonic() < deadline:
            info = _read_pidfile(pgdata)
            if info is not None and (first is None or info.key != first.key):
                try:
                    for child in psutil.Process(info.pid).children():
                        if "startup" in " ".join(child.cmdline()):
                            child.send_signal(signal.SIGSTOP)
                            self.stopped = child
                            break
                except psutil.Error:
                    pass
            if self.stopped is not None:
                break
            time.sleep(0.002)
        self._release.wait(120)
        if self.stopped is not None:
            with contextlib.suppress(psutil.Error):
                self.stopped.send_signal(signal.SIGCONT)
